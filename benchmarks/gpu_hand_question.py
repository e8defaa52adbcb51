"""How long ``tomomatch hand`` takes to answer the hand question, on a GPU (issue 19, item 1).

Target: ``tomomatch hand`` on 300 candidates runs on CUDA (``--device cuda``) in under 60 s.
Two numbers, both with ``--device``:

* ``hand_rescore_300_s`` -- :func:`tomomatch.hand.rescore_particles` (what ``tomomatch hand``
  runs after it has candidates) on ``--n-candidates`` (300) candidates under ``h = +1, -1, 0``
  with ``tomomatch hand``'s defaults (local rotations within 8 degrees at 4 degrees: 33
  rotations; +-1 voxel: 27 positions; 2x oversampled template), from the arrays in memory to
  the scores on the host (weights, transfers and the tomogram's preparation included). The
  candidates are the simulation's true particles (poses turned by 3 degrees about a random
  axis, positions moved by up to one voxel per axis, as in ``hand_acceptance.py``) plus random
  positions and poses inside the tomogram up to the count (false positives cost the same).
* ``hand_question_s`` -- the whole route from files to a verdict, i.e. ``tomomatch hand -v
  TOMO -t TEMPLATE -m MASK`` with the tilt metadata and no candidates:
  :func:`tomomatch.hand.run_hand` runs its coarse search (one :func:`tomomatch.job.run_match`
  at ``h = 0``, 20 degrees: 1,944 rotations, per-tilt CTF and dose weighting), extracts up to
  ``--n-candidates`` candidates, re-scores them under the three hands and gives the verdict
  (report written, figure not drawn). Reading the files and the CUDA start-up are included.
* ``cpu_check`` (on a GPU, ``--check-cpu N``, default 8): the first N candidates re-scored again
  on the CPU; the largest score and delta differences between the devices, and how often they
  pick the same local pose and shift.

Input (not timed; ``simulate_s`` is recorded): a simulation, because the hand question needs
particles with a real per-tilt defocus gradient, and the seed's sizes cannot be had otherwise.
``--size seed``: the ``seed-clean`` preset (the seed page's geometry: 514 x 720 x 84 voxels of
8.56 A, 41 tilts -60..60 at 3 degrees, 3 um defocus, 100 ribosomes, clean ice) with the seed's
60^3 template box, true hand +1, seed 7004 (the acceptance run's). It takes 22-35 s on the
2-core development machine; the ``seed`` preset (with
crowders and a K3 detector) would take longer and needs shared maps, and changes no size, so
``seed-clean`` is the fastest honest input. Its particles are the 70S model 4V5D when the
shared data and gemmi are there, else the simulator's built-in phantom of the same diameter
(recorded as ``structure``; the timings depend on the sizes, not on the structure).
``--size small``: a quick CPU smoke size (the `strip` preset, the CI test's strong-gradient geometry: 1400 x 56 x
40 voxels of 5 A, 24 phantoms of 100 A, true hand -1, a 30 degree coarse search, 48 candidates).
``--coarse-step 90 --n-candidates 4`` with ``--size seed`` runs the seed-size path on a CPU in
about 1.5 minutes (a smoke test of the sizes, not a measurement).

Output: a table on stdout and a JSON file (``--json``; default ``$OUT/hand_question.json`` when
``$OUT`` is set, else ``benchmarks/results/hand-question-<date>.json``) with the fields of
``benchmarks/results/gpu-YYYY-MM-DD[-N].json``: ``gpu``, ``hand_question_s``,
``hand_rescore_300_s`` (null unless ``n_candidates`` is 300; ``hand_rescore_s`` always holds the
time), ``n_candidates``, ``verdict``, ``commit``, ``sizes``, and more.

Usage, here (CPU smoke run, about 1-2 minutes on 2 shared cores)::

    .venv/bin/python benchmarks/gpu_hand_question.py --device cpu --size small

On the GPU machine (nothing can be fetched there: carry the wheels of the packages its image
lacks, and the 70S model). Prepared once on the development machine, into ignored folders::

    bash benchmarks/gpu_wheels.sh          # .wheels/: mrcfile, starfile, gemmi, healpix, mdocfile, ...
    mkdir -p build/hq_data/structures && cp ../shared/data/structures/4v5d.cif.gz build/hq_data/structures/

(mdocfile and alnfile, and pydantic for them, because the simulator checks its defocus range with
``tomomatch.metadata``.) Then run ``benchmarks/gpu_session_19.sh`` through the device tool with
``carry: [".wheels", "build/hq_data"]``; it installs the wheels with
``pip install --no-index --no-deps --target /tmp/site`` and runs this script as::

    PYTHONPATH=/tmp/site:$PWD/src TOMOMATCH_DATA=$PWD/build/hq_data \\
      timeout 300 python3 benchmarks/gpu_hand_question.py --device cuda --size seed --commit <HASH>

The image's python3 (3.12) holds torch, numpy, scipy, pandas, matplotlib, rich and Triton;
pyFFTW and dask are not needed on this path.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pickle
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing

import torch  # noqa: E402

from hand_acceptance import perturbed_truth  # noqa: E402
from records import commit  # noqa: E402
from tomomatch.hand import HandScores, hand_statistics, rescore_particles, run_hand  # noqa: E402
from tomomatch.matching import resolve_device  # noqa: E402
from tomomatch.mrcio import read_volume  # noqa: E402

#: the inputs of each size: simulation preset and overrides, the coarse search, the default count
SIZES = {
    "seed": dict(
        preset="seed-clean",
        overrides=dict(template_box_size=60),
        seed=7004,
        hand=1,
        coarse_step_deg=20.0,
        n_candidates=300,
    ),
    "small": dict(
        preset="strip",
        overrides={},
        seed=4242,
        hand=-1,
        coarse_step_deg=30.0,
        n_candidates=48,
    ),
}
POSE_ERROR_DEG = 3.0


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def simulate_input(work: Path, size: dict):
    """The simulation of ``size`` in ``work/sim`` (reused when already there): paths, tilt
    series, true particles, structure name, seconds."""
    from tomomatch.simulate import simulate

    sim_dir = work / "sim"
    cache = sim_dir / "hand_question_input.pkl"
    if cache.exists():
        with open(cache, "rb") as fh:
            return pickle.load(fh) | {"simulate_s": 0.0, "reused": True}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = simulate(size["preset"], sim_dir, seed=size["seed"], hand=size["hand"], **size["overrides"])
    structures = res.summary.get("structures") or [{}]
    inp = {
        "paths": {k: str(v) for k, v in res.paths.items()},
        "tilt_series": res.tilt_series,
        "particles": res.particles,
        "structure": structures[0].get("name", str(res.summary.get("parameters", {}).get("structure"))),
        "simulation_warnings": [str(w.message) for w in caught],
        "true_hand": int(res.hand),
    }
    with open(cache, "wb") as fh:
        pickle.dump(inp, fh)
    return inp | {"simulate_s": time.perf_counter() - t0, "reused": False}


def candidates(inp: dict, shape_zyx, n: int, seed: int = 0):
    """True particles (3 degree pose error, +-1 voxel) plus random false positives up to ``n``:
    ``(positions_xyz, poses, is_true)``."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    p = inp["particles"]
    if "tmIsDecoy" in p.columns:
        p = p[p["tmIsDecoy"] == 0]
    p = p.head(n)
    pos, poses = perturbed_truth(p, POSE_ERROR_DEG, rng)
    n_false = n - len(p)
    size_xyz = np.asarray(shape_zyx[::-1])
    false_pos = rng.uniform(0, 1, (n_false, 3)) * (size_xyz - 1)
    false_rot = Rotation.random(n_false, random_state=seed).as_matrix() if n_false else np.zeros((0, 3, 3))
    pos = np.clip(np.concatenate([pos, false_pos]), 0, size_xyz - 1)
    return pos, np.concatenate([poses, false_rot]), np.arange(n) < len(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="torch device: cpu, cuda or cuda:N")
    ap.add_argument("--size", choices=sorted(SIZES), default="seed", help="seed: the seed's sizes; small: CPU smoke")
    ap.add_argument("--n-candidates", type=int, default=None, help="candidates (default: 300 seed, 40 small)")
    ap.add_argument(
        "--json", type=Path, default=None, help="result file (default: $OUT/hand_question.json or results/)"
    )
    ap.add_argument("--work", type=Path, default=None, help="work folder (kept; its simulation is reused)")
    ap.add_argument("--commit", default=None, help="commit recorded (default: git rev-parse HEAD, if any)")
    ap.add_argument(
        "--coarse-step", type=float, default=None, help="coarse search step, degrees (default: 20 seed, 30 small)"
    )
    ap.add_argument(
        "--check-cpu",
        type=int,
        default=8,
        metavar="N",
        help="on a GPU, also re-score the first N candidates on the CPU and compare (0: no check)",
    )
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    size = SIZES[args.size]
    n_cand = int(args.n_candidates or size["n_candidates"])
    coarse_step = float(args.coarse_step or size["coarse_step_deg"])
    date = _dt.date.today().isoformat()
    out_json = args.json
    if out_json is None:
        out_json = (
            Path(os.environ["OUT"]) / "hand_question.json"
            if os.environ.get("OUT")
            else HERE / "results" / f"hand-question-{date}.json"
        )
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    if dev.type == "cuda":
        torch.zeros(1, device=dev)  # the CUDA context (not a cost of tomomatch)
        torch.cuda.reset_peak_memory_stats(dev)

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="hand_question_")
        work = Path(tmp.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    try:
        inp = simulate_input(work, size)
        print(f"input: {size['preset']} ({inp['structure']}), simulated in {inp['simulate_s']:.1f} s", flush=True)
        paths = inp["paths"]
        ts = inp["tilt_series"]

        # (a) re-scoring of n_cand candidates under +1, -1, 0 (tomomatch hand's defaults)
        tomo, voxel = read_volume(paths["tomogram"])
        tmpl, _ = read_volume(paths["template"])
        mask, _ = read_volume(paths["mask"])
        pos, poses, is_true = candidates(inp, tomo.shape, n_cand)
        _sync(dev)
        t0 = time.perf_counter()
        res = rescore_particles(tomo, voxel, ts, tmpl, mask, pos, poses, hands=(1, -1, 0), device=dev)
        _sync(dev)
        t_rescore = time.perf_counter() - t0
        truth_scores = res.to_hand_scores()
        sel = np.flatnonzero(is_true)
        true_only = HandScores(
            x_angstrom=truth_scores.x_angstrom[sel],
            y_angstrom=truth_scores.y_angstrom[sel],
            z_angstrom=truth_scores.z_angstrom[sel],
            score_plus=truth_scores.score_plus[sel],
            score_minus=truth_scores.score_minus[sel],
            score_zero=None if truth_scores.score_zero is None else truth_scores.score_zero[sel],
        )
        rep_true = hand_statistics(true_only, seed=0)
        print(f"re-scored {n_cand} candidates in {t_rescore:.1f} s", flush=True)
        cpu_check = None
        k = min(int(args.check_cpu), n_cand)
        if dev.type != "cpu" and k > 0:  # the same candidates on the CPU: how close are the devices?
            t0 = time.perf_counter()
            ref = rescore_particles(tomo, voxel, ts, tmpl, mask, pos[:k], poses[:k], hands=(1, -1, 0), device="cpu")
            d_cpu, d_dev = ref.scores[:, 0] - ref.scores[:, 1], res.scores[:k, 0] - res.scores[:k, 1]
            cpu_check = {
                "n": k,
                "cpu_s": round(time.perf_counter() - t0, 2),
                "max_abs_score_diff": float(np.abs(ref.scores - res.scores[:k]).max()),
                "max_abs_delta_diff": float(np.abs(d_cpu - d_dev).max()),
                "max_abs_delta": float(np.abs(d_cpu).max()),
                "same_best_rotation": float(np.mean(np.all(ref.best_rotation == res.best_rotation[:k], axis=(-2, -1)))),
                "same_best_shift": float(np.mean(np.all(ref.best_shift_voxels == res.best_shift_voxels[:k], axis=-1))),
            }
            print(f"CPU check on {k} candidates: {cpu_check}", flush=True)
        del tomo

        # (b) the whole route: files -> coarse search (h = 0) -> extraction -> re-scoring -> verdict
        _sync(dev)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = run_hand(
                work / "hand",
                tomogram=paths["tomogram"],
                template=paths["template"],
                mask=paths["mask"],
                tilt_series=ts,
                max_particles=n_cand,
                coarse_step_deg=coarse_step,
                figure=False,
                device=dev,
            )
        _sync(dev)
        t_question = time.perf_counter() - t0
        coarse = json.loads((work / "hand_coarse" / "coarse_job.json").read_text())
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        verdict = report["verdict"]
        result = {
            "benchmark": "gpu_hand_question",
            "date": date,
            "gpu": gpu,
            "device": str(dev),
            "torch": torch.__version__,
            "commit": args.commit or commit(),
            "size": args.size,
            "hand_question_s": round(t_question, 2),
            "hand_rescore_300_s": round(t_rescore, 2) if n_cand == 300 else None,
            "hand_rescore_s": round(t_rescore, 2),
            "n_candidates": n_cand,
            "verdict": verdict,
            "true_hand": inp["true_hand"],
            "p": report.get("p"),
            "reason": report.get("reason"),
            "n_candidates_question": report["method"]["n_candidates_rescored"],
            "coarse_match_s": coarse.get("elapsed_s"),
            "rescore_verdict_true_particles": rep_true["verdict"],
            "rescore_p_true_particles": rep_true.get("p"),
            "n_true_candidates": int(is_true.sum()),
            "peak_gpu_memory_gb": None if peak is None else round(peak, 2),
            "cpu_check": cpu_check,
            "simulate_s": round(inp["simulate_s"], 1),
            "simulation_reused": inp["reused"],
            "structure": inp["structure"],
            "simulation_warnings": inp["simulation_warnings"],
            "run_warnings": sorted({str(w.message) for w in caught}),
            "sizes": {
                "preset": size["preset"],
                "tomogram_shape_zyx": list(coarse.get("tomogram_shape_zyx") or []),
                "template_box": int(tmpl.shape[0]),
                "voxel_size_angstrom": float(voxel),
                "n_tilts": int(np.size(ts.tilt_angles_deg)),
                "coarse_step_deg": coarse_step,
                "coarse_rotations": coarse.get("n_rotations"),
                "n_local_rotations": int(res.n_rotations),
                "shift_voxels": 1,
                "oversampling": 2,
                "hands": [1, -1, 0],
            },
        }
    finally:
        if tmp is not None:
            tmp.cleanup()

    rows = [
        ("device", f"{result['device']} ({gpu})"),
        ("input", f"{size['preset']} {result['sizes']['tomogram_shape_zyx']} (z, y, x), box {tmpl.shape[0]}"),
        (
            f"hand_rescore_{n_cand}_s",
            f"{t_rescore:.1f} s ({n_cand} candidates x {res.n_rotations} rotations x 3 hands)",
        ),
        ("  verdict on the true ones", f"{rep_true['verdict']} (n = {len(sel)}, p = {rep_true.get('p')})"),
        ("hand_question_s", f"{t_question:.1f} s (coarse match {coarse.get('elapsed_s')} s)"),
        ("  candidates re-scored", str(result["n_candidates_question"])),
        ("  verdict", f"{verdict} (true hand {inp['true_hand']:+d}; p = {report.get('p')})"),
        ("peak GPU memory", "-" if peak is None else f"{peak:.2f} GB"),
        (
            "CUDA vs CPU",
            "-"
            if cpu_check is None
            else f"max |score diff| {cpu_check['max_abs_score_diff']:.2g}, max |delta diff| "
            f"{cpu_check['max_abs_delta_diff']:.2g} (|delta| up to {cpu_check['max_abs_delta']:.2g}), "
            f"same pose {cpu_check['same_best_rotation']:.0%}, same shift {cpu_check['same_best_shift']:.0%}"
            f" ({cpu_check['n']} candidates)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
