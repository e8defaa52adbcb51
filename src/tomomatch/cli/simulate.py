"""``tomomatch simulate``: tilt series and tomogram with known particles, poses and defocus hand."""

from __future__ import annotations

import argparse
import warnings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate a tilt series + tomogram with ground-truth particles and defocus hand",
        description="Weak-phase simulation with a CTF per particle and tilt whose defocus follows the TRUE "
        "hand h (df + h*(-x sin t + z cos t), RELION 5 rlnTomoHand), dose filter, shot noise, and "
        "weighted back-projection. Writes tilt series, tomogram, .rawtlt/.tlt (IMOD sign), dose, "
        "IMOD .defocus, RELION 5 STAR files, "
        "ground-truth particles.star, template.mrc + mask.mrc and summary.json.",
    )
    p.add_argument(
        "--preset",
        default="ci",
        help="ci (seconds), lamella (ci-sized, 180 nm thick, tilts "
        "-40..+60 step 2), seed (70S, 0.44x0.62 um at 8.56 A, calibrated to the seed page's ~20 sigma: "
        "crowders, misalignment, K3-like detector), seed-clean (seed in clean ice, ~64 sigma), "
        "wide (0.88 um at 4.28 A), strip (7 um x 0.28 um at 5 A, strong defocus gradient: the hand test's case), "
        "hard (20S among crowders, ~8 sigma) or custom (default ci)",
    )
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--hand", type=int, default=None, choices=[1, -1, 0], help="TRUE defocus handedness h")
    p.add_argument(
        "--hand-mode",
        choices=["full", "pytom"],
        default=None,
        help="full: h flips the whole depth (default); pytom: h flips only x sin t",
    )
    p.add_argument("--n-particles", type=int, default=None)
    p.add_argument("--n-decoys", type=int, default=None)
    p.add_argument("--n-blobs", type=int, default=None, help="small random background blobs")
    p.add_argument(
        "--structure",
        default=None,
        help="atomic model (PDB/mmCIF, gemmi), density map (MRC), or phantom / phantom-mirror / phantom-decoy",
    )
    p.add_argument("--decoy-structure", default=None)
    p.add_argument("--thickness-nm", type=float, default=None, help="ice slab thickness (nm)")
    p.add_argument(
        "--slab-offset-nm", type=float, default=None, help="slab centre z relative to the tomogram centre (nm)"
    )
    p.add_argument("--voxel-size", type=float, default=None, help="tomogram voxel size (A)")
    p.add_argument("--binning", type=int, default=None, help="simulation pixel = voxel size / binning")
    p.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None, help="tomogram size in voxels")
    p.add_argument("--tilt-range", type=float, nargs=2, metavar=("MIN", "MAX"), default=None)
    p.add_argument("--tilt-step", type=float, default=None)
    p.add_argument("--tilt-order", choices=["dose-symmetric", "sequential", "bidirectional"], default=None)
    p.add_argument("--dose-per-tilt", type=float, default=None, help="e/A^2 per tilt")
    p.add_argument("--defocus", type=float, default=None, help="nominal defocus (um, + = underfocus)")
    p.add_argument("--defocus-scatter", type=float, default=None, help="per-tilt defocus scatter, sd (um)")
    p.add_argument("--astigmatism", type=float, default=None, help="|dU - dV| (um)")
    p.add_argument("--voltage", type=float, default=None, help="kV")
    p.add_argument("--cs", type=float, default=None, help="mm")
    p.add_argument("--amplitude-contrast", type=float, default=None)
    p.add_argument("--ice-noise", type=float, default=None, help="rms ice phase noise per pixel at 0 deg (rad)")
    p.add_argument("--jitter", type=float, default=None, help="rms per-tilt misalignment (A)")
    p.add_argument("--tilt-rotation", type=float, default=None, help="rms per-tilt in-plane rotation (degrees)")
    p.add_argument(
        "--template-structure",
        default=None,
        help="make template.mrc from this structure instead of the particles' (template mismatch)",
    )
    p.add_argument("--template-low-pass", type=float, default=None, help="low-pass template.mrc (A)")
    p.add_argument("--crowding", type=float, default=None, help="crowder volume fraction of the slab (0-0.45)")
    p.add_argument("--crowders", nargs="+", default=None, help="crowder structures (@26S-map, @6z6u, paths, ...)")
    p.add_argument("--detector", default=None, help="ideal, k2, k3 or falcon4 (counting-detector MTF/DQE)")
    p.add_argument("--detector-pixel", type=float, default=None, help="physical detector pixel at the specimen (A)")
    p.add_argument("--n-gold", type=int, default=None, help="10 nm gold beads at the slab surfaces")
    p.add_argument("--carbon-edge", type=float, default=None, help="carbon film for x > FRACTION of the field (0-1)")
    p.add_argument(
        "--sigma",
        action="store_true",
        help="score the particles at their true pose against the background (seconds; in the summary)",
    )
    p.add_argument("--no-shot-noise", action="store_true", help="expected counts instead of Poisson samples")
    p.add_argument(
        "--noise-free",
        action="store_true",
        help="also write <name>_noisefree.mrc: the same tomogram without ice and shot noise",
    )
    p.add_argument("--tomo-name", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..simulate import simulate
    from ._outputs import output_folder

    output_folder(args.output, "--output")
    ov = dict(
        n_particles=args.n_particles,
        n_decoys=args.n_decoys,
        n_blobs=args.n_blobs,
        structure=args.structure,
        decoy_structure=args.decoy_structure,
        thickness_nm=args.thickness_nm,
        slab_offset_nm=args.slab_offset_nm,
        voxel_size_angstrom=args.voxel_size,
        binning=args.binning,
        tomogram_size_xyz=tuple(args.size) if args.size else None,
        tilt_step_deg=args.tilt_step,
        tilt_order=args.tilt_order,
        dose_per_tilt=args.dose_per_tilt,
        defocus_um=args.defocus,
        defocus_scatter_um=args.defocus_scatter,
        astigmatism_um=args.astigmatism,
        voltage_kv=args.voltage,
        cs_mm=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        ice_noise_rad=args.ice_noise,
        jitter_angstrom=args.jitter,
        tilt_rotation_deg=args.tilt_rotation,
        template_structure=args.template_structure,
        template_low_pass_angstrom=args.template_low_pass,
        crowding_volume_fraction=args.crowding,
        crowder_structures=tuple(args.crowders) if args.crowders else None,
        detector=args.detector,
        detector_pixel_angstrom=args.detector_pixel,
        n_gold=args.n_gold,
        carbon_edge_x_fraction=args.carbon_edge,
        hand_mode=args.hand_mode,
        tomo_name=args.tomo_name,
    )
    if args.tilt_range:
        ov["tilt_min_deg"], ov["tilt_max_deg"] = args.tilt_range
    if args.no_shot_noise:
        ov["shot_noise"] = False
    if args.noise_free:
        ov["write_noise_free"] = True
    if args.sigma:
        ov["estimate_sigma"] = True
    ov = {k: v for k, v in ov.items() if v is not None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = simulate(args.preset, out_dir=args.output, seed=args.seed, hand=args.hand, **ov)
    for w in caught:
        print(f"warning: {w.message}")
    s = res.summary
    print(
        f"simulated {s['n_particles']} particles + {s['n_decoys']} decoys, true hand {res.hand}, "
        f"{len(s['per_tilt']['tilt_angle_deg'])} tilts, tomogram {'x'.join(map(str, s['tomogram_size_xyz']))} "
        f"at {s['tomogram_voxel_angstrom']:g} A in {s['timings']['total_s']:.1f} s "
        f"(peak {s['peak_memory_gb']:.2f} GB) -> {res.out_dir}"
    )
    for line in sigma_lines(s):
        print(line)
    return 0


def sigma_lines(summary: dict) -> list[str]:
    """The realism and particle-sigma lines of the simulation summary (empty when off)."""
    out = []
    r = summary.get("realism") or {}
    if "crowding" in r:
        c = r["crowding"]
        out.append(
            f"crowding: {c['n_crowders']} crowders, volume fraction {c['achieved_volume_fraction']:.3f} "
            f"(requested {c['requested_volume_fraction']:g})"
        )
    if "gold" in r:
        out.append(f"gold: {r['gold']['n']} beads of {r['gold']['diameter_nm']:g} nm")
    if "carbon_edge" in r:
        out.append(f"carbon edge at x voxel {r['carbon_edge']['x_edge_voxel']:.1f}")
    ps = summary.get("particle_sigma")
    if ps:
        q, fs = ps["summary"], ps["full_search"]
        out.append(
            f"particles at their true pose: {q['n']} particles, sigma min {q['min']:.1f}, p10 {q['p10']:.1f}, "
            f"median {q['median']:.1f}, p90 {q['p90']:.1f}, max {q['max']:.1f}; full-search cut-off "
            f"{fs['cutoff_sigma_1_false_alarm']:.2f} sigma (1 false alarm), "
            f"{100 * fs['fraction_above_cutoff']:.0f} % above"
        )
    return out
