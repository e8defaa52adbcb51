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
    # IMOD/RELION 5: at +30 degrees the image axis is u = (sqrt(3)/2, 0, 1/2) and the beam
    # b = (-1/2, 0, sqrt(3)/2) (rows of Ry(30), right-handed)
    f = cv.tilt_frame(30.0)
    assert np.allclose(f[0], [np.sqrt(3) / 2, 0, 0.5])
    assert np.allclose(f[1], [0, 1, 0])
    assert np.allclose(f[2], [-0.5, 0, np.sqrt(3) / 2])
    assert np.allclose(cv.beam_direction(30.0), [-0.5, 0, np.sqrt(3) / 2])
    assert np.allclose(f, Rotation.from_euler("y", 30, degrees=True).as_matrix())
    # x' = x cos t + z sin t; depth = -x sin t + z cos t
    assert cv.projected_x(100.0, 0.0, 90.0) == pytest.approx(0, abs=1e-9)
    assert cv.depth_along_beam(100.0, 0.0, 90.0) == pytest.approx(-100.0)
    assert cv.projected_x(0.0, 100.0, 90.0) == pytest.approx(100.0)
    assert cv.projected_x(100.0, 0.0, 60.0) == pytest.approx(50.0)
    assert cv.projected_x(0.0, 100.0, 30.0) == pytest.approx(50.0)
    assert cv.depth_along_beam(100.0, 0.0, 30.0) == pytest.approx(-50.0)
    assert np.allclose(cv.project_points([100.0, 7.0, 0.0], 30.0), [100 * np.sqrt(3) / 2, 7.0, -50.0])
    # x-tilt 10 then y-tilt 0: depth = y sin 10 + z cos 10 (row 2 of Rx(10))
    s10, c10 = np.sin(np.radians(10)), np.cos(np.radians(10))
    assert cv.depth_along_beam(0.0, 50.0, 0.0, y=20.0, x_tilt_deg=10.0) == pytest.approx(20 * s10 + 50 * c10)
    assert np.allclose(cv.tilt_frame(0.0, 10.0)[1], [0, c10, -s10])
    # broadcasting: (points, tilts)
    pts = np.array([[100.0, 0, 0], [0, 0, 100.0]])
    got = cv.project_points(pts[:, None, :], np.array([-30.0, 30.0]))
    assert got.shape == (2, 2, 3)
    assert np.allclose(got[0, :, 2], [50.0, -50.0]) and np.allclose(got[1, :, 0], [-50.0, 50.0])


def test_tilt_of_slice_containing_hand_computed():
    # (cos 30, 0, sin 30) is the +30 image axis, so it lies in the +30 slice
    assert cv.tilt_of_slice_containing(np.cos(np.radians(30)), np.sin(np.radians(30))) == pytest.approx(30.0)
    assert cv.tilt_of_slice_containing(1.0, -1.0) == pytest.approx(-45.0)
    assert cv.tilt_of_slice_containing(-1.0, 1.0) == pytest.approx(-45.0)  # -k, same slice


@pytest.mark.parametrize(
    "hand, mode, x, z, tilt, expected",
    [
        # point at +x = 1000 A in the +30 degree tilt: depth -x sin 30 = -500 A
        (+1, "full", 1000, 0, 30, -500),
        (-1, "full", 1000, 0, 30, +500),
        (0, "full", 1000, 0, 30, 0),
        # pytom's z cos(h t) + x sin(h t) on the same angle
        (+1, "pytom", 1000, 0, 30, +500),
        (-1, "pytom", 1000, 0, 30, -500),
        # the same point in the -30 degree tilt
        (+1, "full", 1000, 0, -30, +500),
        (-1, "full", 1000, 0, -30, -500),
        # point at z = +1000 A in the 60 degree tilt: cos 60 = 1/2. Full flips it, pytom does not.
        (+1, "full", 0, 1000, 60, +500),
        (-1, "full", 0, 1000, 60, -500),
        (+1, "pytom", 0, 1000, 60, +500),
        (-1, "pytom", 0, 1000, 60, +500),
        (0, "pytom", 0, 1000, 60, 0),
    ],
)
def test_defocus_offset_signs(hand, mode, x, z, tilt, expected):
    assert cv.defocus_offset_angstrom(x, z, tilt, hand, mode) == pytest.approx(expected)


def test_pytom_minus_one_is_full_plus_one():
    x, z, t = np.meshgrid([-800.0, 0, 1200], [-300.0, 0, 250], [-60.0, -3, 0, 27, 51], indexing="ij")
    assert np.allclose(cv.defocus_offset_angstrom(x, z, t, -1, "pytom"), cv.defocus_offset_angstrom(x, z, t, +1))
    assert cv.hand_to_pytom(+1) == -1 and cv.hand_to_pytom(-1) == +1 and cv.hand_from_pytom(-1) == +1


def test_defocus_at_point_units():
    # 3 um - 500 A = 2.95 um for h = +1 (positive = more underfocus)
    assert cv.defocus_at_point_um(3.0, 1000, 0, 30, +1) == pytest.approx(2.95)
    assert cv.defocus_at_point_um(3.0, 1000, 0, 30, -1) == pytest.approx(3.05)
    with pytest.raises(ValueError):
        cv.defocus_offset_angstrom(1, 1, 1, 2)


def test_hand_mappings():
    assert cv.hand_from_relion(-1.0) == -1
    assert cv.hand_from_relion(1) == 1
    # Warp's RelionParticleSeriesExport.GetRelionHand: AreAnglesInverted ? 1 : -1
    assert cv.hand_from_warp(False) == -1
    assert cv.hand_from_warp(True) == 1
    assert cv.hand_to_warp(1) is True and cv.hand_to_warp(-1) is False
    assert np.allclose(cv.warp_tilt_angles_to_internal([-60, 3]), [60, -3])
    rep = cv.hand_report(-1)
    assert rep["relion5"] == "rlnTomoHand -1" and rep["warp"] == 'AreAnglesInverted="False"'
    assert rep["pytom"] == "--defocus-handedness +1" and rep["imod"] == "ctfphaseflip as is"
    assert cv.hand_report(1)["imod"] == "ctfphaseflip -InvertTiltAngles"


def test_imod_ctfphaseflip_sentence():
    # "At positive tilt angles, the right side of the images should be more underfocused than the
    # left side": right of the axis = +x' = +x at z = 0; t = +40 degrees, 3 um nominal.
    h = cv.imod_ctfphaseflip_hand()
    right = cv.defocus_at_point_um(3.0, +2000.0, 0.0, 40.0, h)
    left = cv.defocus_at_point_um(3.0, -2000.0, 0.0, 40.0, h)
    assert cv.projected_x(2000.0, 0.0, 40.0) > 0 > cv.projected_x(-2000.0, 0.0, 40.0)
    # hand-computed: 3 um -+ h * 2000 sin 40 A = 3 +- 0.12856 um
    assert right == pytest.approx(3.0 + 0.2 * np.sin(np.radians(40)), abs=1e-9)
    assert left == pytest.approx(3.0 - 0.2 * np.sin(np.radians(40)), abs=1e-9)
    assert right > left


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


@pytest.mark.parametrize(
    "to, back",
    [
        (cv.matrix_to_relion, cv.relion_to_matrix),
        (cv.matrix_to_pytom, cv.pytom_to_matrix),
        (cv.matrix_to_warp, cv.warp_to_matrix),
    ],
)
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
