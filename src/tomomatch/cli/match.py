"""``tomomatch match``: the template search (thin layer over :func:`tomomatch.job.run_match`)."""
from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import InputError
from ..job import DEFAULT_MAX_MEMORY_GB, run_match
from ._metadata_args import add_tilt_metadata_arguments, tilt_series_from_args


def _tiles(values):
    if len(values) == 1 and values[0].lower() == "auto":
        return "auto"
    if len(values) != 3:
        raise InputError(f"--tiles takes NX NY NZ or 'auto', got {' '.join(values)!r}", None, "--tiles")
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise InputError(f"--tiles counts must be integers, got {' '.join(values)!r}", None, "--tiles") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "match", help="template search: max FLCF over rotations per voxel",
        description=(
            "Search a tomogram for a template: for every voxel the maximum over rotations of the "
            "fast local correlation (Roseman FLCF) and the index of the best rotation. Writes "
            "<name>_scores.mrc, <name>_angles.mrc, <name>_rotations.txt and <name>_job.json into "
            "OUTDIR. Tiles carry their own per-tilt defocus (defocus gradient). Killed jobs resume "
            "from <name>_checkpoints/ when started again with the same command."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-t", "--template", required=True, metavar="MRC", help="template (cubic box, tomogram contrast)")
    p.add_argument("-m", "--mask", required=True, metavar="MRC", help="mask, same box as the template")
    p.add_argument("-v", "--tomogram", required=True, metavar="MRC", help="tomogram")
    p.add_argument("-d", "--out-dir", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--name", help="output base name (default: tomogram file stem)")
    p.add_argument("--voxel-size", type=float, metavar="A", help="override the tomogram's voxel size (Angstrom)")
    ang = p.add_mutually_exclusive_group(required=True)
    ang.add_argument("--angular-step", type=float, metavar="DEG", help="angular step in degrees")
    ang.add_argument("--particle-diameter", type=float, metavar="A",
                     help="particle diameter (Angstrom): Crowther step = resolution / diameter")
    p.add_argument("--symmetry", default="C1", help="cyclic symmetry Cn about the template z axis")
    p.add_argument("--low-pass", type=float, metavar="A", help="low-pass resolution (Angstrom)")
    p.add_argument("--high-pass", type=float, metavar="A", help="high-pass resolution (Angstrom)")
    p.add_argument("--whiten", action="store_true", help="spectral whitening estimated from the tomogram")
    p.add_argument("--wedge", choices=["none", "binary", "per-tilt"], default=None,
                   help="template weighting (default: per-tilt with tilt metadata, else none)")
    p.add_argument("--ctf", choices=["signed", "abs", "none"], default="signed",
                   help="CTF in the wedge: signed, abs (phase-flipped tomogram) or none")
    p.add_argument("--no-dose", action="store_true", help="no exposure (dose) filter in the per-tilt wedge")
    p.add_argument("--defocus-handedness", type=int, choices=[1, -1, 0], default=None,
                   help="defocus hand h (default: from RELION/Warp metadata, else 0 = no gradient)")
    p.add_argument("--hand-mode", choices=["full", "pytom"], default="full",
                   help="full: h*(-x sin t + z cos t), h = RELION rlnTomoHand; "
                        "pytom: pytom-match-pick's z cos(h t) + x sin(h t)")
    p.add_argument("--tiles", nargs="+", default=["1", "1", "1"], metavar="N",
                   help="tile counts NX NY NZ, or 'auto' (residual defocus below d^2/(4 lambda))")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--max-memory", type=float, default=DEFAULT_MAX_MEMORY_GB, metavar="GB",
                   help="memory budget for rotation batches")
    p.add_argument("--random-phase", action="store_true",
                   help="subtract the per-voxel max of a phase-randomised template")
    p.add_argument("--method", choices=["fast", "resample", "exact"], default="fast",
                   help="fast: rotate the template in Fourier space (exact transform onto the tile); "
                        "resample: cheaper, ~1%% approximate; exact: real-space reference path")
    p.add_argument("--checkpoint-interval", type=float, default=60.0, metavar="S",
                   help="seconds between rotation-chunk checkpoints")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="run the work units (tile x rotation chunk) in N single-threaded processes; "
                        "outputs are identical for any N")
    p.add_argument("--rotations-per-unit", type=int, default=None, metavar="K",
                   help="rotations per work unit (default: a whole tile, or about 4 units per process)")
    p.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tilt_metadata_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    ts = tilt_series_from_args(args)
    job = run_match(
        args.template, args.mask, args.tomogram, args.out_dir, name=args.name,
        voxel_size_angstrom=args.voxel_size, angular_step_deg=args.angular_step,
        particle_diameter_angstrom=args.particle_diameter, symmetry=args.symmetry,
        low_pass_angstrom=args.low_pass, high_pass_angstrom=args.high_pass, whiten=args.whiten,
        wedge=args.wedge, ctf=None if args.ctf == "none" else args.ctf, dose=not args.no_dose,
        tilt_series=ts, defocus_handedness=args.defocus_handedness, hand_mode=args.hand_mode,
        tiles=_tiles(args.tiles), device=args.device, max_memory_gb=args.max_memory,
        random_phase=args.random_phase, method=args.method, quiet=args.quiet,
        checkpoint_interval_s=args.checkpoint_interval, batch_size=args.batch_size,
        processes=args.processes, rotations_per_unit=args.rotations_per_unit,
        command=" ".join(shlex.quote(a) for a in ["tomomatch"] + sys.argv[1:]))
    st = job["search_statistics"]
    if not args.quiet:
        print(f"wrote {job['scores']}, {job['angles']}, {job['rotations']}, {job['name']}_job.json in "
              f"{args.out_dir}: {job['n_rotations']} rotations, {len(job['tile_regions'])} tile(s), "
              f"search mean {st['mean']:.4g} std {st['std']:.4g}, {job['elapsed_s']:.1f} s")
    return 0
