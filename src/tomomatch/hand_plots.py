"""The handedness figure: the seed benchmark's panels, with a real confidence band, and delta.

Panels (left to right):

1. score against centred x for ``h = +1`` and ``h = -1`` (scatter), as on the seed page;
2. the least-squares quadratic fit of each, with the **95 % confidence band of the fitted mean**
   (delta method: ``t_{0.975, n-3} * sqrt(J Cov J^T)``, ``J = (x^2, x, 1)``, ``Cov`` the
   ordinary-least-squares covariance ``s^2 (X^T X)^-1``), not the seed's ``+-1 sigma`` of
   each coefficient;
3. ``delta = s(+1) - s(-1)`` against x, with the fitted trend ``delta = a + b |x|`` and zero.

Uses a bare matplotlib ``Figure`` (Agg canvas; no display, no pyplot state); the PNG is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from .hand_stats import HandScores
from .mrcio import atomic_path

__all__ = ["quadratic_fit_band", "plot_hand"]

HAND_COLOURS = {1: "tab:blue", -1: "tab:orange", 0: "tab:gray"}


def quadratic_fit_band(x, y, x_eval, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares quadratic ``y = a x^2 + b x + c`` and the confidence band of its mean.

    Parameters
    ----------
    x, y
        Data (at least 4 points, at least 3 distinct x).
    x_eval
        Where to evaluate the fit.
    confidence
        Two-sided confidence of the band (0.95: Student t quantile 0.975, ``n - 3`` dof).

    Returns
    -------
    fit, lower, upper
        The fitted mean at ``x_eval`` and the band around it.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    xe = np.asarray(x_eval, dtype=float)
    # scale x to keep X^T X well conditioned (x in Angstrom reaches 1e4)
    scale = max(float(np.max(np.abs(x))), 1e-12)
    design = np.stack([(x / scale) ** 2, x / scale, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = x.size - 3
    resid = y - design @ coef
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(design.T @ design)
    jac = np.stack([(xe / scale) ** 2, xe / scale, np.ones_like(xe)], axis=1)
    fit = jac @ coef
    se = np.sqrt(np.einsum("ij,jk,ik->i", jac, cov, jac))
    t = stats.t.ppf(0.5 + confidence / 2, dof)
    return fit, fit - t * se, fit + t * se


def plot_hand(
    path,
    scores: HandScores,
    report: dict[str, Any] | None = None,
    *,
    title: str | None = None,
    x_unit: str = "nm",
    dpi: int = 120,
) -> Path:
    """Draw the handedness figure for per-particle scores and save it as PNG (atomically).

    Parameters
    ----------
    path
        Output file (``.png``).
    scores
        Per-particle scores and centred x (Angstrom).
    report
        The statistics from :func:`tomomatch.hand.hand_statistics`, shown in the title and
        used for the trend line; computed from ``scores`` if not given.
    title
        Figure title (default: the verdict line).
    x_unit
        ``"nm"`` (default) or ``"angstrom"`` for the x axis.
    """
    from matplotlib.figure import Figure

    from .hand_stats import hand_statistics

    if report is None:
        report = hand_statistics(scores)
    factor, unit = (0.1, "nm") if x_unit == "nm" else (1.0, "Angstrom")
    x = scores.x_angstrom
    xs = x * factor
    delta = scores.delta
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax0, ax1, ax2 = fig.subplots(1, 3)
    series = [(1, scores.score_plus), (-1, scores.score_minus)]
    for h, s in series:
        ax0.scatter(xs, s, s=10, alpha=0.7, color=HAND_COLOURS[h], label=f"h = {h:+d}")
    ax0.set_xlabel(f"centred x ({unit})")
    ax0.set_ylabel("score")
    ax0.set_title("per-particle score")
    ax0.legend(loc="best")

    grid = np.linspace(x.min(), x.max(), 200) if x.size else np.zeros(0)
    can_fit = x.size >= 4 and np.unique(x).size >= 3
    for h, s in series:
        if can_fit:
            fit, lo, hi = quadratic_fit_band(x, s, grid)
            ax1.plot(grid * factor, fit, color=HAND_COLOURS[h], label=f"h = {h:+d} quadratic fit")
            ax1.fill_between(
                grid * factor,
                lo,
                hi,
                color=HAND_COLOURS[h],
                alpha=0.25,
                linewidth=0,
                label=f"h = {h:+d} 95 % confidence band",
            )
    ax1.set_xlabel(f"centred x ({unit})")
    ax1.set_ylabel("score (fitted mean)")
    ax1.set_title("quadratic fit, 95 % confidence band of the mean")
    if can_fit:
        ax1.legend(loc="best", fontsize="small")

    ax2.axhline(0.0, color="k", linewidth=0.8)
    tol = float(report.get("tie_tolerance") or 0.0)  # float-rounding ties are drawn grey
    colours = np.where(delta > tol, HAND_COLOURS[1], np.where(delta < -tol, HAND_COLOURS[-1], "gray"))
    ax2.scatter(xs, delta, s=10, c=list(colours), alpha=0.8)
    trend = report.get("trend_abs_x") or {}
    if trend.get("slope_per_angstrom") is not None and x.size:
        ax2.plot(
            grid * factor,
            trend["intercept"] + trend["slope_per_angstrom"] * np.abs(grid),
            "k--",
            label=(
                f"delta = a + b|x|, b = {trend['slope_per_angstrom'] * 1e4:.3g} per um (p = {trend['slope_p']:.2g})"
            ),
        )
        ax2.legend(loc="best", fontsize="small")
    ax2.set_xlabel(f"centred x ({unit})")
    ax2.set_ylabel("delta = s(+1) - s(-1)")
    ax2.set_title("paired difference (blue: +1 higher, grey: tie)")

    if title is None:
        v = report.get("verdict")
        verdict = f"h = {v:+d}" if isinstance(v, int) else str(v)
        p = report.get("p")
        title = (
            f"defocus handedness: {verdict}   (n = {report.get('n_particles')}"
            + (f", Wilcoxon p = {p:.2g}" if p is not None else "")
            + ")"
        )
    fig.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path
