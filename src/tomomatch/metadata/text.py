"""Plain-text tilt metadata: IMOD ``.rawtlt``/``.tlt``, dose lists, defocus lists, ctfplotter ``.defocus``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TypedDict

import numpy as np

from ..errors import InputError
from ..tiltseries import TiltSeries
from ._common import (
    MAX_TILTS,
    check_count,
    check_tilt_angles,
    finite_array,
    numeric_rows,
    parse_float,
    read_text,
    refuse_other_format,
    require_file,
    write_text_atomic,
)
from .plausibility import IMOD_NM, TEXT_UM, check_defocus, check_dose, check_total_dose

__all__ = [
    "read_tilt_angles",
    "read_dose",
    "read_defocus_text",
    "read_imod_defocus",
    "write_tilt_angles",
    "write_dose",
    "write_imod_defocus",
    "IMOD_FLAG_ASTIGMATISM",
    "IMOD_FLAG_ASTIG_RADIANS",
    "IMOD_FLAG_PHASE",
    "IMOD_FLAG_PHASE_RADIANS",
    "IMOD_FLAG_INVERT_ANGLES",
    "IMOD_FLAG_CUT_ON",
]

NM_PER_UM = 1000.0

# ctfplotter/ctfphaseflip .defocus version-3 header flags (IMOD ctfphaseflip man page,
# "Defocus File Format", as quoted in scipion-em/scipion-em-imod imod/utils.py).
IMOD_FLAG_ASTIGMATISM = 1
IMOD_FLAG_ASTIG_RADIANS = 2
IMOD_FLAG_PHASE = 4
IMOD_FLAG_PHASE_RADIANS = 8
IMOD_FLAG_INVERT_ANGLES = 16
IMOD_FLAG_CUT_ON = 32


class DefocusTable(TypedDict):
    """Per-tilt defocus read from a defocus file, in stack order (um, + = underfocus; degrees)."""

    defocus_u_um: np.ndarray
    defocus_v_um: np.ndarray
    astigmatism_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray


class ImodDefocus(DefocusTable):
    """:func:`read_imod_defocus`'s dict: the defocus table plus the file's angles, version and flags."""

    tilt_angles_deg: np.ndarray
    version: int
    flags: int


# --------------------------------------------------------------------------- readers


def read_tilt_angles(path) -> np.ndarray:
    """Tilt angles in degrees from an IMOD ``.rawtlt`` / ``.tlt`` file.

    One angle per line in stack order; blank lines and ``#`` comments are skipped. A file
    with several columns per line uses the first column.

    Raises
    ------
    InputError
        Missing or empty file, a non-numeric or NaN field (with its line number), an angle
        outside -90..90 degrees, an angle given twice.
    """
    p = require_file(path, "tilt-angle")
    refuse_other_format(p, "tilt-angle")
    rows = numeric_rows(p, "tilt-angle", "a tilt angle in degrees")
    angles = np.array([r[0] for _, r in rows], dtype=float)
    return check_tilt_angles(angles, p, [ln for ln, _ in rows])


def read_dose(path, per_tilt: bool = False, tilt_angles_deg=None, *, allow_unusual_dose: bool = False) -> np.ndarray:
    """Accumulated dose (e/A^2 before each tilt) from a text file with one value per line.

    Parameters
    ----------
    path
        Text file, one non-negative dose per line in stack order (pytom's ``--dose-accumulation``
        file holds accumulated values already, and is read as is).
    per_tilt
        If True the values are the dose *of* each exposure. They are accumulated assuming the
        file (stack) order is the acquisition order: tilt ``i`` gets the sum of the values on
        the lines before it, and the first tilt gets 0. A stack sorted by angle but acquired
        dose-symmetrically cannot be accumulated from such a file; give accumulated values
        or an ``.mdoc`` instead.
    tilt_angles_deg
        If given, the number of values must equal the number of tilts.
    allow_unusual_dose
        Accept a total dose of 1000 e/A^2 or more (:mod:`tomomatch.metadata.plausibility`;
        such values are usually e/nm^2).
    """
    p = require_file(path, "dose")
    refuse_other_format(p, "dose")
    rows = numeric_rows(p, "dose", "a dose in e/A^2")
    values = np.array([r[0] for _, r in rows], dtype=float)
    labels = [f"line {ln}" for ln, _ in rows]
    check_dose(
        values, p, None, labels=labels, allow_unusual=allow_unusual_dose, what="dose per tilt" if per_tilt else "dose"
    )
    if per_tilt:
        check_total_dose(values, p, None, labels=labels, allow_unusual=allow_unusual_dose)
    if tilt_angles_deg is not None:
        check_count(values.size, np.asarray(tilt_angles_deg).size, p, "dose")
    if per_tilt:
        values = np.concatenate([[0.0], np.cumsum(values)[:-1]])
    return values


def read_defocus_text(path, *, allow_unusual_defocus: bool = False, phase_plate: bool = False) -> np.ndarray:
    """Per-tilt defocus in micrometres (positive = underfocus) from a plain text file.

    One value per line in stack order. The unit is never guessed: a value outside 0.5-20 um
    underfocus (0.1-20 um with ``phase_plate``), e.g. nanometres, Angstrom or metres, raises
    :class:`InputError` asking for micrometres, unless ``allow_unusual_defocus``
    (:func:`tomomatch.metadata.plausibility.check_defocus`).
    """
    p = require_file(path, "defocus")
    refuse_other_format(p, "plain-text defocus")
    rows = numeric_rows(p, "defocus", "a defocus in micrometres")
    values = np.array([r[0] for _, r in rows], dtype=float)
    return check_defocus(
        values,
        p,
        None,
        TEXT_UM,
        labels=[f"line {ln}" for ln, _ in rows],
        phase_plate=phase_plate,
        allow_unusual=allow_unusual_defocus,
    )


def _imod_lines(p) -> list[tuple[int, list[str]]]:
    out = []
    for lineno, line in enumerate(read_text(p, "IMOD defocus").splitlines(), start=1):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append((lineno, s.split()))
    if not out:
        raise InputError("is empty; expected an IMOD ctfplotter .defocus file", p)
    return out


def read_imod_defocus(path, *, allow_unusual_defocus: bool = False, phase_plate: bool = False) -> ImodDefocus:
    """Read an IMOD ctfplotter/ctfphaseflip ``.defocus`` file (version 2 or 3).

    Version is the 6th field of the first line. Version 2: every line is
    ``startView endView startAngle endAngle defocus_nm`` (the first with the version
    appended). Version 3: the first line is ``flags 0 0 0 0 3``; data lines are
    ``startView endView startAngle endAngle defocus1_nm`` then, if ``flags & 1``,
    ``defocus2_nm astigAngle``; if ``flags & 4`` the phase shift; if ``flags & 32`` the
    cut-on frequency (read and ignored). ``flags & 2`` / ``& 8``: astigmatism angle / phase in
    radians; ``flags & 16``: tilt angles are inverted (tomomatch negates them back). A first
    line with 5 fields and no version is read as the version-2 layout.

    Views are 1-based inclusive ranges; a range gives its defocus to every view in it, with
    tilt angles interpolated linearly from startAngle to endAngle. All views from 1 to the
    highest must be covered exactly once (at most 10000 views).

    Defocus must be 0.5-20 um underfocus (0.1-20 um if the file has a non-zero phase shift or
    ``phase_plate``), i.e. 500-20000 nm; a file in micrometres (3.1 read as 0.0031 um) or Angstrom is refused
    unless ``allow_unusual_defocus`` (:func:`tomomatch.metadata.plausibility.check_defocus`).

    Returns
    -------
    dict
        ``defocus_u_um``, ``defocus_v_um`` (um, + = underfocus), ``astigmatism_angle_deg``,
        ``phase_shift_deg``, ``tilt_angles_deg`` (arrays, one per view), ``version`` and
        ``flags`` (ints).
    """
    p = require_file(path, "IMOD defocus")
    lines = _imod_lines(p)
    first_no, first = lines[0]
    version = 2
    if len(first) >= 6:
        v = parse_float(first[5], p, first_no, "the format version (2 or 3) as 6th field of line 1")
        if v not in (2, 3):
            raise InputError(f"format version {first[5]} not supported; expected 2 or 3", p, f"line {first_no}")
        version = int(v)
    elif len(first) != 5:
        raise InputError(
            f"{len(first)} fields; expected 6 (version 2/3 header or data with version)", p, f"line {first_no}"
        )
    flags = 0
    if version == 3:
        f = parse_float(first[0], p, first_no, "the flags value of the version-3 header")
        if f != int(f) or not 0 <= f < 64:
            raise InputError(
                f"flags {first[0]!r}; expected an integer 0-63 (sum of 1, 2, 4, 8, 16, 32)", p, f"line {first_no}"
            )
        flags = int(f)
        data = lines[1:]
        if not data:
            raise InputError("version-3 header but no data lines", p)
    else:
        data = [(first_no, first[:5])] + lines[1:]
    astig = bool(flags & IMOD_FLAG_ASTIGMATISM)
    phase = bool(flags & IMOD_FLAG_PHASE)
    n_cols = 5 + (2 if astig else 0) + (1 if phase else 0) + (1 if flags & IMOD_FLAG_CUT_ON else 0)

    records = []
    for lineno, toks in data:
        if len(toks) < n_cols:
            raise InputError(
                f"{len(toks)} fields; expected {n_cols} for version {version} with flags {flags}", p, f"line {lineno}"
            )
        vals = [parse_float(t, p, lineno, "a number") for t in toks[:n_cols]]
        start, end = vals[0], vals[1]
        if start != int(start) or end != int(end) or start < 1 or end < start or end > MAX_TILTS:
            raise InputError(
                f"view range {toks[0]}-{toks[1]} invalid; expected 1-based start <= end <= {MAX_TILTS}",
                p,
                f"line {lineno}",
            )
        df1 = vals[4] / NM_PER_UM
        df2 = vals[5] / NM_PER_UM if astig else df1
        ang = vals[6] if astig else 0.0
        if astig and flags & IMOD_FLAG_ASTIG_RADIANS:
            ang = math.degrees(ang)
        ph = vals[5 + (2 if astig else 0)] if phase else 0.0
        if phase and flags & IMOD_FLAG_PHASE_RADIANS:
            ph = math.degrees(ph)
        records.append((lineno, int(start), int(end), vals[2], vals[3], df1, df2, ang, ph))

    labels = [f"line {r[0]}" for r in records]
    phase_plate = phase_plate or any(r[8] != 0 for r in records)
    for k in (5, 6):  # defocus1, defocus2
        check_defocus(
            [r[k] for r in records],
            p,
            None,
            IMOD_NM,
            labels=labels,
            phase_plate=phase_plate,
            allow_unusual=allow_unusual_defocus,
        )
    n = max(r[2] for r in records)
    out = {
        k: np.full(n, np.nan)
        for k in ("defocus_u_um", "defocus_v_um", "astigmatism_angle_deg", "phase_shift_deg", "tilt_angles_deg")
    }
    seen = np.zeros(n, dtype=int)
    for lineno, start, end, a1, a2, df1, df2, ang, ph in records:
        views = np.arange(start, end + 1)
        dup = views[seen[views - 1] > 0]
        if dup.size:
            raise InputError(f"view {dup[0]} given twice; expected each view once", p, f"line {lineno}")
        seen[views - 1] = lineno
        frac = (views - start) / (end - start) if end > start else np.zeros(views.size)
        out["tilt_angles_deg"][views - 1] = a1 + frac * (a2 - a1)
        out["defocus_u_um"][views - 1] = df1
        out["defocus_v_um"][views - 1] = df2
        out["astigmatism_angle_deg"][views - 1] = ang
        out["phase_shift_deg"][views - 1] = ph
    missing = np.flatnonzero(seen == 0)
    if missing.size:
        raise InputError(f"view {missing[0] + 1} has no line (views 1..{n} must all be covered)", p, "views")
    if flags & IMOD_FLAG_INVERT_ANGLES:
        out["tilt_angles_deg"] = -out["tilt_angles_deg"]
    # the angles are informative only (a view range interpolates them): no uniqueness check
    check_tilt_angles(out["tilt_angles_deg"], p, None, "tilt angle", unique=False)
    return ImodDefocus(
        defocus_u_um=out["defocus_u_um"],
        defocus_v_um=out["defocus_v_um"],
        astigmatism_angle_deg=out["astigmatism_angle_deg"],
        phase_shift_deg=out["phase_shift_deg"],
        tilt_angles_deg=out["tilt_angles_deg"],
        version=version,
        flags=flags,
    )


# --------------------------------------------------------------------------- writers


def write_tilt_angles(path, angles_deg) -> Path:
    """Write tilt angles (degrees), one per line (``%.6f``), atomically. Returns the path."""
    a = finite_array(angles_deg, "tilt angles")
    return write_text_atomic(path, "".join(f"{v:.6f}\n" for v in a))


def write_dose(path, accumulated_dose) -> Path:
    """Write accumulated dose (e/A^2 before each tilt), one per line, atomically."""
    d = finite_array(accumulated_dose, "accumulated dose")
    if np.any(d < 0):
        raise ValueError("accumulated dose must be >= 0")
    return write_text_atomic(path, "".join(f"{v:.6f}\n" for v in d))


def write_imod_defocus(path, tilt_series: TiltSeries) -> Path:
    """Write the per-tilt defocus of ``tilt_series`` as an IMOD ``.defocus`` file, atomically.

    Rule: a series without astigmatism (U == V for every tilt) and without phase shift is
    written as version 2 (``view view angle angle defocus_nm``, version on line 1). Otherwise
    version 3 with flags 1 (astigmatism: ``defocus1 defocus2 angle_deg``) plus 4 if any phase
    shift is non-zero (phase in degrees). One line per tilt (all tilts, excluded ones too),
    defocus in nm. Both forms round-trip through :func:`read_imod_defocus`.
    """
    ts = tilt_series
    du_um, dv_um = ts.defocus_u_um, ts.defocus_v_um
    if du_um is None or dv_um is None:  # both or neither (TiltSeries.__post_init__)
        raise ValueError("tilt series has no defocus to write")
    du = du_um * NM_PER_UM
    dv = dv_um * NM_PER_UM
    astig = not np.allclose(du, dv, rtol=0, atol=1e-6)
    phase = bool(np.any(ts.phase_shift_deg != 0))
    lines = []
    if not astig and not phase:
        for i, (a, d) in enumerate(zip(ts.tilt_angles_deg, du), start=1):
            tail = "\t2" if i == 1 else ""
            lines.append(f"{i}\t{i}\t{a:.2f}\t{a:.2f}\t{d:.2f}{tail}")
    else:
        flags = IMOD_FLAG_ASTIGMATISM | (IMOD_FLAG_PHASE if phase else 0)
        lines.append(f"{flags}\t0\t0.0\t0.0\t0.0\t3")
        for i in range(ts.n_tilts):
            a = ts.tilt_angles_deg[i]
            row = f"{i + 1}\t{i + 1}\t{a:.2f}\t{a:.2f}\t{du[i]:.2f}\t{dv[i]:.2f}\t{ts.astigmatism_angle_deg[i]:.2f}"
            if phase:
                row += f"\t{ts.phase_shift_deg[i]:.2f}"
            lines.append(row)
    return write_text_atomic(path, "\n".join(lines) + "\n")
