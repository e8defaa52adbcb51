"""Hand-computed checks of every convention in tomomatch.conventions (see docs/conventions.md)."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tomomatch import conventions as cv


@pytest.mark.parametrize("n, centre", [(100, 50), (101, 50), (1, 0), (2, 1), (74, 37), (75, 37)])
def test_centre_index_even_and_odd(n, centre):
    assert cv.centre_index(n) == centre


def test_index_to_centered_angstrom_hand_computed():
    shape_zyx = (10, 20, 31)  # z=10 -> centre 5, y=20 -> 10, x=31 -> 15
    assert np.allclose(cv.index_to_centered_angstrom((15, 10, 5), shape_zyx, 2.0), (0, 0, 0))
    assert np.allclose(cv.index_to_centered_angstrom((16, 0, 9), shape_zyx, 2.0), (2, -20, 8))
    back = cv.centered_angstrom_to_index((2, -20, 8), shape_zyx, 2.0)
    assert np.allclose(back, (16, 0, 9))


def test_relion5_centered_coordinates_hand_computed():
    # tomogram binned 8x from 4000 x 4000 x 2000 at 1.0 A: voxel 8 A, centre index 250, 250, 125
    c = cv.relion5_centered_angstrom((250, 250, 125), 8.0, (4000, 4000, 2000), 1.0)
    assert np.allclose(c, 0)
    c = cv.relion5_centered_angstrom((0, 10, 125.5), 8.0, (4000, 4000, 2000), 1.0)
    assert np.allclose(c, (-2000, -1920, 4))
    back = cv.relion5_centered_to_index((-2000, -1920, 4), 8.0, (4000, 4000, 2000), 1.0)
    assert np.allclose(back, (0, 10, 125.5))


def test_wavelength():
    assert cv.electron_wavelength_angstrom(300) == pytest.approx(0.019687, abs=2e-6)
    assert cv.electron_wavelength_angstrom(200) == pytest.approx(0.025079, abs=2e-6)


def test_tilt_geometry_hand_computed():
    # 30 degrees: beam b = (1/2, 0, sqrt(3)/2), image axis u = (sqrt(3)/2, 0, -1/2)
    r = cv.tilt_rotation(30.0)
    assert np.allclose(r @ [0, 0, 1], [0.5, 0, np.sqrt(3) / 2])
    assert np.allclose(r @ [1, 0, 0], [np.sqrt(3) / 2, 0, -0.5])
    assert np.allclose(r, Rotation.from_euler("y", 30, degrees=True).as_matrix())
    # a point at +x, tilted +90: projects onto the axis, sits 100 A deep
    assert cv.projected_x(100.0, 0.0, 90.0) == pytest.approx(0, abs=1e-9)
    assert cv.depth_along_beam(100.0, 0.0, 90.0) == pytest.approx(100.0)
    assert cv.projected_x(0.0, 100.0, 90.0) == pytest.approx(-100.0)
    assert cv.projected_x(100.0, 0.0, 60.0) == pytest.approx(50.0)


@pytest.mark.parametrize("hand, mode, x, z, tilt, expected", [
    # point at +x = 1000 A in the +30 degree tilt: sin 30 = 1/2
    (+1, "full", 1000, 0, 30, +500),
    (-1, "full", 1000, 0, 30, -500),
    (0, "full", 1000, 0, 30, 0),
    (+1, "pytom", 1000, 0, 30, +500),
    (-1, "pytom", 1000, 0, 30, -500),
    # the same point in the -30 degree tilt
    (+1, "full", 1000, 0, -30, -500),
    (-1, "full", 1000, 0, -30, +500),
    # point at z = +1000 A in the 60 degree tilt: cos 60 = 1/2. Full flips it, pytom does not.
    (+1, "full", 0, 1000, 60, +500),
    (-1, "full", 0, 1000, 60, -500),
    (+1, "pytom", 0, 1000, 60, +500),
    (-1, "pytom", 0, 1000, 60, +500),
    (0, "pytom", 0, 1000, 60, 0),
])
def test_defocus_offset_signs(hand, mode, x, z, tilt, expected):
    assert cv.defocus_offset_angstrom(x, z, tilt, hand, mode) == pytest.approx(expected)


def test_defocus_at_point_units():
    # 3 um + 500 A = 3.05 um (positive = more underfocus)
    assert cv.defocus_at_point_um(3.0, 1000, 0, 30, +1) == pytest.approx(3.05)
    assert cv.defocus_at_point_um(3.0, 1000, 0, 30, -1) == pytest.approx(2.95)
    with pytest.raises(ValueError):
        cv.defocus_offset_angstrom(1, 1, 1, 2)


def test_hand_mappings():
    assert cv.hand_from_relion(-1.0) == -1
    assert cv.hand_from_relion(1) == 1
    assert cv.hand_from_warp(False) == -1
    assert cv.hand_from_warp(True) == 1
    assert np.allclose(cv.warp_tilt_angles_to_internal([-60, 3]), [60, -3])


def test_relion_euler_hand_computed():
    # rot = 90: R = Rz(90)^T, so template +x goes to particle -y
    m = cv.relion_to_matrix([90, 0, 0])
    assert np.allclose(m, [[0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    # tilt = 90: R = Ry(90)^T
    m = cv.relion_to_matrix([0, 90, 0])
    assert np.allclose(m, [[0, 0, -1], [0, 1, 0], [1, 0, 0]])
    assert np.allclose(cv.matrix_to_relion(m), [0, 90, 0])


def test_pytom_euler_hand_computed_and_matches_pytom_exporter():
    m = cv.pytom_to_matrix([np.pi / 2, 0, 0])
    assert np.allclose(m, [[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    rng = np.random.default_rng(0)
    p = rng.uniform([0, 0, 0], [2 * np.pi, np.pi, 2 * np.pi], size=(50, 3))
    # pytom's own RELION export: ZYZ of Rotation.from_euler("ZXZ", -p)
    relion_by_pytom = Rotation.from_euler("ZXZ", -p).as_euler("ZYZ", degrees=True)
    assert np.allclose(cv.relion_to_matrix(relion_by_pytom), cv.pytom_to_matrix(p))


@pytest.mark.parametrize("to, back", [
    (cv.matrix_to_relion, cv.relion_to_matrix),
    (cv.matrix_to_pytom, cv.pytom_to_matrix),
    (cv.matrix_to_warp, cv.warp_to_matrix),
])
def test_euler_round_trips(to, back):
    mats = Rotation.random(100, random_state=1).as_matrix()
    assert np.allclose(back(to(mats)), mats, atol=1e-10)
    one = mats[0]
    assert to(one).shape == (3,)
    assert np.allclose(back(to(one)), one, atol=1e-10)


def test_relion_matrix_agrees_with_scipy_intrinsic_zyz_inverse():
    ang = np.array([[10.0, 20.0, 30.0], [-170, 95, 3]])
    expect = Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix().transpose(0, 2, 1)
    assert np.allclose(cv.relion_to_matrix(ang), expect)
