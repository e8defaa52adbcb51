"""Symmetric templates (``--symmetry Dn/T/O/I``) and custom rotation lists (``--angle-list``) in
whole match jobs: a symmetric phantom matched with C1 and with its group gives the same peak, at a
symmetry mate of the true pose, with |G| times fewer rotations."""

from __future__ import annotations

import argparse

import mrcfile
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tomomatch import angles
from tomomatch.cli import main
from tomomatch.conventions import matrix_to_pytom
from tomomatch.errors import InputError
from tomomatch.job import plan_match, run_match
from tomomatch.jobfile import job_options
from tomomatch.mrcio import write_volume
from tomomatch.options import MatchOptions, add_match_arguments, match_options_from_args

N = 15  # odd box: the 90-degree symmetry operations map the sampled template onto itself
SHAPE = (28, 28, 28)
VOXEL = 10.0
SIGMA = 1.1  # blob width (voxels)
CENTRE_XYZ = np.array([14.0, 13.0, 15.0])  # the particle's centre (voxel indices x, y, z)


def _blobs(centres_xyz, amps, shape_zyx, origin_xyz):
    z, y, x = np.indices(shape_zyx, dtype=float)
    pts = np.stack([x - origin_xyz[0], y - origin_xyz[1], z - origin_xyz[2]], -1)
    out = np.zeros(shape_zyx)
    for c, a in zip(centres_xyz, amps):
        out += a * np.exp(-((pts - c) ** 2).sum(-1) / (2 * SIGMA**2))
    return out


def _symmetric_cloud(group):
    """An asymmetric two-blob cloud (x, y, z voxels from the box centre) copied by every g in G."""
    base = np.array([[3.6, 1.2, 0.7], [1.0, -2.6, 2.9]])
    amps = np.array([1.0, 0.6])
    return np.concatenate([base @ g.T for g in group]), np.tile(amps, len(group))


def _write_inputs(d, name, pose):
    """Template: the symmetrised cloud; tomogram: the same cloud placed analytically at ``pose``
    (blob centres ``p + R c``: particle(r) = template(R^T (r - p))) plus weak noise."""
    group = angles.symmetry_matrices(name)
    centres, amps = _symmetric_cloud(group)
    c = N // 2
    template = _blobs(centres, amps, (N, N, N), (c, c, c))
    # the sampled template has the group's symmetry: g maps voxel offsets onto voxel offsets
    z, y, x = np.indices((N, N, N)) - c
    mask = (np.sqrt(x**2 + y**2 + z**2) <= c - 0.5).astype(np.float32)
    vol = _blobs(centres @ pose.T, amps, SHAPE, CENTRE_XYZ)
    vol += np.random.default_rng(1).normal(0, 0.05, SHAPE)
    d.mkdir(parents=True, exist_ok=True)
    write_volume(d / "t.mrc", template.astype(np.float32), VOXEL)
    write_volume(d / "m.mrc", mask, VOXEL)
    write_volume(d / "v.mrc", vol.astype(np.float32), VOXEL)
    return group


def _peak(job):
    with mrcfile.open(job["scores"]) as m:
        scores = np.array(m.data)
    with mrcfile.open(job["angles"]) as m:
        index = np.array(m.data)
    rots = angles.read_rotations(job["rotations"])
    i = np.unravel_index(np.argmax(scores), scores.shape)
    return float(scores[i]), i, rots[int(index[i])], len(rots)


def _match(d, out, **kw):
    return run_match(d / "t.mrc", d / "m.mrc", d / "v.mrc", d / out, **kw)


@pytest.mark.parametrize("name, step, on_grid", [("D4", 30.0, False), ("O", 20.0, True)])
def test_symmetric_phantom_c1_and_group_agree(tmp_path, name, step, on_grid):
    if on_grid:
        # O is reduced by a fundamental domain, not exactly: put the particle at a kept rotation
        # (a C1 grid rotation too) times a group element, so that both searches hold a mate of it
        red = angles.uniform_rotations(step, name)
        pose = red[len(red) // 3] @ angles.symmetry_matrices(name)[7]
    else:
        # Dn is exact (the Dn orbit of the kept set is the C1 grid): any pose
        pose = Rotation.from_euler("ZYZ", [37.0, 71.0, -123.0], degrees=True).as_matrix()
    group = _write_inputs(tmp_path, name, pose)
    s1, i1, r1, n1 = _peak(_match(tmp_path, "c1", angular_step_deg=step))
    job = _match(tmp_path, "sym", angular_step_deg=step, symmetry=name.lower())
    sg, ig, rg, ng = _peak(job)
    assert job["symmetry"] == name and job_options(job).symmetry == name
    # the same peak, at the particle
    assert i1 == ig and np.allclose(ig[::-1], CENTRE_XYZ)
    assert sg == pytest.approx(s1, rel=1e-3)
    assert sg > 0.7
    # the reported poses are symmetry mates of the true one, within the step
    for r in (r1, rg):
        assert min(angles.geodesic_distance_deg(r, pose @ g) for g in group) < step
    if on_grid:
        assert min(angles.geodesic_distance_deg(rg, pose @ g) for g in group) < 1e-3
    # |G| times fewer rotations (within 10 %)
    assert abs(n1 / ng / len(group) - 1) < 0.1


def test_angle_list_job_equals_the_symmetric_job(tmp_path):
    name, step = "O", 20.0
    red = angles.uniform_rotations(step, name)
    _write_inputs(tmp_path, name, red[5] @ angles.symmetry_matrices(name)[3])
    ref = _match(tmp_path, "sym", angular_step_deg=step, symmetry=name)
    # the job's own rotation file (RELION rot tilt psi degrees) as --angle-list
    job = _match(tmp_path, "list", angle_list=ref["rotations"], symmetry=name)
    opts = job_options(job)
    assert opts.angle_list == ref["rotations"] and opts.angular_step_deg is None and job["angular_step_deg"] is None
    assert job["n_rotations"] == ref["n_rotations"] == len(red)
    with mrcfile.open(ref["scores"]) as a, mrcfile.open(job["scores"]) as b:
        assert np.allclose(a.data, b.data, atol=1e-5)
    with mrcfile.open(ref["angles"]) as a, mrcfile.open(job["angles"]) as b:
        peak = np.unravel_index(np.argmax(a.data), a.data.shape)
        assert a.data[peak] == b.data[peak]


def test_angle_list_enters_the_checkpoint_key(tmp_path):
    _write_inputs(tmp_path, "D2", np.eye(3))
    rots = angles.uniform_rotations(60.0, "D2")
    f = angles.write_rotations(tmp_path / "list.txt", rots)

    def plan(**kw):
        return plan_match(tmp_path / "t.mrc", tmp_path / "m.mrc", tmp_path / "v.mrc", tmp_path / "o", **kw)

    a, b = plan(angle_list=str(f)), plan(angle_list=f"relion:{f}")
    assert a.key == b.key and np.array_equal(a.rotations, b.rotations)
    assert a.options.angle_list == str(f.absolute())
    # a comment changes the file (its SHA-256), not the rotations: the key changes
    f.write_text(f.read_text() + "# edited\n")
    c = plan(angle_list=str(f))
    assert np.array_equal(c.rotations, a.rotations) and c.key != a.key
    # the same rotations as a pytom-match-pick list (ZXZ radians)
    (tmp_path / "pytom.txt").write_text(
        "\n".join(" ".join(f"{v:.10f}" for v in row) for row in matrix_to_pytom(rots)) + "\n"
    )
    p = plan(angle_list=f"pytom:{tmp_path / 'pytom.txt'}")
    assert np.allclose(p.rotations, rots, atol=1e-8) and p.key != a.key
    assert p.options.angle_list == f"pytom:{(tmp_path / 'pytom.txt').absolute()}"
    # no list and explicit rotations: one or the other
    with pytest.raises(InputError, match="one of them"):
        plan(angle_list=str(f), rotations=rots)
    # a symmetric grid's key differs from C1's (the rotations enter the key)
    assert plan(angular_step_deg=60.0).key != plan(angular_step_deg=60.0, symmetry="D2").key


def test_options_check_symmetry_and_angle_list():
    assert MatchOptions(symmetry="d7").symmetry == "D7" and MatchOptions(symmetry=3).symmetry == "C3"
    assert MatchOptions(symmetry="i").symmetry == "I" and MatchOptions(symmetry="I2").symmetry == "I2"
    for bad in ("D7h", "C0", "X3", "I5"):
        with pytest.raises(InputError) as exc:
            MatchOptions(symmetry=bad)
        assert "--symmetry" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(InputError) as exc:
        MatchOptions(angle_list="a.txt", angular_step_deg=10)
    assert exc.value.field == "--angle-list" and "--angular-step" in str(exc.value)
    with pytest.raises(InputError) as exc:
        MatchOptions(angle_list="pytom:")
    assert exc.value.field == "--angle-list"
    # the file is not read here; the particle diameter may stay (extraction's exclusion diameter)
    o = MatchOptions(angle_list="PYTOM:missing.txt", particle_diameter_angstrom=250)
    assert o.angle_list == "pytom:missing.txt"
    assert MatchOptions.from_json(o.to_json()) == o


def test_cli_flags(tmp_path, capsys):
    p = argparse.ArgumentParser()
    add_match_arguments(p)
    o = match_options_from_args(p.parse_args(["--angle-list", "pytom:l.txt", "--symmetry", "o"]))
    assert o.angle_list == "pytom:l.txt" and o.symmetry == "O" and o.angular_step_deg is None
    with pytest.raises(SystemExit):  # one of --angular-step, --particle-diameter, --angle-list
        p.parse_args(["--angle-list", "l.txt", "--angular-step", "10"])
    capsys.readouterr()
    pb = argparse.ArgumentParser()
    add_match_arguments(pb, batch=True)
    ob = match_options_from_args(pb.parse_args(["--angle-list", "l.txt", "--particle-diameter", "250"]))
    assert ob.angle_list == "l.txt" and ob.particle_diameter_angstrom == 250
    # bad values stop with one line naming the option, exit status 2, nothing written
    _write_inputs(tmp_path, "D2", np.eye(3))
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("10 20 30\n40 50\n")
    args = [
        "match",
        "-t",
        str(tmp_path / "t.mrc"),
        "-m",
        str(tmp_path / "m.mrc"),
        "-v",
        str(tmp_path / "v.mrc"),
        "--quiet",
    ]
    for extra, needle in (
        (["--angular-step", "30", "--symmetry", "D7h"], "--symmetry"),
        (["--angle-list", str(bad_list)], "line 2"),
        (["--angle-list", str(tmp_path / "missing.txt")], "--angle-list"),
    ):
        out = tmp_path / "out"
        assert main(args + ["-d", str(out)] + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "tomomatch match: error:" in err[0]
        assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("name", ["C7", "D7", "D4"])  # O/I clouds of 48+ blobs in 15^3 are near-isotropic
def test_symmetry_agreement_finds_an_off_axis_template(tmp_path, name):
    """A template in RELION's orientation agrees with its mates (>= 0.9); the same template
    turned off the axes (as the PolNet 20S map's 7-fold axis is) does not, and match warns."""
    from tomomatch.template import SYMMETRY_AGREEMENT_MIN, symmetry_agreement

    group = angles.symmetry_matrices(name)
    centres, amps = _symmetric_cloud(group)
    c = N // 2
    z, y, x = np.indices((N, N, N)) - c
    mask = (np.sqrt(x**2 + y**2 + z**2) <= c - 0.5).astype(np.float32)
    aligned = _blobs(centres, amps, (N, N, N), (c, c, c))
    tilt = Rotation.from_euler("xz", [40, 25], degrees=True).as_matrix()
    off_axis = _blobs(centres @ tilt.T, amps, (N, N, N), (c, c, c))
    assert symmetry_agreement(aligned, mask, name) >= SYMMETRY_AGREEMENT_MIN
    assert symmetry_agreement(off_axis, mask, name) < 0.8
    assert symmetry_agreement(off_axis, mask, "C1") == 1.0
    write_volume(tmp_path / "t.mrc", off_axis.astype(np.float32), VOXEL)
    write_volume(tmp_path / "m.mrc", mask, VOXEL)
    write_volume(tmp_path / "v.mrc", np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32), VOXEL)
    with pytest.warns(UserWarning, match=rf"not in RELION's {name} orientation"):
        plan_match(
            tmp_path / "t.mrc", tmp_path / "m.mrc", tmp_path / "v.mrc", tmp_path, angular_step_deg=40.0, symmetry=name
        )


def test_symmetry_check_runs_once_per_template_mask_and_group(tmp_path, monkeypatch):
    """Batch rows and hand's coarse searches plan one template many times: the agreement is
    computed once per (template contents, mask contents, group) and the warning still comes."""
    import tomomatch.job as J

    calls = []
    real = J.symmetry_agreement

    def counting(t, m, sym):
        calls.append(sym)
        return real(t, m, sym)

    monkeypatch.setattr(J, "symmetry_agreement", counting)
    monkeypatch.setattr(J, "_AGREEMENT_CACHE", {})
    centres, amps = _symmetric_cloud(angles.symmetry_matrices("C7"))
    c = N // 2
    off = _blobs(centres @ Rotation.from_euler("x", 40, degrees=True).as_matrix().T, amps, (N, N, N), (c, c, c))
    z, y, x = np.indices((N, N, N)) - c
    write_volume(tmp_path / "t.mrc", off.astype(np.float32), VOXEL)
    write_volume(tmp_path / "m.mrc", (np.sqrt(x**2 + y**2 + z**2) <= c - 0.5).astype(np.float32), VOXEL)
    write_volume(tmp_path / "v.mrc", np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32), VOXEL)
    files = (tmp_path / "t.mrc", tmp_path / "m.mrc", tmp_path / "v.mrc")
    for sym in ("C7", "C7", "D7"):
        with pytest.warns(UserWarning, match="not in RELION's"):
            plan_match(*files, tmp_path / "o", angular_step_deg=40.0, symmetry=sym)
    assert calls == ["C7", "D7"]
    write_volume(tmp_path / "t.mrc", (off + 0.01).astype(np.float32), VOXEL)  # new contents: checked again
    with pytest.warns(UserWarning, match="not in RELION's"):
        plan_match(*files, tmp_path / "o", angular_step_deg=40.0, symmetry="C7")
    assert calls == ["C7", "D7", "C7"]
