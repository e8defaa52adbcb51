"""Tests for tomomatch.angles: counts, uniformity, RELION point groups and their reduction, local
sets, rotation files and --angle-list files."""

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tomomatch import angles
from tomomatch.conventions import matrix_to_pytom, pytom_to_matrix, relion_to_matrix
from tomomatch.errors import InputError


def _quat(m):
    return Rotation.from_matrix(m).as_quat()


def _nearest_deg(test_q, set_q):
    """Min geodesic distance (degrees) from each test quaternion to the set."""
    best = np.zeros(len(test_q))
    for i in range(0, len(test_q), 500):
        dots = np.abs(test_q[i : i + 500] @ set_q.T).max(1)
        best[i : i + 500] = 2 * np.degrees(np.arccos(np.clip(dots, 0, 1)))
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
    est = 8 * np.pi**2 / np.deg2rad(step) ** 3
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
    for bad in ("C0", "D0", "X3", "D7h", "C2v", "Oh", "I5", "C", "D", "T2", "", 0, -2, True):
        with pytest.raises(InputError) as exc:
            angles.uniform_rotations(10, bad)
        assert "--symmetry" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(InputError):
        angles.uniform_rotations(0)


def test_parse_symmetry_canonical_names():
    assert [
        angles.parse_symmetry(s) for s in ("c1", " C7 ", 3, "d7", "D 2", "t", "o", "i", "I2", "i1", "I3", "i4", "C01")
    ] == ["C1", "C7", "C3", "D7", "D2", "T", "O", "I", "I2", "I1", "I3", "I4", "C1"]
    assert [angles.symmetry_order(s) for s in ("C1", "C7", "D7", "T", "O", "I", "I3")] == [1, 7, 14, 12, 24, 60, 60]


# ---------------------------------------------------------------- RELION's point groups


def _closure(generators):
    """The group generated by RELION ``rot_axis FOLD X Y Z`` lines (as SymList::compute_subgroup)."""
    gens = [
        Rotation.from_rotvec(np.asarray(ax, float) / np.linalg.norm(ax) * 2 * np.pi / fold).as_matrix()
        for fold, ax in generators
    ]
    mats, frontier = [np.eye(3)], [np.eye(3)]
    while frontier:
        new = []
        for m in frontier:
            for g in gens:
                p = m @ g
                if min(np.abs(p - q).max() for q in mats) > 1e-5:
                    mats.append(p)
                    new.append(p)
        frontier = new
    return np.array(mats)


def _same_set(a, b, tol=1e-5):
    return len(a) == len(b) and all(np.abs(b - x).max(axis=(1, 2)).min() < tol for x in a)


def _axes(group, fold):
    """Unit axes (sign-normalised) of the group's rotations by 360/fold degrees."""
    rv = Rotation.from_matrix(group).as_rotvec()
    ang = np.degrees(np.linalg.norm(rv, axis=1))
    out = rv[np.abs(ang - 360.0 / fold) < 1e-6]
    out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return out


def _has_axis(group, fold, axis):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.abs(_axes(group, fold) @ a).max() > 1 - 1e-6


@pytest.mark.parametrize("name", ["T", "O", "I1", "I2", "I3", "I4"])
def test_groups_are_relions(name):
    # 3dem/relion src/symmetries.cpp SymList::fill_symmetry_class: the group is the closure of
    # these rot_axis lines (RELION_GENERATORS holds them verbatim)
    g = angles.symmetry_matrices(name)
    assert _same_set(g, _closure(angles.RELION_GENERATORS[name]))
    for fold, axis in angles.RELION_GENERATORS[name]:
        assert _has_axis(g, fold, axis)
    assert np.array_equal(g[0], np.eye(3))
    assert np.allclose(g @ np.swapaxes(g, 1, 2), np.eye(3), atol=1e-12) and np.allclose(np.linalg.det(g), 1)
    # closed under products: every product is in the group
    prods = (g[:, None] @ g[None]).reshape(-1, 3, 3)
    assert all(np.abs(g - p).max(axis=(1, 2)).min() < 1e-9 for p in prods[::7])


def test_cyclic_and_dihedral_are_relions():
    for n in (1, 2, 3, 4, 7):
        assert _same_set(angles.symmetry_matrices(f"C{n}"), _closure([(n, (0, 0, 1))]))
        assert _same_set(angles.symmetry_matrices(f"D{n}"), _closure([(n, (0, 0, 1)), (2, (1, 0, 0))]))
    # D2: 2-folds along x, y and z; D7: the 2-fold along x (RELION's "rot_axis 2 1 0 0")
    d2 = angles.symmetry_matrices("D2")
    assert all(_has_axis(d2, 2, ax) for ax in np.eye(3))
    assert _has_axis(angles.symmetry_matrices("D7"), 2, (1, 0, 0))
    assert _has_axis(angles.symmetry_matrices("D7"), 7, (0, 0, 1))


def test_named_axes_of_t_o_i():
    phi = (1 + 5**0.5) / 2
    o = angles.symmetry_matrices("O")
    assert all(_has_axis(o, 4, ax) for ax in np.eye(3)) and _has_axis(o, 3, (1, 1, 1))
    t = angles.symmetry_matrices("T")  # RELION's T: a 3-fold along z, not 2-folds along x, y, z
    assert _has_axis(t, 3, (0, 0, 1)) and _has_axis(t, 2, (0, np.sqrt(2 / 3), np.sqrt(1 / 3)))
    assert not _has_axis(t, 2, (1, 0, 0))
    # I = I2 (RELION's default): 2-folds along x, y, z, a 5-fold along (1, 0, phi) in the xz plane
    i2 = angles.symmetry_matrices("I")
    assert np.allclose(i2, angles.symmetry_matrices("I2"))
    assert all(_has_axis(i2, 2, ax) for ax in np.eye(3)) and _has_axis(i2, 5, (1, 0, phi))
    assert not _has_axis(i2, 5, (phi, 0, 1))
    # I1 (scipy's orientation): the 5-fold along (phi, 0, -1); I2 is I1 turned by 90 degrees about z
    i1 = angles.symmetry_matrices("I1")
    assert _has_axis(i1, 5, (phi, 0, -1)) and _same_set(i1, Rotation.create_group("I").as_matrix())
    rz = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    assert _same_set(i2, rz @ i1 @ rz.T)
    # I3: a 5-fold along z
    assert _has_axis(angles.symmetry_matrices("I3"), 5, (0, 0, 1))


# ---------------------------------------------------------------- reduction to one asymmetric unit


@pytest.mark.parametrize(
    "name, steps",
    [
        ("D3", (15.0, 10.0, 3.9236)),
        ("D4", (15.0, 10.0, 5.0)),
        ("D7", (5.0, 3.9236)),
        ("T", (15.0, 10.0, 5.0)),
        ("O", (15.0, 10.0, 5.0, 3.9236)),
        ("I", (15.0, 10.0, 5.0, 3.9236)),
        ("I1", (10.0, 5.0)),
        ("I3", (10.0, 5.0)),
        ("I4", (10.0, 5.0)),
    ],
)
def test_reduction_factor(name, steps):
    for step in steps:
        n = len(angles.uniform_rotations(step, name))
        assert n == angles.uniform_rotation_count(step, name)
        factor = angles.uniform_rotation_count(step) / n
        assert abs(factor / angles.symmetry_order(name) - 1) < 0.1, (step, factor)


def test_dn_is_exactly_half_of_cn():
    for n, step in ((2, 12.0), (3, 20.0), (7, 10.0), (4, 15.0)):
        cn = angles.uniform_rotations(step, f"C{n}")
        dn = angles.uniform_rotations(step, f"D{n}")
        assert 2 * len(dn) == len(cn) == 2 * angles.uniform_rotation_count(step, f"D{n}")
        # a subset of the Cn set: template z axis carried to the upper hemisphere (or the equator)
        assert _nearest_deg(_quat(dn), _quat(cn)).max() < 1e-4
        assert dn[:, 2, 2].min() > -1e-9
        # the Dn orbit of the kept rotations is exactly the Cn set
        orbit = np.concatenate([dn @ g for g in angles.symmetry_matrices(f"D{n}")])
        assert _nearest_deg(_quat(cn), _quat(orbit)).max() < 1e-4


@pytest.mark.parametrize("name, step", [("D3", 15.0), ("T", 15.0), ("O", 15.0), ("I", 15.0), ("I3", 15.0)])
def test_group_reduction_covers_quotient(name, step):
    full = angles.uniform_rotations(step)
    red = angles.uniform_rotations(step, name)
    group = angles.symmetry_matrices(name)
    orbit = np.concatenate([red @ g for g in group])
    # every C1 grid rotation has a symmetry mate of a kept rotation within the step
    # (exactly for Dn with a commensurate psi grid)
    d = _nearest_deg(_quat(full), _quat(orbit))
    assert d.max() <= step
    if name[0] == "D":
        assert d.max() < 1e-4
    # the orbit covers SO(3) like the C1 grid does
    test = Rotation.random(2000, random_state=5).as_quat()
    assert _nearest_deg(test, _quat(orbit)).max() <= step
    # the kept rotations are C1 grid rotations (commensurate psi grid), and a true reduction
    assert _nearest_deg(_quat(red), _quat(full)).max() < 1e-4
    assert _nearest_deg(test, _quat(red)).max() > 2 * step


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


# ---------------------------------------------------------------- --angle-list files


def test_parse_angle_list_specs(tmp_path):
    assert angles.parse_angle_list("a.txt") == ("relion", Path("a.txt"))
    assert angles.parse_angle_list("relion:a.txt") == ("relion", Path("a.txt"))
    assert angles.parse_angle_list("PYTOM:/x/angles_12.85_7112.txt") == ("pytom", Path("/x/angles_12.85_7112.txt"))
    assert angles.parse_angle_list(tmp_path / "b.txt") == ("relion", tmp_path / "b.txt")
    # a file whose name starts like a prefix keeps an explicit one
    assert angles.format_angle_list("relion", "pytom:x") == "relion:pytom:x"
    assert angles.format_angle_list("pytom", "/a/b.txt") == "pytom:/a/b.txt"
    for bad in ("", "pytom:", "  ", 3):
        with pytest.raises(InputError) as exc:
            angles.parse_angle_list(bad)
        assert exc.value.field == "--angle-list" and "\n" not in str(exc.value)


def test_read_angle_list_relion_and_pytom(tmp_path):
    mats = angles.uniform_rotations(60.0, "D2")
    p = angles.write_rotations(tmp_path / "rot.txt", mats)  # tomomatch's own _rotations.txt format
    al = angles.read_angle_list(str(p))
    assert np.allclose(al.rotations, mats, atol=1e-7) and al.convention == "relion"
    assert al.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert al.spec == str(p.absolute()) and angles.read_angle_list(al.spec).sha256 == al.sha256
    # pytom-match-pick's format: anticlockwise ZXZ radians, one rotation per line, blank-separated
    q = tmp_path / "angles_pytom.txt"
    np.savetxt(q, matrix_to_pytom(mats), fmt="%.9f")
    alp = angles.read_angle_list(f"pytom:{q}")
    assert np.allclose(alp.rotations, mats, atol=1e-7) and alp.spec == f"pytom:{q.absolute()}"
    # a comment changes the file's hash, not the rotations
    p.write_text(p.read_text() + "# edited\n")
    again = angles.read_angle_list(p)
    assert again.sha256 != al.sha256 and np.array_equal(again.rotations, al.rotations)


def test_read_angle_list_errors_name_file_line_and_format(tmp_path):
    p = tmp_path / "bad.txt"
    cases = {
        "10 20 30\n40 50\n": "line 2",
        "10 20 30\n\n# c\n1 2 zz\n": "line 4",
        "nan 1 2\n": "line 1",
        "# nothing\n": "no rotations",
    }
    for text, where in cases.items():
        p.write_text(text)
        with pytest.raises(InputError) as exc:
            angles.read_angle_list(p)
        msg = str(exc.value)
        assert where in msg and str(p) in msg and "--angle-list" in msg and "\n" not in msg
        assert "RELION ZYZ rot tilt psi in degrees" in msg
    p.write_text("1 2\n")
    with pytest.raises(InputError, match="anticlockwise ZXZ phi theta psi in radians"):
        angles.read_angle_list(f"pytom:{p}")
    with pytest.raises(InputError, match="cannot read") as exc:
        angles.read_angle_list(tmp_path / "missing.txt")
    assert exc.value.field == "--angle-list"
    p.write_bytes(b"\xff\xfe\x00\x01binary")
    with pytest.raises(InputError, match="not a text file"):
        angles.read_angle_list(p)
