"""Command-line interface: a thin argparse layer over the Python API.

Each subcommand lives in its own module ``tomomatch.cli.<name>`` exposing
``register(subparsers)``, which adds a parser and sets ``func(args) -> int`` on it. Commands
parse arguments, call one API function and return an exit code. Any
:class:`tomomatch.errors.InputError` becomes one line on stderr and exit status 2 (the
traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import InputError

# Order is the order shown in --help. Add a command by adding its module here.
COMMANDS: list[str] = [
    "template",
    "mask",
    "metadata",
    "match",
    "batch",
    "extract",
    "roc",
    "merge-stars",
    "simulate",
    "hand",
    "compare-hands",
    "view",
    "demo",
]


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block), exit status 2.

    Sub-parsers are made with the parent's class, so every command's errors are one line too.
    """

    def error(self, message: str):  # type: ignore[override]
        msg = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {msg} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tomomatch", description="Defocus-gradient-aware 3D template matching for cryo-ET.")
    parser.add_argument("--version", action="version", version=f"tomomatch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(sub)
    return parser


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """Warnings on the command line are one line, like errors (no source location)."""
    return f"tomomatch: warning: {' '.join(str(message).split())}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning
    # first of all: torch reads THP_MEM_ALLOC_ENABLE at its first CPU allocation (docs/matching.md)
    from ..matching.config import configure_allocator

    configure_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "log_interval", None) is not None:
            from ..progress import configure

            configure(args.log_interval)
        return int(args.func(args) or 0)
    except InputError as exc:
        if args.debug:
            raise
        print(f"tomomatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a read-only or vanished folder, a file not allowed: one line
        if args.debug or isinstance(exc, BrokenPipeError):
            raise
        from ._outputs import os_error_message

        print(f"tomomatch {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            raise
        print(
            f"tomomatch {args.command}: error: out of memory; expected inputs and options that fit in this "
            "machine's memory (smaller tiles, --max-memory, fewer rotations)",
            file=sys.stderr,
        )
        return 2


def run() -> None:  # pragma: no cover - console entry
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
