"""Tests of the handedness statistics, pairing, figure, report, CLI and per-particle rescoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import linear_sum_assignment

from tomomatch.hand import HandScores, compare_hands, hand_statistics, pair_particles, read_report, write_report
from tomomatch.hand_plots import plot_hand, quadratic_fit_band


def _synthetic(
    true_hand: int, n: int = 120, noise: float = 4e-4, gain_per_angstrom: float = 1e-6, seed: int = 3
) -> HandScores:
    """Scores whose true-hand advantage grows linearly with |x|, plus paired noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2500.0, 2500.0, n)
    base = rng.normal(0.4, 0.03, n)  # particle-to-particle spread, shared by both hands
    gain = true_hand * gain_per_angstrom * np.abs(x)
    return HandScores(
        x_angstrom=x,
        score_plus=base + gain / 2 + rng.normal(0, noise, n),
        score_minus=base - gain / 2 + rng.normal(0, noise, n),
        score_zero=base,
    )


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("true_hand", [1, -1])
def test_statistics_recover_known_sign(true_hand):
    sc = _synthetic(true_hand)
    r = hand_statistics(sc, seed=11)
    assert r["verdict"] == true_hand
    assert r["p"] < 1e-6
    lo, hi = r["bootstrap"]["mean_delta_interval"]
    assert (lo > 0 and hi > 0) if true_hand == 1 else (lo < 0 and hi < 0)
    assert np.sign(r["trend_abs_x"]["slope_per_angstrom"]) == true_hand
    # independent computation of the reported numbers
    d = sc.score_plus - sc.score_minus
    d[np.abs(d) <= r["tie_tolerance"]] = 0.0  # float-rounding ties
    nz = d != 0
    assert r["mean_delta"] == pytest.approx(d.mean())
    assert r["wilcoxon"]["p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    k = int((d > 0).sum())
    assert r["sign_test"]["k_plus"] == k
    assert r["sign_test"]["p"] == pytest.approx(stats.binomtest(k, int(nz.sum())).pvalue)
    slope = np.polyfit(np.abs(sc.x_angstrom[nz]), d[nz], 1)[0]
    assert r["trend_abs_x"]["slope_per_angstrom"] == pytest.approx(slope, rel=1e-6)
    # the bootstrap interval brackets the mean and has about the normal-theory width
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert lo < d.mean() < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_statistics_zero_mean_is_undetermined():
    sc = _synthetic(0, seed=5)
    r = hand_statistics(sc, seed=2)
    assert r["verdict"] == "undetermined"
    lo, hi = r["bootstrap"]["mean_delta_interval"]
    assert lo < 0 < hi
    assert "contains 0" in r["reason"]


def test_statistics_bootstrap_is_seeded():
    sc = _synthetic(1, n=40, noise=2e-3)
    a = hand_statistics(sc, seed=7)["bootstrap"]["mean_delta_interval"]
    b = hand_statistics(sc, seed=7)["bootstrap"]["mean_delta_interval"]
    c = hand_statistics(sc, seed=8)["bootstrap"]["mean_delta_interval"]
    assert a == b and a != c


def test_statistics_too_few_particles():
    sc = _synthetic(1, n=6)
    r = hand_statistics(sc)
    assert r["verdict"] == "undetermined"
    assert "too few particles" in r["reason"]
    empty = HandScores(np.zeros(0), np.zeros(0), np.zeros(0))
    assert hand_statistics(empty)["verdict"] == "undetermined"


def test_statistics_zero_deltas_dropped():
    # the centre tile of a tiled run gives identical scores under both hands
    sc = _synthetic(1, n=60)
    plus = sc.score_plus.copy()
    plus[:20] = sc.score_minus[:20]
    r = hand_statistics(HandScores(sc.x_angstrom, plus, sc.score_minus))
    assert r["n_nonzero_delta"] == 40
    assert r["wilcoxon"]["p"] == pytest.approx(stats.wilcoxon((plus - sc.score_minus)[20:]).pvalue)


def test_statistics_contradicting_trend_is_undetermined():
    # +1 better on average, but the advantage shrinks with |x|: not a defocus gradient
    rng = np.random.default_rng(0)
    x = rng.uniform(-3000, 3000, 200)
    d = 3e-3 - 1e-6 * np.abs(x) + rng.normal(0, 1e-4, x.size)
    d = np.clip(d, 1e-5, None)
    r = hand_statistics(HandScores(x, 0.5 + d, np.full(x.size, 0.5)))
    assert r["verdict"] == "undetermined"
    assert "trend" in r["reason"]


# --------------------------------------------------------------------------- pairing


def _brute_force_max_pairs(a, b, r):
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    big = 1e6
    cost = np.where(d <= r, d, big)
    rows, cols = linear_sum_assignment(cost)
    ok = cost[rows, cols] < big
    return int(ok.sum()), float(cost[rows[ok], cols[ok]].sum())


def test_pairing_one_to_one_and_radius():
    rng = np.random.default_rng(4)
    a = rng.uniform(0, 60, (80, 3))
    b = np.concatenate([a[:60] + rng.normal(0, 1.5, (60, 3)), rng.uniform(0, 60, (30, 3))])
    b = b[rng.permutation(len(b))]
    r = 4.0
    ia, ib, dist = pair_particles(a, b, r)
    assert len(set(ia.tolist())) == ia.size and len(set(ib.tolist())) == ib.size
    assert np.all(dist <= r)
    np.testing.assert_allclose(dist, np.linalg.norm(a[ia] - b[ib], axis=1))
    n_ref, total_ref = _brute_force_max_pairs(a, b, r)
    assert ia.size == n_ref
    assert dist.sum() == pytest.approx(total_ref)


def test_pairing_prefers_one_to_one_over_greedy():
    # greedy nearest neighbour would give b0 to a1 and leave a0 unpaired
    a = np.array([[0.0, 0, 0], [1.5, 0, 0]])
    b = np.array([[1.0, 0, 0], [3.0, 0, 0]])
    ia, ib, dist = pair_particles(a, b, 1.6)
    assert ia.tolist() == [0, 1] and ib.tolist() == [0, 1]
    ia, ib, _ = pair_particles(a, b, 0.4)
    assert ia.size == 0
    assert pair_particles(np.zeros((0, 3)), b, 1.0)[0].size == 0


def test_compare_hands_pairs_and_orients():
    sc = _synthetic(-1, n=80)
    rng = np.random.default_rng(9)
    pos = np.stack([sc.x_angstrom, rng.uniform(-2000, 2000, 80), rng.uniform(-300, 300, 80)], 1)
    perm = rng.permutation(80)
    # run A was matched with -1, run B with +1 and lists its particles in another order
    paired, rep = compare_hands(
        pos, sc.score_minus, -1, pos[perm] + 5.0, sc.score_plus[perm], 1, max_distance_angstrom=20.0, seed=1
    )
    assert rep["pairing"]["n_pairs"] == 80
    assert rep["verdict"] == -1
    # each pair's x is the mean of its two positions; its delta is that particle's s(+1) - s(-1)
    src = np.argsort(sc.x_angstrom)
    order = np.argsort(paired.x_angstrom)
    np.testing.assert_allclose(paired.x_angstrom[order], sc.x_angstrom[src] + 2.5)
    np.testing.assert_allclose(paired.delta[order], sc.delta[src])
    from tomomatch.errors import InputError

    with pytest.raises(InputError):
        compare_hands(pos, sc.score_minus, 1, pos, sc.score_plus, 1, max_distance_angstrom=20.0)


# --------------------------------------------------------------------------- figure and report


def test_quadratic_band_matches_statsmodels_style_formula():
    rng = np.random.default_rng(1)
    x = rng.uniform(-10, 10, 50)
    y = 0.3 * x**2 - x + 2 + rng.normal(0, 1, 50)
    xe = np.array([-10.0, 0.0, 7.0])
    fit, lo, hi = quadratic_fit_band(x, y, xe)
    # independent: np.polyfit with its own covariance (scaled by chi2/dof)
    p, cov = np.polyfit(x, y, 2, cov="unscaled")
    resid = y - np.polyval(p, x)
    cov = cov * (resid @ resid) / (x.size - 3)
    J = np.stack([xe**2, xe, np.ones_like(xe)], 1)
    se = np.sqrt(np.einsum("ij,jk,ik->i", J, cov, J))
    t = stats.t.ppf(0.975, x.size - 3)
    np.testing.assert_allclose(fit, np.polyval(p, xe), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(hi - fit, t * se, rtol=1e-6)
    np.testing.assert_allclose(fit - lo, t * se, rtol=1e-6)


def test_verdict_settings_in_full_and_pytom_mode():
    from tomomatch.hand import verdict_settings

    assert verdict_settings("undetermined") is None and verdict_settings(0) is None
    full = verdict_settings(1)
    assert full["relion5"] == "rlnTomoHand +1" and full["warp"] == 'AreAnglesInverted="True"'
    assert full["pytom"] == "--defocus-handedness -1" and full["imod"] == "ctfphaseflip -InvertTiltAngles"
    # scores made with pytom's formula: pytom +1 has the x gradient of RELION -1
    py = verdict_settings(1, "pytom")
    assert py["relion5"] == "rlnTomoHand -1" and py["pytom"] == "--defocus-handedness +1" and "note" in py


def test_figure_and_report_written(tmp_path):
    sc = _synthetic(1, n=50)
    r = hand_statistics(sc)
    png = plot_hand(tmp_path / "hand.png", sc, r)
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.part"))
    out = write_report(tmp_path / "hand.json", r, sc)
    doc = json.loads(out.read_text())
    assert doc["verdict"] == 1 and len(doc["particles"]["delta"]) == 50
    rep, back = read_report(out)
    np.testing.assert_allclose(back.delta, sc.delta)
    assert rep["wilcoxon"]["p"] == pytest.approx(r["wilcoxon"]["p"])


# --------------------------------------------------------------------------- rescoring


def test_rotate_volumes_matches_scipy_affine():
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    from tomomatch.hand import rotate_volumes

    rng = np.random.default_rng(0)
    vol = ndimage.gaussian_filter(rng.normal(size=(20, 22, 24)), 2)
    R = Rotation.from_euler("ZYZ", [30, 40, 50], degrees=True).as_matrix()
    out = rotate_volumes(vol, R[None])[0].numpy()
    # independent: out[z,y,x] = vol at R^T (r - c) + c, written in (z, y, x) index order
    P = np.eye(3)[::-1]
    Rz = P @ R.T @ P
    c = np.array(vol.shape) // 2
    ref = ndimage.affine_transform(vol, Rz, offset=c - Rz @ c, order=1)
    inner = (slice(5, 15), slice(5, 17), slice(5, 19))
    np.testing.assert_allclose(out[inner], ref[inner], atol=1e-4 * np.abs(vol).max())
    # a point at template offset +5 x goes to R @ (5, 0, 0)
    pt = np.zeros((21, 21, 21))
    pt[10, 10, 15] = 1.0
    moved = rotate_volumes(pt, R[None])[0].numpy()
    com = np.array(ndimage.center_of_mass(moved))[::-1] - 10
    np.testing.assert_allclose(com, R @ [5, 0, 0], atol=0.3)


def test_rescore_ncc_matches_direct_computation():
    """Score at one pose and shift equals a direct masked normalised cross-correlation."""
    from tomomatch.hand import rescore_particles

    rng = np.random.default_rng(2)
    B = 16
    tmpl = rng.normal(size=(B, B, B)).astype(np.float32)
    zz, yy, xx = np.mgrid[:B, :B, :B] - B // 2
    mask = ((xx**2 + yy**2 + zz**2) <= 6**2).astype(np.float32)
    tomo = rng.normal(size=(30, 32, 34)).astype(np.float32)
    pos = np.array([[15, 16, 14]])
    res = rescore_particles(
        tomo,
        5.0,
        None,
        tmpl,
        mask,
        pos,
        np.eye(3)[None],
        hands=(1, -1),
        max_angle_deg=0,
        shift_voxels=0,
        weight_function=lambda c, h: np.ones((B, B, B // 2 + 1)),
    )
    x0, y0, z0 = pos[0]
    sub = tomo[z0 - 8 : z0 + 8, y0 - 8 : y0 + 8, x0 - 8 : x0 + 8].astype(float)
    m = mask.astype(bool)
    t, s = tmpl[m].astype(float), sub[m]
    direct = np.mean((t - t.mean()) * (s - s.mean())) / (t.std() * s.std())
    assert res.scores[0, 0] == pytest.approx(direct, abs=1e-5)
    assert res.scores[0, 1] == pytest.approx(direct, abs=1e-5)


def _tiny_gradient_case(true_hand, n=24, seed=0, B=32, voxel=4.0, noise=1.0, nx=3600):
    """A long, thin tomogram (|x| up to ~0.7 um at 4 A voxels) with particles whose template
    is weighted with the per-tilt CTF at their own position under ``true_hand``, plus noise."""
    import torch
    from scipy.spatial.transform import Rotation

    from tomomatch.conventions import index_to_centered_angstrom
    from tomomatch.rescore import _hand_weights, rotate_volumes
    from tomomatch.tiltseries import TiltSeries

    rng = np.random.default_rng(seed)
    tilts = np.arange(-60, 61, 3.0)
    order = np.argsort(np.abs(tilts), kind="stable")
    dose = np.empty_like(tilts)
    dose[order] = np.arange(tilts.size) * 3.0
    ts = TiltSeries(tilt_angles_deg=tilts, accumulated_dose=dose, defocus_u_um=1.0 + rng.normal(0, 0.05, tilts.size))
    zz, yy, xx = np.mgrid[:B, :B, :B] - B // 2
    tmpl = np.zeros((B, B, B))
    for _ in range(12):
        c = rng.uniform(-7, 7, 3)
        tmpl += np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / (2 * 1.5**2))
    mask = ((xx**2 + yy**2 + zz**2) <= (B // 2 - 2) ** 2).astype(np.float32)
    shape = (B + 8, B + 8, nx)
    tomo = np.zeros(shape, np.float32)
    xs = rng.choice(np.arange(B, nx - B, B + 2), n, replace=False)
    pos = np.stack([xs, np.full(n, shape[1] // 2), np.full(n, shape[0] // 2)], 1)
    pos[:, 1:] += rng.integers(-2, 3, (n, 2))
    poses = Rotation.random(n, random_state=seed).as_matrix()
    cen = index_to_centered_angstrom(pos, shape, voxel)
    weights = _hand_weights(ts, (B, B, B), voxel, cen, (true_hand,), "full", {})[:, 0]
    rotated = rotate_volumes(tmpl, poses)
    for i in range(n):
        part = torch.fft.irfftn(torch.fft.rfftn(rotated[i]) * weights[i], s=(B, B, B)).numpy()
        x, y, z = pos[i]
        tomo[z - B // 2 : z + B // 2, y - B // 2 : y + B // 2, x - B // 2 : x + B // 2] += part
    tomo += rng.normal(0, noise * tomo[tomo != 0].std(), shape).astype(np.float32)
    start = Rotation.from_rotvec(rng.normal(0, np.deg2rad(2), (n, 3))).as_matrix() @ poses
    return tomo, voxel, ts, tmpl.astype(np.float32), mask, pos, start


@pytest.mark.parametrize("true_hand", [1, -1, 0])
def test_rescore_recovers_hand_on_tiny_case(true_hand):
    from tomomatch.hand import rescore_particles

    tomo, voxel, ts, tmpl, mask, pos, start = _tiny_gradient_case(true_hand, seed=10 + true_hand)
    res = rescore_particles(tomo, voxel, ts, tmpl, mask, pos, start, max_angle_deg=4, angle_step_deg=4)
    assert res.n_rotations == 7
    r = hand_statistics(res.to_hand_scores(), seed=0)
    if true_hand == 0:
        assert r["verdict"] == "undetermined"
        # no gradient in the data: the no-gradient template scores best on average
        assert r["mean_score_zero"] > max(r["mean_score_plus"], r["mean_score_minus"])
    else:
        assert r["verdict"] == true_hand and r["p"] < 0.01
        # the right hand beats no gradient, which beats the wrong hand
        right, wrong = (res.score(true_hand), res.score(-true_hand))
        assert right.mean() > res.score(0).mean() > wrong.mean()
        assert np.sign(r["trend_abs_x"]["slope_per_angstrom"]) == true_hand


def test_rescore_bad_inputs():
    from tomomatch.errors import InputError
    from tomomatch.hand import rescore_particles
    from tomomatch.tiltseries import TiltSeries

    B = 8
    tmpl = np.ones((B, B, B), np.float32)
    tomo = np.zeros((20, 20, 20), np.float32)
    ts_nodf = TiltSeries(tilt_angles_deg=[-30.0, 0.0, 30.0])
    with pytest.raises(InputError, match="outside the tomogram"):
        rescore_particles(tomo, 5.0, ts_nodf, tmpl, tmpl, [[25, 5, 5]], np.eye(3)[None])
    with pytest.raises(InputError, match="defocus"):
        rescore_particles(tomo, 5.0, ts_nodf, tmpl, tmpl, [[5, 5, 5]], np.eye(3)[None])


# --------------------------------------------------------------------------- CLI


def _fake_job(directory, name, hand, positions_xyz, peak_scores, shape_zyx=(24, 40, 120), voxel=10.0):
    """A minimal match job: score map with a sharp peak per particle, one rotation."""
    import json as _json

    from tomomatch.angles import write_rotations
    from tomomatch.mrcio import write_volume

    directory.mkdir(parents=True, exist_ok=True)
    scores = np.zeros(shape_zyx, np.float32)
    for (x, y, z), s in zip(positions_xyz, peak_scores):
        scores[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2] = 0.3 * s
        scores[z, y, x] = s
    write_volume(directory / f"{name}_scores.mrc", scores, voxel)
    write_volume(directory / f"{name}_angles.mrc", np.zeros(shape_zyx, np.float32), voxel)
    write_rotations(directory / f"{name}_rotations.txt", np.eye(3)[None])
    job = {
        "tomomatch_version": "test",
        "job_format": 1,
        "geometry_version": 2,
        "name": name,
        "tomogram": "none.mrc",
        "tomogram_shape_zyx": list(shape_zyx),
        "voxel_size_angstrom": voxel,
        "scores": f"{name}_scores.mrc",
        "angles": f"{name}_angles.mrc",
        "rotations": f"{name}_rotations.txt",
        "particle_diameter_angstrom": 40.0,
        "defocus_handedness": hand,
        "hand_mode": "full",
        "search_statistics": {
            "n_voxels": int(np.prod(shape_zyx)),
            "n_rotations": 1,
            "n_search": int(np.prod(shape_zyx)),
            "mean": 0.0,
            "std": 0.05,
        },
    }
    path = directory / f"{name}_job.json"
    path.write_text(_json.dumps(job))
    return path


def _two_fake_runs(tmp_path, true_hand=-1, n=40, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.choice(np.arange(4, 116, 6), size=min(n, 18), replace=False)
    ys = rng.choice(np.arange(4, 36, 6), size=xs.size)
    pos = np.stack([xs, ys, np.full(xs.size, 12)], 1)
    x_a = (pos[:, 0] - 60) * 10.0
    base = rng.uniform(0.5, 0.8, xs.size)
    gain = true_hand * 2e-5 * np.abs(x_a) + rng.normal(0, 5e-4, xs.size)
    ja = _fake_job(tmp_path / "plus", "plus", 1, pos, base + gain / 2)
    # the -1 run finds the same particles one voxel off in y
    jb = _fake_job(tmp_path / "minus", "minus", -1, pos + [0, 1, 0], base - gain / 2)
    return ja, jb, pos, base + gain / 2, base - gain / 2


def test_cli_compare_hands_on_jobs(tmp_path, capsys):
    from tomomatch.cli import main

    ja, jb, pos, s_plus, s_minus = _two_fake_runs(tmp_path, true_hand=-1)
    out = tmp_path / "cmp"
    rc = main(
        ["compare-hands", str(jb), str(ja), "-o", str(out), "--cutoff", "0.2", "--min-particles", "8", "--radius", "15"]
    )
    assert rc == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["pairing"]["n_pairs"] == len(pos)
    assert doc["verdict"] == -1 and doc["p"] < 0.01
    # the verdict as the value to set in each program (h = rlnTomoHand; Warp's GetRelionHand;
    # pytom's -h; ctfphaseflip's default hand -1)
    st = doc["settings"]
    assert st["relion5"] == "rlnTomoHand -1" and st["warp"] == 'AreAnglesInverted="False"'
    assert st["pytom"] == "--defocus-handedness +1" and st["imod"] == "ctfphaseflip as is"
    printed = capsys.readouterr().out
    assert "rlnTomoHand -1" in printed
    # the report says how each run's candidates were cut (a fixed --cutoff here)
    assert [r["cutoff_method"] for r in doc["method"]["runs"]] == ["fixed", "fixed"]
    # every pair carries the right particle's scores: delta as constructed
    x = np.asarray(doc["particles"]["x_angstrom"])
    d = np.asarray(doc["particles"]["delta"])
    ref_x = (pos[:, 0] - 60) * 10.0
    order, ref_order = np.argsort(x), np.argsort(ref_x)
    np.testing.assert_allclose(x[order], ref_x[ref_order])
    np.testing.assert_allclose(d[order], (s_plus - s_minus)[ref_order], atol=1e-6)
    assert out.with_suffix(".png").exists()
    assert "h = -1" in printed


def test_cli_compare_hands_bad_inputs(tmp_path, capsys):
    from tomomatch.cli import main

    ja, jb, *_ = _two_fake_runs(tmp_path)
    out = str(tmp_path / "cmp")
    # same hand twice
    assert main(["compare-hands", str(ja), str(ja), "-o", out, "--cutoff", "0.2"]) == 2
    # a missing run (the first run's extraction falls back to the gaussian cut-off, and says so)
    with pytest.warns(UserWarning, match="tail fit impossible"):
        assert main(["compare-hands", str(ja), str(tmp_path / "nope.json"), "-o", out]) == 2
    # no candidates above the cut-off
    assert main(["compare-hands", str(ja), str(jb), "-o", out, "--cutoff", "5"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 3 and all(line.startswith("tomomatch compare-hands: error:") for line in err)
    assert not (tmp_path / "cmp.json").exists()


def test_cli_compare_hands_too_few_is_undetermined(tmp_path):
    from tomomatch.cli import main

    ja, jb, *_ = _two_fake_runs(tmp_path)
    out = tmp_path / "few"
    assert (
        main(
            [
                "compare-hands",
                str(ja),
                str(jb),
                "-o",
                str(out),
                "--cutoff",
                "0.2",
                "--min-particles",
                "50",
                "--no-figure",
            ]
        )
        == 0
    )
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["verdict"] == "undetermined" and "too few" in doc["reason"]


# --------------------------------------------------------------------------- simulator end to end


def test_run_hand_on_simulated_strong_gradient(tmp_path):
    """The simulator (projection, per-particle CTF with the true hand, WBP) and ``run_hand``
    (files in, report and figure out) agree on the hand: a CI-size case with a strong gradient
    (0.7 um wide field at 5 A, 1.5 um defocus, ice noise, no shot noise)."""
    import warnings

    import pandas as pd

    from tomomatch.metadata import load_tilt_series
    from tomomatch.hand import run_hand
    from tomomatch.simulate import simulate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = simulate("strip", tmp_path / "sim", seed=4242, hand=-1)
    d = sim.out_dir
    ts = load_tilt_series(tilt_angles=d / "sim.rawtlt", dose=d / "sim_dose.txt", defocus=d / "sim.defocus")
    p = sim.particles
    cand = pd.DataFrame(
        {
            "x": p["tmVoxelIndexX"],
            "y": p["tmVoxelIndexY"],
            "z": p["tmVoxelIndexZ"],
            "rot": p["rlnAngleRot"],
            "tilt": p["rlnAngleTilt"],
            "psi": p["rlnAnglePsi"],
            "score": 1.0,
        }
    )
    rep = run_hand(
        tmp_path / "hand",
        tomogram=d / "sim.mrc",
        template=d / "template.mrc",
        mask=d / "mask.mrc",
        tilt_series=ts,
        particles=cand,
        max_angle_deg=0.0,
    )
    assert rep["verdict"] == -1, rep["reason"]
    assert rep["p"] < 0.01
    assert rep["mean_score_minus"] > rep["mean_score_zero"] > rep["mean_score_plus"]
    assert (tmp_path / "hand.png").exists()
    doc = json.loads((tmp_path / "hand.json").read_text())
    assert len(doc["particles"]["delta"]) == 24 and doc["method"]["n_local_rotations"] == 1


def test_cli_hand_bad_inputs(tmp_path, capsys):
    from tomomatch.cli import main
    from tomomatch.mrcio import write_volume

    write_volume(tmp_path / "t.mrc", np.random.default_rng(0).normal(size=(16, 16, 16)), 10.0)
    write_volume(tmp_path / "m.mrc", np.ones((16, 16, 16)), 10.0)
    write_volume(tmp_path / "v.mrc", np.random.default_rng(1).normal(size=(32, 40, 48)), 10.0)
    (tmp_path / "a.rawtlt").write_text("\n".join(str(a) for a in range(-60, 61, 10)) + "\n")
    out = str(tmp_path / "h")
    base = [
        "hand",
        "-o",
        out,
        "-v",
        str(tmp_path / "v.mrc"),
        "-t",
        str(tmp_path / "t.mrc"),
        "-m",
        str(tmp_path / "m.mrc"),
    ]
    # metadata without defocus
    assert main(base + ["-a", str(tmp_path / "a.rawtlt"), "--allow-missing-dose"]) == 2
    # no metadata at all
    assert main(base) == 2
    # no tomogram
    assert (
        main(
            [
                "hand",
                "-o",
                out,
                "-t",
                str(tmp_path / "t.mrc"),
                "-m",
                str(tmp_path / "m.mrc"),
                "-a",
                str(tmp_path / "a.rawtlt"),
                "--allow-missing-dose",
                "--defocus",
                "3",
            ]
        )
        == 2
    )
    # bad option values
    assert (
        main(base + ["-a", str(tmp_path / "a.rawtlt"), "--allow-missing-dose", "--defocus", "3", "--alpha", "2"]) == 2
    )
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 4 and all(line.startswith("tomomatch hand: error:") for line in err)
    assert "defocus" in err[0] and "defocus" in err[1] and "tomogram" in err[2]
    assert not list(tmp_path.glob("h.*"))


def test_cli_compare_hands_on_star_files(tmp_path):
    """Each run as a candidate STAR (tomomatch's RELION 5 writer), hands from the option."""
    from tomomatch.cli import main
    from tomomatch.extract import extract_candidates
    from tomomatch.particles import write_particles

    ja, jb, pos, s_plus, s_minus = _two_fake_runs(tmp_path, true_hand=1)
    stars = []
    for j in (ja, jb):
        df = extract_candidates(j, cutoff=0.2)
        stars.append(write_particles(df, tmp_path / f"{j.stem}.star", "relion5", job=j))
    out = tmp_path / "cmp_star"
    assert (
        main(
            [
                "compare-hands",
                str(stars[1]),
                str(stars[0]),
                "--hands",
                "-1",
                "1",
                "-o",
                str(out),
                "--min-particles",
                "8",
                "--radius",
                "15",
                "--no-figure",
            ]
        )
        == 0
    )
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["pairing"]["n_pairs"] == len(pos) and doc["verdict"] == 1
    np.testing.assert_allclose(np.sort(doc["particles"]["delta"]), np.sort(s_plus - s_minus), atol=1e-6)


def test_cli_hand_star_outside_tomogram(tmp_path, capsys):
    import pandas as pd

    from tomomatch.cli import main
    from tomomatch.mrcio import write_volume
    from tomomatch.particles import write_particles

    write_volume(tmp_path / "t.mrc", np.random.default_rng(0).normal(size=(16, 16, 16)), 10.0)
    write_volume(tmp_path / "m.mrc", np.ones((16, 16, 16)), 10.0)
    write_volume(tmp_path / "v.mrc", np.random.default_rng(1).normal(size=(24, 40, 120)), 10.0)
    job = _fake_job(tmp_path / "job", "j", 0, [[60, 20, 12]], [0.5])
    df = pd.DataFrame(
        {
            "x": [60.0, 500.0],
            "y": [20.0, 20.0],
            "z": [12.0, 12.0],
            "rot": 0.0,
            "tilt": 0.0,
            "psi": 0.0,
            "score": [0.5, 0.4],
            "score_sigma": [10.0, 8.0],
        }
    )
    star = write_particles(df, tmp_path / "c.star", "relion5", job=job)
    (tmp_path / "a.rawtlt").write_text("\n".join(str(a) for a in range(-60, 61, 10)) + "\n")
    rc = main(
        [
            "hand",
            "-o",
            str(tmp_path / "h"),
            "-v",
            str(tmp_path / "v.mrc"),
            "-t",
            str(tmp_path / "t.mrc"),
            "-m",
            str(tmp_path / "m.mrc"),
            "-p",
            str(star),
            "--job",
            str(job),
            "-a",
            str(tmp_path / "a.rawtlt"),
            "--allow-missing-dose",
            "--defocus",
            "3",
        ]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert rc == 2 and len(err) == 1 and "outside the tomogram" in err[0]


def test_statistics_float_rounding_counts_as_tie():
    sc = _synthetic(1, n=60)
    plus = sc.score_plus.copy()
    plus[:20] = sc.score_minus[:20] + np.where(np.arange(20) % 2, 1e-8, -1e-8)  # float32-level noise
    r = hand_statistics(HandScores(sc.x_angstrom, plus, sc.score_minus))
    assert r["n_nonzero_delta"] == 40
    assert r["tie_tolerance"] == pytest.approx(1e-6 * max(np.abs(plus).max(), np.abs(sc.score_minus).max()))


def test_cli_hand_runs_coarse_match_without_candidates(tmp_path):
    """No STAR and no job: ``hand`` runs a coarse search, extracts and re-scores (smoke test of
    the path; two particles are too few for a verdict)."""
    from scipy.spatial.transform import Rotation

    from tomomatch.cli import main
    from tomomatch.hand import rotate_volumes
    from tomomatch.mrcio import write_volume

    rng = np.random.default_rng(8)
    B = 16
    zz, yy, xx = np.mgrid[:B, :B, :B] - B // 2
    tmpl = np.zeros((B, B, B))
    for _ in range(6):
        c = rng.uniform(-4, 4, 3)
        tmpl += np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / 2.0)
    mask = ((xx**2 + yy**2 + zz**2) <= 7**2).astype(np.float32)
    tomo = rng.normal(0, 0.05, (32, 32, 56)).astype(np.float32)
    for x0, R in ((14, np.eye(3)), (40, Rotation.from_euler("z", 90, degrees=True).as_matrix())):
        tomo[8:24, 8:24, x0 - 8 : x0 + 8] += rotate_volumes(tmpl, R[None])[0].numpy()
    write_volume(tmp_path / "t.mrc", tmpl, 10.0)
    write_volume(tmp_path / "m.mrc", mask, 10.0)
    write_volume(tmp_path / "v.mrc", tomo, 10.0)
    (tmp_path / "a.rawtlt").write_text("\n".join(str(a) for a in range(-60, 61, 10)) + "\n")
    out = tmp_path / "h"
    rc = main(
        [
            "hand",
            "-o",
            str(out),
            "-v",
            str(tmp_path / "v.mrc"),
            "-t",
            str(tmp_path / "t.mrc"),
            "-m",
            str(tmp_path / "m.mrc"),
            "-a",
            str(tmp_path / "a.rawtlt"),
            "--allow-missing-dose",
            "--defocus",
            "3",
            "--coarse-step",
            "45",
            "--particle-diameter",
            "150",
            "-n",
            "5",
            "--max-angle",
            "0",
            "--no-figure",
        ]
    )
    assert rc == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert (tmp_path / "h_coarse" / "coarse_job.json").exists()
    assert "coarse match" in doc["method"]["candidates"]
    assert 1 <= doc["n_particles"] <= 5 and doc["verdict"] == "undetermined"
    # the two planted particles are among the candidates (centred x = (14 - 28) * 10, (40 - 28) * 10)
    xs = np.asarray(doc["particles"]["x_angstrom"])
    assert np.min(np.abs(xs + 140)) <= 20 and np.min(np.abs(xs - 120)) <= 20


def test_compare_hands_without_pairs_is_an_error():
    from tomomatch.errors import InputError

    a = np.array([[0.0, 0, 0], [100.0, 0, 0]])
    with pytest.raises(InputError, match="same tomogram"):
        compare_hands(a, [0.5, 0.4], 1, a + 5000.0, [0.5, 0.4], -1, max_distance_angstrom=20.0)


def test_hand_refuses_a_tomogram_or_particles_of_another_job(tmp_path):
    import pandas as pd

    from _synthetic import asymmetric_template, sphere_mask
    from tomomatch.errors import InputError
    from tomomatch.hand import run_hand
    from tomomatch.job import run_match
    from tomomatch.mrcio import write_volume
    from tomomatch.tiltseries import TiltSeries

    rng = np.random.default_rng(0)
    write_volume(tmp_path / "t.mrc", asymmetric_template(12), 10.0)
    write_volume(tmp_path / "m.mrc", sphere_mask(12, 5), 10.0)
    write_volume(tmp_path / "v.mrc", rng.normal(size=(16, 20, 24)).astype(np.float32), 10.0)
    write_volume(tmp_path / "w.mrc", rng.normal(size=(16, 20, 26)).astype(np.float32), 10.0)
    ts = TiltSeries(tilt_angles_deg=[-30.0, 0.0, 30.0], defocus_u_um=[3.0] * 3, hand=1)
    job = run_match(
        tmp_path / "t.mrc",
        tmp_path / "m.mrc",
        tmp_path / "v.mrc",
        tmp_path / "o",
        angular_step_deg=90.0,
        tilt_series=ts,
    )
    with pytest.raises(InputError, match="not the tomogram this job matched"):
        run_hand(tmp_path / "h", job=job, tomogram=tmp_path / "w.mrc")
    parts = pd.DataFrame(
        {
            "x": [12.0],
            "y": [10.0],
            "z": [8.0],
            "rot": 0.0,
            "tilt": 0.0,
            "psi": 0.0,
            "score": [0.5],
            "tomo_name": ["TS_99"],
        }
    )
    with pytest.raises(InputError, match="TS_99") as exc:
        run_hand(tmp_path / "h", job=job, particles=parts)
    assert exc.value.field == "rlnTomoName"
