"""The engine configuration in a job (checkpoint key, job file, resume) and the job's error
paths that must not hide engine failures (damaged checkpoints only; thread counts restored)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tomomatch import job as J
from tomomatch.angles import uniform_rotations
from tomomatch.job import execute_local, load_unit, plan_match, prepare_checkpoints, run_match, run_unit
from tomomatch.matching import EngineConfig, configure_allocator
from tomomatch.mrcio import write_volume

from _synthetic import asymmetric_template, sphere_mask

N = 12
_ENGINE_VARS = (
    "TOMOMATCH_FFT_SIZES",
    "TOMOMATCH_FFTW",
    "TOMOMATCH_FFTW_MIN_VOXELS",
    "TOMOMATCH_PACKED",
    "TOMOMATCH_FUSED",
    "TRITON_INTERPRET",
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    vol = np.random.default_rng(3).normal(0, 0.15, (24, 26, 30))
    vol[6:18, 8:20, 10:22] += asymmetric_template(N)
    write_volume(d / "tomo.mrc", vol, 10.0)
    write_volume(d / "tmpl.mrc", asymmetric_template(N), 10.0)
    write_volume(d / "mask.mrc", sphere_mask(N), 10.0)
    return d


@pytest.fixture
def clean_env(monkeypatch):
    for k in _ENGINE_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _plan(files, out, **kw):
    return plan_match(
        files / "tmpl.mrc",
        files / "mask.mrc",
        files / "tomo.mrc",
        out,
        rotations=uniform_rotations(90.0)[:8],
        name="e",
        batch_size=2,
        **kw,
    )


def test_engine_config_enters_the_key_and_a_unit_is_not_resumed_under_another(files, tmp_path, clean_env):
    a = _plan(files, tmp_path, engine=EngineConfig())
    b = _plan(files, tmp_path, engine=EngineConfig(packed=False))
    assert a.key != b.key and a.engine != b.engine
    assert a.units == b.units and a.unit_path(a.units[0]) == b.unit_path(b.units[0])  # the same file
    assert _plan(files, tmp_path, engine=EngineConfig()).key == a.key  # nothing else differs
    # plan_match reads the environment when not given a configuration
    clean_env.setenv("TOMOMATCH_PACKED", "0")
    from_env = _plan(files, tmp_path)
    assert from_env.engine == EngineConfig(packed=False) and from_env.key == b.key
    clean_env.delenv("TOMOMATCH_PACKED")
    assert _plan(files, tmp_path).key == a.key

    prepare_checkpoints(a)
    u = a.units[0]
    run_unit(a, u)
    assert load_unit(a, u).done == u.stop
    assert load_unit(b, u) is None  # the same file, computed under the other configuration
    prepare_checkpoints(b)  # the folder of another key is discarded
    assert not a.unit_path(u).exists()
    results = execute_local(b)
    assert [r.resumed for r in results] == [0] * len(b.units)


def test_job_file_records_the_engine_config(files, tmp_path, clean_env):
    cfg = EngineConfig(packed=False, fftw=False)
    job = run_match(
        files / "tmpl.mrc",
        files / "mask.mrc",
        files / "tomo.mrc",
        tmp_path,
        rotations=uniform_rotations(90.0)[:4],
        name="j",
        engine=cfg,
    )
    assert job["engine"]["config"] == cfg.to_json()
    assert EngineConfig.from_json(job["engine"]["config"]) == cfg
    assert job["engine"]["packed_pairs"] is False and job["engine"]["fft_library"] == "scipy"


def test_damaged_checkpoints_are_recomputed_other_errors_propagate(files, tmp_path, clean_env):
    plan = _plan(files, tmp_path)
    prepare_checkpoints(plan)
    u = plan.units[0]
    run_unit(plan, u)
    path = plan.unit_path(u)
    good = path.read_bytes()
    with np.load(io.BytesIO(good)) as z:
        fields = dict(z)
    no_done = {k: v for k, v in fields.items() if k != "done"}
    buf = io.BytesIO()
    np.savez(buf, **no_done)
    for damaged in (good[: len(good) // 2], b"", b"not a checkpoint" * 8, pickle.dumps(fields), buf.getvalue()):
        path.write_bytes(damaged)
        assert load_unit(plan, u) is None
    path.write_bytes(good)
    assert load_unit(plan, u).done == u.stop

    def fail(exc):
        def f(*args, **kwargs):
            raise exc

        return f

    # not a damaged file: a failure of this machine, which must not be taken for one
    for exc in (MemoryError(), RuntimeError("CUDA error: an illegal memory access was encountered")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(J.TileState, "from_numpy", fail(exc))
            with pytest.raises(type(exc)):
                load_unit(plan, u)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(J.np, "load", fail(MemoryError()))
        with pytest.raises(MemoryError):
            load_unit(plan, u)


def test_thread_count_is_restored(files, tmp_path, clean_env):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(ZeroDivisionError):
            with J._one_torch_thread():
                assert torch.get_num_threads() == 1
                1 / 0
        assert torch.get_num_threads() == 2
        plan = _plan(files, tmp_path)
        prepare_checkpoints(plan)
        run_unit(plan, plan.units[0])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_huge_pages_are_set_where_the_engine_starts_not_on_import(clean_env):
    clean_env.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    configure_allocator()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    clean_env.setenv("THP_MEM_ALLOC_ENABLE", "0")  # a user's own value wins
    configure_allocator()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
    # importing tomomatch (the engine included) leaves it alone; the command line sets it first
    script = (
        "import os, tomomatch, tomomatch.matching, tomomatch.job\n"
        "print('THP', os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
        "from tomomatch.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print('THP', os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [ln for ln in out.stdout.splitlines() if ln.startswith("THP")] == ["THP None", "THP 1"]
