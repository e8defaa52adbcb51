"""Whole-job CPU rate of ``run_match`` with 1 and 2 worker processes on bench_match's case (a).

Rate = (N2 - N1) / (T2 - T1) over two HEALPix rotation sets (576 and 1944 rotations), which
cancels set-up. Run from the repository root: ``.venv/bin/python benchmarks/bench_processes.py``.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_match import CASES, make_data  # noqa: E402

from tomomatch.angles import uniform_rotations  # noqa: E402
from tomomatch.job import run_match  # noqa: E402
from tomomatch.mrcio import write_volume  # noqa: E402

if __name__ == "__main__":  # worker processes are spawned
    case = CASES["a"]
    tmpl, mask, vol = make_data(case)
    d = Path(tempfile.mkdtemp())
    for n, a in (("tomo", vol), ("tmpl", tmpl), ("mask", mask)):
        write_volume(d / f"{n}.mrc", a, case["voxel"])
    for procs in (1, 2):
        times, counts = [], []
        for step in (30.0, 20.0):
            rots = uniform_rotations(step)
            t0 = time.perf_counter()
            run_match(
                d / "tmpl.mrc",
                d / "mask.mrc",
                d / "tomo.mrc",
                d / f"o{procs}_{step}",
                rotations=rots,
                processes=procs,
                quiet=True,
            )
            times.append(time.perf_counter() - t0)
            counts.append(len(rots))
        rate = (counts[1] - counts[0]) / (times[1] - times[0])
        print(
            f"run_match case a, {procs} process(es): {rate:.1f} rot/s "
            f"({counts[0]} rotations {times[0]:.1f} s, {counts[1]} rotations {times[1]:.1f} s)",
            flush=True,
        )
