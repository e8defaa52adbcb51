"""SerialEM ``.mdoc`` tilt-series reader (via teamtomo ``mdocfile``)."""
from __future__ import annotations

import re
from datetime import datetime

import mdocfile
import numpy as np
import pandas as pd

from ..errors import InputError
from ..tiltseries import TiltSeries
from ._common import accumulate_in_order, check_tilt_angles, require_file

__all__ = ["read_mdoc"]

_DATETIME_FORMATS = ("%d-%b-%y  %H:%M:%S", "%d-%b-%y %H:%M:%S", "%d-%b-%Y  %H:%M:%S", "%d-%b-%Y %H:%M:%S",
                     "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
_AXIS_RE = re.compile(r"Tilt\s*axis\s*angle\s*=\s*([-+0-9.eE]+)")


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


def _numeric(df: pd.DataFrame, col: str, path, required: bool):
    if col not in df.columns:
        if required:
            raise InputError(f"no {col} entries; expected one per section", path, col)
        return None
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        if required or bad.size < vals.size:
            z = df["ZValue"].iloc[bad[0]] if "ZValue" in df.columns else bad[0]
            raise InputError(f"section ZValue = {z}: {col} missing or not a number", path, col)
        return None
    return vals


def read_mdoc(path) -> TiltSeries:
    """Read a SerialEM tilt-series ``.mdoc``.

    Sections are put in ``ZValue`` order (the order of the images in the stack). Tilt angles
    from ``TiltAngle``. ``ExposureDose`` (the dose of each exposure, e/A^2) is accumulated in
    acquisition order: by ``DateTime`` if every section has a parseable one, else by
    ``ZValue`` (SerialEM writes sections in acquisition order). A tilt's accumulated dose is
    the sum over the tilts acquired before it. Pixel size from ``PixelSpacing`` (Angstrom),
    voltage from ``Voltage``; the tilt-axis angle from the ``Tilt axis angle = ...`` title
    line if present. ``extra`` records ``dose_order_source`` ("DateTime" or "ZValue").
    """
    p = require_file(path, "SerialEM mdoc")
    try:
        df = mdocfile.read(p)
    except Exception as exc:  # pydantic validation / parse errors from mdocfile
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise InputError(f"not a readable mdoc file ({msg})", p) from None
    if len(df) == 0 or "TiltAngle" not in df.columns:
        raise InputError("no [ZValue = ...] sections with TiltAngle; expected a tilt-series mdoc", p, "TiltAngle")
    if "ZValue" in df.columns:
        z = pd.to_numeric(df["ZValue"], errors="coerce")
        if z.isna().any():
            raise InputError("a section has a non-integer ZValue", p, "ZValue")
        if z.duplicated().any():
            raise InputError(f"ZValue {int(z[z.duplicated()].iloc[0])} appears twice", p, "ZValue")
        df = df.assign(ZValue=z).sort_values("ZValue", kind="stable").reset_index(drop=True)
    angles = check_tilt_angles(_numeric(df, "TiltAngle", p, True), p, None, "TiltAngle")
    per_exposure = _numeric(df, "ExposureDose", p, False)
    extra = {}
    dose = None
    if per_exposure is not None:
        times = [_parse_datetime(t) for t in df["DateTime"]] if "DateTime" in df.columns else [None]
        if all(t is not None for t in times) and len(times) == len(df):
            rank = np.argsort(np.argsort(np.array([t.timestamp() for t in times]), kind="stable"), kind="stable")
            extra["dose_order_source"] = "DateTime"
        else:
            rank = np.arange(len(df))
            extra["dose_order_source"] = "ZValue"
        if np.any(per_exposure < 0):
            raise InputError("negative ExposureDose; expected e/A^2 >= 0", p, "ExposureDose")
        dose = accumulate_in_order(per_exposure, rank)
        extra["exposure_dose"] = per_exposure
        extra["acquisition_rank"] = rank
    pixel = None
    pix = _numeric(df, "PixelSpacing", p, False)
    if pix is not None:
        pixel = float(pix[0])
    voltage = _numeric(df, "Voltage", p, False)
    axis = 0.0
    if "titles" in df.columns:
        for titles in df["titles"].iloc[:1]:
            for t in (titles or []):
                m = _AXIS_RE.search(str(t))
                if m:
                    axis = float(m.group(1))
    return TiltSeries(
        tilt_angles_deg=angles,
        accumulated_dose=dose,
        voltage_kv=float(voltage[0]) if voltage is not None else 300.0,
        pixel_size_angstrom=pixel,
        tilt_axis_angle_deg=axis,
        name=p.name.split(".")[0],
        source=str(p),
        extra=extra,
    )
