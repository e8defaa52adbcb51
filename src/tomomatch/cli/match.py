"""``tomomatch match``: the template search (thin layer over :func:`tomomatch.job.run_match`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..job import run_match
from ..options import add_match_arguments, ctf_for_reconstruction, match_options_from_args
from ._metadata_args import add_tilt_metadata_arguments, tilt_series_from_args
from ._outputs import match_output_folder


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "match",
        help="template search: max FLCF over rotations per voxel",
        description=(
            "Search a tomogram for a template: for every voxel the maximum over rotations of the "
            "fast local correlation (Roseman FLCF) and the index of the best rotation. Writes "
            "<name>_scores.mrc, <name>_angles.mrc, <name>_rotations.txt and <name>_job.json into "
            "OUTDIR. Tiles carry their own per-tilt defocus (defocus gradient). Killed jobs resume "
            "from <name>_checkpoints/ when started again with the same command."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-t", "--template", required=True, metavar="MRC", help="template (cubic box, tomogram contrast)")
    p.add_argument("-m", "--mask", required=True, metavar="MRC", help="mask, same box as the template")
    p.add_argument("-v", "--tomogram", required=True, metavar="MRC", help="tomogram")
    p.add_argument("-d", "--out-dir", required=True, metavar="OUTDIR", help="output folder")
    add_match_arguments(p)
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="run the work units (tile x rotation chunk) in N single-threaded processes; "
        "outputs are identical for any N (default: the cores this job may use, on the CPU, "
        "when the search is big enough; recorded in the job file)",
    )
    p.add_argument(
        "--rotations-per-unit",
        type=int,
        default=None,
        metavar="K",
        help="rotations per work unit (default: a whole tile, or about 4 units per process)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--log-interval",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (0: none)",
    )
    add_tilt_metadata_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    options = match_options_from_args(args)  # every value checked before metadata is read
    match_output_folder(args.out_dir, options.name or Path(args.tomogram).stem)
    ts = tilt_series_from_args(args)
    options, note = ctf_for_reconstruction(options, ts, ctf_given=args.ctf is not None)
    if note:
        print(f"tomomatch match: {note}", file=sys.stderr)
    job = run_match(
        args.template,
        args.mask,
        args.tomogram,
        args.out_dir,
        options,
        tilt_series=ts,
        quiet=args.quiet,
        processes=args.processes,
        rotations_per_unit=args.rotations_per_unit,
        command=" ".join(shlex.quote(a) for a in ["tomomatch"] + sys.argv[1:]),
    )
    st = job["search_statistics"]
    if not args.quiet:
        names = ", ".join(Path(job[k]).name for k in ("scores", "angles", "rotations"))
        print(
            f"wrote {names}, {job['name']}_job.json in "
            f"{args.out_dir}: {job['n_rotations']} rotations, {len(job['tile_regions'])} tile(s), "
            f"search mean {st['mean']:.4g} std {st['std']:.4g}, {job['elapsed_s']:.1f} s"
        )
        reg = job.get("search_region")
        if reg:
            print(
                f"search region: {reg['n_voxels']} of {reg['n_voxels_tomogram']} voxels"
                f" ({100.0 * reg['n_voxels'] / reg['n_voxels_tomogram']:.1f} %), {reg['n_voxels_computed']} computed"
            )
    return 0
