"""RELION 5 tomography metadata: ``tomograms.star`` (``data_global``) and per-tilt-series STAR files."""

from __future__ import annotations

import io
import math
import os
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ..conventions import ANGSTROM_PER_MICROMETRE, centre_index, check_hand, hand_from_relion, tilt_frame
from ..errors import InputError
from ..mrcio import atomic_path
from ..tiltseries import TiltSeries
from ._common import check_tilt_angles, library_errors, require_file
from .plausibility import (
    MISSING_DOSE_HINT,
    RELION_ANGSTROM,
    check_amplitude_contrast,
    check_cs,
    check_defocus,
    check_dose,
    check_pixel_size,
    check_voltage,
    has_phase_plate,
    plain,
    require_dose_information,
)

__all__ = [
    "read_relion5",
    "write_relion5",
    "list_relion5_tomograms",
    "relion5_projection_matrices",
    "angles_from_projection_matrices",
]

PROJ_COLUMNS = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
PROJ_SOURCE = "rlnTomoProjX/Y/Z/W"
ROTATION_TOLERANCE = 1e-3  # max |R R^T - I| and |det R - 1| of a projection matrix's 3x3 part
ANGLE_AGREEMENT_DEG = 0.05  # angle columns vs matrices: larger differences are recorded


def _star_lines(path: Path) -> list[str]:
    """The lines of a STAR file as ``starfile`` sees them (it reads ``linecache`` lines 1..n, n the
    number of newline-separated lines), stripped; non-UTF-8 text is refused."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the STAR file ({exc.strerror or exc})", path) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"byte 0x{raw[exc.start]:02x} is not UTF-8 text; expected a RELION STAR text file", path, f"line {line}"
        ) from None
    n = raw.count(b"\n") + (0 if not raw or raw.endswith(b"\n") else 1)
    lines = [ln.strip() for ln in io.StringIO(text, newline=None).readlines()]
    return (lines + [""] * n)[:n]


_FIELD_SPLIT = re.compile(r"[ \t]+")


def _fields(line: str, path: Path, lineno: int) -> list[str]:
    """Fields of a loop row as pandas reads them (whitespace-separated, quotes group, # comments)."""
    if '"' in line or "'" in line:
        try:
            lex = shlex.shlex(line.replace("'", '"'), posix=True)
            lex.whitespace, lex.whitespace_split, lex.commenters = " \t", True, "#"
            return list(lex)
        except ValueError:
            raise InputError(
                "unbalanced quote; expected quoted values to be closed on the same line", path, f"line {lineno}"
            ) from None
    line = line.split("#", 1)[0].strip(" \t")
    return _FIELD_SPLIT.split(line) if line else []


def _scan_star(path: Path) -> dict[str, list[int]]:
    """Check the structure of a STAR file the way ``starfile`` 0.5 parses it, naming the line of a
    problem: every loop row must have one value per column (pandas would pad a short row with NaN
    and report a long one on two lines), a column must not repeat, a ``_name value`` line must
    have two fields, a ``data_`` block must hold a loop or fields.

    Returns the 1-based line numbers of the data rows of each loop block.
    """
    lines = _star_lines(path)
    rows: dict[str, list[int]] = {}
    i, n = 0, len(lines)
    while i < n:
        if not lines[i].startswith("data_"):
            i += 1
            continue
        name, block_line = lines[i][5:], i + 1
        i += 1
        while i < n and not (lines[i].startswith("loop_") or lines[i].startswith("_")):
            i += 1
        if i >= n:
            raise InputError(
                f"data_{name} has no loop_ and no _fields; expected a STAR data block", path, f"line {block_line}"
            )
        if lines[i].startswith("loop_"):
            loop_line = i + 1
            i += 1
            columns: list[str] = []
            while i < n and lines[i].startswith("_"):
                col = lines[i].split()[0][1:]
                if col in columns:
                    raise InputError(
                        f"column {col} appears twice in data_{name}; expected each column once", path, f"line {i + 1}"
                    )
                columns.append(col)
                i += 1
            block_rows = []
            while i < n and not lines[i].startswith("data_"):
                toks = _fields(lines[i], path, i + 1)
                if toks:
                    if not columns:
                        raise InputError(
                            f"loop_ of data_{name} has no _column lines; expected _rlnName lines after loop_",
                            path,
                            f"line {loop_line}",
                        )
                    if len(toks) != len(columns):
                        raise InputError(
                            f"{len(toks)} value{'s' if len(toks) != 1 else ''} in a row of data_{name}; "
                            f"expected {len(columns)}, one per column (a ragged row)",
                            path,
                            f"line {i + 1}",
                        )
                    block_rows.append(i + 1)
                i += 1
            rows[name] = block_rows
        else:
            while i < n and not lines[i].startswith("data"):
                if lines[i].startswith("_"):
                    try:
                        ok = len(shlex.split(lines[i])) == 2
                    except ValueError:
                        ok = False
                    if not ok:
                        raise InputError(f"{lines[i][:60]!r}; expected '_name value'", path, f"line {i + 1}")
                i += 1
    return rows


def _read_star(path: Path, what: str) -> tuple[dict, dict[str, list[int]]]:
    """The blocks of a STAR file and the line numbers of each loop's rows (see :func:`_scan_star`)."""
    rows = _scan_star(path)
    with library_errors(path, "STAR file"):
        blocks = starfile.read(path, always_dict=True, parse_as_string=["rlnTomoName"])
    if not blocks:
        raise InputError(f"no data blocks; expected a RELION 5 {what}", path)
    return blocks, rows


def _global_table(path: Path) -> pd.DataFrame:
    blocks, _ = _read_star(path, "tomograms.star")
    df = blocks.get("global")
    if not isinstance(df, pd.DataFrame):
        raise InputError("no data_global loop; expected a RELION 5 tomograms.star", path, "data_global")
    if "rlnTomoName" not in df.columns:
        raise InputError("data_global has no rlnTomoName column", path, "rlnTomoName")
    return df


def list_relion5_tomograms(tomograms_star) -> list[str]:
    """The ``rlnTomoName`` values of a RELION 5 ``tomograms.star``."""
    p = require_file(tomograms_star, "RELION 5 tomograms.star")
    return [str(n) for n in _global_table(p)["rlnTomoName"]]


def _resolve_tilt_series_star(value: str, star: Path) -> Path:
    """Find a ``rlnTomoTiltSeriesStarFile``: as given if absolute, else relative to the star
    file's directory, to the current directory, to each parent of the star file (the RELION
    project directory is usually two or three levels up), and finally
    ``<star dir>/tilt_series/<basename>`` (pytom-match-pick's rule)."""
    v = Path(value)
    if v.is_absolute():
        candidates = [v]
    else:
        star_dir = star.resolve().parent
        candidates = [star_dir / v, Path.cwd() / v]
        candidates += [parent / v for parent in star_dir.parents]
        candidates.append(star_dir / "tilt_series" / v.name)
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(
        f"rlnTomoTiltSeriesStarFile {value!r} not found (looked relative to the star file's "
        "directory, the current directory and the RELION project directory)",
        star,
        "rlnTomoTiltSeriesStarFile",
    )


def _row(i: int, lines: list[int] | None) -> str:
    """'row 3' (data row, 1-based), with the file line if known: 'row 3 (line 35)'."""
    return f"row {i + 1}" + (f" (line {lines[i]})" if lines is not None and i < len(lines) else "")


def _col(df: pd.DataFrame, name: str, path: Path, required: bool = True, lines: list[int] | None = None):
    if name in df.columns:
        values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            at = f" (line {lines[i]})" if lines is not None and i < len(lines) else ""
            raise InputError(
                f"row {i + 1}: {plain(df[name].iloc[i])} is not a finite number; expected a number{at}", path, name
            )
        return values
    if required:
        raise InputError("column missing; expected a RELION 5 tilt-series STAR column", path, name)
    return None


# --------------------------------------------------------------------------- projection matrices


def relion5_projection_matrices(
    tilt_deg,
    x_tilt_deg,
    z_rot_deg,
    tomogram_size_xyz_unbinned,
    tilt_image_size_xy,
    shifts_angstrom=None,
    pixel_size_angstrom: float = 1.0,
) -> np.ndarray:
    """RELION 5's per-tilt projection matrices ``(n, 4, 4)`` (tomogram pixels -> image pixels).

    3dem/relion ``src/jaz/tomography/tomogram.cpp`` ``Tomogram::setProjectionMatrix``:
    ``P = S(image centre + shift) Rz(zrot) Ry(ytilt) Rx(xtilt) S(-tomogram centre)`` with
    ``S`` a translation, tomogram centre ``int(N/2)`` of ``rlnTomoSizeX/Y/Z`` (unbinned tilt-series
    pixels), image centre ``(int(w/2), int(h/2), 0)`` of the tilt images and the shift
    ``rlnTomoX/YShiftAngst / rlnTomoTiltSeriesPixelSize`` (z shift 0). The rotation is
    :func:`tomomatch.conventions.tilt_frame`. Rows 0..3 are RELION's ``rlnTomoProjX/Y/Z/W``.
    """
    rot = tilt_frame(tilt_deg, x_tilt_deg, z_rot_deg)
    if rot.ndim == 2:
        rot = rot[None]
    n = rot.shape[0]
    size = [int(v) for v in tomogram_size_xyz_unbinned]
    img = [int(v) for v in tilt_image_size_xy]
    if len(size) != 3 or len(img) != 2 or min(size + img) <= 0:
        raise ValueError("tomogram_size_xyz_unbinned must be 3 and tilt_image_size_xy 2 positive ints")
    c_tomo = np.array([centre_index(v) for v in size], dtype=float)
    shifts = (
        np.zeros((n, 2))
        if shifts_angstrom is None
        else np.broadcast_to(np.asarray(shifts_angstrom, dtype=float), (n, 2)) / float(pixel_size_angstrom)
    )
    out = np.zeros((n, 4, 4))
    out[:, :3, :3] = rot
    out[:, :3, 3] = -rot @ c_tomo
    out[:, 0, 3] += centre_index(img[0]) + shifts[:, 0]
    out[:, 1, 3] += centre_index(img[1]) + shifts[:, 1]
    out[:, 3, 3] = 1.0
    return out


def angles_from_projection_matrices(matrices) -> np.ndarray:
    """``(n, 3)`` angles ``(ytilt, xtilt, zrot)`` in degrees of projection matrices ``(n, >=3, >=3)``.

    The rotation part is ``Rz(zrot) Ry(ytilt) Rx(xtilt)``; its third row is
    ``(-sin y, cos y sin x, cos y cos x)``, so ``ytilt = asin(-P[2,0])``,
    ``xtilt = atan2(P[2,1], P[2,2])`` and ``zrot = atan2(P[1,0], P[0,0])`` (RELION's
    ``Tomogram::getProjectionAnglesFromMatrix``). At ``|ytilt| = 90`` (``cos y = 0``) only
    ``zrot - xtilt`` is defined: ``xtilt = 0``, ``zrot = atan2(-P[0,1], P[1,1])``.
    """
    m = np.asarray(matrices, dtype=float)[..., :3, :3]
    y = np.arcsin(np.clip(-m[..., 2, 0], -1.0, 1.0))
    x = np.arctan2(m[..., 2, 1], m[..., 2, 2])
    z = np.arctan2(m[..., 1, 0], m[..., 0, 0])
    lock = np.hypot(m[..., 2, 1], m[..., 2, 2]) < 1e-9
    x = np.where(lock, 0.0, x)
    z = np.where(lock, np.arctan2(-m[..., 0, 1], m[..., 1, 1]), z)
    return np.degrees(np.stack([y, x, z], axis=-1))


def _format_row(values) -> str:
    """One matrix row as RELION writes a double vector: ``[a,b,c,d]``, 12 significant digits."""
    return "[" + ",".join(f"{(0.0 if abs(float(v)) < 1e-12 else float(v)):.12g}" for v in values) + "]"


def _parse_row(value, path: Path, column: str, row: int) -> list[float]:
    text = str(value).strip()
    expected = "expected 4 numbers written [a,b,c,d]"
    if not (text.startswith("[") and text.endswith("]")):
        raise InputError(f"row {row}: {text!r}; {expected}", path, column)
    parts = text[1:-1].split(",")
    if len(parts) != 4:
        raise InputError(f"row {row}: {text!r} has {len(parts)} numbers; {expected}", path, column)
    try:
        nums = [float(t) for t in parts]
    except ValueError:
        raise InputError(f"row {row}: {text!r} is not numeric; {expected}", path, column) from None
    if not all(math.isfinite(v) for v in nums):
        raise InputError(f"row {row}: {text!r} is not finite; {expected}", path, column)
    return nums


def _projection_matrices(df: pd.DataFrame, path: Path) -> np.ndarray | None:
    """The ``rlnTomoProjX/Y/Z/W`` rows as ``(n, 4, 4)``, checked; None if the columns are absent."""
    present = [c for c in PROJ_COLUMNS if c in df.columns]
    if not present:
        return None
    if len(present) != 4:
        missing = [c for c in PROJ_COLUMNS if c not in df.columns]
        raise InputError(
            f"{', '.join(present)} present but {', '.join(missing)} missing; expected all four "
            "projection-matrix rows or none",
            path,
            missing[0],
        )
    out = np.zeros((len(df), 4, 4))
    for r, col in enumerate(PROJ_COLUMNS):
        for i, value in enumerate(df[col].tolist()):
            out[i, r] = _parse_row(value, path, col, i + 1)
    w_err = np.abs(out[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    bad = np.flatnonzero(w_err > ROTATION_TOLERANCE)
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"row {i + 1}: {_format_row(out[i, 3])}; expected [0,0,0,1] (an affine projection)", path, "rlnTomoProjW"
        )
    rot = out[:, :3, :3]
    ortho_err = np.abs(rot @ np.swapaxes(rot, -1, -2) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rot)
    bad = np.flatnonzero((ortho_err > ROTATION_TOLERANCE) | (np.abs(det - 1.0) > ROTATION_TOLERANCE))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"row {i + 1}: the 3x3 part of the projection matrix is not a rotation (det {det[i]:.6g}, "
            f"max |R R^T - I| {ortho_err[i]:.3g}); expected orthonormal rows with det +1 within "
            f"{ROTATION_TOLERANCE:g} (a matrix with magnification or a mirrored axis has no tilt angles)",
            path,
            "rlnTomoProjX/Y/Z",
        )
    return out


def _mean_angle(values) -> float:
    """Mean of angles (degrees) near the first one: ``[179, -179] -> 180``, ``[-90.5, -90.6] -> -90.55``."""
    v = np.asarray(values, dtype=float)
    d = (v - v[0] + 180.0) % 360.0 - 180.0
    return float(v[0] + d.mean())


def _wrapped_diff(a, b) -> np.ndarray:
    return np.abs((np.asarray(a, float) - np.asarray(b, float) + 180.0) % 360.0 - 180.0)


def read_relion5(
    tomograms_star,
    tomo_name: str | None = None,
    *,
    tilt_series_star=None,
    allow_missing_dose: bool = False,
    allow_unusual_defocus: bool = False,
    allow_unusual_dose: bool = False,
) -> TiltSeries:
    """Read one tilt series from a RELION 5 ``tomograms.star``.

    Parameters
    ----------
    tomograms_star
        The ``tomograms.star`` with its ``data_global`` loop.
    tomo_name
        ``rlnTomoName`` to read; may be omitted if the file holds exactly one tomogram.
    tilt_series_star
        Explicit path of the per-tilt STAR file, overriding ``rlnTomoTiltSeriesStarFile``.
    allow_missing_dose
        Read a table without ``rlnMicrographPreExposure`` (or with 0 for every tilt) as dose 0;
        otherwise that is an :class:`InputError` naming the column.
    allow_unusual_defocus, allow_unusual_dose
        Skip the plausibility ranges of :mod:`tomomatch.metadata.plausibility` (defocus
        0.5-20 um underfocus, i.e. 5000-200000 A, 0.1 um with a non-zero ``rlnPhaseShift``;
        accumulated dose below 1000 e/A^2).

    Tilt geometry (:func:`tomomatch.conventions.tilt_frame`, RELION 5's ``Rz(zrot) Ry(ytilt)
    Rx(xtilt)``, ``tomogram.cpp`` ``setProjectionMatrix``), in this order of precedence:

    1. ``rlnTomoProjX/Y/Z/W`` (the rows of the projection matrix, each ``[a,b,c,d]``; RELION 4
       wrote them, RELION 5 still reads them and then uses them *instead of* the angle
       columns): ``ytilt = asin(-P[2,0])``, ``xtilt = atan2(P[2,1], P[2,2])``,
       ``zrot = atan2(P[1,0], P[0,0])`` (:func:`angles_from_projection_matrices`). A 3x3 part
       that is not a rotation (det != 1 or rows not orthonormal within 1e-3, e.g. an IMOD
       magnification or a mirrored axis), a fourth row other than ``[0,0,0,1]``, only some of
       the four columns, or ``|xtilt| > 45`` (a tomogram whose depth axis is not z) is refused
       with :class:`InputError`. If the file also has ``rlnTomoYTilt`` / ``rlnTomoXTilt`` /
       ``rlnTomoZRot`` they are compared with the matrices: the matrices are used either way
       (as RELION 5 does); a difference over 0.05 degrees is recorded in ``extra``
       (``angles_disagree_with_matrices`` True) and warned about.
    2. Else ``rlnTomoYTilt`` (the aligned tilt RELION reconstructs the tomogram with),
       ``rlnTomoXTilt`` (0 if absent) and ``rlnTomoZRot``.
    3. Else ``rlnTomoNominalStageTiltAngle`` (no alignment; pytom-match-pick always uses it),
       x tilt from ``rlnTomoXTilt`` if present.

    Other per-tilt fields: ``rlnMicrographPreExposure`` -> accumulated dose,
    ``rlnDefocusU/V`` Angstrom -> um, ``rlnDefocusAngle`` deg, ``rlnPhaseShift`` deg if
    present. Global fields: voltage, Cs, amplitude contrast, ``rlnTomoHand`` -> ``hand``,
    ``rlnTomoTiltSeriesPixelSize`` -> ``pixel_size_angstrom``. Tilt axis: mean z rotation
    (matrices or ``rlnTomoZRot``) else ``rlnTomoNominalTiltAxisAngle``.

    ``extra`` keeps ``size_xyz_unbinned``, ``binning``, ``tomogram_voxel_angstrom`` (pixel
    size x binning), ``reconstructed_tomogram``, ``tilt_series_star``, ``tomograms_star``,
    ``original_pixel_size_angstrom``, the angle columns as written (``nominal_stage_tilt_deg``,
    ``y_tilt_deg``, ``x_tilt_deg``, ``z_rot_deg``; None where absent), ``tilt_angle_source``
    and ``x_tilt_source`` (the column(s) the tilt and x-tilt came from: ``"rlnTomoProjX/Y/Z/W"``,
    ``"rlnTomoYTilt"``, ``"rlnTomoNominalStageTiltAngle"``, ``"rlnTomoXTilt"`` or ``"none"``),
    and with matrices ``projection_matrices`` ``(n, 4, 4)``, ``matrix_angles_deg`` ``(n, 3)``
    (ytilt, xtilt, zrot), ``angles_vs_matrices_max_diff_deg`` (per compared column) and
    ``angles_disagree_with_matrices``.
    """
    star = require_file(tomograms_star, "RELION 5 tomograms.star")
    glob = _global_table(star)
    names = [str(n) for n in glob["rlnTomoName"]]
    if not names:
        raise InputError(
            "no tomograms (the data_global loop has no rows); expected one row per tomogram", star, "rlnTomoName"
        )
    if tomo_name is None:
        if len(names) != 1:
            raise InputError(
                f"holds {len(names)} tomograms ({', '.join(names[:6])}"
                f"{', ...' if len(names) > 6 else ''}); give the tomogram name (--tomo-name)",
                star,
                "rlnTomoName",
            )
        tomo_name = names[0]
    tomo_name = str(tomo_name)
    if tomo_name not in names:
        raise InputError(f"no tomogram named {tomo_name!r}; names: {', '.join(names[:10])}", star, "rlnTomoName")
    row = glob.iloc[names.index(tomo_name)]

    def g(name, default=None):
        if name in glob.columns:
            return row[name]
        if default is None:
            raise InputError("column missing in data_global", star, name)
        return default

    def num(name, default=None, check=None):
        value = g(name, default)
        try:
            x = float(value)
        except (TypeError, ValueError):
            x = math.nan
        if not math.isfinite(x):
            raise InputError(f"{plain(value)} for {tomo_name!r} is not a finite number; expected a number", star, name)
        return check(x, star, name) if check is not None else x

    if tilt_series_star is not None:
        ts_path = require_file(tilt_series_star, "RELION 5 tilt-series STAR")
    else:
        ts_path = _resolve_tilt_series_star(str(g("rlnTomoTiltSeriesStarFile")), star)
    blocks, block_rows = _read_star(ts_path, "tilt-series STAR file")
    df = blocks.get(tomo_name)
    block = tomo_name
    if not isinstance(df, pd.DataFrame):
        tables = {k: b for k, b in blocks.items() if isinstance(b, pd.DataFrame)}
        if len(tables) != 1:
            raise InputError(f"no data_{tomo_name} loop", ts_path, f"data_{tomo_name}")
        block, df = next(iter(tables.items()))
    if len(df) == 0:
        raise InputError("no tilts in the tilt-series table", ts_path)
    lines = block_rows.get(block)
    if lines is not None and len(lines) != len(df):
        lines = None
    rows = [_row(i, lines) for i in range(len(df))]

    def column(name):
        return _col(df, name, ts_path, required=False, lines=lines)

    nominal = column("rlnTomoNominalStageTiltAngle")
    y_tilt = column("rlnTomoYTilt")
    x_tilt_col = column("rlnTomoXTilt")
    z_rot = column("rlnTomoZRot")
    matrices = _projection_matrices(df, ts_path)
    geometry_extra: dict = {}
    if matrices is not None:
        matrix_angles = angles_from_projection_matrices(matrices)
        angles, x_tilt, z_rot_used = matrix_angles[:, 0], matrix_angles[:, 1].copy(), matrix_angles[:, 2]
        x_tilt[np.abs(x_tilt) < 1e-6] = 0.0  # rounding noise, not an x tilt (keeps has_x_tilt False)
        big = np.flatnonzero(np.abs(x_tilt) > 45)
        if big.size:
            i = int(big[0])
            raise InputError(
                f"row {i + 1}: x tilt {x_tilt[i]:.4g} degrees from the projection matrix; expected"
                " |x tilt| <= 45 (is the tomogram's depth axis not z?)",
                ts_path,
                "rlnTomoProjZ",
            )
        diffs = {}
        for col, values, k in (("rlnTomoYTilt", y_tilt, 0), ("rlnTomoXTilt", x_tilt_col, 1), ("rlnTomoZRot", z_rot, 2)):
            if values is not None:
                diffs[col] = float(_wrapped_diff(values, matrix_angles[:, k]).max())
        disagree = {c: d for c, d in diffs.items() if d > ANGLE_AGREEMENT_DEG}
        geometry_extra = {
            "projection_matrices": matrices,
            "matrix_angles_deg": matrix_angles,
            "angles_vs_matrices_max_diff_deg": diffs,
            "angles_disagree_with_matrices": bool(disagree),
        }
        if disagree:
            warnings.warn(
                f"{ts_path}: angle columns differ from rlnTomoProjX/Y/Z/W by up to "
                + ", ".join(f"{c} {d:.3g} deg" for c, d in disagree.items())
                + "; using the matrices (as RELION 5 does)",
                stacklevel=2,
            )
        tilt_source = x_source = PROJ_SOURCE
    elif y_tilt is not None or nominal is not None:
        angles = y_tilt if y_tilt is not None else nominal
        tilt_source = "rlnTomoYTilt" if y_tilt is not None else "rlnTomoNominalStageTiltAngle"
        x_tilt = x_tilt_col
        x_source = "rlnTomoXTilt" if x_tilt_col is not None else "none"
        z_rot_used = z_rot
    else:
        raise InputError(
            "no tilt angles (rlnTomoYTilt, rlnTomoNominalStageTiltAngle or rlnTomoProjX/Y/Z/W)",
            ts_path,
            "rlnTomoNominalStageTiltAngle",
        )
    check_tilt_angles(angles, ts_path, field=tilt_source, labels=rows)
    dose = column("rlnMicrographPreExposure")
    if dose is None:
        if not allow_missing_dose:
            raise InputError(
                f"column missing: no dose; expected the accumulated e/A^2 before each tilt; {MISSING_DOSE_HINT}",
                ts_path,
                "rlnMicrographPreExposure",
            )
    else:
        check_dose(dose, ts_path, "rlnMicrographPreExposure", labels=rows, allow_unusual=allow_unusual_dose)
        require_dose_information(dose, ts_path, "rlnMicrographPreExposure", allow_missing_dose)
    du = column("rlnDefocusU")
    dv = column("rlnDefocusV")
    phase = column("rlnPhaseShift")
    if du is None and dv is not None:
        raise InputError(
            "column missing while rlnDefocusV is present; expected both rlnDefocusU and rlnDefocusV "
            "(Angstrom) or neither",
            ts_path,
            "rlnDefocusU",
        )
    if du is not None:
        du = du / ANGSTROM_PER_MICROMETRE
        dv = du if dv is None else dv / ANGSTROM_PER_MICROMETRE
        for values, name in ((du, "rlnDefocusU"), (dv, "rlnDefocusV")):
            check_defocus(
                values,
                ts_path,
                name,
                RELION_ANGSTROM,
                labels=rows,
                phase_plate=has_phase_plate(phase),
                allow_unusual=allow_unusual_defocus,
            )
    astig_angle = column("rlnDefocusAngle")
    axis_nominal = column("rlnTomoNominalTiltAxisAngle")
    axis = (
        _mean_angle(z_rot_used)
        if z_rot_used is not None
        else (float(np.mean(axis_nominal)) if axis_nominal is not None else 0.0)
    )

    try:
        hand = hand_from_relion(float(g("rlnTomoHand")))
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"rlnTomoHand {plain(g('rlnTomoHand'))}; expected +1 or -1", star, "rlnTomoHand") from None
    pixel = num("rlnTomoTiltSeriesPixelSize", check=check_pixel_size)
    binning = num("rlnTomoTomogramBinning", 1.0)
    if not binning > 0:
        raise InputError(f"{plain(binning)}; expected a binning factor > 0", star, "rlnTomoTomogramBinning")
    extra = {
        "tomograms_star": str(star),
        "tilt_series_star": str(ts_path),
        "binning": binning,
        "tomogram_voxel_angstrom": pixel * binning,
        "nominal_stage_tilt_deg": nominal,
        "y_tilt_deg": y_tilt,
        "x_tilt_deg": x_tilt_col,
        "z_rot_deg": z_rot,
        "tilt_angle_source": tilt_source,
        "x_tilt_source": x_source,
        **geometry_extra,
    }
    if all(c in glob.columns for c in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")):
        size = tuple(num(c) for c in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"))
        for c, v in zip(("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"), size):
            if not v >= 1:
                raise InputError(f"{plain(v)}; expected a tomogram size >= 1 pixel", star, c)
        extra["size_xyz_unbinned"] = tuple(int(round(v)) for v in size)
    if "rlnTomoReconstructedTomogram" in glob.columns:
        extra["reconstructed_tomogram"] = str(row["rlnTomoReconstructedTomogram"])
    if "rlnMicrographOriginalPixelSize" in glob.columns:
        extra["original_pixel_size_angstrom"] = num("rlnMicrographOriginalPixelSize", check=check_pixel_size)
    if "rlnMicrographName" in df.columns:
        extra["micrograph_names"] = [str(x) for x in df["rlnMicrographName"]]

    return TiltSeries(
        tilt_angles_deg=angles,
        x_tilt_deg=x_tilt,
        accumulated_dose=dose,
        defocus_u_um=du,
        defocus_v_um=dv if du is not None else None,
        astigmatism_angle_deg=astig_angle,
        phase_shift_deg=phase,
        voltage_kv=num("rlnVoltage", check=check_voltage),
        cs_mm=num("rlnSphericalAberration", check=check_cs),
        amplitude_contrast=num("rlnAmplitudeContrast", check=check_amplitude_contrast),
        pixel_size_angstrom=pixel,
        hand=hand,
        tilt_axis_angle_deg=axis,
        name=tomo_name,
        source=str(ts_path),
        extra=extra,
    )


def _write_star_atomic(blocks: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")


def write_relion5(
    out_dir,
    tilt_series: TiltSeries,
    tomo_name: str,
    tomogram_size_xyz_unbinned,
    binning: float,
    tomogram_path=None,
    hand: int | None = None,
    *,
    tilt_image_size_xy=None,
) -> Path:
    """Write RELION 5 ``tomograms.star`` and ``tilt_series/<tomo_name>.star`` into ``out_dir``.

    Parameters
    ----------
    out_dir
        Directory; ``tomograms.star`` is created or, if present, the row of ``tomo_name`` is
        replaced (other tomograms are kept).
    tilt_series
        Per-tilt data. Excluded tilts are *not* written (RELION drops excluded tilts from the
        tilt-series table). Tilt angles go to ``rlnTomoNominalStageTiltAngle`` and
        ``rlnTomoYTilt``, ``x_tilt_deg`` to ``rlnTomoXTilt``, the tilt-axis angle to
        ``rlnTomoNominalTiltAxisAngle`` and ``rlnTomoZRot``, shifts 0, ``rlnCtfScalefactor`` =
        cos(tilt). Defocus and ``rlnPhaseShift`` only if the series has defocus.
    tomo_name
        ``rlnTomoName`` and the tilt-series data block name.
    tomogram_size_xyz_unbinned
        ``rlnTomoSizeX/Y/Z`` in tilt-series pixels.
    binning
        ``rlnTomoTomogramBinning`` (tomogram voxel / tilt-series pixel).
    tomogram_path
        ``rlnTomoReconstructedTomogram`` (written as given); omitted if None.
    hand
        ``rlnTomoHand`` (+1 or -1); defaults to ``tilt_series.hand``. Required one way or the other.
    tilt_image_size_xy
        Width and height of the tilt images in pixels. Only if given, the projection-matrix rows
        ``rlnTomoProjX/Y/Z/W`` are written too (:func:`relion5_projection_matrices`, RELION 5's
        ``setProjectionMatrix`` with zero shifts): they need the image centre
        ``int(w/2), int(h/2)``, which RELION takes from the images and the STAR files do not
        hold. Without it (the default) they are not written, and RELION 5 builds the same
        matrices from the angle columns and the images. Note that RELION 5 treats these
        columns as the RELION 4 definition: it uses them *instead of* the angles (printing a
        conversion warning) and drops them when it writes the file again.

    Returns
    -------
    Path of ``tomograms.star``. Both files are written atomically. The tilt-series path is
    stored relative to ``out_dir`` (``tilt_series/<tomo_name>.star``), which
    :func:`read_relion5` resolves against the star file's directory.
    """
    ts = tilt_series
    h = ts.hand if hand is None else hand
    if h is None or check_hand(h) == 0:
        raise ValueError("write_relion5 needs hand +1 or -1 (rlnTomoHand); give hand=")
    if ts.pixel_size_angstrom is None:
        raise ValueError("write_relion5 needs tilt_series.pixel_size_angstrom")
    size = [int(v) for v in tomogram_size_xyz_unbinned]
    if len(size) != 3 or min(size) <= 0:
        raise ValueError(f"tomogram_size_xyz_unbinned must be 3 positive ints, got {tomogram_size_xyz_unbinned}")
    if tilt_image_size_xy is not None:
        img = [int(v) for v in tilt_image_size_xy]
        if len(img) != 2 or min(img) <= 0:
            raise ValueError(f"tilt_image_size_xy must be 2 positive ints, got {tilt_image_size_xy}")
    out_dir = Path(out_dir)
    tomo_name = str(tomo_name)
    inc = ts.included()
    n = inc.n_tilts
    names = [f"{tomo_name}_{i:03d}_{a:.2f}.mrc" for i, a in enumerate(inc.tilt_angles_deg)]
    per_tilt = {
        "rlnMicrographMovieName": names,
        "rlnTomoNominalStageTiltAngle": inc.tilt_angles_deg,
        "rlnTomoNominalTiltAxisAngle": np.full(n, ts.tilt_axis_angle_deg),
        "rlnMicrographPreExposure": inc.accumulated_dose,
        "rlnMicrographName": names,
    }
    du, dv = inc.defocus_u_um, inc.defocus_v_um
    if du is not None and dv is not None:  # both or neither (TiltSeries.__post_init__): has_defocus
        per_tilt.update(
            {
                "rlnTomoNominalDefocus": -inc.defocus_um,
                "rlnDefocusU": du * ANGSTROM_PER_MICROMETRE,
                "rlnDefocusV": dv * ANGSTROM_PER_MICROMETRE,
                "rlnCtfAstigmatism": np.abs(du - dv) * ANGSTROM_PER_MICROMETRE,
                "rlnDefocusAngle": inc.astigmatism_angle_deg,
                "rlnPhaseShift": inc.phase_shift_deg,
            }
        )
    per_tilt.update(
        {
            "rlnTomoXTilt": inc.x_tilt_deg,
            "rlnTomoYTilt": inc.tilt_angles_deg,
            "rlnTomoZRot": np.full(n, ts.tilt_axis_angle_deg),
            "rlnTomoXShiftAngst": np.zeros(n),
            "rlnTomoYShiftAngst": np.zeros(n),
            "rlnCtfScalefactor": np.cos(np.deg2rad(inc.tilt_angles_deg)),
        }
    )
    if tilt_image_size_xy is not None:
        proj = relion5_projection_matrices(
            inc.tilt_angles_deg, inc.x_tilt_deg, ts.tilt_axis_angle_deg, size, tilt_image_size_xy
        )
        for r, col in enumerate(PROJ_COLUMNS):
            per_tilt[col] = [_format_row(m[r]) for m in proj]
    ts_rel = Path("tilt_series") / f"{tomo_name}.star"
    _write_star_atomic({tomo_name: pd.DataFrame(per_tilt)}, out_dir / ts_rel)

    row = {
        "rlnTomoName": tomo_name,
        "rlnVoltage": ts.voltage_kv,
        "rlnSphericalAberration": ts.cs_mm,
        "rlnAmplitudeContrast": ts.amplitude_contrast,
        "rlnMicrographOriginalPixelSize": ts.pixel_size_angstrom,
        "rlnTomoHand": float(check_hand(h)),
        "rlnTomoTiltSeriesPixelSize": ts.pixel_size_angstrom,
        "rlnTomoTiltSeriesStarFile": ts_rel.as_posix(),
        "rlnTomoTomogramBinning": float(binning),
        "rlnTomoSizeX": size[0],
        "rlnTomoSizeY": size[1],
        "rlnTomoSizeZ": size[2],
    }
    if tomogram_path is not None:
        row["rlnTomoReconstructedTomogram"] = os.fspath(tomogram_path)
    star = out_dir / "tomograms.star"
    new = pd.DataFrame([row])
    if star.exists():
        old = _global_table(star)
        old = old[[str(x) != tomo_name for x in old["rlnTomoName"]]]
        new = pd.concat([old, new], ignore_index=True)
        if "rlnTomoReconstructedTomogram" in new.columns:
            new["rlnTomoReconstructedTomogram"] = new["rlnTomoReconstructedTomogram"].fillna("None")
    _write_star_atomic({"global": new}, star)
    return star
