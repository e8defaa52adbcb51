"""Accuracy of ``tomomatch roc`` (issue 16 item 3) against the truth of simulations.

For each case: simulate (``tomomatch.simulate``), match with the simulation's template and mask
at the true defocus hand (``tomomatch.job.run_match``), estimate the particle count and the
ROC from the peak scores alone (:func:`tomomatch.roc.estimate_roc`), then label the same peak
list with the ground truth (a peak is a particle when it pairs one-to-one with a true particle
within ``--match-radius`` x the particle radius; decoys are listed apart) and compare, at each
cut-off of the report (extract's default first): expected vs actual false positives, and
estimated vs actual recall (actual = true particles above the cut-off / true particles).

Cases (``--cases``; default all):

* ``ci24``: the ``ci`` preset with 24 phantom particles of 150 A, no decoys, 30 blobs, 3 seeds
  (the test's set-up; particles and background separate). Seconds each.
* ``lamella``: a thick lamella at ``ci``'s scale (128 x 128 x 200 voxels of 10 A, 180 nm thick,
  tilts -40..+60 at 2 degrees, 30 phantom particles of 200 A, 4 decoys, 130 blobs, ice noise
  0.064 rad: the values of the ``lamella`` preset), 2 seeds. About a minute each at 20 degrees.
* ``strip``: a thin 1400 x 56 x 40 strip at 5 A with shot noise, 24 particles of 100 A, 2 decoys,
  20 blobs (docs/extraction.md's "strip"): particles and background overlap. 2 seeds.
* ``seed``: the ``seed-clean`` preset (70S ribosomes from 4V5D in clean ice; the ``seed`` preset
  before its calibration, on which the 2026-12-04 record was measured) cropped to 256 x 360 x 84 voxels of
  8.56 A with 25 ribosomes and 15 blobs, 1 seed (needs gemmi and the shared 4v5d.cif.gz;
  otherwise the phantom is simulated and the record says so).

Usage::

    python benchmarks/roc_check.py OUT [--cases ci24 lamella strip seed] [--step 20] [--device cpu]
        [--json benchmarks/results/roc-YYYY-MM-DD.json]

About 10 minutes on 2 CPU cores (most of it matching the ``lamella`` and ``seed`` cases).
Simulations and match jobs are kept under ``OUT/<case>_<seed>/`` and reused when present (their
times are then ``null`` in the record). The ``seed`` case looks for the shared data as
:func:`tomomatch.shared_data.shared_data_dir` does (``TOMOMATCH_DATA`` or ``../shared/data``). The
record (``--json``, default ``benchmarks/results/roc-<today>.json``) holds every case's estimate,
truth and table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

CASES: dict[str, dict] = {
    "ci24": dict(
        preset="ci",
        seeds=[8301, 8302, 8303],
        step=30.0,
        tiles=(1, 1, 1),
        hand=-1,
        overrides=dict(n_particles=24, n_decoys=0, phantom_diameter_angstrom=150.0),
    ),
    "lamella": dict(
        preset="ci",
        seeds=[8311, 8312],
        step=20.0,
        tiles=(1, 1, 1),
        hand=-1,
        overrides=dict(
            phantom_diameter_angstrom=200.0,
            n_particles=30,
            n_decoys=4,
            n_blobs=130,
            thickness_nm=180.0,
            tomogram_size_xyz=[128, 128, 200],
            tilt_min_deg=-40.0,
            tilt_max_deg=60.0,
            tilt_step_deg=2.0,
            dose_per_tilt=2.2,
            ice_noise_rad=0.064,
        ),
    ),
    "strip": dict(
        preset="ci",
        seeds=[8321, 8322],
        step=30.0,
        tiles=(3, 1, 1),
        hand=1,
        overrides=dict(
            phantom_diameter_angstrom=100.0,
            n_particles=24,
            n_decoys=2,
            n_blobs=20,
            blob_sigma_angstrom=[10.0, 25.0],
            blob_peak_volt=1.5,
            thickness_nm=14.0,
            tomogram_size_xyz=[1400, 56, 40],
            voxel_size_angstrom=5.0,
            tilt_step_deg=3.0,
            dose_per_tilt=4.0,
            defocus_um=1.5,
            shot_noise=True,
        ),
    ),
    "seed": dict(
        preset="seed-clean",
        seeds=[8331],
        step=25.0,
        tiles=(1, 1, 1),
        hand=-1,
        overrides=dict(tomogram_size_xyz=[256, 360, 84], n_particles=25, n_blobs=15),
    ),
}


def run_case(out: Path, name: str, seed: int, args) -> dict:
    from tomomatch.job import run_match
    from tomomatch.metadata import load_tilt_series
    from tomomatch.simulate import simulate

    case = CASES[name]
    step = args.step if args.step is not None else case["step"]
    sim_dir = out / "sim"
    t0 = time.time()
    reused_sim = (sim_dir / "summary.json").exists()
    if not reused_sim:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            simulate(case["preset"], sim_dir, seed=seed, hand=case["hand"], **case["overrides"])
    t_sim = time.time() - t0
    summ = json.loads((sim_dir / "summary.json").read_text())
    diameter = 2.0 * max(s["radius_angstrom"] for s in summ["structures"])
    ts = load_tilt_series(
        tilt_angles=sim_dir / "sim.rawtlt", dose=sim_dir / "sim_dose.txt", defocus=sim_dir / "sim.defocus"
    )
    job_path = out / "match" / "sim_job.json"
    t0 = time.time()
    reused_match = job_path.exists()
    if not reused_match:
        run_match(
            sim_dir / "template.mrc",
            sim_dir / "mask.mrc",
            sim_dir / "sim.mrc",
            out / "match",
            name="sim",
            angular_step_deg=step,
            particle_diameter_angstrom=diameter,
            tilt_series=ts,
            defocus_handedness=case["hand"],
            device=args.device,
            tiles=tuple(case["tiles"]),
        )
    t_match = time.time() - t0
    rec = {
        "case": name,
        "preset": case["preset"],
        "seed": seed,
        "overrides": case["overrides"],
        "step_deg": step,
        "structures": [s.get("name", s.get("structure")) for s in summ["structures"]],
        "simulation_warnings": summ.get("warnings", []),
        "simulate_s": None if reused_sim else round(t_sim, 1),
        "match_s": None if reused_match else round(t_match, 1),
    }
    rec.update(evaluate(job_path, sim_dir, args))
    return rec


def evaluate(job_path: Path, sim_dir: Path, args) -> dict:
    """The ROC estimate of one job against the simulation's truth."""
    import starfile

    from tomomatch.extract import extract_candidates
    from tomomatch.hand import pair_particles
    from tomomatch.mrcio import read_volume
    from tomomatch.roc import estimate_roc

    summ = json.loads((sim_dir / "summary.json").read_text())
    truth = starfile.read(sim_dir / "particles.star")
    radius_a = max(s["radius_angstrom"] for s in summ["structures"])
    voxel = read_volume(sim_dir / "sim.mrc")[1]
    xyz = truth[["tmVoxelIndexX", "tmVoxelIndexY", "tmVoxelIndexZ"]].to_numpy(float)
    is_decoy = truth["tmIsDecoy"].to_numpy(int) == 1
    n_true = int((~is_decoy).sum())

    t0 = time.time()
    report, _ = estimate_roc(job_path)
    t_roc = time.time() - t0
    # the same peak list with positions (integer peak voxels: nothing is dropped), labelled by the truth
    df = extract_candidates(job_path, max_particles=10**8, cutoff=0.0, cutoff_method="fixed", subvoxel=False)
    ia, ib, _ = pair_particles(df[["x", "y", "z"]].to_numpy(float), xyz, args.match_radius * radius_a / voxel)
    label = np.zeros(len(df), int)  # 0 background, 1 particle, 2 decoy
    label[ia] = np.where(is_decoy[ib], 2, 1)
    s = df["score"].to_numpy(float)
    found = int((label == 1).sum())
    tp_s, bg_s = s[label == 1], s[label != 1]
    rows = []
    for r in report["table"]:
        c = r["cutoff"]
        tp = int(((s > c) & (label == 1)).sum())
        rows.append(
            {
                "label": r["label"],
                "cutoff": c,
                "cutoff_sigma": r["cutoff_sigma"],
                "in_fitted_window": r["in_fitted_window"],
                "expected_fp": r["expected_false_positives"],
                "actual_fp": int(((s > c) & (label != 1)).sum()),
                "actual_fp_decoy": int(((s > c) & (label == 2)).sum()),
                "expected_tp": r["expected_true_positives"],
                "actual_tp": tp,
                "estimated_recall": r["recall"],
                "actual_recall": tp / max(n_true, 1),
                "estimated_precision": r["precision"],
                "actual_precision": tp / max(int((s > c).sum()), 1) if (s > c).any() else None,
            }
        )
    return {
        "n_true": n_true,
        "n_decoys": int(is_decoy.sum()),
        "n_found_in_peak_list": found,
        "n_peaks": report["n_peaks"],
        "n_estimated": report["n_particles"],
        "membership_sd": report["n_particles_membership_sd"],
        "count_error": (report["n_particles"] - n_true) / max(n_true, 1),
        "supported": report["particle_component_supported"],
        "likelihood_ratio": report["model"]["likelihood_ratio"],
        "xi": report["model"]["background"]["xi"],
        "n_window": report["model"]["n_window"],
        "separated": bool(found == n_true and tp_s.size and bg_s.size and tp_s.min() > bg_s.max()),
        "weakest_particle": float(tp_s.min()) if tp_s.size else None,
        "strongest_background": float(bg_s.max()) if bg_s.size else None,
        "auc_estimated": report["auc"],
        "warnings": report["warnings"],
        "roc_s": round(t_roc, 2),
        "table": rows,
    }


def _print_case(rec: dict) -> None:
    print(
        f"{rec['case']} seed {rec['seed']}: {rec['n_peaks']} peaks, {rec['n_true']} particles "
        f"({rec['n_found_in_peak_list']} in the peak list) + {rec['n_decoys']} decoys, "
        f"{'separated' if rec['separated'] else 'overlapping'}; estimated {rec['n_estimated']:.1f} "
        f"+- {rec['membership_sd']:.1f} ({100 * rec['count_error']:+.0f} %), 2 dlogL {rec['likelihood_ratio']:.0f}"
        f"{'' if rec['supported'] else ' (not supported)'}, xi {rec['xi']:.2f}",
        flush=True,
    )
    print(f"  {'cut-off':>8} {'FP exp':>7} {'FP act':>6} {'(decoy)':>7} {'recall est':>10} {'recall act':>10}  which")
    for r in rec["table"]:
        print(
            f"  {r['cutoff']:8.4g} {r['expected_fp']:7.2f} {r['actual_fp']:6d} {r['actual_fp_decoy']:7d} "
            f"{r['estimated_recall']:10.3f} {r['actual_recall']:10.3f}  {r['label']}"
            f"{'' if r['in_fitted_window'] else ' (below the fit)'}"
        )
    for w in rec["warnings"]:
        print(f"  warning: {w}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="override every case's seeds")
    ap.add_argument("--step", type=float, default=None, help="angular step (degrees); default per case")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--match-radius", type=float, default=0.5, help="pairing radius / particle radius")
    ap.add_argument("--json", type=Path, default=None, help="record (default benchmarks/results/roc-<today>.json)")
    args = ap.parse_args()
    import torch

    import tomomatch
    from tomomatch.roc import write_roc_report  # atomic JSON, non-finite numbers as null

    today = datetime.date.today().isoformat()
    record_path = args.json or Path(__file__).resolve().parent / "results" / f"roc-{today}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    recs = []
    for name in args.cases:
        for seed in args.seeds or CASES[name]["seeds"]:
            rec = run_case(args.out / f"{name}_{seed}", name, seed, args)
            recs.append(rec)
            _print_case(rec)
    # pooled over the cases
    print()
    print(
        f"{'case':8s} {'seed':>5s} {'true':>5s} {'estimated':>9s} {'error':>6s} {'default cut-off: FP exp':>23s} "
        f"{'FP act':>6s} {'recall est':>10s} {'recall act':>10s}"
    )
    for rec in recs:
        d = rec["table"][0]
        print(
            f"{rec['case']:8s} {rec['seed']:5d} {rec['n_true']:5d} {rec['n_estimated']:9.1f} "
            f"{100 * rec['count_error']:+5.0f}% {d['expected_fp']:23.2f} {d['actual_fp']:6d} "
            f"{d['estimated_recall']:10.3f} {d['actual_recall']:10.3f}"
        )
    doc = {
        "benchmark": "roc_check",
        "date": today,
        "command": "python benchmarks/roc_check.py " + " ".join(sys.argv[1:]),
        "tomomatch_version": tomomatch.__version__,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "torch": torch.__version__,
        },
        "match_radius_fraction": args.match_radius,
        "total_s": round(time.time() - t_start, 1),
        "cases": recs,
    }
    write_roc_report(record_path, doc)
    print(f"record: {record_path}")


if __name__ == "__main__":
    main()
