"""Search region (issue 16, item 1): the same job with and without a lamella-like tomogram mask.

A synthetic tomogram (default zyx ``(160, 320, 320)``, 10 A voxels: Gaussian noise plus a few
copies of a three-blob template) is matched twice with :func:`tomomatch.job.run_match`, the
same rotations (the first ``--rotations`` of the 60 degree uniform set), a 32^3 template and
spherical mask, 2 x 1 x 1 tiles, one process:

* ``full``: the whole tomogram;
* ``masked``: ``tomogram_mask`` = a lamella-like slab: thickness 55 % of z, tilted 6 degrees
  about y, front edge at 75 % of y (about 40 % of the voxels).

It prints a table (wall time, rotations per second, voxels searched and computed, the data
voxels the tiles' FFTs cover) and the largest score difference between the two runs inside the
region at least half a box from the faces (the cropped search must equal the full one there),
and writes a JSON record (default ``benchmarks/results/search-region-<today>.json``).

Usage (about 2 minutes on the 2-core development machine)::

    python benchmarks/search_region.py [--shape 160 320 320] [--rotations 24] [--work /tmp/search-region]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import tomomatch
from tomomatch.angles import uniform_rotations
from tomomatch.job import run_match
from tomomatch.mrcio import read_volume, write_volume

HERE = Path(__file__).resolve().parent
BOX = 32


def _template(n: int) -> np.ndarray:
    z, y, x = (np.indices((n, n, n)) - n // 2).astype(float)
    s = n / 12.0
    t = (
        np.exp(-((x - 2 * s) ** 2 + y**2 + (z + s) ** 2) / (3.0 * s * s))
        + 0.7 * np.exp(-((x + 2 * s) ** 2 + (y - 2 * s) ** 2 + z**2) / (2.0 * s * s))
        + 0.5 * np.exp(-(x**2 + (y + 2 * s) ** 2 + (z - 2 * s) ** 2) / (2.0 * s * s))
    )
    return t.astype(np.float32)


def _sphere(n: int) -> np.ndarray:
    z, y, x = np.indices((n, n, n)) - n // 2
    return (np.sqrt(x**2 + y**2 + z**2) <= 0.4 * n).astype(np.float32)


def lamella_mask(shape) -> np.ndarray:
    """Slab 55 % of z thick, tilted 6 degrees about y, y < 75 % of ny (a lamella's front edge)."""
    nz, ny, nx = shape
    z, y, x = np.indices(shape, dtype=np.float32)
    mid = nz / 2 + np.tan(np.radians(6.0)) * (x - nx / 2)
    return (np.abs(z - mid) < 0.275 * nz) & (y < 0.75 * ny)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs=3, type=int, default=[160, 320, 320], metavar=("NZ", "NY", "NX"))
    ap.add_argument("--rotations", type=int, default=24)
    ap.add_argument("--work", default="/tmp/search-region")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    shape = tuple(args.shape)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(16)
    vol = rng.normal(0, 0.5, shape).astype(np.float32)
    tmpl = _template(BOX)
    for _ in range(12):
        c = [int(rng.integers(0, s - BOX)) for s in shape]
        vol[c[0] : c[0] + BOX, c[1] : c[1] + BOX, c[2] : c[2] + BOX] += tmpl
    write_volume(work / "tomo.mrc", vol, 10.0)
    write_volume(work / "tmpl.mrc", tmpl, 10.0)
    write_volume(work / "mask.mrc", _sphere(BOX), 10.0)
    region = lamella_mask(shape)
    write_volume(work / "lamella.mrc", region.astype(np.float32), 10.0)
    del vol
    rots = uniform_rotations(60.0)[: args.rotations]
    common = dict(rotations=rots, tiles=(2, 1, 1), quiet=True, processes=1, checkpoint_interval_s=1e9)
    rows = {}
    jobs = {}
    for label, extra in (("full", {}), ("masked", {"tomogram_mask": str(work / "lamella.mrc")})):
        t0 = time.perf_counter()
        job = run_match(
            work / "tmpl.mrc", work / "mask.mrc", work / "tomo.mrc", work / label, name="b", **common, **extra
        )
        wall = time.perf_counter() - t0
        data_vox = 0
        for t in job["tile_regions"]:
            u0, u1 = np.array(t["unique_start_zyx"]), np.array(t["unique_stop_zyx"])
            d0, d1 = np.maximum(u0 - BOX // 2, 0), np.minimum(u1 + BOX - BOX // 2 - 1, shape)
            data_vox += int(np.prod(d1 - d0))
        st = job["search_statistics"]
        rows[label] = {
            "wall_s": round(wall, 2),
            "rotations_per_s": round(len(rots) / wall, 3),
            "n_voxels_searched": int(st["n_voxels"]),
            "n_voxels_computed": int(st["n_voxels_computed"]),
            "data_voxels": data_vox,
            "tiles": len(job["tile_regions"]),
        }
        jobs[label] = job
    sf, _ = read_volume(jobs["full"]["scores"])
    sm, _ = read_volume(jobs["masked"]["scores"])
    inner = np.zeros(shape, bool)
    h = BOX // 2
    inner[h:-h, h:-h, h:-h] = True
    sel = region & inner
    max_diff = float(np.abs(sf[sel] - sm[sel]).max())
    speedup = rows["full"]["wall_s"] / rows["masked"]["wall_s"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"tomogram zyx {shape}, template {BOX}^3, {len(rots)} rotations, 2x1x1 tiles, 1 process, load {load}")
    print(f"region: {region.mean() * 100:.1f} % of the voxels (lamella-like slab)")
    print("| run | wall s | rot/s | voxels searched | voxels computed | tile data voxels |")
    print("|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(
            f"| {label} | {r['wall_s']:.1f} | {r['rotations_per_s']:.3f} | {r['n_voxels_searched']} |"
            f" {r['n_voxels_computed']} | {r['data_voxels']} |"
        )
    print(f"speed-up full/masked: {speedup:.2f}x; max |score difference| in the region (inner): {max_diff:.3g}")
    record = {
        "benchmark": "search_region",
        "date": datetime.date.today().isoformat(),
        "tomomatch_version": tomomatch.__version__,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1min": load,
        "shape_zyx": list(shape),
        "template_box": BOX,
        "n_rotations": len(rots),
        "tiles": [2, 1, 1],
        "region_fraction": float(region.mean()),
        "runs": rows,
        "speedup": round(speedup, 3),
        "max_score_difference_in_region": max_diff,
        "device": "cpu",
    }
    out = Path(args.json) if args.json else HERE / "results" / f"search-region-{record['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
