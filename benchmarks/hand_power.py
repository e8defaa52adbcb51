"""Power of the single-tomogram hand test, and the pooled verdict over several tomograms.

How the verdict's p-value depends on

* the number of particles ``n`` (random subsets of one simulated field),
* their strength (score in units of the search standard deviation, ``sigma``; set by the noise),
* the field width (only particles with ``|x| <= W/2``: the tomogram's x extent),
* the gradient model: each particle's own defocus (``tomomatch hand``) or the defocus of the centre
  of its tile with 3 tiles along x (``match --tiles 3 1 1``, the two-run workflow's model; particles
  are re-scored at their own positions with the tile's template, so only the model differs).

Every case simulates one long, thin tomogram (the simulator, ``preset_config("ci")`` with
overrides: 5 A voxels, 100 A phantom, 14 nm slab, 1.5 um defocus, 3 degree tilt step, true hand
-1), re-scores every true particle once under ``h = +1, -1, 0`` at its true pose (``max_angle 0``,
``+-1`` voxel), and then draws subsets. Power = fraction of subsets whose verdict is the true hand
(``hand_statistics``: Wilcoxon p <= 0.01, bootstrap interval, trend); also the median p.

Strength: ``sigma`` = mean particle score (true hand) / standard deviation of the score at 300
random positions and poses of the same tomogram (the search's score distribution; what
``score_sigma`` of ``tomomatch extract`` measures).

Pooled part: ``--pooled-tomograms`` (default 8) tomograms of the ``--pooled-level`` setting
(default ``weak``: the weakest at which 80 particles of one tomogram decide) with
``--pooled-particles`` (15) particles each: each tomogram's own p and verdict and the pooled
(Stouffer) one, on ``preset_config(--pooled-preset)`` (default ``ci``) with the same size and
noise overrides. The ``hard`` preset as it is (2 um field at 10 A, crowders, gold, carbon edge,
mismatched template) is measured by ``benchmarks/hand_hard.py``.

Run: ``.venv/bin/python benchmarks/hand_power.py`` (a few minutes on 2 cores); writes
``benchmarks/results/hand_power.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from tomomatch.hand_stats import HandScores, hand_statistics, pooled_hand_statistics  # noqa: E402

VOXEL = 5.0
#: particles per subset in the field-width comparison
WIDTH_N = 10
TRUE_HAND = -1

#: noise settings, strongest first (the simulator's ice noise and shot noise at a dose per tilt)
LEVELS = {
    "strong": dict(shot_noise=False, ice_noise_rad=0.03),
    "medium": dict(shot_noise=True, dose_per_tilt=3.5, ice_noise_rad=0.03),
    "weak": dict(shot_noise=True, dose_per_tilt=1.0, ice_noise_rad=0.06),
    "very_weak": dict(shot_noise=True, dose_per_tilt=0.5, ice_noise_rad=0.1),
}


def _overrides(nx: int, n_particles: int, level: str) -> dict:
    return dict(
        phantom_diameter_angstrom=100.0,
        n_particles=n_particles,
        n_decoys=0,
        n_blobs=0,
        tomogram_size_xyz=(nx, 56, 40),
        voxel_size_angstrom=VOXEL,
        thickness_nm=14.0,
        defocus_um=1.5,
        tilt_step_deg=3.0,
        **LEVELS[level],
    )


def simulate_and_rescore(
    preset: str, nx: int, n_particles: int, level: str, seed: int, n_background: int = 0, tiles: int = 0
):
    """Simulate one tomogram and re-score its true particles; returns per-model HandScores and sigma."""
    from tomomatch.metadata import load_tilt_series
    from tomomatch.mrcio import read_volume
    from tomomatch.rescore import _hand_weights, rescore_particles
    from tomomatch.simulate import simulate

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = simulate(preset, Path(tmp) / "sim", seed=seed, hand=TRUE_HAND, **_overrides(nx, n_particles, level))
        d = sim.out_dir
        ts = load_tilt_series(tilt_angles=d / "sim.rawtlt", dose=d / "sim_dose.txt", defocus=d / "sim.defocus")
        tomo, _ = read_volume(d / "sim.mrc", VOXEL)
        tmpl, _ = read_volume(d / "template.mrc", VOXEL)
        msk, _ = read_volume(d / "mask.mrc", VOXEL)
    p = sim.particles
    pos = np.stack([p["tmVoxelIndexX"], p["tmVoxelIndexY"], p["tmVoxelIndexZ"]], 1).astype(float)
    from tomomatch.conventions import relion_to_matrix

    poses = relion_to_matrix(p[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float))
    common = dict(max_angle_deg=0.0, shift_voxels=1)
    out: dict = {}
    res = rescore_particles(tomo, VOXEL, ts, tmpl, msk, pos, poses, **common)
    out["particle"] = res.to_hand_scores()
    if tiles:
        nz, ny, nxx = tomo.shape
        bounds = np.array_split(np.arange(nxx), tiles)

        def tile_weight(centred_xyz, hand):
            # the defocus of the centre of the particle's tile (x only; y and z at the tile centre 0)
            ix = int(round(centred_xyz[0] / VOXEL)) + nxx // 2
            k = next(i for i, b in enumerate(bounds) if b[0] <= ix <= b[-1])
            cx = (bounds[k][0] + (bounds[k][-1] + 1 - bounds[k][0]) // 2 - nxx // 2) * VOXEL
            return _hand_weights(ts, tmpl.shape, VOXEL, [[cx, 0.0, 0.0]], (hand,), "full", {})[0, 0]

        res_t = rescore_particles(tomo, VOXEL, ts, tmpl, msk, pos, poses, weight_function=tile_weight, **common)
        out["tiles"] = res_t.to_hand_scores()
    sigma = None
    if n_background:
        rng = np.random.default_rng(seed + 1)
        B = tmpl.shape[0]
        nz, ny, nxx = tomo.shape
        bg = np.stack(
            [
                rng.integers(B // 2 + 1, nxx - B // 2 - 1, n_background),
                np.full(n_background, ny // 2),
                np.full(n_background, nz // 2),
            ],
            1,
        ).astype(float)
        from scipy.spatial.transform import Rotation

        bg_rot = Rotation.random(n_background, random_state=seed).as_matrix()
        bgres = rescore_particles(tomo, VOXEL, ts, tmpl, msk, bg, bg_rot, hands=(0,), max_angle_deg=0.0, shift_voxels=0)
        sigma = float(res.score(TRUE_HAND).mean() / bgres.score(0).std())
    return out, sigma


def subset_power(scores: HandScores, n: int, draws: int, rng, mask=None) -> dict:
    """Verdicts on ``draws`` random subsets of ``n`` particles (within ``mask``)."""
    idx_all = np.flatnonzero(np.ones(len(scores), bool) if mask is None else mask)
    if idx_all.size < n:
        return {"n": n, "available": int(idx_all.size), "power": None, "median_p": None}
    ps, right = [], 0
    for _ in range(draws):
        idx = rng.choice(idx_all, n, replace=False)
        sub = HandScores(scores.x_angstrom[idx], scores.score_plus[idx], scores.score_minus[idx])
        r = hand_statistics(sub, n_bootstrap=500, seed=0, min_particles=min(10, n))
        ps.append(r["p"] if r["p"] is not None else 1.0)
        right += r["verdict"] == TRUE_HAND
    return {
        "n": n,
        "available": int(idx_all.size),
        "power": right / draws,
        "median_p": float(np.median(ps)),
        "fraction_p_below_0.01": float(np.mean(np.asarray(ps) <= 0.01)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nx", type=int, default=2800, help="widest field, voxels (5 A): 1.4 um")
    ap.add_argument("--particles", type=int, default=80, help="particles per simulated field")
    ap.add_argument("--draws", type=int, default=200, help="random subsets per cell")
    ap.add_argument("--levels", nargs="+", default=list(LEVELS))
    ap.add_argument("--pooled-tomograms", type=int, default=8)
    ap.add_argument("--pooled-particles", type=int, default=15)
    ap.add_argument("--pooled-nx", type=int, default=2800)
    ap.add_argument("--pooled-preset", default="ci", help="simulator preset of the pooled tomograms")
    ap.add_argument("--pooled-level", default="weak", choices=list(LEVELS), help="noise of the pooled tomograms")
    ap.add_argument("--seed", type=int, default=9100)
    ap.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "hand_power.json"))
    args = ap.parse_args(argv)

    from tomomatch.simulate.config import PRESETS

    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    doc: dict = {"true_hand": TRUE_HAND, "voxel_angstrom": VOXEL, "settings": vars(args), "levels": {}}
    ns = [5, 8, 10, 15, 20, 30, 45, 80]
    widths_um = [0.35, 0.7, 1.4]
    for li, level in enumerate(args.levels):
        t1 = time.time()
        models, sigma = simulate_and_rescore(
            "ci", args.nx, args.particles, level, args.seed + li, n_background=300, tiles=3
        )
        x_um = np.abs(models["particle"].x_angstrom) / 1e4
        entry: dict = {
            "sigma": sigma,
            "mean_delta": float(np.mean(models["particle"].delta)),
            "mean_score_true": float(np.mean(models["particle"].score_minus)),
            "seconds": None,
            "by_n": {},
            "by_width": {},
        }
        for model, sc in models.items():
            entry["by_n"][model] = [subset_power(sc, n, args.draws, rng) for n in ns if n <= len(sc)]
            entry["by_width"][model] = [
                subset_power(sc, WIDTH_N, args.draws, rng, mask=x_um <= w / 2) for w in widths_um
            ]
        entry["seconds"] = time.time() - t1
        doc["levels"][level] = entry
        print(f"{level}: sigma {sigma:.1f}, {len(models['particle'])} particles, {entry['seconds']:.0f} s", flush=True)

    # ---- pooled verdict over several small tomograms of the hardest setting
    preset = args.pooled_preset
    if preset not in PRESETS:
        ap.error(f"unknown preset {preset!r}")
    level = args.pooled_level
    strata = []
    t1 = time.time()
    for k in range(args.pooled_tomograms):
        models, _ = simulate_and_rescore(preset, args.pooled_nx, args.pooled_particles, level, args.seed + 100 + k)
        strata.append((f"tomo{k + 1}", models["particle"]))
    pooled = pooled_hand_statistics(strata, n_bootstrap=2000)
    doc["pooled"] = {
        "preset": preset,
        "level": level,
        "nx": args.pooled_nx,
        "particles_per_tomogram": args.pooled_particles,
        "verdict": pooled["verdict"],
        "p": pooled["p"],
        "stouffer_z": pooled["stouffer"]["z"],
        "tomograms": [
            {k: r[k] for k in ("name", "n_nonzero_delta", "p", "z", "verdict", "disagrees")}
            for r in pooled["tomograms"]
        ],
        "all_particles_one_test_p": hand_statistics(
            HandScores(
                np.concatenate([s.x_angstrom for _, s in strata]),
                np.concatenate([s.score_plus for _, s in strata]),
                np.concatenate([s.score_minus for _, s in strata]),
            ),
            n_bootstrap=2000,
        )["p"],
        "seconds": time.time() - t1,
    }
    doc["seconds"] = time.time() - t0

    # ---- tables
    print(f"\npower (verdict = true hand at p <= 0.01), true hand {TRUE_HAND}, {args.draws} subsets per cell")
    print("| level | sigma | model | " + " | ".join(f"n={n}" for n in ns) + " |")
    print("|---|---|---|" + "---|" * len(ns))
    for level, e in doc["levels"].items():
        for model, rows in e["by_n"].items():
            cells = {r["n"]: f"{r['power']:.2f} ({r['median_p']:.1g})" for r in rows if r["power"] is not None}
            print(f"| {level} | {e['sigma']:.1f} | {model} | " + " | ".join(cells.get(n, "-") for n in ns) + " |")
    print(f"\nfield width ({WIDTH_N} particles with |x| <= W/2): power (median p)")
    print("| level | model | " + " | ".join(f"W={w} um" for w in widths_um) + " |")
    print("|---|---|" + "---|" * len(widths_um))
    for level, e in doc["levels"].items():
        for model, rows in e["by_width"].items():
            print(
                f"| {level} | {model} | "
                + " | ".join("-" if r["power"] is None else f"{r['power']:.2f} ({r['median_p']:.1g})" for r in rows)
                + " |"
            )
    pd_ = doc["pooled"]
    print(
        f"\npooled ({pd_['preset']} preset, {pd_['level']}, {pd_['particles_per_tomogram']} particles x"
        f" {args.pooled_tomograms} tomograms): verdict {pd_['verdict']}, p = {pd_['p']:.2g}"
        f" (all particles in one test: p = {pd_['all_particles_one_test_p']:.2g})"
    )
    for r in pd_["tomograms"]:
        print(f"  {r['name']}: n = {r['n_nonzero_delta']}, p = {r['p']:.2g}, z = {r['z']:+.2f}, verdict {r['verdict']}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"\nwrote {out} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
