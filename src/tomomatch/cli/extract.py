"""``tomomatch extract``: particle candidates from a match job, written as STAR."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="pick particle candidates from a match job and write a STAR file",
        description="Greedy peak picking with a spherical exclusion and a false-alarm cut-off; "
        "writes RELION 5 (default), RELION 4 or Warp STAR.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-j", "--job", required=True, help="match job file (<name>_job.json)")
    p.add_argument("-n", "--max-particles", type=int, default=1000, help="largest number of particles")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--particle-diameter",
        type=float,
        metavar="A",
        help="exclusion diameter in Angstrom (radius = half); default: the job's particle diameter",
    )
    g.add_argument("-r", "--radius", type=float, metavar="VOX", help="exclusion radius in voxels")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--cutoff", type=float, help="score (LCC) cut-off; implies --cutoff-method fixed")
    c.add_argument(
        "--false-alarms", type=float, default=1.0, help="expected number of background peaks above the cut-off"
    )
    p.add_argument(
        "--cutoff-method",
        choices=("tail", "gaussian", "fixed"),
        default=None,
        help="tail: fit the background peak-score tail (default); gaussian: "
        "sqrt(2) erfcinv(2 N_fp / N_search) sigma; fixed: --cutoff",
    )
    p.add_argument("--mask", help="MRC mask: peaks only where it is > 0 (same shape as the score map)")
    p.add_argument(
        "--ignore-tomogram-mask",
        action="store_true",
        help="pick in every voxel the job computed, not only in its search region (match --tomogram-mask,"
        " --search-x/-y/-z); the default picks inside the region, AND-combined with --mask",
    )
    p.add_argument("--tophat", action="store_true", help="apply the white top-hat constraint (suppresses broad ridges)")
    p.add_argument("--tophat-radius", type=float, default=1.0, metavar="VOX", help="top-hat ball radius in voxels")
    p.add_argument("--border", type=int, default=0, metavar="VOX", help="ignore peaks this close to the map faces")
    p.add_argument("--no-subvoxel", action="store_true", help="report integer voxel positions")
    p.add_argument("--format", choices=("relion5", "relion4", "warp"), default="relion5", help="STAR flavour")
    p.add_argument("-o", "--output", help="output STAR (default: <job dir>/<name>_particles.star)")
    p.add_argument(
        "--plot",
        action="store_true",
        help="also write <output stem>_scores.png (histograms, cut-offs) and _slab.png (picks)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..extract import extract_candidates, read_job
    from ..particles import write_particles
    from ._outputs import output_file

    job = read_job(args.job)
    name = job.get("name") or Path(job["_job_path"]).stem.removesuffix("_job")
    out = Path(args.output) if args.output else Path(job["_job_path"]).parent / f"{name}_particles.star"
    output_file(out, "--output")  # before the maps are read
    if args.cutoff is not None and args.cutoff_method not in (None, "fixed"):
        raise InputError(f"--cutoff given with --cutoff-method {args.cutoff_method}", field="--cutoff")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df, details = extract_candidates(
            job,
            max_particles=args.max_particles,
            particle_diameter_angstrom=args.particle_diameter,
            radius_voxels=args.radius,
            cutoff=args.cutoff,
            false_alarms=args.false_alarms,
            cutoff_method=args.cutoff_method,
            mask=args.mask,
            tophat=args.tophat,
            tophat_radius_voxels=args.tophat_radius,
            border_voxels=args.border,
            subvoxel=not args.no_subvoxel,
            use_tomogram_mask=not args.ignore_tomogram_mask,
            return_details=True,
        )
    for w in caught:
        print(f"warning: {w.message}")
    write_particles(df, out, args.format, job)
    a = df.attrs
    gauss = a.get("gaussian_cutoff")
    extra = f"; gaussian cut-off would be {gauss:.4g}" if gauss is not None and a["cutoff_method"] != "gaussian" else ""
    print(
        f"{len(df)} particles -> {out} ({args.format}); cut-off {a['cutoff']:.4g} = {a['cutoff_sigma']:.2f} sigma"
        f" ({a['cutoff_method']}, {a['false_alarms']:g} false alarms){extra}; exclusion radius"
        f" {a['radius_voxels']:.2f} voxels; {a['n_peaks_total']} peaks in the map"
    )
    if args.plot:
        from ..mrcio import read_volume
        from ..plots import plot_pick_slab, plot_score_histogram

        stem = out.with_suffix("")
        plot_score_histogram(details, f"{stem}_scores.png", title=name)
        vol = details["scores"]
        tomo = job.get("tomogram")
        if tomo and Path(tomo).is_file():
            try:
                v, _ = read_volume(tomo, job["voxel_size_angstrom"], what="tomogram")
                if v.shape == vol.shape:
                    vol = v
            except InputError:
                pass
        plot_pick_slab(vol, df, f"{stem}_slab.png", radius_voxels=a["radius_voxels"], title=None)
        print(f"plots: {stem}_scores.png, {stem}_slab.png")
    return 0
