"""Masks for template matching: spheres and ellipsoids with an optional soft Gaussian edge.

Arrays are ``[z, y, x]``; centres and radii are given as ``(x, y, z)`` in voxels; the default
centre is index ``n // 2`` on every axis (:func:`tomomatch.conventions.centre_index`), the
rotation centre of a template box.

Edge profile: with ``e`` the distance (voxels) of a point outside the surface, measured along
the ray from the centre, the mask is ``1`` for ``e <= 0`` and ``exp(-e^2 / (2 sigma^2))``
outside, set to 0 beyond ``e > 3 sigma`` (value there ``exp(-4.5) = 0.011``, as in
pytom-match-pick). So the value at ``radius + sigma`` is ``exp(-1/2) = 0.607``. ``sigma = 0``
gives a hard (binary) mask. For an ellipsoid ``e = d * (1 - 1/r_hat)`` with ``d`` the
distance to the centre and ``r_hat = sqrt(sum((x_i / a_i)^2))`` the normalised radius; along a
principal axis that is exactly the distance past the semi-axis.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .conventions import centre_index
from .errors import InputError

__all__ = ["spherical_mask", "ellipsoid_mask", "is_spherical", "EDGE_CUTOFF_SIGMA"]

#: The soft edge is truncated to 0 beyond this many sigma outside the surface.
EDGE_CUTOFF_SIGMA = 3.0


def _shape(box_size) -> tuple[int, int, int]:
    shape: tuple[Any, ...]  # not yet checked: int() below
    if np.isscalar(box_size):
        shape = (box_size,) * 3
    else:
        shape = tuple(box_size)
    try:
        out = tuple(int(b) for b in shape)
    except (TypeError, ValueError):
        raise InputError(f"{box_size!r} is not an integer box size", field="box size") from None
    if len(out) != 3 or any(b < 1 or b != s for b, s in zip(out, shape)):
        raise InputError(f"{box_size!r} must be a positive integer (or 3 of them, z y x)", field="box size")
    from .resources import check_fits

    # float64 distance grid and weights plus the float32 result, before any of them is allocated
    check_fits(
        MASK_BYTES_PER_VOXEL * float(out[0]) * float(out[1]) * float(out[2]),
        f"a mask of {' x '.join(map(str, out))} voxels",
        None,
        "--box-size",
        "expected the template's box, a few hundred voxels at most",
    )
    return out


#: memory per voxel while a mask is made (float64 distances and weights, the float32 result)
MASK_BYTES_PER_VOXEL = 28


def _offsets(shape, centre):
    """Coordinate offsets from the centre as ``(dx, dy, dz)`` arrays broadcast to shape."""
    if centre is None:
        c_xyz = [centre_index(n) for n in shape[::-1]]
    else:
        c_xyz = [float(c) for c in centre]
        if len(c_xyz) != 3:
            raise InputError(f"{centre!r} must be 3 numbers (x, y, z)", field="mask centre")
    nz, ny, nx = shape
    dz = (np.arange(nz, dtype=np.float64) - c_xyz[2])[:, None, None]
    dy = (np.arange(ny, dtype=np.float64) - c_xyz[1])[None, :, None]
    dx = (np.arange(nx, dtype=np.float64) - c_xyz[0])[None, None, :]
    return dx, dy, dz


def _profile(excess: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0 or not math.isfinite(sigma):
        raise InputError(f"{sigma} must be >= 0 voxels", field="sigma")
    if sigma == 0:
        return (excess <= 0).astype(np.float32)
    e = np.clip(excess, 0.0, None)
    m = np.exp(-0.5 * (e / sigma) ** 2)
    m[e > EDGE_CUTOFF_SIGMA * sigma] = 0.0
    return m.astype(np.float32)


def spherical_mask(box_size, radius_voxels: float, sigma_voxels: float = 0.0, centre=None) -> np.ndarray:
    """Sphere of ``radius_voxels`` with a Gaussian edge of ``sigma_voxels`` outside it.

    Parameters
    ----------
    box_size
        Cube edge in voxels, or ``(z, y, x)``.
    radius_voxels
        Radius of the flat (value 1) part, voxels.
    sigma_voxels
        Gaussian fall-off outside the radius, voxels (0: hard edge). See the module docstring.
    centre
        ``(x, y, z)`` voxel indices; default ``n // 2`` on each axis.

    Returns
    -------
    numpy.ndarray
        float32 ``[z, y, x]`` in ``[0, 1]``.
    """
    shape = _shape(box_size)
    r0 = float(radius_voxels)
    if not r0 > 0:
        raise InputError(f"{radius_voxels} must be > 0 voxels", field="radius")
    dx, dy, dz = _offsets(shape, centre)
    d = np.sqrt(dx * dx + dy * dy + dz * dz)
    return _profile(d - r0, float(sigma_voxels))


def ellipsoid_mask(box_size, radii_xyz_voxels, sigma_voxels: float = 0.0, centre=None) -> np.ndarray:
    """Axis-aligned ellipsoid with semi-axes ``(rx, ry, rz)`` voxels and a Gaussian edge.

    The soft edge is measured along the ray from the centre (see the module docstring), so
    the value is ``exp(-1/2)`` at ``(rx + sigma, 0, 0)`` and likewise on the other axes. With
    three equal radii this is :func:`spherical_mask`.

    Returns
    -------
    numpy.ndarray
        float32 ``[z, y, x]`` in ``[0, 1]``.
    """
    shape = _shape(box_size)
    radii = np.asarray(radii_xyz_voxels, dtype=float).ravel()
    if radii.size != 3 or not np.all(radii > 0):
        raise InputError(f"{radii_xyz_voxels!r} must be 3 radii > 0 (x, y, z voxels)", field="radii")
    dx, dy, dz = _offsets(shape, centre)
    d = np.sqrt(dx * dx + dy * dy + dz * dz)
    rhat = np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.where(rhat > 0, d * (1.0 - 1.0 / np.where(rhat > 0, rhat, 1.0)), -1.0)
    return _profile(excess, float(sigma_voxels))


def is_spherical(mask: np.ndarray, atol: float = 1e-5) -> bool:
    """True if ``mask`` is invariant under every rotation about the box centre ``n // 2``.

    That holds when (1) the value depends only on the distance to the centre: all voxels at
    the same squared integer distance agree within ``atol`` (relative to the maximum), and
    (2) the mask is zero outside the largest centred sphere that fits in the box, so no
    rotation moves non-zero values across the box edge. The matching engine may then skip
    rotating the mask.
    """
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim != 3:
        return False
    scale = float(np.max(np.abs(m)))
    if scale == 0:
        return True
    tol = atol * scale
    dz, dy, dx = [np.arange(n) - centre_index(n) for n in m.shape]
    r2 = (dz[:, None, None] ** 2 + dy[None, :, None] ** 2 + dx[None, None, :] ** 2).ravel()
    vals = m.ravel()
    inscribed = min(min(centre_index(n), n - 1 - centre_index(n)) for n in m.shape)
    if np.any(np.abs(vals[r2 > inscribed**2]) > tol):
        return False
    order = np.argsort(r2, kind="stable")
    r2s, vs = r2[order], vals[order]
    starts = np.flatnonzero(np.r_[True, r2s[1:] != r2s[:-1]])
    vmax = np.maximum.reduceat(vs, starts)
    vmin = np.minimum.reduceat(vs, starts)
    return bool(np.all(vmax - vmin <= tol))
