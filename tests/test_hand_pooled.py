"""One handedness verdict per data set: the stratified statistics (against scipy) and the pooled CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from test_hand import _synthetic, _tiny_gradient_case, _two_fake_runs
from tomomatch.hand_stats import HandScores, pooled_hand_statistics, signed_rank_z, stouffer

# --------------------------------------------------------------------------- statistics


def test_signed_rank_z_hand_checked():
    # all five deltas positive: W+ = 15 is the largest of 2^5 equally likely sign patterns
    r = signed_rank_z([1.0, 2.0, 3.0, 4.0, 5.0])
    assert r["n"] == 5 and r["p_plus"] == pytest.approx(1 / 32) and r["p_minus"] == pytest.approx(1.0)
    assert r["p"] == pytest.approx(1 / 16)
    assert r["z"] == pytest.approx(1.8627319, abs=1e-6)  # Phi^-1(1 - 1/32)
    # the rank-2 delta negative: W+ = 13; W+ >= 13 for the patterns whose negative ranks sum to
    # <= 2: {}, {1}, {2} -> 3/32
    r = signed_rank_z([1.0, -2.0, 3.0, 4.0, 5.0])
    assert r["p_plus"] == pytest.approx(3 / 32) and r["p"] == pytest.approx(6 / 32)
    # all negative: p_plus = 1, but z stays finite (the smaller tail, with its sign)
    r = signed_rank_z([-1.0, -2.0, -3.0, -4.0, -5.0])
    assert r["p_plus"] == pytest.approx(1.0) and r["z"] == pytest.approx(-1.8627319, abs=1e-6)
    # zeros are dropped; nothing left: no test, z = 0
    assert signed_rank_z([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])["n"] == 5
    assert signed_rank_z([0.0, 0.0]) == {"n": 0, "p_plus": None, "p_minus": None, "p": None, "z": 0.0}
    # hand-checkable Stouffer: (1 + 2) / sqrt(2); a zero weight drops the stratum
    assert stouffer([1.0, 2.0], [1.0, 1.0]) == pytest.approx(3 / np.sqrt(2))
    assert stouffer([1.0, 2.0], [1.0, 0.0]) == pytest.approx(1.0)
    assert stouffer([1.0], [0.0]) == 0.0


@pytest.mark.parametrize("n", [12, 80])  # scipy's exact distribution, then its normal approximation
def test_one_tomogram_pooled_p_equals_scipy_wilcoxon(n):
    sc = _synthetic(-1, n=n, noise=3e-3, seed=n)
    r = pooled_hand_statistics([("a", sc)], n_bootstrap=500)
    d = sc.score_plus - sc.score_minus
    assert r["p"] == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-9)
    assert r["tomograms"][0]["p"] == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-9)
    # the one-sided p of the favoured hand (-1 here) is scipy's one-sided p
    assert r["stouffer"]["p_minus"] == pytest.approx(stats.wilcoxon(d, alternative="less").pvalue, rel=1e-9)


def test_stouffer_matches_scipy_combine_pvalues():
    strata = [(f"t{i}", _synthetic(1, n=n, noise=4e-3, seed=20 + i)) for i, n in enumerate((60, 75, 90))]
    r = pooled_hand_statistics(strata, n_bootstrap=500)
    p_plus = [stats.wilcoxon(s.score_plus - s.score_minus, alternative="greater").pvalue for _, s in strata]
    w = np.sqrt([len(s) for _, s in strata])
    ref = stats.combine_pvalues(p_plus, method="stouffer", weights=w)
    assert r["stouffer"]["z"] == pytest.approx(ref.statistic, rel=1e-9)
    assert r["stouffer"]["p_plus"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert r["p"] == pytest.approx(2 * min(ref.pvalue, 1 - ref.pvalue), rel=1e-9)
    assert [t["weight"] for t in r["tomograms"]] == pytest.approx(list(w))
    # the stratified bootstrap interval brackets the particle-weighted mean delta
    lo, hi = r["bootstrap"]["mean_delta_interval"]
    all_d = np.concatenate([s.score_plus - s.score_minus for _, s in strata])
    assert r["mean_delta"] == pytest.approx(all_d.mean()) and lo < all_d.mean() < hi


def test_opposite_tomogram_is_flagged():
    strata = [(f"t{i}", _synthetic(-1, n=40, noise=1e-3, seed=i)) for i in range(4)]
    strata.insert(2, ("flipped", _synthetic(1, n=40, noise=1e-3, seed=9)))
    r = pooled_hand_statistics(strata, n_bootstrap=1000)
    assert r["verdict"] == -1 and r["p"] < 1e-6
    assert r["disagreeing"] == ["flipped"]
    rows = {t["name"]: t for t in r["tomograms"]}
    assert rows["flipped"]["disagrees"] and rows["flipped"]["verdict"] == 1 and rows["flipped"]["z"] > 0
    assert not any(rows[f"t{i}"]["disagrees"] for i in range(4))
    assert any("flipped" in w and "h = +1" in w for w in r["warnings"])
    # without the flipped one nothing is flagged
    r2 = pooled_hand_statistics([s for s in strata if s[0] != "flipped"], n_bootstrap=1000)
    assert r2["verdict"] == -1 and r2["disagreeing"] == [] and r2["p"] < r["p"]


def test_weak_tomograms_decide_together():
    # each tomogram alone is too weak for p <= 0.01; together they decide
    strata = [(f"t{i}", _synthetic(1, n=14, noise=2e-3, seed=40 + i)) for i in range(6)]
    r = pooled_hand_statistics(strata, n_bootstrap=1000)
    single = [t["p"] for t in r["tomograms"]]
    assert all(p > 0.01 for p in single)
    assert r["verdict"] == 1 and r["p"] < 0.01 and r["p"] < min(single)


def test_excluded_empty_and_conflicts():
    empty = HandScores(np.zeros(0), np.zeros(0), np.zeros(0))
    r = pooled_hand_statistics([("a", _synthetic(-1, n=30, seed=1)), ("none", empty)], n_bootstrap=500)
    assert r["verdict"] == -1 and r["n_tomograms"] == 2 and r["n_tomograms_used"] == 1
    assert r["excluded"] == [{"name": "none", "reason": "no particles"}]
    r = pooled_hand_statistics({"x": empty, "y": empty})
    assert r["verdict"] == "undetermined" and "no tomogram" in r["reason"]
    # two equally strong tomograms of opposite sign: undetermined, with a conflict warning
    r = pooled_hand_statistics(
        [("p", _synthetic(1, n=40, seed=5)), ("m", _synthetic(-1, n=40, seed=5))], n_bootstrap=500
    )
    assert r["verdict"] == "undetermined" and any("conflict" in w for w in r["warnings"])
    with pytest.raises(ValueError, match="twice"):
        pooled_hand_statistics([("a", empty), ("a", empty)])
    with pytest.raises(ValueError, match="no tomograms"):
        pooled_hand_statistics([])


# --------------------------------------------------------------------------- pipelines and CLI


def _write_tiny_tomogram(directory, name, true_hand, seed, n=14, particles=True):
    """A tiny synthetic tomogram with its metadata files and candidate STAR (the particles' true
    positions, poses 2 degrees off), from ``test_hand._tiny_gradient_case``."""
    from tomomatch.conventions import matrix_to_relion
    from tomomatch.mrcio import write_volume
    from tomomatch.particles import JobGeometry, write_particles

    tomo, voxel, ts, tmpl, mask, pos, start = _tiny_gradient_case(true_hand, n=n, seed=seed, nx=2000)
    directory.mkdir(parents=True, exist_ok=True)
    write_volume(directory / f"{name}.mrc", tomo, voxel)
    if not (directory / "template.mrc").exists():
        write_volume(directory / "template.mrc", tmpl, voxel)
        write_volume(directory / "mask.mrc", mask, voxel)
    (directory / f"{name}.tlt").write_text("\n".join(f"{a:g}" for a in ts.tilt_angles_deg) + "\n")
    (directory / f"{name}_dose.txt").write_text("\n".join(f"{a:g}" for a in ts.accumulated_dose) + "\n")
    (directory / f"{name}_defocus.txt").write_text("\n".join(f"{a:.6f}" for a in ts.defocus_u_um) + "\n")
    ang = matrix_to_relion(start)
    keep = slice(None) if particles else slice(0, 0)
    df = pd.DataFrame(
        {
            "x": pos[keep, 0].astype(float),
            "y": pos[keep, 1].astype(float),
            "z": pos[keep, 2].astype(float),
            "rot": ang[keep, 0],
            "tilt": ang[keep, 1],
            "psi": ang[keep, 2],
            "score": 1.0,
        }
    )
    geo = JobGeometry(tomo.shape, voxel, None, None, name, None, None, None, None)
    write_particles(df, directory / f"{name}.star", "relion5", job=geo)
    return f"{name}\t{name}.mrc\t{name}.tlt\t{name}_dose.txt\t{name}_defocus.txt\t{name}.star"


_HEADER = "name\ttomogram\ttilt_angles\tdose\tdefocus\tparticles"


def test_cli_hand_list_gives_one_pooled_verdict(tmp_path, capsys):
    from tomomatch.cli import main
    from tomomatch.hand import read_report

    rows = [_write_tiny_tomogram(tmp_path, f"TS_{i}", -1, seed=30 + i) for i in (1, 2)]
    rows.append(_write_tiny_tomogram(tmp_path, "TS_3", -1, seed=33, n=4, particles=False))  # no particles
    (tmp_path / "list.tsv").write_text("\n".join([_HEADER, *rows]) + "\n")
    out = tmp_path / "pooled"
    base = ["-t", str(tmp_path / "template.mrc"), "-m", str(tmp_path / "mask.mrc"), "--max-angle", "0"]
    rc = main(["hand", "-o", str(out), "--list", str(tmp_path / "list.tsv"), *base, "--no-figure"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.count("defocus handedness:") == 1  # one pooled verdict ...
    assert "TS_1:" in printed and "TS_2:" in printed and "TS_3: excluded" in printed  # ... and per-tomogram lines
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["verdict"] == -1 and doc["p"] < 0.01, doc["reason"]
    assert doc["settings"]["relion5"] == "rlnTomoHand -1" and "rlnTomoHand -1" in printed
    assert [t["name"] for t in doc["tomograms"]] == ["TS_1", "TS_2"]
    assert doc["excluded"][0]["name"] == "TS_3" and doc["n_tomograms"] == 3
    # the pooled numbers are those of the per-tomogram reports
    strata = [(t["name"], read_report(t["report"])[1]) for t in doc["tomograms"]]
    ref = pooled_hand_statistics(strata)
    assert doc["p"] == pytest.approx(ref["p"]) and doc["stouffer"]["z"] == pytest.approx(ref["stouffer"]["z"])
    table = pd.read_csv(tmp_path / "pooled_tomograms.tsv", sep="\t")
    assert list(table["name"]) == ["TS_1", "TS_2", "TS_3"] and table["verdict"].iloc[2] == "excluded"
    # re-pooling the written reports gives the same verdict without re-scoring
    out2 = tmp_path / "again"
    reports = [t["report"] for t in doc["tomograms"]]
    assert main(["hand", "-o", str(out2), "--reports", *reports, "--no-figure"]) == 0
    doc2 = json.loads(out2.with_suffix(".json").read_text())
    assert doc2["verdict"] == -1 and doc2["p"] == pytest.approx(doc["p"])


def test_cli_compare_hands_pairs_and_list(tmp_path, capsys):
    from tomomatch.cli import main

    runs = []
    for k in (1, 2):
        ja, jb, *_ = _two_fake_runs(tmp_path / f"t{k}", true_hand=-1, seed=k)
        runs += [str(ja), str(jb)]
    opts = ["--cutoff", "0.2", "--min-particles", "8", "--radius", "15", "--no-figure"]
    out = tmp_path / "cmp"
    assert main(["compare-hands", *runs, "-o", str(out), *opts]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["verdict"] == -1 and doc["n_tomograms_used"] == 2 and printed.count("defocus handedness:") == 1
    single = [t["p"] for t in doc["tomograms"]]
    assert doc["p"] < min(single)  # two consistent tomograms together beat either alone
    (tmp_path / "runs.csv").write_text(f"name,run_a,run_b\nA,{runs[0]},{runs[1]}\nB,{runs[2]},{runs[3]}\n")
    out2 = tmp_path / "cmp_list"
    assert main(["compare-hands", "--list", str(tmp_path / "runs.csv"), "-o", str(out2), *opts]) == 0
    doc2 = json.loads(out2.with_suffix(".json").read_text())
    assert [t["name"] for t in doc2["tomograms"]] == ["A", "B"] and doc2["p"] == pytest.approx(doc["p"])
    assert "A:" in capsys.readouterr().out


def test_cli_pooled_bad_inputs(tmp_path, capsys):
    from tomomatch.cli import main

    row = _write_tiny_tomogram(tmp_path, "TS_1", -1, seed=1, n=4)
    empty_row = _write_tiny_tomogram(tmp_path, "TS_2", -1, seed=2, n=4, particles=False)
    t = ["-t", str(tmp_path / "template.mrc"), "-m", str(tmp_path / "mask.mrc"), "--no-figure"]
    out = str(tmp_path / "o")
    bad_row = row.replace("TS_1.star", "missing.star").replace("TS_1", "X", 1)
    cases = {
        "unknown column": "name\ttomogram\tcolour\nTS_1\tTS_1.mrc\tred\n",
        "line 3": f"{_HEADER}\n{row}\n{bad_row}\n",
        "no tomogram has candidates": f"{_HEADER}\n{empty_row}\n",
    }
    for i, (want, text) in enumerate(cases.items()):
        (tmp_path / f"l{i}.tsv").write_text(text)
        assert main(["hand", "-o", out, "--list", str(tmp_path / f"l{i}.tsv"), *t]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and want in err[0], err
    # a row without defocus stops the run, naming its line
    (tmp_path / "nodf.tsv").write_text(
        "name\ttomogram\ttilt_angles\tdose\tparticles\nA\tTS_1.mrc\tTS_1.tlt\t\tTS_1.star\n"
    )
    assert main(["hand", "-o", out, "--list", str(tmp_path / "nodf.tsv"), *t, "--allow-missing-dose"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "line 2" in err[0] and "defocus" in err[0]
    # compare-hands: an odd number of runs, a list without run_b
    assert main(["compare-hands", "a.json", "b.json", "c.json", "-o", out]) == 2
    (tmp_path / "r.tsv").write_text("name\trun_a\nA\tx.json\n")
    assert main(["compare-hands", "--list", str(tmp_path / "r.tsv"), "-o", out]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 2 and "3 run(s)" in err[0] and "run_b" in err[1]
    assert not list(tmp_path.glob("o.*"))
