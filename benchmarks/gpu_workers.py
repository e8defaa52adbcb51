"""Scaling of one match job over several workers (``--device cuda:0,1`` / ``cuda:0,0``).

Runs :func:`tomomatch.job.run_match` on case (b) of ``bench_match.py`` (tomogram 510 x 720 x 74,
template 60^3, spherical mask, per-tilt CTF + dose, h = +1, ``--tiles 3 1 1``) with ``--n``
random rotations, first with one worker (``--device`` as given, e.g. ``cuda``), then with the
device list (default: the first device twice, i.e. two workers on one GPU when only one is
present; ``cuda:all`` on a multi-GPU node). A warm-up run of 32 rotations comes first (CUDA
compilation). It checks that the two runs' maps are byte-identical, and prints and records the
rotations per second of each and their ratio (``scaling_1_vs_2_workers``), with the job files'
per-worker record (``execution.workers``).

Usage (GPU machine, repository root, ``PYTHONPATH=src:benchmarks``)::

    python benchmarks/gpu_workers.py --device cuda --devices cuda:0,0 --n 4968 --json $OUT/workers.json

On the CPU (a smoke test of the script; about a minute)::

    python benchmarks/gpu_workers.py --device cpu --devices cpu,cpu --n 8 --case a
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
from scipy.spatial.transform import Rotation

from bench_match import CASES, make_data, tilt_series
from records import header, write_record
from tomomatch.job import run_match
from tomomatch.mrcio import write_volume

HERE = Path(__file__).resolve().parent


def _maps(out: Path) -> bytes:
    parts = []
    for kind in ("scores", "angles"):
        with mrcfile.open(out / f"tomo_{kind}.mrc", permissive=True) as f:
            parts.append(np.asarray(f.data).tobytes())
    return b"".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="the one-worker run's device")
    ap.add_argument("--devices", default=None, help="the several-worker run's device list (default: --device twice)")
    ap.add_argument("--n", type=int, default=4968, help="rotations per run")
    ap.add_argument("--case", default="b", choices=sorted(CASES))
    ap.add_argument("--tiles", nargs=3, type=int, default=[3, 1, 1])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    many = args.devices
    if many is None:  # the one device twice: two workers on it
        many = "cuda:0,0" if args.device == "cuda" else f"{args.device},{args.device}"
    case = CASES[args.case]
    tmpl, mask, vol = make_data(case)
    rots = Rotation.random(args.n, random_state=1).as_matrix()
    record = header("gpu_workers")
    record.update(case=args.case, n_rotations=args.n, tiles=args.tiles)
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        for name, arr in (("tomo", vol), ("tmpl", tmpl), ("mask", mask)):
            write_volume(work / f"{name}.mrc", arr, case["voxel"])
        common = dict(
            tilt_series=tilt_series(),
            defocus_handedness=1,
            tiles=tuple(args.tiles),
            quiet=True,
        )
        run_match(
            work / "tmpl.mrc",
            work / "mask.mrc",
            work / "tomo.mrc",
            work / "warm",
            rotations=rots[:32],
            device=args.device,
            processes=1,
            **common,
        )
        runs = {}
        for label, device, processes in (("one", args.device, 1), ("several", many, None)):
            t0 = time.perf_counter()
            job = run_match(
                work / "tmpl.mrc",
                work / "mask.mrc",
                work / "tomo.mrc",
                work / label,
                rotations=rots,
                device=device,
                processes=processes,
                **common,
            )
            wall = time.perf_counter() - t0
            runs[label] = {
                "device": device,
                "wall_s": round(wall, 2),
                "rot_per_s": round(args.n / wall, 1),
                "execution": job["execution"],
            }
            print(
                f"{label:8s} {device:14s} {wall:8.1f} s  {args.n / wall:9.1f} rot/s  {job['execution'].get('workers')}"
            )
        identical = _maps(work / "one") == _maps(work / "several")
    record["runs"] = runs
    record["maps_identical"] = identical
    record["scaling_1_vs_2_workers"] = round(runs["one"]["wall_s"] / runs["several"]["wall_s"], 3)
    print(f"scaling {record['scaling_1_vs_2_workers']}x; maps identical: {identical}")
    out = args.json or (
        Path(os.environ["OUT"]) / "workers.json"
        if os.environ.get("OUT")
        else HERE / "results" / f"workers-{record['date']}.json"
    )
    write_record(record, out)
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
