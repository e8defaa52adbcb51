"""Tests of the simulator: geometry, defocus-gradient sign, WBP, shot noise, determinism, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomomatch.shared_data import shared_data_dir
import starfile
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from tomomatch.cli import main
from tomomatch.conventions import electron_wavelength_angstrom, relion_to_matrix
from tomomatch.phantom import phantom_components, phantom_density
from tomomatch.simulate import (
    FourierProjector,
    Structure,
    fourier_bin_2d,
    poisson_counts,
    preset_config,
    simulate,
    tilt_scheme,
)


# --------------------------------------------------------------------------- small helpers


def _cc(a, b):
    a = np.asarray(a, float).ravel() - np.mean(a)
    b = np.asarray(b, float).ravel() - np.mean(b)
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


def _quiet(**kw):
    """Overrides for a noise-free, background-free custom simulation."""
    base = dict(
        shot_noise=False, ice_noise_rad=0.0, n_blobs=0, n_decoys=0, defocus_scatter_um=0.0, apply_dose_filter=False
    )
    base.update(kw)
    return base


# --------------------------------------------------------------------------- geometry


def test_fourier_slice_projection_equals_real_space_rotation_and_projection():
    """Slice of the 3D FT at R^T Rt (ku, kv, 0) == rotate the density by R, tilt, sum along the beam."""
    vox = 10.0
    dens = phantom_density(vox, box_size=32, diameter_angstrom=200.0)
    n = dens.shape[0]
    c = n // 2
    R = Rotation.from_euler("ZYZ", [35.0, 70.0, -120.0], degrees=True).as_matrix()
    c40, s40 = math.cos(math.radians(40)), math.sin(math.radians(40))
    Rt = np.array([[c40, 0, -s40], [0, 1, 0], [s40, 0, c40]])  # columns: image x, y, beam (IMOD)
    proj = FourierProjector(dens)
    P = proj.pad_size
    S = proj.slices((R.T @ Rt)[None])
    fourier = torch.fft.fftshift(torch.fft.irfft2(S, s=(P, P)), dim=(-2, -1))[0].numpy()
    fourier = fourier[P // 2 - c : P // 2 - c + n, P // 2 - c : P // 2 - c + n]  # centre P//2 -> c

    def real_space(M):
        # view volume in the tilted frame: sample (a, b, w) -> template(M (a, b, w)), sum over w
        g = np.arange(n) - c
        w, bb, a = np.meshgrid(g, g, g, indexing="ij")
        pts = np.stack([a, bb, w], -1) @ M.T  # (x, y, z) in the template
        coords = [pts[..., 2] + c, pts[..., 1] + c, pts[..., 0] + c]
        return ndimage.map_coordinates(dens, coords, order=3, mode="constant").sum(0)  # [v, u]

    real = real_space(R.T @ Rt)
    assert _cc(fourier, real) > 0.9999
    assert np.abs(fourier - real).max() < 0.01 * real.max()
    assert fourier.sum() == pytest.approx(real.sum(), rel=0.01)
    # the other multiplication order (tilting about the particle's own axis) is clearly different
    assert np.abs(fourier - real_space(Rt @ R.T)).max() > 0.1 * real.max()
    # and the particle-pose convention: particle(r) = template(R^T r); RELION angles round trip
    from tomomatch.conventions import matrix_to_relion

    assert np.allclose(relion_to_matrix(matrix_to_relion(R)), R, atol=1e-9)


def test_tilt_scheme_dose_symmetric_order_and_pre_exposure():
    angles, acq = tilt_scheme(-9, 9, 3, "dose-symmetric", group_size=2)
    assert angles.tolist() == [-9, -6, -3, 0, 3, 6, 9]
    # Hagen: 0, +3, +6, -3, -6, +9, -9
    taken = angles[np.argsort(acq)].tolist()
    assert taken == [0, 3, 6, -3, -6, 9, -9]
    cfg = preset_config("ci")
    assert cfg.tilt_max_deg == 60 and len(tilt_scheme(cfg.tilt_min_deg, cfg.tilt_max_deg, cfg.tilt_step_deg)[0]) == 31


def test_phantom_is_chiral_and_resolution_independent():
    v = 12.0
    a = phantom_density(v, box_size=24, diameter_angstrom=200.0)
    m = phantom_density(v, box_size=24, diameter_angstrom=200.0, mirror=True)
    # the integral (volts * A^3) does not depend on the voxel size
    fine = phantom_density(6.0, box_size=48, diameter_angstrom=200.0)
    assert a.sum() * v**3 == pytest.approx(fine.sum() * 6.0**3, rel=0.01)
    # no rotation of the phantom matches its mirror image as well as the phantom itself
    c, s, amp = phantom_components(200.0)
    cm = c * np.array([-1, 1, 1])
    rots = Rotation.random(3000, random_state=np.random.default_rng(3)).as_matrix()

    def best(target):
        # score = mean distance between each target bead and the nearest rotated bead of the same sigma
        rc = np.einsum("rij,nj->rni", rots, c)
        d = np.linalg.norm(rc[:, :, None, :] - target[None, None, :, :], axis=-1)
        same = np.abs(s[:, None] - s[None, :]) < 1e-9
        d = np.where(same[None], d, np.inf)
        return d.min(axis=1).mean(axis=1).min()

    rc_self = np.einsum("ij,nj->ni", rots[7], c)
    assert best(rc_self) < 5.0  # the search finds the phantom's own rotations
    assert best(cm) > 15.0  # but no rotation reproduces the mirror image
    assert _cc(a, m) < 0.9


# --------------------------------------------------------------------------- defocus sign


@pytest.mark.parametrize("hand", [1, -1, 0])
def test_defocus_applied_to_particle_at_plus_x_has_documented_sign(hand):
    x, z = 1000.0, 200.0
    res = simulate(
        "custom",
        write=False,
        hand=hand,
        **_quiet(
            n_particles=1,
            particle_positions_angstrom=[[x, 0.0, z]],
            particle_angles_relion_deg=[[0, 0, 0]],
            tomogram_size_xyz=(256, 32, 64),
            voxel_size_angstrom=10.0,
            tilt_min_deg=-30,
            tilt_max_deg=30,
            tilt_step_deg=30,
            phantom_diameter_angstrom=150.0,
            defocus_um=3.0,
        ),
    )
    ang = res.tilt_series.tilt_angles_deg
    assert ang.tolist() == [-30, 0, 30]
    off_a = (res.defocus_um[0] - res.tilt_series.defocus_um) * 1e4
    # hand-computed, RELION's getCtf: h * depth, depth = -x sin t + z cos t:
    # at -30: h*(500 + 173.2), at 0: h*200, at +30: h*(-500 + 173.2)
    expect = hand * np.array([500 + 200 * math.cos(math.pi / 6), 200, -500 + 200 * math.cos(math.pi / 6)])
    assert off_a == pytest.approx(expect, abs=1e-3)
    # pytom mode (pytom's z cos(h t) + x sin(h t)) flips only the x term for h = -1
    res_p = simulate(
        "custom",
        write=False,
        hand=hand,
        hand_mode="pytom",
        **_quiet(
            n_particles=1,
            particle_positions_angstrom=[[x, 0.0, z]],
            particle_angles_relion_deg=[[0, 0, 0]],
            tomogram_size_xyz=(256, 32, 64),
            voxel_size_angstrom=10.0,
            tilt_min_deg=-30,
            tilt_max_deg=30,
            tilt_step_deg=30,
            phantom_diameter_angstrom=150.0,
            defocus_um=3.0,
        ),
    )
    off_p = (res_p.defocus_um[0] - res_p.tilt_series.defocus_um) * 1e4
    exp_p = (
        np.array([200 * math.cos(math.pi / 6), 200, 200 * math.cos(math.pi / 6)]) + hand * np.array([-500, 0, 500])
        if hand
        else np.zeros(3)
    )
    assert off_p == pytest.approx(exp_p, abs=1e-3)


def _fit_defocus(patch, pixel, kv, cs_mm, amp, grid_um, kmin, kmax, envelope_sigma):
    """Defocus (um) whose independent CTF^2 x envelope best matches the patch's 2D power spectrum
    (pixel-wise correlation over the annulus kmin < |k| < kmax, 1/A)."""
    ps = np.abs(np.fft.fft2(patch - patch.mean())) ** 2
    fy = np.fft.fftfreq(patch.shape[0], d=pixel)
    fx = np.fft.fftfreq(patch.shape[1], d=pixel)
    k = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    sel = (k > kmin) & (k < kmax)
    k = k[sel]
    obs = ps[sel]
    env = np.exp(-4 * math.pi**2 * envelope_sigma**2 * k**2)  # |FT of the Gaussian blob|^2
    lam = electron_wavelength_angstrom(kv)
    best, best_df = -2, None
    for df in grid_um:
        chi = math.pi * lam * df * 1e4 * k**2 - 0.5 * math.pi * cs_mm * 1e7 * lam**3 * k**4
        model = (math.sqrt(1 - amp**2) * np.sin(chi) + amp * np.cos(chi)) ** 2 * env
        cc = _cc(obs, model)
        if cc > best:
            best, best_df = cc, df
    return best_df


@pytest.mark.parametrize("hand", [1, -1])
def test_ctf_read_back_from_noise_free_tilt_image_moves_with_true_hand(hand):
    """A point-like particle at x = +1000 A: the defocus fitted to its Thon rings in the +60 and
    -60 degree images is df -+ x sin 60 in the direction the true hand says (RELION 5: the depth
    -x sin t times rlnTomoHand)."""
    v, sig = 3.0, 2.5
    n = 16
    g = (np.arange(n) - n // 2) * 1.5
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    blob = Structure(np.exp(-(xx**2 + yy**2 + zz**2) / (2 * sig**2)).astype(np.float32), 1.5, "point")
    x = 1000.0
    res = simulate(
        "custom",
        write=False,
        hand=hand,
        **_quiet(
            structure=blob,
            n_particles=1,
            particle_positions_angstrom=[[x, 0.0, 0.0]],
            particle_angles_relion_deg=[[0, 0, 0]],
            tomogram_size_xyz=(720, 96, 16),
            voxel_size_angstrom=v,
            tilt_min_deg=-60,
            tilt_max_deg=60,
            tilt_step_deg=60,
            defocus_um=1.5,
            cs_mm=2.7,
            amplitude_contrast=0.07,
        ),
    )
    imgs = res.tilt_series_counts
    grid = np.arange(1.3, 1.7, 0.001)
    assert res.tilt_series.tilt_angles_deg.tolist() == [-60, 0, 60]
    for i, t in [(0, -60.0), (2, 60.0)]:
        xp = x * math.cos(math.radians(t)) / v + 720 // 2
        c0 = int(round(xp)) - 48
        patch = imgs[i, :, c0 : c0 + 96]
        df = _fit_defocus(patch, v, 300, 2.7, 0.07, grid, 0.03, 0.16, sig)
        expect = 1.5 - hand * x * math.sin(math.radians(t)) / 1e4
        assert df == pytest.approx(expect, abs=0.005), (t, df, expect)


# --------------------------------------------------------------------------- reconstruction


def test_wbp_of_noise_free_particle_matches_truth_after_same_wedge_and_lowpass():
    v, diam = 10.0, 200.0
    shape_xyz = (64, 64, 48)
    pos = np.array([40.0, -30.0, 20.0])
    ang = np.array([30.0, 50.0, 100.0])
    res = simulate(
        "custom",
        write=False,
        **_quiet(
            n_particles=1,
            particle_positions_angstrom=[pos],
            particle_angles_relion_deg=[ang],
            phantom_diameter_angstrom=diam,
            tomogram_size_xyz=shape_xyz,
            voxel_size_angstrom=v,
            tilt_min_deg=-60,
            tilt_max_deg=60,
            tilt_step_deg=3,
            apply_ctf=False,
        ),
    )
    tomo = res.tomogram
    nz, ny, nx = tomo.shape

    # independent truth: the phantom's Gaussians placed analytically at R c_i + p
    def truth(mirror=False):
        cen, sg, amp = phantom_components(diam, mirror=mirror)
        R = relion_to_matrix(ang)
        z, y, x = np.meshgrid(*[(np.arange(s) - s // 2) * v for s in (nz, ny, nx)], indexing="ij")
        out = np.zeros((nz, ny, nx))
        for c_, s_, a_ in zip(cen, sg, amp):
            q = R @ c_ + pos
            se = math.sqrt(s_**2 + (0.25 * v) ** 2)
            out += a_ * (s_ / se) ** 3 * np.exp(-((x - q[0]) ** 2 + (y - q[1]) ** 2 + (z - q[2]) ** 2) / (2 * se**2))
        return -out  # dark, like the tomogram

    kz, ky, kx = np.meshgrid(*[np.fft.fftfreq(s) for s in (nz, ny, nx)], indexing="ij")
    wedge = np.abs(kz) <= np.abs(kx) * math.tan(math.radians(60)) + 1e-9
    k = np.sqrt(kx**2 + ky**2 + kz**2)
    lp = np.exp(-0.5 * (k / 0.2) ** 2)

    def filt(a):
        return np.fft.ifftn(np.fft.fftn(a) * wedge * lp).real

    t_ok = filt(truth())
    rec = filt(tomo)
    assert _cc(rec, t_ok) > 0.9
    assert _cc(rec, filt(truth(mirror=True))) < _cc(rec, t_ok) - 0.05
    # the particle sits where the ground truth says (peak of the dark blob's correlation)
    assert res.particles.loc[0, "tmVoxelIndexX"] == pytest.approx(pos[0] / v + nx // 2)


# --------------------------------------------------------------------------- noise


def test_shot_noise_statistics_match_dose():
    v, dose = 4.0, 5.0
    res = simulate(
        "custom",
        write=False,
        n_particles=0,
        n_decoys=0,
        n_blobs=0,
        ice_noise_rad=0.0,
        tomogram_size_xyz=(96, 96, 16),
        voxel_size_angstrom=v,
        binning=2,
        tilt_min_deg=-60,
        tilt_max_deg=60,
        tilt_step_deg=60,
        dose_per_tilt=dose,
        thickness_nm=70.0,
        seed=4,
    )
    counts = res.tilt_series_counts
    for i, t in enumerate(res.tilt_series.tilt_angles_deg):
        atten = math.exp(-70.0 / (math.cos(math.radians(t)) * 350.0))
        expected = dose * v * v * atten  # electrons per binned pixel
        img = counts[i]
        assert img.mean() == pytest.approx(expected, rel=0.005)
        assert img.var() == pytest.approx(expected, rel=0.05)  # Poisson: variance = mean
    # the sampler alone, and Fourier binning keeping Poisson statistics
    rng = np.random.default_rng(0)
    fine = poisson_counts(np.ones((256, 256)), 7.0, rng)
    assert fine.mean() == pytest.approx(7.0, rel=0.01) and fine.var() == pytest.approx(7.0, rel=0.03)
    binned = fourier_bin_2d(fine, (128, 128))
    assert binned.mean() == pytest.approx(28.0, rel=0.01) and binned.var() == pytest.approx(28.0, rel=0.05)


# --------------------------------------------------------------------------- ci preset, files, determinism


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ci_a")
    rc = main(["simulate", "--preset", "ci", "-o", str(out), "--seed", "7", "--hand", "-1"])
    assert rc == 0
    return out


def test_ci_preset_outputs_and_ground_truth(ci_run):
    out = ci_run
    summ = json.loads((out / "summary.json").read_text())
    assert summ["true_hand"] == -1 and summ["seed"] == 7 and summ["preset"] == "ci"
    with mrcfile.open(out / "sim.mrc") as m:
        assert m.data.shape == (48, 128, 128) and m.voxel_size.x == pytest.approx(10.0)
    with mrcfile.open(out / "sim_ts.mrc") as m:
        assert m.data.shape[0] == 31
    parts = starfile.read(out / "particles.star")
    assert len(parts) == 10 and parts.tmIsDecoy.sum() == 2 and (parts.tmTrueHand == -1).all()
    # RELION centred coordinates and voxel indices agree (centre n//2, voxel 10 A)
    assert np.allclose(parts.rlnCenteredCoordinateXAngst, (parts.tmVoxelIndexX - 64) * 10.0, atol=1e-3)
    assert np.allclose(parts.rlnCenteredCoordinateZAngst, (parts.tmVoxelIndexZ - 24) * 10.0, atol=1e-3)
    # metadata round trip through the package readers
    from tomomatch.metadata import read_imod_defocus, read_relion5, read_tilt_angles

    ts = read_relion5(out / "tomograms.star")
    assert ts.hand == -1 and ts.n_tilts == 31
    assert np.allclose(read_tilt_angles(out / "sim.rawtlt"), ts.tilt_angles_deg)
    assert np.allclose(ts.defocus_um, summ["per_tilt"]["defocus_u_um"], atol=1e-4)
    assert read_imod_defocus(out / "sim.defocus") is not None
    # particles are dark in the tomogram: mean value at true centres below the volume mean
    with mrcfile.open(out / "sim.mrc") as m:
        tomo = np.asarray(m.data)
    sm = ndimage.uniform_filter(tomo, 5)
    ix = parts[parts.tmIsDecoy == 0][["tmVoxelIndexZ", "tmVoxelIndexY", "tmVoxelIndexX"]].round().astype(int).values
    vals = sm[ix[:, 0], ix[:, 1], ix[:, 2]]
    assert np.mean(vals) < tomo.mean() - 2 * sm.std()
    # template is dark and the mask is in [0, 1] with the same box
    tpl = mrcfile.read(out / "template.mrc")
    msk = mrcfile.read(out / "mask.mrc")
    assert tpl.shape == msk.shape and tpl.min() < 0 and tpl.max() <= 1e-6
    assert msk.max() == pytest.approx(1.0) and msk.min() >= 0
    # the soft edge fits inside the box, so the matcher's spherical-mask fast path applies
    from tomomatch.mask import is_spherical

    assert is_spherical(msk)


def test_same_seed_gives_byte_identical_outputs(ci_run, tmp_path):
    res = simulate("ci", out_dir=tmp_path, seed=7, hand=-1)
    files = sorted(p.relative_to(ci_run) for p in ci_run.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for f in files:
        a, b = (ci_run / f).read_bytes(), (tmp_path / f).read_bytes()
        if f.name == "summary.json":
            ja, jb = json.loads(a), json.loads(b)
            for j in (ja, jb):
                j.pop("timings"), j.pop("peak_memory_gb")
            assert ja == jb
        else:
            assert a == b, f
    assert res.summary["timings"]["total_s"] < 60


def test_different_seed_changes_outputs(ci_run):
    res = simulate("ci", write=False, seed=8, hand=-1)
    assert not np.array_equal(res.tomogram, mrcfile.read(ci_run / "sim.mrc"))


# --------------------------------------------------------------------------- bad input


def _cli_error(capsys, tmp_path, *extra):
    rc = main(["simulate", "-o", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_inputs_exit_2_with_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.pdb"
    bad.write_text("this is not a PDB file\x00\x01\n")
    cases = [
        ("--preset", "huge"),
        ("--structure", str(bad)),
        ("--structure", str(tmp_path / "missing.cif")),
        ("--n-particles", "5000"),
        ("--tilt-range", "-95", "60"),
        ("--thickness-nm", "5"),
    ]
    for extra in cases:
        rc, err = _cli_error(capsys, tmp_path, *extra)
        assert rc == 2, (extra, err)
        assert len(err.splitlines()) == 1 and "error" in err, (extra, err)
    assert not (tmp_path / "out" / "sim.mrc").exists()


# --------------------------------------------------------------------------- other structure sources


def test_density_map_structure_through_cli(tmp_path):
    from tomomatch.mrcio import write_volume

    m = tmp_path / "blob.mrc"
    write_volume(m, phantom_density(5.0, box_size=48, diameter_angstrom=180.0), 5.0)
    out = tmp_path / "o"
    rc = main(
        [
            "simulate",
            "--preset",
            "custom",
            "-o",
            str(out),
            "--structure",
            str(m),
            "--n-particles",
            "2",
            "--size",
            "64",
            "64",
            "32",
            "--voxel-size",
            "10",
            "--tilt-range",
            "-50",
            "50",
            "--tilt-step",
            "10",
            "--thickness-nm",
            "30",
            "--hand",
            "0",
        ]
    )
    assert rc == 0
    summ = json.loads((out / "summary.json").read_text())
    assert summ["structures"][0]["source"] == str(m) and summ["true_hand"] == 0
    assert summ["rlnTomoHand_written"] == 1
    parts = starfile.read(out / "particles.star")
    assert (parts.tmTrueHand == 0).all()
    tpl = mrcfile.read(out / "template.mrc")
    # the written template is the inverted map at 10 A: compare with the phantom evaluated there
    ref = -phantom_density(10.0, box_size=tpl.shape[0], diameter_angstrom=180.0)
    assert _cc(tpl, ref) > 0.95


DATA = (shared_data_dir() or Path("missing-shared-data")) / "structures"


@pytest.mark.skipif(not (DATA / "6z6u.pdb.gz").exists(), reason="shared data not available")
def test_atomic_model_structure(tmp_path):
    res = simulate(
        "custom",
        out_dir=tmp_path,
        structure=str(DATA / "6z6u.pdb.gz"),
        n_particles=2,
        tomogram_size_xyz=(64, 64, 32),
        voxel_size_angstrom=10.0,
        tilt_min_deg=-50,
        tilt_max_deg=50,
        tilt_step_deg=10,
        thickness_nm=30.0,
    )
    s = res.summary["structures"][0]
    assert s["name"] == "6z6u.pdb.gz" and 55 < s["radius_angstrom"] < 90  # apoferritin, 124 A across
    tpl = mrcfile.read(tmp_path / "template.mrc")
    assert tpl.min() < 0 and tpl.max() <= 1e-3 * abs(tpl.min())


def test_written_template_poses_and_positions_match_the_tomogram(ci_run):
    """Cut each true particle out of the written tomogram and correlate it with the written
    (dark) template rotated by the written RELION angles, low-passed to the first CTF lobe and
    restricted to the missing wedge: true poses correlate positively and much better than
    random poses."""
    out = ci_run
    tomo = mrcfile.read(out / "sim.mrc").astype(np.float64)
    tpl = mrcfile.read(out / "template.mrc").astype(np.float64)
    msk = mrcfile.read(out / "mask.mrc").astype(np.float64)
    parts = starfile.read(out / "particles.star")
    parts = parts[parts.tmIsDecoy == 0]
    n = tpl.shape[0]
    c = n // 2
    pad = np.pad(tomo, n, mode="constant", constant_values=tomo.mean())
    k = np.sqrt(sum(f**2 for f in np.meshgrid(*[np.fft.fftfreq(n)] * 3, indexing="ij")))
    kz, _, kx = np.meshgrid(*[np.fft.fftfreq(n)] * 3, indexing="ij")
    filt = (np.abs(kz) <= np.abs(kx) * math.tan(math.radians(60)) + 1e-9) * (k < 0.4) * (k > 0.02)
    g = np.arange(n) - c
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([xx, yy, zz], -1)

    def rotated(R):
        q = pts @ R  # rows: R^T r, as (x, y, z)
        t = ndimage.map_coordinates(tpl, [q[..., 2] + c, q[..., 1] + c, q[..., 0] + c], order=1)
        return np.fft.ifftn(np.fft.fftn(t) * filt).real

    def score(box, ref):
        m = msk > 0.5
        return _cc(box[m], ref[m])

    rng = np.random.default_rng(0)
    true_cc, rand_cc = [], []
    for _, p in parts.iterrows():
        i = np.round([p.tmVoxelIndexZ, p.tmVoxelIndexY, p.tmVoxelIndexX]).astype(int) + n
        box = pad[i[0] - c : i[0] - c + n, i[1] - c : i[1] - c + n, i[2] - c : i[2] - c + n]
        box = np.fft.ifftn(np.fft.fftn(box) * filt).real
        R = relion_to_matrix([p.rlnAngleRot, p.rlnAngleTilt, p.rlnAnglePsi])
        true_cc.append(score(box, rotated(R)))
        rand_cc.append(score(box, rotated(Rotation.random(random_state=rng).as_matrix())))
    assert np.mean(true_cc) > 0.12  # positive: the template is dark like the tomogram
    assert np.mean(true_cc) > np.mean(rand_cc) + 0.06
    assert np.mean(np.array(true_cc) > np.array(rand_cc)) >= 0.75


def test_slab_offset_and_noise_free_tomogram(tmp_path):
    res = simulate(
        "custom",
        out_dir=tmp_path,
        n_particles=3,
        phantom_diameter_angstrom=150.0,
        tomogram_size_xyz=(64, 64, 48),
        voxel_size_angstrom=10.0,
        thickness_nm=20.0,
        slab_offset_nm=10.0,
        tilt_step_deg=6,
        write_noise_free=True,
        seed=2,
    )
    z = res.particles.rlnCenteredCoordinateZAngst.to_numpy()
    r = res.summary["structures"][0]["radius_angstrom"]
    assert np.all(z >= 100 - 100 + r - 1e-6) and np.all(z <= 100 + 100 - r + 1e-6)
    nf = mrcfile.read(tmp_path / "sim_noisefree.mrc")
    noisy = mrcfile.read(tmp_path / "sim.mrc")
    assert nf.shape == noisy.shape
    assert _cc(ndimage.gaussian_filter(nf, 2), ndimage.gaussian_filter(noisy, 2)) > 0.25
    ix = res.particles[["tmVoxelIndexZ", "tmVoxelIndexY", "tmVoxelIndexX"]].round().astype(int).to_numpy()
    sm = ndimage.uniform_filter(nf, 5)
    assert np.all(sm[ix[:, 0], ix[:, 1], ix[:, 2]] < nf.mean() - 2 * sm.std())
    with pytest.raises(Exception):
        simulate("custom", write=False, slab_offset_nm=100.0)


# --------------------------------------------------------------------------- lamella preset, angle files, RELION hand


def test_lamella_preset_is_asymmetric_thick_and_dose_symmetric():
    cfg = preset_config("lamella")
    assert (cfg.tilt_min_deg, cfg.tilt_max_deg, cfg.tilt_step_deg) == (-40.0, 60.0, 2.0)
    assert 150.0 <= cfg.thickness_nm <= 200.0
    assert cfg.tomogram_size_xyz[2] * cfg.voxel_size_angstrom / 10.0 >= cfg.thickness_nm  # slab fits in z
    angles, acq = tilt_scheme(
        cfg.tilt_min_deg, cfg.tilt_max_deg, cfg.tilt_step_deg, cfg.tilt_order, cfg.dose_symmetric_group
    )
    assert angles[0] == -40 and angles[-1] == 60 and len(angles) == 51
    taken = angles[np.argsort(acq)]
    # Hagen from 0 in groups of 2 until -40 is reached, then the rest of the positive side outward
    assert taken[:7].tolist() == [0, 2, 4, -2, -4, 6, 8]
    assert taken[-10:].tolist() == list(range(42, 61, 2))
    assert cfg.tilt_order == "dose-symmetric" and cfg.n_particles >= 20


def _star_loops(path):
    """Plain-text STAR reader: {block name: (column names, rows of string fields)} (no starfile)."""
    blocks, name, cols, rows = {}, None, None, None
    for line in Path(path).read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("data_"):
            name, cols, rows = s[5:], [], []
            blocks[name] = (cols, rows)
        elif s == "loop_":
            continue
        elif s.startswith("_"):
            cols.append(s.split()[0][1:])
        else:
            rows.append(s.split())
    return blocks


@pytest.mark.parametrize("hand", [1, -1, 0])
def test_written_angle_files_have_imod_sign_and_star_has_true_hand(tmp_path, hand):
    """The lamella's asymmetric range makes a negation visible: .rawtlt/.tlt hold -40..+60 as
    simulated (not +40..-60), the RELION 5 STAR files the same angles, the dose on the right
    tilt and rlnTomoHand = the true hand (+1 for h = 0); and the written images agree with the
    angle files: a particle at z = +300 A, x = 0 projects to x' = +z sin t (IMOD, RELION 5)."""
    from tomomatch.metadata import read_relion5, read_tilt_angles

    z = 300.0
    res = simulate(
        "lamella",
        out_dir=tmp_path,
        hand=hand,
        **_quiet(
            n_particles=1,
            particle_positions_angstrom=[[0.0, 0.0, z]],
            particle_angles_relion_deg=[[0, 0, 0]],
            tomogram_size_xyz=(64, 32, 80),
            thickness_nm=70.0,
            phantom_diameter_angstrom=120.0,
            apply_ctf=False,
        ),
    )
    angles = np.asarray(res.summary["per_tilt"]["tilt_angle_deg"])
    assert angles[0] == -40 and angles[-1] == 60 and len(angles) == 51
    assert np.array_equal(angles, res.tilt_series.tilt_angles_deg)
    pre = np.asarray(res.summary["per_tilt"]["pre_exposure_e_per_A2"])
    assert np.argmax(pre) == len(angles) - 1  # +60 is taken last (dose-symmetric from 0)
    h_written = hand if hand != 0 else 1
    assert res.summary["true_hand"] == hand and res.summary["rlnTomoHand_written"] == h_written

    # angle files: tomomatch's reader and plain text agree with the simulated angles, no negation
    for suffix in ("rawtlt", "tlt"):
        f = tmp_path / f"sim.{suffix}"
        assert res.paths[suffix] == f
        assert np.array_equal(read_tilt_angles(f), angles)
        assert [float(s) for s in f.read_text().split()] == angles.tolist()

    # RELION 5 STAR through the package reader
    ts = read_relion5(tmp_path / "tomograms.star")
    assert ts.hand == h_written
    assert np.array_equal(ts.tilt_angles_deg, angles)
    assert np.allclose(ts.accumulated_dose, pre, atol=1e-5)
    assert np.allclose(ts.defocus_um, res.tilt_series.defocus_um, atol=1e-5)
    # ... and as plain text
    glob_cols, glob_rows = _star_loops(tmp_path / "tomograms.star")["global"]
    assert len(glob_rows) == 1 and float(glob_rows[0][glob_cols.index("rlnTomoHand")]) == h_written
    assert glob_rows[0][glob_cols.index("rlnTomoTiltSeriesStarFile")] == "tilt_series/sim.star"
    first = (tmp_path / "tomograms.star").read_text().splitlines()[0]
    assert f"rlnTomoHand = true hand {hand}" in first and (("written as +1" in first) == (hand == 0))
    ts_cols, ts_rows = _star_loops(tmp_path / "tilt_series" / "sim.star")["sim"]
    col = {
        c: np.array([float(r[ts_cols.index(c)]) for r in ts_rows])
        for c in ("rlnTomoYTilt", "rlnTomoNominalStageTiltAngle", "rlnMicrographPreExposure", "rlnTomoXTilt")
    }
    assert np.array_equal(col["rlnTomoYTilt"], angles) and np.array_equal(col["rlnTomoNominalStageTiltAngle"], angles)
    assert np.allclose(col["rlnMicrographPreExposure"], pre, atol=1e-5) and np.all(col["rlnTomoXTilt"] == 0)

    # the images agree with the angle files (not with their negation)
    with mrcfile.open(tmp_path / "sim_ts.mrc") as m:
        stack = np.asarray(m.data, dtype=np.float64)
    file_angles = read_tilt_angles(tmp_path / "sim.rawtlt")
    v, cx = 10.0, 64 // 2
    for i in (0, len(file_angles) - 1, int(np.argmin(np.abs(file_angles - 30)))):
        prof = ndimage.gaussian_filter1d(stack[i].mean() - stack[i].mean(axis=0), 2.0)  # dark -> positive
        expect = cx + z * math.sin(math.radians(file_angles[i])) / v
        assert abs(np.argmax(prof) - expect) <= 1.5, (file_angles[i], np.argmax(prof), expect)
        assert abs(np.argmax(prof) - (cx - z * math.sin(math.radians(file_angles[i])) / v)) > 10
