"""``tomomatch hand`` and ``tomomatch compare-hands``: decide the defocus handedness from data.

Thin layer over :func:`tomomatch.hand.run_hand` and :func:`tomomatch.hand.run_compare_hands`.
``compare-hands`` is registered from here through the one-line module
``tomomatch.cli.compare_hands``.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from ..progress import ProgressBars
from ._metadata_args import add_tilt_metadata_arguments, tilt_series_from_args

_VERDICT_HELP = (
    "Verdict: +1 or -1 when the Wilcoxon signed-rank p-value of delta = s(+1) - s(-1) is <= "
    "--alpha, the bootstrap 95 % interval of the mean delta excludes 0 and delta's trend against "
    "|x| does not significantly point the other way; otherwise 'undetermined' with the reason. "
    "Exit status 0 in all three cases (the verdict is in the report)."
)


def _add_statistics_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("statistics")
    g.add_argument("--alpha", type=float, default=0.01, help="significance level of the verdict")
    g.add_argument("--min-particles", type=int, default=10, help="fewer paired particles give 'undetermined'")
    g.add_argument("--bootstrap", type=int, default=10000, metavar="N", help="bootstrap resamples")
    g.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    g.add_argument("--no-figure", action="store_true", help="do not draw the PNG figure")


def _check_common(args) -> None:
    if not 0 < args.alpha < 1:
        raise InputError(f"{args.alpha} must be between 0 and 1", field="--alpha")
    if args.bootstrap < 100:
        raise InputError(f"{args.bootstrap} resamples; expected at least 100", field="--bootstrap")
    if args.min_particles < 2:
        raise InputError(f"{args.min_particles}; expected at least 2", field="--min-particles")


def _print_report(report: dict, stream=None) -> None:
    stream = sys.stdout if stream is None else stream
    v = report["verdict"]
    verdict = f"h = {v:+d}" if isinstance(v, int) else v
    print(f"defocus handedness: {verdict}", file=stream)
    print(f"  {report['reason']}", file=stream)
    settings = report.get("settings")
    if settings:
        print(
            f"  set: RELION 5 {settings['relion5']}; Warp {settings['warp']}; "
            f"pytom-match-pick {settings['pytom']}; IMOD {settings['imod']}",
            file=stream,
        )
        if settings.get("note"):
            print(f"  note: {settings['note']}", file=stream)
    if report.get("gain_over_no_gradient"):
        g = report["gain_over_no_gradient"]
        print(
            f"  mean s(+1) - s(0) = {g['mean_plus_minus_zero']:.3g}, "
            f"mean s(-1) - s(0) = {g['mean_minus_minus_zero']:.3g}",
            file=stream,
        )
    for w in report.get("warnings", []):
        print(f"  warning: {w}", file=stream)
    for k, f in (report.get("files") or {}).items():
        print(f"  wrote {f}", file=stream)


# --------------------------------------------------------------------------- hand


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "hand",
        help="decide the defocus handedness by rescoring candidates under h = +1, -1, 0",
        description=(
            "Rescore every candidate at its position with local rotation refinement around its "
            "pose, using a template weighted with the particle's own per-tilt defocus under "
            "h = +1, h = -1 and h = 0 (no gradient); the score is the normalised cross-correlation "
            "maximised over the local rotations and +-SHIFT voxels. Candidates come from --particles "
            "(a candidate STAR), else are extracted from --job, else a coarse search (no gradient) "
            "is run first. Writes OUT.json (statistics and per-particle scores) and OUT.png. " + _VERDICT_HELP
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output prefix: OUT.json and OUT.png")
    p.add_argument(
        "-j",
        "--job",
        metavar="JOB.json",
        help="match job: tomogram, template, mask, tilt metadata, filters and candidates from it",
    )
    p.add_argument("-v", "--tomogram", metavar="MRC", help="tomogram (default: the job's)")
    p.add_argument("-t", "--template", metavar="MRC", help="template (default: the job's)")
    p.add_argument("-m", "--mask", metavar="MRC", help="mask (default: the job's)")
    p.add_argument("-p", "--particles", metavar="STAR", help="candidate STAR (from tomomatch extract)")
    p.add_argument("--voxel-size", type=float, metavar="A", help="override the tomogram's voxel size")
    p.add_argument(
        "-n", "--max-particles", type=int, default=200, help="rescore at most this many candidates (strongest first)"
    )
    p.add_argument(
        "--max-angle",
        type=float,
        default=8.0,
        metavar="DEG",
        help="local rotations within this angle of each pose (0: the pose only); "
        "at least half the search's angular step",
    )
    p.add_argument("--angle-step", type=float, default=4.0, metavar="DEG", help="local rotation spacing")
    p.add_argument("--shift", type=int, default=1, metavar="VOXELS", help="position search radius")
    p.add_argument(
        "--oversampling", type=int, default=2, choices=[1, 2, 3], help="template oversampling before trilinear rotation"
    )
    p.add_argument(
        "--hand-mode",
        choices=["full", "pytom"],
        default=None,
        help="full: h*(-x sin t + z cos t), h = RELION rlnTomoHand; pytom: pytom-match-pick's "
        "z cos(h t) + x sin(h t) (default: job's or full)",
    )
    p.add_argument(
        "--ctf", choices=["signed", "abs"], default=None, help="CTF sign handling (default: job's or signed)"
    )
    p.add_argument("--low-pass", type=float, metavar="A", help="low pass (default: job's)")
    p.add_argument("--high-pass", type=float, metavar="A", help="high pass (default: job's)")
    p.add_argument("--whiten", action="store_true", default=None, help="spectral whitening (default: job's)")
    p.add_argument(
        "--coarse-step",
        type=float,
        default=20.0,
        metavar="DEG",
        help="angular step of the coarse search run when neither --particles nor --job is given",
    )
    p.add_argument(
        "--particle-diameter",
        type=float,
        metavar="A",
        help="particle diameter for extraction (default: job's, or from the mask)",
    )
    add_tilt_metadata_arguments(p)
    _add_statistics_arguments(p)
    p.add_argument(
        "--log-interval",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (0: none)",
    )
    p.set_defaults(func=run)


def _read_candidate_star(path, job=None):
    from ..particles import read_particles

    return read_particles(path, job=job)


def run(args) -> int:
    from ..hand import run_hand

    _check_common(args)
    if args.max_particles < 1:
        raise InputError(f"{args.max_particles}; expected at least 1", field="--max-particles")
    if args.max_angle < 0 or args.angle_step <= 0 or args.shift < 0:
        raise InputError("--max-angle must be >= 0, --angle-step > 0 and --shift >= 0", field="--max-angle")
    ts = tilt_series_from_args(args)
    particles = _read_candidate_star(args.particles, args.job) if args.particles else None

    bars: list = []

    def progress(i, n):
        if not bars:
            bars.append(ProgressBars({"particles rescored": n}, label="tomomatch hand"))
        bars[0].advance(1)
        if i >= n:
            bars[0].close()

    report = run_hand(
        args.output,
        job=args.job,
        tomogram=args.tomogram,
        template=args.template,
        mask=args.mask,
        tilt_series=ts,
        particles=particles,
        voxel_size_angstrom=args.voxel_size,
        max_particles=args.max_particles,
        hand_mode=args.hand_mode,
        max_angle_deg=args.max_angle,
        angle_step_deg=args.angle_step,
        shift_voxels=args.shift,
        oversampling=args.oversampling,
        low_pass_angstrom=args.low_pass,
        high_pass_angstrom=args.high_pass,
        whiten=args.whiten,
        ctf_mode=args.ctf,
        coarse_step_deg=args.coarse_step,
        particle_diameter_angstrom=args.particle_diameter,
        alpha=args.alpha,
        min_particles=args.min_particles,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        figure=not args.no_figure,
        progress=progress,
    )
    _print_report(report)
    return 0


# --------------------------------------------------------------------------- compare-hands


def register_compare_hands(subparsers) -> None:
    p = subparsers.add_parser(
        "compare-hands",
        help="pair the candidates of a +1 and a -1 match run and test which hand scores higher",
        description=(
            "The seed benchmark's two-run workflow: match with --defocus-handedness 1 and -1 "
            "(e.g. --tiles 3 1 1), then compare. Each RUN is a match job file (*_job.json; its "
            "candidates are extracted from the score map and its hand is read from it) or a "
            "candidate STAR (then give --hands). Candidates are paired one-to-one within --radius "
            "(Hungarian assignment), delta = s(+1 run) - s(-1 run) per pair. Writes OUT.json and "
            "OUT.png. " + _VERDICT_HELP
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("runs", nargs=2, metavar="RUN", help="match job .json or candidate .star")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output prefix: OUT.json and OUT.png")
    p.add_argument(
        "--hands",
        type=int,
        nargs=2,
        choices=[1, -1],
        metavar=("H1", "H2"),
        help="hand of each run (default: from the job files)",
    )
    p.add_argument(
        "--radius",
        type=float,
        metavar="A",
        help="pairing radius in Angstrom (default: 2 voxels of the first job, else 10 A)",
    )
    p.add_argument(
        "--score",
        choices=["score", "score_sigma"],
        default="score",
        help="score compared: the LCC maximum or it in units of the search sigma",
    )
    g = p.add_argument_group("extraction (job files only)")
    g.add_argument("-n", "--max-particles", type=int, default=1000, help="candidates per run")
    g.add_argument("--cutoff", type=float, help="fixed score cut-off (LCC)")
    g.add_argument("--false-alarms", type=float, default=1.0, help="expected false alarms above the cut-off")
    g.add_argument("--cutoff-method", choices=["tail", "gaussian", "fixed"], help="cut-off method (extract's default)")
    g.add_argument("--particle-diameter", type=float, metavar="A", help="exclusion diameter (default: job's)")
    _add_statistics_arguments(p)
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    from ..hand import run_compare_hands

    _check_common(args)
    if args.radius is not None and not args.radius > 0:
        raise InputError(f"{args.radius}; expected a radius > 0 Angstrom", field="--radius")
    extract = {"false_alarms": args.false_alarms}
    if args.cutoff is not None:
        extract["cutoff"] = args.cutoff
    if args.cutoff_method is not None:
        extract["cutoff_method"] = args.cutoff_method
    if args.particle_diameter is not None:
        extract["particle_diameter_angstrom"] = args.particle_diameter
    report = run_compare_hands(
        args.runs[0],
        args.runs[1],
        args.output,
        hands=args.hands,
        max_distance_angstrom=args.radius,
        max_particles=args.max_particles,
        score=args.score,
        alpha=args.alpha,
        min_particles=args.min_particles,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        figure=not args.no_figure,
        **extract,
    )
    pr = report.get("pairing", {})
    print(
        f"paired {pr.get('n_pairs')} of {pr.get('n_run_plus')} (+1) and {pr.get('n_run_minus')} (-1) "
        f"candidates within {pr.get('max_distance_angstrom'):g} A"
    )
    _print_report(report)
    return 0
