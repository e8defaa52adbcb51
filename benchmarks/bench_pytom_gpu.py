"""pytom-match-pick 0.14.0 on the GPU, on bench_match.py's data, for a side-by-side rate.

Runs ``pytom_match_template.py`` on case (a) or (b) of ``bench_match.py`` (same template, mask,
tomogram; for (b) the same 41-tilt per-tilt CTF + dose weighting) with angle files of N1 and N2
rotations (pytom's ZXZ radians, one space between values, converted from the same kind of
random rotations with ``tomomatch.conventions.matrix_to_pytom``) and reports
``(N2 - N1) / (T2 - T1)`` rotations per second, which cancels its set-up time. pytom starts
worker processes, hence the ``__main__`` guard.

Usage (on the GPU machine, pytom-match-pick installed)::

    python benchmarks/bench_pytom_gpu.py --cases a b --tiles 1 3 --n 1000 5000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from bench_match import CASES, make_data, tilt_series  # noqa: E402  (run from benchmarks/)
from tomomatch.conventions import matrix_to_pytom
from tomomatch.mrcio import write_volume


def run_pytom(case_name: str, tiles: int, n_rot: int, work: Path) -> float:
    case = CASES[case_name]
    tmpl, mask, vol = make_data(case)
    write_volume(work / "tomo.mrc", vol, case["voxel"])
    write_volume(work / "tmpl.mrc", tmpl, case["voxel"])
    write_volume(work / "mask.mrc", mask, case["voxel"])
    ang = matrix_to_pytom(Rotation.random(n_rot, random_state=1).as_matrix())
    np.savetxt(work / "angles.txt", ang, fmt="%.6f", delimiter=" ")
    out = work / f"out_{tiles}_{n_rot}"
    out.mkdir()
    cmd = [
        "pytom_match_template.py",
        "-t",
        str(work / "tmpl.mrc"),
        "-m",
        str(work / "mask.mrc"),
        "-v",
        str(work / "tomo.mrc"),
        "-d",
        str(out),
        "--angular-search",
        str(work / "angles.txt"),
        "--voxel-size-angstrom",
        str(case["voxel"]),
        "-g",
        "0",
        "-s",
        str(tiles),
        "1",
        "1",
    ]
    if case["weighting"]:
        ts = tilt_series()
        np.savetxt(work / "tilts.rawtlt", ts.tilt_angles_deg, fmt="%.2f")
        np.savetxt(work / "dose.txt", ts.accumulated_dose, fmt="%.2f")
        cmd += [
            "-a",
            str(work / "tilts.rawtlt"),
            "--per-tilt-weighting",
            "--dose-accumulation",
            str(work / "dose.txt"),
            "--defocus",
            "3.0",
            "--amplitude-contrast",
            "0.07",
            "--spherical-aberration",
            "2.7",
            "--voltage",
            "300",
        ]
    else:
        cmd += ["-a", "-90", "90"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"pytom failed: {res.stderr[-3000:]}")
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["a", "b"])
    ap.add_argument("--tiles", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--n", nargs=2, type=int, default=[1000, 5000])
    ap.add_argument("--json", type=Path, default=None, help="also write the rates here")
    args = ap.parse_args()
    rows: list[dict] = []
    print("| tool | case | tiles | rotations | rot/s (whole volume) | set-up s |")
    print("|---|---|---|---|---|---|")
    for c in args.cases:
        for tiles in args.tiles:
            work = Path(tempfile.mkdtemp(prefix="pytom_"))
            try:
                # a first small run fills CuPy's kernel cache: without it the first timed run
                # carries the compilation and the rate difference is meaningless (seen: negative)
                run_pytom(c, tiles, 48, work)
                t1 = run_pytom(c, tiles, args.n[0], work)
                t2 = run_pytom(c, tiles, args.n[1], work)
                rate = (args.n[1] - args.n[0]) / (t2 - t1)
                setup = t1 - args.n[0] / rate
                print(
                    f"| pytom-match-pick 0.14.0 | {c} | {tiles} | {args.n[0]}->{args.n[1]} "
                    f"| {rate:.1f} | {setup:.1f} |",
                    flush=True,
                )
                rows.append({"case": c, "tiles": tiles, "rot_per_s": round(rate, 2), "setup_s": round(setup, 2)})
            except Exception as exc:  # report and go on with the next case
                print(f"| pytom-match-pick 0.14.0 | {c} | {tiles} | failed: {str(exc)[-300:]!r} | | |", flush=True)
                rows.append({"case": c, "tiles": tiles, "rot_per_s": None, "why": str(exc)[-300:]})
            finally:
                shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        from records import header, write_record

        record = header("bench_pytom_gpu")
        record.update(tool="pytom-match-pick 0.14.0", rotation_counts=args.n, rows=rows)
        write_record(record, args.json)


if __name__ == "__main__":
    main()
