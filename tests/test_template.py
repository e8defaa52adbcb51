"""Templates: model -> potential map, Fourier resampling, low-pass, boxing, mirror, invert, CLI."""

from __future__ import annotations

import time
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
import pytest

from tomomatch.shared_data import shared_data_dir
from scipy import ndimage

from tomomatch.cli import main
from tomomatch.errors import InputError
from tomomatch.mrcio import write_volume
from tomomatch.template import (
    MOTT_BETHE_VOLT_ANGSTROM2,
    create_template,
    density_from_model,
    fourier_shift,
    low_pass,
    mirror_x,
    pad_or_crop,
    resample_fourier,
)

DATA = shared_data_dir() or Path("missing-shared-data")
RIBOSOME = DATA / "structures" / "4v5d.cif.gz"


def gaussian(shape, centre_xyz, sigma, amp=1.0):
    z, y, x = np.indices(shape, dtype=float)
    cx, cy, cz = centre_xyz
    return amp * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))


def com(vol):
    w = np.clip(vol, 0, None)
    return np.array([(g * w).sum() / w.sum() for g in np.indices(vol.shape)])[::-1]  # x, y, z


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("n", [40, 41])
def test_resample_round_trip_gaussian(n):
    c = n // 2
    vol = gaussian((n, n, n), (c + 1.3, c - 2.1, c + 0.7), sigma=4.0)
    down = resample_fourier(vol, 2.0, 4.0)
    assert down.shape == (round(n / 2),) * 3
    # the coarse grid samples the same blob: centre n//2 <-> n_out//2
    m = down.shape[0]
    ref = gaussian(down.shape, (m // 2 + 0.65, m // 2 - 1.05, m // 2 + 0.35), sigma=2.0)
    assert np.abs(down - ref).max() < 1e-4 * ref.max()
    if n % 2 == 0:  # same field of view: up again gives the original
        back = resample_fourier(down, 4.0, 2.0)
        assert back.shape == vol.shape
        assert np.abs(back - vol).max() < 1e-4 * vol.max()


def test_resample_matches_numpy_fourier_crop_odd():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(45, 45, 45))
    out = resample_fourier(vol, 1.0, 3.0)
    assert out.shape == (15, 15, 15)
    # independent reference: numpy FFT, keep |k| <= 7, inverse on 15 points. Output index
    # 7 (= 15 // 2) must sit on input index 22 (= 45 // 2) = 3 * 7 + 1, so shift by 1 first.
    f = np.fft.fftn(np.roll(vol, -1, axis=(0, 1, 2)))
    keep = np.r_[0:8, -7:0]
    ref = np.fft.ifftn(f[np.ix_(keep, keep, keep)]).real * (15**3 / 45**3)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_resample_band_limited_non_integer_ratio():
    # periodic band-limited signal on a 36-voxel, 2.0 A grid; resample to 3.1 A (not an
    # integer ratio): the output must equal the analytic signal at the new sample points.
    n, vin, vout = 36, 2.0, 3.1
    L = n * vin

    def signal(x, y, z):
        return (
            1.5
            + np.cos(2 * np.pi * 2 * x / L + 0.3) * np.sin(2 * np.pi * 1 * y / L)
            + 0.5 * np.cos(2 * np.pi * (3 * z + x) / L - 1.0)
        )

    idx = (np.arange(n) - n // 2) * vin
    vol = signal(idx[None, None, :], idx[None, :, None], idx[:, None, None])
    out = resample_fourier(vol, vin, vout)
    m = out.shape[0]
    assert m == round(n * vin / vout)
    o = (np.arange(m) - m // 2) * vout
    ref = signal(o[None, None, :], o[None, :, None], o[:, None, None])
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_resample_preserves_constant_and_identity():
    vol = np.full((10, 11, 12), 3.25)
    out = resample_fourier(vol, 1.0, 1.7)
    np.testing.assert_allclose(out, 3.25, rtol=1e-5)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 9, 10)).astype(np.float32)
    np.testing.assert_array_equal(resample_fourier(x, 2.0, 2.0), x)


def test_fourier_shift_moves_centre_of_mass():
    vol = gaussian((32, 32, 32), (14.0, 16.0, 17.0), 2.5)
    out = fourier_shift(vol, (1.5, -0.25, 2.0))
    np.testing.assert_allclose(com(out), (15.5, 15.75, 19.0), atol=1e-4)
    np.testing.assert_array_equal(
        fourier_shift(vol, (2, 0, -1)), np.roll(vol, (-1, 0, 2), axis=(0, 1, 2)).astype(np.float32)
    )


def test_low_pass_transfer():
    n, v = 40, 2.0
    L = n * v
    x = (np.arange(n) * v)[None, None, :]
    res = 10.0  # fc = 0.1 / A, edge 0.09..0.11
    for cycles, expected in [(2, 1.0), (4, 1.0), (8, 0.5), (10, 0.0)]:  # f = cycles / 80 A
        wave = np.broadcast_to(np.cos(2 * np.pi * cycles * x / L), (n, n, n))
        out = low_pass(wave, v, res)
        np.testing.assert_allclose(out, expected * wave, atol=1e-5)


def test_pad_or_crop_keeps_centre():
    for n, b in [(10, 15), (11, 16), (16, 9), (15, 8)]:
        vol = np.zeros((n, n, n), np.float32)
        vol[n // 2, n // 2, n // 2] = 1
        out = pad_or_crop(vol, b)
        assert out.shape == (b, b, b)
        assert out[b // 2, b // 2, b // 2] == 1 and out.sum() == 1


# --------------------------------------------------------------------------- chiral object


def chiral_object(n=32):
    """Four labelled blobs (distinct amplitudes) at the corners of an irregular tetrahedron."""
    c = n // 2
    pos = [(c - 6, c - 5, c - 4), (c + 7, c - 4, c - 3), (c - 2, c + 8, c - 2), (c + 1, c + 1, c + 7)]
    amps = [1.0, 2.0, 3.0, 4.0]
    vol = sum(gaussian((n, n, n), p, 1.5, a) for p, a in zip(pos, amps))
    return vol.astype(np.float32)


def labelled_centroids(vol):
    lab, k = ndimage.label(vol > 0.3)
    assert k == 4
    peaks = ndimage.maximum(vol, lab, range(1, 5))
    order = np.argsort(peaks)  # label by amplitude 1 < 2 < 3 < 4
    cents = ndimage.center_of_mass(vol, lab, [int(i) + 1 for i in order])
    return np.array([c[::-1] for c in cents])  # x, y, z


def handedness(vol):
    p = labelled_centroids(vol)
    return np.linalg.det(np.stack([p[1] - p[0], p[2] - p[0], p[3] - p[0]]))


def test_mirror_changes_hand_and_keeps_centre():
    vol = chiral_object()
    mir = mirror_x(vol)
    assert handedness(vol) * handedness(mir) < 0
    # mirror along x about n//2: x -> 2 c - x, y and z unchanged
    p, q = labelled_centroids(vol), labelled_centroids(mir)
    np.testing.assert_allclose(q[:, 0], 2 * 16 - p[:, 0], atol=1e-6)
    np.testing.assert_allclose(q[:, 1:], p[:, 1:], atol=1e-6)
    # a proper rotation (90 deg about z) keeps the hand
    rot = np.rot90(vol, 1, axes=(1, 2))
    assert handedness(rot) * handedness(vol) > 0
    odd = chiral_object(33)
    assert handedness(odd) * handedness(mirror_x(odd)) < 0


def test_create_template_mirror_invert_from_map(tmp_path):
    vol = chiral_object()
    path = tmp_path / "chiral.mrc"
    write_volume(path, vol, 4.0)
    plain, v = create_template(path, 4.0, recentre=False)
    assert v == 4.0
    np.testing.assert_allclose(plain, vol, atol=1e-6)
    mir, _ = create_template(path, 4.0, mirror=True, recentre=False)
    assert handedness(mir) * handedness(plain) < 0
    inv, _ = create_template(path, 4.0, invert=True, mirror=True, recentre=False)
    np.testing.assert_array_equal(inv, -mir)


def test_create_template_recentres_resamples_and_boxes(tmp_path):
    vol = gaussian((40, 40, 40), (24.0, 17.5, 15.0), 3.0) + gaussian((40, 40, 40), (20, 21, 22), 2.0, 0.5)
    path = tmp_path / "offc.mrc"
    write_volume(path, vol, 2.0)
    t, v = create_template(path, 4.0, box_size=24)
    assert t.shape == (24, 24, 24) and v == 4.0
    np.testing.assert_allclose(com(t), (12, 12, 12), atol=0.02)
    # resampling keeps values, so the integral (sum * voxel^3) is preserved
    assert t.sum() * 4.0**3 == pytest.approx(vol.sum() * 2.0**3, rel=1e-3)
    # a dark-on-light (negative) map is centred on its negative density
    neg = tmp_path / "neg.mrc"
    write_volume(neg, -vol, 2.0)
    tn, _ = create_template(neg, 4.0, box_size=24)
    np.testing.assert_allclose(com(-tn), (12, 12, 12), atol=0.02)
    np.testing.assert_allclose(tn, -t, atol=1e-5)


# --------------------------------------------------------------------------- atomic models


def write_pdb(path, atoms, cryst="CRYST1   20.000   20.000   20.000  90.00  90.00  90.00 P 21 21 21    4"):
    lines = [cryst]
    for i, (el, (x, y, z)) in enumerate(atoms, 1):
        lines.append(f"ATOM  {i:5d}  {el:<3s} ALA A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00          {el:>2s}")
    lines.append("END")
    Path(path).write_text("\n".join(lines) + "\n")


def test_model_density_peaks_where_atoms_are(tmp_path):
    # three carbons; their mean (4, 6, 0) A goes to the box centre; offsets at 2 A voxels:
    # (-2, -3, 0), (4, -3, 0), (-2, 6, 0) voxels. The CRYST1 cell is tiny and P212121: if the
    # crystal symmetry/cell were used, images would wrap in and the integral would be 4x.
    path = tmp_path / "tiny.pdb"
    write_pdb(path, [("C", (0, 0, 0)), ("C", (12, 0, 0)), ("C", (0, 18, 0))])
    v = 2.0
    vol = density_from_model(path, v)
    n = vol.shape[0]
    c = n // 2
    assert vol.dtype == np.float32 and vol.min() >= 0
    peaks = ndimage.maximum_filter(vol, size=3) == vol
    zz, yy, xx = np.nonzero(peaks & (vol > 0.2 * vol.max()))
    found = sorted(zip(xx - c, yy - c, zz - c))
    assert found == sorted([(-2, -3, 0), (4, -3, 0), (-2, 6, 0)])
    np.testing.assert_allclose(com(vol), (c, c, c), atol=0.02)
    f0 = sum(gemmi.Element("C").c4322.get_coefs()[:5])
    assert vol.sum() * v**3 == pytest.approx(3 * f0 * MOTT_BETHE_VOLT_ANGSTROM2, rel=0.02)
    # extent: nothing beyond a few sigma of the atoms (atoms span 6 x 9 voxels)
    sup = np.nonzero(vol > 0.01 * vol.max())
    assert (sup[2].max() - sup[2].min()) < 6 + 6 and (sup[1].max() - sup[1].min()) < 9 + 6


def test_model_density_scattering_weighted_centre_and_box(tmp_path):
    # a P (f0 ~ 5.5) and a C (f0 ~ 2.5): the centre is the f0-weighted mean, not the midpoint
    path = tmp_path / "pc.pdb"
    write_pdb(path, [("P", (0, 0, 0)), ("C", (20, 0, 0))])
    v = 2.0
    vol = density_from_model(path, v, box_size=31)
    assert vol.shape == (31, 31, 31)
    fp = sum(gemmi.Element("P").c4322.get_coefs()[:5])
    fc = sum(gemmi.Element("C").c4322.get_coefs()[:5])
    xc = 20 * fc / (fp + fc)
    c = 15
    x = com(vol)[0]
    assert x == pytest.approx(c, abs=0.02)
    px = np.unravel_index(np.argmax(vol), vol.shape)[2]
    assert px == round(c - xc / v)
    with pytest.raises(InputError, match="smaller than the model"):
        density_from_model(path, v, box_size=8)


def test_model_density_blur_and_resolution_options(tmp_path):
    path = tmp_path / "one.pdb"
    write_pdb(path, [("C", (0, 0, 0))])
    sharp = density_from_model(path, 1.0, box_size=24, blur_angstrom2=0)
    blurred = density_from_model(path, 1.0, box_size=24, blur_angstrom2=200)
    assert blurred.max() < sharp.max()
    np.testing.assert_allclose(sharp.sum(), blurred.sum(), rtol=0.01)

    # variance of a Gaussian grows by B / (8 pi^2) per axis
    def var_x(vol):
        w = vol.sum(axis=(0, 1))
        x = np.arange(w.size) - 12
        return (w * x * x).sum() / w.sum()

    assert var_x(blurred) - var_x(sharp) == pytest.approx(200 / (8 * np.pi**2), rel=0.05)
    lp = density_from_model(path, 1.0, box_size=24, resolution_angstrom=8.0)
    assert lp.max() < density_from_model(path, 1.0, box_size=24).max()


@pytest.mark.skipif(not RIBOSOME.exists(), reason="shared data (4v5d) not available")
def test_ribosome_4v5d_at_10A():
    t0 = time.perf_counter()
    vol = density_from_model(RIBOSOME, 10.0)
    assert time.perf_counter() - t0 < 15
    n = vol.shape[0]
    assert vol.min() >= 0
    np.testing.assert_allclose(com(vol), (n // 2,) * 3, atol=0.05)
    sup = np.nonzero(vol > 0.05 * vol.max())
    extent = np.array([(s.max() - s.min() + 1) * 10.0 for s in sup])
    assert np.all(extent > 190) and np.all(extent < 300) and extent.max() > 240
    assert n * 10.0 >= extent.max()
    # integral independent of voxel size: 47.878 * sum f_e(0) over 148k atoms ~ 1.7e7 V A^3
    assert vol.sum() * 1000 / MOTT_BETHE_VOLT_ANGSTROM2 == pytest.approx(3.57e5, rel=0.05)
    with pytest.raises(InputError, match="smaller than the model"):
        density_from_model(RIBOSOME, 10.0, box_size=20)


# --------------------------------------------------------------------------- CLI


def test_cli_template_from_map_writes_voxel_size(tmp_path):
    src = tmp_path / "in.mrc"
    write_volume(src, gaussian((32, 32, 32), (16, 16, 16), 3.0), 2.0)
    out = tmp_path / "t.mrc"
    assert main(["template", "-i", str(src), "-o", str(out), "--voxel-size", "4", "-b", "20", "--invert"]) == 0
    with mrcfile.open(out) as f:
        assert f.voxel_size.x == pytest.approx(4.0) and f.voxel_size.z == pytest.approx(4.0)
        assert f.data.shape == (20, 20, 20)
        assert f.data.min() == pytest.approx(-1.0, rel=0.02)


def test_cli_template_from_model(tmp_path):
    src = tmp_path / "m.pdb"
    write_pdb(src, [("C", (0, 0, 0)), ("N", (5, 0, 0)), ("O", (0, 7, 0))])
    out = tmp_path / "t.mrc"
    assert main(["template", "-i", str(src), "-o", str(out), "--voxel-size", "1.5", "-b", "24", "--mirror"]) == 0
    with mrcfile.open(out) as f:
        assert f.voxel_size.x == pytest.approx(1.5)
        assert f.data.shape == (24, 24, 24) and f.data.min() >= 0


def test_cli_template_bad_inputs(tmp_path, capsys):
    def one_line_error(argv, *words):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        for w in words:
            assert w in err

    out = str(tmp_path / "t.mrc")
    one_line_error(["template", "-i", str(tmp_path / "nope.mrc"), "-o", out, "--voxel-size", "4"], "not found")
    one_line_error(["template", "-i", str(tmp_path / "nope.pdb"), "-o", out, "--voxel-size", "4"], "not found")
    junk = tmp_path / "junk.mrc"
    junk.write_text("this is not an MRC file\n" * 20)
    one_line_error(["template", "-i", str(junk), "-o", out, "--voxel-size", "4"], "MRC")
    junkpdb = tmp_path / "junk.cif"
    junkpdb.write_text("garbage\n")
    one_line_error(["template", "-i", str(junkpdb), "-o", out, "--voxel-size", "4"], "junk.cif")
    novs = tmp_path / "novs.mrc"
    with mrcfile.new(novs) as f:
        f.set_data(gaussian((16, 16, 16), (8, 8, 8), 2.0).astype(np.float32))
        f.voxel_size = 0
    one_line_error(["template", "-i", str(novs), "-o", out, "--voxel-size", "4"], "voxel size")
    # ... but an override makes it work
    assert main(["template", "-i", str(novs), "-o", out, "--voxel-size", "4", "--input-voxel-size", "4"]) == 0
    Path(out).unlink()
    big = tmp_path / "big.mrc"
    write_volume(big, gaussian((40, 40, 40), (20, 20, 20), 6.0), 2.0)
    one_line_error(["template", "-i", str(big), "-o", out, "--voxel-size", "2", "-b", "16"], "smaller than the object")
    pdb = tmp_path / "m.pdb"
    write_pdb(pdb, [("C", (0, 0, 0)), ("C", (40, 0, 0))])
    one_line_error(["template", "-i", str(pdb), "-o", out, "--voxel-size", "2", "-b", "10"], "smaller than the model")
    one_line_error(
        ["template", "-i", str(pdb), "-o", out, "--voxel-size", "2", "--input-voxel-size", "1"], "input voxel size"
    )
    one_line_error(["template", "-i", str(big), "-o", out, "--voxel-size", "-3"], "voxel size")
    assert not Path(out).exists()
