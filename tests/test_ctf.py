import math

import numpy as np
import pytest
import torch

from tomomatch import ctf
from tomomatch.conventions import electron_wavelength_angstrom


def test_ctf_zero_frequency_is_minus_amplitude_contrast():
    k = torch.zeros(1)
    assert ctf.ctf(k, k, 3.0, amplitude_contrast=0.07).item() == pytest.approx(-0.07)


def test_first_zero_matches_analytic_position():
    # without Cs and amplitude contrast, first zero where pi*lambda*df*k^2 = pi
    lam = electron_wavelength_angstrom(300)
    df_um = 3.0
    k0 = 1.0 / math.sqrt(lam * df_um * 1e4)
    ks = torch.tensor([0.9 * k0, k0, 1.1 * k0], dtype=torch.float64)
    v = ctf.ctf(ks, torch.zeros_like(ks), df_um, cs_mm=0.0, amplitude_contrast=0.0)
    assert abs(v[1].item()) < 1e-9
    assert v[0].item() < 0 < v[2].item()  # -sin(chi) changes sign from - to + at chi = pi


def test_astigmatism_direction():
    # defocus U along the astigmatism angle (x here), V perpendicular
    kx = torch.tensor([0.05, 0.0], dtype=torch.float64)
    ky = torch.tensor([0.0, 0.05], dtype=torch.float64)
    chi = ctf.ctf_phase(kx, ky, 3.0, 2.0, 0.0, cs_mm=0.0)
    chi_u = ctf.ctf_phase(kx[:1], ky[:1], 3.0, cs_mm=0.0)
    chi_v = ctf.ctf_phase(ky[1:], kx[1:], 2.0, cs_mm=0.0)
    assert chi[0].item() == pytest.approx(chi_u.item())
    assert chi[1].item() == pytest.approx(chi_v.item())


def test_dose_filter_values():
    k = torch.tensor([0.1], dtype=torch.float64)
    ne = 0.245 * 0.1**-1.665 + 2.81
    assert ctf.dose_filter(k, 20.0).item() == pytest.approx(math.exp(-20 / (2 * ne)))
    assert ctf.dose_filter(k, 0.0).item() == pytest.approx(1.0)


def test_frequency_grid():
    ky, kx = ctf.frequency_grid_2d((4, 6), 2.0)
    assert kx.shape == (4, 4)
    assert np.allclose(kx[0].numpy(), [0, 1 / 12, 2 / 12, 3 / 12])
    assert np.allclose(ky[:, 0].numpy(), [0, 0.125, -0.25, -0.125])
