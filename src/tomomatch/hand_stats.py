"""Handedness statistics: paired per-particle scores, pairing of two runs, the verdict, the report.

* :func:`hand_statistics` -- the paired statistics on per-particle scores ``s(+1)``,
  ``s(-1)`` (and optionally ``s(0)``): ``delta = s(+1) - s(-1)``, Wilcoxon signed-rank test,
  exact sign test, a seeded bootstrap 95 % interval of the mean delta, the trend of delta
  against ``|x|`` (least-squares slope with its p-value, and Spearman's rho), and the verdict
  ``+1``, ``-1`` or ``"undetermined"`` with its reason.
* :func:`pair_particles` -- one-to-one nearest-neighbour pairing of two candidate lists
  within a radius (for ``tomomatch compare-hands``: the seed's two-run workflow).
* :func:`compare_hands` -- pair two runs made with opposite hands and apply the statistics.
* :func:`pooled_hand_statistics` -- one verdict for a data set of several tomograms: a per-tomogram
  Wilcoxon signed-rank z combined with Stouffer's method (weights ``sqrt(n)``), each tomogram's
  own verdict, and the tomograms that significantly disagree with the pooled verdict.
* :func:`verdict_settings` -- the verdict as the value to set in RELION 5, Warp, pytom, IMOD.
* :func:`write_report` / :func:`read_report` -- the JSON report, written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from .errors import InputError
from .jsonable import jsonable
from .mrcio import atomic_path

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_PARTICLES",
    "UNDETERMINED",
    "HandScores",
    "hand_statistics",
    "pair_particles",
    "compare_hands",
    "signed_rank_z",
    "stouffer",
    "pooled_hand_statistics",
    "verdict_settings",
    "write_report",
    "read_report",
]

#: significance level of the verdict: the Wilcoxon p-value must be at most this
DEFAULT_ALPHA = 0.01
#: fewer paired particles than this give the verdict "undetermined"
DEFAULT_MIN_PARTICLES = 10
UNDETERMINED = "undetermined"


@dataclass
class HandScores:
    """Per-particle scores under the three hands, the input of :func:`hand_statistics`.

    Attributes
    ----------
    x_angstrom
        Centred x of each particle (Angstrom, tomogram centre ``n // 2`` = 0).
    score_plus, score_minus
        Score of each particle with a template weighted under ``h = +1`` and ``h = -1``.
    score_zero
        Score with no defocus gradient (``h = 0``), or ``None`` when not computed.
    y_angstrom, z_angstrom
        Centred y and z (Angstrom), optional, reported only.
    """

    x_angstrom: np.ndarray
    score_plus: np.ndarray
    score_minus: np.ndarray
    score_zero: np.ndarray | None = None
    y_angstrom: np.ndarray | None = None
    z_angstrom: np.ndarray | None = None

    def __post_init__(self):
        self.x_angstrom = np.asarray(self.x_angstrom, dtype=float).reshape(-1)
        n = self.x_angstrom.size
        for name in ("score_plus", "score_minus", "score_zero", "y_angstrom", "z_angstrom"):
            v = getattr(self, name)
            if v is None:
                continue
            v = np.asarray(v, dtype=float).reshape(-1)
            if v.size != n:
                raise ValueError(f"{name} has {v.size} values, expected {n} (one per particle)")
            setattr(self, name, v)
        for name in ("x_angstrom", "score_plus", "score_minus"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{name} contains NaN or Inf")

    @property
    def delta(self) -> np.ndarray:
        """``s(+1) - s(-1)`` per particle: positive where the +1 hand matches better."""
        return self.score_plus - self.score_minus

    def __len__(self) -> int:
        return int(self.x_angstrom.size)


# --------------------------------------------------------------------------- statistics


def _bootstrap_means(values: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """``n_bootstrap`` means of resamples (with replacement) of ``values`` (vectorised in chunks)."""
    n = values.size
    means = np.empty(n_bootstrap)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_bootstrap, chunk):
        stop = min(n_bootstrap, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def _bootstrap_mean_interval(
    values: np.ndarray, n_bootstrap: int, seed: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, vectorised in chunks)."""
    means = _bootstrap_means(values, n_bootstrap, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(lo), float(hi)


def _tied_delta(scores: HandScores, tie_tolerance: float | None) -> tuple[np.ndarray, float]:
    """``delta`` with float-rounding ties set to 0, and the tolerance used (see :func:`hand_statistics`)."""
    delta = scores.delta.copy()
    if tie_tolerance is None:
        top = max(np.max(np.abs(scores.score_plus), initial=0.0), np.max(np.abs(scores.score_minus), initial=0.0))
        tie_tolerance = 1e-6 * top
    delta[np.abs(delta) <= tie_tolerance] = 0.0
    return delta, float(tie_tolerance)


def _trend(abs_x: np.ndarray, delta: np.ndarray) -> dict[str, Any]:
    """Least-squares ``delta = a + b |x|`` (b per Angstrom, two-sided p) and Spearman rho."""
    out: dict[str, Any] = {
        "slope_per_angstrom": None,
        "intercept": None,
        "slope_stderr": None,
        "slope_p": None,
        "spearman_rho": None,
        "spearman_p": None,
    }
    if abs_x.size < 3 or np.ptp(abs_x) == 0:
        return out
    lr = stats.linregress(abs_x, delta)
    out.update(
        slope_per_angstrom=float(lr.slope),
        intercept=float(lr.intercept),
        slope_stderr=float(lr.stderr),
        slope_p=float(lr.pvalue),
    )
    if np.ptp(delta) > 0:
        rho = stats.spearmanr(abs_x, delta)
        out.update(spearman_rho=float(rho.statistic), spearman_p=float(rho.pvalue))
    return out


def hand_statistics(
    scores: HandScores,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_particles: int = DEFAULT_MIN_PARTICLES,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    tie_tolerance: float | None = None,
) -> dict[str, Any]:
    """Paired statistics on ``delta = s(+1) - s(-1)`` and the handedness verdict.

    Parameters
    ----------
    scores
        Per-particle scores and centred x (Angstrom).
    alpha
        Significance level (default 0.01) the Wilcoxon signed-rank p-value must reach.
    min_particles
        Fewer particles than this (or fewer non-zero deltas) give ``"undetermined"``.
    n_bootstrap, seed
        Bootstrap resamples for the 95 % interval of the mean delta, and their seed.
    tie_tolerance
        ``|delta|`` at or below this counts as a tie (zero). Default ``1e-6`` times the largest
        ``|score|``: far below any gradient effect, above float32 rounding (two runs that
        give a particle the same template, e.g. in the centre tile, differ by ~1e-8).

    Returns
    -------
    dict
        JSON-ready. ``verdict`` is ``1``, ``-1`` or ``"undetermined"``; ``reason`` says why.

    Notes
    -----
    The verdict is ``sign(mean delta)`` only when all of these hold:

    * at least ``min_particles`` particles with non-zero delta;
    * the two-sided Wilcoxon signed-rank p-value is ``<= alpha``;
    * the bootstrap 95 % interval of the mean delta excludes 0 on the same side as the
      Wilcoxon direction (median sign);
    * the trend of delta against ``|x|`` does not significantly (p <= alpha) point the
      other way (the right hand's advantage must grow, not shrink, with ``|x|``).

    The exact sign test is reported alongside; a sign test with p > alpha adds a warning but
    does not overrule Wilcoxon (it is the less powerful test on the same data). Zero deltas
    (e.g. particles in the centre tile of a tiled run, where both hands give the same
    template) are dropped from both tests (Wilcoxon's ``zero_method="wilcox"``).
    """
    x = scores.x_angstrom
    n = len(scores)
    delta, tie_tolerance = _tied_delta(scores, tie_tolerance)
    nonzero = delta != 0
    n_nonzero = int(nonzero.sum())
    n_pos = int((delta > 0).sum())
    n_neg = int((delta < 0).sum())
    report: dict[str, Any] = {
        "n_particles": n,
        "n_nonzero_delta": n_nonzero,
        "n_plus_better": n_pos,
        "n_minus_better": n_neg,
        "fraction_plus_better": (n_pos / n_nonzero) if n_nonzero else None,
        "alpha": float(alpha),
        "min_particles": int(min_particles),
        "tie_tolerance": float(tie_tolerance),
        "mean_score_plus": float(np.mean(scores.score_plus)) if n else None,
        "mean_score_minus": float(np.mean(scores.score_minus)) if n else None,
        "mean_score_zero": (float(np.mean(scores.score_zero)) if scores.score_zero is not None and n else None),
        "mean_delta": float(np.mean(delta)) if n else None,
        "median_delta": float(np.median(delta)) if n else None,
        "std_delta": float(np.std(delta, ddof=1)) if n > 1 else None,
        "bootstrap": {
            "n_resamples": int(n_bootstrap),
            "seed": int(seed),
            "confidence": 0.95,
            "mean_delta_interval": None,
        },
        "wilcoxon": {"statistic": None, "p": None},
        "sign_test": {"k_plus": n_pos, "n": n_nonzero, "p": None},
        "trend_abs_x": _trend(
            np.abs(x[nonzero]) if n_nonzero else np.abs(x[:0]), delta[nonzero] if n_nonzero else delta[:0]
        ),
        "gain_over_no_gradient": None,
        "warnings": [],
    }
    if scores.score_zero is not None and n:
        report["gain_over_no_gradient"] = {
            "mean_plus_minus_zero": float(np.mean(scores.score_plus - scores.score_zero)),
            "mean_minus_minus_zero": float(np.mean(scores.score_minus - scores.score_zero)),
        }

    if n_nonzero < max(int(min_particles), 2):
        why = (
            f"too few particles: {n_nonzero} with a non-zero score difference"
            f" (of {n}); need at least {max(int(min_particles), 2)}"
        )
        report.update(verdict=UNDETERMINED, reason=why, p=None)
        return report

    d = delta[nonzero]
    w = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    report["wilcoxon"] = {"statistic": float(w.statistic), "p": float(w.pvalue)}
    report["sign_test"]["p"] = float(stats.binomtest(n_pos, n_nonzero, 0.5).pvalue)
    lo, hi = _bootstrap_mean_interval(delta, int(n_bootstrap), int(seed))
    report["bootstrap"]["mean_delta_interval"] = [lo, hi]
    report["p"] = float(w.pvalue)

    direction = 1 if np.median(d) > 0 or (np.median(d) == 0 and np.mean(d) > 0) else -1
    trend = report["trend_abs_x"]
    reasons = []
    if not w.pvalue <= alpha:
        reasons.append(f"Wilcoxon p = {w.pvalue:.3g} > {alpha:g}")
    if lo <= 0 <= hi:
        reasons.append(f"the 95 % bootstrap interval of the mean delta [{lo:.3g}, {hi:.3g}] contains 0")
    elif (lo > 0) != (direction > 0):
        reasons.append("the mean and the median of delta disagree in sign")
    if (
        trend["slope_p"] is not None
        and trend["slope_p"] <= alpha
        and np.sign(trend["slope_per_angstrom"]) == -direction
    ):
        reasons.append(f"delta's trend against |x| points the other way (slope p = {trend['slope_p']:.3g})")
    if reasons:
        report.update(verdict=UNDETERMINED, reason="; ".join(reasons))
    else:
        report.update(
            verdict=int(direction),
            reason=(
                f"{max(n_pos, n_neg)} of {n_nonzero} particles score higher with h = "
                f"{direction:+d}; Wilcoxon p = {w.pvalue:.3g}; mean delta 95 % interval "
                f"[{lo:.3g}, {hi:.3g}]"
            ),
        )
    if report["sign_test"]["p"] > alpha:
        report["warnings"].append(f"sign test p = {report['sign_test']['p']:.3g} > {alpha:g}")
    if trend["slope_p"] is not None and not (
        trend["slope_p"] <= alpha and np.sign(trend["slope_per_angstrom"]) == direction
    ):
        report["warnings"].append(
            "delta does not grow significantly with |x| in the preferred direction"
            f" (slope p = {trend['slope_p']:.3g}); the gradient signal is weak"
        )
    return report


# --------------------------------------------------------------------------- pairing


def pair_particles(coords_a, coords_b, max_distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair two point sets one-to-one by nearest neighbour within ``max_distance``.

    Finds the largest set of pairs with distance ``<= max_distance`` in which no point is
    used twice and, among those, the smallest total distance (Hungarian assignment,
    :func:`scipy.optimize.linear_sum_assignment`, solved separately on each connected
    group of points that lie within the radius of each other, so large lists stay fast).

    Parameters
    ----------
    coords_a, coords_b
        ``(n, d)`` and ``(m, d)`` coordinates in the same units as ``max_distance``.
    max_distance
        Pairing radius (inclusive).

    Returns
    -------
    index_a, index_b, distance
        Paired row indices into ``coords_a`` and ``coords_b`` (sorted by ``index_a``) and the
        distance of each pair.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    a = np.asarray(coords_a, dtype=float)
    b = np.asarray(coords_b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or (a.size and b.size and a.shape[1] != b.shape[1]):
        raise ValueError("coordinates must be (n, d) arrays with the same d")
    r = float(max_distance)
    if not r >= 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    if len(a) == 0 or len(b) == 0:
        return empty
    neighbours = cKDTree(a).query_ball_tree(cKDTree(b), r)
    ia = np.array([i for i, js in enumerate(neighbours) for _ in js], dtype=int)
    ib = np.array([j for js in neighbours for j in js], dtype=int)
    if ia.size == 0:
        return empty
    dist = np.linalg.norm(a[ia] - b[ib], axis=1)
    keep = dist <= r
    ia, ib, dist = ia[keep], ib[keep], dist[keep]
    if ia.size == 0:
        return empty
    na, nb = len(a), len(b)
    graph = coo_matrix((np.ones(ia.size), (ia, na + ib)), shape=(na + nb, na + nb))
    _, label = connected_components(graph, directed=False)
    out_a, out_b, out_d = [], [], []
    comp_of_edge = label[ia]
    order = np.argsort(comp_of_edge, kind="stable")
    ia, ib, dist, comp_of_edge = ia[order], ib[order], dist[order], comp_of_edge[order]
    bounds = np.flatnonzero(np.diff(comp_of_edge)) + 1
    for ea, eb, ed in zip(np.split(ia, bounds), np.split(ib, bounds), np.split(dist, bounds)):
        ua, la = np.unique(ea, return_inverse=True)
        ub, lb = np.unique(eb, return_inverse=True)
        if ua.size == 1 or ub.size == 1:  # star: take the single nearest
            k = int(np.argmin(ed))
            out_a.append(ea[k])
            out_b.append(eb[k])
            out_d.append(ed[k])
            continue
        # forbidden pairs cost more than any full set of allowed ones: maximum cardinality
        # first, then minimum total distance
        big = (r + 1.0) * (min(ua.size, ub.size) + 1) + 1.0
        cost = np.full((ua.size, ub.size), big)
        cost[la, lb] = ed
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] < big
        out_a.extend(ua[rows[ok]])
        out_b.extend(ub[cols[ok]])
        out_d.extend(cost[rows[ok], cols[ok]])
    pair_a = np.asarray(out_a, dtype=int)
    pair_b = np.asarray(out_b, dtype=int)
    pair_d = np.asarray(out_d, dtype=float)
    order = np.argsort(pair_a, kind="stable")
    return pair_a[order], pair_b[order], pair_d[order]


def compare_hands(
    coords_a_angstrom,
    scores_a,
    hand_a: int,
    coords_b_angstrom,
    scores_b,
    hand_b: int,
    *,
    max_distance_angstrom: float,
    **statistics_options,
) -> tuple[HandScores, dict[str, Any]]:
    """Pair the candidates of two runs made with opposite hands and test which hand scores higher.

    Parameters
    ----------
    coords_a_angstrom, coords_b_angstrom
        ``(n, 3)`` centred ``(x, y, z)`` positions in Angstrom of each run's candidates.
    scores_a, scores_b
        Each candidate's score in its run.
    hand_a, hand_b
        The hand each run was matched with; one must be +1 and the other -1.
    max_distance_angstrom
        Pairing radius.
    **statistics_options
        Passed to :func:`hand_statistics`.

    Returns
    -------
    scores, report
        The paired :class:`HandScores` (x is the mean of the pair) and the statistics,
        with ``pairing`` details added.
    """
    from .conventions import check_hand

    ha, hb = check_hand(hand_a), check_hand(hand_b)
    if {ha, hb} != {1, -1}:
        raise InputError(
            f"compare-hands needs one run with hand +1 and one with -1; got {ha:+d} and {hb:+d}", field="hand"
        )
    ca = np.asarray(coords_a_angstrom, dtype=float).reshape(-1, 3)
    cb = np.asarray(coords_b_angstrom, dtype=float).reshape(-1, 3)
    sa = np.asarray(scores_a, dtype=float).reshape(-1)
    sb = np.asarray(scores_b, dtype=float).reshape(-1)
    ia, ib, dist = pair_particles(ca, cb, max_distance_angstrom)
    if ia.size == 0:
        raise InputError(
            f"no candidate of one run lies within {float(max_distance_angstrom):g} A of one of the"
            f" other ({len(ca)} and {len(cb)} candidates): are they from the same tomogram?"
            " (else widen --radius)",
            field="pairing",
        )
    if ha == -1:
        ca, cb, sa, sb, ia, ib = cb, ca, sb, sa, ib, ia
    pos = 0.5 * (ca[ia] + cb[ib])
    paired = HandScores(
        x_angstrom=pos[:, 0], y_angstrom=pos[:, 1], z_angstrom=pos[:, 2], score_plus=sa[ia], score_minus=sb[ib]
    )
    report = hand_statistics(paired, **statistics_options)
    report["pairing"] = {
        "max_distance_angstrom": float(max_distance_angstrom),
        "n_run_plus": int(len(sa)),
        "n_run_minus": int(len(sb)),
        "n_pairs": int(ia.size),
        "mean_pair_distance_angstrom": float(dist.mean()) if dist.size else None,
        "max_pair_distance_angstrom": float(dist.max()) if dist.size else None,
    }
    return paired, report


# --------------------------------------------------------------------------- several tomograms

#: one-sided p-values are clipped to at least this before the normal quantile (|z| <= 37): a
#: normal approximation's p can underflow to 0
_P_FLOOR = 1e-300


def _signed_z(p_plus: float, p_minus: float) -> float:
    """The signed normal score of two one-sided p-values (see :func:`signed_rank_z`)."""
    p_min = min(p_plus, p_minus)
    if not p_min < 0.5:
        return 0.0
    z = float(stats.norm.isf(max(p_min, _P_FLOOR)))
    return z if p_plus < p_minus else -z


def signed_rank_z(delta) -> dict[str, Any]:
    """One tomogram's Wilcoxon signed-rank test as a signed normal score ``z``.

    Zero deltas are dropped (``zero_method="wilcox"``, as in :func:`hand_statistics`).
    ``p_plus`` and ``p_minus`` are :func:`scipy.stats.wilcoxon`'s one-sided p-values
    (``alternative="greater"``: ``h = +1`` scores higher; ``"less"``: ``-1`` does) and ``p`` its
    two-sided one, which scipy defines as ``min(1, 2 min(p_plus, p_minus))``.

    ``z = Phi^-1(1 - p_plus)`` when ``p_plus < p_minus``, ``-Phi^-1(1 - p_minus)`` when
    ``p_minus < p_plus``, and 0 when ``p = 1``; so ``2 (1 - Phi(|z|)) = p`` exactly. With the
    normal approximation (scipy's for more than 50 non-zero deltas, or ties) ``p_minus = 1 -
    p_plus`` and this is the usual ``z = Phi^-1(1 - p_plus)``; with the exact small-sample
    distribution it takes the smaller tail, which keeps ``z`` finite when every delta has the
    same sign (``p_plus = 1``).

    Returns ``{"n", "p_plus", "p_minus", "p", "z"}`` (``n`` non-zero deltas; p-values None and
    ``z = 0`` when ``n = 0``).
    """
    d = np.asarray(delta, dtype=float).reshape(-1)
    d = d[d != 0]
    if d.size == 0:
        return {"n": 0, "p_plus": None, "p_minus": None, "p": None, "z": 0.0}
    p_plus = float(stats.wilcoxon(d, zero_method="wilcox", alternative="greater").pvalue)
    p_minus = float(stats.wilcoxon(d, zero_method="wilcox", alternative="less").pvalue)
    return {
        "n": int(d.size),
        "p_plus": p_plus,
        "p_minus": p_minus,
        "p": min(1.0, 2.0 * min(p_plus, p_minus)),
        "z": _signed_z(p_plus, p_minus),
    }


def stouffer(z, weights) -> float:
    """Stouffer's weighted combination ``sum(w z) / sqrt(sum(w^2))`` (0 when all weights are 0).

    With ``z_i = Phi^-1(1 - p_i)`` this is the statistic of
    ``scipy.stats.combine_pvalues(p, method="stouffer", weights=w)``.
    """
    z = np.asarray(z, dtype=float).reshape(-1)
    w = np.asarray(weights, dtype=float).reshape(-1)
    if z.size != w.size:
        raise ValueError(f"{z.size} z-scores and {w.size} weights")
    norm = float(np.sqrt(np.sum(w**2)))
    return float(np.sum(w * z) / norm) if norm > 0 else 0.0


def _two_sided(z: float) -> float:
    return float(min(1.0, 2.0 * stats.norm.sf(abs(z))))


def pooled_hand_statistics(
    strata,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_particles: int = DEFAULT_MIN_PARTICLES,
    n_bootstrap: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """One handedness verdict for several tomograms of one data set (a stratified test).

    The hand is a property of the microscope, acquisition software and reconstruction, shared
    by every tomogram of a data set, but the size of the score difference is not (it depends
    on each tomogram's SNR, thickness, defocus and field of view). So the particles are not
    thrown into one test; each tomogram is a stratum:

    * per tomogram, the Wilcoxon signed-rank test of ``delta = s(+1) - s(-1)``
      (:func:`signed_rank_z`: signed normal score ``z_i``, ``n_i`` non-zero deltas) and its own
      full verdict (:func:`hand_statistics`);
    * pooled: Stouffer's ``Z = sum(w_i z_i) / sqrt(sum(w_i^2))`` with ``w_i = sqrt(n_i)``
      (the weights that are optimal when every particle carries the same evidence: ``z_i``
      grows like ``sqrt(n_i)``), two-sided ``p = 2 (1 - Phi(|Z|))``. With one tomogram this is
      exactly that tomogram's two-sided Wilcoxon p-value;
    * the particle-weighted mean delta with a stratified bootstrap 95 % interval (particles
      resampled within each tomogram);
    * the trend of delta against ``|x|``: each tomogram's least-squares slope as a signed z
      (from its two-sided p-value), combined in the same way.

    The verdict is ``sign(Z)`` under the rules of :func:`hand_statistics` applied to the pooled
    numbers: at least ``min_particles`` non-zero deltas in all, ``p <= alpha``, the bootstrap
    interval excluding 0 on the same side, and no significant pooled trend the other way.

    A tomogram **disagrees** when its own two-sided Wilcoxon p is ``<= alpha`` with the sign
    opposite to the pooled verdict (a flipped tilt-angle sign, another microscope or a mirrored
    reconstruction in that tomogram's metadata): it is flagged and warned about; it is not
    dropped and does not change the verdict. With an undetermined verdict, tomograms
    significant in both directions give a warning.

    Parameters
    ----------
    strata
        ``(name, HandScores)`` pairs, or a mapping name -> :class:`HandScores`. A tomogram with
        no particles is listed under ``"excluded"`` and takes no part.
    alpha, min_particles, n_bootstrap, seed
        As in :func:`hand_statistics` (each tomogram's own verdict uses them too).

    Returns
    -------
    dict
        JSON-ready: ``verdict``, ``reason``, ``p``, ``warnings``, ``stouffer``, ``bootstrap``,
        ``trend_abs_x``, ``tomograms`` (one row per used tomogram), ``disagreeing``,
        ``excluded`` and the counts.

    Raises
    ------
    ValueError
        No strata, or two with the same name.
    """
    items = list(strata.items()) if hasattr(strata, "items") else [(str(k), v) for k, v in strata]
    if not items:
        raise ValueError("no tomograms to pool")
    names = [str(k) for k, _ in items]
    dup = sorted({k for k in names if names.count(k) > 1})
    if dup:
        raise ValueError(f"tomogram name(s) {', '.join(dup)} appear twice")
    rows: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    deltas: list[np.ndarray] = []
    for name, sc in items:
        if len(sc) == 0:
            excluded.append({"name": str(name), "reason": "no particles"})
            continue
        rep = hand_statistics(sc, alpha=alpha, min_particles=min_particles, n_bootstrap=n_bootstrap, seed=seed)
        delta, _ = _tied_delta(sc, rep["tie_tolerance"])
        sr = signed_rank_z(delta)
        tr = rep["trend_abs_x"]
        trend_z = None
        if tr["slope_p"] is not None and np.isfinite(tr["slope_p"]):
            trend_z = _signed_z(
                *((tr["slope_p"] / 2, 1.0) if tr["slope_per_angstrom"] > 0 else (1.0, tr["slope_p"] / 2))
            )
        deltas.append(delta)
        rows.append(
            {
                "name": str(name),
                "n_particles": int(len(sc)),
                "n_nonzero_delta": sr["n"],
                "n_plus_better": rep["n_plus_better"],
                "n_minus_better": rep["n_minus_better"],
                "mean_delta": rep["mean_delta"],
                "median_delta": rep["median_delta"],
                "p": sr["p"],
                "p_plus": sr["p_plus"],
                "p_minus": sr["p_minus"],
                "z": sr["z"],
                "weight": float(np.sqrt(sr["n"])),
                "trend_z": trend_z,
                "trend_slope_p": tr["slope_p"],
                "verdict": rep["verdict"],
                "reason": rep["reason"],
                "disagrees": False,
            }
        )
    n_total = int(sum(r["n_particles"] for r in rows))
    n_nonzero = int(sum(r["n_nonzero_delta"] for r in rows))
    n_pos = int(sum(r["n_plus_better"] for r in rows))
    n_neg = int(sum(r["n_minus_better"] for r in rows))
    report: dict[str, Any] = {
        "pooled": True,
        "n_tomograms": len(items),
        "n_tomograms_used": len(rows),
        "n_particles": n_total,
        "n_nonzero_delta": n_nonzero,
        "n_plus_better": n_pos,
        "n_minus_better": n_neg,
        "fraction_plus_better": (n_pos / n_nonzero) if n_nonzero else None,
        "alpha": float(alpha),
        "min_particles": int(min_particles),
        "mean_delta": float(np.mean(np.concatenate(deltas))) if deltas else None,
        "statistic": (
            "stratified Wilcoxon signed-rank: per-tomogram z combined with Stouffer's method, weights sqrt(n non-zero)"
        ),
        "stouffer": {"z": None, "p": None, "p_plus": None, "p_minus": None},
        "bootstrap": {
            "n_resamples": int(n_bootstrap),
            "seed": int(seed),
            "confidence": 0.95,
            "stratified": True,
            "mean_delta_interval": None,
        },
        "trend_abs_x": {"z": None, "p": None},
        "tomograms": rows,
        "disagreeing": [],
        "excluded": excluded,
        "warnings": [f"tomogram {e['name']} excluded: {e['reason']}" for e in excluded],
    }
    need = max(int(min_particles), 2)
    if not rows:
        report.update(verdict=UNDETERMINED, reason="no tomogram has particles", p=None)
        return report
    if n_nonzero < need:
        report.update(
            verdict=UNDETERMINED,
            reason=(
                f"too few particles: {n_nonzero} with a non-zero score difference in {len(rows)} tomogram(s)"
                f" (of {n_total}); need at least {need}"
            ),
            p=None,
        )
        return report
    z = np.array([r["z"] for r in rows])
    w = np.array([r["weight"] for r in rows])
    big_z = stouffer(z, w)
    p = _two_sided(big_z)
    report["stouffer"] = {
        "z": big_z,
        "p": p,
        "p_plus": float(stats.norm.sf(big_z)),
        "p_minus": float(stats.norm.cdf(big_z)),
    }
    report["p"] = p
    # stratified bootstrap of the particle-weighted mean delta
    rng = np.random.default_rng(seed)
    boot = np.zeros(int(n_bootstrap))
    for d in deltas:
        boot += d.size * _bootstrap_means(d, int(n_bootstrap), rng)
    boot /= n_total
    lo, hi = (float(v) for v in np.quantile(boot, [0.025, 0.975]))
    report["bootstrap"]["mean_delta_interval"] = [lo, hi]
    tz = [(r["trend_z"], r["weight"]) for r in rows if r["trend_z"] is not None]
    trend_z = stouffer([a for a, _ in tz], [b for _, b in tz]) if tz else None
    trend_p = _two_sided(trend_z) if tz and trend_z is not None else None
    report["trend_abs_x"] = {"z": trend_z, "p": trend_p, "n_tomograms": len(tz)}

    direction = int(np.sign(big_z))
    reasons = []
    if direction == 0:
        reasons.append("the tomograms' signed-rank z-scores cancel (Z = 0)")
    if not p <= alpha:
        reasons.append(f"pooled p = {p:.3g} > {alpha:g}")
    if lo <= 0 <= hi:
        reasons.append(f"the stratified 95 % bootstrap interval of the mean delta [{lo:.3g}, {hi:.3g}] contains 0")
    elif direction and (lo > 0) != (direction > 0):
        reasons.append("the pooled mean delta and the signed-rank direction disagree in sign")
    if trend_p is not None and trend_z is not None and trend_p <= alpha and np.sign(trend_z) == -direction:
        reasons.append(f"delta's pooled trend against |x| points the other way (p = {trend_p:.3g})")
    if reasons:
        report.update(verdict=UNDETERMINED, reason="; ".join(reasons))
    else:
        report.update(
            verdict=direction,
            reason=(
                f"pooled over {len(rows)} tomogram(s): {max(n_pos, n_neg)} of {n_nonzero} particles score higher"
                f" with h = {direction:+d}; Stouffer Z = {big_z:.3g}, p = {p:.3g}; mean delta 95 % interval"
                f" [{lo:.3g}, {hi:.3g}]"
            ),
        )
    significant = {r["name"]: int(np.sign(r["z"])) for r in rows if r["p"] is not None and r["p"] <= alpha}
    if report["verdict"] in (1, -1):
        for r in rows:
            r["disagrees"] = significant.get(r["name"], 0) == -report["verdict"]
        report["disagreeing"] = [r["name"] for r in rows if r["disagrees"]]
        if report["disagreeing"]:
            report["warnings"].append(
                f"tomogram(s) {', '.join(report['disagreeing'])} significantly (p <= {alpha:g}) prefer"
                f" h = {-report['verdict']:+d}: check their tilt-angle sign, acquisition and reconstruction"
            )
        if trend_p is not None and trend_z is not None and not (trend_p <= alpha and np.sign(trend_z) == direction):
            report["warnings"].append(
                "delta does not grow significantly with |x| in the preferred direction"
                f" (pooled trend p = {trend_p:.3g}); the gradient signal is weak"
            )
    elif set(significant.values()) == {1, -1}:
        plus = [k for k, v in significant.items() if v == 1]
        minus = [k for k, v in significant.items() if v == -1]
        report["warnings"].append(
            f"the tomograms conflict: {', '.join(plus)} significantly prefer h = +1, {', '.join(minus)} h = -1"
        )
    return report


# --------------------------------------------------------------------------- report


def write_report(path, report: dict[str, Any], scores: HandScores | None = None) -> Path:
    """Write the statistics (and, if given, the per-particle table) as JSON, atomically.

    The per-particle table is under ``"particles"``: lists ``x_angstrom``, ``score_plus``,
    ``score_minus``, ``delta`` (and ``score_zero``, ``y_angstrom``, ``z_angstrom`` when known).
    """
    path = Path(path)
    doc = dict(report)
    if scores is not None:
        table = {
            "x_angstrom": scores.x_angstrom,
            "score_plus": scores.score_plus,
            "score_minus": scores.score_minus,
            "delta": scores.delta,
        }
        for name in ("score_zero", "y_angstrom", "z_angstrom"):
            if getattr(scores, name) is not None:
                table[name] = getattr(scores, name)
        doc["particles"] = table
    text = json.dumps(jsonable(doc), indent=2)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text + "\n")
    return path


def read_report(path) -> tuple[dict[str, Any], HandScores | None]:
    """Read a report written by :func:`write_report`: ``(report, scores or None)``."""
    doc = json.loads(Path(path).read_text())
    table = doc.pop("particles", None)
    scores = None
    if table is not None:
        scores = HandScores(
            **{
                k: table.get(k)
                for k in ("x_angstrom", "score_plus", "score_minus", "score_zero", "y_angstrom", "z_angstrom")
            }
        )
    return doc, scores


def verdict_settings(verdict, hand_mode: str = "full") -> dict[str, str] | None:
    """The verdict as the value to set in RELION 5, Warp, pytom-match-pick and IMOD.

    ``verdict`` is the winning ``h`` in the hand mode the scores were computed with; in
    ``"pytom"`` mode that is pytom's own value ``s``, whose x gradient is tomomatch's ``-s``
    (:func:`tomomatch.conventions.hand_from_pytom`). None for an undetermined verdict.
    """
    from .conventions import hand_from_pytom, hand_report

    if not isinstance(verdict, (int, np.integer)) or int(verdict) == 0:
        return None
    h = hand_from_pytom(int(verdict)) if hand_mode == "pytom" else int(verdict)
    out = {"tomomatch": f"--defocus-handedness {h:+d}", **hand_report(h)}
    if hand_mode == "pytom":
        out["note"] = (
            f"scores used pytom's formula; pytom {int(verdict):+d} has the x gradient of tomomatch/RELION {h:+d}"
        )
    return out
