"""``tomomatch roc``: the background + particle mixture on known samples, and the estimate against
the truth of a simulation (simulate -> match -> roc -> compare)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tomomatch.cli import main
from tomomatch.errors import InputError
from tomomatch.roc import estimate_roc, fit_peak_mixture, run_roc


def _max_of_normals(rng, n, k=30_000):
    """``n`` draws of the maximum of ``k`` standard normals (a light, Gumbel-domain tail like the peaks of
    a score map that is a maximum over rotations) and the exact expected count above ``c``."""
    x = stats.norm.ppf(rng.uniform(size=n) ** (1.0 / k))
    return x, (lambda c: n * -np.expm1(k * stats.norm.logcdf(c)))


def _top(n, k=30_000):
    """Score the strongest of ``n`` background draws reaches on average (the 1-false-alarm quantile)."""
    return float(stats.norm.ppf((1 - 1 / n) ** (1 / k)))


# --------------------------------------------------------------------------- the mixture on known samples


@pytest.mark.parametrize(
    "n_bg, n_p, offset, sd, seed",
    [
        (1500, 30, 2.0, 0.4, 0),  # few particles, well above the background
        (3000, 200, 1.5, 0.3, 1),  # more particles than the default window's 20 % takes comfortably
        (2000, 600, 2.0, 0.5, 2),  # crowded: the window is enlarged to half of the peaks
    ],
)
def test_mixture_counts_particles_drawn_from_known_distributions(n_bg, n_p, offset, sd, seed):
    rng = np.random.default_rng(seed)
    bg, expected_bg = _max_of_normals(rng, n_bg)
    particles = rng.normal(_top(n_bg) + offset, sd, n_p)
    mix = fit_peak_mixture(np.concatenate([bg, particles]))
    # measured: 30.0, 200.0, 600.0
    assert mix.n_particles == pytest.approx(n_p, rel=0.03), mix
    assert mix.supported and mix.n_particles_membership_sd < 0.05 * n_p
    assert mix.particle_mean == pytest.approx(_top(n_bg) + offset, abs=3 * sd / np.sqrt(n_p) + 0.05)
    # the background model at the 1- and 10-false-positive cut-offs against the exact expectation
    for nfp in (1.0, 10.0):
        c = mix.cutoff_for_false_positives(nfp)
        assert mix.false_positives([c])[0] == pytest.approx(nfp)
        assert nfp / 3 <= expected_bg(c) <= 3 * nfp, (nfp, expected_bg(c))
        # estimated recall against the fraction of the drawn particles above c
        assert mix.recall([c])[0] == pytest.approx(np.mean(particles > c), abs=0.03)


def test_window_grows_until_the_particles_are_observed_not_extrapolated():
    """1000 background peaks and 300 particles: the starting window (260 peaks) holds only part of the
    cluster; the fit doubles it (to half of the peaks) and counts the particles there."""
    rng = np.random.default_rng(5)
    bg, _ = _max_of_normals(rng, 1000)
    particles = rng.normal(_top(1000) + 1.5, 0.5, 300)
    mix = fit_peak_mixture(np.concatenate([bg, particles]))
    assert mix.n_window == 650
    assert mix.fraction_below_window < 0.05
    assert mix.n_particles == pytest.approx(300, rel=0.03)


def test_expected_counts_are_consistent_with_the_peak_list():
    """Above the window threshold u the model's FP + TP follows the observed number of peaks; below u
    the background is the observed count minus the particles, continuous at u and non-increasing."""
    rng = np.random.default_rng(3)
    bg, _ = _max_of_normals(rng, 2000)
    s = np.concatenate([bg, rng.normal(_top(2000) + 1.0, 0.4, 60)])
    mix = fit_peak_mixture(s)
    u = mix.threshold
    c = np.linspace(s.min(), s.max() + 1, 400)
    fp, tp, obs = mix.false_positives(c), mix.true_positives(c), mix.observed_above(c)
    assert np.all(np.diff(fp) <= 1e-9) and np.all(np.diff(tp) <= 1e-9)
    # continuous at u up to the peak at u itself (the window's threshold peak)
    assert mix.false_positives([u - 1e-9])[0] - mix.false_positives([u])[0] == pytest.approx(1.0, abs=0.01)
    above = c >= u
    assert np.max(np.abs(fp + tp - obs)[above]) < 4 * np.sqrt(mix.n_window)
    assert fp[0] == pytest.approx(obs[0] - tp[0], abs=1.0)
    # 1 expected false positive: recall and precision follow from the two counts
    c1 = mix.cutoff_for_false_positives(1.0)
    t1 = mix.true_positives([c1])[0]
    assert mix.precision([c1])[0] == pytest.approx(t1 / (t1 + 1.0))
    assert mix.cutoff_for_false_positives(10 * mix.n_window) is None


def test_pure_background_does_not_support_a_particle_component():
    """A peak list of background only: the mixture's best cluster is a handful of top peaks and its
    likelihood gain stays below the support criterion (measured on seed 0: 4 peaks, 2 dlogL 1.8)."""
    rng = np.random.default_rng(0)
    bg, _ = _max_of_normals(rng, 1500)
    mix = fit_peak_mixture(bg)
    assert not mix.supported
    assert mix.n_particles < 10


def test_too_few_peaks_is_an_input_error():
    with pytest.raises(InputError, match="at least 80"):
        fit_peak_mixture(np.linspace(0, 1, 50))
    with pytest.raises(InputError, match="distinct"):
        fit_peak_mixture(np.r_[np.full(200, 0.1), np.full(20, 0.2)])


# --------------------------------------------------------------------------- against the truth of a simulation


@pytest.fixture(scope="module")
def sim_job(tmp_path_factory):
    """A ci-sized simulation with 24 phantom particles of 150 A (no decoys; particles and background
    separate), matched at the true hand with a 45 degree search (384 rotations): about 5 s."""
    from tomomatch.job import run_match
    from tomomatch.metadata import load_tilt_series
    from tomomatch.simulate import simulate

    out = tmp_path_factory.mktemp("roc_sim")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simulate("ci", out / "sim", seed=2, hand=-1, n_particles=24, n_decoys=0, phantom_diameter_angstrom=150.0)
    d = out / "sim"
    summ = json.loads((d / "summary.json").read_text())
    radius = max(s["radius_angstrom"] for s in summ["structures"])
    ts = load_tilt_series(tilt_angles=d / "sim.rawtlt", dose=d / "sim_dose.txt", defocus=d / "sim.defocus")
    run_match(
        d / "template.mrc",
        d / "mask.mrc",
        d / "sim.mrc",
        out / "match",
        name="sim",
        angular_step_deg=45.0,
        particle_diameter_angstrom=2 * radius,
        tilt_series=ts,
        defocus_handedness=-1,
    )
    return out / "match" / "sim_job.json", d, radius


def _truth_labels(job, sim_dir, radius_angstrom):
    """Scores of extract's peak list and whether each peak pairs with a true particle (half a radius)."""
    import starfile

    from tomomatch.extract import extract_candidates
    from tomomatch.hand import pair_particles

    truth = starfile.read(sim_dir / "particles.star")
    xyz = truth[["tmVoxelIndexX", "tmVoxelIndexY", "tmVoxelIndexZ"]].to_numpy(float)
    df = extract_candidates(job, max_particles=10**7, cutoff=0.0, cutoff_method="fixed", subvoxel=False)
    ia, _, _ = pair_particles(df[["x", "y", "z"]].to_numpy(float), xyz, 0.5 * radius_angstrom / 10.0)  # 10 A voxels
    is_particle = np.zeros(len(df), bool)
    is_particle[ia] = True
    return df["score"].to_numpy(float), is_particle, len(truth)


def test_estimate_agrees_with_the_truth_of_a_simulation(sim_job):
    from tomomatch.extract import extract_candidates

    job, sim_dir, radius = sim_job
    report, _ = estimate_roc(job)
    s, is_particle, n_true = _truth_labels(job, sim_dir, radius)
    assert n_true == 24 and is_particle.sum() == 24
    assert s[is_particle].min() > s[~is_particle].max()  # the set-up: particles and background separate
    # measured 24.2
    assert report["n_particles"] == pytest.approx(n_true, rel=0.15)
    assert report["particle_component_supported"]
    # the default cut-off is extract's
    d = report["default_cutoff"]
    assert d["cutoff"] == extract_candidates(job).attrs["cutoff"]
    assert d["method"] == "tail" and d["tail_model"] == "gpd+particles"
    # expected false positives at the default cut-off against the actual ones (measured 1.0 and 2): within
    # a Poisson-like band
    actual_fp = int(((s > d["cutoff"]) & ~is_particle).sum())
    exp_fp = d["expected_false_positives"]
    assert exp_fp - 3 * np.sqrt(exp_fp) - 1 <= actual_fp <= exp_fp + 3 * np.sqrt(exp_fp) + 2, (exp_fp, actual_fp)
    # recall at every cut-off of the table within 0.1 of the actual fraction of particles above it, and the
    # expected false positives within the same band wherever the model covers the cut-off
    for r in report["table"]:
        c = r["cutoff"]
        assert r["recall"] == pytest.approx(np.mean(s[is_particle] > c), abs=0.1), r
        fp = int(((s > c) & ~is_particle).sum())
        e = r["expected_false_positives"]
        assert e - 3 * np.sqrt(e) - 1 <= fp <= e + 3 * np.sqrt(e) + 2, (r, fp)
    labels = [r["label"] for r in report["table"]]
    assert labels[0].startswith("default") and any(lb.startswith("gaussian") for lb in labels)
    assert 0.95 <= report["auc"] <= 1.0


def test_cli_writes_json_and_figure(sim_job, capsys):
    job, _, _ = sim_job
    rc = main(["roc", "-j", str(job), "--cutoffs", "0.12"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "estimated particles:" in out and "default (tail, 1 false alarm)" in out and "given" in out
    jpath, ppath = job.parent / "sim_roc.json", job.parent / "sim_roc.png"
    assert ppath.stat().st_size > 10_000
    doc = json.loads(jpath.read_text())
    assert doc["files"] == {"report": str(jpath), "figure": str(ppath)}
    assert doc["n_particles"] == pytest.approx(24, rel=0.15)
    assert {"cutoff", "false_positives", "recall", "precision", "false_positive_rate"} <= set(doc["curves"])
    assert not list(job.parent.glob(".*.part"))  # written atomically, nothing left behind
    # an output prefix (in an existing folder: a missing one is refused, tests/test_output_locations.py), no figure
    (job.parent / "other").mkdir(exist_ok=True)
    rc = main(["roc", "-j", str(job), "-o", str(job.parent / "other" / "r"), "--no-figure"])
    assert rc == 0 and (job.parent / "other" / "r.json").exists() and not (job.parent / "other" / "r.png").exists()
    capsys.readouterr()


def test_run_roc_api_default_names(sim_job, tmp_path):
    job, _, _ = sim_job
    rep = run_roc(job, tmp_path / "x_roc", figure=False, false_alarms=3)
    assert Path(rep["files"]["report"]).name == "x_roc.json"
    assert rep["default_cutoff"]["false_alarms"] == 3.0
    assert rep["default_cutoff"]["label"] == "default (tail, 3 false alarms)"


# --------------------------------------------------------------------------- bad input


def _write_job(tmp_path, scores, angles=None, name="t"):
    from tomomatch.mrcio import write_volume

    scores = np.asarray(scores, np.float32)
    write_volume(tmp_path / f"{name}_scores.mrc", scores, 10.0)
    write_volume(
        tmp_path / f"{name}_angles.mrc",
        np.zeros(scores.shape, np.float32) if angles is None else np.asarray(angles, np.float32),
        10.0,
    )
    (tmp_path / f"{name}_rotations.txt").write_text("0 0 0\n")
    job = {
        "job_format": 1,
        "geometry_version": 2,
        "name": name,
        "voxel_size_angstrom": 10.0,
        "scores": f"{name}_scores.mrc",
        "angles": f"{name}_angles.mrc",
        "rotations": f"{name}_rotations.txt",
        "particle_diameter_angstrom": 80.0,
        "search_statistics": {"n_search": int(scores.size), "mean": 0.0, "std": 1.0},
    }
    p = tmp_path / f"{name}_job.json"
    p.write_text(json.dumps(job))
    return p


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    rng = np.random.default_rng(0)
    few = _write_job(tmp_path, rng.normal(size=(12, 12, 12)), name="few")  # ~20 peaks
    unsearched = _write_job(tmp_path, rng.normal(size=(12, 12, 12)), np.full((12, 12, 12), -1.0), name="none")
    cases = [
        (["roc", "-j", str(tmp_path / "missing_job.json")], "not found"),
        (["roc", "-j", str(few)], "peaks"),
        (["roc", "-j", str(unsearched)], "no searched voxel"),
        (["roc", "-j", str(few), "--false-alarms", "0"], "--false-alarms: 0.0; expected a finite number > 0"),
    ]
    for argv, words in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, argv
        assert len(err.strip().splitlines()) == 1 and words in err, (argv, err)
    with pytest.raises(InputError, match="at least 80"):
        estimate_roc(few)
    assert not (tmp_path / "few_roc.json").exists()
