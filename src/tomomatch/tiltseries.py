"""The typed tilt-series object every reader produces and every consumer takes.

Units follow :mod:`tomomatch.conventions`: tilt angles in degrees (IMOD/RELION sign), dose
accumulated before each tilt in e/A^2, defocus in micrometres (+ = underfocus), astigmatism
angle and phase shift in degrees, voltage kV, Cs mm, pixel sizes Angstrom.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .conventions import check_hand
from .errors import InputError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["TiltSeries"]

MAX_PLAUSIBLE_DEFOCUS_UM = 100.0


def _as_array(
    values, n: int | None, name: str, source: str | None, fill: float | None = None, dtype=float
) -> np.ndarray:
    if values is None:
        if fill is None or n is None:  # n is None only for the tilt angles, which have no fill
            raise InputError(f"missing per-tilt field {name}", source, name)
        return np.full(n, fill, dtype=dtype)
    arr = np.array(values, dtype=dtype).reshape(-1)
    if n is not None and arr.size != n:
        raise InputError(f"{arr.size} values, expected one per tilt ({n})", source, name)
    if dtype is float and not np.all(np.isfinite(arr)):
        raise InputError("contains NaN or Inf; expected finite numbers", source, name)
    return arr


@dataclass(frozen=True, eq=False)
class TiltSeries:
    """Per-tilt and per-series metadata of one tilt series.

    Per-tilt arrays all have length ``n_tilts`` and are in acquisition-stack order.
    ``tilt_angles_deg`` is the tilt about y (RELION ``rlnTomoYTilt``, IMOD ``.tlt`` sign) and
    ``x_tilt_deg`` the tilt about x applied before it (``rlnTomoXTilt``; 0 for IMOD and
    AreTomo), as in :func:`tomomatch.conventions.tilt_frame`.
    ``hand`` is the defocus handedness if the metadata state it (RELION rlnTomoHand, Warp
    AreAnglesInverted), else ``None``. ``extra`` keeps source fields that have no slot here.
    """

    # The per-tilt fields are declared as what an instance holds after __post_init__: arrays of
    # n_tilts values (defocus U/V: arrays, or both None without defocus). The None defaults mean
    # "not given" to the constructor and are replaced by __post_init__ (dose, angles, phase and
    # x tilt 0, excluded False), hence the ignores; the __init__ under TYPE_CHECKING below states
    # what the constructor accepts.
    tilt_angles_deg: np.ndarray
    accumulated_dose: np.ndarray = None  # type: ignore[assignment]  # filled by __post_init__
    defocus_u_um: np.ndarray | None = None
    defocus_v_um: np.ndarray | None = None
    astigmatism_angle_deg: np.ndarray = None  # type: ignore[assignment]  # filled by __post_init__
    phase_shift_deg: np.ndarray = None  # type: ignore[assignment]  # filled by __post_init__
    excluded: np.ndarray = None  # type: ignore[assignment]  # filled by __post_init__
    x_tilt_deg: np.ndarray = None  # type: ignore[assignment]  # filled by __post_init__
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    pixel_size_angstrom: float | None = None
    hand: int | None = None
    tilt_axis_angle_deg: float = 0.0
    name: str = ""
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    if TYPE_CHECKING:
        # For type checkers only: the constructor dataclass generates (same parameters, order and
        # defaults as the fields above) takes per-tilt values as any array-like, and None where
        # __post_init__ fills a default; the attributes hold the arrays declared above. A field
        # added above and not here is an "unexpected keyword argument" error where it is passed.
        def __init__(
            self,
            tilt_angles_deg: ArrayLike,
            accumulated_dose: ArrayLike | None = None,
            defocus_u_um: ArrayLike | None = None,
            defocus_v_um: ArrayLike | None = None,
            astigmatism_angle_deg: ArrayLike | None = None,
            phase_shift_deg: ArrayLike | None = None,
            excluded: ArrayLike | None = None,
            x_tilt_deg: ArrayLike | None = None,
            voltage_kv: float = 300.0,
            cs_mm: float = 2.7,
            amplitude_contrast: float = 0.07,
            pixel_size_angstrom: float | None = None,
            hand: int | None = None,
            tilt_axis_angle_deg: float = 0.0,
            name: str = "",
            source: str | None = None,
            extra: dict[str, Any] = ...,
        ) -> None: ...

    def __post_init__(self):
        src = self.source
        angles = _as_array(self.tilt_angles_deg, None, "tilt angle", src)
        n = angles.size
        if n == 0:
            raise InputError("no tilts; expected at least one tilt angle", src, "tilt angle")
        if np.any(np.abs(angles) > 90):
            bad = angles[np.abs(angles) > 90][0]
            raise InputError(f"tilt angle {bad:g} outside -90..90 degrees", src, "tilt angle")
        rounded = np.round(angles, 6) + 0.0  # + 0.0: -0.0 and 0.0 are the same angle
        _, first, counts = np.unique(rounded, return_index=True, return_counts=True)
        if np.any(counts > 1):
            twice = rounded == rounded[first[np.argmax(counts > 1)]]
            i, j = np.flatnonzero(twice)[:2]
            raise InputError(
                f"tilt angle {angles[j]:g} at tilts {i + 1} and {j + 1}; expected each tilt angle "
                "once (one image per tilt)",
                src,
                "tilt angle",
            )
        set_ = object.__setattr__
        set_(self, "tilt_angles_deg", angles)
        set_(self, "accumulated_dose", _as_array(self.accumulated_dose, n, "dose", src, fill=0.0))
        if np.any(self.accumulated_dose < 0):
            raise InputError("negative dose; expected accumulated e/A^2 >= 0", src, "dose")
        if self.defocus_u_um is not None:
            du = _as_array(self.defocus_u_um, n, "defocus", src)
            dv = du.copy() if self.defocus_v_um is None else _as_array(self.defocus_v_um, n, "defocus V", src)
            for arr, label in ((du, "defocus"), (dv, "defocus V")):
                if np.any(np.abs(arr) > MAX_PLAUSIBLE_DEFOCUS_UM):
                    raise InputError(
                        f"defocus {np.max(np.abs(arr)):g} um is implausible (> {MAX_PLAUSIBLE_DEFOCUS_UM:g});"
                        " expected micrometres (was it given in Angstrom or nm?)",
                        src,
                        label,
                    )
            set_(self, "defocus_u_um", du)
            set_(self, "defocus_v_um", dv)
        elif self.defocus_v_um is not None:
            raise InputError("defocus V given without defocus U", src, "defocus")
        set_(
            self, "astigmatism_angle_deg", _as_array(self.astigmatism_angle_deg, n, "astigmatism angle", src, fill=0.0)
        )
        set_(self, "phase_shift_deg", _as_array(self.phase_shift_deg, n, "phase shift", src, fill=0.0))
        set_(self, "excluded", _as_array(self.excluded, n, "excluded", src, fill=False, dtype=bool))
        set_(self, "x_tilt_deg", _as_array(self.x_tilt_deg, n, "x tilt", src, fill=0.0))
        if np.any(np.abs(self.x_tilt_deg) > 45):
            raise InputError(
                f"x tilt {np.max(np.abs(self.x_tilt_deg)):g} degrees; expected a small correction (|x tilt| <= 45)",
                src,
                "x tilt",
            )
        if self.hand is not None:
            try:
                set_(self, "hand", check_hand(self.hand))
            except (TypeError, ValueError, OverflowError):
                try:
                    shown = f"{float(self.hand):g}"
                except (TypeError, ValueError):
                    shown = repr(self.hand)
                raise InputError(f"{shown}; expected the defocus handedness +1, -1 or 0", src, "hand") from None
        for name in ("voltage_kv", "cs_mm", "amplitude_contrast", "tilt_axis_angle_deg"):
            try:
                v = float(getattr(self, name))
            except (TypeError, ValueError):
                raise InputError(f"{getattr(self, name)!r}; expected a number", src, name) from None
            if not np.isfinite(v) or (v < 0 and name != "tilt_axis_angle_deg"):
                expected = "a finite number" if name == "tilt_axis_angle_deg" else "a finite non-negative number"
                raise InputError(f"{name} = {v!r}; expected {expected}", src, name)
            set_(self, name, v)
        if not self.voltage_kv > 0:
            raise InputError(f"voltage_kv = {self.voltage_kv!r}; expected kV > 0", src, "voltage_kv")
        if self.pixel_size_angstrom is not None:
            try:
                px = float(self.pixel_size_angstrom)
            except (TypeError, ValueError):
                raise InputError(f"{self.pixel_size_angstrom!r}; expected Angstrom > 0", src, "pixel size") from None
            if not (np.isfinite(px) and px > 0):
                raise InputError(f"pixel size {px!r}; expected a finite number of Angstrom > 0", src, "pixel size")
            set_(self, "pixel_size_angstrom", px)
        if not 0 <= self.amplitude_contrast < 1:
            raise InputError(f"amplitude contrast {self.amplitude_contrast} outside [0, 1)", src, "amplitude_contrast")

    # ------------------------------------------------------------------ derived values
    @property
    def n_tilts(self) -> int:
        return int(self.tilt_angles_deg.size)

    @property
    def has_defocus(self) -> bool:
        return self.defocus_u_um is not None

    @property
    def defocus_um(self) -> np.ndarray:
        """Mean of defocus U and V per tilt (micrometres, + = underfocus)."""
        du, dv = self.defocus_u_um, self.defocus_v_um
        if du is None or dv is None:  # both or neither (__post_init__)
            raise InputError("tilt metadata hold no defocus; give --defocus", self.source, "defocus")
        return 0.5 * (du + dv)

    @property
    def has_x_tilt(self) -> bool:
        """True if any tilt has a non-zero x-tilt (the slices then depend on ky)."""
        return bool(np.any(self.x_tilt_deg != 0))

    def included(self) -> "TiltSeries":
        """A copy without the excluded tilts."""
        keep = ~self.excluded
        per_tilt = {
            k: getattr(self, k)[keep]
            for k in (
                "tilt_angles_deg",
                "accumulated_dose",
                "astigmatism_angle_deg",
                "phase_shift_deg",
                "excluded",
                "x_tilt_deg",
            )
        }
        du, dv = self.defocus_u_um, self.defocus_v_um
        if du is not None and dv is not None:  # both or neither (__post_init__)
            per_tilt["defocus_u_um"] = du[keep]
            per_tilt["defocus_v_um"] = dv[keep]
        return replace(self, **per_tilt)

    # ------------------------------------------------------------------ JSON
    _JSON_ARRAYS = (
        "tilt_angles_deg",
        "accumulated_dose",
        "defocus_u_um",
        "defocus_v_um",
        "astigmatism_angle_deg",
        "phase_shift_deg",
    )

    def to_json(self) -> dict[str, Any]:
        """The per-tilt values and optics as a JSON-ready dict (:meth:`from_json` inverts it;
        ``hand``, ``name``, ``source`` and ``extra`` are not part of it)."""

        def arr(a):
            return None if a is None else [float(v) for v in np.asarray(a, float)]

        d: dict[str, Any] = {k: arr(getattr(self, k)) for k in self._JSON_ARRAYS}
        d["excluded"] = [bool(v) for v in np.asarray(self.excluded, bool)]
        d["x_tilt_deg"] = arr(self.x_tilt_deg)
        d.update(
            voltage_kv=float(self.voltage_kv),
            cs_mm=float(self.cs_mm),
            amplitude_contrast=float(self.amplitude_contrast),
            pixel_size_angstrom=None if self.pixel_size_angstrom is None else float(self.pixel_size_angstrom),
        )
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any], source=None) -> "TiltSeries":
        """A tilt series from :meth:`to_json`'s dict (e.g. a job file's ``"tilt_series"``)."""
        if not isinstance(data, dict):
            raise InputError(f"{data!r}; expected an object", source, "tilt_series")
        keys = cls._JSON_ARRAYS + (
            "excluded",
            "x_tilt_deg",
            "voltage_kv",
            "cs_mm",
            "amplitude_contrast",
            "pixel_size_angstrom",
        )
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise InputError(f"unknown field(s) {', '.join(unknown)}", source, "tilt_series")
        try:
            return cls(**{k: data[k] for k in keys if data.get(k) is not None}, source=source)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"malformed tilt series ({exc})", source, "tilt_series") from None

    def with_(self, **changes) -> "TiltSeries":
        """``dataclasses.replace`` with validation (e.g. ``ts.with_(hand=-1)``)."""
        return replace(self, **changes)
