"""Contrast transfer function and dose (exposure) filter, as pure torch functions.

Frequencies are in 1/Angstrom; defocus in micrometres, positive = underfocus; astigmatism
angle in degrees, measured from the x axis of the image to defocus U; phase shift in
degrees. Everything broadcasts, so one call evaluates many tilts or particles at once
(shape the per-tilt arguments as ``(n_tilts, 1, 1)`` against a ``(ny, nx)`` grid).
"""

from __future__ import annotations

import math

import torch

from .conventions import ANGSTROM_PER_MICROMETRE, electron_wavelength_angstrom

__all__ = ["ctf_phase", "ctf", "dose_filter", "frequency_grid_2d", "CRITICAL_EXPOSURE"]


def _t(x, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def ctf_phase(
    kx: torch.Tensor,
    ky: torch.Tensor,
    defocus_u_um,
    defocus_v_um=None,
    astigmatism_angle_deg=0.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    phase_shift_deg=0.0,
) -> torch.Tensor:
    """Aberration phase chi(k) in radians (without the amplitude-contrast term).

    ``chi = pi * lambda * df(alpha) * k^2 - pi/2 * Cs * lambda^3 * k^4 + phase_shift`` where
    ``df(alpha) = (dU + dV)/2 + (dU - dV)/2 * cos(2 (alpha - astig_angle))``.
    """
    lam = electron_wavelength_angstrom(voltage_kv)
    du = _t(defocus_u_um, kx) * ANGSTROM_PER_MICROMETRE
    dv = du if defocus_v_um is None else _t(defocus_v_um, kx) * ANGSTROM_PER_MICROMETRE
    k2 = kx * kx + ky * ky
    ang = torch.atan2(ky, kx)
    astig = _t(astigmatism_angle_deg, kx) * (math.pi / 180.0)
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2.0 * (ang - astig))
    cs = cs_mm * 1e7
    return math.pi * lam * df * k2 - 0.5 * math.pi * cs * lam**3 * k2 * k2 + _t(phase_shift_deg, kx) * (math.pi / 180.0)


def ctf(
    kx: torch.Tensor,
    ky: torch.Tensor,
    defocus_u_um,
    defocus_v_um=None,
    astigmatism_angle_deg=0.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_shift_deg=0.0,
) -> torch.Tensor:
    """CTF value: ``-(sqrt(1 - A^2) sin chi + A cos chi)``.

    Sign: the leading minus makes protein (positive potential) appear dark in an underfocused
    image, i.e. ``ctf(k -> 0) = -A``. Templates in tomomatch are positive-density maps, and
    tomograms have dark protein, so multiplying a template's transform by this CTF gives the
    contrast seen in the tomogram. Use ``abs()`` for phase-flipped data.
    """
    chi = ctf_phase(kx, ky, defocus_u_um, defocus_v_um, astigmatism_angle_deg, voltage_kv, cs_mm, phase_shift_deg)
    a = float(amplitude_contrast)
    return -(math.sqrt(1.0 - a * a) * torch.sin(chi) + a * torch.cos(chi))


# Grant & Grigorieff (2015) critical exposure: Ne(k) = a * k^b + c (k in 1/A, Ne in e/A^2),
# fitted at 300 kV; scaled by 0.8 at 200 kV as cisTEM and Warp do.
CRITICAL_EXPOSURE = (0.245, -1.665, 2.81)


def dose_filter(k: torch.Tensor, accumulated_dose, voltage_kv: float = 300.0) -> torch.Tensor:
    """Exposure filter ``exp(-D / (2 Ne(k)))`` for accumulated dose ``D`` (e/A^2)."""
    a, b, c = CRITICAL_EXPOSURE
    kk = torch.clamp(k, min=1e-6)
    ne = a * kk**b + c
    if voltage_kv < 250:
        ne = ne * 0.8
    return torch.exp(-_t(accumulated_dose, k) / (2.0 * ne))


def frequency_grid_2d(
    shape_yx: tuple[int, int], pixel_size_angstrom: float, rfft: bool = True, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ky, kx)`` grids in 1/Angstrom for an image of ``shape_yx`` (rfft half-plane by default)."""
    ny, nx = shape_yx
    fy = torch.fft.fftfreq(ny, d=pixel_size_angstrom, device=device, dtype=dtype)
    fx = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(nx, d=pixel_size_angstrom, device=device, dtype=dtype)
    ky, kx = torch.meshgrid(fy, fx, indexing="ij")
    return ky, kx
