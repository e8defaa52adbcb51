"""SerialEM ``.mdoc`` tilt-series reader (via teamtomo ``mdocfile``)."""

from __future__ import annotations

import contextlib
import logging
import math
import re
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from mdocfile.data_models import Mdoc, MdocGlobalData, MdocSectionData
from mdocfile.utils import find_section_entries, find_title_entries

from ..errors import InputError
from ..tiltseries import TiltSeries
from ._common import accumulate_in_order, check_tilt_angles, library_errors, one_line, read_text, require_file
from .plausibility import (
    MISSING_DOSE_HINT,
    check_dose,
    check_pixel_size,
    check_total_dose,
    check_voltage,
    plain,
    require_dose_information,
)

__all__ = ["read_mdoc"]

_DATETIME_FORMATS = (
    "%d-%b-%y  %H:%M:%S",
    "%d-%b-%y %H:%M:%S",
    "%d-%b-%Y  %H:%M:%S",
    "%d-%b-%Y %H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
)
_AXIS_RE = re.compile(r"Tilt\s*axis\s*angle\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
_LINE = "_mdoc_line"  # 1-based line of each section's [ZValue = ...] header


def _parse_datetime(text) -> datetime | None:
    if not isinstance(text, str):
        return None
    s = " ".join(text.split())
    for fmt in _DATETIME_FORMATS:
        try:
            return datetime.strptime(s, " ".join(fmt.split()))
        except ValueError:
            continue
    return None


def _key_line(lines: list[str], start: int, stop: int, key: str) -> int | None:
    """1-based number of the first line in ``lines[start:stop]`` that sets ``key``."""
    for i in range(start, stop):
        k = lines[i].strip().strip("[]").split("=", 1)[0].strip()
        if k == key:
            return i + 1
    return None


@contextlib.contextmanager
def _quiet_mdocfile():
    """mdocfile logs a warning for every key it does not know (SerialEM adds keys over time);
    that is no problem of the user's, so it is not printed."""
    log = logging.getLogger("mdocfile")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _parse(path, text: str) -> pd.DataFrame:
    """``mdocfile``'s ``Mdoc.from_lines`` block by block, so that an error names its line and key."""
    with _quiet_mdocfile():
        return _parse_blocks(path, text)


def _parse_blocks(path, text: str) -> pd.DataFrame:
    lines = [line.strip() for line in text.split("\n")]
    starts = find_section_entries(lines)
    bounds = list(zip(starts, starts[1:] + [len(lines)]))
    header = lines[: starts[0]] if starts else lines
    for i, line in enumerate(header):
        # mdocfile splits every header line that is not a title on "=" into exactly key and value
        if line and not line.startswith("[T =") and line.count("=") != 1:
            raise InputError(f"{line[:60]!r}; expected 'Key = value' or a [T = title] line", path, f"line {i + 1}")

    def block(model, chunk_start, chunk_stop, what):
        try:
            return model.from_lines(lines[chunk_start:chunk_stop])
        except Exception as exc:  # pydantic ValidationError (a value of the wrong type) and others
            key = None
            errors = getattr(exc, "errors", None)
            if callable(errors):
                try:
                    loc = errors()[0].get("loc", ())
                    key = str(loc[0]) if loc else None
                except Exception:
                    key = None
            at = _key_line(lines, chunk_start, chunk_stop, key) if key else None
            where = f"line {at}" if at else (f"line {chunk_start + 1}" if chunk_stop > chunk_start else None)
            raise InputError(f"{what}: {one_line(exc)}", path, where) from None

    glob = block(MdocGlobalData, 0, len(header), "header")
    sections = [block(MdocSectionData, a, b, lines[a][:40]) for a, b in bounds]
    titles = [header[i] for i in find_title_entries(header)]
    with library_errors(path, "SerialEM mdoc file"):
        df = Mdoc(titles=titles, global_data=glob, section_data=sections).to_dataframe()
    if len(df):
        df[_LINE] = [a + 1 for a, _ in bounds]
    return df


def _numeric(df: pd.DataFrame, col: str, path, required: bool):
    """A numeric per-section column; None if absent (or, when not required, empty in every section)."""
    if col not in df.columns:
        if required:
            raise InputError(f"no {col} entries; expected one per section", path, col)
        return None
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size and (required or bad.size < vals.size):
        i = int(bad[0])
        raw = df[col].iloc[i]
        missing = raw is None or (isinstance(raw, float) and math.isnan(raw))
        what = "missing or NaN" if missing else f"{plain(raw)} is not a finite number"
        raise InputError(f"{_section(df, i)}: {what}; expected a number in every section", path, col)
    return None if bad.size else vals


def _section(df: pd.DataFrame, i: int) -> str:
    z = df["ZValue"].iloc[i] if "ZValue" in df.columns else i
    return f"line {df[_LINE].iloc[i]} [ZValue = {plain(z)}]"


def read_mdoc(path, *, allow_missing_dose: bool = False, allow_unusual_dose: bool = False) -> TiltSeries:
    """Read a SerialEM tilt-series ``.mdoc``.

    Sections are put in ``ZValue`` order (the order of the images in the stack). Tilt angles
    from ``TiltAngle``. ``ExposureDose`` (the dose of each exposure, e/A^2) is accumulated in
    acquisition order: by ``DateTime`` if every section has a parseable one, else by
    ``ZValue`` (SerialEM writes sections in acquisition order). A tilt's accumulated dose is
    the sum over the tilts acquired before it. Pixel size from ``PixelSpacing`` (Angstrom),
    voltage from ``Voltage``; the tilt-axis angle from the ``Tilt axis angle = ...`` title
    line if present. ``extra`` records ``dose_order_source`` ("DateTime" or "ZValue").

    No ``ExposureDose`` (or 0 in every section, what SerialEM writes without a dose
    calibration) is an error unless ``allow_missing_dose`` (then dose 0); a total dose of
    1000 e/A^2 or more unless ``allow_unusual_dose``. Errors name the line (and key) of the
    problem, also for values ``mdocfile`` cannot parse.
    """
    p = require_file(path, "SerialEM mdoc")
    df = _parse(p, read_text(p, "SerialEM mdoc"))
    if len(df) == 0 or "TiltAngle" not in df.columns:
        raise InputError("no [ZValue = ...] sections with TiltAngle; expected a tilt-series mdoc", p, "TiltAngle")
    if "ZValue" in df.columns:
        z = pd.to_numeric(df["ZValue"], errors="coerce")
        if z.isna().any():
            i = int(np.flatnonzero(z.isna().to_numpy())[0])
            raise InputError(
                f"line {df[_LINE].iloc[i]}: a section without an integer ZValue; expected [ZValue = n] sections",
                p,
                "ZValue",
            )
        if z.duplicated().any():
            i = int(np.flatnonzero(z.duplicated().to_numpy())[0])
            raise InputError(
                f"line {df[_LINE].iloc[i]}: ZValue {int(z.iloc[i])} appears twice; expected each "
                "image of the stack once",
                p,
                "ZValue",
            )
        df = df.assign(ZValue=z).sort_values("ZValue", kind="stable").reset_index(drop=True)
    angles = check_tilt_angles(
        _numeric(df, "TiltAngle", p, True), p, None, "TiltAngle", labels=[_section(df, i) for i in range(len(df))]
    )
    per_exposure = _numeric(df, "ExposureDose", p, False)
    extra: dict[str, Any] = {}
    dose = None
    if per_exposure is None:
        if not allow_missing_dose:
            raise InputError(
                f"no ExposureDose in the sections; expected the dose of each exposure (e/A^2); {MISSING_DOSE_HINT}",
                p,
                "ExposureDose",
            )
    else:
        times = [_parse_datetime(t) for t in df["DateTime"]] if "DateTime" in df.columns else [None]
        parsed = [t for t in times if t is not None]
        if len(parsed) == len(times) == len(df):
            rank = np.argsort(np.argsort(np.array([t.timestamp() for t in parsed]), kind="stable"), kind="stable")
            extra["dose_order_source"] = "DateTime"
        else:
            rank = np.arange(len(df))
            extra["dose_order_source"] = "ZValue"
        labels = [_section(df, i) for i in range(len(df))]
        check_dose(
            per_exposure, p, "ExposureDose", labels=labels, allow_unusual=allow_unusual_dose, what="ExposureDose"
        )
        check_total_dose(
            per_exposure[np.argsort(rank, kind="stable")],
            p,
            "ExposureDose",
            labels=[labels[i] for i in np.argsort(rank, kind="stable")],
            allow_unusual=allow_unusual_dose,
        )
        require_dose_information(per_exposure, p, "ExposureDose", allow_missing_dose)
        dose = accumulate_in_order(per_exposure, rank)
        extra["exposure_dose"] = per_exposure
        extra["acquisition_rank"] = rank
    pixel = None
    pix = _numeric(df, "PixelSpacing", p, False)
    if pix is not None:
        pixel = check_pixel_size(pix[0], p, "PixelSpacing")
    voltage = _numeric(df, "Voltage", p, False)
    axis = 0.0
    if "titles" in df.columns:
        for titles in df["titles"].iloc[:1]:
            for t in titles or []:
                m = _AXIS_RE.search(str(t))
                if m:
                    axis = float(m.group(1))
                    if not math.isfinite(axis):
                        raise InputError(
                            f"{m.group(1)!r} is not a finite number; expected degrees", p, "Tilt axis angle"
                        )
    return TiltSeries(
        tilt_angles_deg=angles,
        accumulated_dose=dose,
        voltage_kv=check_voltage(voltage[0], p, "Voltage") if voltage is not None else 300.0,
        pixel_size_angstrom=pixel,
        tilt_axis_angle_deg=axis,
        name=p.name.split(".")[0],
        source=str(p),
        extra=extra,
    )
