"""Whole match jobs: CLI outputs and job file, split vs unsplit, gradient offsets, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomomatch import matching as M
from tomomatch.angles import read_rotations, uniform_rotations
from tomomatch.cli import main
from tomomatch.errors import InputError
from tomomatch.job import plan_match, read_job, run_match
from tomomatch.mrcio import write_volume

from _synthetic import asymmetric_template, sphere_mask

N = 12
VOXEL = 10.0
SHAPE = (30, 34, 44)
TILTS = np.arange(-60, 61, 15.0)


def _template():
    return asymmetric_template(N)


def _mask():
    return sphere_mask(N)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rots = uniform_rotations(90.0)
    vol = np.random.default_rng(0).normal(0, 0.15, SHAPE)
    truth = [((12, 10, 9), 17), ((15, 22, 30), 41)]
    for (pz, py, px), k in truth:
        vol[pz - N // 2 : pz + N // 2, py - N // 2 : py + N // 2, px - N // 2 : px + N // 2] += M.rotate_volume(
            _template(), rots[k], order=3
        )
    write_volume(d / "tomo.mrc", vol, VOXEL)
    write_volume(d / "tmpl.mrc", _template(), VOXEL)
    write_volume(d / "mask.mrc", _mask(), VOXEL)
    (d / "tilts.tlt").write_text("\n".join(f"{t:g}" for t in TILTS) + "\n")
    return {"dir": d, "rots": rots, "truth": truth, "vol": vol}


def _args(data, out, *extra):
    d = data["dir"]
    return [
        "match",
        "-t",
        str(d / "tmpl.mrc"),
        "-m",
        str(d / "mask.mrc"),
        "-v",
        str(d / "tomo.mrc"),
        "-d",
        str(out),
        "--quiet",
        *extra,
    ]


def _read(path):
    with mrcfile.open(path) as m:
        return np.array(m.data)


def test_cli_outputs_and_job_file(data, tmp_path):
    out = tmp_path / "out"
    assert main(_args(data, out, "--angular-step", "90", "--name", "j")) == 0
    job = read_job(out / "j_job.json")
    for key in (
        "tomomatch_version",
        "job_format",
        "name",
        "tomogram",
        "tomogram_shape_zyx",
        "voxel_size_angstrom",
        "template",
        "mask",
        "template_shape_zyx",
        "mask_is_spherical",
        "scores",
        "angles",
        "rotations",
        "angular_step_deg",
        "symmetry",
        "n_rotations",
        "particle_diameter_angstrom",
        "defocus_handedness",
        "hand_mode",
        "tiles",
        "tile_regions",
        "weighting",
        "tilt_series",
        "relion",
        "search_statistics",
        "device",
        "elapsed_s",
        "command",
    ):
        assert key in job, key
    assert job["tomogram_shape_zyx"] == list(SHAPE) and job["mask_is_spherical"] is True
    # the engine that produced the maps: packed pairs, separate kernels on a small CPU tile
    assert {k: job["engine"][k] for k in ("packed_pairs", "fold", "fft_sizes", "fft_library")} == {
        "packed_pairs": True,
        "fold": "separate",
        "fft_sizes": "5-smooth",
        "fft_library": "torch",
    }
    assert (out / job["tomogram"]).resolve() == (data["dir"] / "tomo.mrc").resolve()
    scores, angles = _read(out / "j_scores.mrc"), _read(out / "j_angles.mrc")
    assert scores.dtype == np.float32 and angles.dtype == np.float32 and scores.shape == SHAPE
    rots = read_rotations(out / job["rotations"])
    np.testing.assert_allclose(rots, data["rots"], atol=1e-6)
    assert job["n_rotations"] == len(rots)
    st = job["search_statistics"]
    assert st["n_voxels"] == int(np.prod(SHAPE)) and st["n_search"] == st["n_voxels"] * len(rots)
    assert abs(st["mean"]) < 0.05 and 0 < st["std"] < 0.5
    for p, k in data["truth"]:
        sl = tuple(slice(c - 2, c + 3) for c in p)
        i = np.unravel_index(np.argmax(scores[sl]), scores[sl].shape)
        assert tuple(c - 2 + j for c, j in zip(p, i)) == p
        assert int(angles[p]) == k
        assert scores[p] > 0.6
    assert not (out / "j_checkpoints").exists()
    assert not list(out.glob(".*part"))


def _interior(shape, reach):
    return tuple(slice(reach, s - reach) for s in shape)


def test_split_equals_unsplit_without_gradient(data, tmp_path):
    d = data["dir"]
    common = dict(rotations=data["rots"][:24], wedge="per_tilt", low_pass_angstrom=25.0, quiet=True)
    from tomomatch.tiltseries import TiltSeries

    ts = TiltSeries(
        tilt_angles_deg=TILTS, defocus_u_um=np.full(TILTS.size, 3.0), accumulated_dose=np.arange(TILTS.size) * 3.0
    )
    a = run_match(
        d / "tmpl.mrc",
        d / "mask.mrc",
        d / "tomo.mrc",
        tmp_path / "a",
        tilt_series=ts,
        defocus_handedness=0,
        tiles=(1, 1, 1),
        **common,
    )
    b = run_match(
        d / "tmpl.mrc",
        d / "mask.mrc",
        d / "tomo.mrc",
        tmp_path / "b",
        tilt_series=ts,
        defocus_handedness=0,
        tiles=(3, 2, 1),
        **common,
    )
    assert len(b["tile_regions"]) == 6
    sa, sb = _read(tmp_path / "a" / "tomo_scores.mrc"), _read(tmp_path / "b" / "tomo_scores.mrc")
    aa, ab = _read(tmp_path / "a" / "tomo_angles.mrc"), _read(tmp_path / "b" / "tomo_angles.mrc")
    inner = _interior(SHAPE, N // 2)
    assert np.abs(sa[inner] - sb[inner]).max() < 1e-5
    assert np.mean(aa[inner] == ab[inner]) > 0.999  # float round-off may swap exact near-ties
    assert np.all(ab >= 0)
    # the statistics cover the same searched values
    assert b["search_statistics"]["n_search"] == a["search_statistics"]["n_search"]
    assert b["search_statistics"]["std"] == pytest.approx(a["search_statistics"]["std"], rel=2e-3)

    # with a hand, outer tiles get their own defocus; the centre x-tile (zero offset) is unchanged
    c = run_match(
        d / "tmpl.mrc",
        d / "mask.mrc",
        d / "tomo.mrc",
        tmp_path / "c",
        tilt_series=ts,
        defocus_handedness=1,
        tiles=(3, 1, 1),
        **common,
    )
    sc = _read(tmp_path / "c" / "tomo_scores.mrc")
    regs = c["tile_regions"]
    assert np.allclose(regs[1]["defocus_offsets_um"], 0) and not np.allclose(regs[0]["defocus_offsets_um"], 0)
    x0, x1 = regs[1]["unique_start_zyx"][2], regs[1]["unique_stop_zyx"][2]
    centre = (slice(N // 2, SHAPE[0] - N // 2), slice(N // 2, SHAPE[1] - N // 2), slice(x0, x1))
    assert np.abs(sc[centre] - sa[centre]).max() < 1e-5
    left = (
        slice(N // 2, SHAPE[0] - N // 2),
        slice(N // 2, SHAPE[1] - N // 2),
        slice(N // 2, regs[0]["unique_stop_zyx"][2]),
    )
    assert np.abs(sc[left] - sa[left]).max() > 1e-4
    # hand-computed offset of the left tile: x centre index 7 of 44 -> (7 - 22) * 10 = -150 A
    assert regs[0]["centre_angstrom_xyz"][0] == -150.0
    # h = +1: depth -x sin t = +150 sin t A
    np.testing.assert_allclose(regs[0]["defocus_offsets_um"], 150.0 * np.sin(np.radians(TILTS)) / 1e4)


def _run_cli_subprocess(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tomomatch", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )


def _job_without_run_fields(path):
    job = json.loads(Path(path).read_text())
    for k in ("elapsed_s", "command", "resumed_rotations", "execution"):
        job.pop(k, None)
    return job


@pytest.mark.parametrize("fftw_x_pass", [False, True])
def test_resume_after_sigkill_gives_identical_outputs(data, tmp_path, monkeypatch, fftw_x_pass):
    """Also with the CPU's FFTW x pass (big grids; forced here): its plan is deterministic, so the
    resumed run ends with the uninterrupted run's maps, bit for bit."""
    if fftw_x_pass:
        pytest.importorskip("pyfftw")
        monkeypatch.setenv("TOMOMATCH_FFTW_MIN_VOXELS", "0")
    common = [
        "--angular-step",
        "60",
        "--tiles",
        "2",
        "1",
        "1",
        "--batch-size",
        "1",
        "--checkpoint-interval",
        "0",
        "--name",
        "r",
    ]
    ref = _run_cli_subprocess(_args(data, tmp_path / "ref", *common))
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()

    out = tmp_path / "killed"
    p = _run_cli_subprocess(_args(data, out, *common))
    ck = out / "r_checkpoints" / "tile_0000.npz"
    t0 = time.time()
    while not ck.exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "run ended before it could be killed"
    assert not (out / "r_job.json").exists() and not (out / "r_scores.mrc").exists()
    with np.load(ck) as st:
        assert 0 < int(st["done"])
    again = _run_cli_subprocess(_args(data, out, *common))
    assert again.wait(timeout=300) == 0, again.stderr.read().decode()
    job = json.loads((out / "r_job.json").read_text())
    assert job["resumed_rotations"] > 0
    assert job["engine"]["fft_library"] == ("torch+fftw" if fftw_x_pass else "torch")
    for f in ("r_scores.mrc", "r_angles.mrc"):  # identical data and header (but the label's time stamp)
        with mrcfile.open(out / f) as a, mrcfile.open(tmp_path / "ref" / f) as b:
            assert np.array_equal(a.data, b.data), f
            ha, hb = a.header.copy(), b.header.copy()
            ha["label"] = hb["label"] = b""
            assert ha.tobytes() == hb.tobytes(), f
    assert (out / "r_rotations.txt").read_bytes() == (tmp_path / "ref" / "r_rotations.txt").read_bytes()
    assert _job_without_run_fields(out / "r_job.json") == _job_without_run_fields(tmp_path / "ref" / "r_job.json")
    assert not (out / "r_checkpoints").exists()


def test_checkpoint_of_another_command_is_not_reused(data, tmp_path):
    d = data["dir"]
    kw = dict(rotations=data["rots"][:6], quiet=True, name="x")
    run_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path / "ref", **kw)
    # plant a finished-looking checkpoint with garbage under a different key
    ck = tmp_path / "o" / "x_checkpoints"
    ck.mkdir(parents=True)
    (ck / "key.txt").write_text("someotherkey\n")
    (ck / "geometry.txt").write_text("2\n")
    st = M.TileState.empty(SHAPE, "cpu")
    st.best[:] = 5.0
    st.index[:] = 0
    st.done, st.count = 6, 1
    np.savez(ck / "tile_0000.npz", **st.to_numpy())
    job = run_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path / "o", **kw)
    assert job["resumed_rotations"] == 0
    assert np.array_equal(_read(tmp_path / "o" / "x_scores.mrc"), _read(tmp_path / "ref" / "x_scores.mrc"))


def test_old_geometry_checkpoints_and_job_files_stop_with_one_line(data, tmp_path, capsys):
    """Results of tilt-geometry version 1 (the mirror image, no geometry record) are refused."""
    d = data["dir"]
    kw = dict(rotations=data["rots"][:6], quiet=True, name="x")
    job = run_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path / "new", **kw)
    assert job["geometry_version"] == 2
    # a job file written before the geometry was recorded: extract and hand stop with one line
    old = json.loads((tmp_path / "new" / "x_job.json").read_text())
    del old["geometry_version"]
    (tmp_path / "new" / "x_job.json").write_text(json.dumps(old))
    with pytest.raises(InputError, match="tilt geometry version 1"):
        read_job(tmp_path / "new" / "x_job.json")
    assert main(["extract", "-j", str(tmp_path / "new" / "x_job.json"), "-n", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "geometry_version" in err and "version 1" in err
    assert not list((tmp_path / "new").glob("*.star"))
    # a checkpoint folder of the old geometry (finished units, no geometry.txt): resume stops
    ck = tmp_path / "old" / "x_checkpoints"
    ck.mkdir(parents=True)
    (ck / "key.txt").write_text("oldkey\n")
    np.savez(ck / "tile_0000.npz", done=np.int64(6))
    with pytest.raises(InputError, match="geometry version 1"):
        run_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path / "old", **kw)
    assert (ck / "tile_0000.npz").exists() and not (tmp_path / "old" / "x_scores.mrc").exists()


def test_random_phase_and_exact_method_run(data, tmp_path):
    d = data["dir"]
    job = run_match(
        d / "tmpl.mrc",
        d / "mask.mrc",
        d / "tomo.mrc",
        tmp_path,
        rotations=data["rots"][:8],
        random_phase=True,
        method="exact",
        quiet=True,
    )
    assert job["weighting"]["random_phase"] is True and job["method"] == "exact"
    assert job["random_phase_noise_mean"] is not None


# --------------------------------------------------------------------------- bad input


def _bad(data, tmp_path, *extra, files=None):
    out = tmp_path / "bad"
    rc = main(
        _args(data, out, "--angular-step", "90", *extra)
        if files is None
        else ["match", *files, "-d", str(out), "--quiet", "--angular-step", "90", *extra]
    )
    assert rc == 2
    assert not out.exists() or not any(out.iterdir())


def test_bad_inputs_exit_2_without_output(data, tmp_path, capsys):
    d = data["dir"]
    # template box larger than the tomogram
    write_volume(tmp_path / "big.mrc", np.zeros((40, 40, 40), np.float32), VOXEL)
    _bad(
        data,
        tmp_path,
        files=["-t", str(tmp_path / "big.mrc"), "-m", str(tmp_path / "big.mrc"), "-v", str(d / "tomo.mrc")],
    )
    # template and mask shapes differ
    write_volume(tmp_path / "m10.mrc", np.ones((10, 10, 10), np.float32), VOXEL)
    _bad(data, tmp_path, files=["-t", str(d / "tmpl.mrc"), "-m", str(tmp_path / "m10.mrc"), "-v", str(d / "tomo.mrc")])
    # voxel sizes more than 1 % apart
    write_volume(tmp_path / "t11.mrc", _template(), VOXEL * 1.02)
    _bad(data, tmp_path, files=["-t", str(tmp_path / "t11.mrc"), "-m", str(d / "mask.mrc"), "-v", str(d / "tomo.mrc")])
    # NaN in the tomogram
    vol = data["vol"].astype(np.float32).copy()
    vol[1, 2, 3] = np.nan
    with pytest.warns(RuntimeWarning):
        write_volume(tmp_path / "nan.mrc", vol, VOXEL)
    _bad(data, tmp_path, files=["-t", str(d / "tmpl.mrc"), "-m", str(d / "mask.mrc"), "-v", str(tmp_path / "nan.mrc")])
    # template box larger than a tile
    _bad(data, tmp_path, "--tiles", "8", "1", "1")
    # CUDA where there is none
    import torch

    if not torch.cuda.is_available():
        _bad(data, tmp_path, "--device", "cuda")
    # tilt metadata count mismatch (dose file with a wrong count)
    (tmp_path / "dose.txt").write_text("0\n3\n6\n")
    _bad(data, tmp_path, "-a", str(d / "tilts.tlt"), "--dose", str(tmp_path / "dose.txt"))
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("tomomatch match: error:") for line in err) and len(err) >= 6


def test_options_whiten_binary_wedge_auto_tiles_and_metadata_hand(data, tmp_path):
    from tomomatch.tiles import auto_tile_counts
    from tomomatch.tiltseries import TiltSeries

    d = tmp_path / "in"  # the same data at 0.5 A voxels, so that the gradient matters here
    write_volume(d / "tomo.mrc", data["vol"].astype(np.float32), 0.5)
    write_volume(d / "tmpl.mrc", _template(), 0.5)
    write_volume(d / "mask.mrc", _mask(), 0.5)
    ts = TiltSeries(tilt_angles_deg=TILTS, defocus_u_um=np.full(TILTS.size, 3.0), hand=-1)
    job = run_match(
        d / "tmpl.mrc",
        d / "mask.mrc",
        d / "tomo.mrc",
        tmp_path,
        rotations=data["rots"][:4],
        tilt_series=ts,
        wedge="binary",
        whiten=True,
        high_pass_angstrom=20.0,
        tiles="auto",
        quiet=True,
    )
    assert job["defocus_handedness"] == -1  # from the metadata
    want = auto_tile_counts(SHAPE, 0.5, N, TILTS, 1.0, 300.0, -1)
    assert job["tiles"] == list(want) and want[0] > 1  # fine voxels: the gradient needs tiles
    w = job["weighting"]
    assert w["wedge"] == "binary" and w["whitening"] is True and w["ctf"] == "signed"
    for reg in job["tile_regions"]:  # h = -1 offsets: -(-x sin t + z cos t) (RELION's depth)
        x, _, z = reg["centre_angstrom_xyz"]
        np.testing.assert_allclose(
            reg["defocus_offsets_um"], -(-x * np.sin(np.radians(TILTS)) + z * np.cos(np.radians(TILTS))) / 1e4
        )
    scores = _read(tmp_path / "tomo_scores.mrc")
    assert np.all(np.isfinite(scores))


def test_progress_without_terminal_is_lines_not_bars(capsys):
    from tomomatch.progress import ProgressBars

    bars = ProgressBars({"work units": (4, 1), "rotations": 10}, quiet=False)  # pytest: no TTY
    bars.advance(1, 5)
    bars.close()
    assert bars.bar is None
    # no bar control characters; one final line (the 60 s interval was not reached)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "work units 2/4, rotations 5/10" in err and "\r" not in err


def test_random_phase_scores_keep_the_scale_of_the_search_statistics(tmp_path):
    """Random-phase-corrected scores (max - noise max + mean noise max) stay on the scale of the
    raw maxima, so the raw per-rotation mean/std are the right statistics for the Gaussian
    cut-off and score_sigma: on pure noise, a 1-false-alarm cut-off passes about one peak."""
    from tomomatch.extract import extract_candidates

    rng = np.random.default_rng(11)
    write_volume(tmp_path / "v.mrc", rng.normal(size=(40, 40, 40)).astype(np.float32), 10.0)
    write_volume(tmp_path / "t.mrc", asymmetric_template(12), 10.0)
    write_volume(tmp_path / "m.mrc", sphere_mask(12, 5), 10.0)
    counts = {}
    for rp in (False, True):
        job = run_match(
            tmp_path / "t.mrc",
            tmp_path / "m.mrc",
            tmp_path / "v.mrc",
            tmp_path / f"rp{rp}",
            angular_step_deg=40.0,
            random_phase=rp,
        )
        table = extract_candidates(
            job, max_particles=50, particle_diameter_angstrom=60.0, cutoff_method="gaussian", false_alarms=1.0
        )
        counts[rp] = len(table)
        if rp:
            scores = _read(tmp_path / f"rp{rp}" / "v_scores.mrc")
            st = job["search_statistics"]
            # the corrected map's background sits where the raw maxima do: above the raw mean
            assert st["mean"] < float(np.median(scores)) < st["mean"] + 6 * st["std"]
    assert counts[False] <= 3 and counts[True] <= 3


def test_tomogram_of_another_size_than_relion_says_is_refused(data, tmp_path):
    from tomomatch.tiltseries import TiltSeries

    d = data["dir"]
    # SHAPE is (z, y, x); RELION's unbinned size at binning 2 would be twice each axis
    x, y, z = SHAPE[2], SHAPE[1], SHAPE[0]
    ok = TiltSeries(
        tilt_angles_deg=[-30.0, 0.0, 30.0],
        extra={"size_xyz_unbinned": (2 * x, 2 * y, 2 * z + 1), "binning": 2.0, "tomograms_star": "t.star"},
    )
    plan_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path, tilt_series=ok, rotations=data["rots"][:2])
    bad = ok.with_(extra={"size_xyz_unbinned": (2 * x + 16, 2 * y, 2 * z), "binning": 2.0, "tomograms_star": "t.star"})
    with pytest.raises(InputError, match="rlnTomoSizeX/Y/Z") as exc:
        plan_match(
            d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path, tilt_series=bad, rotations=data["rots"][:2]
        )
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "tomo_checkpoints").exists()


def test_mask_at_another_voxel_size_is_refused(data, tmp_path):
    d = data["dir"]
    write_volume(tmp_path / "m.mrc", sphere_mask(N, 5), 20.0)
    with pytest.raises(InputError, match="mask voxel size"):
        run_match(d / "tmpl.mrc", tmp_path / "m.mrc", d / "tomo.mrc", tmp_path / "o", rotations=data["rots"][:2])
    assert not (tmp_path / "o").exists()


def test_default_processes_recorded_and_small_searches_stay_in_process(data, tmp_path):
    d = data["dir"]
    job = run_match(d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path, rotations=data["rots"][:4])
    ex = job["execution"]
    assert ex["processes_rule"] == "auto" and ex["processes"] == 1 and ex["available_cpus"] >= 1
    job = run_match(
        d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path / "b", rotations=data["rots"][:4], processes=1
    )
    assert job["execution"] == {**ex, "processes_rule": "given"}


def test_recut_units_equal_a_fresh_plan(data, tmp_path):
    """run_match's auto processes re-cut the plan's units instead of planning (reading) again:
    the re-cut plan must equal a plan made for that many units, key included."""
    d = data["dir"]
    args = (d / "tmpl.mrc", d / "mask.mrc", d / "tomo.mrc", tmp_path)
    rots = data["rots"][:20]
    one = plan_match(*args, rotations=rots, tiles=(2, 1, 1), batch_size=3)
    fresh = plan_match(*args, rotations=rots, tiles=(2, 1, 1), batch_size=3, min_units=8)
    recut = one.with_units(None, 8)
    assert len(one.units) == 2 and len(recut.units) >= 8
    assert recut.units == fresh.units and recut.key == fresh.key == one.key
    assert (
        one.with_units(6).units
        == plan_match(*args, rotations=rots, tiles=(2, 1, 1), batch_size=3, rotations_per_unit=6).units
    )


def test_pool_workers_die_with_a_killed_parent(data, tmp_path):
    """SIGKILL the parent of a --processes 2 run: its workers must not stay behind."""
    d = data["dir"]
    script = (
        "import sys; from tomomatch.job import run_match; from tomomatch.angles import uniform_rotations\n"
        f"run_match({str(d / 'tmpl.mrc')!r}, {str(d / 'mask.mrc')!r}, {str(d / 'tomo.mrc')!r}, {str(tmp_path)!r},"
        " rotations=uniform_rotations(12.0), processes=2, rotations_per_unit=40, checkpoint_interval_s=0)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])

    def children(pid):
        out = []
        for st in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = st.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(st.parent.name))
        return out

    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(tmp_path.glob("tomo_checkpoints/*.npz"))) == 0:
            time.sleep(0.2)
        kids = children(parent.pid)
        assert len(kids) >= 2, "the pool did not start"
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 15
    alive = kids
    while time.time() < deadline and alive:
        time.sleep(0.2)
        alive = [
            k
            for k in kids
            if Path(f"/proc/{k}").exists() and Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        ]
    assert not alive, f"workers {alive} outlived their parent"
