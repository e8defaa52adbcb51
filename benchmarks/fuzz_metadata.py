"""Long fuzz run of the tilt-metadata readers (the engine is ``tests/test_fuzz_metadata.py``).

Mutates the fixtures in ``tests/fixtures/tilt_metadata`` and the real files in
``<shared data>/tilt_metadata`` (if present), reads each mutated file with
:func:`tomomatch.metadata.load_tilt_series` (a share through ``tomomatch metadata``) and checks
that it gives a valid TiltSeries or a one-line InputError naming the file. Prints a summary per
seed file, the most frequent error kinds and every failure; failing cases keep their folder
under ``--workdir``. Exit status 1 if any case failed.

Usage (from the repository root)::

    python benchmarks/fuzz_metadata.py --cases 20000
    python benchmarks/fuzz_metadata.py --cases 1 --first-case 1234 --workdir /tmp/fz   # replay one case
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_fuzz_metadata import run_fuzz  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0, help="run seed; case i uses default_rng([seed, i])")
    p.add_argument("--first-case", type=int, default=0)
    p.add_argument("--cli-fraction", type=float, default=0.1, help="share of cases run through 'tomomatch metadata'")
    p.add_argument("--no-shared", action="store_true", help="fixtures only, not <shared data>/tilt_metadata")
    p.add_argument("--workdir", type=Path, default=None, help="folder for the cases (default: a temp folder)")
    args = p.parse_args(argv)
    logging.getLogger("mdocfile").setLevel(logging.ERROR)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tomomatch_fuzz_"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = run_fuzz(
        args.cases,
        args.seed,
        workdir,
        include_shared=not args.no_shared,
        cli_fraction=args.cli_fraction,
        first_case=args.first_case,
    )
    print(report.summary())
    if report.failures:
        print(f"failing cases kept in {workdir}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
