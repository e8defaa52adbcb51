"""MatchOptions: validation before any work, JSON round trip, one CLI builder, the job record."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest

from tomomatch.errors import InputError
from tomomatch.options import MatchOptions, WeightingOptions, add_match_arguments, match_options_from_args


def test_round_trip_and_flat_keywords():
    o = MatchOptions.from_flat(
        angular_step_deg=30,
        low_pass_angstrom=20,
        wedge="per-tilt",
        tiles=["3", "1", "1"],
        defocus_handedness=-1,
        ctf="none",
    )
    assert o.weighting == WeightingOptions(wedge="per_tilt", ctf=None, low_pass_angstrom=20.0)
    assert o.tiles == (3, 1, 1) and o.defocus_handedness == -1
    assert MatchOptions.from_json(json.loads(json.dumps(o.to_json()))) == o
    assert o.with_(high_pass_angstrom=200.0).weighting.high_pass_angstrom == 200.0
    assert replace(o, tiles="auto").to_json()["tiles"] == "auto"
    with pytest.raises(TypeError, match="unknown match option"):
        MatchOptions.from_flat(angular_stepp=3)


@pytest.mark.parametrize(
    "kw, flag",
    [
        (dict(angular_step_deg=0), "--angular-step"),
        (dict(angular_step_deg=float("nan")), "--angular-step"),
        (dict(particle_diameter_angstrom=-5), "--particle-diameter"),
        (dict(low_pass_angstrom=-5), "--low-pass"),
        (dict(low_pass_angstrom=40, high_pass_angstrom=20), "--low-pass"),
        (dict(wedge="half"), "--wedge"),
        (dict(ctf="flipped"), "--ctf"),
        (dict(method="slow"), "--method"),
        (dict(hand_mode="warp"), "--hand-mode"),
        (dict(defocus_handedness=2), "--defocus-handedness"),
        (dict(tiles=(0, 1, 1)), "--tiles"),
        (dict(tiles=("a", 1, 1)), "--tiles"),
        (dict(tiles=(2, 1)), "--tiles"),
        (dict(max_memory_gb=0), "--max-memory"),
        (dict(checkpoint_interval_s=-1), "--checkpoint-interval"),
        (dict(batch_size=0), "--batch-size"),
        (dict(symmetry="X3"), "symmetry"),
        (dict(name="../x"), "--name"),
        (dict(voxel_size_angstrom=-1), "--voxel-size"),
    ],
)
def test_every_value_checked_at_construction(kw, flag):
    with pytest.raises(InputError) as exc:
        MatchOptions.from_flat(**kw)
    assert exc.value.field == flag and "\n" not in str(exc.value)


def test_from_json_names_the_file():
    with pytest.raises(InputError) as exc:
        MatchOptions.from_json({"method": "slow"}, source="j.json")
    assert exc.value.path == "j.json" and "--method" in exc.value.field
    with pytest.raises(InputError):
        MatchOptions.from_json({"speed": 1}, source="j.json")


def _parse(batch: bool, argv):
    p = argparse.ArgumentParser()
    add_match_arguments(p, batch=batch)
    return match_options_from_args(p.parse_args(argv))


def test_match_and_batch_share_one_builder():
    argv = [
        "--angular-step",
        "12",
        "--low-pass",
        "25",
        "--wedge",
        "binary",
        "--ctf",
        "abs",
        "--no-dose",
        "--defocus-handedness",
        "-1",
        "--hand-mode",
        "pytom",
        "--tiles",
        "2",
        "1",
        "1",
        "--random-phase",
        "--method",
        "resample",
        "--max-memory",
        "2",
        "--checkpoint-interval",
        "5",
        "--whiten",
    ]
    a, b = _parse(False, argv), _parse(True, argv)
    assert a == b
    assert a.weighting == WeightingOptions(wedge="binary", ctf="abs", dose=False, low_pass_angstrom=25.0, whiten=True)
    assert a.hand_mode == "pytom" and a.tiles == (2, 1, 1) and a.method == "resample"


def test_job_records_resolved_options_and_returns_the_file_as_read(tmp_path):
    from _synthetic import asymmetric_template, sphere_mask
    from tomomatch.jobfile import job_options, read_job
    from tomomatch.job import plan_match, run_match
    from tomomatch.mrcio import write_volume
    from tomomatch.tiltseries import TiltSeries

    rng = np.random.default_rng(0)
    write_volume(tmp_path / "t.mrc", asymmetric_template(12), 10.0)
    write_volume(tmp_path / "m.mrc", sphere_mask(12, 5), 10.0)
    write_volume(tmp_path / "v.mrc", rng.normal(size=(16, 20, 24)).astype(np.float32), 10.0)
    ts = TiltSeries(tilt_angles_deg=[-30.0, 0.0, 30.0], defocus_u_um=[3.0] * 3, hand=-1)
    opts = MatchOptions(angular_step_deg=90.0, weighting=WeightingOptions(low_pass_angstrom=30.0))
    plan = plan_match(tmp_path / "t.mrc", tmp_path / "m.mrc", tmp_path / "v.mrc", tmp_path / "o", opts, tilt_series=ts)
    # resolved: the metadata's hand, the per-tilt wedge, the CTF used, the canonical symmetry
    assert plan.options.defocus_handedness == -1 and plan.options.weighting.wedge == "per_tilt"
    assert plan.options.weighting.ctf == "signed" and plan.options.name == "v"
    job = run_match(tmp_path / "t.mrc", tmp_path / "m.mrc", tmp_path / "v.mrc", tmp_path / "o", opts, tilt_series=ts)
    assert job == read_job(tmp_path / "o" / "v_job.json")
    assert job_options(job) == plan.options
    assert job["scores"] == str((tmp_path / "o" / "v_scores.mrc").resolve())
    # no CTF (no defocus in the metadata): the record says so, not "signed"
    job2 = run_match(
        tmp_path / "t.mrc",
        tmp_path / "m.mrc",
        tmp_path / "v.mrc",
        tmp_path / "o2",
        opts,
        tilt_series=TiltSeries(tilt_angles_deg=[-30.0, 0.0, 30.0]),
    )
    assert job_options(job2).weighting.ctf is None and job2["weighting"]["ctf"] is None


def test_hand_refuses_a_job_matched_without_ctf(tmp_path):
    from _synthetic import asymmetric_template, sphere_mask
    from tomomatch.hand import run_hand
    from tomomatch.job import run_match
    from tomomatch.mrcio import write_volume
    from tomomatch.tiltseries import TiltSeries

    rng = np.random.default_rng(0)
    write_volume(tmp_path / "t.mrc", asymmetric_template(12), 10.0)
    write_volume(tmp_path / "m.mrc", sphere_mask(12, 5), 10.0)
    write_volume(tmp_path / "v.mrc", rng.normal(size=(16, 20, 24)).astype(np.float32), 10.0)
    ts = TiltSeries(tilt_angles_deg=[-30.0, 0.0, 30.0], defocus_u_um=[3.0] * 3, hand=1)
    job = run_match(
        tmp_path / "t.mrc",
        tmp_path / "m.mrc",
        tmp_path / "v.mrc",
        tmp_path / "o",
        angular_step_deg=90.0,
        ctf=None,
        tilt_series=ts,
    )
    with pytest.raises(InputError, match="without a CTF") as exc:
        run_hand(tmp_path / "h", job=job)
    assert exc.value.field == "weighting.ctf"
