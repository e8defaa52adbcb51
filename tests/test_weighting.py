"""Tests for tomomatch.weighting against hand-computed values and independent computations."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from tomomatch import weighting
from tomomatch.conventions import electron_wavelength_angstrom
from tomomatch.errors import InputError
from tomomatch.shared_data import shared_data_dir
from tomomatch.tiltseries import TiltSeries


# --------------------------------------------------------------------------- helpers


def imod_axes(t_deg):
    """Columns: image x axis, y, beam of the tilt-t image, written from IMOD's/RELION 5's formula
    (``x' = x cos t + z sin t``, depth ``-x sin t + z cos t``), independently of tomomatch."""
    c, s = math.cos(math.radians(t_deg)), math.sin(math.radians(t_deg))
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


def imod_beam(t_deg):
    t = np.deg2rad(np.asarray(t_deg, float))
    return np.stack([-np.sin(t), np.zeros_like(t), np.cos(t)], -1)


def np_template_ctf(ku, ky, du_um, dv_um, astig_deg, voltage_kv=300.0, cs_mm=2.7, amp=0.07, phase_deg=0.0):
    """Independent numpy CTF with the template sign rule: sqrt(1-A^2) sin chi + A cos chi."""
    lam = electron_wavelength_angstrom(voltage_kv)
    k2 = ku**2 + ky**2
    ang = np.arctan2(ky, ku)
    df = 0.5 * (du_um + dv_um) * 1e4 + 0.5 * (du_um - dv_um) * 1e4 * np.cos(2 * (ang - np.deg2rad(astig_deg)))
    chi = np.pi * lam * df * k2 - 0.5 * np.pi * cs_mm * 1e7 * lam**3 * k2**2 + np.deg2rad(phase_deg)
    return np.sqrt(1 - amp**2) * np.sin(chi) + amp * np.cos(chi)


def np_dose(k, dose, a=0.245, b=-1.665, c=2.81):
    return np.exp(-dose / (2 * (a * np.maximum(k, 1e-6) ** b + c)))


def np_hermitian(w, nx, combine=np.add):
    """Independent numpy version of the kx = 0 / x-Nyquist plane symmetrisation."""
    w = np.array(w, dtype=float)
    nz, ny = w.shape[-3], w.shape[-2]
    for ix in [0] + ([nx // 2] if nx % 2 == 0 else []):
        p = w[..., ix].copy()
        m = p[..., (-np.arange(nz)) % nz, :][..., (-np.arange(ny)) % ny]
        w[..., ix] = 0.5 * (p + m) if combine is np.add else np.maximum(p, m)
    return w


def corr(x, y):
    x = x - x.mean()
    y = y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def rfilter(vol, w):
    return np.fft.irfftn(np.fft.rfftn(vol) * np.asarray(w), s=vol.shape, axes=(0, 1, 2))


def _rotate(vol, rot, inverse=False):
    """out(r_out) = vol(rot @ r_out) about the n//2 centre (rot acts on (x, y, z))."""
    n = vol.shape[0]
    perm = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    m = perm @ rot @ perm  # the same map on [z, y, x] indices
    if inverse:
        m = m.T
    c = np.full(3, n // 2)
    return ndimage.affine_transform(vol, m, offset=c - m @ c, order=1)


def reference_backprojection(vol, voxel, tilts, du, dv, astig, dose, ramp_step_deg=None):
    """Real-space model of a tomogram: project each tilt, apply its 2D CTF/dose/cos, back-project.

    The tilt-t projection samples the volume at ``x' u + y' y + w b`` (columns of
    ``imod_axes``) and sums over the depth ``w``; back-projection smears the filtered
    image along ``w`` and rotates it back. Optionally ramp-filtered (WBP).
    """
    n = vol.shape[0]
    ky, ku = np.meshgrid(np.fft.fftfreq(n, voxel), np.fft.fftfreq(n, voxel), indexing="ij")
    out = np.zeros_like(vol)
    for i, t in enumerate(tilts):
        rot = imod_axes(t)
        proj = _rotate(vol, rot).sum(axis=0)  # image [y, x'], the depth w is axis 0
        filt = np_template_ctf(ku, ky, du[i], dv[i], astig[i])
        filt = filt * np_dose(np.hypot(ku, ky), dose[i]) * np.cos(np.deg2rad(t))
        if ramp_step_deg is not None:
            filt = filt * np.minimum(1.0, np.abs(ku) * n * voxel * np.deg2rad(ramp_step_deg))
        img = np.fft.ifft2(np.fft.fft2(proj) * filt).real
        smear = np.broadcast_to(img[None], vol.shape).copy()
        out += _rotate(smear, rot, inverse=True)
    return out


@pytest.fixture(scope="module")
def blob_template():
    n = 32
    zz, yy, xx = np.mgrid[:n, :n, :n]
    vol = np.zeros((n, n, n))
    for x, y, z, s, amp in [
        (20, 14, 10, 2.0, 1.0),
        (10, 18, 22, 1.5, 0.8),
        (16, 10, 16, 2.5, 0.6),
        (22, 22, 20, 1.2, 1.0),
    ]:
        vol += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * s * s))
    return vol


# asymmetric tilt range, per-tilt defocus, strong astigmatism, dose-symmetric-ish doses
TILTS = np.arange(-12.0, 61.0, 4.0)
NT = len(TILTS)
DU = 6.0 + 0.1 * np.arange(NT)
DV = DU + 4.0
ASTIG = np.full(NT, 30.0)
DOSE = 3.0 * np.arange(NT)
VOXEL = 10.0


# --------------------------------------------------------------------------- grids, band pass


def test_frequency_grid_matches_numpy():
    kz, ky, kx = weighting.frequency_grid_3d((6, 5, 8), 2.0)
    assert kz.shape == ky.shape == kx.shape == (6, 5, 5)
    assert kz.dtype == torch.float32
    assert np.allclose(kz[:, 0, 0].numpy(), np.fft.fftfreq(6, 2.0))
    assert np.allclose(ky[0, :, 0].numpy(), np.fft.fftfreq(5, 2.0))
    assert np.allclose(kx[0, 0, :].numpy(), np.fft.rfftfreq(8, 2.0))
    r = weighting.frequency_radius_3d((6, 5, 8), 2.0)
    assert torch.allclose(r, torch.sqrt(kz**2 + ky**2 + kx**2))


def test_bandpass_values():
    # box 32, voxel 10: kx index 8 is 8/320 = 1/40 A^-1
    w = weighting.bandpass((32, 32, 32), 10.0, low_pass_angstrom=40.0)
    assert w.shape == (32, 32, 17)
    assert float(w[0, 0, 8]) == pytest.approx(0.5, abs=1e-6)
    assert float(w[0, 0, 6]) == pytest.approx(1.0)  # 2 voxels inside: beyond the 1-voxel half-edge
    assert float(w[0, 0, 10]) == pytest.approx(0.0, abs=1e-7)
    assert float(w[0, 0, 7]) > 0.5 > float(w[0, 0, 9])
    hp = weighting.bandpass((32, 32, 32), 10.0, high_pass_angstrom=80.0)  # 1/80 = index 4
    assert float(hp[0, 0, 4]) == pytest.approx(0.5, abs=1e-6)
    assert float(hp[0, 0, 0]) == 0.0 and float(hp[0, 0, 8]) == 1.0
    both = weighting.bandpass((32, 32, 32), 10.0, 40.0, 80.0)
    assert torch.allclose(both, w * hp)
    hard = weighting.bandpass((32, 32, 32), 10.0, 40.0, soft_edge_voxels=0)
    assert set(torch.unique(hard).tolist()) == {0.0, 1.0}
    assert torch.allclose(weighting.bandpass((8, 8, 8), 1.0), torch.ones(8, 8, 5))


def test_bandpass_errors():
    with pytest.raises(InputError):
        weighting.bandpass((8, 8, 8), 1.0, low_pass_angstrom=80, high_pass_angstrom=40)
    with pytest.raises(InputError):
        weighting.bandpass((8, 8, 8), 1.0, low_pass_angstrom=-5)
    with pytest.raises(InputError):
        weighting.bandpass((8, 8, 8), 0.0)


# --------------------------------------------------------------------------- binary wedge


def test_tilt_of_frequency_hand_cases():
    c60, s60 = math.cos(math.radians(60)), math.sin(math.radians(60))
    # (cos 60, 0, sin 60) lies in the +60 slice (IMOD: x' = x cos t + z sin t, so the image axis
    # is u(60) = (cos 60, 0, sin 60) and the beam b(60) = (-sin 60, 0, cos 60) is perpendicular)
    assert weighting.tilt_of_frequency_deg(c60, s60) == pytest.approx(60.0)
    assert weighting.tilt_of_frequency_deg(c60, -s60) == pytest.approx(-60.0)
    assert weighting.tilt_of_frequency_deg(-c60, -s60) == pytest.approx(60.0)  # -k, same slice
    c70, s70 = math.cos(math.radians(70)), math.sin(math.radians(70))
    assert weighting.tilt_of_frequency_deg(c70, s70) == pytest.approx(70.0)
    assert weighting.tilt_of_frequency_deg(1.0, 0.0) == pytest.approx(0.0)
    assert abs(weighting.tilt_of_frequency_deg(0.0, 1.0)) == pytest.approx(90.0)
    # the torch path agrees
    got = weighting.tilt_of_frequency_deg(torch.tensor([c60, -c60, c70]), torch.tensor([s60, -s60, s70]))
    assert np.allclose(got.numpy(), [60, 60, 70], atol=1e-4)
    # direct check with IMOD's beam: k . b(t) = 0
    for kx, kz in [(0.3, -0.7), (0.9, 0.2), (-0.4, -0.5)]:
        t = weighting.tilt_of_frequency_deg(kx, kz)
        b = imod_beam(t)
        assert abs(kx * b[0] + kz * b[2]) < 1e-12


def test_binary_wedge_hand_cases():
    w = weighting.binary_wedge((8, 8, 8), (-60, 60)).numpy()
    assert w.shape == (8, 8, 5)
    assert set(np.unique(w)) == {0.0, 1.0}
    assert np.all(w[0, :, :] == 1)  # kz = 0: the kx axis and the whole ky-kx plane (tilt 0)
    assert w[1, 0, 0] == 0 and w[3, 0, 0] == 0 and w[7, 0, 0] == 0  # the kz axis: missing
    assert np.all(w[:, :, 0][1:] == 0)  # the kz-ky plane needs a 90-degree tilt
    assert w[1, 0, 1] == 1  # (kx, kz) = (1, 1): tilt +45
    assert w[2, 0, 1] == 0  # (1, 2): tilt +63.4
    assert w[6, 0, 1] == 0  # (1, -2): tilt -63.4
    assert w[2, 3, 2] == 1  # ky does not matter
    # asymmetric range [-40, 55]: (kx, kz) = (1, 1) -> +45 inside, (1, -1) -> -45 outside
    a = weighting.binary_wedge((8, 8, 8), [-40.0, 10.0, 55.0]).numpy()
    assert a[1, 0, 1] == 1 and a[7, 0, 1] == 0
    # a 90-degree tilt covers the kz axis
    full = weighting.binary_wedge((8, 8, 8), (-90, 90)).numpy()
    assert np.all(full == 1)


@pytest.mark.parametrize("tmin,tmax", [(-60.0, 60.0), (-40.0, 55.0), (-57.0, 33.0)])
def test_binary_wedge_against_sign_change_search(tmin, tmax):
    """Independent: k is sampled iff k . b(t) changes sign (or vanishes) for some t in range."""
    n = 16
    w = weighting.binary_wedge((n, n, n), (tmin, tmax)).numpy()
    kz = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    t = np.deg2rad(np.linspace(tmin, tmax, 2001))
    b = imod_beam(np.rad2deg(t))  # (T, 3) beams
    f = kx[None] * b[:, 0, None, None] + kz[None] * b[:, 2, None, None]  # (T, nz, nxh)
    change = (np.sign(f[:-1]) * np.sign(f[1:]) <= 0).any(axis=0)
    axis = (kx == 0) & (kz == 0)
    expect = (change | axis).astype(float)
    # all but the x-Nyquist plane, which holds +-k_nyq and is the OR of the two (Hermitian)
    assert np.array_equal(w[:, 0, :-1], expect[:, :-1])
    mirror = expect[(-np.arange(n)) % n, -1]
    assert np.array_equal(w[:, 0, -1], np.maximum(expect[:, -1], mirror))
    assert np.all(w == w[:, :1, :])


# --------------------------------------------------------------------------- per-tilt wedge


def test_per_tilt_wedge_matches_real_space_backprojection(blob_template):
    """The required independent test: real-space project/CTF/back-project vs Fourier weights."""
    vol = blob_template
    n = vol.shape[0]
    ref = reference_backprojection(vol, VOXEL, TILTS, DU, DV, ASTIG, DOSE)
    lp = weighting.bandpass((n, n, n), VOXEL, low_pass_angstrom=2 * VOXEL / 0.6).numpy()
    ref_lp = rfilter(ref, lp)

    def score(tilts=TILTS, du=DU, dv=DV, astig=ASTIG, sign=1.0, **kw):
        w = weighting.per_tilt_wedge(
            (n, n, n),
            VOXEL,
            tilts,
            defocus_u_um=du,
            defocus_v_um=dv,
            astigmatism_angle_deg=astig,
            accumulated_dose=DOSE,
            normalization="sum",
            **kw,
        ).numpy()
        return corr(ref_lp, rfilter(vol, sign * w * lp))

    good = score()
    assert good > 0.95
    # sign / axis / convention errors give clearly lower correlations
    assert good - score(tilts=-TILTS) > 0.15  # tilt sign flipped
    assert good - score(tilts=90.0 - TILTS) > 0.15  # x and z swapped in the slice normal
    assert good - score(astig=-ASTIG) > 0.01  # astigmatism angle mirrored
    assert good - score(du=DV, dv=DU) > 0.01  # defocus U and V swapped
    assert score(sign=-1.0) < -0.95  # CTF sign (contrast) inverted
    assert good - score(ctf_mode=None) > 0.1  # the CTF matters at this defocus


def test_coverage_normalisation_matches_weighted_backprojection(blob_template):
    """With a ramp filter (WBP) the 'coverage' normalisation is the better model of the tomogram."""
    vol = blob_template
    n = vol.shape[0]
    ref = reference_backprojection(vol, VOXEL, TILTS, DU, DV, ASTIG, DOSE, ramp_step_deg=4.0)
    lp = weighting.bandpass((n, n, n), VOXEL, low_pass_angstrom=2 * VOXEL / 0.6).numpy()
    ref_lp = rfilter(ref, lp)
    kw = dict(defocus_u_um=DU, defocus_v_um=DV, astigmatism_angle_deg=ASTIG, accumulated_dose=DOSE)
    cov = weighting.per_tilt_wedge((n, n, n), VOXEL, TILTS, normalization="coverage", **kw).numpy()
    sm = weighting.per_tilt_wedge((n, n, n), VOXEL, TILTS, normalization="sum", **kw).numpy()
    c_cov = corr(ref_lp, rfilter(vol, cov * lp))
    c_sum = corr(ref_lp, rfilter(vol, sm * lp))
    assert c_cov > 0.88
    assert c_cov > c_sum + 0.03


def test_dc_and_tilt_axis_are_tilt_averages():
    """Where every slice overlaps (DC, the ky axis) 'coverage' gives the mean per-tilt value."""
    n, v = 24, 8.0
    tilts = np.array([-45.0, -20.0, 0.0, 15.0, 50.0])
    du = np.array([2.0, 2.5, 3.0, 3.5, 4.0])
    dose = np.array([12.0, 6.0, 0.0, 3.0, 9.0])
    w = weighting.per_tilt_wedge((n, n, n), v, tilts, defocus_u_um=du, accumulated_dose=dose).numpy()
    cos = np.cos(np.deg2rad(tilts))
    # DC: CTF(0) = A for every tilt, dose filter 1
    assert w[0, 0, 0] == pytest.approx(0.07 * cos.mean(), rel=1e-5)
    # the ky axis (kx = kz = 0) lies in every slice
    ky = np.fft.fftfreq(n, v)
    expect = np.mean(
        [
            np_template_ctf(0.0, ky, du[i], du[i], 0.0) * np_dose(np.abs(ky), dose[i]) * cos[i]
            for i in range(len(tilts))
        ],
        axis=0,
    )
    assert np.allclose(w[0, :, 0], expect, atol=2e-5)


def test_single_tilt_slice_values_and_modes():
    """One tilt at +30: the weights are the tent across its slice times its CTF at (k_u, k_y)."""
    n, v, t = 32, 6.0, 30.0
    kw = dict(defocus_u_um=[2.0], defocus_v_um=[3.0], astigmatism_angle_deg=[40.0], accumulated_dose=[20.0])
    w = weighting.per_tilt_wedge((n, n, n), v, [t], **kw).numpy()
    fz = np.fft.fftfreq(n, v)[:, None, None]
    fy = np.fft.fftfreq(n, v)[None, :, None]
    fx = np.fft.rfftfreq(n, v)[None, None, :]
    s, c = np.sin(np.deg2rad(t)), np.cos(np.deg2rad(t))
    ku = fx * c + fz * s  # k . u with u = (cos t, 0, sin t)
    kwd = -fx * s + fz * c  # k . b with b = (-sin t, 0, cos t)
    tent = np.maximum(0, 1 - np.abs(kwd) * n * v)
    tent = np.broadcast_to(tent, w.shape)
    ctf_v = np_template_ctf(ku, fy, 2.0, 3.0, 40.0)
    dose_cos = np_dose(np.hypot(ku, fy), 20.0) * c
    assert np.allclose(w, np_hermitian(tent * ctf_v * dose_cos, n), atol=1e-5)
    # away from the two Hermitian planes the values are exactly the formula
    assert np.allclose(w[..., 1:-1], (tent * ctf_v * dose_cos)[..., 1:-1], atol=1e-5)
    assert np.count_nonzero(tent) < 0.1 * tent.size  # a thin slice, not a volume
    w_abs = weighting.per_tilt_wedge((n, n, n), v, [t], ctf_mode="abs", **kw).numpy()
    assert np.allclose(w_abs, np_hermitian(tent * np.abs(ctf_v) * dose_cos, n), atol=1e-5)
    w_none = weighting.per_tilt_wedge((n, n, n), v, [t], ctf_mode=None, **kw).numpy()
    assert np.allclose(w_none, np_hermitian(tent * dose_cos, n), atol=1e-5)
    w_plain = weighting.per_tilt_wedge(
        (n, n, n), v, [t], ctf_mode=None, dose_weighting=False, cos_weighting=False, **kw
    ).numpy()
    assert np.allclose(w_plain, np_hermitian(tent, n), atol=1e-6)


def test_per_tilt_defocus_changes_only_its_slice():
    n, v = 32, 8.0
    tilts = [0.0, 40.0]
    w1 = weighting.per_tilt_wedge((n, n, n), v, tilts, defocus_u_um=[3.0, 3.0]).numpy()
    w2 = weighting.per_tilt_wedge((n, n, n), v, tilts, defocus_u_um=[3.0, 5.0]).numpy()
    fz = np.fft.fftfreq(n, v)[:, None, None]
    fx = np.fft.rfftfreq(n, v)[None, None, :]
    s40 = np.broadcast_to(
        np.maximum(0, 1 - np.abs(-fx * np.sin(np.deg2rad(40)) + fz * np.cos(np.deg2rad(40))) * n * v), w1.shape
    )
    s40 = np_hermitian(s40, n, combine=np.maximum)
    changed = np.abs(w1 - w2) > 1e-6
    assert changed.any()
    assert np.all(s40[changed] > 0)  # only voxels on the 40-degree slice change
    # the 40-degree slice away from the overlap follows the 5 um CTF
    ix = 10
    iz = int(round(ix * np.tan(np.deg2rad(40)))) % n  # k_w ~ 0 on the 40-degree slice
    kx, kz = ix / (n * v), np.fft.fftfreq(n, v)[iz]
    ku = kx * np.cos(np.deg2rad(40)) + kz * np.sin(np.deg2rad(40))
    tent = max(0.0, 1 - abs(-kx * np.sin(np.deg2rad(40)) + kz * np.cos(np.deg2rad(40))) * n * v)
    ky = np.fft.fftfreq(n, v)
    assert np.allclose(w2[iz, :, ix], tent * np_template_ctf(ku, ky, 5.0, 5.0, 0.0) * np.cos(np.deg2rad(40)), atol=1e-5)


def test_batch_positions_equal_single_calls():
    n, v = 16, 8.0
    tilts = np.array([-30.0, 0.0, 30.0])
    du = np.array([[3.0, 3.1, 3.2], [4.0, 3.0, 2.0]])
    wb = weighting.per_tilt_wedge((n, n, n), v, tilts, defocus_u_um=du, accumulated_dose=[6, 0, 3])
    assert wb.shape == (2, n, n, n // 2 + 1)
    for i in range(2):
        wi = weighting.per_tilt_wedge((n, n, n), v, tilts, defocus_u_um=du[i], accumulated_dose=[6, 0, 3])
        assert torch.allclose(wb[i], wi, atol=1e-6)
    ws = weighting.per_tilt_wedge((n, n, n), v, tilts, defocus_u_um=du, normalization="sum")
    assert torch.allclose(ws.abs().amax(dim=(1, 2, 3)), torch.ones(2))


def test_hermitian_consistency_and_non_cubic_box():
    w = weighting.per_tilt_wedge((12, 10, 16), 7.0, [-50, -10, 20, 45], defocus_u_um=[3, 3, 3, 3]).numpy()
    assert w.shape == (12, 10, 9)
    # on the kx = 0 (and Nyquist) planes the rfft stores both k and -k: they must agree
    for ix in (0, 8):
        plane = w[:, :, ix]
        mirrored = plane[(-np.arange(12)) % 12][:, (-np.arange(10)) % 10]
        assert np.allclose(plane, mirrored, atol=1e-6)


def test_per_tilt_wedge_errors():
    with pytest.raises(InputError):
        weighting.per_tilt_wedge((8, 8, 8), 1.0, [0, 10], defocus_u_um=[3.0, 3.0, 3.0])
    with pytest.raises(InputError):
        weighting.per_tilt_wedge((8, 8, 8), 1.0, [0, 10], normalization="max")
    with pytest.raises(InputError):
        weighting.per_tilt_wedge((8, 8, 8), 1.0, [0, 10], ctf_mode="flip")
    with pytest.raises(InputError):
        weighting.per_tilt_wedge((8, 8, 8), 1.0, [0, np.nan])
    with pytest.raises(InputError):
        weighting.per_tilt_wedge((8, 8, 8), 1.0, [0, 10], accumulated_dose=[-1, 0])


# --------------------------------------------------------------------------- whitening


def _coloured_noise(shape, voxel, k0, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=shape)
    k = weighting.frequency_radius_3d(shape, voxel).numpy()
    amp = 1.0 / (1.0 + (k / k0) ** 2)
    return np.fft.irfftn(np.fft.rfftn(noise) * amp, s=shape, axes=(0, 1, 2)), amp


def test_whitening_flattens_known_spectrum():
    voxel, k0 = 10.0, 0.01
    tomo, _ = _coloured_noise((48, 64, 64), voxel, k0)
    w = weighting.whitening_filter(torch.as_tensor(tomo, dtype=torch.float32), voxel, (32, 32, 32))
    assert w.shape == (32, 32, 17)
    assert float(w.max()) == pytest.approx(1.0)
    assert float(w[0, 0, 0]) == 0.0
    # expected 1/amplitude = 1 + (k/k0)^2, normalised at the top of the band
    k = weighting.frequency_radius_3d((32, 32, 32), voxel).numpy()
    expect = 1.0 + (k / k0) ** 2
    sel = (k > 0.006) & (k < 0.045)
    ratio = w.numpy()[sel] / expect[sel]
    assert ratio.std() / ratio.mean() < 0.15
    # white noise -> flat
    white = torch.as_tensor(np.random.default_rng(1).normal(size=(40, 40, 40)), dtype=torch.float32)
    ww = weighting.whitening_filter(white, voxel, (16, 16, 16)).numpy()
    assert ww[ww > 0].min() > 0.8


def test_whitening_with_tilt_range_ignores_missing_wedge():
    voxel, k0 = 10.0, 0.01
    tomo, _ = _coloured_noise((48, 48, 48), voxel, k0, seed=2)
    wedge = weighting.binary_wedge((48, 48, 48), (-50, 50)).numpy()
    tomo = np.fft.irfftn(np.fft.rfftn(tomo) * wedge, s=tomo.shape, axes=(0, 1, 2))
    t = torch.as_tensor(tomo, dtype=torch.float32)
    with_range = weighting.whitening_filter(t, voxel, (24, 24, 24), tilt_angles_deg=(-50, 50)).numpy()
    k = weighting.frequency_radius_3d((24, 24, 24), voxel).numpy()
    expect = 1.0 + (k / k0) ** 2
    sel = (k > 0.008) & (k < 0.045)
    ratio = with_range[sel] / expect[sel]
    assert ratio.std() / ratio.mean() < 0.2
    with pytest.raises(InputError):
        weighting.whitening_filter(t[0], voxel, (8, 8, 8))


# --------------------------------------------------------------------------- tilt-series weight


def _series(excluded=None):
    tilts = np.array([-40.0, -20.0, 0.0, 20.0, 40.0])
    return TiltSeries(
        tilt_angles_deg=tilts,
        accumulated_dose=[12, 6, 0, 3, 9],
        defocus_u_um=[3.0, 3.1, 3.2, 3.3, 3.4],
        defocus_v_um=[3.5, 3.6, 3.7, 3.8, 3.9],
        astigmatism_angle_deg=[10, 20, 30, 40, 50],
        excluded=excluded,
    )


def test_tilt_series_weight_per_tilt_offsets_and_exclusion():
    shape, v = (16, 16, 16), 8.0
    ts = _series(excluded=[False, True, False, False, False])
    off = np.array([0.1, 0.2, -0.1, 0.0, 0.3])
    got = weighting.tilt_series_weight(ts, shape, v, defocus_offset_um=off, low_pass_angstrom=30.0)
    keep = [0, 2, 3, 4]
    expect = weighting.per_tilt_wedge(
        shape,
        v,
        ts.tilt_angles_deg[keep],
        defocus_u_um=(ts.defocus_u_um + off)[keep],
        defocus_v_um=(ts.defocus_v_um + off)[keep],
        astigmatism_angle_deg=ts.astigmatism_angle_deg[keep],
        accumulated_dose=ts.accumulated_dose[keep],
    ) * weighting.bandpass(shape, v, 30.0)
    assert torch.allclose(got, expect, atol=1e-6)
    batch = weighting.tilt_series_weight(ts, shape, v, defocus_offset_um=np.stack([off, 0 * off]))
    assert batch.shape == (2,) + got.shape
    with pytest.raises(InputError):
        weighting.tilt_series_weight(ts, shape, v, defocus_offset_um=off[:4])


def test_tilt_series_weight_binary_and_whitening():
    shape, v = (16, 16, 16), 8.0
    ts = _series()
    w = weighting.tilt_series_weight(ts, shape, v, per_tilt=False)
    wedge = weighting.binary_wedge(shape, (-40, 40))
    k = weighting.frequency_radius_3d(shape, v)
    ctf0 = torch.as_tensor(np_template_ctf(k.numpy(), 0.0, 3.45, 3.45, 0.0), dtype=torch.float32)
    assert torch.allclose(w, wedge * ctf0, atol=1e-5)
    batch = weighting.tilt_series_weight(
        ts, shape, v, per_tilt=False, defocus_offset_um=np.array([[0.0] * 5, [1.0] * 5])
    )
    assert batch.shape == (2,) + w.shape
    assert torch.allclose(batch[0], w, atol=1e-6) and not torch.allclose(batch[1], w, atol=1e-3)
    no_ctf = weighting.tilt_series_weight(ts, shape, v, per_tilt=False, ctf_mode=None)
    assert torch.equal(no_ctf, wedge)
    white = torch.rand(shape[0], shape[1], shape[2] // 2 + 1)
    ww = weighting.tilt_series_weight(ts, shape, v, whitening=white)
    assert torch.allclose(ww, weighting.tilt_series_weight(ts, shape, v) * white, atol=1e-6)
    # a series without defocus gives no CTF
    plain = TiltSeries(tilt_angles_deg=ts.tilt_angles_deg)
    w_plain = weighting.tilt_series_weight(plain, shape, v)
    assert float(w_plain.min()) >= 0.0


# --------------------------------------------------------------------------- real metadata

REAL = str((shared_data_dir() or Path("missing-shared-data")) / "tilt_metadata")


def test_real_relion5_series_weights():
    import os

    if not os.path.exists(f"{REAL}/tomo200528_relion5_tomograms.star"):
        pytest.skip("shared real tilt metadata not available")
    from tomomatch.conventions import defocus_offset_angstrom
    from tomomatch.metadata import read_relion5

    ts = read_relion5(
        f"{REAL}/tomo200528_relion5_tomograms.star",
        "tomo200528_107",
        tilt_series_star=f"{REAL}/tomo200528_107_relion5_tiltseries.star",
    )
    shape, v = (32, 32, 32), 13.79
    w = weighting.tilt_series_weight(ts, shape, v).numpy()
    cos = np.cos(np.deg2rad(ts.tilt_angles_deg[~ts.excluded]))
    assert np.isfinite(w).all()
    assert w[0, 0, 0] == pytest.approx(ts.amplitude_contrast * cos.mean(), rel=1e-4)
    # nothing leaks far into the missing wedge (range about +-51 degrees): a slice one Fourier
    # voxel thick reaches asin(1 / r) beyond the last tilt at radius r voxels (9 -> 6.4 deg);
    # r is measured in the kx-kz plane (all slices contain the ky axis)
    kz, _, kx = (k.numpy() for k in weighting.frequency_grid_3d(shape, v))
    r_vox = np.hypot(kx, kz) * shape[0] * v
    far = (weighting.binary_wedge(shape, (-58, 58)).numpy() == 0) & (r_vox > 9)
    assert far.any() and np.all(w[far] == 0)
    # the defocus gradient: a tile at x = +1500 A, z = +300 A; the hand decides the offsets
    offs = {h: defocus_offset_angstrom(1500.0, 300.0, ts.tilt_angles_deg, h) / 1e4 for h in (-1, 1)}
    w_pos = weighting.tilt_series_weight(ts, shape, v, defocus_offset_um=np.stack([offs[-1], offs[1]])).numpy()
    assert not np.allclose(w_pos[0], w_pos[1], atol=1e-3)
    assert np.allclose(w_pos[0][0, 0, 0], w[0, 0, 0])  # DC does not depend on defocus
    w_hand = weighting.tilt_series_weight(ts, shape, v, defocus_offset_um=offs[ts.hand]).numpy()
    assert np.allclose(w_hand, w_pos[0 if ts.hand == -1 else 1], atol=1e-6)


# --------------------------------------------------------------------------- x-tilt


def test_x_tilt_single_slice_against_relion_rows():
    """One tilt at y-tilt 30, x-tilt 12 (RELION rlnTomoXTilt): the slice is perpendicular to the
    third row of Ry(30) Rx(12), (-sin 30, cos 30 sin 12, cos 30 cos 12), written out by hand; the
    CTF is evaluated at (k . row0, k . row1)."""
    n, v, t, a = 24, 6.0, 30.0, 12.0
    st, ct, sa, ca = (f(math.radians(x)) for x, f in ((t, math.sin), (t, math.cos), (a, math.sin), (a, math.cos)))
    row0 = np.array([ct, st * sa, st * ca])
    row1 = np.array([0.0, ca, -sa])
    row2 = np.array([-st, ct * sa, ct * ca])
    kw = dict(defocus_u_um=[2.0], defocus_v_um=[3.0], astigmatism_angle_deg=[40.0], accumulated_dose=[20.0])
    w = weighting.per_tilt_wedge((n, n, n), v, [t], x_tilt_deg=[a], **kw).numpy()
    fz = np.fft.fftfreq(n, v)[:, None, None]
    fy = np.fft.fftfreq(n, v)[None, :, None]
    fx = np.fft.rfftfreq(n, v)[None, None, :]
    kdot = lambda r: fx * r[0] + fy * r[1] + fz * r[2]  # noqa: E731
    ku, kv, kwd = kdot(row0), kdot(row1), kdot(row2)
    tent = np.maximum(0, 1 - np.abs(kwd) / (1.0 / (n * v)))  # cubic box: delta = one Fourier voxel
    expect = tent * np_template_ctf(ku, kv, 2.0, 3.0, 40.0) * np_dose(np.hypot(ku, kv), 20.0) * row2[2]
    assert np.allclose(w[..., 1:-1], expect[..., 1:-1], atol=1e-5)
    # the x-tilt matters: the same tilt without it differs on the slice
    w0 = weighting.per_tilt_wedge((n, n, n), v, [t], **kw).numpy()
    assert np.abs(w - w0).max() > 0.1


def test_x_tilt_path_equals_factored_path_at_zero():
    """The general (ky-dependent) path with a negligible x-tilt equals the factored one."""
    n, v = 20, 8.0
    tilts = np.array([-42.0, -9.0, 0.0, 24.0, 57.0])
    kw = dict(defocus_u_um=np.linspace(2, 4, 5), accumulated_dose=np.arange(5) * 3.0)
    w_fact = weighting.per_tilt_wedge((n, n, n), v, tilts, **kw).numpy()
    w_gen = weighting.per_tilt_wedge((n, n, n), v, tilts, x_tilt_deg=np.full(5, 1e-9), **kw).numpy()
    assert np.allclose(w_fact, w_gen, atol=1e-6)


def test_tilt_series_x_tilt_reaches_the_weights_and_the_offsets():
    from tomomatch.conventions import defocus_offset_angstrom
    from tomomatch.tiles import plan_tiles, tile_defocus_um

    tilts = np.array([-30.0, 0.0, 30.0])
    ts = TiltSeries(tilt_angles_deg=tilts, defocus_u_um=[3.0] * 3, x_tilt_deg=[5.0] * 3)
    assert ts.has_x_tilt and not TiltSeries(tilt_angles_deg=tilts).has_x_tilt
    w = weighting.tilt_series_weight(ts, (16, 16, 16), 8.0).numpy()
    w0 = weighting.tilt_series_weight(ts.with_(x_tilt_deg=None), (16, 16, 16), 8.0).numpy()
    assert np.abs(w - w0).max() > 0.05
    # a tile off the tilt axis in y: depth gets y cos t sin a (hand-computed for t = 0: y sin 5)
    tiles = plan_tiles((10, 30, 10), 4, (1, 3, 1), 10.0, tilts, 1, x_tilt_deg=ts.x_tilt_deg)
    y = tiles[2].centre_angstrom_xyz[1]
    assert y == 100.0
    assert tiles[2].defocus_offsets_um[1] == pytest.approx(100.0 * math.sin(math.radians(5)) / 1e4)
    du, _ = tile_defocus_um(ts, tiles[2], 1)
    np.testing.assert_allclose(
        du, 3.0 + defocus_offset_angstrom(0.0, 0.0, tilts, 1, y_angstrom=y, x_tilt_deg=5.0) / 1e4
    )
    with pytest.raises(InputError):
        TiltSeries(tilt_angles_deg=tilts, x_tilt_deg=[60.0] * 3)
