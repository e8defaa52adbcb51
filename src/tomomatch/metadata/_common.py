"""Shared helpers of the metadata readers: file checks, numeric text parsing, the one wrapper
that turns a parsing library's exception into a one-line :class:`InputError`, atomic text writes."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from ..mrcio import atomic_path
from .plausibility import plain

MAX_ABS_TILT_DEG = 90.0
MAX_TILTS = 10000  # more views than this in one tilt series is a broken file


def require_file(path, what: str) -> Path:
    """Return ``path`` as a Path, or raise InputError if it is not an existing file."""
    if path is None:
        raise InputError(f"no {what} file given")
    p = Path(os.fspath(path))
    if not p.exists():
        raise InputError(f"{what} file not found", p)
    if not p.is_file():
        raise InputError(f"is not a file; expected a {what} file", p)
    return p


# Suffixes of the structured formats, to catch a file given to the wrong option.
_KNOWN_SUFFIXES = {
    ".aln": "an AreTomo .aln (use --aln)",
    ".mdoc": "a SerialEM .mdoc (use --mdoc)",
    ".xml": "a Warp XML (use --warp-xml)",
    ".star": "a RELION STAR file (use --relion5-tomograms)",
    ".defocus": "an IMOD .defocus (use --defocus)",
    ".mrc": "an MRC image",
    ".st": "an MRC image stack",
    ".rec": "an MRC tomogram",
    ".mrcs": "an MRC image stack",
    ".xf": "an IMOD .xf transform file",
}


def refuse_other_format(path: Path, what: str, allowed: tuple[str, ...] = ()) -> None:
    """InputError if ``path`` has the suffix of another known format (not in ``allowed``)."""
    suffix = path.suffix.lower()
    if suffix in _KNOWN_SUFFIXES and suffix not in allowed:
        raise InputError(f"unknown file type for a {what} file: this is {_KNOWN_SUFFIXES[suffix]}", path)


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read {what} file ({exc.strerror or exc})", path) from None


def one_line(exc: BaseException) -> str:
    """A library exception's message as one line.

    pydantic ``ValidationError``: ``field: message (got 'value')`` of the first error, instead of
    the multi-line text whose first line is only ``1 validation error for AlnData``. Others:
    the class name and the message with all whitespace runs (newlines too) squashed.
    """
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - pydantic comes with mdocfile/alnfile
        pass
    else:
        if isinstance(exc, ValidationError):
            errors = exc.errors()
            if errors:
                e = errors[0]
                loc = ".".join(str(x) for x in e.get("loc", ()))
                got = e.get("input")
                got_txt = f" (got {plain(got)})" if isinstance(got, (str, int, float)) else ""
                return " ".join(f"{loc}: {e.get('msg', '')}{got_txt}".split())
    msg = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {msg}" if msg else exc.__class__.__name__


@contextmanager
def library_errors(path, what: str, locate: Callable[[BaseException], InputError | None] | None = None):
    """Turn any exception of a parsing library (starfile/pandas, mdocfile, alnfile, lxml) raised in
    the ``with`` body into one :class:`InputError` line naming the file.

    ``locate(exc)`` may return a more precise InputError (the line and field of the problem);
    otherwise the message is ``not a readable <what> (<the library's text as one line>)``.
    InputError passes through unchanged; MemoryError too.
    """
    try:
        yield
    except (InputError, MemoryError):
        raise
    except Exception as exc:
        precise = None
        if locate is not None:
            try:
                precise = locate(exc)
            except InputError as found:
                precise = found
        if precise is not None:
            raise precise from None
        raise InputError(f"not a readable {what} ({one_line(exc)})", path) from None


def parse_float(token: str, path, lineno: int, expected: str) -> float:
    """One number from a text file; InputError naming the line for text or NaN/Inf."""
    try:
        value = float(token)
    except ValueError:
        raise InputError(f"{token!r} is not a number; expected {expected}", path, f"line {lineno}") from None
    if not math.isfinite(value):
        raise InputError(f"{token!r} is not a finite number; expected {expected}", path, f"line {lineno}")
    return value


def numeric_rows(path: Path, what: str, expected: str) -> list[tuple[int, list[float]]]:
    """Rows of numbers of a whitespace-separated text file, with 1-based line numbers.

    Blank lines and lines starting with ``#`` are skipped; every other token must be a
    finite number. An empty file raises InputError.
    """
    rows: list[tuple[int, list[float]]] = []
    for lineno, line in enumerate(read_text(path, what).splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        rows.append((lineno, [parse_float(t, path, lineno, expected) for t in s.replace(",", " ").split()]))
    if not rows:
        raise InputError(f"is empty; expected {expected}, one per line", path)
    return rows


def check_tilt_angles(
    angles, path, lines=None, field: str = "tilt angle", *, labels: Sequence[str] | None = None, unique: bool = True
) -> np.ndarray:
    """Reject angles outside -90..90 degrees and (``unique``) an angle given twice.

    The message names the place of the value: ``lines`` (1-based line numbers of a text file;
    then no field is named) or ``labels`` (e.g. "row 3", after ``field``), else ``tilt i``.
    """
    a = np.asarray(angles, dtype=float).reshape(-1)
    named_field: str | None = field  # None for a text file: the line is the field
    if lines is not None:
        labels, named_field = [f"line {n}" for n in lines], None
    places = labels if labels is not None else [f"tilt {i + 1}" for i in range(a.size)]

    def place(i: int) -> tuple[str, str]:  # text files: the line is the field; else "field: row 3: ..."
        return (places[i], "") if named_field is None else (named_field, f"{places[i]}: ")

    bad = np.flatnonzero(~(np.abs(a) <= MAX_ABS_TILT_DEG))
    if bad.size:
        i = int(bad[0])
        f, prefix = place(i)
        raise InputError(f"{prefix}tilt angle {plain(float(a[i]))} outside -90..90 degrees; expected degrees", path, f)
    if unique:
        dup = duplicate_pair(a)
        if dup is not None:
            i, j = dup
            f, prefix = place(j)
            raise InputError(
                f"{prefix}tilt angle {plain(float(a[j]))} repeats {places[i]}; expected each "
                "tilt angle once (one image per tilt)",
                path,
                f,
            )
    return a


def duplicate_pair(angles) -> tuple[int, int] | None:
    """Indices ``(first, second)`` of the first tilt angle that occurs twice (within 1e-6 degrees)."""
    a = np.round(np.asarray(angles, dtype=float).reshape(-1), 6) + 0.0  # + 0.0: -0.0 == 0.0
    seen: dict[float, int] = {}
    for j, x in enumerate(a.tolist()):
        if x in seen:
            return seen[x], j
        seen[x] = j
    return None


def check_count(n_found: int, n_expected: int, path, what: str, other=None) -> None:
    if n_found != n_expected:
        other_txt = f" in {other}" if other is not None else ""
        raise InputError(
            f"{n_found} {what} values but {n_expected} tilts{other_txt}; expected one value per tilt", path, what
        )


def accumulate_in_order(per_tilt_dose, order) -> np.ndarray:
    """Accumulated dose before each tilt, given per-tilt doses and acquisition ranks.

    ``order[i]`` is the acquisition rank of tilt ``i`` (0 = first exposure). The result for
    tilt ``i`` is the sum of the doses of all tilts acquired before it.
    """
    d = np.asarray(per_tilt_dose, dtype=float)
    rank = np.asarray(order)
    by_time = np.argsort(rank, kind="stable")
    acc_sorted = np.concatenate([[0.0], np.cumsum(d[by_time])[:-1]])
    out = np.empty_like(d)
    out[by_time] = acc_sorted
    return out


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary sibling and ``os.replace``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def finite_array(values, name: str, n: int | None = None) -> np.ndarray:
    """Programmer-facing check for writer inputs (ValueError, not InputError)."""
    a = np.asarray(values, dtype=float).reshape(-1)
    if n is not None and a.size != n:
        raise ValueError(f"{name}: {a.size} values, expected {n}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf")
    return a
