"""Precision and recall of the extraction cut-off methods on simulations (issue 6).

For each case: simulate (``tomomatch.simulate``), match the tomogram with the simulation's
template and mask at the true defocus hand (``tomomatch.job.run_match``), extract candidates
with the ``tail`` (default) and ``gaussian`` cut-offs for ``--false-alarms`` expected false
alarms, and compare the picks with the ground truth (``particles.star``; decoys count as
negatives: a pick on a decoy is a false positive, counted apart from background false
positives). A pick is a true positive when it pairs one-to-one with a true particle within
``--match-radius`` (fraction of the particle radius; :func:`tomomatch.hand.pair_particles`).

Besides precision and recall of each method it prints the ranking quality independent of any
cut-off: the weakest true positive and the strongest false positive of the full peak list
(``separated`` when every true particle scores above every background peak).

Usage::

    python benchmarks/extract_precision.py OUT [--preset ci] [--seeds 8101 8102] [--step 12]
        [--device cpu|cuda] [--false-alarms 1] [--set n_blobs=300]

``ci`` (128 x 128 x 48, 8 particles + 2 decoys, 30 blobs) runs in minutes on a CPU at a 12-15
degree step; ``seed-clean`` (514 x 720 x 84, 100 ribosomes, 60 blobs, clean ice: the run in
docs/extraction.md) and ``seed`` (the same calibrated to the seed page's ~20 sigma: crowders,
misalignment, K3-like detector) need a GPU for a fine search. A coarse seed-like run (1,944
rotations; about 2-3 minutes on an H100/H200, mostly simulation)::

    python3 benchmarks/extract_precision.py OUT --preset seed-clean --seeds 8201 --step 20 --device cuda
Results: ``OUT/<preset>_<seed>/`` (simulation, match job, one STAR per method) and one JSON
line per case in ``OUT/summary.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from tomomatch.extract import extract_candidates
from tomomatch.hand import pair_particles
from tomomatch.job import run_match
from tomomatch.metadata import load_tilt_series
from tomomatch.mrcio import read_volume
from tomomatch.particles import write_particles
from tomomatch.simulate import simulate

METHODS = ("tail", "gaussian")


def run_case(out: Path, preset: str, seed: int, args) -> dict:
    sim_dir = out / "sim"
    t0 = time.time()
    if not (sim_dir / "summary.json").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            simulate(preset, sim_dir, seed=seed, hand=args.hand, **args.overrides)
    t_sim = time.time() - t0
    summ = json.loads((sim_dir / "summary.json").read_text())
    diameter = 2.0 * max(s["radius_angstrom"] for s in summ["structures"])
    ts = load_tilt_series(
        tilt_angles=sim_dir / "sim.rawtlt", dose=sim_dir / "sim_dose.txt", defocus=sim_dir / "sim.defocus"
    )
    job_path = out / "match" / "sim_job.json"
    t0 = time.time()
    if not job_path.exists():
        run_match(
            sim_dir / "template.mrc",
            sim_dir / "mask.mrc",
            sim_dir / "sim.mrc",
            out / "match",
            name="sim",
            angular_step_deg=args.step,
            particle_diameter_angstrom=diameter,
            tilt_series=ts,
            defocus_handedness=args.hand,
            device=args.device,
            tiles=tuple(args.tiles),
        )
    t_match = time.time() - t0
    result = {
        "preset": preset,
        "seed": seed,
        "hand": args.hand,
        "step_deg": args.step,
        "simulate_s": round(t_sim, 1),
        "match_s": round(t_match, 1),
    }
    result.update(evaluate(job_path, sim_dir, out, args))
    return result


def evaluate(job_path: Path, sim_dir: Path, out: Path, args) -> dict:
    """Precision and recall of each cut-off method for one match job against the simulation's truth."""
    import starfile

    summ = json.loads((sim_dir / "summary.json").read_text())
    truth = starfile.read(sim_dir / "particles.star")
    radius_a = max(s["radius_angstrom"] for s in summ["structures"])
    voxel = read_volume(sim_dir / "sim.mrc")[1]
    diameter = 2.0 * radius_a
    true_xyz = truth[["tmVoxelIndexX", "tmVoxelIndexY", "tmVoxelIndexZ"]].to_numpy(float)
    is_decoy = truth["tmIsDecoy"].to_numpy(int) == 1
    particles_xyz = true_xyz[~is_decoy]
    match_r = args.match_radius * radius_a / voxel
    result = {
        "n_true": int(len(particles_xyz)),
        "n_decoys": int(is_decoy.sum()),
        "false_alarms": args.false_alarms,
        "match_radius_voxels": round(match_r, 2),
    }

    # ranking quality of the whole peak list, independent of the cut-off
    df_all = extract_candidates(
        job_path, max_particles=10**7, particle_diameter_angstrom=diameter, cutoff=0.0, cutoff_method="fixed"
    )
    ia, ib, _ = pair_particles(df_all[["x", "y", "z"]].to_numpy(), particles_xyz, match_r)
    tp_mask = np.zeros(len(df_all), bool)
    tp_mask[ia] = True
    sc = df_all["score"].to_numpy()
    result["n_peaks"] = int(len(df_all))
    result["weakest_tp_score"] = float(sc[tp_mask].min()) if tp_mask.any() else None
    result["strongest_fp_score"] = float(sc[~tp_mask].max()) if (~tp_mask).any() else None
    result["recall_any_cutoff"] = float(tp_mask.sum() / max(len(particles_xyz), 1))
    result["separated"] = bool(
        tp_mask.any()
        and (~tp_mask).any()
        and sc[tp_mask].min() > sc[~tp_mask].max()
        and tp_mask.sum() == len(particles_xyz)
    )

    for method in METHODS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df, details = extract_candidates(
                job_path,
                max_particles=10**6,
                particle_diameter_angstrom=diameter,
                cutoff_method=method,
                false_alarms=args.false_alarms,
                return_details=True,
            )
        write_particles(df, out / f"picks_{method}.star", "relion5", job_path)
        ia, ib, _ = pair_particles(df[["x", "y", "z"]].to_numpy(), true_xyz, match_r)
        tp = int((~is_decoy[ib]).sum())
        on_decoy = int(is_decoy[ib].sum())
        n = int(len(df))
        result[method] = {
            "cutoff": round(df.attrs["cutoff"], 5),
            "cutoff_sigma": round(df.attrs["cutoff_sigma"], 3),
            "method_used": df.attrs["cutoff_method"],
            "n_picks": n,
            "tp": tp,
            "fp": n - tp,
            "fp_decoy": on_decoy,
            "fp_background": n - tp - on_decoy,
            "precision": round(tp / n, 4) if n else None,
            "recall": round(tp / len(particles_xyz), 4),
            "warnings": [str(w.message) for w in caught],
        }
        fit = details.get("tail_fit")
        if fit:  # the tail fit's model: "gpd" or "gpd+particles", and the likelihood ratio that chose it
            result[method]["tail_model"] = fit.get("model")
            result[method]["tail_likelihood_ratio"] = round(float(fit.get("likelihood_ratio", float("nan"))), 2)
            result[method]["tail_xi"] = round(float(fit["xi"]), 3)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="ci")
    ap.add_argument("--seeds", type=int, nargs="+", default=[8101, 8102, 8103])
    ap.add_argument("--hand", type=int, default=-1)
    ap.add_argument("--step", type=float, default=12.0, help="angular step of the search (degrees)")
    ap.add_argument("--tiles", type=int, nargs=3, default=[1, 1, 1])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--false-alarms", type=float, default=1.0)
    ap.add_argument("--match-radius", type=float, default=0.5, help="pairing radius / particle radius")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="simulation overrides, e.g. n_blobs=300 (numbers are parsed as such)",
    )
    args = ap.parse_args()
    args.overrides = {}
    for item in args.set:
        key, _, val = item.partition("=")
        try:
            args.overrides[key] = json.loads(val)
        except json.JSONDecodeError:
            args.overrides[key] = val
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        tag = "".join(f"_{k}{v}" for k, v in args.overrides.items())
        res = run_case(args.out / f"{args.preset}{tag}_{seed}", args.preset, seed, args)
        res["overrides"] = args.overrides
        rows.append(res)
        with open(args.out / "summary.jsonl", "a") as fh:
            fh.write(json.dumps(res) + "\n")
        line = (
            f"{args.preset} seed {seed}: {res['n_true']} particles, {res['n_peaks']} peaks, "
            f"ranking {'separated' if res['separated'] else 'overlapping'} "
            f"(weakest TP {res['weakest_tp_score']}, strongest FP {res['strongest_fp_score']})"
        )
        print(line)
        for m in METHODS:
            r = res[m]
            print(
                f"  {m:8s} cut-off {r['cutoff']:.4g} ({r['cutoff_sigma']:.2f} sigma, {r['method_used']}): "
                f"{r['n_picks']} picks, TP {r['tp']}, FP {r['fp']} ({r['fp_decoy']} on decoys, "
                f"{r['fp_background']} background), precision {r['precision']}, recall {r['recall']}"
                + (
                    f" [{r['tail_model']}, LR {r['tail_likelihood_ratio']}, xi {r['tail_xi']}]"
                    if r.get("tail_model")
                    else ""
                )
            )
    for m in METHODS:
        tp = sum(r[m]["tp"] for r in rows)
        fp = sum(r[m]["fp"] for r in rows)
        fpb = sum(r[m]["fp_background"] for r in rows)
        nt = sum(r["n_true"] for r in rows)
        print(
            f"pooled {m:8s}: precision {tp / max(tp + fp, 1):.3f}, recall {tp / max(nt, 1):.3f} "
            f"(TP {tp}, FP {fp} of which {fpb} background, {nt} particles)"
        )


if __name__ == "__main__":
    main()
