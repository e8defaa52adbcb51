"""``tomomatch merge-stars``: a RELION 5 import list from per-tomogram particle STAR files."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge-stars",
        help="write a RELION 5 import list (rlnTomoName, rlnTomoImportParticleFile)",
        description="List RELION 5 particle STAR files (from tomomatch extract --format relion5) in one "
        "import STAR for RELION 5's coordinate import. Give paths relative to the RELION "
        "project directory; they are written as given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("stars", nargs="+", metavar="STAR", help="RELION 5 particle STAR files")
    p.add_argument("-o", "--output", required=True, help="import list STAR to write")
    p.set_defaults(func=run)


def run(args) -> int:
    import warnings

    from ..particles import merge_stars
    from ._outputs import output_file

    output_file(args.output, "--output")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = merge_stars(args.stars, args.output)
    for w in caught:
        print(f"warning: {w.message}")
    print(f"{len(args.stars)} files -> {out}")
    return 0
