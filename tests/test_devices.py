"""Several devices in one match job (``--device cuda:0,1``, ``cuda:all``): the device list, the
worker slots, and outputs identical to one device. CI has no GPU, so the assignment and merge run
with several CPU "devices" (``cpu,cpu``), the same code path a GPU list takes."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import torch

from tomomatch import matching as M
from tomomatch.angles import uniform_rotations
from tomomatch.cli import main
from tomomatch.errors import InputError
from tomomatch.job import _pool_init, _pool_unit, plan_match, prepare_checkpoints, run_match, worker_slots
from tomomatch.matching import parse_devices
from tomomatch.mrcio import write_volume

from _synthetic import asymmetric_template, sphere_mask

N = 12
SHAPE = (26, 30, 36)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("devices")
    rots = uniform_rotations(60.0)
    vol = np.random.default_rng(3).normal(0, 0.15, SHAPE)
    vol[7:19, 9:21, 12:24] += M.rotate_volume(asymmetric_template(N), rots[5], order=3)
    write_volume(d / "tomo.mrc", vol, 10.0)
    write_volume(d / "tmpl.mrc", asymmetric_template(N), 10.0)
    write_volume(d / "mask.mrc", sphere_mask(N), 10.0)
    return {"dir": d, "rots": rots}


def test_parse_devices_lists_and_single_names():
    assert parse_devices("cpu") == ["cpu"]
    assert parse_devices(None) == ["cpu"]
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    assert parse_devices(" cpu , cpu ,cpu") == ["cpu"] * 3
    # without a GPU the syntax is still checked (check=False: batch and cluster plans)
    assert parse_devices("cuda:0,1,3", check=False) == ["cuda:0", "cuda:1", "cuda:3"]
    assert parse_devices("cuda:0,cuda:2", check=False) == ["cuda:0", "cuda:2"]
    assert parse_devices("cuda:1,1", check=False) == ["cuda:1", "cuda:1"]  # two workers on one GPU
    assert parse_devices("cuda", check=False) == ["cuda"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cuda:0,,1", "empty entry"),
        ("cpu,cuda:0", "mixes CPU and CUDA"),
        ("tpu", "unknown device"),
        ("cuda:x", "unknown device"),
    ],
)
def test_parse_devices_refuses_bad_lists(spec, message):
    with pytest.raises(InputError, match=message) as exc:
        parse_devices(spec, check=False)
    assert "\n" not in str(exc.value) and exc.value.field == "--device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda:all", "cuda:0,1", "cuda"])
def test_gpu_lists_without_cuda_are_one_line_errors(spec):
    with pytest.raises(InputError, match="no CUDA device is available"):
        parse_devices(spec)


def test_worker_slots_take_the_devices_in_turn():
    assert worker_slots(["cuda:0", "cuda:1"], 2) == [(0, "cuda:0"), (1, "cuda:1")]
    assert worker_slots(["cuda:0", "cuda:1"], 5) == [
        (0, "cuda:0"),
        (1, "cuda:1"),
        (2, "cuda:0"),
        (3, "cuda:1"),
        (4, "cuda:0"),
    ]
    assert worker_slots(["cpu"], 3) == [(0, "cpu"), (1, "cpu"), (2, "cpu")]


def test_pool_worker_computes_on_its_slot_device(data, tmp_path, monkeypatch):
    """A pool worker takes one (slot, device) at start-up and computes every unit it gets there;
    the result names its slot."""
    import queue

    import tomomatch.job as J

    d = data["dir"]
    plan = plan_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path, rotations=data["rots"][:6], min_units=2)
    prepare_checkpoints(plan)
    seen = []
    real = J.run_unit

    def spy(plan, unit, *, device=None, on_progress=None):
        seen.append(device)
        return real(plan, unit, device=device, on_progress=on_progress)

    monkeypatch.setattr(J, "run_unit", spy)
    monkeypatch.setattr(J, "_WORKER_SLOT", (0, None))
    q: queue.Queue = queue.Queue()
    q.put((3, "cpu"))
    threads = torch.get_num_threads()
    try:
        _pool_init(None, q)
    finally:
        torch.set_num_threads(threads)
    res = _pool_unit(plan, plan.units[1])
    assert seen == ["cpu"] and res.worker == 3 and q.empty()


def _maps(out):
    with mrcfile.open(out / "tomo_scores.mrc", permissive=True) as f:
        scores = np.array(f.data)
    with mrcfile.open(out / "tomo_angles.mrc", permissive=True) as f:
        angles = np.array(f.data)
    return scores, angles


def test_two_cpu_devices_give_the_one_device_outputs(data, tmp_path):
    """``--device cpu,cpu`` runs two workers (the path of ``cuda:0,1``) and merges to the same bytes
    as one device; the job records the devices and what each worker slot computed."""
    d = data["dir"]
    rots = data["rots"][:16]
    kw = dict(rotations=rots, tiles=(2, 1, 1), rotations_per_unit=4, checkpoint_interval_s=0)
    one = run_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path / "one", processes=1, **kw)
    two = run_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path / "two", device="cpu,cpu", **kw)
    s1, a1 = _maps(tmp_path / "one")
    s2, a2 = _maps(tmp_path / "two")
    assert s1.tobytes() == s2.tobytes() and a1.tobytes() == a2.tobytes()
    assert one["search_statistics"] == two["search_statistics"]
    ex = two["execution"]
    assert ex["devices"] == ["cpu", "cpu"] and ex["processes"] == 2
    assert [w["slot"] for w in ex["workers"]] == [0, 1] and {w["device"] for w in ex["workers"]} == {"cpu"}
    n_units = 2 * len(rots) // 4
    assert sum(w["units"] for w in ex["workers"]) == n_units
    assert sum(w["rotations"] for w in ex["workers"]) == 2 * len(rots)
    assert two["options"]["device"] == "cpu"  # the plan's (first) device
    assert one["execution"]["workers"] == [{"slot": 0, "device": "cpu", "units": n_units, "rotations": 2 * len(rots)}]


def test_cli_device_list_and_its_errors(data, tmp_path, capsys):
    d = data["dir"]
    common = ["match", "-t", str(d / "tmpl.mrc"), "-m", str(d / "mask.mrc"), "-v", str(d / "tomo.mrc")]
    common += ["--angular-step", "90", "--quiet"]
    assert main([*common, "-d", str(tmp_path / "a"), "--device", "cpu,cpu"]) == 0
    job = json.loads(next((tmp_path / "a").glob("*_job.json")).read_text())
    assert job["execution"]["devices"] == ["cpu", "cpu"]
    capsys.readouterr()
    assert main([*common, "-d", str(tmp_path / "b"), "--device", "cpu,,cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty entry" in err[0]
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").glob("*_job.json"))


def test_batch_refuses_a_device_list(tmp_path):
    from tomomatch.distributed import run_batch

    (tmp_path / "list.txt").write_text("tomogram\n")
    with pytest.raises(InputError, match="for `tomomatch match`"):
        run_batch(tmp_path / "list.txt", tmp_path / "t.mrc", tmp_path / "m.mrc", tmp_path / "o", device="cuda:0,1")
