"""Warp / WarpTools tilt-series XML (``<TiltSeries>``) reader."""

from __future__ import annotations

import numpy as np
from lxml import etree

from ..conventions import hand_from_warp, warp_level_angles, warp_tilt_angles_to_internal
from ..errors import InputError
from ..tiltseries import TiltSeries
from ._common import check_tilt_angles, library_errors, require_file
from .plausibility import (
    MISSING_DOSE_HINT,
    WARP_UM,
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

__all__ = ["read_warp_xml", "LEVEL_ANGLE_RULE", "MAX_LEVEL_ANGLE_DEG"]

#: what the reader does with Warp's sample levelling angles (recorded in ``extra["level_angles"]``)
LEVEL_ANGLE_RULE = (
    "Warp TiltSeries.cs: Euler(0, Angle + LevelAngleY, -AxisAngle) * RotateX(LevelAngleX) = "
    "Rz Ry(-(Angle + LevelAngleY)) Rx(LevelAngleX): tilt = -Angle - LevelAngleY, x tilt = LevelAngleX"
)
#: largest |LevelAngleX/Y| accepted (the x tilt must stay a small correction, TiltSeries' limit)
MAX_LEVEL_ANGLE_DEG = 45.0


def _list(root, tag: str, path, n: int | None, required: bool, kind=float):
    el = root.find(tag)
    if el is None or el.text is None or not el.text.strip():
        if required:
            raise InputError(f"no <{tag}> list; expected one value per tilt", path, tag)
        return None
    out = []
    for i, tok in enumerate(el.text.split(), start=1):
        if kind is bool:
            low = tok.strip().lower()
            if low not in ("true", "false"):
                raise InputError(f"entry {i}: {tok!r}; expected True or False", path, tag)
            out.append(low == "true")
            continue
        try:
            v = float(tok)
        except ValueError:
            raise InputError(f"entry {i}: {tok!r} is not a number", path, tag) from None
        if not np.isfinite(v):
            raise InputError(f"entry {i}: {tok!r} is not a finite number", path, tag)
        out.append(v)
    if n is not None and len(out) != n:
        raise InputError(f"{len(out)} entries but {n} tilt angles; expected one per tilt", path, tag)
    return np.array(out, dtype=bool if kind is bool else float)


def _grid_per_tilt(root, tag: str, path, n: int) -> np.ndarray | None:
    """Per-tilt values of a Warp ``Grid*`` element.

    ``Width x Height x Depth`` nodes with ``Z`` the tilt index. ``Depth == n``: one value per
    tilt, averaged over X/Y if the grid is spatially resolved. ``Depth == 1``: one value
    for every tilt. Missing grid: None.
    """
    el = root.find(tag)
    if el is None:
        return None
    try:
        w, h, d = (int(el.get(k, "1")) for k in ("Width", "Height", "Depth"))
    except ValueError:
        raise InputError("Width/Height/Depth are not integers", path, tag) from None
    if min(w, h, d) < 1:
        raise InputError(f"Width/Height/Depth {w}/{h}/{d}; expected positive integers", path, tag)
    if d not in (n, 1):
        raise InputError(f"Depth {d} but {n} tilts; expected Depth = number of tilts (or 1)", path, tag)
    sums = np.zeros(d)
    counts = np.zeros(d, dtype=int)
    for node in el.findall("Node"):
        try:
            z = int(node.get("Z", "0"))
            v = float(node.get("Value"))
        except (TypeError, ValueError):
            raise InputError(
                f"node {etree.tostring(node).decode().strip()!r}; expected numeric Z and Value", path, tag
            ) from None
        if not 0 <= z < d or not np.isfinite(v):
            raise InputError(f"node Z={z} Value={plain(v)}; expected 0 <= Z < {d} and a finite value", path, tag)
        sums[z] += v
        counts[z] += 1
    if np.any(counts == 0):
        raise InputError(f"no node for Z={int(np.flatnonzero(counts == 0)[0])}", path, tag)
    if np.any(counts != w * h):
        raise InputError(f"expected {w * h} nodes per Z (Width x Height)", path, tag)
    vals = sums / counts
    return np.full(n, vals[0]) if d == 1 else vals


def _ctf_params(root) -> dict[str, str]:
    ctf = root.find("CTF")
    if ctf is None:
        return {}
    return {p.get("Name"): p.get("Value") for p in ctf.findall("Param")}


def _param(params, name, path, default=None):
    if name not in params or params[name] in (None, ""):
        return default
    try:
        v = float(params[name])
    except ValueError:
        raise InputError(f"CTF Param {name} = {params[name]!r} is not a number", path, f"CTF/{name}") from None
    if not np.isfinite(v):
        raise InputError(f"CTF Param {name} = {params[name]!r} is not finite", path, f"CTF/{name}")
    return v


def read_warp_xml(
    path, *, allow_missing_dose: bool = False, allow_unusual_defocus: bool = False, allow_unusual_dose: bool = False
) -> TiltSeries:
    """Read a Warp/WarpTools tilt-series XML.

    * ``<Angles>`` are negated (Warp's sign is opposite to IMOD/RELION,
      :func:`tomomatch.conventions.warp_tilt_angles_to_internal`).
    * ``<Dose>`` is the accumulated dose; ``<UseTilt>`` False -> ``excluded``.
    * ``GridCTF`` -> per-tilt defocus (um). ``GridCTFDefocusDelta`` (delta) and
      ``GridCTFDefocusAngle`` give astigmatism as Warp exports it to RELION:
      ``U = D + delta/2``, ``V = D - delta/2``, angle in degrees. ``GridCTFPhase`` is in units
      of pi (x 180 -> degrees). A grid with Width x Height > 1 is averaged over its X/Y nodes
      per tilt (Z). A missing grid falls back to the ``<CTF>`` Param of the same name.
    * ``<CTF>`` Params ``Voltage``, ``Cs``, ``Amplitude``, ``PixelSize``.
    * ``AreAnglesInverted`` -> ``hand`` (:func:`tomomatch.conventions.hand_from_warp`).
    * ``<AxisAngle>`` (mean) -> ``tilt_axis_angle_deg``.
    * ``LevelAngleX/Y`` (``ts_autolevel``'s sample levelling, applied by Warp when it reconstructs)
      -> tilt ``= -Angle - LevelAngleY`` and ``x_tilt_deg = LevelAngleX``
      (:func:`tomomatch.conventions.warp_level_angles`), recorded in ``extra["level_angles"]``;
      the angles before levelling in ``extra["unleveled_tilt_angles_deg"]``.
    * ``extra["reconstruction_phase_flipped"]`` is True: Warp's tomogram reconstruction
      (``TiltSeries.ReconstructFull``) always phase-flips, so ``match`` defaults to ``--ctf abs``.

    Values are checked by :mod:`tomomatch.metadata.plausibility`: no ``<Dose>`` (or 0 for every
    tilt) is an error unless ``allow_missing_dose``; defocus of the used tilts must be 0.5-20 um
    (0.1 um with a phase shift) unless ``allow_unusual_defocus``; dose below 1000 e/A^2 unless
    ``allow_unusual_dose``.
    """
    p = require_file(path, "Warp XML")
    with library_errors(p, "XML file"):
        try:
            root = etree.parse(
                str(p), etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
            ).getroot()
        except (etree.XMLSyntaxError, OSError) as exc:
            raise InputError(f"not a readable XML file ({' '.join(str(exc).split())})", p) from None
    if root.tag != "TiltSeries":
        raise InputError(f"root element <{root.tag}>; expected a Warp <TiltSeries> XML", p)
    warp_angles = _list(root, "Angles", p, None, required=True)
    n = warp_angles.size
    angles = check_tilt_angles(warp_tilt_angles_to_internal(warp_angles) + 0.0, p, None, "Angles")
    dose = _list(root, "Dose", p, n, required=False)
    if dose is None:
        if not allow_missing_dose:
            raise InputError(
                f"no <Dose> list; expected the accumulated e/A^2 before each tilt; {MISSING_DOSE_HINT}", p, "Dose"
            )
    else:
        check_dose(dose, p, "Dose", labels=[f"entry {i + 1}" for i in range(n)], allow_unusual=allow_unusual_dose)
        require_dose_information(dose, p, "Dose", allow_missing_dose)
    use = _list(root, "UseTilt", p, n, required=False, kind=bool)
    axis = _list(root, "AxisAngle", p, n, required=False)
    params = _ctf_params(root)

    def per_tilt(grid_tag, param_name):
        vals = _grid_per_tilt(root, grid_tag, p, n)
        if vals is None:
            v = _param(params, param_name, p)
            vals = None if v is None else np.full(n, v)
        return vals

    defocus = per_tilt("GridCTF", "Defocus")
    delta = per_tilt("GridCTFDefocusDelta", "DefocusDelta")
    astig_angle = per_tilt("GridCTFDefocusAngle", "DefocusAngle")
    phase = per_tilt("GridCTFPhase", "PhaseShift")
    du = dv = None
    if defocus is not None:
        delta = np.zeros(n) if delta is None else delta
        du = defocus + 0.5 * delta
        dv = defocus - 0.5 * delta
        labels = [f"tilt {i + 1}" for i in range(n)]
        src = "GridCTF" if root.find("GridCTF") is not None else "CTF/Defocus"
        for values, field in ((defocus, src), (du, f"{src} + DefocusDelta/2"), (dv, f"{src} - DefocusDelta/2")):
            check_defocus(
                values,
                p,
                field,
                WARP_UM,
                labels=labels,
                phase_plate=has_phase_plate(phase),
                allow_unusual=allow_unusual_defocus,
                skip=None if use is None else ~use,
            )
    inverted_attr = root.get("AreAnglesInverted", "False").strip().lower()
    if inverted_attr not in ("true", "false"):
        raise InputError(f"AreAnglesInverted={inverted_attr!r}; expected True or False", p, "AreAnglesInverted")
    extra = {"are_angles_inverted": inverted_attr == "true", "warp_angles_deg": warp_angles}
    level = {}
    for attr in ("LevelAngleX", "LevelAngleY"):
        if root.get(attr) is not None:
            try:
                level[attr] = float(root.get(attr))
            except ValueError:
                raise InputError(f"{attr}={root.get(attr)!r} is not a number", p, attr) from None
            if not abs(level[attr]) <= MAX_LEVEL_ANGLE_DEG:
                raise InputError(
                    f"{attr}={root.get(attr)!r}; expected a finite sample levelling angle within "
                    f"+-{MAX_LEVEL_ANGLE_DEG:g} degrees",
                    p,
                    attr,
                )
            extra[attr] = level[attr]
    angles, x_tilt = warp_level_angles(angles, level.get("LevelAngleX", 0.0), level.get("LevelAngleY", 0.0))
    if level:
        angles = check_tilt_angles(angles, p, None, "Angles - LevelAngleY")
        extra["level_angles"] = {
            "LevelAngleX": level.get("LevelAngleX", 0.0),
            "LevelAngleY": level.get("LevelAngleY", 0.0),
            "x_tilt_deg": level.get("LevelAngleX", 0.0),
            "tilt_angle_offset_deg": -level.get("LevelAngleY", 0.0),
            "rule": LEVEL_ANGLE_RULE,
        }
        extra["unleveled_tilt_angles_deg"] = warp_tilt_angles_to_internal(warp_angles) + 0.0
    # Warp's TiltSeries.ReconstructFull phase-flips every tilt (no option turns it off)
    extra["reconstruction_phase_flipped"] = True
    extra["reconstruction_phase_flipped_by"] = "Warp/WarpTools reconstruction (TiltSeries.ReconstructFull)"
    pixel = _param(params, "PixelSize", p)
    if pixel is not None:
        pixel = check_pixel_size(pixel, p, "CTF/PixelSize")
    movies = root.find("MoviePath")
    if movies is not None and movies.text:
        extra["movie_paths"] = movies.text.split()
    return TiltSeries(
        tilt_angles_deg=angles,
        accumulated_dose=dose,
        defocus_u_um=du,
        defocus_v_um=dv,
        astigmatism_angle_deg=astig_angle,
        phase_shift_deg=None if phase is None else phase * 180.0,
        excluded=None if use is None else ~use,
        x_tilt_deg=x_tilt,
        voltage_kv=check_voltage(_param(params, "Voltage", p, 300.0), p, "CTF/Voltage"),
        cs_mm=check_cs(_param(params, "Cs", p, 2.7), p, "CTF/Cs"),
        amplitude_contrast=check_amplitude_contrast(_param(params, "Amplitude", p, 0.07), p, "CTF/Amplitude"),
        pixel_size_angstrom=pixel,
        hand=hand_from_warp(inverted_attr == "true"),
        tilt_axis_angle_deg=0.0 if axis is None else float(np.mean(axis)),
        name=p.stem,
        source=str(p),
        extra=extra,
    )
