"""``tomomatch hand --device``: one code path for the CPU and CUDA, tested here on the CPU.

CI has no GPU: these tests pin that an explicit ``device="cpu"`` changes no number, that the
rotation grids follow the input tensor's device (checked with torch's ``meta`` device, on which
any tensor made on the CPU by mistake fails the operation), that the device reaches the
re-scoring, the coarse search and the report, and that bad devices are one-line errors.
``benchmarks/gpu_hand_question.py`` measures the CUDA path on a GPU machine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_hand import _tiny_gradient_case
from test_hand_pooled import _write_tiny_tomogram
from tomomatch.errors import InputError


def test_rescore_on_cpu_device_equals_the_default_call():
    """``device="cpu"`` (or a torch.device) gives bit-identical scores, poses and shifts, also
    through the tomogram preparation (band pass, whitening), for particles at the edge (mean
    padding) and with a non-spherical (rotated) mask."""
    from tomomatch.rescore import rescore_particles

    tomo, voxel, ts, tmpl, mask, pos, start = _tiny_gradient_case(-1, n=5, seed=3, nx=600)
    pos = pos.copy()
    pos[0, 2] = 0  # at the tomogram's z edge: part of its windows is padding
    half = mask.copy()
    half[:, :, : tmpl.shape[2] // 3] = 0  # not spherical: the mask is rotated too
    common = dict(max_angle_deg=4.0, angle_step_deg=4.0)
    cases = [
        (mask, {}),
        (mask, dict(low_pass_angstrom=20.0, whiten=True, shift_voxels=2, oversampling=1)),
        (half, {}),
    ]
    for msk, extra in cases:
        ref = rescore_particles(tomo, voxel, ts, tmpl, msk, pos, start, **common, **extra)
        for dev in ("cpu", torch.device("cpu")):
            got = rescore_particles(tomo, voxel, ts, tmpl, msk, pos, start, **common, **extra, device=dev)
            np.testing.assert_array_equal(got.scores, ref.scores)
            np.testing.assert_array_equal(got.best_rotation, ref.best_rotation)
            np.testing.assert_array_equal(got.best_shift_voxels, ref.best_shift_voxels)
            assert isinstance(got.scores, np.ndarray) and got.n_rotations == ref.n_rotations == 7


def test_windows_are_the_sliding_boxes_of_the_padded_region():
    """The windows, now cut by torch (where the region was sent), are numpy's sliding boxes."""
    from tomomatch.rescore import _window_region, _windows

    rng = np.random.default_rng(0)
    tomo = rng.normal(size=(12, 14, 16)).astype(np.float32)
    for centre in (np.array([6, 7, 8]), np.array([0, 13, 2])):  # inside, and over two edges
        x = _windows(tomo, centre, (5, 6, 7), 1, torch.device("cpu"))
        region = _window_region(tomo, centre, (5, 6, 7), 1)
        ref = np.lib.stride_tricks.sliding_window_view(region, (5, 6, 7)).reshape(-1, 5 * 6 * 7)
        assert x.dtype == torch.float64 and x.is_contiguous()
        np.testing.assert_array_equal(x.numpy(), ref)
    # outside the tomogram: the mean of the part inside
    region = _window_region(tomo, np.array([0, 0, 0]), (4, 4, 4), 1)
    assert region[0, 0, 0] == pytest.approx(tomo[:3, :3, :3].astype(np.float64).mean())


def test_rotate_volumes_keeps_the_input_device():
    """The grid is built on the input's device: a CPU tensor stays on the CPU with the numbers of
    the array call, and a ``meta`` tensor (no data, no CPU fallback) goes through, which it
    could not if any index, centre or matrix tensor were made on the CPU."""
    from scipy.spatial.transform import Rotation

    from tomomatch.rescore import rotate_volumes

    rng = np.random.default_rng(1)
    vol = rng.normal(size=(9, 10, 11)).astype(np.float32)
    rots = Rotation.random(3, random_state=2).as_matrix()
    out = rotate_volumes(torch.as_tensor(vol), rots)
    assert out.device.type == "cpu" and out.shape == (3, 9, 10, 11)
    np.testing.assert_array_equal(out.numpy(), rotate_volumes(vol, rots).numpy())
    meta = rotate_volumes(torch.empty(9, 10, 11, device="meta"), rots)
    assert meta.device.type == "meta" and meta.shape == (3, 9, 10, 11)
    fine = rotate_volumes(torch.empty(17, 19, 21, device="meta"), rots, oversampling=2, out_shape_zyx=(9, 10, 11))
    assert fine.device.type == "meta" and fine.shape == (3, 9, 10, 11)


@pytest.mark.parametrize(
    "device, message",
    [
        ("tpu", "unknown device 'tpu'"),
        (
            "cuda:7",
            "no CUDA device is available" if not torch.cuda.is_available() else "CUDA device(s) exist",
        ),
    ],
)
def test_cli_hand_bad_device_is_one_line(tmp_path, capsys, device, message):
    from tomomatch.cli import main

    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "h"
    # checked first: nothing else on the command line is read (the tomogram does not exist)
    assert main(["hand", "-o", str(out), "-v", str(tmp_path / "none.mrc"), "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tomomatch hand: error: --device:") and message in err[0], err
    assert not list(tmp_path.iterdir())


def test_python_api_bad_device_before_any_work(tmp_path):
    from tomomatch.hand import HandTomogram, run_hand, run_hand_pooled
    from tomomatch.rescore import rescore_particles

    with pytest.raises(InputError, match="unknown device 'tpu'") as exc:
        run_hand(tmp_path / "h", tomogram=tmp_path / "missing.mrc", device="tpu")
    assert exc.value.field == "--device"
    # pooled: the caller's error, not the first tomogram's
    with pytest.raises(InputError, match="unknown device") as exc:
        run_hand_pooled(tmp_path / "p", [HandTomogram("TS_1", job=tmp_path / "missing.json")], device="tpu")
    assert "TS_1" not in str(exc.value)
    with pytest.raises(InputError, match="unknown device"):
        rescore_particles(np.zeros((8, 8, 8)), 5.0, None, np.ones((4, 4, 4)), np.ones((4, 4, 4)), [], [], device="x")
    assert not list(tmp_path.iterdir())


def test_cli_hand_device_in_the_report(tmp_path, capsys):
    """``--device cpu`` reaches the re-scoring and is recorded (``method.device``), single and pooled."""
    from tomomatch.cli import main

    _write_tiny_tomogram(tmp_path, "TS_1", -1, seed=5, n=6)
    d = tmp_path
    meta = ["-a", str(d / "TS_1.tlt"), "--dose", str(d / "TS_1_dose.txt"), "--defocus", str(d / "TS_1_defocus.txt")]
    files = ["-v", str(d / "TS_1.mrc"), "-t", str(d / "template.mrc"), "-m", str(d / "mask.mrc")]
    opts = ["--max-angle", "0", "--no-figure", "--bootstrap", "200"]
    out = d / "h"
    rc = main(["hand", "-o", str(out), *files, "-p", str(d / "TS_1.star"), *meta, *opts, "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["method"]["device"] == "cpu" and doc["n_particles"] == 6
    # the default is the CPU, recorded the same way
    rc = main(["hand", "-o", str(d / "h0"), *files, "-p", str(d / "TS_1.star"), *meta, *opts])
    assert rc == 0
    doc0 = json.loads((d / "h0.json").read_text())
    assert doc0["method"]["device"] == "cpu"
    assert doc0["particles"]["delta"] == doc["particles"]["delta"]


def test_device_reaches_the_pooled_runs_and_the_coarse_search(tmp_path, monkeypatch, capsys):
    """The CLI hands ``--device`` to every tomogram of a pooled run, and ``run_hand``'s own coarse
    search (no candidates, no job) runs on it (caught here at ``run_match``)."""
    import tomomatch.hand as hand_mod
    import tomomatch.job as job_mod
    from tomomatch.cli import main
    from tomomatch.mrcio import write_volume
    from tomomatch.tiltseries import TiltSeries

    seen: list = []

    def fake_run_hand(prefix, **kw):
        seen.append(kw["device"])
        raise hand_mod.NoCandidatesError("stop here")

    monkeypatch.setattr(hand_mod, "run_hand", fake_run_hand)
    (tmp_path / "j1.json").write_text("{}")
    (tmp_path / "j2.json").write_text("{}")
    rc = main(["hand", "-o", str(tmp_path / "p"), "--job", str(tmp_path / "j1.json"), str(tmp_path / "j2.json")])
    assert rc == 2 and seen == ["cpu", "cpu"]  # both excluded (no candidates): an error, after both ran
    assert "no tomogram has candidates" in capsys.readouterr().err
    monkeypatch.undo()

    class Stop(Exception):
        pass

    def fake_run_match(template, mask, tomogram, out_dir, options, **kw):
        seen.append(options.device)
        raise Stop

    monkeypatch.setattr(job_mod, "run_match", fake_run_match)
    rng = np.random.default_rng(0)
    for name, shape in (("t", (8, 8, 8)), ("m", (8, 8, 8)), ("v", (16, 16, 16))):
        write_volume(tmp_path / f"{name}.mrc", rng.normal(size=shape).astype(np.float32), 10.0)
    ts = TiltSeries(tilt_angles_deg=[-30.0, 0.0, 30.0], defocus_u_um=[3.0] * 3)
    with pytest.raises(Stop):
        hand_mod.run_hand(
            tmp_path / "h",
            tomogram=tmp_path / "v.mrc",
            template=tmp_path / "t.mrc",
            mask=tmp_path / "m.mrc",
            tilt_series=ts,
            device=torch.device("cpu"),
        )
    assert seen[-1] == "cpu"
