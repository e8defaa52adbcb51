"""Combine a primary metadata source with extra files and scalar overrides into one TiltSeries."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..tiltseries import MAX_PLAUSIBLE_DEFOCUS_UM, TiltSeries
from .aln import read_aln
from .mdoc import read_mdoc
from .relion import read_relion5
from .text import read_defocus_text, read_dose, read_imod_defocus, read_tilt_angles
from .warp import read_warp_xml

__all__ = ["load_tilt_series", "read_defocus_any"]


def _as_number(value) -> float | None:
    """A float if ``value`` is a number or a numeric string that is not an existing file."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    if isinstance(value, (str, os.PathLike)) and not Path(value).exists():
        try:
            return float(os.fspath(value))
        except ValueError:
            return None
    return None


def read_defocus_any(path) -> dict[str, np.ndarray]:
    """Defocus from an IMOD ``.defocus`` file or a plain text file (um), as the IMOD dict."""
    p = Path(os.fspath(path))
    if p.suffix.lower() == ".defocus":
        return read_imod_defocus(p)
    d = read_defocus_text(p)
    return {"defocus_u_um": d, "defocus_v_um": d.copy(), "astigmatism_angle_deg": np.zeros(d.size),
            "phase_shift_deg": np.zeros(d.size)}


def _describe(ts: TiltSeries) -> str:
    return ts.source or "the tilt angles"


def load_tilt_series(*, tilt_angles=None, dose=None, dose_per_tilt: bool = False, defocus=None,
                     relion5=None, tomo_name=None, warp_xml=None, mdoc=None, aln=None,
                     voltage_kv=None, cs_mm=None, amplitude_contrast=None, phase_shift_deg=None,
                     hand=None, pixel_size_angstrom=None) -> TiltSeries:
    """Build one :class:`TiltSeries` from a primary source, extra files and overrides.

    Parameters
    ----------
    tilt_angles
        ``.rawtlt``/``.tlt`` file. The primary source if no structured one is given; with a
        structured source it replaces that source's angles (same tilt count required).
    dose, dose_per_tilt
        Text dose file (see :func:`read_dose`); replaces the source's dose.
    defocus
        ``.defocus`` (IMOD, with astigmatism and phase shift if present), a plain text file
        in micrometres, or a single number in micrometres for every tilt.
    relion5, tomo_name, warp_xml, mdoc, aln
        At most one structured primary source (RELION 5 ``tomograms.star`` with the
        tomogram name, Warp XML, SerialEM mdoc, AreTomo aln).
    voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg, hand, pixel_size_angstrom
        Scalar overrides applied last (``phase_shift_deg`` to every tilt).

    Raises
    ------
    InputError
        No angles at all, more than one structured source, or a tilt-count mismatch between
        files (the message names both files and both counts).
    """
    primaries = {name: value for name, value in (("relion5", relion5), ("warp_xml", warp_xml),
                                                  ("mdoc", mdoc), ("aln", aln)) if value is not None}
    if len(primaries) > 1:
        raise InputError(f"several tilt-series sources given ({', '.join(primaries)}); expected one")
    if tomo_name is not None and relion5 is None:
        raise InputError("a tomogram name only selects a row of a RELION 5 tomograms.star (give --relion5-tomograms)")
    ts: TiltSeries | None = None
    if relion5 is not None:
        ts = read_relion5(relion5, tomo_name)
    elif warp_xml is not None:
        ts = read_warp_xml(warp_xml)
    elif mdoc is not None:
        ts = read_mdoc(mdoc)
    elif aln is not None:
        ts = read_aln(aln)

    if tilt_angles is not None:
        angles = read_tilt_angles(tilt_angles)
        if ts is None:
            p = Path(os.fspath(tilt_angles))
            ts = TiltSeries(angles, name=p.name.split(".")[0], source=str(p))
        else:
            _check_n(angles.size, ts, tilt_angles)
            ts = ts.with_(tilt_angles_deg=angles, extra={**ts.extra, "tilt_angles_file": str(tilt_angles)})
    if ts is None:
        raise InputError("no tilt angles: give a tilt-angle file (--tilt-angles) or a RELION 5, Warp XML, "
                         "mdoc or aln file")

    if dose is not None:
        values = read_dose(dose, per_tilt=dose_per_tilt)
        _check_n(values.size, ts, dose)
        ts = ts.with_(accumulated_dose=values)

    if defocus is not None:
        number = _as_number(defocus)
        if number is not None:
            if not np.isfinite(number) or abs(number) > MAX_PLAUSIBLE_DEFOCUS_UM:
                raise InputError(f"defocus {number:g} is not a plausible value in micrometres; expected "
                                 "micrometres, positive = underfocus (e.g. 3.5)", None, "defocus")
            ts = ts.with_(defocus_u_um=np.full(ts.n_tilts, number), defocus_v_um=None,
                          astigmatism_angle_deg=None, phase_shift_deg=None)
        else:
            d = read_defocus_any(defocus)
            _check_n(d["defocus_u_um"].size, ts, defocus)
            ts = ts.with_(defocus_u_um=d["defocus_u_um"], defocus_v_um=d["defocus_v_um"],
                          astigmatism_angle_deg=d["astigmatism_angle_deg"], phase_shift_deg=d["phase_shift_deg"])

    overrides = {}
    for name, value in (("voltage_kv", voltage_kv), ("cs_mm", cs_mm), ("amplitude_contrast", amplitude_contrast),
                        ("pixel_size_angstrom", pixel_size_angstrom), ("hand", hand)):
        if value is not None:
            overrides[name] = value
    if phase_shift_deg is not None:
        overrides["phase_shift_deg"] = np.full(ts.n_tilts, float(phase_shift_deg))
    if overrides:
        ts = ts.with_(**overrides)
    if ts.pixel_size_angstrom is not None and not ts.pixel_size_angstrom > 0:
        raise InputError(f"pixel size {ts.pixel_size_angstrom} must be > 0", ts.source, "pixel size")
    return ts


def _check_n(n: int, ts: TiltSeries, other_path) -> None:
    if n != ts.n_tilts:
        raise InputError(f"{n} tilts, but {_describe(ts)} has {ts.n_tilts}; expected the same number of tilts "
                         "in every metadata file", other_path)
