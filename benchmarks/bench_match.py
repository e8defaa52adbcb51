"""Rotations per second of tomomatch's search engine, and of pyTME's CPU matcher on the same data.

Cases (issue 4):
  (a) tomogram 128 x 128 x 64 (x, y, z), template 32^3, spherical mask, no weighting;
  (b) seed sizes: tomogram 510 x 720 x 74 (zyx (74, 720, 510)), template 60^3, spherical mask
      (r = 14, soft edge 1), per-tilt CTF + dose weighting (41 tilts +-60, 3 um, 3 e/A^2 per tilt);
each unsplit and with 3 x-tiles, on the CPU and (when present) on CUDA.

tomomatch's figure is ``rotations / seconds`` spent in the search loop for a fixed number of
rotations after one warm-up batch (set-up time -- tomogram transform, local sigma, weights --
printed separately). With tiles, "rot/s" is for the whole volume (every tile searched).

pyTME (``--peer``) runs in its own virtual environment (never in tomomatch's .venv)::

    python3 -m venv benchmarks/.venv-peer
    benchmarks/.venv-peer/bin/pip install pytme==0.3.6

and is timed through its CLI (``pytme match``, default FLCSphericalMask score, ``-n 2``) at two
angular samplings; the rate is ``(N2 - N1) / (T2 - T1)``, which cancels its set-up time.

Usage::

    .venv/bin/python benchmarks/bench_match.py [--cases a b] [--devices cpu cuda] [--peer]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from tomomatch import matching as M
from tomomatch.matching.fold import _pair_folder, _triton_fold_pairs
from tomomatch.mrcio import write_volume
from tomomatch.tiles import plan_tiles
from tomomatch.tiltseries import TiltSeries

HERE = Path(__file__).resolve().parent
PEER_PY = HERE / ".venv-peer" / "bin" / "python"
PEER_CLI = HERE / ".venv-peer" / "bin" / "pytme"

CASES = {
    "a": dict(shape=(64, 128, 128), box=32, radius=12, voxel=10.0, weighting=False, n_cpu=200, n_gpu=2000),
    "b": dict(shape=(74, 720, 510), box=60, radius=14, voxel=8.56, weighting=True, n_cpu=60, n_gpu=2000),
}
PEER_SAMPLINGS = {"a": (45.0, 30.0), "b": (60.0, 30.0)}  # (b): 24 -> 360 rotations; 60 -> 45 is within the timing noise
PACKED = {"auto": None, "on": True, "off": False}
SEED_ROTATIONS = 248_400  # pytom's count for the seed (250 A particle, 8.56 A voxels)


def make_data(case: dict, seed: int = 0):
    """Template (smooth random blob), soft spherical mask, tomogram = copies + noise."""
    rng = np.random.default_rng(seed)
    n = case["box"]
    z, y, x = np.indices((n, n, n)) - n // 2
    r = np.sqrt(x**2 + y**2 + z**2)
    t = np.zeros((n, n, n))
    for _ in range(6):
        c = rng.uniform(-case["radius"] / 2, case["radius"] / 2, 3)
        t += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * (n / 12) ** 2))
    mask = np.clip(case["radius"] + 1 - r, 0, 1) * np.exp(-(np.clip(r - case["radius"], 0, None) ** 2) / 2)
    mask[r > case["radius"] + 3] = 0
    vol = rng.normal(0, 1, case["shape"]).astype(np.float32)
    return t.astype(np.float32), mask.astype(np.float32), vol


def tilt_series():
    tilts = np.arange(-60, 61, 3.0)
    order = np.argsort(np.abs(tilts), kind="stable")
    dose = np.empty_like(tilts)
    dose[order] = np.arange(tilts.size) * 3.0
    return TiltSeries(tilt_angles_deg=tilts, accumulated_dose=dose, defocus_u_um=np.full(tilts.size, 3.0))


def bench_tomomatch(
    name: str,
    case: dict,
    device: str,
    n_tiles_x: int,
    n_rot: int,
    batch: int,
    method: str = "fast",
    packed: str = "auto",
):
    t_all = time.perf_counter()
    dev = M.resolve_device(device)
    tmpl, mask, vol = make_data(case)
    vol_t = torch.as_tensor(vol, device=dev)
    ts = tilt_series() if case["weighting"] else None
    rots = Rotation.random(n_rot + batch, random_state=1).as_matrix()
    tiles = plan_tiles(
        vol.shape, case["box"], (n_tiles_x, 1, 1), case["voxel"], None if ts is None else ts.tilt_angles_deg, 1
    )
    setup = search = 0.0
    for tile in tiles:
        weight = None
        if ts is not None:
            from tomomatch.weighting import tilt_series_weight

            offs = np.asarray(tile.defocus_offsets_um)

            def weight(shape, offs=offs):
                return tilt_series_weight(ts, shape, case["voxel"], defocus_offset_um=offs, device=dev)

        t0 = time.perf_counter()
        tc = M.TileCorrelator(
            vol_t[tile.data_slices],
            tmpl,
            mask,
            tile.unique_in_data,
            weight=weight,
            method=method,
            device=dev,
            packed=PACKED[packed],
        )
        tc.run(rots[:batch], batch_size=batch)  # warm-up (plans, caches)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        tc.run(rots[batch:], batch_size=batch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        setup += t1 - t0
        search += t2 - t1
        tc_packed = tc.packed
        del tc
    peak = torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else float("nan")
    label = method + (", packed pairs" if tc_packed else "")
    fold = _pair_folder(dev, int(np.prod(vol.shape)), M.EngineConfig.from_environment()) if tc_packed else None
    label += "" if fold is None else (", Triton fold" if fold is _triton_fold_pairs() else ", compiled fold")
    return dict(
        tool=f"tomomatch ({label})",
        case=name,
        device=str(dev),
        tiles=n_tiles_x,
        rotations=n_rot,
        batch=batch,
        rot_per_s=n_rot / search,
        setup_s=setup,
        total_s=time.perf_counter() - t_all,
        peak_gb=peak,
    )


def bench_pytme(name: str, case: dict, workdir: Path, processes: int = 2):
    """pyTME's CPU matcher through its CLI at two samplings; rate from the difference."""
    if not PEER_CLI.exists():
        return None
    tmpl, mask, vol = make_data(case)
    write_volume(workdir / "tomo.mrc", vol, case["voxel"])
    write_volume(workdir / "tmpl.mrc", tmpl, case["voxel"])
    write_volume(workdir / "mask.mrc", mask, case["voxel"])
    counts, times = [], []
    for a in PEER_SAMPLINGS[name]:
        out = subprocess.run(
            [
                str(PEER_PY),
                "-c",
                f"from tme.rotations import get_rotation_matrices as g;print(len(g(angular_sampling={a}, dim=3)))",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        counts.append(int(out.stdout.strip().splitlines()[-1]))
        cmd = [
            str(PEER_CLI),
            "match",
            "-m",
            str(workdir / "tomo.mrc"),
            "-i",
            str(workdir / "tmpl.mrc"),
            "-I",
            str(workdir / "mask.mrc"),
            "-a",
            str(a),
            "-n",
            str(processes),
            "-s",
            "FLCSphericalMask",
            "-o",
            str(workdir / f"out_{a}.pickle"),
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
        if res.returncode != 0:
            print(f"pytme failed ({res.returncode}): {res.stderr[-2000:]}", file=sys.stderr)
            return None
    rate = (counts[1] - counts[0]) / (times[1] - times[0])
    setup = times[0] - counts[0] / rate
    return dict(
        tool="pytme 0.3.6 (CLI, FLCSphericalMask, -n 2)",
        case=name,
        device="cpu",
        tiles=1,
        rotations=f"{counts[0]}->{counts[1]}",
        batch="-",
        rot_per_s=rate,
        setup_s=setup,
        total_s=sum(times),
        peak_gb=float("nan"),
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["a", "b"], choices=list(CASES))
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda if available")
    ap.add_argument("--tiles", nargs="+", type=int, default=[1, 3], help="x-tile counts")
    ap.add_argument("--rotations", type=int, default=None, help="override the rotation count")
    ap.add_argument("--batch", type=int, default=None, help="rotations per batch (default 2 cpu, 16 cuda)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", default="fast", choices=["fast", "resample", "exact"])
    ap.add_argument(
        "--packed",
        nargs="+",
        default=["auto"],
        choices=list(PACKED),
        help="rotation pairs in one complex FFT (auto: on CUDA only); several values run each",
    )
    ap.add_argument("--peer", action="store_true", help="also time pyTME (benchmarks/.venv-peer)")
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        help="record file (default: results/cpu-DATE.json, or gpu-DATE.json when a CUDA device ran; "
        "$OUT/... when $OUT is set)",
    )
    ap.add_argument("--no-json", action="store_true", help="write no record")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    print(
        f"# torch {torch.__version__}, {args.threads} threads, FFT backend (cpu) {M.fft_backend('cpu')}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    for name in args.cases:
        case = CASES[name]
        for device in devices:
            n_rot = args.rotations or (case["n_cpu"] if device == "cpu" else case["n_gpu"])
            batch = args.batch or (2 if device == "cpu" else 16)
            for packed in args.packed:
                for nt in args.tiles:
                    r = bench_tomomatch(name, case, device, nt, n_rot, batch, args.method, packed)
                    rows.append(r)
                    print(_fmt(r), flush=True)
        if args.peer:
            with tempfile.TemporaryDirectory() as td:
                r = bench_pytme(name, case, Path(td))
            if r is None:
                print(f"# pyTME not available or failed for case {name}", flush=True)
            else:
                rows.append(r)
                print(_fmt(r), flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")
    if not args.no_json:
        from records import header, record_path, write_record

        kind = "gpu" if any(str(r["device"]).startswith("cuda") for r in rows) else "cpu"
        record = header("bench_match")
        record.update(threads=args.threads, method=args.method, summary=summarise(rows), rows=rows)
        write_record(record, args.json or record_path(kind))
    return rows


def summarise(rows: list[dict]) -> dict:
    """The issue's keys per case and device: ``tomomatch_rot_s_unsplit``, ``tomomatch_rot_s_3tiles``
    (the best packed variant measured), ``pytme_rot_s``, ``peak_gpu_gb`` and, for case (b), what
    the seed's 248,400-rotation search takes at the unsplit / 3-tile rate (``seed_search_s_*``:
    set-up plus rotations over rate; ``seed_job.py`` times the whole job)."""
    out: dict = {}
    for r in rows:
        key = f"case_{r['case']}_{str(r['device']).split(':')[0]}"
        d = out.setdefault(key, {})
        if r["tool"].startswith("tomomatch"):
            name = "unsplit" if r["tiles"] == 1 else f"{r['tiles']}tiles"
            best = d.get(f"tomomatch_rot_s_{name}")
            if best is None or r["rot_per_s"] > best:
                d[f"tomomatch_rot_s_{name}"] = round(r["rot_per_s"], 2)
                if r["case"] == "b":
                    d[f"seed_search_s_{name}"] = round(r["setup_s"] + SEED_ROTATIONS / r["rot_per_s"], 1)
            if r["peak_gb"] == r["peak_gb"]:  # not NaN
                d["peak_gpu_gb"] = round(max(d.get("peak_gpu_gb", 0.0), r["peak_gb"]), 3)
        else:
            d["pytme_rot_s"] = round(r["rot_per_s"], 2)
    return out


def _fmt(r):
    line = (
        f"{r['tool']:<58} case {r['case']}  {r['device']:<7} tiles {r['tiles']}  rotations {r['rotations']:<8} "
        f"batch {r['batch']:<3} {r['rot_per_s']:9.2f} rot/s  set-up {r['setup_s']:6.1f} s  "
        f"total {r['total_s']:6.1f} s  peak GPU {r['peak_gb']:.2f} GB"
    )
    if r["case"] == "b":  # what the seed's full search would take at this rate
        line += f"  seed search {(r['setup_s'] + SEED_ROTATIONS / r['rot_per_s']) / 60:.1f} min"
    return line


if __name__ == "__main__":
    main()
