"""Right versus mirrored tilt geometry on a simulated lamella (asymmetric tilt range).

tomomatch's geometry is IMOD's/AreTomo's/RELION 5's (:mod:`tomomatch.conventions`,
geometry version 2: ``x' = x cos t + z sin t``). The geometry used before (version 1) was its
mirror image, which is the same as reading IMOD-sign angle files with every angle negated.
With a symmetric tilt range that mostly goes unnoticed; with a lamella's asymmetric range
(here -40..+60) the mirrored geometry puts each tilt's wedge slice, dose and defocus on the
wrong side: the template is weighted for -60..+40 while the data cover -40..+60.

This script simulates the ``lamella`` preset (``tomomatch.simulate``, true hand ``--hand``),
then matches the one tomogram twice with :func:`tomomatch.job.run_match`, with the same
rotations, the same hand and per-tilt wedge + signed CTF + dose weighting:

* ``right``: the simulated tilt series as written (``tomograms.star``, IMOD/RELION sign);
* ``mirrored``: the same series with every tilt angle negated
  (``ts.with_(tilt_angles_deg=-ts.tilt_angles_deg)``), i.e. what geometry version 1 did to
  IMOD-sign angle files.

For each it reports the score at the true particle positions (the score map's maximum within
``--score-radius`` voxels of the true voxel), also in units of the job's search-statistics
sigma, the angular error of the pose found there, and the precision and recall of the default
extraction (``extract_candidates``: ``tail`` cut-off, 1 expected false alarm) against the
ground truth (a pick within ``--match-radius`` x particle radius of a true particle, paired
one to one; decoys count as negatives, as in ``benchmarks/extract_precision.py``).

Usage (about 2-3 minutes on 2 CPU cores at the default 20 degree step)::

    python benchmarks/lamella_geometry.py [--work /tmp/lamella-geometry] [--seed 9101] [--hand -1]
        [--step 20] [--device cpu] [--json benchmarks/results/lamella-geometry-YYYY-MM-DD.json]

It prints a table and writes a JSON record (default
``benchmarks/results/lamella-geometry-<today>.json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import starfile
import torch

import tomomatch
from tomomatch.angles import geodesic_distance_deg, uniform_rotations
from tomomatch.extract import extract_candidates
from tomomatch.hand_stats import pair_particles
from tomomatch.job import run_match
from tomomatch.jobfile import load_job_maps, read_job
from tomomatch.metadata import read_relion5, read_tilt_angles
from tomomatch.simulate import simulate

HERE = Path(__file__).resolve().parent


def _ball_offsets(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    g = np.arange(-r, r + 1)
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    keep = zz**2 + yy**2 + xx**2 <= radius**2 + 1e-9
    return np.column_stack([zz[keep], yy[keep], xx[keep]])


def scores_at_truth(job_path: Path, true_zyx: np.ndarray, true_rot: np.ndarray, radius: float) -> dict:
    """Per particle: the largest score within ``radius`` voxels of the true voxel, the pose found
    there and its angular distance to the true pose."""
    scores, angle_idx, mats = load_job_maps(read_job(job_path))
    offs = _ball_offsets(radius)
    shape = np.array(scores.shape)
    best, err = [], []
    for p, R in zip(np.rint(true_zyx).astype(int), true_rot):
        cand = p[None, :] + offs
        cand = cand[np.all((cand >= 0) & (cand < shape), axis=1)]
        vals = scores[cand[:, 0], cand[:, 1], cand[:, 2]]
        k = int(np.argmax(vals))
        best.append(float(vals[k]))
        ai = int(angle_idx[tuple(cand[k])])
        err.append(float(geodesic_distance_deg(mats[ai], R)) if ai >= 0 else float("nan"))
    return {"score": np.array(best), "angle_error_deg": np.array(err)}


def picking(job_path: Path, true_xyz: np.ndarray, is_decoy: np.ndarray, match_r: float) -> dict:
    """Precision and recall of the default extraction against the ground truth."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = extract_candidates(job_path)  # defaults: tail cut-off, 1 expected false alarm
    ia, ib, _ = pair_particles(df[["x", "y", "z"]].to_numpy(), true_xyz, match_r)
    n_true = int((~is_decoy).sum())
    tp = int((~is_decoy[ib]).sum())
    on_decoy = int(is_decoy[ib].sum())
    n = int(len(df))
    return {
        "cutoff": float(df.attrs["cutoff"]),
        "cutoff_method": str(df.attrs["cutoff_method"]),
        "n_picks": n,
        "tp": tp,
        "fp": n - tp,
        "fp_decoy": on_decoy,
        "fp_background": n - tp - on_decoy,
        "precision": tp / n if n else None,
        "recall": tp / n_true if n_true else None,
        "warnings": [str(w.message) for w in caught],
    }


def main() -> None:
    today = datetime.date.today().isoformat()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/lamella-geometry"),
        help="folder for the simulation and the two match jobs (reused if present)",
    )
    ap.add_argument("--seed", type=int, default=9101)
    ap.add_argument("--hand", type=int, default=-1, choices=[1, -1], help="true defocus hand (rlnTomoHand)")
    ap.add_argument("--n-particles", type=int, default=None, help="default: the preset's")
    ap.add_argument("--step", type=float, default=20.0, help="angular search step (degrees)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--score-radius",
        type=float,
        default=2.0,
        help="score at a true particle = maximum within this many voxels of its voxel",
    )
    ap.add_argument("--match-radius", type=float, default=0.5, help="pairing radius / particle radius")
    ap.add_argument("--json", type=Path, default=HERE / "results" / f"lamella-geometry-{today}.json")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.time()

    # ---------------------------------------------------------------- simulation
    sim_dir = work / f"sim_seed{args.seed}_h{args.hand:+d}"
    overrides = {} if args.n_particles is None else {"n_particles": args.n_particles}
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = simulate("lamella", sim_dir, seed=args.seed, hand=args.hand, **overrides)
    t_sim = time.time() - t0
    summ = res.summary
    # the matcher reads the files the simulator wrote (IMOD/RELION sign, rlnTomoHand = true hand)
    ts = read_relion5(sim_dir / "tomograms.star")
    assert ts.hand == args.hand
    assert np.array_equal(ts.tilt_angles_deg, read_tilt_angles(sim_dir / "sim.tlt"))
    assert np.array_equal(ts.tilt_angles_deg, res.tilt_series.tilt_angles_deg)
    mirrored = ts.with_(tilt_angles_deg=-ts.tilt_angles_deg)

    truth = starfile.read(sim_dir / "particles.star")
    is_decoy = truth["tmIsDecoy"].to_numpy(int) == 1
    true_xyz = truth[["tmVoxelIndexX", "tmVoxelIndexY", "tmVoxelIndexZ"]].to_numpy(float)
    from tomomatch.conventions import relion_to_matrix

    true_rot = relion_to_matrix(truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
    radius_a = summ["structures"][0]["radius_angstrom"]
    voxel = float(summ["tomogram_voxel_angstrom"])
    diameter = 2.0 * radius_a
    match_r = args.match_radius * radius_a / voxel
    rotations = uniform_rotations(args.step)

    # ---------------------------------------------------------------- two matches
    runs = {}
    for tag, series in (("right", ts), ("mirrored", mirrored)):
        out = work / f"match_{tag}_step{args.step:g}_seed{args.seed}_h{args.hand:+d}"
        t0 = time.time()
        job = run_match(
            res.paths["template"],
            res.paths["mask"],
            res.paths["tomogram"],
            out,
            name=tag,
            rotations=rotations,
            particle_diameter_angstrom=diameter,
            tilt_series=series,
            defocus_handedness=args.hand,
            wedge="per_tilt",
            ctf="signed",
            dose=True,
            device=args.device,
        )
        t_match = time.time() - t0
        job_path = out / f"{tag}_job.json"
        assert job["n_rotations"] == len(rotations) and job["defocus_handedness"] == args.hand
        st = job["search_statistics"]
        at = scores_at_truth(job_path, true_xyz[~is_decoy][:, ::-1], true_rot[~is_decoy], args.score_radius)
        sigma = (at["score"] - st["mean"]) / st["std"]
        runs[tag] = {
            "tilt_range_deg": [float(series.tilt_angles_deg.min()), float(series.tilt_angles_deg.max())],
            "match_s": round(t_match, 1),
            "search_mean": st["mean"],
            "search_std": st["std"],
            "score_mean": float(at["score"].mean()),
            "score_median": float(np.median(at["score"])),
            "score_sigma_mean": float(sigma.mean()),
            "score_sigma_median": float(np.median(sigma)),
            "angle_error_median_deg": float(np.nanmedian(at["angle_error_deg"])),
            "scores_at_truth": [round(float(s), 6) for s in at["score"]],
            "picking": picking(job_path, true_xyz, is_decoy, match_r),
        }
    a, b = runs["right"], runs["mirrored"]
    sa, sb = np.array(a["scores_at_truth"]), np.array(b["scores_at_truth"])
    ratios = {
        "mean_score": b["score_mean"] / a["score_mean"],
        "median_score": b["score_median"] / a["score_median"],
        "mean_score_sigma": b["score_sigma_mean"] / a["score_sigma_mean"],
        "per_particle_median": float(np.median(sb / sa)),
        "fraction_particles_lower_when_mirrored": float(np.mean(sb < sa)),
    }

    # ---------------------------------------------------------------- report
    rows = [
        ("tilt range used by the matcher (deg)", "{:.0f}..{:+.0f}", "tilt_range_deg"),
        ("mean score at true positions", "{:.4f}", "score_mean"),
        ("median score at true positions", "{:.4f}", "score_median"),
        ("mean score at truth / search sigma", "{:.2f}", "score_sigma_mean"),
        ("median pose error at truth (deg)", "{:.1f}", "angle_error_median_deg"),
    ]
    print(
        f"lamella preset, seed {args.seed}, true hand {args.hand:+d}: {int((~is_decoy).sum())} particles + "
        f"{int(is_decoy.sum())} decoys, {ts.n_tilts} tilts "
        f"{ts.tilt_angles_deg.min():g}..{ts.tilt_angles_deg.max():+g}, "
        f"tomogram {'x'.join(map(str, summ['tomogram_size_xyz']))} at {voxel:g} A, {len(rotations)} rotations "
        f"({args.step:g} deg)"
    )
    print(f"{'':40s} {'(a) right':>14s} {'(b) mirrored':>14s} {'b/a':>7s}")
    for label, fmt, key in rows:
        va, vb = a[key], b[key]
        if isinstance(va, list):
            print(f"{label:40s} {fmt.format(*va):>14s} {fmt.format(*vb):>14s}")
        else:
            print(f"{label:40s} {fmt.format(va):>14s} {fmt.format(vb):>14s} {vb / va:7.3f}")
    for key in ("n_picks", "tp", "fp", "precision", "recall", "cutoff"):
        va, vb = a["picking"][key], b["picking"][key]
        f = "{:.3f}" if isinstance(va, float) else "{}"
        print(f"{'picking ' + key:40s} {f.format(va):>14s} {f.format(vb):>14s}")
    print(
        f"per-particle median ratio b/a {ratios['per_particle_median']:.3f}; "
        f"{100 * ratios['fraction_particles_lower_when_mirrored']:.0f} % of particles score lower when mirrored"
    )

    record = {
        "benchmark": "lamella_geometry",
        "date": today,
        "command": "python benchmarks/lamella_geometry.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("work", "json") and v is not None
        ),
        "tomomatch_version": getattr(tomomatch, "__version__", None),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "torch": torch.__version__,
        },
        "simulation": {
            "preset": "lamella",
            "seed": args.seed,
            "true_hand": args.hand,
            "n_particles": int((~is_decoy).sum()),
            "n_decoys": int(is_decoy.sum()),
            "n_tilts": ts.n_tilts,
            "tilt_angles_deg": ts.tilt_angles_deg.tolist(),
            "thickness_nm": summ["parameters"]["thickness_nm"],
            "tomogram_size_xyz": summ["tomogram_size_xyz"],
            "voxel_angstrom": voxel,
            "particle_radius_angstrom": radius_a,
            "simulate_s": round(t_sim, 1),
        },
        "match": {
            "n_rotations": len(rotations),
            "angular_step_deg": args.step,
            "defocus_handedness": args.hand,
            "wedge": "per_tilt",
            "ctf": "signed",
            "dose": True,
            "mirrored": "every tilt angle negated (geometry version 1 reading IMOD-sign angles)",
        },
        "evaluation": {
            "score_radius_voxels": args.score_radius,
            "match_radius_voxels": match_r,
            "extraction": "extract_candidates defaults (tail cut-off, 1 expected false alarm)",
        },
        "right": a,
        "mirrored": b,
        "ratio_mirrored_over_right": ratios,
        "total_s": round(time.time() - t_all, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.json} ({record['total_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
