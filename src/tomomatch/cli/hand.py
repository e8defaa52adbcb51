"""``tomomatch hand`` and ``tomomatch compare-hands``: decide the defocus handedness from data.

Thin layer over :func:`tomomatch.hand.run_hand` and :func:`tomomatch.hand.run_compare_hands`
(one tomogram), and their pooled forms :func:`tomomatch.hand.run_hand_pooled`,
:func:`tomomatch.hand.run_compare_hands_pooled` and :func:`tomomatch.hand.pool_reports` (several
tomograms of one data set, one verdict).
``compare-hands`` is registered from here through the one-line module
``tomomatch.cli.compare_hands``.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from ..progress import ProgressBars
from ._metadata_args import add_tilt_metadata_arguments, tilt_series_from_args
from ._outputs import output_prefix

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


_POOLED_HELP = (
    " Several tomograms of one data set (--list, several --job/--particles"
    "%s): each is tested on its own (OUT_<name>.json, OUT_<name>.png), then one verdict is drawn"
    " from all: each tomogram's Wilcoxon signed-rank z combined with Stouffer's method (weights"
    " sqrt(n)); tomograms that significantly prefer the other hand are flagged. Writes OUT.json"
    " (pooled report) and OUT_tomograms.tsv (per-tomogram table)."
)


def _fmt_p(p) -> str:
    return "-" if p is None else f"{p:.2g}"


def _print_pooled(report: dict, stream=None) -> None:
    """The pooled verdict (as for one tomogram), then one line per tomogram."""
    stream = sys.stdout if stream is None else stream
    head = dict(report)
    head["files"] = {}
    used, total = report["n_tomograms_used"], report["n_tomograms"]
    print(f"pooled over {used} of {total} tomogram(s), {report['n_particles']} particles:", file=stream)
    _print_report(head, stream)
    print("per tomogram:", file=stream)
    for r in report["tomograms"]:
        rv = r["verdict"]
        flag = "  DISAGREES with the pooled verdict" if r.get("disagrees") else ""
        print(
            f"  {r['name']}: {f'h = {rv:+d}' if isinstance(rv, int) else rv}; n = {r['n_nonzero_delta']}"
            f" ({r['n_plus_better']} prefer +1, {r['n_minus_better']} prefer -1); Wilcoxon p = {_fmt_p(r['p'])},"
            f" z = {r['z']:+.2f}{flag}",
            file=stream,
        )
    for e in report.get("excluded", []):
        print(f"  {e['name']}: excluded ({e['reason']})", file=stream)
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
            "is run first. Writes OUT.json (statistics and per-particle scores) and OUT.png. "
            + _VERDICT_HELP
            + _POOLED_HELP % " or --reports of earlier hand runs"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output prefix: OUT.json and OUT.png")
    p.add_argument(
        "-j",
        "--job",
        metavar="JOB.json",
        nargs="+",
        help="match job: tomogram, template, mask, tilt metadata, filters and candidates from it "
        "(several: one per tomogram, pooled verdict)",
    )
    p.add_argument(
        "-l",
        "--list",
        metavar="LIST",
        help="several tomograms of one data set, one pooled verdict: tomomatch batch's table (TSV/CSV, "
        "docs/batch.md) with the optional extra columns job and particles, a RELION 5 tomograms.star, "
        "or a batch_summary.json",
    )
    p.add_argument(
        "--reports",
        metavar="HAND.json",
        nargs="+",
        help="pool the reports of earlier hand or compare-hands runs (one per tomogram) without re-scoring",
    )
    p.add_argument("-v", "--tomogram", metavar="MRC", help="tomogram (default: the job's)")
    p.add_argument("-t", "--template", metavar="MRC", help="template (default: the job's)")
    p.add_argument("-m", "--mask", metavar="MRC", help="mask (default: the job's)")
    p.add_argument(
        "-p",
        "--particles",
        metavar="STAR",
        nargs="+",
        help="candidate STAR (from tomomatch extract); several: one per tomogram, in --job's order",
    )
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
        "--device",
        default="cpu",
        help="torch device: cpu, cuda or cuda:N (the re-scoring, and the coarse search when one is run)",
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


def _rescore_options(args) -> dict:
    """The re-scoring keywords of run_hand / run_hand_pooled, from the command line."""
    return dict(
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
        device=args.device,
    )


def _progress(label: str):
    """A progress callback ``(i, n)`` drawing one bar (or log lines) for the particles rescored."""
    bars: list = []

    def progress(i, n):
        if not bars:
            bars.append(ProgressBars({"particles rescored": n}, label=label))
        bars[0].advance(1)
        if i >= n:
            bars[0].close()

    return progress


def run(args) -> int:
    from ..hand import run_hand
    from ..matching import resolve_device

    _check_common(args)
    resolve_device(args.device)  # a bad device or a missing GPU: one line, before any work
    output_prefix(args.output, "--output")
    if args.max_particles < 1:
        raise InputError(f"{args.max_particles}; expected at least 1", field="--max-particles")
    if args.max_angle < 0 or args.angle_step <= 0 or args.shift < 0:
        raise InputError("--max-angle must be >= 0, --angle-step > 0 and --shift >= 0", field="--max-angle")
    ts = tilt_series_from_args(args)
    jobs, stars = args.job or [], args.particles or []
    if args.list or args.reports or len(jobs) > 1 or len(stars) > 1:
        return _run_pooled(args, ts)
    job = jobs[0] if jobs else None
    particles = _read_candidate_star(stars[0], job) if stars else None

    report = run_hand(
        args.output,
        job=job,
        tomogram=args.tomogram,
        template=args.template,
        mask=args.mask,
        tilt_series=ts,
        particles=particles,
        **_rescore_options(args),
        alpha=args.alpha,
        min_particles=args.min_particles,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        figure=not args.no_figure,
        progress=_progress("tomomatch hand"),
    )
    _print_report(report)
    return 0


def _run_pooled(args, ts) -> int:
    """``hand`` on several tomograms (--list, several --job/--particles) or --reports: one verdict."""
    from pathlib import Path

    from ..hand import HandTomogram, pool_reports, read_hand_list, run_hand_pooled, unique_names

    jobs, stars = args.job or [], args.particles or []
    sources = [
        name
        for name, given in (("--list", args.list), ("--reports", args.reports), ("--job/--particles", jobs or stars))
        if given
    ]
    if len(sources) > 1:
        raise InputError(f"give one of {', '.join(sources)}", field=sources[1].split("/")[0])
    stats = {"alpha": args.alpha, "min_particles": args.min_particles, "n_bootstrap": args.bootstrap, "seed": args.seed}
    if args.reports:
        report = pool_reports(
            args.output,
            list(zip(unique_names([Path(r) for r in args.reports]), args.reports)),
            method={"command": "hand", "pooled": True, "from_reports": True},
            **stats,
        )
        _print_pooled(report)
        return 0
    if args.tomogram is not None:
        raise InputError("one tomogram for several: give each tomogram in the --list table", field="--tomogram")
    if ts is not None:
        raise InputError(
            "tilt metadata options describe one tomogram: give each tomogram's metadata in the --list table",
            field="--tilt-angles",
        )
    if args.list:
        tomograms = read_hand_list(args.list, allow_missing_dose=bool(getattr(args, "allow_missing_dose", False)))
    else:
        if jobs and stars and len(jobs) != len(stars):
            raise InputError(
                f"{len(jobs)} jobs and {len(stars)} particle files; expected one of each per tomogram",
                field="--particles",
            )
        tomograms = []
        if jobs:
            names = unique_names([Path(j) for j in jobs])
            for i, (name, j) in enumerate(zip(names, jobs)):
                tomograms.append(
                    HandTomogram(name, job=Path(j), particles=Path(stars[i]) if stars else None, where=(j, "--job"))
                )
        else:  # STARs naming their match job (tomomatch extract writes it into the header)
            from ..particles import read_particles

            for name, st in zip(unique_names([Path(p) for p in stars]), stars):
                job = read_particles(st).attrs.get("job")
                if not job:
                    raise InputError("the STAR names no match job; give --job for each file, or a --list", st)
                tomograms.append(HandTomogram(name, job=Path(job), particles=Path(st), where=(st, "--particles")))

    report = run_hand_pooled(
        args.output,
        tomograms,
        template=args.template,
        mask=args.mask,
        figure=not args.no_figure,
        progress_factory=lambda name: _progress(f"tomomatch hand {name}"),
        **_rescore_options(args),
        **stats,
    )
    _print_pooled(report)
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
            "OUT.png. " + _VERDICT_HELP + _POOLED_HELP % ": RUN_A RUN_B pairs in a row, or --list"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="match job .json or candidate .star: two (one tomogram), or pairs of runs, one pair per tomogram",
    )
    p.add_argument(
        "-l",
        "--list",
        metavar="TABLE",
        help="one tomogram per row: TSV/CSV with columns run_a, run_b and optionally name (pooled verdict)",
    )
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
    output_prefix(args.output, "--output")
    if args.radius is not None and not args.radius > 0:
        raise InputError(f"{args.radius}; expected a radius > 0 Angstrom", field="--radius")
    extract = {"false_alarms": args.false_alarms}
    if args.cutoff is not None:
        extract["cutoff"] = args.cutoff
    if args.cutoff_method is not None:
        extract["cutoff_method"] = args.cutoff_method
    if args.particle_diameter is not None:
        extract["particle_diameter_angstrom"] = args.particle_diameter
    if args.list and args.runs:
        raise InputError("give the runs either on the command line or in --list", field="--list")
    if not args.list and (len(args.runs) < 2 or len(args.runs) % 2):
        raise InputError(
            f"{len(args.runs)} run(s); expected two (a +1 and a -1 run),"
            " pairs of runs (one pair per tomogram) or --list",
            field="RUN",
        )
    options = dict(
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
    if args.list or len(args.runs) > 2:
        from pathlib import Path

        from ..hand import read_compare_list, run_compare_hands_pooled, unique_names

        if args.list:
            pairs = read_compare_list(args.list)
        else:
            firsts, seconds = args.runs[0::2], args.runs[1::2]
            names = unique_names([Path(r) for r in firsts])
            pairs = [(n, a, b, (a, "RUN")) for n, a, b in zip(names, firsts, seconds)]
        report = run_compare_hands_pooled(
            args.output,
            pairs,
            **options,
        )
        _print_pooled(report)
        return 0
    report = run_compare_hands(
        args.runs[0],
        args.runs[1],
        args.output,
        **options,
    )
    pr = report.get("pairing", {})
    print(
        f"paired {pr.get('n_pairs')} of {pr.get('n_run_plus')} (+1) and {pr.get('n_run_minus')} (-1) "
        f"candidates within {pr.get('max_distance_angstrom'):g} A"
    )
    _print_report(report)
    return 0
