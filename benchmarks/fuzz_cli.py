"""Long fuzz run of every command's argument parsing and checks (the engine is ``tests/test_fuzz_cli.py``).

Mutates each command's valid argument vector (drop/duplicate/swap/add options, odd numbers,
missing/folder/empty/garbage paths, bad output locations) and runs it through
``tomomatch.cli.main`` in this process. Every case must exit 0, or 2 with one error line on
stderr, without a traceback and without leaving a ``.part`` file. Prints a table of outcomes
per command and every failure; failing cases keep their folder under ``--workdir``. Exit status
1 if any case failed.

Usage (from the repository root)::

    python benchmarks/fuzz_cli.py --cases 2000 --seed 0
    python benchmarks/fuzz_cli.py --cases 1 --first-case 17 --commands match --workdir /tmp/fz  # replay
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_fuzz_cli import COMMANDS, Report, run_case  # noqa: E402
from _cli_inputs import make_inputs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=2000, help="cases in all (round robin over the commands)")
    p.add_argument(
        "--seed", type=int, default=0, help="run seed; case i of a command uses default_rng([seed, i, command])"
    )
    p.add_argument("--first-case", type=int, default=0)
    p.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated commands")
    p.add_argument("--stub-batch", action="store_true", help="stop accepted batch runs before the Dask cluster starts")
    p.add_argument("--minutes", type=float, default=None, help="stop after this long")
    p.add_argument("--workdir", type=Path, default=None, help="folder for the cases (default: a temp folder)")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("mdocfile").setLevel(logging.ERROR)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tomomatch_fuzz_cli_"))
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(workdir / "inputs")
    commands = [c for c in args.commands.split(",") if c]
    report = Report()
    t0 = time.perf_counter()
    i = args.first_case
    while len(report.cases) < args.cases:
        for cmd in commands:
            if len(report.cases) >= args.cases:
                break
            case = run_case(cmd, i, args.seed, inputs, workdir, stub_batch=args.stub_batch)
            report.cases.append(case)
            if case.outcome.startswith("FAIL"):
                print(f"FAIL case {i} {cmd}: {case.outcome[:300]}", flush=True)
            else:
                import shutil

                shutil.rmtree(workdir / f"case_{i:06d}_{cmd}", ignore_errors=True)
        i += 1
        if args.minutes is not None and time.perf_counter() - t0 > 60 * args.minutes:
            break
    print(report.table())
    print(f"{len(report.cases)} cases, seed {args.seed}, {time.perf_counter() - t0:.0f} s")
    if report.failures:
        print(f"failing cases kept in {workdir}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
