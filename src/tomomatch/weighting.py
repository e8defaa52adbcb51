"""Fourier-space weights for the template: band pass, missing wedge, per-tilt CTF, whitening.

All weights live on the ``rfft`` grid of a real box of shape ``(nz, ny, nx)``, i.e. they have
shape ``(nz, ny, nx // 2 + 1)`` and multiply ``torch.fft.rfftn(box)``. Frequencies are
``torch.fft.fftfreq`` / ``rfftfreq`` with ``d = voxel size``, so they are in 1/Angstrom; the
axes are ``[z, y, x]`` like every array in tomomatch. Everything is built with torch on the
requested device, vectorised (no Python loop over voxels or over tilts), in float32.

Geometry (from :func:`tomomatch.conventions.tilt_frame`, IMOD/AreTomo/RELION 5)
    The tilt-``t`` image has horizontal axis ``u = (cos t, 0, sin t)``, vertical axis ``y``
    and beam ``b = (-sin t, 0, cos t)`` (with an x-tilt, the rows of RELION's
    ``Ry(t) Rx(a)``). By the projection-slice theorem its 2D transform at image frequency
    ``(k_u, k_v)`` is the 3D transform at ``k_u u + k_v v``: the central slice perpendicular
    to ``b``. A 3D frequency ``k`` therefore has in-slice coordinates ``k_u = u . k``,
    ``k_v = v . k`` (``kx cos t + kz sin t`` and ``ky`` without x-tilt) and distance to the
    slice ``k_w = b . k`` (``-kx sin t + kz cos t``). ``k`` lies in the slice of the tilt
    ``t* = atan(kz / kx)`` (:func:`tomomatch.conventions.tilt_of_slice_containing`); a tilt
    range ``[t_min, t_max]`` samples exactly the ``k`` with ``t*`` in that range.

Sign of the CTF
    The weight applied to the template is ``-ctf.ctf(...) = sqrt(1 - A^2) sin(chi) + A cos(chi)``,
    positive at low frequency, so weighting never inverts the template's contrast (templates are
    made with the tomogram's contrast, as in pytom-match-pick). ``ctf_mode="abs"`` gives
    ``|CTF|`` for phase-flipped tomograms; ``None`` leaves the CTF out.

See ``docs/weighting.md`` for the normalisation of the per-tilt ("fanned") wedge.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch

from . import ctf as _ctf
from .conventions import tilt_frame, tilt_of_slice_containing
from .errors import InputError

__all__ = [
    "frequency_grid_3d",
    "frequency_radius_3d",
    "bandpass",
    "tilt_of_frequency_deg",
    "binary_wedge",
    "per_tilt_wedge",
    "whitening_filter",
    "radial_profile_to_grid",
    "tilt_series_weight",
]

CtfMode = Literal["signed", "abs"] | None
Normalization = Literal["coverage", "sum"]

# bound on the number of elements of one (positions x slice-entries x ny) CTF block
_MAX_BLOCK = 1 << 24


# --------------------------------------------------------------------------- grids


def _rfft_shape(shape_zyx) -> tuple[int, int, int]:
    nz, ny, nx = (int(s) for s in shape_zyx)
    if min(nz, ny, nx) < 1:
        raise InputError(f"box shape {tuple(shape_zyx)}; expected three positive sizes", None, "shape")
    return nz, ny, nx // 2 + 1


def _check_voxel(voxel_size_angstrom) -> float:
    v = float(voxel_size_angstrom)
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"voxel size {voxel_size_angstrom!r} A; expected a positive number", None, "voxel size")
    return v


def _axes_1d(shape_zyx, voxel_size_angstrom: float, device, dtype=torch.float32):
    nz, ny, nx = (int(s) for s in shape_zyx)
    v = _check_voxel(voxel_size_angstrom)
    fz = torch.fft.fftfreq(nz, d=v, device=device, dtype=dtype)
    fy = torch.fft.fftfreq(ny, d=v, device=device, dtype=dtype)
    fx = torch.fft.rfftfreq(nx, d=v, device=device, dtype=dtype)
    return fz, fy, fx


def frequency_grid_3d(
    shape_zyx: Sequence[int], voxel_size_angstrom: float, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(kz, ky, kx)`` in 1/Angstrom on the rfft grid of a box of ``shape_zyx``.

    Each has shape ``(nz, ny, nx // 2 + 1)`` (expanded views: no memory beyond the 1D axes).
    """
    _rfft_shape(shape_zyx)
    fz, fy, fx = _axes_1d(shape_zyx, voxel_size_angstrom, device, dtype)
    kz, ky, kx = torch.meshgrid(fz, fy, fx, indexing="ij")
    return kz, ky, kx


def frequency_radius_3d(
    shape_zyx: Sequence[int], voxel_size_angstrom: float, device=None, dtype=torch.float32
) -> torch.Tensor:
    """``|k|`` in 1/Angstrom on the rfft grid, shape ``(nz, ny, nx // 2 + 1)``."""
    fz, fy, fx = _axes_1d(shape_zyx, voxel_size_angstrom, device, dtype)
    return torch.sqrt(fz[:, None, None] ** 2 + fy[None, :, None] ** 2 + fx[None, None, :] ** 2)


def _hermitian_planes(w: torch.Tensor, nx: int, combine: str = "mean") -> torch.Tensor:
    """Make the kx = 0 (and, for even nx, the Nyquist) planes Hermitian-consistent.

    On those planes the rfft stores both ``k`` and ``-k`` (Nyquist indices of even axes alias
    ``+-0.5``), so a real filter must take equal values at mirrored indices; the weights are
    replaced by the mean (or max, for 0/1 masks) of each pair. Acts on the last three axes.
    """
    nz, ny = w.shape[-3], w.shape[-2]
    iz = (-torch.arange(nz, device=w.device)) % nz
    iy = (-torch.arange(ny, device=w.device)) % ny
    planes = [0] + ([nx // 2] if nx % 2 == 0 and nx > 1 else [])
    w = w.clone()
    for ix in planes:
        p = w[..., ix]
        m = p.index_select(-2, iz).index_select(-1, iy)
        w[..., ix] = 0.5 * (p + m) if combine == "mean" else torch.maximum(p, m)
    return w


# --------------------------------------------------------------------------- band pass


def _cosine_step(k: torch.Tensor, k0: float, width: float) -> torch.Tensor:
    """1 below ``k0 - width/2``, 0 above ``k0 + width/2``, raised cosine between (0.5 at k0)."""
    if width <= 0:
        return (k <= k0).to(k.dtype)
    x = torch.clamp((k - (k0 - 0.5 * width)) / width, 0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * x))


def bandpass(
    shape_zyx: Sequence[int],
    voxel_size_angstrom: float,
    low_pass_angstrom: float | None = None,
    high_pass_angstrom: float | None = None,
    device=None,
    soft_edge_voxels: float = 2.0,
) -> torch.Tensor:
    """Radial band pass on the rfft grid.

    Parameters
    ----------
    shape_zyx, voxel_size_angstrom
        Box shape ``(nz, ny, nx)`` and voxel size (Angstrom).
    low_pass_angstrom
        Keep resolutions coarser than this (Angstrom); None = no low pass.
    high_pass_angstrom
        Remove resolutions coarser than this (Angstrom); None = no high pass.
    soft_edge_voxels
        Width of the raised-cosine edges in Fourier voxels of the smallest box axis
        (``1 / (min(shape) * voxel)`` each); the weight is 0.5 exactly at each cut-off.
        0 gives hard edges.

    Returns
    -------
    torch.Tensor
        float32 ``(nz, ny, nx // 2 + 1)`` in ``[0, 1]``.
    """
    v = _check_voxel(voxel_size_angstrom)
    for name, val in (("low pass", low_pass_angstrom), ("high pass", high_pass_angstrom)):
        if val is not None and not (math.isfinite(float(val)) and float(val) > 0):
            raise InputError(f"{name} {val!r} A; expected a positive resolution in Angstrom", None, name)
    if (
        low_pass_angstrom is not None
        and high_pass_angstrom is not None
        and float(low_pass_angstrom) >= float(high_pass_angstrom)
    ):
        raise InputError(
            f"low pass {low_pass_angstrom} A must be a finer resolution (smaller number)"
            f" than high pass {high_pass_angstrom} A",
            None,
            "low pass",
        )
    soft = float(soft_edge_voxels)
    if not (math.isfinite(soft) and soft >= 0):
        raise InputError(f"soft edge {soft_edge_voxels!r}; expected >= 0 voxels", None, "soft edge")
    k = frequency_radius_3d(shape_zyx, v, device)
    width = soft / (min(int(s) for s in shape_zyx) * v)
    w = torch.ones_like(k)
    if low_pass_angstrom is not None:
        w = w * _cosine_step(k, 1.0 / float(low_pass_angstrom), width)
    if high_pass_angstrom is not None:
        w = w * (1.0 - _cosine_step(k, 1.0 / float(high_pass_angstrom), width))
    return w


# --------------------------------------------------------------------------- binary wedge


def tilt_of_frequency_deg(kx, kz):
    """Tilt angle (degrees, in ``[-90, 90]``) whose central slice contains frequency ``(kx, ., kz)``.

    :func:`tomomatch.conventions.tilt_of_slice_containing`: ``t = atan(kz / kx)`` (numpy or torch).
    """
    return tilt_of_slice_containing(kx, kz)


def _tilt_range(tilt_angles_deg) -> tuple[float, float]:
    a = np.asarray(tilt_angles_deg, float).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise InputError("tilt angles must be finite and at least one", None, "tilt angle")
    return float(a.min()), float(a.max())


def binary_wedge(shape_zyx: Sequence[int], tilt_angles_deg, device=None, tolerance_deg: float = 1e-4) -> torch.Tensor:
    """0/1 weights: 1 where the tilt range samples the frequency, 0 in the missing wedge.

    Parameters
    ----------
    shape_zyx
        Box shape ``(nz, ny, nx)``. (The wedge is scale-free, so no voxel size is needed.)
    tilt_angles_deg
        All tilt angles, or just ``(min, max)``: only their extremes are used.
    tolerance_deg
        Frequencies within this angle outside the range still count as sampled.

    Returns
    -------
    torch.Tensor
        float32 ``(nz, ny, nx // 2 + 1)``; a frequency ``k`` is 1 iff the tilt
        ``t* = atan(kz / kx)`` whose slice contains it lies in ``[min, max]`` (see module
        docstring). The tilt axis ``ky`` (``kx = kz = 0``) is always 1. An x-tilt is not
        modelled here (it is a correction of a few degrees; :func:`per_tilt_wedge` has it).
    """
    tmin, tmax = _tilt_range(tilt_angles_deg)
    fz, fy, fx = _axes_1d(shape_zyx, 1.0, device, _geom_dtype(device or "cpu"))
    kx = fx[None, :]
    kz = fz[:, None]
    t = tilt_of_frequency_deg(kx.expand(kz.shape[0], -1), kz.expand(-1, kx.shape[1]))
    inside = (t >= tmin - tolerance_deg) & (t <= tmax + tolerance_deg)
    # kx = 0, kz != 0 is the 90-degree slice: +90 and -90 are the same plane
    on_z = (kx == 0) & (kz != 0)
    ninety = (tmax >= 90 - tolerance_deg) or (tmin <= -90 + tolerance_deg)
    inside = torch.where(on_z, torch.tensor(ninety, device=inside.device), inside)
    inside = inside | ((kx == 0) & (kz == 0))
    ny = int(shape_zyx[1])
    w = inside.to(torch.float32)[:, None, :].expand(-1, ny, -1)
    return _hermitian_planes(w, int(shape_zyx[2]), combine="max").contiguous()


# --------------------------------------------------------------------------- per-tilt wedge


def _geom_dtype(device) -> torch.dtype:
    """float64 for the small geometry arrays, except on devices without it (Apple MPS)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _as_per_tilt(values, n_tilts: int, name: str, device) -> torch.Tensor:
    """Per-tilt values as a tensor of shape ``(n_tilts,)`` or ``(P, n_tilts)``."""
    dt = _geom_dtype(device)
    if isinstance(values, torch.Tensor):
        a = values.detach().to(device=device, dtype=dt)
    else:
        a = torch.as_tensor(np.asarray(values, dtype=float), dtype=dt).to(device)
    if a.ndim == 0:
        a = a.expand(n_tilts)
    if a.ndim not in (1, 2) or a.shape[-1] != n_tilts:
        raise InputError(f"{name}: shape {tuple(a.shape)}; expected ({n_tilts},) or (positions, {n_tilts})", None, name)
    if not torch.all(torch.isfinite(a)):
        raise InputError(f"{name} contains NaN or Inf", None, name)
    return a


def per_tilt_wedge(
    shape_zyx: Sequence[int],
    voxel_size_angstrom: float,
    tilt_angles_deg,
    *,
    defocus_u_um=None,
    defocus_v_um=None,
    astigmatism_angle_deg=None,
    phase_shift_deg=None,
    accumulated_dose=None,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    ctf_mode: CtfMode = "signed",
    dose_weighting: bool = True,
    cos_weighting: bool = True,
    slice_thickness_voxels: float = 1.0,
    normalization: Normalization = "coverage",
    x_tilt_deg=None,
    device=None,
) -> torch.Tensor:
    """Per-tilt ("fanned") 3D weights: a sum of central slices, each with its tilt's CTF.

    For tilt ``i`` the slice weight at frequency ``k`` is the linear-interpolation (tent) profile
    ``s_i(k) = max(0, 1 - |k_w| / delta_i)`` of the distance ``k_w = b_i . k`` to the slice
    (``-kx sin t + kz cos t`` without x-tilt; ``b_i`` is the beam of
    :func:`tomomatch.conventions.tilt_frame`), with
    ``delta_i = slice_thickness_voxels * |(b_x / (nx a), b_y / (ny a), b_z / (nz a))|``
    (one Fourier voxel for ``slice_thickness_voxels = 1`` in a cubic box). Its value is

    ``c_i(k) = CTF_i(k_u, k_v) * dose_i(|k_2D|) * b_z``

    with ``CTF_i = -ctf.ctf(k_u, k_v, defocus_u[i], defocus_v[i], astigmatism[i], ...)`` (``abs``
    for ``ctf_mode="abs"``, 1 for ``None`` or no defocus), the Grant-Grigorieff exposure filter
    at the tilt's accumulated dose (``dose_weighting``) and the beam's z component ``b_z``
    (``cos t`` without x-tilt; ``cos_weighting``), all evaluated at the in-slice frequency
    ``(k_u, k_v) = (u . k, v . k)`` (``(kx cos t + kz sin t, ky)`` without x-tilt); the
    astigmatism angle is measured in the image from the ``u`` axis.

    Normalisation (``normalization``):

    ``"coverage"`` (default)
        ``W = sum_i s_i c_i / max(1, sum_i s_i)``. Where slices overlap (low frequency,
        ``sum s_i >= 1``) this is the slice-weighted *average* of the per-tilt values, like the
        ramp filter of weighted back-projection, so the weights do not grow with the number of
        overlapping tilts; where slices are separated (beyond the Crowther frequency) it keeps
        the fan of single slices with gaps between them; it is 0 where no tilt samples. A
        ramp-filtered WBP tomogram has this transfer function (see docs/weighting.md).
    ``"sum"``
        ``W = sum_i s_i c_i`` scaled so ``max |W| = 1`` (like pytom-match-pick without its ramp;
        the transfer of *unfiltered* back-projection).

    Parameters
    ----------
    shape_zyx, voxel_size_angstrom
        Box shape ``(nz, ny, nx)`` and voxel size (Angstrom).
    tilt_angles_deg
        ``(n_tilts,)`` tilt angles (degrees).
    defocus_u_um, defocus_v_um
        Per-tilt defocus (micrometres, + = underfocus) *at the box centre*, shape ``(n_tilts,)``
        or ``(n_positions, n_tilts)`` (then one weight volume per position is returned).
        ``defocus_v_um=None`` means no astigmatism. ``defocus_u_um=None``: no CTF.
    astigmatism_angle_deg, phase_shift_deg
        Per-tilt (or per position and tilt) values in degrees; default 0.
    accumulated_dose
        ``(n_tilts,)`` dose before each tilt (e/A^2); None = no dose weighting.
    voltage_kv, cs_mm, amplitude_contrast
        Microscope parameters.
    ctf_mode
        ``"signed"``, ``"abs"`` (phase-flipped tomograms) or ``None``.
    dose_weighting, cos_weighting
        Switch the exposure filter and the ``cos(tilt)`` factor.
    slice_thickness_voxels
        Half-width of the tent profile across each slice in Fourier voxels (> 0).
    normalization
        ``"coverage"`` or ``"sum"`` (above).
    x_tilt_deg
        ``(n_tilts,)`` x-tilts (RELION ``rlnTomoXTilt``) or None for 0; a non-zero x-tilt turns
        the beam out of the x-z plane, so the slices then depend on ``ky``.
    device
        torch device for the computation and the result.

    Returns
    -------
    torch.Tensor
        float32 ``(nz, ny, nx // 2 + 1)``, or ``(n_positions, nz, ny, nx // 2 + 1)`` when the
        per-tilt CTF arguments have a position dimension.
    """
    nz, ny, nxh = _rfft_shape(shape_zyx)
    nx = int(shape_zyx[2])
    a = _check_voxel(voxel_size_angstrom)
    if normalization not in ("coverage", "sum"):
        raise InputError(f"normalization {normalization!r}; expected 'coverage' or 'sum'", None, "normalization")
    if ctf_mode not in ("signed", "abs", None):
        raise InputError(f"ctf mode {ctf_mode!r}; expected 'signed', 'abs' or None", None, "ctf mode")
    thick = float(slice_thickness_voxels)
    if not (math.isfinite(thick) and thick > 0):
        raise InputError(f"slice thickness {slice_thickness_voxels!r}; expected > 0 voxels", None, "slice thickness")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    tilts = torch.as_tensor(
        tilt_angles_deg.detach().cpu().numpy()
        if isinstance(tilt_angles_deg, torch.Tensor)
        else np.asarray(tilt_angles_deg, float),
        dtype=_geom_dtype(dev),
    ).to(dev)
    if tilts.ndim != 1 or tilts.numel() == 0 or not torch.all(torch.isfinite(tilts)):
        raise InputError("tilt angles must be a 1D list of at least one finite angle", None, "tilt angles")
    n_t = tilts.numel()
    f32 = torch.float32

    # ---- slice geometry from the per-tilt frames (conventions.tilt_frame): rows u, v, beam
    if x_tilt_deg is None:
        x_tilts = np.zeros(n_t)
    else:
        x_tilts = np.broadcast_to(
            np.asarray(
                x_tilt_deg.detach().cpu().numpy() if isinstance(x_tilt_deg, torch.Tensor) else x_tilt_deg, float
            ),
            (n_t,),
        )
        if not np.all(np.isfinite(x_tilts)):
            raise InputError("x tilt contains NaN or Inf", None, "x tilt")
    frame = torch.as_tensor(tilt_frame(tilts.cpu().numpy(), x_tilts), dtype=_geom_dtype(dev)).to(dev)
    u_ax, v_ax, beam = frame[:, 0, :], frame[:, 1, :], frame[:, 2, :]  # (n_t, 3) as (x, y, z)
    fz, fy, fx = _axes_1d(shape_zyx, a, dev, _geom_dtype(dev))
    # half-width of the tent: slice_thickness_voxels Fourier voxels along the beam
    delta = thick * torch.sqrt(
        (beam[:, 0] / (nx * a)) ** 2 + (beam[:, 1] / (ny * a)) ** 2 + (beam[:, 2] / (nz * a)) ** 2
    )  # (n_t,)
    if not np.any(x_tilts):
        # beams in the x-z plane: a slice's extent does not depend on ky, so find the entries
        # in the (kz, kx) plane and repeat them along ky
        kw = beam[:, 0, None, None] * fx[None, None, :] + beam[:, 2, None, None] * fz[None, :, None]
        s = torch.clamp(1.0 - kw.abs() / delta[:, None, None], min=0.0)  # (n_t, nz, nxh)
        it, iz, ix = torch.nonzero(s > 0, as_tuple=True)
        s_l = s[it, iz, ix][:, None].expand(-1, ny)
        ku = (u_ax[it, 0] * fx[ix] + u_ax[it, 2] * fz[iz])[:, None].expand(-1, ny)
        kv = fy[None, :].expand(it.numel(), -1)
        iy = torch.arange(ny, device=dev)[None, :].expand(it.numel(), -1)
        it, iz, ix = (i[:, None].expand(-1, ny) for i in (it, iz, ix))
        it, iz, iy, ix, s_l, ku, kv = (x.reshape(-1) for x in (it, iz, iy, ix, s_l, ku, kv))
    else:
        kw = (
            beam[:, 0, None, None, None] * fx[None, None, None, :]
            + beam[:, 1, None, None, None] * fy[None, None, :, None]
            + beam[:, 2, None, None, None] * fz[None, :, None, None]
        )
        s = torch.clamp(1.0 - kw.abs() / delta[:, None, None, None], min=0.0)  # (n_t, nz, ny, nxh)
        it, iz, iy, ix = torch.nonzero(s > 0, as_tuple=True)
        s_l = s[it, iz, iy, ix]
        ku = u_ax[it, 0] * fx[ix] + u_ax[it, 1] * fy[iy] + u_ax[it, 2] * fz[iz]
        kv = v_ax[it, 0] * fx[ix] + v_ax[it, 1] * fy[iy] + v_ax[it, 2] * fz[iz]
    del kw, s
    flat = (iz * ny + iy) * nxh + ix  # index into the (nz * ny * nxh) grid
    coverage = torch.zeros(nz * ny * nxh, dtype=s_l.dtype, device=dev).index_add_(0, flat, s_l)
    ku, kv = ku.to(f32), kv.to(f32)

    # ---- per-entry factors that do not depend on the position: slice weight, dose, cos
    base = s_l.to(f32)
    if cos_weighting:  # the beam's z component: cos(t) without x-tilt
        base = base * beam[it, 2].to(f32)
    if dose_weighting and accumulated_dose is not None:
        dose = _as_per_tilt(accumulated_dose, n_t, "accumulated dose", dev)
        if dose.ndim != 1:
            raise InputError("accumulated dose must have one value per tilt", None, "accumulated dose")
        if torch.any(dose < 0):
            raise InputError("accumulated dose must be >= 0", None, "accumulated dose")
        k2d = torch.sqrt(ku * ku + kv * kv)
        base = base * _ctf.dose_filter(k2d, dose.to(f32)[it], voltage_kv)
    base = base.contiguous()  # (M,)

    # ---- CTF, possibly per position
    use_ctf = ctf_mode is not None and defocus_u_um is not None
    batched = False
    if use_ctf:
        du = _as_per_tilt(defocus_u_um, n_t, "defocus U", dev)
        dv = du if defocus_v_um is None else _as_per_tilt(defocus_v_um, n_t, "defocus V", dev)
        ang = _as_per_tilt(
            0.0 if astigmatism_angle_deg is None else astigmatism_angle_deg, n_t, "astigmatism angle", dev
        )
        ps = _as_per_tilt(0.0 if phase_shift_deg is None else phase_shift_deg, n_t, "phase shift", dev)
        batched = any(x.ndim == 2 for x in (du, dv, ang, ps))
        try:
            params = torch.broadcast_tensors(*(x if x.ndim == 2 else x[None] for x in (du, dv, ang, ps)))
        except RuntimeError:
            raise InputError("per-position CTF arrays have different numbers of positions", None, "defocus") from None
        du, dv, ang, ps = (p[:, it].to(f32) for p in params)  # (P, M)
        n_pos = du.shape[0]
    else:
        n_pos = 1

    M = base.shape[0]
    out = torch.zeros((n_pos, nz * ny * nxh), dtype=f32, device=dev)
    chunk = max(1, _MAX_BLOCK // max(1, M))
    for p0 in range(0, n_pos, chunk):
        p1 = min(n_pos, p0 + chunk)
        if use_ctf:
            c = -_ctf.ctf(
                ku[None], kv[None], du[p0:p1], dv[p0:p1], ang[p0:p1], voltage_kv, cs_mm, amplitude_contrast, ps[p0:p1]
            )  # (p, M)
            if ctf_mode == "abs":
                c = c.abs()
            vals = c * base[None]
        else:
            vals = base[None]
        out[p0:p1].index_add_(1, flat, vals.to(f32))
    w = out.view(n_pos, nz, ny, nxh)
    w = _hermitian_planes(w, nx)
    if normalization == "coverage":
        w = w / torch.clamp(coverage, min=1.0).to(f32).view(1, nz, ny, nxh)
    else:
        peak = w.abs().amax(dim=(1, 2, 3), keepdim=True)
        w = w / torch.clamp(peak, min=torch.finfo(f32).tiny)
    w = w.contiguous()
    return w if batched else w[0]


# --------------------------------------------------------------------------- whitening


def radial_profile_to_grid(
    profile: torch.Tensor,
    profile_spacing_inv_angstrom: float,
    shape_zyx: Sequence[int],
    voxel_size_angstrom: float,
    device=None,
) -> torch.Tensor:
    """Sample a radial profile (bin ``i`` at ``|k| = i * spacing``) onto an rfft grid.

    Linear interpolation in ``|k|``; beyond the last bin the last value is held.
    """
    prof = torch.as_tensor(profile, dtype=torch.float32, device=device)
    k = frequency_radius_3d(shape_zyx, voxel_size_angstrom, device=prof.device)
    x = torch.clamp(k / float(profile_spacing_inv_angstrom), 0, prof.numel() - 1)
    i0 = torch.clamp(torch.floor(x).long(), max=prof.numel() - 1)
    i1 = torch.clamp(i0 + 1, max=prof.numel() - 1)
    f = x - i0.to(x.dtype)
    return prof[i0] * (1 - f) + prof[i1] * f


def whitening_filter(
    tomogram: torch.Tensor,
    voxel_size_angstrom: float,
    template_shape_zyx: Sequence[int],
    *,
    tilt_angles_deg=None,
    patch_size: int | None = None,
    max_patches: int = 512,
    reject_percentile: float | None = 90.0,
) -> torch.Tensor:
    """Radial ``1/sqrt(power spectrum)`` of a tomogram, sampled onto the template's rfft grid.

    The tomogram is cut into cubic patches (``patch_size``, default ``max(64, template box)``
    capped by the tomogram's smallest axis; 50 % overlap; at most ``max_patches``, evenly
    strided), each mean-subtracted and Hann-windowed. If there are >= 10 patches those with a
    variance above ``reject_percentile`` (gold, carbon, edges) are dropped. The power is
    averaged in shells of one Fourier voxel (only over frequencies the tilt range samples when
    ``tilt_angles_deg`` is given, so the empty missing wedge does not bias it), smoothed with a
    [1, 2, 1] kernel, and turned into ``1 / sqrt(PSD)`` with the DC term 0, normalised to max 1.

    Returns
    -------
    torch.Tensor
        float32 ``(nz, ny, nx // 2 + 1)`` of the template box, on the tomogram's device.
    """
    vol = torch.as_tensor(tomogram)
    if vol.ndim != 3:
        raise InputError(f"tomogram must be 3D, got shape {tuple(vol.shape)}", None, "tomogram")
    v = _check_voxel(voxel_size_angstrom)
    dev = vol.device
    tmpl = [int(s) for s in template_shape_zyx]
    P = int(patch_size) if patch_size is not None else max(64, max(tmpl))
    P = min(P, min(vol.shape))
    if P < 8:
        raise InputError(f"tomogram {tuple(vol.shape)} too small for a whitening filter", None, "tomogram")
    step = max(1, P // 2)
    starts = [list(range(0, n - P + 1, step)) or [0] for n in vol.shape]
    corners = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, 3)
    if len(corners) > max_patches:
        corners = corners[np.linspace(0, len(corners) - 1, max_patches).round().astype(int)]

    win1 = torch.hann_window(P + 2, periodic=False, dtype=torch.float32, device=dev)[1:-1]
    win = win1[:, None, None] * win1[None, :, None] * win1[None, None, :]
    fz, fy, fx = _axes_1d((P, P, P), 1.0 / P, dev, torch.float32)  # integer frequency indices
    rho = torch.sqrt(fz[:, None, None] ** 2 + fy[None, :, None] ** 2 + fx[None, None, :] ** 2)
    n_bins = P // 2 + 1
    shell = torch.round(rho).long()
    use = shell < n_bins
    if tilt_angles_deg is not None:
        use = use & (binary_wedge((P, P, P), tilt_angles_deg, device=dev) > 0)
    use[0, 0, 0] = False
    shell_idx = shell[use]
    # rfft half: interior kx planes stand for two Fourier voxels each
    mult = torch.full((P // 2 + 1,), 2.0, device=dev)
    mult[0] = 1.0
    if P % 2 == 0:
        mult[-1] = 1.0
    m_use = mult[None, None, :].expand(P, P, -1)[use]
    counts = torch.bincount(shell_idx, weights=m_use, minlength=n_bins).to(torch.float32)

    profile_parts: list[torch.Tensor] = []
    variance_parts: list[torch.Tensor] = []
    batch = max(1, (1 << 24) // (P**3))
    for b0 in range(0, len(corners), batch):
        cs = corners[b0 : b0 + batch]
        patches = torch.stack([vol[z : z + P, y : y + P, x : x + P] for z, y, x in cs]).to(torch.float32)
        patches = patches - patches.mean(dim=(1, 2, 3), keepdim=True)
        variance_parts.append(patches.var(dim=(1, 2, 3)))
        spec = torch.fft.rfftn(patches * win, dim=(1, 2, 3)).abs() ** 2
        vals = spec[:, use] * m_use[None]
        prof = torch.zeros((len(cs), n_bins), dtype=torch.float32, device=dev)
        prof.index_add_(1, shell_idx, vals)
        profile_parts.append(prof)
    profiles = torch.cat(profile_parts)
    variances = torch.cat(variance_parts)
    if reject_percentile is not None and len(profiles) >= 10:
        thr = torch.quantile(variances, float(reject_percentile) / 100.0)
        keep = variances <= thr
        profiles = profiles[keep]
    psd = profiles.mean(0) / torch.clamp(counts, min=1.0)
    valid = counts > 0
    valid[0] = False
    if int(valid.sum()) < 2:
        raise InputError("too few Fourier shells to estimate a whitening filter", None, "tomogram")
    # fill empty shells by interpolation, then smooth
    idx = torch.arange(n_bins, device=dev, dtype=torch.float32)
    vi = idx[valid].cpu().numpy()
    psd_np = np.interp(idx.cpu().numpy(), vi, psd[valid].cpu().numpy())
    psd_np = np.convolve(np.pad(psd_np, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    psd = torch.as_tensor(psd_np, dtype=torch.float32, device=dev)
    w = 1.0 / torch.sqrt(torch.clamp(psd, min=torch.finfo(torch.float32).tiny))
    w[0] = 0.0
    w = w / torch.clamp(w[1:].max(), min=torch.finfo(torch.float32).tiny)
    grid = radial_profile_to_grid(w, 1.0 / (P * v), tmpl, v, device=dev)
    grid[0, 0, 0] = 0.0
    return grid / torch.clamp(grid.max(), min=torch.finfo(torch.float32).tiny)


# --------------------------------------------------------------------------- convenience


def tilt_series_weight(
    tilt_series,
    shape_zyx: Sequence[int],
    voxel_size_angstrom: float,
    *,
    defocus_offset_um=None,
    per_tilt: bool = True,
    ctf_mode: CtfMode = "signed",
    dose_weighting: bool = True,
    cos_weighting: bool = True,
    low_pass_angstrom: float | None = None,
    high_pass_angstrom: float | None = None,
    whitening: torch.Tensor | None = None,
    slice_thickness_voxels: float = 1.0,
    normalization: Normalization = "coverage",
    device=None,
) -> torch.Tensor:
    """The template weight for one tile: wedge (per-tilt or binary) x band pass x whitening.

    Parameters
    ----------
    tilt_series
        :class:`tomomatch.tiltseries.TiltSeries`; excluded tilts are left out.
    shape_zyx, voxel_size_angstrom
        Box (tile) shape and tomogram voxel size.
    defocus_offset_um
        Defocus change of every tilt at the tile centre, micrometres (+ = more underfocus),
        e.g. ``conventions.defocus_offset_angstrom(x, z, tilts, hand) / 1e4``; shape
        ``(n_tilts,)`` over *all* tilts of ``tilt_series`` (excluded ones included), or
        ``(n_positions, n_tilts)`` for one weight per position. Added to defocus U and V.
    per_tilt
        True: :func:`per_tilt_wedge`. False: :func:`binary_wedge` times (if there is defocus
        and ``ctf_mode``) the isotropic 3D CTF of the tilt nearest 0 degrees.
    ctf_mode
        ``"signed"``, ``"abs"`` or None; forced to None when the series has no defocus.
    low_pass_angstrom, high_pass_angstrom
        Band pass (:func:`bandpass`).
    whitening
        Precomputed weights on this grid (:func:`whitening_filter`), or None.

    Returns
    -------
    torch.Tensor
        float32 ``(nz, ny, nx // 2 + 1)`` (or with a leading position axis).
    """
    ts = tilt_series
    keep = ~np.asarray(ts.excluded, bool)
    if not keep.any():
        raise InputError("all tilts are excluded", ts.source, "excluded")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    tilts = ts.tilt_angles_deg[keep]
    du = dv = None
    if ts.has_defocus and ctf_mode is not None:
        du = np.asarray(ts.defocus_u_um, float)
        dv = np.asarray(ts.defocus_v_um, float)
        if defocus_offset_um is not None:
            off = np.asarray(
                defocus_offset_um.cpu() if isinstance(defocus_offset_um, torch.Tensor) else defocus_offset_um, float
            )
            if off.shape[-1] != ts.n_tilts or off.ndim not in (1, 2):
                raise InputError(
                    f"defocus offsets: shape {off.shape}; expected ({ts.n_tilts},) or (positions, {ts.n_tilts})",
                    ts.source,
                    "defocus offset",
                )
            du = du + off
            dv = dv + off
        du = du[..., keep]
        dv = dv[..., keep]
    if per_tilt:
        w = per_tilt_wedge(
            shape_zyx,
            voxel_size_angstrom,
            tilts,
            defocus_u_um=du,
            defocus_v_um=dv,
            astigmatism_angle_deg=ts.astigmatism_angle_deg[keep],
            phase_shift_deg=ts.phase_shift_deg[keep],
            accumulated_dose=ts.accumulated_dose[keep],
            voltage_kv=ts.voltage_kv,
            cs_mm=ts.cs_mm,
            amplitude_contrast=ts.amplitude_contrast,
            ctf_mode=ctf_mode if du is not None else None,
            dose_weighting=dose_weighting,
            cos_weighting=cos_weighting,
            slice_thickness_voxels=slice_thickness_voxels,
            normalization=normalization,
            x_tilt_deg=ts.x_tilt_deg[keep] if ts.has_x_tilt else None,
            device=dev,
        )
    else:
        w = binary_wedge(shape_zyx, tilts, device=dev)
        if du is not None:
            assert dv is not None  # set together with du
            i0 = int(np.argmin(np.abs(tilts)))
            df = 0.5 * (du[..., i0] + dv[..., i0])  # scalar or (P,)
            k = frequency_radius_3d(shape_zyx, voxel_size_angstrom, dev)
            df_t = torch.as_tensor(np.asarray(df, float), dtype=torch.float32, device=dev)
            if df_t.ndim == 1:
                df_t = df_t[:, None, None, None]
            c = -_ctf.ctf(
                k,
                torch.zeros_like(k),
                df_t,
                None,
                0.0,
                ts.voltage_kv,
                ts.cs_mm,
                ts.amplitude_contrast,
                float(ts.phase_shift_deg[keep][i0]),
            )
            w = w * (c.abs() if ctf_mode == "abs" else c)
    w = w * bandpass(shape_zyx, voxel_size_angstrom, low_pass_angstrom, high_pass_angstrom, device=dev)
    if whitening is not None:
        w = w * torch.as_tensor(whitening, dtype=torch.float32, device=dev)
    return w.to(torch.float32).contiguous()
