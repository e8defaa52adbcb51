"""Estimated ROC of a match job: how many particles, and what a cut-off costs and gains.

``tomomatch roc -j JOB`` (:func:`run_roc`; pytom-match-pick users know ``pytom_estimate_roc.py``)
fits the peak scores of a job with a two-component model and reports, without any ground truth,
the estimated number of particles and, at a range of score cut-offs (the default cut-off
``tomomatch extract`` would choose among them), the expected false positives, true positives,
recall and precision, plus a figure (estimated ROC and precision-recall curves, the score
histogram with the two fitted components).

Model (:func:`fit_peak_mixture`)
--------------------------------
The data are the scores of the peaks extract picks before any cut-off (local maxima of the score
map, greedy with the spherical exclusion: ``details["peak_scores"]`` of
:func:`tomomatch.extract.extract_candidates`). The ``m`` strongest peaks (``m`` as extract's tail
window: 20 % of the peaks, at least 100, at most 1000, at most half; enlarged, see below) are
taken as exceedances ``y = s - u`` of the next score ``u`` and fitted by maximum likelihood with

    f(y) = (1 - w) GPD(y; xi, beta) + w N(y; mu, sd) / Phi(mu / sd)

* **background**: the generalized Pareto tail extract's ``tail`` cut-off fits (its functions
  :func:`tomomatch.extract._gpd_logpdf`, ``_gpd_logsf``, ``_fit_gpd``, ``_gpd_cutoff`` and its
  shape bounds ``xi`` in ``[-0.2, 1.5]``);
* **particles**: a Gaussian cluster (truncated to the window), fraction ``w`` of the window. As
  in extract, the cluster holds at least 3 peaks and its sd is at least 0.3 x the mean
  exceedance (a spike on two or three top peaks is the classic degenerate mixture); its mean
  lies within its own strongest ``w m`` peaks (``mu >=`` the ``(1 - w)`` quantile of the window:
  the particles are the strong end, and a small bump in the body of the background cannot pose
  as them), ``w <= 0.75``.

The fit starts from the ``k`` strongest peaks as the cluster for ``k = 3, 7, 15, 31, ...``
(Nelder-Mead on all five parameters, 400 iterations each) and polishes the best two. When the
fitted cluster has more than 5 % of its mass below ``u`` or takes more than 35 % of the window,
the window is doubled (up to half of the peaks) and the fit repeated, so the particle count is
measured rather than extrapolated.

Estimates: particles ``N_p = w m / Phi(mu / sd)`` (the Gaussian's part below ``u`` extrapolated);
at a cut-off ``c >= u``, expected false positives ``FP(c) = m (1 - w) S_GPD(c - u)`` and true
positives ``TP(c) = N_p (1 - Phi((c - u - mu) / sd))``; recall ``TP / N_p``, precision
``TP / (TP + FP)``. Below ``u`` (outside the fitted window) the background is the observed number
of peaks above ``c`` minus ``TP(c)``. The ROC's false-positive rate is ``FP / (n - N_p)``
(``n`` peaks). The count's membership uncertainty ``sqrt(sum r (1 - r))`` (``r``: each window
peak's posterior probability of being a particle) says how ambiguous the split of these peaks is
under the fitted model (0 when the components separate); it does not include the model's bias
(below). The particle component is *supported* when the mixture raises twice the log-likelihood over the
background GPD alone by more than 6 (extract's criterion); otherwise the report warns that the
peaks are consistent with background alone.

Assumptions and biases
----------------------
* The strong end of the background's peak distribution is a GPD tail, and the particles' peak
  scores are roughly Gaussian (one kind of particle, similar contrast and orientation coverage).
* "Particles" are whatever forms a cluster above the background: decoys (other complexes) and
  contaminants that score like the template are counted, weak particles that make no peak of
  their own (or fall inside a stronger peak's exclusion sphere) are not, and recall is relative to
  the estimated count, not to every particle in the sample.
* Where particles and background overlap, the split is weakly identified and biased in the
  direction of the background tail's shape: with a light (bounded, ``xi < 0``) background tail the
  top background peaks beyond the GPD's end point are assigned to the particles (count too high,
  expected false positives at high cut-offs too low); when the particles blend into the top of the
  background, the GPD takes them as a heavier tail (count too low, false positives too high), down
  to an unsupported particle component. See docs/extraction.md for measured numbers.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, special

from .errors import InputError
from .jsonable import jsonable
from .extract import (
    _MIX_MIN_PARTICLES,
    _MIX_MIN_SD,
    _NM,
    _XI_BOUNDS,
    _check_false_alarms,
    _fit_gpd,
    _gpd_cutoff,
    _gpd_logpdf,
    _gpd_logsf,
    extract_candidates,
    tail_cutoff,
)
from .jobfile import as_job
from .mrcio import atomic_path

__all__ = [
    "DEFAULT_FALSE_POSITIVES",
    "MIN_PEAKS",
    "PeakMixture",
    "estimate_roc",
    "fit_peak_mixture",
    "plot_roc",
    "run_roc",
    "write_roc_report",
]

#: the table's cut-offs where the background model expects this many false positives
DEFAULT_FALSE_POSITIVES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
#: fewest peaks the fit accepts (extract's tail fit needs as many)
MIN_PEAKS = 80
#: largest fraction of the window the particle component may take
_MAX_PARTICLE_FRACTION = 0.75
#: the window is doubled while the particles take more than this fraction of it ...
_ENLARGE_FRACTION = 0.35
#: ... or more than this fraction of the particle component lies below the window
_ENLARGE_BELOW = 0.05
#: 2 dlogL of the mixture over the GPD alone above which the particle component is supported
SUPPORT_LIKELIHOOD_RATIO = 6.0
#: a fixed cut-off above any score: extract lists the peaks and picks nothing
_NO_PICKS = 1e30
_LOG_2PI = math.log(2.0 * math.pi)
#: Nelder-Mead iterations from each start before the best two are polished
_ROUGH_ITERATIONS = 400


# --------------------------------------------------------------------------- the mixture model


@dataclass
class PeakMixture:
    """A fitted background-plus-particles model of a peak list (scores in the map's units).

    ``threshold`` (``u``) and ``n_window`` (``m``): the fitted window (the ``m`` strongest peaks
    above ``u``). ``xi``, ``beta``: the background GPD of the exceedances; ``n_background_window``
    = ``m (1 - w)`` background peaks above ``u``. ``particle_mean``, ``particle_sd``: the
    particles' Gaussian (scores); ``n_particles`` its total count, ``n_particles_window`` the part
    above ``u``; ``n_particles_membership_sd`` = ``sqrt(sum r (1 - r))`` over the window's peaks,
    ``r`` the posterior probability of being a particle: how ambiguous the split of *these* peaks
    is under the fitted model (0 for separated components; it does not include the model's bias).
    """

    scores: np.ndarray = field(repr=False)  # all peak scores, strongest first
    threshold: float
    n_window: int
    xi: float
    beta: float
    n_background_window: float
    particle_mean: float
    particle_sd: float
    n_particles: float
    n_particles_window: float
    likelihood_ratio: float
    n_particles_membership_sd: float = 0.0
    warnings: list[str] = field(default_factory=list)

    # -- derived
    @property
    def n_peaks(self) -> int:
        return int(self.scores.size)

    @property
    def n_background(self) -> float:
        """Background peaks in the whole list: ``n - N_p`` (at least 1)."""
        return max(self.n_peaks - self.n_particles, 1.0)

    @property
    def supported(self) -> bool:
        return bool(self.likelihood_ratio > SUPPORT_LIKELIHOOD_RATIO)

    @property
    def fraction_below_window(self) -> float:
        """Fraction of the particle Gaussian below ``u`` (extrapolated, not observed)."""
        return float(special.ndtr((self.threshold - self.particle_mean) / self.particle_sd))

    def observed_above(self, cutoffs) -> np.ndarray:
        """Number of peaks scoring strictly above each cut-off."""
        asc = self.scores[::-1]
        return (asc.size - np.searchsorted(asc, np.asarray(cutoffs, float), side="right")).astype(float)

    def true_positives(self, cutoffs) -> np.ndarray:
        """Expected particles above each cut-off: ``N_p (1 - Phi((c - mean) / sd))``."""
        c = np.asarray(cutoffs, float)
        return self.n_particles * special.ndtr((self.particle_mean - c) / self.particle_sd)

    def false_positives(self, cutoffs) -> np.ndarray:
        """Expected background peaks above each cut-off.

        ``m (1 - w) S_GPD(c - u)`` for ``c >= u``; below ``u`` the observed peaks above ``c``
        minus the expected particles there (made non-increasing in ``c``).
        """
        c = np.atleast_1d(np.asarray(cutoffs, float))
        u = self.threshold
        out = np.empty(c.shape)
        hi = c >= u
        out[hi] = self.n_background_window * np.exp(_gpd_logsf(c[hi] - u, self.xi, self.beta))
        if np.any(~hi):
            lo = c[~hi]
            # the empirical background between each c and u, monotone: the running maximum from u down
            grid = np.unique(np.concatenate([lo, self.scores[self.scores < u]]))[::-1]
            emp = np.maximum(self.observed_above(grid) - self.true_positives(grid), self.n_background_window)
            emp = np.maximum.accumulate(emp)
            out[~hi] = np.interp(lo, grid[::-1], emp[::-1])
        return out.reshape(np.shape(cutoffs))

    def recall(self, cutoffs) -> np.ndarray:
        return self.true_positives(cutoffs) / max(self.n_particles, 1e-12)

    def precision(self, cutoffs) -> np.ndarray:
        tp = self.true_positives(cutoffs)
        fp = self.false_positives(cutoffs)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(tp + fp > 0, tp / (tp + fp), np.nan)

    def cutoff_for_false_positives(self, n_false_positives: float) -> float | None:
        """Score above which the background model expects ``n_false_positives`` peaks (``None``
        when that is more than the window's background, i.e. below ``u``)."""
        if not n_false_positives < self.n_background_window:
            return None
        return _gpd_cutoff(self.threshold, self.xi, self.beta, self.n_background_window, float(n_false_positives))

    def background_density(self, x) -> np.ndarray:
        """Expected background peaks per unit score at ``x >= u`` (0 below ``u``: not modelled)."""
        x = np.asarray(x, float)
        y = x - self.threshold
        with np.errstate(invalid="ignore"):
            d = self.n_background_window * np.exp(_gpd_logpdf(np.maximum(y, 0.0), self.xi, self.beta))
        return np.where(y >= 0, d, 0.0)

    def particle_density(self, x) -> np.ndarray:
        """Expected particle peaks per unit score."""
        z = (np.asarray(x, float) - self.particle_mean) / self.particle_sd
        return self.n_particles * np.exp(-0.5 * z * z) / (self.particle_sd * math.sqrt(2.0 * math.pi))

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "n_window": self.n_window,
            "n_peaks": self.n_peaks,
            "background": {
                "distribution": "generalized Pareto above threshold",
                "xi": self.xi,
                "beta": self.beta,
                "n_above_threshold": self.n_background_window,
                "n_total": self.n_background,
            },
            "particles": {
                "distribution": "Gaussian",
                "mean": self.particle_mean,
                "sd": self.particle_sd,
                "n_total": self.n_particles,
                "n_above_threshold": self.n_particles_window,
                "n_total_membership_sd": self.n_particles_membership_sd,
                "fraction_below_threshold": self.fraction_below_window,
            },
            "likelihood_ratio": self.likelihood_ratio,
            "particle_component_supported": self.supported,
        }


def _mixture_nll(y: np.ndarray, y_asc: np.ndarray, lw_min: float, lw_max: float):
    """Negative log-likelihood of ``[xi, log beta, log w, mu, log sd]`` on exceedances ``y``
    (unit scale), with the constraints of the module docstring (``1e300`` outside them)."""
    m = y.size
    lsd_min = math.log(_MIX_MIN_SD)

    def nll(p) -> float:
        xi, lb, lw, mu, lsd = (float(t) for t in p)
        if (
            not (_XI_BOUNDS[0] <= xi <= _XI_BOUNDS[1])
            or not (-20.0 < lb < 20.0)
            or not (lw_min <= lw <= lw_max)
            or not (lsd_min <= lsd < 3.0)
        ):
            return 1e300
        w = math.exp(lw)
        if mu < y_asc[min(m - 1, math.floor((1.0 - w) * m))]:
            return 1e300
        sd = math.exp(lsd)
        a = math.log1p(-w) + _gpd_logpdf(y, xi, math.exp(lb))
        b = lw - 0.5 * ((y - mu) / sd) ** 2 - lsd - 0.5 * _LOG_2PI - float(special.log_ndtr(mu / sd))
        ll = float(np.logaddexp(a, b).sum())
        return -ll if math.isfinite(ll) else 1e300

    return nll


def _fit_window(y: np.ndarray, start: list[float] | None) -> tuple[np.ndarray, float, float]:
    """ML mixture on one window (``y`` unit-scale exceedances, strongest first). Returns
    ``(params, nll, nll of the GPD alone)``."""
    m = y.size
    y_asc = y[::-1]
    lw_min, lw_max = math.log(_MIX_MIN_PARTICLES / m), math.log(_MAX_PARTICLE_FRACTION)
    nll = _mixture_nll(y, y_asc, lw_min, lw_max)
    xi1, lb1, nll1 = _fit_gpd(y)
    starts = []
    k = int(_MIX_MIN_PARTICLES)
    while k <= _MAX_PARTICLE_FRACTION * m:  # the k strongest peaks as the particle cluster
        top = y[:k]
        starts.append(
            [xi1, lb1, math.log(k / m), float(top.mean()), math.log(max(float(top.std()), 1.5 * _MIX_MIN_SD))]
        )
        k = 2 * k + 1
    if start is not None:
        starts.append(list(start))
    # a short search from every start, then the two best polished to extract's tolerances
    rough = []
    for p0 in starts:
        p0[2] = min(max(p0[2], lw_min), lw_max)
        p0[3] = max(p0[3], float(y_asc[min(m - 1, math.floor((1.0 - math.exp(p0[2])) * m))]))
        if nll(p0) >= 1e299:
            continue
        res = optimize.minimize(nll, p0, method="Nelder-Mead", options=dict(_NM, maxiter=_ROUGH_ITERATIONS))
        if res.fun < 1e299:
            rough.append(res)
    if not rough:
        raise ValueError("the mixture fit found no admissible start")
    rough.sort(key=lambda r: r.fun)
    best = min((optimize.minimize(nll, r.x, method="Nelder-Mead", options=_NM) for r in rough[:2]), key=lambda r: r.fun)
    return np.asarray(best.x, float), float(best.fun), float(nll1)


def _responsibilities(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Posterior probability that each window peak belongs to the particle component."""
    xi, lb, lw, mu, lsd = (float(t) for t in p)
    sd = math.exp(lsd)
    a = math.log1p(-math.exp(lw)) + _gpd_logpdf(y, xi, math.exp(lb))
    b = lw - 0.5 * ((y - mu) / sd) ** 2 - lsd - 0.5 * _LOG_2PI - float(special.log_ndtr(mu / sd))
    return np.exp(b - np.logaddexp(a, b))


def _window_size(n: int, tail_fraction: float, min_tail: int, max_tail: int) -> int:
    """Extract's tail window: ``clip(tail_fraction n, min_tail, max_tail)``, at most ``n // 2``."""
    return int(min(max(tail_fraction * n, min_tail), max_tail, n // 2))


def fit_peak_mixture(
    peak_scores, *, tail_fraction: float = 0.2, min_tail: int = 100, max_tail: int = 1000
) -> PeakMixture:
    """Fit the background GPD tail plus a Gaussian particle cluster to a list of peak scores.

    Parameters
    ----------
    peak_scores
        Scores of all peaks of a map (extract's greedy peak list without a cut-off).
    tail_fraction, min_tail, max_tail
        The starting window, as extract's tail fit: ``clip(tail_fraction n, min_tail,
        max_tail)`` peaks, at most half; doubled (up to half of the peaks) while the particle
        component takes more than 35 % of it or has more than 5 % of its mass below it.
    Returns
    -------
    PeakMixture

    Raises
    ------
    InputError
        Fewer than :data:`MIN_PEAKS` finite peak scores, or too few distinct scores in the window.
    """
    vals = np.asarray(peak_scores, float).ravel()
    s = np.sort(vals[np.isfinite(vals)])[::-1]
    n = s.size
    if n < MIN_PEAKS:
        raise InputError(
            f"only {n} peaks; the background and particle fit needs at least {MIN_PEAKS}"
            " (a larger map or a smaller exclusion radius)",
            field="peaks",
        )
    m = _window_size(n, tail_fraction, min_tail, max_tail)
    start = None
    notes: list[str] = []
    while True:
        u = float(s[m])
        y = s[:m] - u
        y = y[y > 0]
        if y.size < 40 or not np.ptp(y) > 0:
            raise InputError(
                f"only {y.size} distinct peak scores above the window threshold {u:.4g}; expected at least 40",
                field="peaks",
            )
        scale = float(y.mean())
        y = y / scale
        p, nll2, nll1 = _fit_window(y, start)
        xi, lb, lw, mu, lsd = (float(t) for t in p)
        w, sd = math.exp(lw), math.exp(lsd)
        inside = float(special.ndtr(mu / sd))
        if (w > _ENLARGE_FRACTION or 1.0 - inside > _ENLARGE_BELOW) and m < n // 2:
            m_new = min(2 * m, n // 2)
            scale_new = float((s[:m_new] - s[m_new]).mean())
            # the current solution as one start of the larger window (in its units)
            u_new = float(s[m_new])
            start = [
                xi,
                lb + math.log(scale / scale_new),
                math.log(max(w * m / m_new, 1e-9)),
                (u + mu * scale - u_new) / scale_new,
                lsd + math.log(scale / scale_new),
            ]
            m = m_new
            continue
        break
    if w > _ENLARGE_FRACTION:
        notes.append(
            f"the particle component takes {100 * w:.0f} % of the fitted window (half of all peaks);"
            " the background is poorly determined there"
        )
    if 1.0 - inside > _ENLARGE_BELOW:
        notes.append(
            f"{100 * (1 - inside):.0f} % of the particle component lies below the lowest fitted score"
            f" {u:.4g}: that part of the count is extrapolated from the Gaussian"
        )
    n_win = w * y.size
    n_p = n_win / inside
    r = _responsibilities(y, p)
    return PeakMixture(
        scores=s,
        threshold=u,
        n_window=int(y.size),
        xi=xi,
        beta=math.exp(lb) * scale,
        n_background_window=(1.0 - w) * y.size,
        particle_mean=u + mu * scale,
        particle_sd=sd * scale,
        n_particles=float(n_p),
        n_particles_window=float(n_win),
        likelihood_ratio=float(2.0 * (nll1 - nll2)),
        n_particles_membership_sd=float(math.sqrt(float(np.sum(r * (1.0 - r))))),
        warnings=notes,
    )


# --------------------------------------------------------------------------- the report


def _row(mix: PeakMixture, label: str, c: float, mean: float, std: float) -> dict[str, Any]:
    fp = float(mix.false_positives([c])[0])
    tp = float(mix.true_positives([c])[0])
    return {
        "label": label,
        "cutoff": float(c),
        "cutoff_sigma": float((c - mean) / std),
        "expected_false_positives": fp,
        "expected_true_positives": tp,
        "recall": tp / max(mix.n_particles, 1e-12),
        "precision": tp / (tp + fp) if tp + fp > 0 else None,
        "n_peaks_above": int(mix.observed_above([c])[0]),
        "in_fitted_window": bool(c >= mix.threshold),
    }


def _curves(mix: PeakMixture, n_points: int = 200) -> dict[str, list[float]]:
    """Cut-off grid from the lowest peak to above the strongest, with FP, TP, recall, precision, FPR."""
    lo = float(mix.scores[-1])
    hi = max(float(mix.scores[0]), mix.particle_mean + 4.0 * mix.particle_sd)
    c = np.unique(np.concatenate([np.linspace(lo, hi, n_points), np.linspace(mix.threshold, hi, n_points)]))
    fp = mix.false_positives(c)
    tp = mix.true_positives(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
    return {
        "cutoff": c.tolist(),
        "false_positives": fp.tolist(),
        "true_positives": tp.tolist(),
        "recall": (tp / max(mix.n_particles, 1e-12)).tolist(),
        "precision": prec.tolist(),
        "false_positive_rate": np.minimum(fp / mix.n_background, 1.0).tolist(),
    }


def _auc(curves: dict[str, list[float]]) -> float:
    """Area under the estimated ROC (recall against FPR), closed at (0, 0) and (1, 1)."""
    fpr = np.concatenate([[0.0], np.asarray(curves["false_positive_rate"])[::-1], [1.0]])
    tpr = np.concatenate([[0.0], np.asarray(curves["recall"])[::-1], [1.0]])
    order = np.argsort(fpr, kind="stable")
    return float(np.trapezoid(tpr[order], fpr[order]))


def estimate_roc(
    job,
    *,
    particle_diameter_angstrom: float | None = None,
    radius_voxels: float | None = None,
    false_alarms: float = 1.0,
    mask=None,
    tophat: bool = False,
    tophat_radius_voxels: float = 1.0,
    border_voxels: int = 0,
    cutoffs=(),
    false_positive_levels=DEFAULT_FALSE_POSITIVES,
) -> tuple[dict[str, Any], PeakMixture]:
    """Estimate the number of particles and the ROC of a match job from its peak scores.

    Parameters
    ----------
    job
        Job file path or dict (:func:`tomomatch.jobfile.read_job`).
    particle_diameter_angstrom, radius_voxels, mask, tophat, tophat_radius_voxels, border_voxels
        The peak list's options, as :func:`tomomatch.extract.extract_candidates`: use the ones
        you extract with.
    false_alarms
        ``N_fp`` of the default cut-off (extract's ``tail`` method, falling back to ``gaussian``
        as extract does).
    cutoffs
        Extra score cut-offs for the table.
    false_positive_levels
        The table also holds the cut-offs where the background model expects this many false
        positives (those below the fitted window are left out).
    Returns
    -------
    report, mixture
        ``report`` (JSON-ready): ``n_particles``, ``n_particles_membership_sd``, ``model`` (the fit),
        ``default_cutoff`` (a table row), ``table`` (rows: ``label``, ``cutoff``, ``cutoff_sigma``,
        ``expected_false_positives``, ``expected_true_positives``, ``recall``, ``precision``,
        ``n_peaks_above``, ``in_fitted_window``), ``auc``, ``curves`` and ``warnings``.
    """
    nfp = _check_false_alarms(false_alarms)
    job = as_job(job)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the peak list as extract sees it, without picking anything (a cut-off above every score)
        _, details = extract_candidates(
            job,
            max_particles=1,
            particle_diameter_angstrom=particle_diameter_angstrom,
            radius_voxels=radius_voxels,
            cutoff=_NO_PICKS,
            cutoff_method="fixed",
            mask=mask,
            tophat=tophat,
            tophat_radius_voxels=tophat_radius_voxels,
            border_voxels=border_voxels,
            subvoxel=False,
            return_details=True,
        )
    notes = [str(w.message) for w in caught]
    peaks = np.asarray(details["peak_scores"], float)
    jp = job.get("_job_path")
    if peaks.size == 0:
        raise InputError("the score map has no peaks to fit (check the mask and the angle map)", jp, "peaks")
    try:
        mix = fit_peak_mixture(peaks)
    except InputError as exc:
        raise InputError(exc.detail, jp, exc.field) from None

    # the cut-off extract would choose by default (its tail branch; gaussian when the tail fit is impossible)
    gauss = details.get("gaussian_cutoff")
    mean, std = float(details["search_mean"]), float(details["search_std"])
    try:
        c_default, tail_info = tail_cutoff(peaks, nfp, reference_cutoff=gauss)
        method = "tail"
    except ValueError as exc:
        if gauss is None:
            raise InputError(
                f"tail fit impossible ({exc}) and no search statistics for the gaussian cut-off",
                jp,
                "search_statistics",
            ) from None
        notes.append(f"tail fit impossible ({exc}); extract would use the gaussian cut-off")
        c_default, tail_info, method = float(gauss), None, "gaussian"

    rows = [_row(mix, f"default ({method}, {nfp:g} false alarm{'s' if nfp != 1 else ''})", c_default, mean, std)]
    if gauss is not None and method != "gaussian":
        rows.append(_row(mix, f"gaussian ({nfp:g} false alarm{'s' if nfp != 1 else ''})", float(gauss), mean, std))
    for level in false_positive_levels:
        c = mix.cutoff_for_false_positives(float(level))
        if c is not None:
            rows.append(_row(mix, f"expected FP {float(level):g}", c, mean, std))
    for c in cutoffs:
        c = float(c)
        if not math.isfinite(c):
            raise InputError(f"cut-off {c} is not a finite score", field="cutoffs")
        rows.append(_row(mix, "given", c, mean, std))
    table = [rows[0]] + sorted(rows[1:], key=lambda r: -r["cutoff"])
    curves = _curves(mix)
    if not mix.supported:
        notes.append(
            f"the data do not support a particle component (2 dlogL = {mix.likelihood_ratio:.1f} <= "
            f"{SUPPORT_LIKELIHOOD_RATIO:g}): the peaks are consistent with background alone, and the count "
            "and curves are those of the best mixture, not evidence of particles"
        )
    notes += mix.warnings
    report = {
        "job": jp,
        "name": job.get("name"),
        "n_peaks": mix.n_peaks,
        "radius_voxels": float(details["radius_voxels"]),
        "search_mean": mean,
        "search_std": std,
        "n_particles": mix.n_particles,
        "n_particles_membership_sd": mix.n_particles_membership_sd,
        "particle_component_supported": mix.supported,
        "model": mix.to_json(),
        "default_cutoff": dict(
            table[0], method=method, false_alarms=nfp, tail_model=None if tail_info is None else tail_info.get("model")
        ),
        "gaussian_cutoff": None if gauss is None else float(gauss),
        "table": table,
        "auc": _auc(curves),
        "curves": curves,
        "warnings": notes,
    }
    return report, mix


# --------------------------------------------------------------------------- output


def write_roc_report(path, report: dict[str, Any]) -> Path:
    """Write the report as JSON, atomically (non-finite numbers as ``null``)."""
    path = Path(path)
    text = json.dumps(jsonable(report), indent=1)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text + "\n")
    return path


def plot_roc(report: dict[str, Any], mix: PeakMixture, path, *, title: str | None = None) -> Path:
    """Three panels, written atomically as PNG: the peak-score histogram with the fitted
    background and particle components (expected counts per bin) and the cut-offs; the estimated
    ROC (recall against false-positive rate, log axis); the estimated precision-recall curve. The
    default cut-off is marked in red on all three."""
    from .plots import _save, plt

    cur = {k: np.asarray(v, float) for k, v in report["curves"].items()}
    d = report["default_cutoff"]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.4))
    s = mix.scores
    hi = max(float(s[0]), mix.particle_mean + 3 * mix.particle_sd, d["cutoff"]) * 1.02
    edges = np.linspace(float(s[-1]), hi, 90)
    counts, _ = np.histogram(s, bins=edges)
    a1.stairs(counts, edges, color="0.35", label=f"peaks ({mix.n_peaks})")
    x = np.linspace(edges[0], edges[-1], 600)
    width = edges[1] - edges[0]
    bg = mix.background_density(x) * width
    pa = mix.particle_density(x) * width
    above = x >= mix.threshold
    a1.plot(x[above], bg[above], "b-", lw=1.2, label=f"background GPD (xi {mix.xi:.2f})")
    a1.plot(
        x, pa, "g-", lw=1.2, label=f"particles N({mix.particle_mean:.3g}, {mix.particle_sd:.2g}), {mix.n_particles:.0f}"
    )
    a1.plot(x[above], (bg + pa)[above], "k:", lw=1, label="sum")
    a1.axvline(mix.threshold, color="0.6", ls=":", lw=1, label=f"fitted above {mix.threshold:.3g}")
    a1.axvline(d["cutoff"], color="r", lw=1.2, label=f"default cut-off {d['cutoff']:.3g}")
    if report.get("gaussian_cutoff") is not None and d.get("method") != "gaussian":
        a1.axvline(
            report["gaussian_cutoff"],
            color="b",
            ls="--",
            lw=1,
            label=f"gaussian cut-off {report['gaussian_cutoff']:.3g}",
        )
    a1.set_yscale("log")
    a1.set_ylim(0.3, max(float(counts.max()) * 2, 2.0))
    a1.set_xlabel("peak score (LCC)")
    a1.set_ylabel("peaks per bin")
    a1.legend(fontsize=7)

    fpr = cur["false_positive_rate"]
    ok = fpr > 0
    a2.plot(fpr[ok], cur["recall"][ok], "k-", lw=1.3)
    fpr_d = min(d["expected_false_positives"] / mix.n_background, 1.0)
    a2.plot(
        [max(fpr_d, fpr[ok].min() if ok.any() else 1e-6)],
        [d["recall"]],
        "ro",
        label=f"default: FP {d['expected_false_positives']:.2g}, recall {d['recall']:.2f}",
    )
    a2.set_xscale("log")
    a2.set_xlim(max(1e-5, 0.3 / mix.n_background), 1.0)
    a2.set_ylim(0, 1.02)
    a2.set_xlabel(f"false-positive rate (of {mix.n_background:.0f} background peaks)")
    a2.set_ylabel("recall (of the estimated particles)")
    a2.set_title(f"estimated ROC, AUC {report['auc']:.3f}", fontsize=9)
    a2.legend(fontsize=7, loc="lower right")

    rec, prec = cur["recall"], cur["precision"]
    good = np.isfinite(prec)
    a3.plot(rec[good], prec[good], "k-", lw=1.3)
    if d["precision"] is not None:
        a3.plot(
            [d["recall"]],
            [d["precision"]],
            "ro",
            label=f"default: precision {d['precision']:.2f}, recall {d['recall']:.2f}",
        )
    a3.set_xlim(0, 1.02)
    a3.set_ylim(0, 1.02)
    a3.set_xlabel("recall")
    a3.set_ylabel("precision")
    a3.set_title(
        f"estimated precision-recall; {report['n_particles']:.1f} +- "
        f"{report['n_particles_membership_sd']:.1f} particles",
        fontsize=9,
    )
    a3.legend(fontsize=7, loc="lower left")
    bottom = 0.0
    if not report.get("particle_component_supported", True):
        fig.text(
            0.5,
            0.01,
            "particle component not supported by the data (consistent with background alone)",
            ha="center",
            color="r",
            fontsize=9,
        )
        bottom = 0.05
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return _save(fig, path)


def run_roc(job, out_prefix=None, *, figure: bool = True, **options) -> dict[str, Any]:
    """``tomomatch roc``: :func:`estimate_roc`, then write ``<out_prefix>.json`` and (with
    ``figure``) ``<out_prefix>.png`` atomically. ``out_prefix`` defaults to
    ``<job dir>/<name>_roc``. Returns the report with ``"files"``."""
    jobd = as_job(job)
    report, mix = estimate_roc(jobd, **options)
    if out_prefix is None:
        jp = jobd.get("_job_path")
        if jp is None:
            raise InputError("give an output prefix for a job that was not read from a file", field="output")
        name = jobd.get("name") or Path(jp).stem.removesuffix("_job")
        out_prefix = Path(jp).parent / f"{name}_roc"
    out_prefix = Path(out_prefix)
    files = {"report": str(out_prefix.with_name(out_prefix.name + ".json"))}
    if figure:
        files["figure"] = str(
            plot_roc(report, mix, out_prefix.with_name(out_prefix.name + ".png"), title=report.get("name"))
        )
    report["files"] = files
    write_roc_report(files["report"], report)
    return report
