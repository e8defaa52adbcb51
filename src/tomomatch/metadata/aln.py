"""AreTomo ``.aln`` reader (via teamtomo ``alnfile``)."""

from __future__ import annotations

import math

import numpy as np
from alnfile.data_model import AlnData

from ..errors import InputError
from ..tiltseries import TiltSeries
from ._common import check_tilt_angles, library_errors, read_text, require_file

__all__ = ["read_aln"]

GLOBAL_COLUMNS = ("SEC", "ROT", "GMAG", "TX", "TY", "SMEAN", "SFIT", "SCALE", "BASE", "TILT")
LOCAL_COLUMNS = ("SEC", "PATCH", "CENTER_X", "CENTER_Y", "SHIFT_X", "SHIFT_Y", "RELIABLE")
DARK_COLUMNS = ("frame", "section", "tilt")


def _numbers(tokens, names, kinds, path, lineno, what, finite=True) -> list:
    """Parse ``tokens`` as ``kinds`` (int/float) per column; InputError naming the line and column."""
    if len(tokens) < len(names):
        raise InputError(
            f"{len(tokens)} field{'s' if len(tokens) != 1 else ''}; expected {len(names)} "
            f"({' '.join(names)}) in {what}",
            path,
            f"line {lineno}",
        )
    out = []
    for tok, name, kind in zip(tokens, names, kinds):
        try:
            v = kind(tok)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise InputError(
                f"{name} {tok!r} is not {expected}; expected {' '.join(names)} in {what}", path, f"line {lineno}"
            ) from None
        if finite and not math.isfinite(v):
            raise InputError(f"{name} {tok!r} is not a finite number", path, f"line {lineno}")
        out.append(v)
    return out


def _scan(path, text: str) -> dict:
    """Check every line ``alnfile`` parses, as it parses it, so that an error names its line and column.

    Returns the 1-based line numbers of the global-table rows and of the DarkFrame lines.
    """
    try:
        return _scan_lines(path, text)
    except InputError as exc:
        raise InputError(f"not a readable AreTomo .aln file: {exc.detail}", exc.path, exc.field) from None


def _scan_lines(path, text: str) -> dict:
    section = None
    rows, darks = [], []
    for lineno, line in enumerate(text.strip().splitlines(), start=1 + _leading_lines(text)):
        if not line or line[0] != "#":
            if not line or line.isspace():
                continue
            if section == "global":
                _numbers(line.split(), GLOBAL_COLUMNS, (int,) + (float,) * 9, path, lineno, "the global table")
                rows.append(lineno)
            elif section == "local":
                _numbers(
                    line.split(),
                    LOCAL_COLUMNS,
                    (int, int) + (float,) * 5,
                    path,
                    lineno,
                    "the local alignment table",
                    finite=False,
                )
            continue
        key = line.split("=", 1)[0].strip()
        value: list[str] = []  # the fields after '=' of a header line (the branches below that use it)
        if line.startswith(("# DarkFrame", "# RawSize", "# NumPatches", "# AlphaOffset", "# BetaOffset")):
            if "=" not in line:
                raise InputError(f"{line.strip()!r} has no '='; expected '{key} = ...'", path, f"line {lineno}")
            value = line.split("=", 1)[1].split()
        if line.startswith("# DarkFrame"):
            _numbers(value, DARK_COLUMNS, (int, int, float), path, lineno, "a DarkFrame line")
            darks.append(lineno)
        elif line.startswith("# SEC"):
            section = "global"
        elif line.startswith("# Local Alignment"):
            section = "local"
        elif line.startswith("# RawSize"):
            if len(value) != 3:
                raise InputError(f"{len(value)} values; expected 3 (width height sections)", path, f"line {lineno}")
            _numbers(
                value, ("width", "height", "sections"), (int,) * 3, path, lineno, "RawSize = width height sections"
            )
        elif line.startswith("# NumPatches"):
            _numbers(
                value[:1] if len(value) == 1 else [" ".join(value)], ("NumPatches",), (int,), path, lineno, "the header"
            )
        elif line.startswith(("# AlphaOffset", "# BetaOffset")):
            _numbers(
                value[:1] if len(value) == 1 else [" ".join(value)],
                (key.lstrip("# "),),
                (float,),
                path,
                lineno,
                "the header",
            )
    return {"rows": rows, "darks": darks}


def _leading_lines(text: str) -> int:
    """Lines ``str.strip`` removes before the first character (alnfile strips the text first)."""
    stripped = text.lstrip()
    return text[: len(text) - len(stripped)].count("\n") if stripped else 0


def read_aln(path) -> TiltSeries:
    """Read an AreTomo / AreTomo2 / AreTomo3 ``.aln`` alignment file.

    The global table gives, per kept section, ``SEC`` (its index in the raw input stack),
    ``ROT`` (tilt-axis angle, degrees) and ``TILT`` (tilt angle, degrees). ``# DarkFrame =
    a b tilt`` header lines list the sections AreTomo dropped: ``a`` is the position in the
    tilt-sorted stack and ``b`` the index in the raw input stack (AreTomo ``CSaveAlignFile``
    writes ``iFrmIdx iSecIdx``; RELION's importer reads the second number as the input
    order). Dark frames are inserted as *excluded* tilts at their raw positions: all
    sections (kept ``SEC`` and dark ``b``) are sorted by that raw index, which works for
    0- and 1-based numbering alike. The result therefore has one tilt per raw-stack image
    (``RawSize`` z) when the file lists all dark frames.

    ``tilt_axis_angle_deg`` is the mean ROT; ``extra`` has ``raw_size``, ``alpha_offset``,
    ``beta_offset``, ``section_index``, ``shifts_px`` (TX, TY of kept tilts, NaN for dark)
    and ``rot_deg``. The .aln holds no dose or defocus.
    """
    p = require_file(path, "AreTomo .aln")
    text = read_text(p, "AreTomo .aln")
    lines = _scan(p, text)
    # alnfile 0.1.1 rejects files without these header lines (older AreTomo2 writes no
    # Alpha/BetaOffset); supply AreTomo's defaults for the missing ones.
    defaults = [
        ("# AreTomo Alignment", "# AreTomo Alignment / Priims bprmMn"),
        ("# RawSize", "# RawSize = 0 0 0"),
        ("# NumPatches", "# NumPatches = 0"),
        ("# AlphaOffset", "# AlphaOffset = 0.00"),
        ("# BetaOffset", "# BetaOffset = 0.00"),
    ]
    present = {line.split("=")[0].strip() for line in text.splitlines() if line.startswith("#")}
    missing = [line for key, line in defaults if not any(x.startswith(key) for x in present)]
    with library_errors(p, "AreTomo .aln file"):
        aln = AlnData.from_string("\n".join(missing + [text.strip()]))  # as _scan sees it
    rows = aln.GlobalAlignments
    if not rows:
        raise InputError("no global alignment rows (# SEC ROT ... TILT table); expected an AreTomo .aln", p)
    sec = [r.sec for r in rows] + [d.val2 for d in aln.DarkFrames]
    where = [f"line {n}" for n in lines["rows"] + lines["darks"]]
    if len(where) != len(sec):  # alnfile saw other lines than the scan (should not happen)
        where = [f"section {v}" for v in sec]
    seen: dict[int, int] = {}
    for i, v in enumerate(sec):
        if v in seen:
            raise InputError(
                f"{where[i]}: section index {v} repeats {where[seen[v]]}; expected each raw-stack "
                "section once in the table and the DarkFrame lines",
                p,
                "SEC",
            )
        seen[v] = i
    tilt = [r.tilt for r in rows] + [d.angle for d in aln.DarkFrames]
    rot = [r.rot for r in rows] + [np.nan] * len(aln.DarkFrames)
    tx = [r.tx for r in rows] + [np.nan] * len(aln.DarkFrames)
    ty = [r.ty for r in rows] + [np.nan] * len(aln.DarkFrames)
    dark = [False] * len(rows) + [True] * len(aln.DarkFrames)
    order = np.argsort(np.asarray(sec), kind="stable")
    angles = check_tilt_angles(np.asarray(tilt, dtype=float)[order], p, None, "TILT", labels=[where[i] for i in order])
    raw_size = tuple(aln.RawSize) if aln.RawSize and any(aln.RawSize) else None
    if raw_size and raw_size[2] and aln.DarkFrames and raw_size[2] != len(sec):
        raise InputError(
            f"{len(rows)} sections + {len(aln.DarkFrames)} dark frames != RawSize z {raw_size[2]}", p, "RawSize"
        )
    rot_arr = np.asarray(rot, dtype=float)[order]
    return TiltSeries(
        tilt_angles_deg=angles,
        excluded=np.asarray(dark)[order],
        tilt_axis_angle_deg=float(np.nanmean(rot_arr)),
        name=p.stem,
        source=str(p),
        extra={
            "raw_size": raw_size,
            "alpha_offset": aln.AlphaOffset,
            "beta_offset": aln.BetaOffset,
            "section_index": np.asarray(sec)[order],
            "rot_deg": rot_arr,
            "shifts_px": np.stack([np.asarray(tx, float)[order], np.asarray(ty, float)[order]], axis=1),
        },
    )
