"""Work units, exact merging, local process pool, Dask batch (identity, killed worker, resume), SLURM config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomomatch import matching as M
from tomomatch.angles import uniform_rotations
from tomomatch.cli import main
from tomomatch.errors import InputError
from tomomatch.job import UnitResult, WorkUnit, execute_local, merge_units, plan_match, prepare_checkpoints, run_match
from tomomatch.mrcio import write_volume

from _synthetic import asymmetric_template, sphere_mask

N = 12
VOXEL = 10.0
SHAPE = (24, 48, 48)
TILTS = np.arange(-60, 61, 20.0)


def _template():
    return asymmetric_template(N)


def _mask():
    return sphere_mask(N)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rots = uniform_rotations(50.0)[:48]
    for i, seed in enumerate((1, 2)):
        rng = np.random.default_rng(seed)
        vol = rng.normal(0, 0.2, SHAPE)
        for (pz, py, px), k in (((12, 14, 13), 5 + i), ((11, 30, 34), 33 - i)):
            vol[pz - N // 2 : pz + N // 2, py - N // 2 : py + N // 2, px - N // 2 : px + N // 2] += M.rotate_volume(
                _template(), rots[k], order=3
            )
        write_volume(d / f"tomo{i}.mrc", vol, VOXEL)
    write_volume(d / "tmpl.mrc", _template(), VOXEL)
    write_volume(d / "mask.mrc", _mask(), VOXEL)
    (d / "tilts.tlt").write_text("\n".join(f"{t:g}" for t in TILTS) + "\n")
    (d / "dose.txt").write_text("\n".join(f"{3.0 * i:g}" for i in range(len(TILTS))) + "\n")
    (d / "list.tsv").write_text(
        "name\ttomogram\ttilt_angles\tdose\tdefocus\na\ttomo0.mrc\ttilts.tlt\tdose.txt\t3.0\nb\ttomo1.mrc\t\t\t\n"
    )
    return {"dir": d, "rots": rots}


def _read(path):
    with mrcfile.open(path) as m:
        return np.array(m.data)


def _files(d, name):
    return [d / f"{name}_{s}" for s in ("scores.mrc", "angles.mrc", "rotations.txt")]


def _job(path):
    job = json.loads(Path(path).read_text())
    for k in ("elapsed_s", "command", "resumed_rotations", "execution"):
        job.pop(k)
    return job


# --------------------------------------------------------------------------- units and merge


def test_merge_is_exact_for_any_chunking_and_order(data, tmp_path):
    """Synthetic per-rotation scores with many exact ties: the merge of chunk maxima equals
    numpy's max/first-argmax over all rotations, for any chunking and any result order."""
    d = data["dir"]
    plan = plan_match(
        d / "tmpl.mrc", d / "mask.mrc", d / "tomo0.mrc", tmp_path, rotations=data["rots"][:20], tiles=(2, 1, 1)
    )
    rng = np.random.default_rng(3)
    n_rot = 20
    stacks = [
        np.round(
            rng.normal(size=(n_rot,) + tuple(b - a for a, b in zip(t.unique_start_zyx, t.unique_stop_zyx))), 1
        ).astype(np.float32)
        for t in plan.tiles
    ]  # rounding -> many ties
    want = np.zeros(SHAPE, np.float32)
    want_idx = np.full(SHAPE, -1.0, np.float32)
    for t, st in zip(plan.tiles, stacks):
        want[t.unique_slices] = st.max(0)
        want_idx[t.unique_slices] = st.argmax(0)  # first occurrence of the maximum
    all_sums = np.concatenate([st.reshape(n_rot, -1).astype(np.float64).sum(1) for st in stacks])
    count = sum(st.size for st in stacks)
    outs = []
    for bounds in ([0, 20], [0, 3, 4, 11, 20], [0, 1, 2, 3, 10, 19, 20]):
        res = []
        for ti, st in enumerate(stacks):
            for a, b in zip(bounds[:-1], bounds[1:]):
                part = st[a:b]
                res.append(
                    UnitResult(
                        WorkUnit(len(res), ti, a, b),
                        part.max(0),
                        (a + part.argmax(0)).astype(np.int32),
                        None,
                        part.reshape(b - a, -1).astype(np.float64).sum(1),
                        (part.reshape(b - a, -1).astype(np.float64) ** 2).sum(1),
                        part.size,
                    )
                )
        rng.shuffle(res)
        m = merge_units(plan, res)
        assert np.array_equal(m.scores, want) and np.array_equal(m.angles, want_idx)
        assert m.n_search == count and m.mean == pytest.approx(all_sums.sum() / count, rel=1e-12)
        outs.append((m.mean, m.std))
    assert outs[0] == outs[1] == outs[2]  # exactly rounded sums: no dependence on grouping
    # a missing chunk is refused
    with pytest.raises(ValueError, match="do not cover"):
        merge_units(plan, res[1:])


def test_chunked_units_and_process_pool_equal_one_pass(data, tmp_path):
    d = data["dir"]
    kw = dict(rotations=data["rots"], tiles=(2, 1, 1), quiet=True, name="x")
    run_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo0.mrc", tmp_path / "one", **kw)
    plan = plan_match(
        d / "tmpl.mrc",
        d / "mask.mrc",
        d / "tomo0.mrc",
        tmp_path / "chunk",
        rotations=data["rots"],
        tiles=(2, 1, 1),
        name="x",
        rotations_per_unit=10,
    )
    bs = plan.batch_sizes[0]
    assert len(plan.units) > 2 and all(u.start % bs == 0 for u in plan.units)
    assert [(u.tile, u.start, u.stop) for u in plan.units][:2] == [(0, 0, 12), (0, 12, 24)]  # 10 -> 12 (batch 4)
    run_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo0.mrc", tmp_path / "chunk", rotations_per_unit=10, **kw)
    assert (
        main(
            [
                "match",
                "-t",
                str(d / "tmpl.mrc"),
                "-m",
                str(d / "mask.mrc"),
                "-v",
                str(d / "tomo0.mrc"),
                "-d",
                str(tmp_path / "pool"),
                "--name",
                "x",
                "--angular-step",
                "50",
                "--tiles",
                "2",
                "1",
                "1",
                "--processes",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    run_match(
        d / "tmpl.mrc",
        d / "mask.mrc",
        d / "tomo0.mrc",
        tmp_path / "step",
        **{**kw, "rotations": None},
        angular_step_deg=50.0,
    )
    for a, b in ((tmp_path / "one", tmp_path / "chunk"), (tmp_path / "step", tmp_path / "pool")):
        for fa, fb in zip(_files(a, "x"), _files(b, "x")):
            assert fa.read_bytes() == fb.read_bytes(), fb
        assert _job(a / "x_job.json") == _job(b / "x_job.json")
    assert not (tmp_path / "pool" / "x_checkpoints").exists()


def test_finished_units_are_skipped_locally(data, tmp_path):
    d = data["dir"]
    plan = plan_match(
        d / "tmpl.mrc",
        d / "mask.mrc",
        d / "tomo0.mrc",
        tmp_path,
        rotations=data["rots"][:16],
        rotations_per_unit=8,
        name="s",
    )
    prepare_checkpoints(plan)
    first = execute_local(plan)
    mtimes = {p: p.stat().st_mtime_ns for p in plan.checkpoint_dir.glob("tile_*.npz")}
    assert len(mtimes) == len(plan.units) == 2
    again = execute_local(plan)
    assert {p: p.stat().st_mtime_ns for p in plan.checkpoint_dir.glob("tile_*.npz")} == mtimes
    assert all(r.resumed == r.unit.stop - r.unit.start for r in again)
    assert all(np.array_equal(a.best, b.best) and np.array_equal(a.index, b.index) for a, b in zip(first, again))


def test_finish_and_unit_tasks_are_idempotent(data, tmp_path):
    """A task run again after its tomogram was finished (its result lost with a worker) changes
    nothing: the unit is not recomputed, the finish keeps the outputs."""
    from tomomatch.distributed import _finish_task, _unit_task

    d = data["dir"]
    plan = plan_match(
        d / "tmpl.mrc",
        d / "mask.mrc",
        d / "tomo1.mrc",
        tmp_path,
        rotations=data["rots"][:8],
        rotations_per_unit=4,
        name="i",
    )
    prepare_checkpoints(plan)
    calls = []
    assert [_unit_task(plan, u, lambda p, u: calls.append(u)) for u in plan.units] == [4, 4]
    assert _unit_task(plan, plan.units[0], lambda p, u: calls.append(u)) == 0 and len(calls) == 2
    s1 = _finish_task(plan, 4, 4, extract=dict(max_particles=3, particle_diameter_angstrom=100.0))
    before = [p.read_bytes() for p in _files(tmp_path, "i")] + [(tmp_path / "i_job.json").read_bytes()]
    assert not plan.checkpoint_dir.exists() and s1["n_particles"] >= 1
    assert _unit_task(plan, plan.units[1], lambda p, u: calls.append(u)) == 0 and len(calls) == 2
    s2 = _finish_task(plan, 0, 0, extract=dict(max_particles=3, particle_diameter_angstrom=100.0))
    assert [p.read_bytes() for p in _files(tmp_path, "i")] + [(tmp_path / "i_job.json").read_bytes()] == before
    assert s2["n_particles"] == s1["n_particles"] and not plan.checkpoint_dir.exists()
    # the cut-off method actually used, and extract's warnings, are in the summary (not silenced)
    assert s1["cutoff_method"] in ("tail", "gaussian") and isinstance(s1["extract_warnings"], list)
    if s1["cutoff_method"] == "gaussian":
        assert any("tail" in w for w in s1["extract_warnings"])


def test_worker_device_never_falls_back_to_gpu_zero(monkeypatch):
    import distributed

    from tomomatch.distributed import _worker_device

    assert _worker_device("cpu") == "cpu" and _worker_device("cuda:1") == "cuda:1"
    assert _worker_device("cuda") == "cuda"  # outside a worker: the default GPU

    class W:
        name = "slurm-job"

    monkeypatch.setattr(distributed, "get_worker", lambda: W())
    with pytest.raises(RuntimeError, match="which GPU"):
        _worker_device("cuda")
    W.name = "tcp-worker-3"
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _worker_device("cuda") == "cuda:1"


# --------------------------------------------------------------------------- dask batch


def _make_hook(log_dir: Path, kill_marker: Path, fail_flag: Path):
    def hook(plan, unit):  # runs on the worker before each unit (pickled by value)
        import os
        import signal
        import uuid

        (log_dir / f"{plan.name}-{unit.index:03d}-{uuid.uuid4().hex}").touch()
        if plan.name == "a" and unit.index == 1:
            try:
                with open(kill_marker, "x"):
                    pass
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)  # this worker dies mid-task, once
        if plan.name == "b" and unit.index >= 2 and fail_flag.exists():
            raise RuntimeError("injected failure")

    return hook


def _executions(log_dir: Path) -> dict:
    out: dict = {}
    for p in log_dir.iterdir():
        name, idx, _ = p.name.split("-")
        out[(name, int(idx))] = out.get((name, int(idx)), 0) + 1
    return out


def test_batch_identity_killed_worker_and_resume(data, tmp_path):
    from tomomatch.distributed import read_tomogram_list, run_batch

    d = data["dir"]
    entries = read_tomogram_list(d / "list.tsv")
    assert [e.name for e in entries] == ["a", "b"] and entries[1].tilt_series is None
    np.testing.assert_allclose(entries[0].tilt_series.defocus_u_um, 3.0)
    match = dict(rotations=data["rots"], tiles=(2, 1, 1), low_pass_angstrom=30.0)
    refs = tmp_path / "ref"
    for e in entries:
        run_match(d / "tmpl.mrc", d / "mask.mrc", e.tomogram, refs, name=e.name, tilt_series=e.tilt_series, **match)
    log_dir, out = tmp_path / "log", tmp_path / "out"
    log_dir.mkdir()
    fail_flag = tmp_path / "fail"
    fail_flag.touch()
    hook = _make_hook(log_dir, tmp_path / "killed", fail_flag)
    kw = dict(
        match=match,
        extract=dict(max_particles=5, particle_diameter_angstrom=100.0),
        device="cpu",
        n_workers=2,
        rotations_per_unit=12,
        dashboard_address=None,
        before_unit=hook,
    )
    # run 1: a worker is killed during unit a/1; the units b/2.. fail
    res1 = run_batch(d / "list.tsv", d / "tmpl.mrc", d / "mask.mrc", out, **kw)
    assert "error" not in res1[0] and "injected failure" in res1[1]["error"]
    ex1 = _executions(log_dir)
    n_units = 2 * 4  # 2 tiles x 48 rotations / 12
    assert ex1[("a", 1)] == 2  # killed once, run again elsewhere
    assert all(ex1[("a", i)] == 1 for i in range(n_units) if i != 1)
    assert not (out / "b_job.json").exists() and (out / "b_checkpoints").is_dir()
    # run 2: only b's unfinished units run; a (finished) and b/0, b/1 are not computed again
    fail_flag.unlink()
    for p in log_dir.iterdir():
        p.unlink()
    res2 = run_batch(d / "list.tsv", d / "tmpl.mrc", d / "mask.mrc", out, **kw)
    assert all("error" not in r for r in res2)
    assert res2[0]["matched"] is False and res2[1]["matched"] is True
    assert set(_executions(log_dir)) == {("b", i) for i in range(2, n_units)}
    assert all(v == 1 for v in _executions(log_dir).values())
    for e in entries:  # byte-identical to the single-process run
        for fa, fb in zip(_files(refs, e.name), _files(out, e.name)):
            assert fa.read_bytes() == fb.read_bytes(), fb
        assert _job(refs / f"{e.name}_job.json") == _job(out / f"{e.name}_job.json")
        assert (out / f"{e.name}_particles.star").exists()
        assert not (out / f"{e.name}_checkpoints").exists()
    summary = json.loads((out / "batch_summary.json").read_text())
    assert [s["name"] for s in summary] == ["a", "b"] and all(s["n_particles"] >= 1 for s in summary)


# --------------------------------------------------------------------------- SLURM config, bad input


def test_slurm_config_becomes_slurmcluster_arguments(tmp_path, monkeypatch):
    import dask_jobqueue

    from tomomatch.distributed import make_cluster, read_slurm_config

    calls = {}

    class FakeSLURMCluster:
        def __init__(self, **kw):
            calls["kwargs"] = kw
            self.scheduler_address = "tcp://fake:8786"

        def scale(self, **kw):
            calls["scale"] = kw

        def adapt(self, **kw):
            calls["adapt"] = kw

    monkeypatch.setattr(dask_jobqueue, "SLURMCluster", FakeSLURMCluster)
    example = Path(__file__).resolve().parents[1] / "docs" / "slurm-example.yaml"
    cfg = read_slurm_config(example)
    assert cfg["cluster"]["queue"] and "scale" in cfg
    y = tmp_path / "s.yaml"
    y.write_text(
        "cluster:\n  queue: gpu\n  cores: 1\n  processes: 1\n  memory: 32GB\n  walltime: '02:00:00'\n"
        "  job_extra_directives: ['--gres=gpu:1']\nadapt:\n  minimum_jobs: 1\n  maximum_jobs: 8\n"
    )
    cluster, address = make_cluster(slurm_config=y, dashboard_address=":0")
    assert address == "tcp://fake:8786" and isinstance(cluster, FakeSLURMCluster)
    assert calls["kwargs"] == {
        "queue": "gpu",
        "cores": 1,
        "processes": 1,
        "memory": "32GB",
        "walltime": "02:00:00",
        "job_extra_directives": ["--gres=gpu:1"],
        "scheduler_options": {"dashboard_address": ":0"},
    }
    assert calls["adapt"] == {"minimum_jobs": 1, "maximum_jobs": 8}
    for bad in (
        "- a list\n",
        "cluster: {queue: q}\n",
        "cluster: {queue: q}\nscale: {jobs: 0}\n",
        "cluster: {queue: q}\nscale: {jobs: 2}\nadapt: {maximum_jobs: 3}\n",
        "cluster: {queue: q}\nscale: {jobs: 2}\nworkers: 3\n",
        "cluster: [unclosed\n",
    ):
        y.write_text(bad)
        with pytest.raises(InputError):
            read_slurm_config(y)


def test_bad_batch_inputs_exit_2(data, tmp_path, capsys):
    d = data["dir"]

    def run(lst, *extra, diameter=("--particle-diameter", "100")):
        return main(
            [
                "batch",
                "-l",
                str(lst),
                "-t",
                str(d / "tmpl.mrc"),
                "-m",
                str(d / "mask.mrc"),
                "-d",
                str(tmp_path / "o"),
                "--angular-step",
                "50",
                "--quiet",
                "--dashboard-address",
                "none",
                *diameter,
                *extra,
            ]
        )

    (tmp_path / "missing.tsv").write_text(f"tomogram\n{d / 'tomo0.mrc'}\n{d / 'nothere.mrc'}\n")
    assert run(tmp_path / "missing.tsv") == 2
    (tmp_path / "nocol.csv").write_text(f"path\n{d / 'tomo0.mrc'}\n")
    assert run(tmp_path / "nocol.csv") == 2
    (tmp_path / "typo.tsv").write_text(f"tomogram\ttilt_angle\n{d / 'tomo0.mrc'}\tx\n")
    assert run(tmp_path / "typo.tsv") == 2
    (tmp_path / "dup.tsv").write_text(f"tomogram\n{d / 'tomo0.mrc'}\n{d / 'tomo0.mrc'}\n")
    assert run(tmp_path / "dup.tsv") == 2
    assert run(tmp_path / "absent.tsv") == 2
    (tmp_path / "bad.yaml").write_text("cluster: {queue: q}\n")
    assert run(d / "list.tsv", "--slurm-config", str(tmp_path / "bad.yaml")) == 2
    assert run(d / "list.tsv", diameter=()) == 2  # extraction without --particle-diameter
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 7 and all(line.startswith("tomomatch batch: error:") for line in err), err
    assert "nothere.mrc" in err[0] and "tomogram" in err[1] and "tilt_angle" in err[2]
    assert not (tmp_path / "o").exists()


def test_relion5_star_list(data, tmp_path):
    from tomomatch.distributed import read_tomogram_list
    from tomomatch.metadata import write_relion5
    from tomomatch.tiltseries import TiltSeries

    d = data["dir"]
    ts = TiltSeries(
        tilt_angles_deg=TILTS,
        defocus_u_um=np.full(TILTS.size, 2.5),
        accumulated_dose=np.arange(TILTS.size) * 3.0,
        pixel_size_angstrom=5.0,
        hand=-1,
    )
    star = write_relion5(
        tmp_path / "Tomograms",
        ts,
        "TS_01",
        (96, 96, 48),
        2.0,
        tomogram_path=os.path.relpath(d / "tomo0.mrc", tmp_path / "Tomograms"),
    )
    write_relion5(tmp_path / "Tomograms", ts, "TS_02", (96, 96, 48), 2.0, tomogram_path=str(d / "tomo1.mrc"))
    entries = read_tomogram_list(star)
    assert [e.name for e in entries] == ["TS_01", "TS_02"]
    assert entries[0].tomogram.resolve() == (d / "tomo0.mrc").resolve()
    assert entries[1].tilt_series.hand == -1
    np.testing.assert_allclose(entries[1].tilt_series.defocus_u_um, 2.5)
    write_relion5(tmp_path / "Tomograms", ts, "TS_03", (96, 96, 48), 2.0, tomogram_path=str(d / "gone.mrc"))
    with pytest.raises(InputError, match="TS_03"):
        read_tomogram_list(star)


def test_batch_on_cuda_workers_equals_one_process():
    """One worker per GPU: identical to run_match on the same GPU (runs only where CUDA exists)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import tempfile

    from tomomatch.distributed import BatchEntry, run_batch
    from tomomatch.tiltseries import TiltSeries

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rng = np.random.default_rng(5)
        from scipy.spatial.transform import Rotation

        rots = Rotation.random(40, random_state=0).as_matrix()
        write_volume(d / "t.mrc", rng.normal(0, 0.2, SHAPE), VOXEL)
        write_volume(d / "tmpl.mrc", _template(), VOXEL)
        write_volume(d / "mask.mrc", _mask(), VOXEL)
        ts = TiltSeries(
            tilt_angles_deg=TILTS, defocus_u_um=np.full(TILTS.size, 3.0), accumulated_dose=np.arange(TILTS.size) * 3.0
        )
        match = dict(rotations=rots, tiles=(2, 1, 1), low_pass_angstrom=30.0, whiten=True, defocus_handedness=1)
        run_match(
            d / "tmpl.mrc", d / "mask.mrc", d / "t.mrc", d / "ref", name="t", tilt_series=ts, device="cuda", **match
        )
        res = run_batch(
            [BatchEntry("t", d / "t.mrc", ts)],
            d / "tmpl.mrc",
            d / "mask.mrc",
            d / "out",
            match=match,
            device="cuda",
            rotations_per_unit=8,
            dashboard_address=None,
        )
        assert "error" not in res[0]
        for fa, fb in zip(_files(d / "ref", "t"), _files(d / "out", "t")):
            assert fa.read_bytes() == fb.read_bytes(), fb


def test_batch_refuses_a_folder_another_run_owns(data, tmp_path):
    from tomomatch.distributed import read_tomogram_list, run_batch
    from tomomatch.errors import InputError
    from tomomatch.locking import JobLock

    d = data["dir"]
    entries = read_tomogram_list(d / "list.tsv")
    with JobLock(tmp_path / "out", entries[1].name, "match"):  # a match run writing tomogram b
        with pytest.raises(InputError, match="owns this job"):
            run_batch(
                entries,
                d / "tmpl.mrc",
                d / "mask.mrc",
                tmp_path / "out",
                match=dict(rotations=data["rots"]),
                device="cpu",
                n_workers=1,
                dashboard_address=None,
            )
    assert not (tmp_path / "out" / "batch.lock").exists()  # released on the way out
    assert not list((tmp_path / "out").glob("*_scores.mrc"))
