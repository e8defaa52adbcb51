"""The simulator's realism features, each against an independent computation (docs/simulation.md,
"Realism"): detector MTF/DQE, per-tilt misalignment, gold beads, crowding, thick ice, carbon edge,
template mismatch, the particles' sigma estimate and the ``hard`` preset."""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import scipy.fft as sfft
import starfile
from scipy import ndimage, optimize

from tomomatch.phantom import phantom_density
from tomomatch.shared_data import shared_data_dir
from tomomatch.simulate import preset_config, simulate
from tomomatch.simulate.realism import apply_detector, slab_edge_path_length

DATA = shared_data_dir() or Path("missing-shared-data")


def _small(**kw):
    """A small custom field: phantom particles, no ice, no shot noise, 7 tilts."""
    base = dict(
        structure="phantom",
        phantom_diameter_angstrom=180.0,
        n_particles=2,
        n_decoys=0,
        n_blobs=0,
        shot_noise=False,
        ice_noise_rad=0.0,
        defocus_scatter_um=0.0,
        tomogram_size_xyz=(96, 96, 40),
        voxel_size_angstrom=10.0,
        thickness_nm=35.0,
        tilt_min_deg=-60.0,
        tilt_max_deg=60.0,
        tilt_step_deg=20.0,
    )
    base.update(kw)
    return base


def _radial_mean(power: np.ndarray, f: np.ndarray, edges: np.ndarray) -> np.ndarray:
    idx = np.digitize(f.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < edges.size - 1)
    s = np.bincount(idx[ok], power.ravel()[ok], minlength=edges.size - 1)
    n = np.bincount(idx[ok], minlength=edges.size - 1)
    return s / np.maximum(n, 1)


def _expected_mtf(f, mtf_nyquist):
    # the documented model, written out independently: sinc(f) exp(-g f^2), MTF(1/2) = mtf_nyquist
    g = -math.log(mtf_nyquist / (2 / math.pi)) / 0.25
    return np.sinc(f) * np.exp(-g * f * f)


# --------------------------------------------------------------------------- detector


def test_detector_mtf_shapes_white_signal_and_dqe_amplifies_white_shot_noise():
    rng = np.random.default_rng(0)
    n = 256
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    edges = np.linspace(0.02, 0.5, 13)
    p_in = np.zeros(edges.size - 1)
    p_out = np.zeros(edges.size - 1)
    for _ in range(4):  # white-noise signal, no shot noise: output power / input power = MTF^2
        e = 100.0 + 10.0 * rng.standard_normal((n, n))
        out = apply_detector(e, None, 10.0, 10.0, 0.55, 0.8)
        p_in += _radial_mean(np.abs(np.fft.rfft2(e - e.mean())) ** 2, f, edges)
        p_out += _radial_mean(np.abs(np.fft.rfft2(out - out.mean())) ** 2, f, edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    # per-bin average of MTF^2 over the bin's frequencies, compared with the measured ratio
    want = _radial_mean(_expected_mtf(f, 0.55) ** 2 * np.ones_like(fy * fx), f, edges)
    np.testing.assert_allclose(p_out / p_in, want, rtol=0.03)
    assert want[-1] < 0.35 and _expected_mtf(centres[-1], 0.55) < 0.6  # a real fall-off was tested
    # a binned tilt series (detector pixel 2.5 A, images at 10 A) sees the MTF at f / 4
    e = 100.0 + 10.0 * rng.standard_normal((n, n))
    out = apply_detector(e, None, 10.0, 2.5, 0.55, 0.8)
    ratio = _radial_mean(np.abs(np.fft.rfft2(out - out.mean())) ** 2, f, edges) / _radial_mean(
        np.abs(np.fft.rfft2(e - e.mean())) ** 2, f, edges
    )
    np.testing.assert_allclose(ratio, _radial_mean(_expected_mtf(f / 4, 0.55) ** 2 + 0 * fy * fx, f, edges), rtol=0.03)
    # flat field with shot noise: mean kept, variance = counts / DQE(0), noise spectrum flat
    lam = 50.0
    e = np.full((n, n), lam)
    noisy = rng.poisson(lam, (n, n)).astype(float)
    out = apply_detector(e, noisy, 10.0, 10.0, 0.55, 0.8)
    assert out.mean() == pytest.approx(lam, rel=0.002)
    assert out.var() == pytest.approx(lam / 0.8, rel=0.03)
    nps = _radial_mean(np.abs(np.fft.rfft2(out - out.mean())) ** 2, f, edges)
    assert nps[-3:].mean() / nps[:3].mean() == pytest.approx(1.0, abs=0.08)


def test_simulated_tilt_images_carry_the_detector_mtf(tmp_path):
    kw = _small(n_particles=4, tilt_min_deg=0.0, tilt_max_deg=0.0, ice_noise_rad=0.0)
    ideal = simulate("custom", write=False, seed=4, **kw)
    k3 = simulate("custom", write=False, seed=4, detector="k3", detector_pixel_angstrom=5.0, **kw)
    a = ideal.tilt_series_counts[0].astype(float)
    b = k3.tilt_series_counts[0].astype(float)
    assert a.mean() == pytest.approx(b.mean(), rel=1e-4)
    n = a.shape[0]
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    f = np.sqrt(fx * fx + fy * fy) + 0 * fy * fx
    fa, fb = np.fft.rfft2(a - a.mean()), np.fft.rfft2(b - b.mean())
    sel = (f > 0.05) & (f < 0.45) & (np.abs(fa) > 1e-3 * np.abs(fa).max())
    # the K3 model (MTF 0.55 at its Nyquist), detector pixel 5 A under 10 A images: f / 2
    np.testing.assert_allclose(np.abs(fb[sel] / fa[sel]), _expected_mtf(f[sel] / 2, 0.55), rtol=0.02)


# --------------------------------------------------------------------------- misalignment


def _fourier_shift(img, dx, dy):
    ny, nx = img.shape
    kx = np.fft.rfftfreq(nx)[None, :]
    ky = np.fft.fftfreq(ny)[:, None]
    return sfft.irfft2(sfft.rfft2(img) * np.exp(-2j * math.pi * (kx * dx + ky * dy)), s=(ny, nx))


def _measure_shift(ref, moved):
    """Sub-pixel (dx, dy) that best maps ``ref`` onto ``moved`` (least squares, Fourier shift)."""
    res = optimize.minimize(lambda d: float(np.sum((_fourier_shift(ref, d[0], d[1]) - moved) ** 2)), [0.0, 0.0])
    return res.x


def test_per_tilt_shifts_recorded_equal_the_shifts_measured_in_noise_free_images():
    kw = _small(n_particles=3)
    ref = simulate("custom", write=False, seed=7, **kw)
    mis = simulate("custom", write=False, seed=7, jitter_angstrom=3.0, **kw)
    jit = np.asarray(mis.summary["per_tilt"]["jitter_xy_angstrom"])
    assert np.all(np.abs(jit).max(axis=0) > 1.0)  # shifts of a few A were applied
    for t in range(jit.shape[0]):
        a = ref.tilt_series_counts[t].astype(float)
        b = mis.tilt_series_counts[t].astype(float)
        d = _measure_shift(a - a.mean(), b - b.mean()) * 10.0
        np.testing.assert_allclose(d, jit[t], atol=0.25)


def _bead_positions(img, approx_xy, half=8):
    """(x, y) of each gold bead, by the Fourier-shift fit of a window against its mirror image."""
    out = []
    for x, y in approx_xy:
        xi, yi = int(round(x)), int(round(y))
        w = img[yi - half : yi + half, xi - half : xi + half].astype(float)
        w = -(w - np.median(img))
        cy, cx = ndimage.center_of_mass(np.clip(w, 0, None))
        out.append((xi - half + cx, yi - half + cy))
    return np.asarray(out)


def test_in_plane_rotation_recorded_equals_rotation_of_gold_beads():
    kw = _small(n_particles=0, n_gold=4, tomogram_size_xyz=(128, 128, 40))
    ref = simulate("custom", write=False, seed=11, **kw)
    rot = simulate("custom", write=False, seed=11, tilt_rotation_deg=3.0, **kw)
    gold = np.asarray(ref.summary["realism"]["gold"]["centres_angstrom"])
    angles = np.asarray(ref.summary["per_tilt"]["tilt_angle_deg"])
    want = np.asarray(rot.summary["per_tilt"]["in_plane_rotation_deg"])
    assert np.abs(want).max() > 1.5
    c = 64.0
    for t, a in enumerate(angles):
        xp = gold[:, 0] * math.cos(math.radians(a)) + gold[:, 2] * math.sin(math.radians(a))
        approx = np.column_stack([c + xp / 10.0, c + gold[:, 1] / 10.0])
        p0 = _bead_positions(ref.tilt_series_counts[t], approx) - c
        cos_, sin_ = math.cos(math.radians(want[t])), math.sin(math.radians(want[t]))
        approx1 = np.column_stack([cos_ * p0[:, 0] - sin_ * p0[:, 1], sin_ * p0[:, 0] + cos_ * p0[:, 1]]) + c
        p1 = _bead_positions(rot.tilt_series_counts[t], approx1) - c
        cross = np.sum(p0[:, 0] * p1[:, 1] - p0[:, 1] * p1[:, 0])
        dot = np.sum(p0[:, 0] * p1[:, 0] + p0[:, 1] * p1[:, 1])
        assert math.degrees(math.atan2(cross, dot)) == pytest.approx(want[t], abs=0.3)


# --------------------------------------------------------------------------- gold, carbon


def test_gold_beads_are_the_strongest_voxels_at_their_recorded_positions(tmp_path):
    res = simulate("ci", out_dir=tmp_path / "g", seed=5, n_gold=4, tomogram_size_xyz=(128, 128, 48), tilt_step_deg=6.0)
    d = starfile.read(tmp_path / "g" / "distractors.star")
    gold = d[d["tmSource"] == "gold"][["tmVoxelIndexZ", "tmVoxelIndexY", "tmVoxelIndexX"]].to_numpy()
    assert len(gold) == 4
    # gold is dark, like protein; smoothed at half the bead's radius (5 voxels) the bead's centre is
    # its darkest point (unsmoothed, the ramp filter and the missing wedge favour the rim)
    smooth = ndimage.gaussian_filter(-res.tomogram.astype(float), 2.5)
    picks = []
    work = smooth.copy()
    for _ in range(4):  # the four strongest, suppressing 8 voxels around each
        z, y, x = np.unravel_index(np.argmax(work), work.shape)
        picks.append((z, y, x))
        work[max(0, z - 8) : z + 9, max(0, y - 8) : y + 9, max(0, x - 8) : x + 9] = -np.inf
    dist = np.linalg.norm(np.asarray(picks, float)[:, None, :] - gold[None, :, :], axis=-1)
    assert np.all(dist.min(axis=1) <= 1.5)
    assert sorted(dist.argmin(axis=1)) == [0, 1, 2, 3]


def test_carbon_edge_path_length_and_image_step():
    # path length against a brute-force ray march through the half-slab
    x_edge, z0, z1 = 150.0, 200.0, 350.0
    for t in (-50.0, -20.0, 0.0, 35.0, 60.0):
        u = np.linspace(-800, 800, 41)
        got = slab_edge_path_length(u, t, x_edge, z0, z1)
        s = np.linspace(-3000, 3000, 600001)
        ds = s[1] - s[0]
        tr = math.radians(t)
        for ui, gi in zip(u, got):
            x = ui * math.cos(tr) - s * math.sin(tr)
            z = ui * math.sin(tr) + s * math.cos(tr)
            inside = (x > x_edge) & (z > z0) & (z < z1)
            assert gi == pytest.approx(inside.sum() * ds, abs=0.05)
    # in a noise-free 0-degree image the edge is the strongest step, at the recorded column
    res = simulate(
        "custom",
        write=False,
        seed=2,
        **_small(n_particles=0, carbon_edge_x_fraction=0.7, carbon_noise_rad=0.0, tilt_min_deg=0.0, tilt_max_deg=0.0),
    )
    edge = res.summary["realism"]["carbon_edge"]
    prof = res.tilt_series_counts[0].astype(float).mean(axis=0)
    prof = ndimage.gaussian_filter1d(prof, 2.0)
    assert abs(int(np.argmax(np.abs(np.diff(prof)))) + 0.5 - edge["x_edge_voxel"]) <= 2.5


# --------------------------------------------------------------------------- crowding


def test_crowding_fills_the_requested_volume_fraction_without_overlap(tmp_path):
    frac = 0.2
    res = simulate(
        "custom",
        out_dir=tmp_path / "c",
        seed=3,
        **_small(
            n_particles=3,
            tomogram_size_xyz=(96, 96, 48),
            thickness_nm=40.0,
            tilt_step_deg=30.0,
            crowding_volume_fraction=frac,
            crowder_structures=("phantom-decoy",),
        ),
    )
    d = starfile.read(tmp_path / "c" / "distractors.star")
    d = d[d["tmSource"] == "crowder"]
    assert len(d) > 10
    assert res.summary["realism"]["crowding"]["n_crowders"] == len(d)
    # independent rasterisation at the simulation pixel (5 A, finer than the 10 A occupancy grid the
    # placement uses): the decoy phantom sampled directly, posed with the recorded RELION angles,
    # support above 5 % of its maximum
    from tomomatch.conventions import relion_to_matrix

    dens = phantom_density(5.0, None, 180.0, variant="decoy")
    n = dens.shape[0]
    c = n // 2
    g = np.indices(dens.shape).reshape(3, -1).astype(float) - c  # z, y, x
    nz, ny, nx = (2 * s for s in res.tomogram.shape)
    total = np.zeros((nz, ny, nx), dtype=np.int16)
    for _, row in d.iterrows():
        R = relion_to_matrix(np.array([row.rlnAngleRot, row.rlnAngleTilt, row.rlnAnglePsi]))
        xyz = R.T @ g[::-1]  # template coordinates of each output voxel (x, y, z)
        vals = ndimage.map_coordinates(dens, xyz[::-1] + c, order=1, cval=0.0).reshape(dens.shape)
        m = vals > 0.05 * dens.max()
        lo = 2 * np.array([row.tmVoxelIndexZ, row.tmVoxelIndexY, row.tmVoxelIndexX]).round().astype(int) - c
        a, b = np.maximum(lo, 0), np.minimum(lo + n, total.shape)
        total[a[0] : b[0], a[1] : b[1], a[2] : b[2]] += m[
            a[0] - lo[0] : b[0] - lo[0], a[1] - lo[1] : b[1] - lo[1], a[2] - lo[2] : b[2] - lo[2]
        ]
    zc = nz // 2
    slab = total[zc - 40 : zc + 40]  # the 40 nm slab
    got = (slab > 0).sum() / slab.size
    assert got == pytest.approx(frac, rel=0.1)
    assert (total > 1).sum() <= 0.03 * (total > 0).sum()  # no overlap (up to interpolation)


# --------------------------------------------------------------------------- thick ice


@pytest.mark.parametrize("thickness", [150.0, 300.0])
def test_thick_ice_attenuation(thickness):
    res = simulate(
        "custom",
        write=False,
        seed=1,
        **_small(
            n_particles=0,
            thickness_nm=thickness,
            tomogram_size_xyz=(64, 64, 16),
            shot_noise=True,
            ice_noise_rad=0.08,
            detector="k3",
        ),
    )
    angles = np.radians(res.summary["per_tilt"]["tilt_angle_deg"])
    mean = res.tilt_series_counts.astype(float).mean(axis=(1, 2)) / (3.5 * 10.0 * 10.0)
    np.testing.assert_allclose(mean, np.exp(-thickness / (np.cos(angles) * 350.0)), rtol=0.01)
    assert mean.min() < 0.2 if thickness == 300 else mean.min() < 0.5


# --------------------------------------------------------------------------- template mismatch, sigma


def test_template_mismatch_writes_the_other_structure(tmp_path):
    simulate("ci", out_dir=tmp_path / "m", seed=1, template_structure="phantom-mirror", n_blobs=0)
    simulate("ci", out_dir=tmp_path / "s", seed=1, n_blobs=0)
    t_m = mrcfile.read(tmp_path / "m" / "template.mrc")
    t_s = mrcfile.read(tmp_path / "s" / "template.mrc")
    ref = -phantom_density(10.0, t_m.shape[0], 200.0, mirror=True)
    assert np.corrcoef(t_m.ravel(), ref.ravel())[0, 1] > 0.999
    same = np.corrcoef(t_m.ravel(), t_s.ravel())[0, 1]
    assert same < 0.95
    import json

    info = json.loads((tmp_path / "m" / "summary.json").read_text())["template"]
    assert info["cc_with_particle_structure"] == pytest.approx(same, abs=0.02)
    # the tomograms are the same (only the template differs)
    assert np.array_equal(mrcfile.read(tmp_path / "m" / "sim.mrc"), mrcfile.read(tmp_path / "s" / "sim.mrc"))


@pytest.mark.skipif(not (DATA / "maps" / "polnet_3j9i_20S_5A.mrc").exists(), reason="shared data not available")
def test_hard_preset_has_every_feature_on_and_a_matching_20s_template():
    cfg = preset_config("hard")
    assert "3j9i" in str(cfg.structure) and "polnet_3j9i" in str(cfg.template_structure)
    assert cfg.crowding_volume_fraction >= 0.1 and cfg.thickness_nm >= 150 and cfg.n_gold > 0
    assert cfg.jitter_angstrom > 0 and cfg.tilt_rotation_deg > 0 and cfg.detector != "ideal"
    assert cfg.carbon_edge_x_fraction is not None and not cfg.warnings


@pytest.mark.parametrize("name", ["ci", "lamella", "seed", "seed-clean", "wide", "hard"])
def test_every_preset_is_listed_and_validates(name):
    from tomomatch.simulate.config import PRESETS

    assert name in PRESETS
    assert preset_config(name).preset == name


def test_seed_clean_keeps_the_former_seed_values_and_seed_adds_only_the_calibration():
    """`seed-clean` is the `seed` preset before its calibration (docs/simulation.md "Calibration"):
    its values are pinned here so that the measurements made on it stay reproducible."""
    from tomomatch.simulate.config import PRESETS

    former_seed = dict(
        structure="@4v5d",
        n_particles=100,
        n_decoys=0,
        n_blobs=60,
        thickness_nm=70.0,
        tomogram_size_xyz=(514, 720, 84),
        voxel_size_angstrom=8.56,
        binning=2,
        tilt_min_deg=-60.0,
        tilt_max_deg=60.0,
        tilt_step_deg=3.0,
        dose_per_tilt=3.0,
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.07,
        defocus_um=3.0,
        defocus_scatter_um=0.15,
        ice_noise_rad=0.03,
    )
    assert PRESETS["seed-clean"] == former_seed
    calibration = {k: v for k, v in PRESETS["seed"].items() if former_seed.get(k, object()) != v}
    assert set(calibration) == {
        "ice_noise_rad",
        "crowding_volume_fraction",
        "crowder_structures",
        "jitter_angstrom",
        "tilt_rotation_deg",
        "detector",
        "detector_pixel_angstrom",
    }
    clean = preset_config("seed-clean")
    assert clean.preset == "seed-clean" and clean.crowding_volume_fraction == 0 and clean.detector == "ideal"
    assert clean.jitter_angstrom == 0 and clean.tilt_rotation_deg == 0 and clean.template_structure is None


@pytest.mark.skipif(not (DATA / "maps" / "polnet_4cr2_26S_5A.mrc").exists(), reason="shared data not available")
def test_seed_preset_is_calibrated_with_crowders_misalignment_and_a_k3_detector():
    cfg = preset_config("seed")
    assert cfg.crowding_volume_fraction == pytest.approx(0.1) and len(cfg.crowder_structures) == 3
    assert not any("70S" in str(c) or "4v4r" in str(c) for c in cfg.crowder_structures)  # no untracked ribosomes
    assert cfg.jitter_angstrom > 0 and cfg.tilt_rotation_deg > 0 and cfg.detector == "k3"
    assert cfg.template_structure is None and not cfg.warnings  # template from the particles' own model


@pytest.mark.skipif(not (DATA / "maps" / "polnet_4cr2_26S_5A.mrc").exists(), reason="shared data not available")
def test_crowding_on_a_preset_without_crowders_uses_the_default_crowders():
    cfg = preset_config("seed-clean", crowding_volume_fraction=0.05)
    assert cfg.crowding_volume_fraction == 0.05 and len(cfg.crowder_structures) == 3 and not cfg.warnings


def test_sigma_estimate_falls_with_dose_and_clean_particles_pass_the_cutoff():
    kw = dict(n_particles=4, n_decoys=0, n_blobs=0, tomogram_size_xyz=(80, 80, 40), tilt_step_deg=6.0)
    hi = simulate("ci", write=False, seed=2, estimate_sigma=True, dose_per_tilt=5.0, **kw).summary["particle_sigma"]
    lo = simulate("ci", write=False, seed=2, estimate_sigma=True, dose_per_tilt=0.3, **kw).summary["particle_sigma"]
    assert hi["summary"]["min"] > hi["full_search"]["cutoff_sigma_1_false_alarm"]
    assert np.all(np.asarray(hi["sigma"]) > np.asarray(lo["sigma"]))
    s = np.asarray(hi["score"])
    np.testing.assert_allclose(hi["sigma"], (s - hi["background_mean"]) / hi["background_std"], atol=2e-3)
