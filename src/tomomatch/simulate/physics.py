"""Numerical building blocks of the simulator: Fourier-slice projection, tilt schemes,
interaction constant, shot noise, Fourier binning and weighted back-projection.

Geometry is :mod:`tomomatch.conventions` (IMOD/AreTomo/RELION 5): tilt axis y, the tilt's
frame ``F = conventions.tilt_frame(t)`` with rows ``u = (cos t, 0, sin t)``, ``v = y`` and the
beam ``(-sin t, 0, cos t)``; a point projects to ``x' = x cos t + z sin t``. With
``Rt = F^T`` (image axes and beam as columns), a particle with pose ``R`` at ``p`` has density
``template(R^T (r - p))``, so the 2D transform of its projection at image frequency
``(ku, kv)`` is the template's 3D transform at ``R^T Rt (ku, kv, 0)`` (times the phase of
the projected centre). The order matters: ``Rt R^T`` would tilt about the particle's own axis.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft
import torch
import torch.nn.functional as F

from ..conventions import centre_index, electron_wavelength_angstrom, projected_x

__all__ = [
    "interaction_constant",
    "tilt_scheme",
    "FourierProjector",
    "poisson_counts",
    "fourier_bin_2d",
    "ramp_filter_1d",
    "weighted_back_projection",
]


def interaction_constant(voltage_kv: float) -> float:
    """Relativistic interaction constant sigma_e in rad / (V * Angstrom).

    ``sigma = 2 pi / (lambda V) * (m0 c^2 + e V) / (2 m0 c^2 + e V)``: 6.526e-4 at 300 kV,
    7.288e-4 at 200 kV.
    """
    lam = electron_wavelength_angstrom(voltage_kv)
    v = float(voltage_kv) * 1e3
    mc2 = 510998.95  # electron rest energy in eV
    return 2 * math.pi / (lam * v) * (mc2 + v) / (2 * mc2 + v)


def tilt_scheme(
    tilt_min_deg: float,
    tilt_max_deg: float,
    tilt_step_deg: float,
    order: str = "dose-symmetric",
    group_size: int = 2,
    start_deg: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Tilt angles (sorted ascending) and their acquisition index.

    Parameters
    ----------
    tilt_min_deg, tilt_max_deg, tilt_step_deg
        Range and increment; the angles are ``start + k * step`` inside the range.
    order
        ``"dose-symmetric"`` (Hagen scheme: start tilt, then groups of ``group_size`` tilts
        going positive, then negative, alternating outward), ``"sequential"`` (min to max)
        or ``"bidirectional"`` (start to max, then start-step down to min).
    group_size
        Group size of the dose-symmetric scheme.

    Returns
    -------
    angles_deg (n,), acquisition_index (n,) where ``acquisition_index[i]`` is when tilt
    ``angles_deg[i]`` was taken (0 = first).
    """
    step = float(tilt_step_deg)
    kmin = int(math.ceil((tilt_min_deg - start_deg) / step - 1e-9))
    kmax = int(math.floor((tilt_max_deg - start_deg) / step + 1e-9))
    ks = np.arange(kmin, kmax + 1)
    angles = start_deg + ks * step
    seq: list[int | np.integer]
    if order == "sequential":
        seq = list(ks)
    elif order == "bidirectional":
        seq = [k for k in ks if k >= 0] + [k for k in ks[::-1] if k < 0]
    elif order == "dose-symmetric":
        pos = [k for k in ks if k > 0]
        neg = [k for k in ks[::-1] if k < 0]
        seq = [0] if 0 in ks else []
        g = max(1, int(group_size))
        while pos or neg:
            seq += pos[:g]
            pos = pos[g:]
            seq += neg[:g]
            neg = neg[g:]
    else:
        raise ValueError(f"unknown tilt order {order!r}")
    acq = np.empty(ks.size, dtype=int)
    for when, k in enumerate(seq):
        acq[k - kmin] = when
    return angles.astype(float), acq


class FourierProjector:
    """Projections of a rotated density by central slices of its padded 3D transform.

    The density is divided by the trilinear-interpolation apodisation
    ``sinc^2(x/P) sinc^2(y/P) sinc^2(z/P)`` (gridding correction), zero-padded to ``P^3``
    and transformed once; each projection is a trilinearly interpolated central slice
    (``torch.nn.functional.grid_sample``) on the rfft half-plane of a ``P x P`` image.

    Parameters
    ----------
    density
        ``[z, y, x]`` cube, centre ``n // 2``.
    pad_size
        ``P >= n`` (default ``2 n``), even.
    """

    def __init__(self, density: np.ndarray, pad_size: int | None = None):
        d = np.asarray(density, dtype=np.float64)
        n = d.shape[0]
        if d.shape != (n, n, n):
            raise ValueError(f"density must be a cube, got {d.shape}")
        p = 2 * n if pad_size is None else int(pad_size)
        p += p % 2
        if p < n:
            raise ValueError("pad_size must be >= the box size")
        self.box_size = n
        self.pad_size = p
        padded = np.zeros((p, p, p))
        o = centre_index(p) - centre_index(n)
        padded[o : o + n, o : o + n, o : o + n] = d
        r = (np.arange(p) - centre_index(p)) / p
        apod = np.sinc(r) ** 2
        apod = np.maximum(apod, 1e-3)
        padded /= apod[:, None, None] * apod[None, :, None] * apod[None, None, :]
        ft = sfft.fftshift(sfft.fftn(sfft.ifftshift(padded), workers=-1))
        vol = np.stack([ft.real, ft.imag]).astype(np.float32)
        self._vol = torch.from_numpy(vol)[None]  # (1, 2, P, P, P) [z, y, x]

    def slices(self, matrices: np.ndarray, out_size: int | None = None) -> torch.Tensor:
        """Complex 2D transforms ``(m, Q, Q//2+1)`` of the projections for sampling matrices.

        ``matrices`` (m, 3, 3) map image frequency ``(ku, kv, 0)`` to template frequency;
        for a particle of pose ``R`` at tilt ``t`` that is ``R^T @ F(t)^T`` with ``F`` the
        tilt's frame (:func:`tomomatch.conventions.tilt_frame`; its transpose has the image axes
        and the beam as columns). The transforms have
        their origin at the template centre (index ``Q // 2`` of the image after fftshift).

        ``out_size`` ``Q`` (default ``P``; ``P`` must be a multiple of it): only the central
        ``Q x Q`` band of the ``P x P`` transform, i.e. the projection Fourier-cropped to a
        pixel ``P / Q`` times coarser. ``irfft2(., s=(Q, Q)) / (P/Q)^2`` is then the band-limited
        projection (sum over the beam in density voxels) sampled on the coarse pixel grid.
        """
        m = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        p = self.pad_size
        q = p if out_size is None else int(out_size)
        if p % q:
            raise ValueError(f"pad size {p} is not a multiple of out_size {q}")
        b = p // q
        kv, ku = np.meshgrid(np.fft.fftfreq(q, d=b), np.fft.rfftfreq(q, d=b), indexing="ij")  # cycles / voxel
        k2 = torch.from_numpy(np.stack([ku, kv], axis=-1).reshape(1, -1, 2))  # (1, Q*H, 2)
        # template frequency (x, y, z) = M @ (ku, kv, 0), as voxel index of the shifted transform,
        # normalised for grid_sample(align_corners=True): idx / (P - 1) * 2 - 1
        mt = torch.from_numpy(m[:, :, :2].transpose(0, 2, 1).copy())  # (m, 2, 3)
        idx = torch.matmul(k2, mt) * p + centre_index(p)  # (m, Q*H, 3)
        grid = (idx * (2.0 / (p - 1)) - 1.0).to(torch.float32).reshape(1, m.shape[0], q, q // 2 + 1, 3)
        out = F.grid_sample(self._vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[
            0
        ]  # (2, m, Q, H)
        return torch.complex(out[0], out[1])


def poisson_counts(intensity: np.ndarray, electrons_per_pixel, rng: np.random.Generator) -> np.ndarray:
    """Detected electrons per pixel: ``Poisson(intensity * electrons_per_pixel)`` (float32).

    ``intensity`` is the normalised image (1 = vacuum after attenuation); negative values are
    clipped to 0 before sampling.
    """
    lam = np.clip(np.asarray(intensity, dtype=np.float64), 0.0, None) * electrons_per_pixel
    return rng.poisson(lam).astype(np.float32)


def fourier_bin_2d(images: np.ndarray, out_shape_yx: tuple[int, int]) -> np.ndarray:
    """Bin images ``(..., NY, NX)`` to ``out_shape_yx`` by Fourier cropping (sum semantics).

    Index 0 stays index 0 (fine index ``b*j`` maps to coarse index ``j``). The result is scaled
    so that a constant ``c`` becomes ``c * (NY*NX)/(ny*nx)``: counts per binned pixel, which
    keeps Poisson statistics of white noise (mean and variance both scale by ``b^2``).
    """
    img = np.asarray(images, dtype=np.float32)
    ny, nx = (int(s) for s in out_shape_yx)
    NY, NX = img.shape[-2:]
    ft = sfft.rfft2(img, workers=-1)
    keep_pos = (ny + 1) // 2
    keep_neg = ny // 2
    rows = (
        np.concatenate([ft[..., :keep_pos, :], ft[..., NY - keep_neg :, :]], axis=-2)
        if keep_neg
        else ft[..., :keep_pos, :]
    )
    cropped = rows[..., : nx // 2 + 1]
    out = sfft.irfft2(cropped, s=(ny, nx), workers=-1)
    # unnormalised forward over NY*NX, inverse divides by ny*nx: a constant gains (NY*NX)/(ny*nx)
    return np.ascontiguousarray(out, dtype=np.float32)


def ramp_filter_1d(n: int, rolloff_start: float = 0.9) -> np.ndarray:
    """R-weighting ``|k|`` (cycles/pixel, rfft layout, length ``n//2+1``) with a cosine roll-off
    from ``rolloff_start`` x Nyquist to zero at Nyquist."""
    k = np.fft.rfftfreq(n)
    w = np.abs(k).copy()
    kn = 0.5
    k0 = rolloff_start * kn
    sel = k > k0
    w[sel] *= 0.5 * (1 + np.cos(np.pi * (k[sel] - k0) / (kn - k0)))
    return w


def weighted_back_projection(
    projections: np.ndarray, tilt_angles_deg, shape_zyx: tuple[int, int, int], rolloff_start: float = 0.9
) -> np.ndarray:
    """Weighted back-projection with the tilt axis along y.

    Each projection ``(ny, nx)`` (same pixel as the tomogram voxel, centre ``n // 2``) is
    ramp-filtered along x (:func:`ramp_filter_1d`) and smeared back along the beam: voxel
    ``(x, y, z)`` (centred voxel units) takes the linear interpolation of row ``y`` at
    ``x' = x cos t + z sin t`` (:func:`tomomatch.conventions.projected_x`). The sum is
    scaled by ``pi / n_tilts`` (so a uniform 180-degree sampling reproduces the object).

    Returns
    -------
    float32 ``[z, y, x]`` volume.
    """
    proj = np.asarray(projections, dtype=np.float32)
    nt, pny, pnx = proj.shape
    nz, ny, nx = (int(s) for s in shape_zyx)
    if pny != ny:
        raise ValueError(f"projection height {pny} != tomogram y size {ny}")
    w = ramp_filter_1d(pnx, rolloff_start)
    filt = sfft.irfft(sfft.rfft(proj, axis=-1, workers=-1) * w, n=pnx, axis=-1, workers=-1).astype(np.float32)
    vol = torch.zeros((ny, nz, nx), dtype=torch.float32)
    xs = np.arange(nx, dtype=np.float64) - centre_index(nx)
    zs = np.arange(nz, dtype=np.float64) - centre_index(nz)
    cimg = centre_index(pnx)
    grid = torch.zeros((1, nz, nx, 2), dtype=torch.float32)
    for i, t in enumerate(np.asarray(tilt_angles_deg, dtype=float)):
        u = projected_x(xs[None, :], zs[:, None], t) + cimg  # (nz, nx) image pixel
        grid[0, :, :, 0] = torch.from_numpy((u / (pnx - 1) * 2.0 - 1.0).astype(np.float32))
        # rows y as channels: (1, ny, 1, nx_img) sampled at (u, 0) -> (ny, nz, nx); zero outside
        img = torch.from_numpy(filt[i])[None, :, None, :]
        vol += F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    vol *= math.pi / nt
    return np.ascontiguousarray(vol.numpy().transpose(1, 0, 2))
