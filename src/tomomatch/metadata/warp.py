"""Warp / WarpTools tilt-series XML (``<TiltSeries>``) reader."""
from __future__ import annotations

import numpy as np
from lxml import etree

from ..conventions import hand_from_warp, warp_tilt_angles_to_internal
from ..errors import InputError
from ..tiltseries import TiltSeries
from ._common import check_tilt_angles, require_file

__all__ = ["read_warp_xml"]


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
    if d not in (n, 1):
        raise InputError(f"Depth {d} but {n} tilts; expected Depth = number of tilts (or 1)", path, tag)
    sums = np.zeros(d)
    counts = np.zeros(d, dtype=int)
    for node in el.findall("Node"):
        try:
            z = int(node.get("Z", "0"))
            v = float(node.get("Value"))
        except (TypeError, ValueError):
            raise InputError(f"node {etree.tostring(node).decode().strip()!r}; expected numeric Z and Value",
                             path, tag) from None
        if not 0 <= z < d or not np.isfinite(v):
            raise InputError(f"node Z={z} Value={v}; expected 0 <= Z < {d} and a finite value", path, tag)
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


def read_warp_xml(path) -> TiltSeries:
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
    * ``<AxisAngle>`` (mean) -> ``tilt_axis_angle_deg``; ``LevelAngleX/Y`` kept in ``extra``.
    """
    p = require_file(path, "Warp XML")
    try:
        root = etree.parse(str(p), etree.XMLParser(resolve_entities=False, no_network=True,
                                                   huge_tree=True)).getroot()
    except (etree.XMLSyntaxError, OSError) as exc:
        raise InputError(f"not a readable XML file ({exc})", p) from None
    if root.tag != "TiltSeries":
        raise InputError(f"root element <{root.tag}>; expected a Warp <TiltSeries> XML", p)
    warp_angles = _list(root, "Angles", p, None, required=True)
    n = warp_angles.size
    angles = check_tilt_angles(warp_tilt_angles_to_internal(warp_angles) + 0.0, p, None, "Angles")
    dose = _list(root, "Dose", p, n, required=False)
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
    inverted_attr = root.get("AreAnglesInverted", "False").strip().lower()
    if inverted_attr not in ("true", "false"):
        raise InputError(f"AreAnglesInverted={inverted_attr!r}; expected True or False", p, "AreAnglesInverted")
    extra = {"are_angles_inverted": inverted_attr == "true", "warp_angles_deg": warp_angles}
    for attr in ("LevelAngleX", "LevelAngleY"):
        if root.get(attr) is not None:
            try:
                extra[attr] = float(root.get(attr))
            except ValueError:
                raise InputError(f"{attr}={root.get(attr)!r} is not a number", p, attr) from None
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
        voltage_kv=_param(params, "Voltage", p, 300.0),
        cs_mm=_param(params, "Cs", p, 2.7),
        amplitude_contrast=_param(params, "Amplitude", p, 0.07),
        pixel_size_angstrom=_param(params, "PixelSize", p),
        hand=hand_from_warp(inverted_attr == "true"),
        tilt_axis_angle_deg=0.0 if axis is None else float(np.mean(axis)),
        name=p.stem,
        source=str(p),
        extra=extra,
    )
