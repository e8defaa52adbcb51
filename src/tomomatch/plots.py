"""Extraction plots (matplotlib, Agg backend): score histograms with the cut-offs, pick slabs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402

from .extract import _gpd_logsf  # noqa: E402
from .mrcio import atomic_path  # noqa: E402

__all__ = ["plot_score_histogram", "plot_pick_slab", "null_max_density"]


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def null_max_density(x, mean: float, std: float, n: float) -> np.ndarray:
    """Density of the maximum of ``n`` independent ``N(mean, std)`` scores at ``x``:
    ``n Phi(z)^(n-1) phi(z) / std`` (computed in log space, so ``n`` may be large)."""
    from scipy import stats

    z = (np.asarray(x, float) - mean) / std
    return np.exp(math.log(n) + (n - 1) * stats.norm.logcdf(z) + stats.norm.logpdf(z) - math.log(std))


def plot_score_histogram(details: dict[str, Any], path, *, title: str | None = None) -> Path:
    """Two panels: voxel scores with the Gaussian background, and peak scores with the cut-offs.

    Parameters
    ----------
    details
        The details dict of ``extract_candidates(..., return_details=True)``.
    path
        Output PNG.

    Left: histogram (log counts) of the scores of all searched voxels, which are **maxima over
    the rotations**, with the distribution of such a maximum under the Gaussian null: the
    maximum of ``n_rot`` independent ``N(mean, std)`` scores (density ``n Phi^(n-1) phi``;
    rotations are correlated, so the real null maximum lies a little to the left). The
    per-rotation Gaussian ``N(mean, std)`` itself (one sample per voxel and rotation, the null
    the Gaussian cut-off counts) is drawn dashed and labelled as such: it is not the
    distribution of this histogram. Right: histogram of the peak scores (the greedy peak list
    without cut-off) with the fitted generalized Pareto tail (expected counts per bin) and the
    cut-offs.
    """

    scores = details["scores"][details["eligible"]] if "eligible" in details else details["scores"].ravel()
    peaks = np.asarray(details["peak_scores"], float)
    mean, std = float(details["search_mean"]), float(details["search_std"])
    cutoff, method = float(details["cutoff"]), details.get("cutoff_method", "?")
    gauss = details.get("gaussian_cutoff")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    hi = max(float(np.max(scores)) if scores.size else 1.0, cutoff) * 1.05
    lo = min(float(np.min(scores)) if scores.size else 0.0, mean - 4 * std)
    bins = np.linspace(lo, hi, 120)
    counts, edges = np.histogram(scores, bins=bins)
    a1.stairs(counts, edges, color="0.3", label="searched voxels")
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1] - edges[0]
    g = scores.size * width / (std * math.sqrt(2 * math.pi)) * np.exp(-0.5 * ((centres - mean) / std) ** 2)
    a1.plot(centres, g, "b--", lw=0.8, label=f"per-rotation null N({mean:.3g}, {std:.3g}) (not this histogram)")
    n_rot = details.get("n_rotations")
    if n_rot is not None and n_rot >= 1:
        a1.plot(
            centres,
            scores.size * width * null_max_density(centres, mean, std, n_rot),
            "b-",
            lw=1.2,
            label=f"null max over {n_rot:.0f} rotations",
        )
    a1.set_yscale("log")
    a1.set_ylim(0.5, None)
    a1.set_xlabel("voxel score = max over rotations (LCC)")
    a1.set_ylabel("voxels")
    for ax in (a1, a2):
        ax.axvline(cutoff, color="r", lw=1.2, label=f"cut-off {cutoff:.3g} ({method})")
        if gauss is not None and method != "gaussian":
            ax.axvline(gauss, color="b", ls="--", lw=1, label=f"gaussian cut-off {gauss:.3g}")
    a1.legend(fontsize=7)
    if peaks.size:
        pb = np.linspace(min(peaks.min(), cutoff), max(peaks.max(), cutoff) * 1.02, 80)
        pc, pe = np.histogram(peaks, bins=pb)
        a2.stairs(pc, pe, color="0.3", label=f"peaks ({peaks.size})")
        fit = details.get("tail_fit")
        if fit:
            u, xi, beta, nu = fit["threshold"], fit["xi"], fit["beta"], fit["n_background_above_threshold"]
            x = pe[pe >= u]
            if x.size > 1:
                y = np.maximum(x - u, 0.0)
                surv = np.exp(_gpd_logsf(y, xi, beta)) * nu  # xi < 0 has a finite end point
                a2.plot(0.5 * (x[1:] + x[:-1]), surv[:-1] - surv[1:], "g-", lw=1.2, label=f"GPD tail (xi {xi:.2f})")
        a2.set_yscale("log")
        a2.set_ylim(0.5, None)
    a2.set_xlabel("peak score (LCC)")
    a2.set_ylabel("peaks")
    a2.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_pick_slab(
    volume: np.ndarray,
    particles,
    path,
    *,
    radius_voxels: float,
    slab_voxels: int | None = None,
    title: str | None = None,
) -> Path:
    """PNG of the central z slab of ``volume`` (mean over the slab) with the picks circled.

    Picks whose ``z`` lies within the slab are drawn as circles of ``radius_voxels``.
    """
    vol = np.asarray(volume, float)
    nz = vol.shape[0]
    t = int(slab_voxels) if slab_voxels else max(1, int(round(2 * radius_voxels)))
    z0 = max(0, nz // 2 - t // 2)
    z1 = min(nz, z0 + t)
    img = vol[z0:z1].mean(axis=0)
    m, s = float(img.mean()), float(img.std()) or 1.0
    fig, ax = plt.subplots(figsize=(7, 7 * img.shape[0] / max(img.shape[1], 1) + 0.5))
    ax.imshow(img, cmap="gray", origin="lower", vmin=m - 3 * s, vmax=m + 3 * s)
    n = 0
    for x, y, z in particles[["x", "y", "z"]].to_numpy(float):
        if z0 - 0.5 <= z < z1 - 0.5:
            ax.add_patch(Circle((x, y), radius_voxels, fill=False, color="yellow", lw=1))
            n += 1
    ax.set_title(title or f"z {z0}-{z1 - 1}: {n} picks")
    ax.set_xlabel("x (voxels)")
    ax.set_ylabel("y (voxels)")
    fig.tight_layout()
    return _save(fig, path)
