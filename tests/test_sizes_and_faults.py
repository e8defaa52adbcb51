"""Sizes that cannot fit are refused before anything is allocated; batch tables and clusters that
fail give one line and leave nothing behind (issue 15).

Every refusal here is an :class:`~tomomatch.errors.InputError`: the CLI prints one line naming the
file or option and exits 2, and writes nothing.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tomomatch import angles as A
from tomomatch import distributed as D
from tomomatch import resources
from tomomatch import template as T
from tomomatch.cli import main
from tomomatch.errors import InputError
from tomomatch.extract import extract_candidates, pick_peaks
from tomomatch.mrcio import write_volume

from _synthetic import asymmetric_template, sphere_mask

N = 12
VOXEL = 10.0
SHAPE = (16, 24, 24)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sizes")
    rng = np.random.default_rng(3)
    write_volume(d / "tomo.mrc", rng.normal(0, 0.2, SHAPE).astype(np.float32), VOXEL)
    write_volume(d / "tmpl.mrc", asymmetric_template(N), VOXEL)
    write_volume(d / "mask.mrc", sphere_mask(N), VOXEL)
    return d


def _one_line_error(capsys, argv, *words):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- rotations


def test_rotation_count_is_refused_from_the_step_before_building(monkeypatch):
    for step in (1e-7, 1e-300, 1.0):  # astronomically many; an overflow; 15 million
        with pytest.raises(InputError, match="--angular-step/--particle-diameter") as e:
            A.uniform_rotations(step)
        assert "MAX_ROTATIONS" in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(InputError):
            A.uniform_rotation_count(step)
    # the finest step the message offers is within the limit, for C1 and for a group
    for sym in ("C1", "D7", "O"):
        with pytest.raises(InputError) as e:
            A.uniform_rotation_count(0.2, sym)
        finest = float(re.search(r"at least ([0-9.]+) degrees", str(e.value)).group(1))
        assert A._grid_count(finest, sym) <= A.MAX_ROTATIONS < A._grid_count(finest * 0.98, sym)
    assert A.uniform_rotation_count(3.92) == 248_400  # the usual sizes are unchanged
    # the limit is exact: the grid's own count is allowed, one fewer is refused
    n = len(A.uniform_rotations(30.0))
    monkeypatch.setattr(A, "MAX_ROTATIONS", n)
    assert len(A.uniform_rotations(30.0)) == n
    monkeypatch.setattr(A, "MAX_ROTATIONS", n - 1)
    with pytest.raises(InputError, match=f"{n:,} rotations"):
        A.uniform_rotations(30.0)


def test_match_with_a_huge_particle_diameter_is_one_line_and_writes_nothing(data, tmp_path, capsys):
    out = tmp_path / "out"
    files = ["-t", str(data / "tmpl.mrc"), "-m", str(data / "mask.mrc"), "-v", str(data / "tomo.mrc")]
    _one_line_error(
        capsys,
        ["match", *files, "-d", str(out), "--quiet", "--particle-diameter", "1e9"],
        "--particle-diameter",
        "rotations",
    )
    assert not out.exists()


# --------------------------------------------------------------------------- extraction


def _job(folder: Path, scores, *, shape_in_job=True, diameter=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(folder / "t_scores.mrc", scores, VOXEL)
    write_volume(folder / "t_angles.mrc", np.zeros(scores.shape, np.float32), VOXEL)
    (folder / "t_rotations.txt").write_text("# RELION ZYZ degrees\n0 0 0\n")
    job = {
        "job_format": 1,
        "geometry_version": 2,
        "name": "t",
        "voxel_size_angstrom": VOXEL,
        "scores": "t_scores.mrc",
        "angles": "t_angles.mrc",
        "rotations": "t_rotations.txt",
        "particle_diameter_angstrom": diameter,
        "search_statistics": {"n_search": int(scores.size), "mean": 0.0, "std": 1.0},
    }
    if shape_in_job:
        job["tomogram_shape_zyx"] = list(scores.shape)
    path = folder / "t_job.json"
    path.write_text(json.dumps(job))
    return path


def test_extract_refuses_a_radius_larger_than_the_map(tmp_path, capsys):
    scores = np.random.default_rng(1).normal(size=(8, 12, 20)).astype(np.float32)
    job = _job(tmp_path / "a", scores)
    star = tmp_path / "a" / "t_particles.star"
    for extra, words in (
        (["--particle-diameter", "1e9"], ("--particle-diameter", "1e+09 A", "at most 400 A")),
        (["-r", "1e9"], ("--radius", "largest axis (20 voxels")),
        (["-r", "2", "--tophat", "--tophat-radius", "1e9"], ("--tophat-radius",)),
    ):
        _one_line_error(capsys, ["extract", "-j", str(job), "--cutoff", "0", *extra], *words)
        assert not star.exists()
    # the job's own diameter names the job file; without a recorded shape the maps' shape is used
    job2 = _job(tmp_path / "b", scores, shape_in_job=False, diameter=1e9)
    with pytest.raises(InputError, match="particle_diameter_angstrom") as e:
        extract_candidates(job2, cutoff=0.0)
    assert e.value.path == str(job2.resolve())
    with pytest.raises(InputError, match="radius"):
        pick_peaks(scores, 1e9)
    # a radius as large as the largest axis is still fine (its ball is cut to the map)
    zyx, _ = pick_peaks(scores, 20.0)
    assert len(zyx) >= 1
    df = extract_candidates(job, radius_voxels=20.0, cutoff=0.0, subvoxel=False)
    assert len(df) == len(zyx)


def test_exclusion_ball_cut_to_the_map_picks_as_before():
    """The ball cut to the map's extent (radius 9 on an 8 x 12 x 20 map) keeps the greedy picks
    of a brute-force reference."""
    rng = np.random.default_rng(7)
    s = rng.normal(size=(8, 12, 20)).astype(np.float32)
    for r in (3.5, 9.0, 19.5):
        zyx, _ = pick_peaks(s, r)
        padded = np.pad(s.astype(float), 1, constant_values=-np.inf)
        cand = [
            (s[z, y, x], (z, y, x))
            for z, y, x in zip(*np.nonzero(np.isfinite(s)))
            if s[z, y, x] >= padded[z : z + 3, y : y + 3, x : x + 3].max()
        ]
        cand.sort(key=lambda t: -t[0])
        kept = []
        for _, p in cand:
            if all(np.linalg.norm(np.subtract(p, q)) >= r for q in kept):
                kept.append(p)
        assert [tuple(int(v) for v in p) for p in zyx] == kept


# --------------------------------------------------------------------------- templates


def test_template_refuses_a_box_that_cannot_fit_in_memory(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "t.mrc"
    tmpl = str(data / "tmpl.mrc")
    # 0.001 A: 120,000 voxels per axis, tens of thousands of TiB; no "upsampling" warning first
    _one_line_error(capsys, ["template", "-i", tmpl, "-o", str(out), "--voxel-size", "0.001"], "--voxel-size", "TiB")
    _one_line_error(capsys, ["template", "-i", tmpl, "-o", str(out), "--voxel-size", "1e-320"], "--voxel-size")
    _one_line_error(
        capsys, ["template", "-i", tmpl, "-o", str(out), "--voxel-size", "10", "-b", "100000"], "--box-size"
    )
    pdb = tmp_path / "m.pdb"
    pdb.write_text(
        "ATOM      1  C   ALA A   1       0.000   0.000   0.000  1.00 20.00           C\n"
        "ATOM      2  N   ALA A   2       5.000   0.000   0.000  1.00 20.00           N\n"
        "END\n"
    )
    _one_line_error(capsys, ["template", "-i", str(pdb), "-o", str(out), "--voxel-size", "0.001"], "--voxel-size")
    assert not out.exists()
    # the limit is the machine's memory or resources.MAX_MEMORY_BYTES; TEMPLATE_WORK_COPIES float32 boxes
    monkeypatch.setattr(resources, "MAX_MEMORY_BYTES", 4 * T.TEMPLATE_WORK_COPIES * 20**3)
    vol, _ = T.create_template(data / "tmpl.mrc", VOXEL, box_size=20)
    assert vol.shape == (20, 20, 20)
    with pytest.raises(InputError, match="--box-size"):
        T.create_template(data / "tmpl.mrc", VOXEL, box_size=21)
    with pytest.raises(InputError, match="--voxel-size"):
        T.create_template(data / "tmpl.mrc", VOXEL / 2)  # 24^3 after resampling


# --------------------------------------------------------------------------- batch tables


def test_ragged_batch_table_names_the_file_and_line(data, tmp_path):
    t = str(data / "tomo.mrc")
    cases = {
        "more.tsv": (f"# a comment\ntomogram\tname\n{t}\ta\n\n{t}\tb\textra\n", "line 5", "3 tab-separated"),
        "fewer.tsv": (f"tomogram\tname\thand\n{t}\ta\t1\n{t}\tb\n", "line 3", "2 tab-separated"),
        "more.csv": (f"tomogram,name\n{t},a,\n", "line 2", "3 comma-separated"),
    }
    for fname, (text, line, words) in cases.items():
        p = tmp_path / fname
        p.write_text(text)
        with pytest.raises(InputError) as e:
            D.read_tomogram_list(p)
        msg = str(e.value)
        assert e.value.path == str(p) and e.value.field == line, msg
        assert words in msg and "\n" not in msg, msg
    # comments (also after a cell), blank lines and quoted cells are fine; errors give file lines
    ok = tmp_path / "ok.csv"
    ok.write_text(f'tomogram,name  # header\n\n"{t}",a # first\n{t},"b"\n')
    assert [e.name for e in D.read_tomogram_list(ok)] == ["a", "b"]
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"tomogram\thand\n\n{t}\tx\n")
    with pytest.raises(InputError) as e:
        D.read_tomogram_list(bad)
    assert e.value.field == "line 3"


def test_ragged_batch_table_on_the_command_line(data, tmp_path, capsys):
    p = tmp_path / "list.tsv"
    p.write_text(f"tomogram\tname\n{data / 'tomo.mrc'}\ta\tb\n")
    files = ["-t", str(data / "tmpl.mrc"), "-m", str(data / "mask.mrc")]
    argv = ["batch", "-l", str(p), *files, "-d", str(tmp_path / "o"), "--angular-step", "90", "--no-extract"]
    _one_line_error(capsys, argv + ["--quiet"], "list.tsv", "line 2")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- clusters


def _batch_kwargs(data, tmp_path):
    return dict(
        template=data / "tmpl.mrc",
        mask=data / "mask.mrc",
        out_dir=tmp_path / "out",
        match=dict(rotations=A.uniform_rotations(90.0)[:8]),
        device="cpu",
        dashboard_address=None,
    )


def _assert_nothing_written(out: Path):
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


@pytest.mark.timeout(120)
def test_unreachable_scheduler_fails_fast_naming_the_option(data, tmp_path, capsys, monkeypatch):
    entries = [D.BatchEntry("a", data / "tomo.mrc")]
    kw = _batch_kwargs(data, tmp_path)
    # a closed port: refused at once
    t0 = time.monotonic()
    with pytest.raises(InputError) as e:
        D.run_batch(
            entries,
            kw.pop("template"),
            kw.pop("mask"),
            kw.pop("out_dir"),
            scheduler=f"tcp://127.0.0.1:{_free_port()}",
            **kw,
        )
    assert e.value.field == "--scheduler" and "\n" not in str(e.value)
    assert time.monotonic() - t0 < D.SCHEDULER_TIMEOUT_S + 3
    _assert_nothing_written(tmp_path / "out")
    # a port that accepts connections but never answers (distributed.Client alone waits forever)
    monkeypatch.setattr(D, "SCHEDULER_TIMEOUT_S", 1.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(InputError, match="no answer within 1 s") as e:
            D.check_scheduler(address)
        assert e.value.field == "--scheduler" and time.monotonic() - t0 < 5
        files = ["-t", str(data / "tmpl.mrc"), "-m", str(data / "mask.mrc")]
        lst = tmp_path / "list.tsv"
        lst.write_text(f"tomogram\n{data / 'tomo.mrc'}\n")
        out = tmp_path / "o2"
        argv = ["batch", "-l", str(lst), *files, "-d", str(out), "--angular-step", "90", "--no-extract", "--quiet"]
        _one_line_error(capsys, argv + ["--scheduler", address], "--scheduler", address)
        _assert_nothing_written(out)
    finally:
        silent.close()
    with pytest.raises(InputError, match="--scheduler"):
        D.check_scheduler("tcp://host-without-port")


def test_cluster_failing_to_start_releases_the_locks_and_writes_nothing(data, tmp_path, monkeypatch):
    """Planning, then the locks, then the cluster; the checkpoint folders (key.txt) only once a
    client is connected."""
    entries = [D.BatchEntry("a", data / "tomo.mrc"), D.BatchEntry("b", data / "tomo.mrc")]

    def broken_cluster(**kw):
        raise OSError("the cluster did not start")

    monkeypatch.setattr(D, "make_cluster", broken_cluster)
    kw = _batch_kwargs(data, tmp_path)
    with pytest.raises(OSError, match="did not start"):
        D.run_batch(entries, kw.pop("template"), kw.pop("mask"), kw.pop("out_dir"), **kw)
    _assert_nothing_written(tmp_path / "out")
    # into an existing folder: it keeps what it had, and nothing else
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    kw = _batch_kwargs(data, tmp_path)
    kw.pop("out_dir")
    with pytest.raises(OSError):
        D.run_batch(entries, kw.pop("template"), kw.pop("mask"), out, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
