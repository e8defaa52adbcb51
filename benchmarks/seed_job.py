"""Wall time of a whole ``match`` job at the seed's sizes, extrapolated to the seed's search.

Runs :func:`tomomatch.job.run_match` end to end (files in, maps and job file out, checkpoints,
per-tile per-tilt CTF + dose weighting, defocus hand +1, ``--tiles 3 1 1``) on case (b) of
``bench_match.py`` (tomogram 510 x 720 x 74, template 60^3, spherical mask) with N1 and N2
random rotations, after a first run of 32 rotations in the same process (on CUDA it carries
the one-off compilation of the fused kernel, which later runs reuse). With ``T(N) = a + b N``
fitted through the two timed runs, the seed's 248,400 rotations take
``a + b * 248400 + c`` seconds (``a``: reading, planning, weights, transforms, writing; ``b``:
the search; ``c``: the first run's excess over ``a + 32 b``, i.e. compilation).

Usage (GPU machine, from the repository root, ``PYTHONPATH=src:benchmarks``)::

    python benchmarks/seed_job.py --device cuda --n 2484 24840
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from scipy.spatial.transform import Rotation

from bench_match import CASES, SEED_ROTATIONS, make_data, tilt_series
from tomomatch.job import run_match
from tomomatch.mrcio import write_volume


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", nargs=2, type=int, default=[2484, 24840], help="two rotation counts")
    ap.add_argument("--tiles", nargs=3, type=int, default=[3, 1, 1])
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    case = CASES["b"]
    tmpl, mask, vol = make_data(case)
    times = []
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        for name, arr in (("tomo", vol), ("tmpl", tmpl), ("mask", mask)):
            write_volume(work / f"{name}.mrc", arr, case["voxel"])
        for n in [32] + list(args.n):
            rots = Rotation.random(n, random_state=1).as_matrix()
            t0 = time.perf_counter()
            job = run_match(
                work / "tmpl.mrc",
                work / "mask.mrc",
                work / "tomo.mrc",
                work / f"out_{n}",
                rotations=rots,
                tilt_series=tilt_series(),
                defocus_handedness=1,
                tiles=tuple(args.tiles),
                device=args.device,
                processes=args.processes,
            )
            times.append(time.perf_counter() - t0)
            print(f"N = {n:7d} rotations: {times[-1]:7.1f} s wall, tiles {job.get('tiles', args.tiles)}", flush=True)
    b = (times[2] - times[1]) / (args.n[1] - args.n[0])
    a = times[1] - b * args.n[0]
    c = max(times[0] - (a + 32 * b), 0.0)
    print(
        f"fixed {a:.1f} s + first-run compilation {c:.1f} s + {1 / b:.0f} rot/s -> seed search "
        f"({SEED_ROTATIONS} rotations, tiles {' '.join(map(str, args.tiles))}, device {args.device}): "
        f"{(a + c + b * SEED_ROTATIONS) / 60:.2f} min"
    )
    if args.json is not None:
        from records import header, write_record

        record = header("seed_job")
        record.update(
            device=args.device,
            tiles=args.tiles,
            rotation_counts=[32] + list(args.n),
            wall_s=[round(t, 2) for t in times],
            fixed_s=round(a, 2),
            compilation_s=round(c, 2),
            rot_per_s=round(1 / b, 1),
            seed_search_s=round(a + c + b * SEED_ROTATIONS, 1),
            seed_search_how=f"extrapolated from {args.n[0]} and {args.n[1]} rotations (whole run_match)",
        )
        write_record(record, args.json)


if __name__ == "__main__":
    main()
