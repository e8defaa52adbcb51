"""Tests for tomomatch.angles: counts, uniformity, symmetry reduction, local sets, files."""
import math
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tomomatch import angles
from tomomatch.conventions import pytom_to_matrix, relion_to_matrix
from tomomatch.errors import InputError


def _quat(m):
    return Rotation.from_matrix(m).as_quat()


def _nearest_deg(test_q, set_q):
    """Min geodesic distance (degrees) from each test quaternion to the set."""
    best = np.zeros(len(test_q))
    for i in range(0, len(test_q), 500):
        dots = np.abs(test_q[i:i + 500] @ set_q.T).max(1)
        best[i:i + 500] = 2 * np.degrees(np.arccos(np.clip(dots, 0, 1)))
    return best


def test_crowther_step_seed_and_lowpass():
    # degrees(2 * 8.56 / 250) = degrees(0.06848) = 3.9236
    assert angles.crowther_step_deg(250, 8.56) == pytest.approx(math.degrees(17.12 / 250))
    assert angles.crowther_step_deg(250, 8.56) == pytest.approx(3.9236, abs=1e-4)
    # low pass coarser than Nyquist wins: 40 A / 300 A -> 7.64 deg (pytom tutorial value)
    assert angles.crowther_step_deg(300, 13.79, low_pass_angstrom=40) == pytest.approx(7.639, abs=1e-3)
    # low pass finer than Nyquist is ignored
    assert angles.crowther_step_deg(250, 8.56, 10.0) == angles.crowther_step_deg(250, 8.56)
    with pytest.raises(InputError):
        angles.crowther_step_deg(0, 8.56)
    with pytest.raises(InputError):
        angles.crowther_step_deg(250, -1)


def test_seed_count_and_speed():
    step = angles.crowther_step_deg(250, 8.56)
    t0 = time.perf_counter()
    mats = angles.uniform_rotations(step)
    elapsed = time.perf_counter() - t0
    assert abs(len(mats) - 248_400) <= 0.1 * 248_400
    assert len(mats) == angles.uniform_rotation_count(step)
    assert elapsed < 2.0
    # proper rotations
    sub = mats[::997]
    assert np.allclose(sub @ np.swapaxes(sub, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(sub), 1.0)


def test_known_counts():
    # pytom-match-pick's table: 12 deg -> 9000, 90 deg -> 48, 7 deg -> 50544
    assert angles.uniform_rotation_count(12) == 9000
    assert angles.uniform_rotation_count(90) == 48
    assert angles.uniform_rotation_count(7) == 50544
    assert len(angles.uniform_rotations(90)) == 48


def test_grid_structure_direction_and_inplane():
    mats = angles.uniform_rotations(30.0)
    # the template z axis is carried to the HEALPix direction: an equal-area set, so its
    # mean is ~0 and the z components are spread evenly in [-1, 1]
    zdir = mats[:, :, 2]
    n_psi = angles._n_psi(30.0, 1)
    dirs = zdir[::n_psi]
    assert np.allclose(np.linalg.norm(dirs, axis=1), 1)
    assert np.abs(dirs.mean(0)).max() < 1e-9
    # all rotations distinct
    q = _quat(mats)
    dots = np.abs(q @ q.T)
    np.fill_diagonal(dots, 0)
    assert dots.max() < 1 - 1e-9


@pytest.mark.parametrize("step", [12.0, 20.0])
def test_covering_radius_and_uniform_spacing(step):
    mats = angles.uniform_rotations(step)
    q = _quat(mats)
    test = Rotation.random(3000, random_state=7).as_quat()
    cover = _nearest_deg(test, q).max()
    assert cover <= step  # every rotation is within one step of the grid
    # nearest-neighbour spacing roughly uniform: no clusters, no holes
    dots = np.abs(q @ q.T)
    np.fill_diagonal(dots, 0)
    nn = 2 * np.degrees(np.arccos(np.clip(dots.max(1), 0, 1)))
    assert nn.max() <= step + 1e-6
    assert nn.min() >= 0.6 * step
    assert np.percentile(nn, 90) / np.percentile(nn, 10) < 1.5
    # a plain Euler grid at the same step would cluster at the poles: check we do not
    # (the min spacing above) and that the count is near the Haar-volume estimate
    # vol(SO(3)) = 8 pi^2 per step^3 (with the antipodal quaternion identification)
    est = 8 * np.pi ** 2 / np.deg2rad(step) ** 3
    assert 0.7 * est < len(mats) < 2.0 * est


@pytest.mark.parametrize("n", [2, 3, 6])
def test_cn_reduction_covers_quotient(n):
    step = 15.0
    full = angles.uniform_rotations(step, "C1")
    red = angles.uniform_rotations(step, f"C{n}")
    assert len(red) == angles.uniform_rotation_count(step, f"c{n}")
    assert len(red) < len(full) / n * 1.5
    sym = Rotation.from_euler("z", 360.0 / n * np.arange(n)[:, None], degrees=True).as_matrix()
    # the orbit of the reduced set under the symmetry covers SO(3) like a full grid does
    orbit = np.concatenate([red @ s for s in sym])
    test = Rotation.random(2000, random_state=3).as_quat()
    assert _nearest_deg(test, _quat(orbit)).max() <= step
    # every rotation of the C1 grid equals a kept rotation composed with a symmetry op,
    # within the step (in fact exactly when the psi grids are commensurate)
    d = _nearest_deg(_quat(full), _quat(orbit))
    assert d.max() <= step
    # the kept set itself does not cover SO(3) (it is a true reduction)
    assert _nearest_deg(test, _quat(red)).max() > 2 * step


def test_cn_exact_when_commensurate():
    # step 10 -> 36 in-plane angles in C1 and 18 in C2: the C2 orbit is exactly the C1 grid
    full = angles.uniform_rotations(10.0)
    red = angles.uniform_rotations(10.0, "C2")
    assert 2 * len(red) == len(full)
    orbit = np.concatenate([red, red @ Rotation.from_euler("z", 180, degrees=True).as_matrix()])
    d = _nearest_deg(_quat(full[::7]), _quat(orbit))
    assert d.max() < 1e-4
    # the kept rotations have the first-applied in-plane angle psi in [0, 180):
    # R = Rz(phi) Ry(theta) Rz(psi) -> R[2, :2] = sin(theta) * (-cos psi, sin psi)
    tilted = np.abs(red[:, 2, 2]) < 0.999
    psi = np.degrees(np.arctan2(red[tilted, 2, 1], -red[tilted, 2, 0])) % 360
    assert psi.max() < 180 - 1e-6


def test_symmetry_errors():
    with pytest.raises(InputError):
        angles.uniform_rotations(10, "D2")
    with pytest.raises(InputError):
        angles.uniform_rotations(10, "C0")
    with pytest.raises(InputError):
        angles.uniform_rotations(0)


def test_local_rotations():
    centre = relion_to_matrix([30.0, 70.0, -110.0])
    loc = angles.local_rotations(centre, max_angle_deg=10.0, step_deg=2.0)
    assert np.allclose(loc[0], centre)
    dist = angles.geodesic_distance_deg(centre[None], loc)
    assert dist[0] == pytest.approx(0, abs=1e-6)
    assert dist.max() <= 10.0 + 1e-6
    assert np.all(np.diff(dist) >= -1e-6)  # sorted by distance
    # count ~ volume of a ball of radius 10 in a lattice of spacing 2: 4/3 pi 5^3 = 524
    assert 400 < len(loc) < 650
    # covers the ball: random rotations within 9 deg of the centre lie within ~step of the set
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(500, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    ang = 9.0 * rng.random(500) ** (1 / 3)
    test = Rotation.from_rotvec(np.deg2rad(ang)[:, None] * axes).as_matrix() @ centre
    assert _nearest_deg(_quat(test), _quat(loc)).max() <= 2.0
    # nearest neighbours ~ step
    q = _quat(loc)
    dots = np.abs(q @ q.T)
    np.fill_diagonal(dots, 0)
    nn = 2 * np.degrees(np.arccos(np.clip(dots.max(1), 0, 1)))
    assert nn.min() > 1.8 and nn.max() < 2.2
    with pytest.raises(InputError):
        angles.local_rotations(np.eye(3) * 2, 5, 1)


def test_file_round_trip(tmp_path):
    mats = angles.uniform_rotations(40.0)
    path = angles.write_rotations(tmp_path / "rot.txt", mats)
    lines = path.read_text().splitlines()
    assert lines[0] == "# tomomatch rotations: RELION ZYZ degrees"
    assert len(lines) == len(mats) + 1
    back = angles.read_rotations(path)
    assert np.allclose(back, mats, atol=1e-7)
    # the columns are RELION rot tilt psi: the first line matches matrix_to_relion
    first = np.array(lines[1].split(), float)
    assert np.allclose(relion_to_matrix(first), mats[0], atol=1e-7)
    assert not list(tmp_path.glob("*.part"))


def test_read_pytom_file(tmp_path):
    a = np.array([[0.1, 0.2, 0.3], [1.0, 2.0, -0.5]])
    p = tmp_path / "angles.txt"
    p.write_text("\n".join(" ".join(f"{x:.10f}" for x in row) for row in a) + "\n")
    got = angles.read_rotations(p, convention="pytom")
    assert np.allclose(got, pytom_to_matrix(a))
    # the same file read as RELION degrees gives different (tiny) rotations
    assert not np.allclose(angles.read_rotations(p), got)


def test_read_bad_files(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("1 2 3\n4 5\n")
    with pytest.raises(InputError, match="line 2"):
        angles.read_rotations(p)
    p.write_text("1 2 x\n")
    with pytest.raises(InputError, match="line 1"):
        angles.read_rotations(p)
    p.write_text("# only a comment\n")
    with pytest.raises(InputError, match="no rotations"):
        angles.read_rotations(p)
    with pytest.raises(InputError):
        angles.read_rotations(tmp_path / "missing.txt")
    with pytest.raises(InputError):
        angles.read_rotations(p, convention="euler")
