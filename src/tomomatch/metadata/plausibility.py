"""Plausibility of tilt-metadata values: catches unit mistakes in both directions.

Every reader and every command-line value goes through these checks, so that a number read in
the wrong unit (an IMOD ``.defocus`` in micrometres, a RELION defocus in nm, a dose in e/nm^2,
a voltage in volts) is an :class:`~tomomatch.errors.InputError` naming the file, the field,
the value in the unit it was read in and what was expected, instead of a silently wrong
search.

Ranges (tomomatch units):

* defocus: ``DEFOCUS_MIN_UM`` (0.5) to ``DEFOCUS_MAX_UM`` (20) um underfocus, per tilt; with a
  phase plate (any non-zero phase shift) from ``DEFOCUS_MIN_PHASE_PLATE_UM`` (0.1) um. The
  lower bound catches the common factor-10 slip (nanometres written where RELION expects
  Angstrom: 2.4 um read as 0.24 um). ``allow_unusual=True`` (``--allow-unusual-defocus``)
  accepts any finite value (``TiltSeries`` still refuses ``|defocus| > 100`` um).
* dose: accumulated e/A^2 >= 0 and below ``MAX_TOTAL_DOSE`` (1000 e/A^2 over the series;
  ``--allow-unusual-dose`` lifts the upper bound). A structured source whose dose is 0 for
  every tilt has no dose information: refused unless missing dose is allowed
  (``--allow-missing-dose``, implied by ``match --no-dose``).
* pixel size finite and > 0 Angstrom; voltage 20-1000 kV; Cs 0-20 mm; amplitude contrast in [0, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError

__all__ = [
    "DEFOCUS_MIN_UM",
    "DEFOCUS_MIN_PHASE_PLATE_UM",
    "DEFOCUS_MAX_UM",
    "MAX_TOTAL_DOSE",
    "VOLTAGE_RANGE_KV",
    "CS_MAX_MM",
    "DefocusUnit",
    "RELION_ANGSTROM",
    "IMOD_NM",
    "TEXT_UM",
    "WARP_UM",
    "OPTION_UM",
    "UNUSUAL_DEFOCUS_FLAG",
    "UNUSUAL_DOSE_FLAG",
    "MISSING_DOSE_HINT",
    "plain",
    "check_defocus",
    "check_dose",
    "check_total_dose",
    "require_dose_information",
    "check_pixel_size",
    "check_voltage",
    "check_cs",
    "check_amplitude_contrast",
    "check_finite",
    "has_phase_plate",
]

DEFOCUS_MIN_UM = 0.5
DEFOCUS_MIN_PHASE_PLATE_UM = 0.1
DEFOCUS_MAX_UM = 20.0
MAX_TOTAL_DOSE = 1000.0  # e/A^2 over the whole series
VOLTAGE_RANGE_KV = (20.0, 1000.0)
CS_MAX_MM = 20.0

UNUSUAL_DEFOCUS_FLAG = "--allow-unusual-defocus"
UNUSUAL_DOSE_FLAG = "--allow-unusual-dose"
MISSING_DOSE_HINT = (
    "give a dose file (--dose), or --allow-missing-dose (match: --no-dose) to use dose 0 (no exposure filter)"
)


@dataclass(frozen=True)
class DefocusUnit:
    """The unit a defocus value was read in: ``per_um`` file units per micrometre."""

    name: str  # "Angstrom"
    symbol: str  # "A"
    per_um: float
    context: str  # where this unit comes from, for messages ("" if obvious)


RELION_ANGSTROM = DefocusUnit("Angstrom", "A", 1e4, "as in RELION STAR")
IMOD_NM = DefocusUnit("nanometres", "nm", 1e3, "as in IMOD .defocus")
TEXT_UM = DefocusUnit("micrometres", "um", 1.0, "")
WARP_UM = DefocusUnit("micrometres", "um", 1.0, "as in Warp XML")
OPTION_UM = DefocusUnit("micrometres", "um", 1.0, "")

_OTHER_UNITS = (("Angstrom", 1e4), ("nanometres", 1e3), ("micrometres", 1.0), ("millimetres", 1e-3), ("metres", 1e-6))


def plain(value, digits: int = 10) -> str:
    """A value for a message: numbers as plain numbers (``2524``, not ``np.float64(2524.0)``),
    at most ``digits`` significant digits; strings quoted."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    if isinstance(value, str):
        return repr(value)
    return repr(value)


def _label(labels: Sequence[str] | None, i: int, default: str) -> str:
    return labels[i] if labels is not None else default


def _place(field: str | None, where: str) -> tuple[str | None, str]:
    """(field, message prefix): without a field the place ("line 3") is the field; with one it
    starts the message ("rlnDefocusU: row 3: ...")."""
    if field is None:
        return (where or None), ""
    return field, (f"{where}: " if where else "")


def has_phase_plate(phase_shift_deg) -> bool:
    """True if any phase shift is non-zero (phase-plate data may be recorded closer to focus)."""
    if phase_shift_deg is None:
        return False
    a = np.asarray(phase_shift_deg, dtype=float)
    return bool(np.any(np.isfinite(a) & (a != 0)))


def _unit_hint(x_file: float, unit: DefocusUnit, lo: float, hi: float) -> str:
    """' (looks like nanometres: 3.083 um?)' if another unit makes the number plausible."""
    guesses = []
    for name, per_um in _OTHER_UNITS:
        if name == unit.name:
            continue
        um = x_file / per_um
        if lo <= um <= hi:
            guesses.append(f"{name}: {plain(float(um), 4)} um?")
    if x_file < 0 and lo <= -x_file / unit.per_um <= hi:
        guesses.insert(0, "overfocus sign: tomomatch takes positive = underfocus")
    return f" (looks like {'; '.join(guesses)})" if guesses else ""


def check_defocus(
    values_um,
    path,
    field: str | None,
    unit: DefocusUnit,
    *,
    labels: Sequence[str] | None = None,
    phase_plate: bool = False,
    allow_unusual: bool = False,
    skip=None,
) -> np.ndarray:
    """Refuse defocus values outside the plausible range (see the module docstring).

    ``values_um`` are micrometres (+ = underfocus) converted from ``unit``; the message gives
    the value as written in the file and in micrometres. ``labels[i]`` names where value ``i``
    is ("row 3", "line 5"); it goes before the message, after ``field``. ``skip`` (bool per
    value) exempts excluded tilts. Non-finite values are always refused.
    """
    v = np.asarray(values_um, dtype=float).reshape(-1)
    ok = np.isfinite(v)
    if not allow_unusual:
        lo = DEFOCUS_MIN_PHASE_PLATE_UM if phase_plate else DEFOCUS_MIN_UM
        ok &= (v >= lo) & (v <= DEFOCUS_MAX_UM)
    else:
        lo = DEFOCUS_MIN_PHASE_PLATE_UM if phase_plate else DEFOCUS_MIN_UM
    if skip is not None:
        ok |= np.asarray(skip, dtype=bool).reshape(-1) & np.isfinite(v)
    bad = np.flatnonzero(~ok)
    if not bad.size:
        return v
    i = int(bad[0])
    x_file = float(v[i] * unit.per_um)
    field, prefix = _place(field, _label(labels, i, f"tilt {i + 1}" if v.size > 1 else ""))
    if not math.isfinite(v[i]):
        raise InputError(f"{prefix}defocus {plain(x_file)} is not a finite number; expected {unit.name}", path, field)
    if unit.per_um == 1:
        shown = f"{plain(x_file)} is implausible (not a plausible value in micrometres)"
    else:
        shown = f"{plain(x_file)} {unit.symbol} = {plain(float(v[i]), 4)} um is implausible"
    ctx = f" {unit.context}" if unit.context else ""
    pp = " with a phase plate" if phase_plate else ""
    raise InputError(
        f"{prefix}defocus {shown}; expected {unit.name}{ctx}, {lo:g}-{DEFOCUS_MAX_UM:g} um underfocus{pp}"
        f"{_unit_hint(x_file, unit, lo, DEFOCUS_MAX_UM)}; {UNUSUAL_DEFOCUS_FLAG} accepts unusual values",
        path,
        field,
    )


def check_dose(
    values,
    path,
    field: str | None,
    *,
    labels: Sequence[str] | None = None,
    allow_unusual: bool = False,
    what: str = "accumulated dose",
) -> np.ndarray:
    """Dose values (e/A^2): finite, >= 0 and (unless ``allow_unusual``) below ``MAX_TOTAL_DOSE``."""
    v = np.asarray(values, dtype=float).reshape(-1)
    for i, x in enumerate(v):
        f, prefix = _place(field, _label(labels, i, f"tilt {i + 1}"))
        if not math.isfinite(x):
            raise InputError(f"{prefix}{what} {plain(float(x))} is not a finite number; expected e/A^2 >= 0", path, f)
        if x < 0:
            raise InputError(f"{prefix}{what} {plain(float(x))} is negative; expected e/A^2 >= 0", path, f)
    if not allow_unusual:
        big = np.flatnonzero(v >= MAX_TOTAL_DOSE)
        if big.size:
            i = int(big[0])
            f, prefix = _place(field, _label(labels, i, f"tilt {i + 1}"))
            raise InputError(
                f"{prefix}{what} {plain(float(v[i]))} e/A^2 is implausible; expected e/A^2 (not "
                f"e/nm^2), below {MAX_TOTAL_DOSE:g} e/A^2 for the whole series; {UNUSUAL_DOSE_FLAG} "
                "accepts unusual values",
                path,
                f,
            )
    return v


def check_total_dose(
    per_exposure, path, field: str | None, *, labels: Sequence[str] | None = None, allow_unusual: bool = False
) -> None:
    """The sum of per-exposure doses must stay below ``MAX_TOTAL_DOSE`` (names where it is passed)."""
    if allow_unusual:
        return
    total = np.cumsum(np.asarray(per_exposure, dtype=float))
    over = np.flatnonzero(total >= MAX_TOTAL_DOSE)
    if over.size:
        i = int(over[0])
        f, prefix = _place(field, _label(labels, i, f"tilt {i + 1}"))
        raise InputError(
            f"{prefix}the doses add up to {plain(float(total[-1]))} e/A^2, implausible; expected "
            f"e/A^2 (not e/nm^2), below {MAX_TOTAL_DOSE:g} e/A^2 for the whole series; "
            f"{UNUSUAL_DOSE_FLAG} accepts unusual values",
            path,
            f,
        )


def require_dose_information(accumulated, path, field: str, allow_missing: bool) -> None:
    """A dose of 0 for every tilt of a multi-tilt series is no dose information: refused unless allowed."""
    a = np.asarray(accumulated, dtype=float).reshape(-1)
    if not allow_missing and a.size > 1 and np.all(a == 0):
        raise InputError(
            f"dose is 0 for every tilt (no dose information); expected the accumulated e/A^2 "
            f"before each tilt; {MISSING_DOSE_HINT}",
            path,
            field,
        )


def check_finite(value, path, field: str | None, expected: str) -> float:
    """A finite float, or InputError naming ``field`` (the value is printed plainly)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{plain(value)} is not a number; expected {expected}", path, field) from None
    if not math.isfinite(x):
        raise InputError(f"{plain(x)} is not a finite number; expected {expected}", path, field)
    return x


def check_pixel_size(value, path, field: str | None) -> float:
    x = check_finite(value, path, field, "a pixel size in Angstrom > 0")
    if not x > 0:
        raise InputError(f"pixel size {plain(x)}; expected Angstrom > 0", path, field)
    return x


def check_voltage(value, path, field: str | None) -> float:
    lo, hi = VOLTAGE_RANGE_KV
    x = check_finite(value, path, field, "an acceleration voltage in kV")
    if not lo <= x <= hi:
        hint = f" (looks like volts: {plain(x / 1000)} kV?)" if lo <= x / 1000 <= hi else ""
        raise InputError(f"voltage {plain(x)} is implausible; expected kV, {lo:g}-{hi:g}{hint}", path, field)
    return x


def check_cs(value, path, field: str | None) -> float:
    x = check_finite(value, path, field, "a spherical aberration in mm")
    if not 0 <= x <= CS_MAX_MM:
        hint = f" (looks like micrometres: {plain(x / 1000)} mm?)" if 0 < x / 1000 <= CS_MAX_MM else ""
        raise InputError(f"Cs {plain(x)} is implausible; expected mm, 0-{CS_MAX_MM:g}{hint}", path, field)
    return x


def check_amplitude_contrast(value, path, field: str | None) -> float:
    x = check_finite(value, path, field, "an amplitude contrast fraction")
    if not 0 <= x < 1:
        hint = f" (a percentage? {plain(x / 100)})" if 0 <= x / 100 < 1 and x >= 1 else ""
        raise InputError(f"amplitude contrast {plain(x)}; expected a fraction in [0, 1){hint}", path, field)
    return x
