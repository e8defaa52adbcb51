"""``tomomatch batch``: match and extract many tomograms on a Dask cluster (:func:`tomomatch.distributed.run_batch`)."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..options import add_match_arguments, match_options_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "batch",
        help="match + extract (+ hand) a list of tomograms on a Dask cluster",
        description=(
            "Template-match every tomogram of a list (RELION 5 tomograms.star, or a TSV/CSV table with a "
            "'tomogram' column and metadata columns; see docs/batch.md), then extract particles (and "
            "optionally check the defocus hand). Work units (tile x rotation chunk) run as Dask futures on "
            "a local cluster (default), an existing scheduler (--scheduler) or SLURM (--slurm-config); "
            "results equal 'tomomatch match' run on one process. Started again, finished units and "
            "tomograms are not computed again. OUTDIR must be shared by all workers."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "-l",
        "--list",
        required=True,
        metavar="FILE",
        help="tomograms.star (RELION 5) or a .tsv/.csv table of tomograms",
    )
    p.add_argument("-t", "--template", required=True, metavar="MRC", help="template (cubic box, tomogram contrast)")
    p.add_argument("-m", "--mask", required=True, metavar="MRC", help="mask, same box as the template")
    p.add_argument("-d", "--out-dir", required=True, metavar="OUTDIR", help="output folder (shared file system)")
    add_match_arguments(p.add_argument_group("matching (as tomomatch match)"), batch=True)
    e = p.add_argument_group("extraction (as tomomatch extract)")
    e.add_argument("--no-extract", action="store_true", help="match only")
    e.add_argument("-n", "--max-particles", type=int, default=1000, help="largest number of particles per tomogram")
    e.add_argument(
        "--cutoff-method",
        choices=("tail", "gaussian", "fixed"),
        default=None,
        help="cut-off: tail fit (default), gaussian, or fixed (--cutoff)",
    )
    e.add_argument("--cutoff", type=float, help="fixed score cut-off")
    e.add_argument("--false-alarms", type=float, default=1.0, help="expected false peaks per tomogram")
    e.add_argument("--format", choices=("relion5", "relion4", "warp"), default="relion5", help="STAR flavour")
    p.add_argument("--hand", action="store_true", help="also run the defocus-hand check (tomomatch hand) per tomogram")
    c = p.add_argument_group("cluster")
    c.add_argument("--scheduler", metavar="ADDRESS", help="existing Dask scheduler, e.g. tcp://host:8786")
    c.add_argument("--slurm-config", metavar="YAML", help="SLURM via dask-jobqueue (see docs/slurm-example.yaml)")
    c.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="local workers (default: one per GPU with CUDA, else one per CPU core)",
    )
    c.add_argument("--threads-per-worker", type=int, default=1, metavar="N", help="threads per local worker")
    c.add_argument("--device", default="auto", help="auto, cpu, cuda (each worker's GPU) or cuda:N")
    c.add_argument(
        "--rotations-per-unit",
        type=int,
        default=None,
        metavar="K",
        help="rotations per work unit (default: about 4 units per worker and tomogram)",
    )
    c.add_argument(
        "--dashboard-address",
        default=":8787",
        metavar="ADDR",
        help="dashboard of a local/SLURM scheduler ('none': no dashboard)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument(
        "--log-interval",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (0: none)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..distributed import run_batch
    from ..errors import InputError
    from ._outputs import check_dashboard_address, check_local_cluster, output_folder

    if args.angular_step is None and args.particle_diameter is None and getattr(args, "angle_list", None) is None:
        raise InputError("give --angular-step, --particle-diameter or --angle-list", None, "--angular-step")
    if not args.no_extract and args.particle_diameter is None:
        raise InputError(
            "extraction needs --particle-diameter (its exclusion diameter); or give --no-extract",
            None,
            "--particle-diameter",
        )
    if args.cutoff is not None and args.cutoff_method not in (None, "fixed"):
        raise InputError(f"--cutoff given with --cutoff-method {args.cutoff_method}", None, "--cutoff")
    match = match_options_from_args(args)
    output_folder(args.out_dir, "--out-dir")
    check_local_cluster(args.workers, args.threads_per_worker, local=args.scheduler is None and not args.slurm_config)
    check_dashboard_address(args.dashboard_address)
    extract = None
    if not args.no_extract:
        extract = dict(
            max_particles=args.max_particles,
            particle_diameter_angstrom=args.particle_diameter,
            cutoff=args.cutoff,
            cutoff_method=args.cutoff_method,
            false_alarms=args.false_alarms,
            format=args.format,
        )
    dash = None if str(args.dashboard_address).lower() == "none" else args.dashboard_address
    result = run_batch(
        args.list,
        args.template,
        args.mask,
        args.out_dir,
        match=match,
        extract=extract,
        hand={} if args.hand else None,
        scheduler=args.scheduler,
        slurm_config=args.slurm_config,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        device=args.device,
        rotations_per_unit=args.rotations_per_unit,
        quiet=args.quiet,
        ctf_from_reconstruction=args.ctf is None,
        dashboard_address=dash,
        command=" ".join(shlex.quote(a) for a in ["tomomatch"] + sys.argv[1:]),
    )
    failed = [r for r in result if "error" in r]
    for r in failed:
        print(f"tomomatch batch: {r['name']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0
