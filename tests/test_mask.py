"""Masks against analytic values; is_spherical; the mask CLI."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pytest

from tomomatch.cli import main
from tomomatch.mask import ellipsoid_mask, is_spherical, spherical_mask


@pytest.mark.parametrize("n", [32, 33])
def test_sphere_hard_radius_and_centre(n):
    r = 9.0
    m = spherical_mask(n, r)
    c = n // 2
    assert m.dtype == np.float32 and m.shape == (n, n, n)
    assert set(np.unique(m)) == {0.0, 1.0}
    # on-axis points: inside up to r, outside from r + 1 (x, y and z axes)
    assert m[c, c, c + 9] == 1 and m[c, c, c + 10] == 0
    assert m[c, c - 9, c] == 1 and m[c, c - 10, c] == 0
    assert m[c + 9, c, c] == 1 and m[c + 10, c, c] == 0
    # diagonal point (6, 6, 3): distance exactly 9 -> inside; (6, 6, 4): 9.38 -> outside
    assert m[c + 3, c + 6, c + 6] == 1 and m[c + 4, c + 6, c + 6] == 0
    # volume close to the continuous sphere
    assert abs(m.sum() / (4 / 3 * math.pi * r**3) - 1) < 0.03
    # centre of mass at n // 2
    com = [(g * m).sum() / m.sum() for g in np.indices(m.shape)]
    np.testing.assert_allclose(com, [c, c, c], atol=1e-9)


def test_sphere_soft_edge_values():
    n, r, s = 40, 8.0, 2.0
    m = spherical_mask(n, r, s)
    c = n // 2
    assert m.min() >= 0 and m.max() <= 1
    assert m[c, c, c + 8] == pytest.approx(1.0)
    assert m[c, c, c + 10] == pytest.approx(math.exp(-0.5), rel=1e-6)  # r + sigma
    assert m[c, c + 12, c] == pytest.approx(math.exp(-2.0), rel=1e-6)  # r + 2 sigma
    assert m[c - 14, c, c] == pytest.approx(math.exp(-4.5), rel=1e-6)  # r + 3 sigma (kept)
    assert m[c - 15, c, c] == 0.0  # beyond 3 sigma
    # off-axis: point (3, 4, 12) has distance 13 -> 2.5 sigma outside
    assert m[c + 12, c + 4, c + 3] == pytest.approx(math.exp(-0.5 * 2.5**2), rel=1e-6)


def test_sphere_custom_centre_is_xyz():
    m = spherical_mask((20, 30, 40), 3.0, centre=(30, 10, 5))  # x, y, z
    zz, yy, xx = np.nonzero(m)
    assert (xx.mean(), yy.mean(), zz.mean()) == pytest.approx((30, 10, 5))


def test_ellipsoid_axes_and_edge():
    n, rx, ry, rz, s = 48, 12.0, 8.0, 5.0, 1.5
    m = ellipsoid_mask(n, (rx, ry, rz))
    c = n // 2
    assert m[c, c, c + 12] == 1 and m[c, c, c + 13] == 0
    assert m[c, c + 8, c] == 1 and m[c, c + 9, c] == 0
    assert m[c + 5, c, c] == 1 and m[c + 6, c, c] == 0
    assert abs(m.sum() / (4 / 3 * math.pi * rx * ry * rz) - 1) < 0.04
    soft = ellipsoid_mask(n, (rx, ry, rz), s)
    e = math.exp(-0.5)
    # 13.5 = rx + sigma etc. is not on the grid; use sigma 1 and 2 for exact points
    soft1 = ellipsoid_mask(n, (rx, ry, rz), 1.0)
    assert soft1[c, c, c + 13] == pytest.approx(e, rel=1e-6)
    assert soft1[c, c - 9, c] == pytest.approx(e, rel=1e-6)
    assert soft1[c + 6, c, c] == pytest.approx(e, rel=1e-6)
    assert np.all(soft >= m) and soft.max() == 1.0
    # equal radii give the sphere
    np.testing.assert_array_equal(ellipsoid_mask(n, (7, 7, 7), 2.0), spherical_mask(n, 7, 2.0))


@pytest.mark.parametrize("n", [24, 25])
def test_is_spherical(n):
    assert is_spherical(spherical_mask(n, 6, 1.5))
    assert is_spherical(spherical_mask(n, 6))
    assert not is_spherical(ellipsoid_mask(n, (6, 6, 5), 1.0))
    c = n // 2
    assert not is_spherical(spherical_mask(n, 6, centre=(c + 1, c, c)))  # off-centre
    assert not is_spherical(spherical_mask(n, n / 2 + 2))  # cut by the box edge
    assert not is_spherical(np.ones((n, n, n), np.float32))
    bumped = spherical_mask(n, 6, 1.5)
    bumped[c, c, c + 3] = 0.5  # one voxel changed
    assert not is_spherical(bumped)
    assert is_spherical(np.zeros((n, n, n)))


def test_bad_radius_and_sigma():
    from tomomatch.errors import InputError

    with pytest.raises(InputError):
        spherical_mask(16, 0)
    with pytest.raises(InputError):
        spherical_mask(16, 4, -1)
    with pytest.raises(InputError):
        ellipsoid_mask(16, (4, 4))


def test_cli_mask_sphere_and_header(tmp_path):
    out = tmp_path / "m.mrc"
    assert main(["mask", "-o", str(out), "-b", "32", "--voxel-size", "8.56", "--radius", "10", "--sigma", "1"]) == 0
    with mrcfile.open(out) as f:
        assert f.voxel_size.x == pytest.approx(8.56, rel=1e-6)
        np.testing.assert_allclose(f.data, spherical_mask(32, 10, 1))


def test_cli_mask_angstrom_units(tmp_path):
    out = tmp_path / "m.mrc"
    assert (
        main(
            [
                "mask",
                "-o",
                str(out),
                "-b",
                "30",
                "--voxel-size",
                "5",
                "--radius-angstrom",
                "50",
                "--sigma-angstrom",
                "10",
            ]
        )
        == 0
    )
    with mrcfile.open(out) as f:
        np.testing.assert_allclose(f.data, spherical_mask(30, 10, 2))
    out2 = tmp_path / "e.mrc"
    assert main(["mask", "-o", str(out2), "-b", "30", "--voxel-size", "5", "--radii-angstrom", "50", "40", "30"]) == 0
    with mrcfile.open(out2) as f:
        np.testing.assert_allclose(f.data, ellipsoid_mask(30, (10, 8, 6)))


def test_cli_mask_bad_input(tmp_path, capsys):
    out = tmp_path / "m.mrc"
    assert main(["mask", "-o", str(out), "-b", "0", "--voxel-size", "5", "--radius", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "box size" in err
    assert main(["mask", "-o", str(out), "-b", "16", "--voxel-size", "0", "--radius", "3"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()
