"""``tomomatch roc``: estimated particle count, false positives and recall of a match job's peaks."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "roc",
        help="estimate the number of particles and the ROC of a match job (no ground truth needed)",
        description="Fit the job's peak scores (extract's peak list before any cut-off) with a generalized "
        "Pareto background tail plus a Gaussian particle cluster; report the estimated number of "
        "particles and, at a range of cut-offs (extract's default first), the expected false "
        "positives, recall and precision. Writes OUT.json and OUT.png (histogram with the two "
        "components, estimated ROC and precision-recall curves). See docs/extraction.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-j", "--job", required=True, help="match job file (<name>_job.json)")
    p.add_argument(
        "-o", "--output", metavar="OUT", help="output prefix: OUT.json and OUT.png (default: <job dir>/<name>_roc)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--particle-diameter",
        type=float,
        metavar="A",
        help="exclusion diameter in Angstrom (radius = half); default: the job's particle diameter",
    )
    g.add_argument("-r", "--radius", type=float, metavar="VOX", help="exclusion radius in voxels")
    p.add_argument(
        "--false-alarms", type=float, default=1.0, help="false alarms of the default (extract's tail) cut-off"
    )
    p.add_argument("--cutoffs", type=float, nargs="+", default=[], metavar="C", help="extra score cut-offs to report")
    p.add_argument("--mask", help="MRC mask: peaks only where it is > 0 (as extract)")
    p.add_argument("--tophat", action="store_true", help="apply extract's white top-hat constraint")
    p.add_argument("--tophat-radius", type=float, default=1.0, metavar="VOX", help="top-hat ball radius in voxels")
    p.add_argument("--border", type=int, default=0, metavar="VOX", help="ignore peaks this close to the map faces")
    p.add_argument("--no-figure", action="store_true", help="do not draw the PNG figure")
    p.set_defaults(func=run)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_report(report: dict, stream=None) -> None:
    stream = sys.stdout if stream is None else stream
    m = report["model"]
    bg, pa = m["background"], m["particles"]
    print(
        f"{report['n_peaks']} peaks; fitted the {m['n_window']} strongest (above {m['threshold']:.4g}): "
        f"background GPD xi {bg['xi']:.3f}, particles N({pa['mean']:.4g}, {pa['sd']:.3g}); "
        f"2 dlogL over background alone {m['likelihood_ratio']:.1f}",
        file=stream,
    )
    print(
        f"estimated particles: {report['n_particles']:.1f} +- {report['n_particles_membership_sd']:.1f}"
        f" (membership); estimated ROC AUC {report['auc']:.3f}",
        file=stream,
    )
    print(
        f"{'cut-off':>9} {'sigma':>7} {'exp. FP':>8} {'exp. TP':>8} {'recall':>7} {'precision':>9} {'peaks':>6}  which",
        file=stream,
    )
    for r in report["table"]:
        print(
            f"{r['cutoff']:9.4g} {r['cutoff_sigma']:7.2f} {r['expected_false_positives']:8.2f} "
            f"{r['expected_true_positives']:8.1f} {r['recall']:7.3f} {_fmt(r['precision'], '9.3f')} "
            f"{r['n_peaks_above']:6d}  {r['label']}{'' if r['in_fitted_window'] else ' (below the fit)'}",
            file=stream,
        )
    for w in report.get("warnings", []):
        print(f"warning: {w}", file=stream)
    for f in (report.get("files") or {}).values():
        print(f"wrote {f}", file=stream)


def run(args) -> int:
    from ..roc import run_roc
    from ._outputs import output_prefix

    if args.output is not None:
        output_prefix(args.output, "--output")
    report = run_roc(
        args.job,
        args.output,
        figure=not args.no_figure,
        particle_diameter_angstrom=args.particle_diameter,
        radius_voxels=args.radius,
        false_alarms=args.false_alarms,
        mask=args.mask,
        tophat=args.tophat,
        tophat_radius_voxels=args.tophat_radius,
        border_voxels=args.border,
        cutoffs=args.cutoffs,
    )
    print_report(report)
    return 0
