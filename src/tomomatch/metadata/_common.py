"""Shared helpers of the metadata readers: file checks, numeric text parsing, atomic text writes."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..mrcio import atomic_path

MAX_ABS_TILT_DEG = 90.0


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
    ".mrc": "an MRC image", ".st": "an MRC image stack", ".rec": "an MRC tomogram",
    ".mrcs": "an MRC image stack", ".xf": "an IMOD .xf transform file",
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


def check_tilt_angles(angles, path, lines=None, field: str = "tilt angle") -> np.ndarray:
    """Reject angles outside -90..90 degrees, naming the line if known."""
    a = np.asarray(angles, dtype=float)
    bad = np.flatnonzero(~(np.abs(a) <= MAX_ABS_TILT_DEG))
    if bad.size:
        i = int(bad[0])
        where = f"line {lines[i]}" if lines is not None else field
        raise InputError(f"tilt angle {a[i]:g} outside -90..90 degrees; expected degrees", path, where)
    return a


def check_count(n_found: int, n_expected: int, path, what: str, other=None) -> None:
    if n_found != n_expected:
        other_txt = f" in {other}" if other is not None else ""
        raise InputError(f"{n_found} {what} values but {n_expected} tilts{other_txt}; "
                         "expected one value per tilt", path, what)


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
