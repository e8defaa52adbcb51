"""Combine a primary metadata source with extra files and scalar overrides into one TiltSeries."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..conventions import check_hand
from ..errors import InputError
from ..tiltseries import TiltSeries
from ._common import check_tilt_angles
from .aln import read_aln
from .mdoc import read_mdoc
from .plausibility import (
    OPTION_UM,
    check_amplitude_contrast,
    check_cs,
    check_defocus,
    check_finite,
    check_pixel_size,
    check_voltage,
    has_phase_plate,
)
from .relion import read_relion5
from .text import DefocusTable, read_defocus_text, read_dose, read_imod_defocus, read_tilt_angles
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


def read_defocus_any(path, *, allow_unusual_defocus: bool = False, phase_plate: bool = False) -> DefocusTable:
    """Defocus from an IMOD ``.defocus`` file or a plain text file (um), as the IMOD dict.

    ``phase_plate`` (phase-plate data; an IMOD file with a phase column says so itself) lowers
    the plausible minimum to 0.1 um; ``allow_unusual_defocus`` skips the range check
    (:func:`tomomatch.metadata.plausibility.check_defocus`).
    """
    p = Path(os.fspath(path))
    if p.suffix.lower() == ".defocus":
        return read_imod_defocus(p, allow_unusual_defocus=allow_unusual_defocus, phase_plate=phase_plate)
    d = read_defocus_text(p, allow_unusual_defocus=allow_unusual_defocus, phase_plate=phase_plate)
    return DefocusTable(
        defocus_u_um=d, defocus_v_um=d.copy(), astigmatism_angle_deg=np.zeros(d.size), phase_shift_deg=np.zeros(d.size)
    )


def _describe(ts: TiltSeries) -> str:
    return ts.source or "the tilt angles"


def load_tilt_series(
    *,
    tilt_angles=None,
    dose=None,
    dose_per_tilt: bool = False,
    defocus=None,
    relion5=None,
    tomo_name=None,
    warp_xml=None,
    mdoc=None,
    aln=None,
    voltage_kv=None,
    cs_mm=None,
    amplitude_contrast=None,
    phase_shift_deg=None,
    hand=None,
    pixel_size_angstrom=None,
    allow_missing_dose: bool = False,
    allow_unusual_defocus: bool = False,
    allow_unusual_dose: bool = False,
) -> TiltSeries:
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
        Scalar overrides applied last (``phase_shift_deg`` to every tilt). They are checked
        first; an error names the keyword, not a file.
    allow_missing_dose
        Read a RELION 5 / Warp / mdoc source without dose (no ``rlnMicrographPreExposure``,
        ``<Dose>`` or ``ExposureDose``, or 0 for every tilt) as dose 0; without it that is an
        error (the CLI passes it for ``--allow-missing-dose`` and ``match --no-dose``). Implied
        for the primary source when ``dose`` is given. Sources that never hold a dose
        (``.rawtlt``/``.tlt``, ``.aln``) give dose 0 without ``dose``.
    allow_unusual_defocus, allow_unusual_dose
        Accept values outside the plausible ranges of
        :mod:`tomomatch.metadata.plausibility` (defocus 0.5-20 um underfocus, 0.1 um with a phase
        plate; accumulated dose below 1000 e/A^2). A source whose defocus is replaced by
        ``defocus`` is not range-checked.

    Raises
    ------
    InputError
        No angles at all, more than one structured source, a tilt-count mismatch between
        files (the message names both files and both counts), an implausible value.
    """
    primaries = {
        name: value
        for name, value in (("relion5", relion5), ("warp_xml", warp_xml), ("mdoc", mdoc), ("aln", aln))
        if value is not None
    }
    if len(primaries) > 1:
        raise InputError(f"several tilt-series sources given ({', '.join(primaries)}); expected one")
    if tomo_name is not None and relion5 is None:
        raise InputError("a tomogram name only selects a row of a RELION 5 tomograms.star (give --relion5-tomograms)")
    _check_overrides(
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        phase_shift_deg=phase_shift_deg,
        pixel_size_angstrom=pixel_size_angstrom,
        hand=hand,
    )
    number = _as_number(defocus)
    phase_plate = phase_shift_deg is not None and has_phase_plate([float(phase_shift_deg)])
    if number is not None:
        check_defocus(
            [number], None, "defocus", OPTION_UM, phase_plate=phase_plate, allow_unusual=allow_unusual_defocus
        )
    # a value replaced by another source is not checked in the source it is replaced in
    primary_kw = dict(
        allow_missing_dose=allow_missing_dose or dose is not None,
        allow_unusual_dose=allow_unusual_dose or dose is not None,
    )
    defocus_kw = dict(allow_unusual_defocus=allow_unusual_defocus or defocus is not None)
    ts: TiltSeries | None = None
    if relion5 is not None:
        ts = read_relion5(relion5, tomo_name, **primary_kw, **defocus_kw)
    elif warp_xml is not None:
        ts = read_warp_xml(warp_xml, **primary_kw, **defocus_kw)
    elif mdoc is not None:
        ts = read_mdoc(mdoc, **primary_kw)
    elif aln is not None:
        ts = read_aln(aln)

    if tilt_angles is not None:
        angles = read_tilt_angles(tilt_angles)
        if ts is None:
            p = Path(os.fspath(tilt_angles))
            ts = TiltSeries(angles, name=p.name.split(".")[0], source=str(p))
        else:
            _check_n(angles.size, ts, tilt_angles)
            extra = {**ts.extra, "tilt_angles_file": str(tilt_angles)}
            level = ts.extra.get("level_angles")
            if level:  # Warp reconstructed with its levelling angles whatever the angles' source
                angles = check_tilt_angles(
                    angles + level["tilt_angle_offset_deg"], tilt_angles, None, "tilt angle - LevelAngleY"
                )
                extra["level_angles"] = {**level, "applied_to": str(tilt_angles)}
            ts = ts.with_(tilt_angles_deg=angles, extra=extra)
    if ts is None:
        raise InputError(
            "no tilt angles: give a tilt-angle file (--tilt-angles) or a RELION 5, Warp XML, mdoc or aln file"
        )

    if dose is not None:
        values = read_dose(dose, per_tilt=dose_per_tilt, allow_unusual_dose=allow_unusual_dose)
        _check_n(values.size, ts, dose)
        ts = ts.with_(accumulated_dose=values)
    elif not primaries.keys() - {"aln"} and not allow_missing_dose:
        # a .rawtlt/.tlt or .aln says nothing about dose: dose 0 (no exposure filter), said aloud
        warnings.warn(
            f"{aln if aln is not None else tilt_angles}: no dose given; the exposure filter is off "
            "(give --dose or --dose-per-tilt)",
            UserWarning,
            stacklevel=2,
        )

    if defocus is not None:
        if number is not None:
            ts = ts.with_(
                defocus_u_um=np.full(ts.n_tilts, number),
                defocus_v_um=None,
                astigmatism_angle_deg=None,
                phase_shift_deg=None,
            )
        else:
            d = read_defocus_any(
                defocus,
                allow_unusual_defocus=allow_unusual_defocus,
                phase_plate=phase_plate or has_phase_plate(ts.phase_shift_deg),
            )
            _check_n(d["defocus_u_um"].size, ts, defocus)
            ts = ts.with_(
                defocus_u_um=d["defocus_u_um"],
                defocus_v_um=d["defocus_v_um"],
                astigmatism_angle_deg=d["astigmatism_angle_deg"],
                phase_shift_deg=d["phase_shift_deg"],
            )

    overrides = {}
    for name, value in (
        ("voltage_kv", voltage_kv),
        ("cs_mm", cs_mm),
        ("amplitude_contrast", amplitude_contrast),
        ("pixel_size_angstrom", pixel_size_angstrom),
        ("hand", hand),
    ):
        if value is not None:
            overrides[name] = value
    if phase_shift_deg is not None:
        overrides["phase_shift_deg"] = np.full(ts.n_tilts, float(phase_shift_deg))
    if overrides:
        ts = ts.with_(**overrides)
    return ts


def _check_overrides(
    *,
    voltage_kv,
    cs_mm,
    amplitude_contrast,
    phase_shift_deg,
    pixel_size_angstrom,
    hand=None,
    names: dict[str, str] | None = None,
) -> None:
    """Check scalar overrides before they are applied, naming the keyword (or option), not a file."""
    names = names or {}
    if voltage_kv is not None:
        check_voltage(voltage_kv, None, names.get("voltage_kv", "voltage_kv"))
    if cs_mm is not None:
        check_cs(cs_mm, None, names.get("cs_mm", "cs_mm"))
    if amplitude_contrast is not None:
        check_amplitude_contrast(amplitude_contrast, None, names.get("amplitude_contrast", "amplitude_contrast"))
    if phase_shift_deg is not None:
        check_finite(phase_shift_deg, None, names.get("phase_shift_deg", "phase_shift_deg"), "a phase shift in degrees")
    if pixel_size_angstrom is not None:
        check_pixel_size(pixel_size_angstrom, None, names.get("pixel_size_angstrom", "pixel_size_angstrom"))
    if hand is not None:
        try:
            check_hand(hand)
        except (TypeError, ValueError, OverflowError):
            raise InputError(
                f"{hand!r}; expected the defocus handedness +1, -1 or 0", None, names.get("hand", "hand")
            ) from None


def _check_n(n: int, ts: TiltSeries, other_path) -> None:
    if n != ts.n_tilts:
        raise InputError(
            f"{n} tilts, but {_describe(ts)} has {ts.n_tilts}; expected the same number of tilts "
            "in every metadata file",
            other_path,
        )
