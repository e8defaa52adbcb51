"""Candidate extraction: turn a match job's score and angle maps into a particle table.

Pipeline (:func:`extract_candidates`)

1. Read the job file (:func:`read_job`), the score map, the angle-index map and the rotation
   list. Voxels with angle index ``< 0`` were not searched and are never picked. A job
   matched with a search region (``match --tomogram-mask``/``--search-x/-y/-z``) is picked
   only inside that region (:func:`tomomatch.region.job_search_region`; the voxels its
   cropped tiles computed around it are left out), unless ``use_tomogram_mask=False``
   (``extract --ignore-tomogram-mask``): then every computed voxel may hold a pick.
2. Optional mask (voxels with mask ``> 0`` may hold picks) and optional top-hat constraint
   (:func:`tophat_mask`: a white top-hat with a small ball removes broad ridges; only voxels
   whose top-hat value stands out from the top-hat background may hold picks).
3. Peak list (:func:`pick_peaks`): the candidates are the local maxima of the score map in
   their 3x3x3 neighbourhood; they are taken greedily in decreasing score, and every
   accepted peak suppresses all voxels *closer* than the exclusion radius ``r`` (a sphere, in
   voxels). So two kept peaks are never closer than ``r``.
4. Cut-off (:func:`gaussian_cutoff`, :func:`tail_cutoff`): a score value given directly
   (``fixed``), or the score above which ``N_fp`` false alarms are expected:

   * ``gaussian`` (Rickgauer et al. 2017, as pytom-match-pick): the correlation over all
     ``N_search`` = voxels x rotations searched is taken as Gaussian with the job's mean and
     standard deviation; ``cutoff = mean + sigma * sqrt(2) * erfcinv(2 N_fp / N_search)``.
     With ``N_search = 6,749,723,520,000`` and ``N_fp = 1`` that is 7.30 sigma.
   * ``tail`` (default): the strongest 20 % of the peaks (100-1000) of step 3 (the background as
     the picker sees it, plus the particles at the top) are fitted twice by maximum
     likelihood: a generalized Pareto distribution (GPD) alone, and a GPD background plus a
     Gaussian cluster of particles. The mixture is used when it raises twice the
     log-likelihood by more than 6, or by more than 2 when the Gaussian cut-off corroborates
     it (the mixture's background predicts at most ``3 N_fp`` peaks above the Gaussian
     cut-off; the cut-off is then not below the Gaussian one). The cut-off is where the background GPD predicts
     ``N_fp`` peaks above it. This holds when the background's tail is heavier than Gaussian
     (where the Gaussian formula lets many background peaks through), and particles whose
     scores reach into the top of the background no longer pass for a heavy background tail.

5. Sub-voxel position (:func:`refine_subvoxel`): a 3-point parabola per axis through the
   peak voxel and its two neighbours (offset clipped to +-0.5 voxel). A refined pick closer
   than ``r`` to a stronger refined pick is dropped, so the exclusion also holds for the
   reported positions.
6. Angles: the pose matrix of the rotation index at the peak voxel, converted with
   :func:`tomomatch.conventions.matrix_to_relion`.

The result is a :class:`pandas.DataFrame` with one row per particle (see
:func:`extract_candidates`); :func:`tomomatch.particles.write_particles` writes it as
RELION 5, RELION 4 or Warp STAR.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage, optimize, special
from scipy.special import erfcinv

from .conventions import matrix_to_relion
from .errors import InputError, positive_number
from .jobfile import as_job as _as_job
from .jobfile import load_job_maps, read_job
from .mrcio import read_volume

__all__ = [
    "CUTOFF_METHODS",
    "read_job",
    "load_job_maps",
    "gaussian_cutoff_sigma",
    "gaussian_cutoff",
    "tail_cutoff",
    "pick_peaks",
    "refine_subvoxel",
    "tophat_mask",
    "exclusion_radius_voxels",
    "extract_candidates",
    "PARTICLE_COLUMNS",
]

CUTOFF_METHODS = ("tail", "gaussian", "fixed")

#: columns of the particle table returned by :func:`extract_candidates`
PARTICLE_COLUMNS = (
    "x",
    "y",
    "z",
    "score",
    "score_sigma",
    "rotation_index",
    "rot",
    "tilt",
    "psi",
    "x_voxel",
    "y_voxel",
    "z_voxel",
)

#: shape parameter range of the tail fits. Maxima of a Gaussian-like background have a tail
#: lighter than exponential: fitted to background peaks alone, xi was -0.13 to -0.2 on a
#: shot-noise simulation; a bound of -0.3 let 2-4 background peaks through on plain
#: simulations at 1 requested false alarm, -0.2 kept 0-2.
_XI_BOUNDS = [-0.2, 1.5]


# --------------------------------------------------------------------------- cut-offs


def _check_false_alarms(n_false_alarms) -> float:
    return positive_number(n_false_alarms, "--false-alarms")


def gaussian_cutoff_sigma(n_false_alarms: float, n_search: float) -> float:
    """Cut-off in units of sigma: ``sqrt(2) * erfcinv(2 N_fp / N_search)``.

    The expected number of Gaussian samples above ``k sigma`` among ``N_search`` is
    ``N_search * erfc(k / sqrt 2) / 2``; this returns the ``k`` that makes it ``N_fp``.
    ``gaussian_cutoff_sigma(1, 6_749_723_520_000)`` is 7.296 (the seed's 7.30 sigma).
    """
    nfp = _check_false_alarms(n_false_alarms)
    ns = positive_number(n_search, "n_search")
    if 2 * nfp >= 2 * ns:
        raise InputError(f"{nfp:g} false alarms is not fewer than the {ns:g} samples searched", field="false alarms")
    return float(math.sqrt(2.0) * erfcinv(2.0 * nfp / ns))


def gaussian_cutoff(n_false_alarms: float, n_search: float, mean: float, std: float) -> float:
    """Score cut-off ``mean + std * gaussian_cutoff_sigma(n_false_alarms, n_search)``."""
    if not (math.isfinite(float(std)) and float(std) > 0):
        raise InputError(f"search standard deviation must be > 0 and finite, got {std}", field="search_statistics.std")
    if not math.isfinite(float(mean)):
        raise InputError(f"search mean must be finite, got {mean}", field="search_statistics.mean")
    return float(mean) + float(std) * gaussian_cutoff_sigma(n_false_alarms, n_search)


def _gpd_logsf(y, xi, beta):
    """log survival of the generalized Pareto distribution (loc 0)."""
    y = np.asarray(y, float)
    if abs(xi) < 1e-9:
        return -y / beta
    z = 1.0 + xi * y / beta
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(z > 0, -np.log(np.where(z > 0, z, 1.0)) / xi, -np.inf)
    return out


def _gpd_logpdf(y: np.ndarray, xi: float, beta: float) -> np.ndarray:
    """log density of the generalized Pareto distribution (loc 0); ``-inf`` beyond its end point."""
    if abs(xi) < 1e-9:
        return -math.log(beta) - y / beta
    z = 1.0 + xi * y / beta
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(z > 0, -math.log(beta) - (1.0 + 1.0 / xi) * np.log(np.where(z > 0, z, 1.0)), -np.inf)


#: the particle component holds at least this many peaks, and its standard deviation is at least
#: this fraction of the mean exceedance: a narrower "cluster" on two or three top peaks is the
#: classic degenerate mixture fit, which fires on pure backgrounds.
_MIX_MIN_PARTICLES = 3.0
#: the particle component's mean lies at or above this quantile of the fitted window (the strong
#: end); with the median, a small bump in the body plus a heavy GPD tail through 4 well-separated
#: particles out-scored the right fit on a 150-peak map
_MIX_MIN_MEAN_QUANTILE = 0.9
_MIX_MIN_SD = 0.3
_NM = {"xatol": 1e-6, "fatol": 1e-8, "maxiter": 4000}


def _fit_gpd(y: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood GPD ``(xi, log beta, nll)`` of exceedances ``y > 0`` (unit scale), ``xi`` in
    ``_XI_BOUNDS``."""

    def nll(p):
        xi, lb = float(p[0]), float(p[1])
        if not (_XI_BOUNDS[0] <= xi <= _XI_BOUNDS[1]) or not (-20.0 < lb < 20.0):
            return 1e300
        ll = float(_gpd_logpdf(y, xi, math.exp(lb)).sum())
        return -ll if math.isfinite(ll) else 1e300

    best = min(
        (optimize.minimize(nll, [xi0, 0.0], method="Nelder-Mead", options=_NM) for xi0 in (-0.1, 0.2, 0.7)),
        key=lambda r: r.fun,
    )
    return float(best.x[0]), float(best.x[1]), float(best.fun)


def _fit_gpd_mixture(y: np.ndarray, xi0: float, lb0: float, max_fraction: float) -> tuple[np.ndarray, float] | None:
    """Maximum-likelihood mixture of a GPD background and a Gaussian particle cluster.

    ``y`` (exceedances, unit scale, sorted strongest first) has density
    ``(1 - w) GPD(y; xi, beta) + w N(y; mu, sd) / Phi(mu / sd)`` (the Gaussian truncated to
    ``y > 0``), with ``w <= max_fraction`` and ``mu`` at or above the 90th percentile of ``y`` (the
    particles are the strong end). Returns ``([xi, log beta, log w, mu, log sd], nll)`` or ``None``.
    """
    m = y.size
    med = float(np.quantile(y, _MIX_MIN_MEAN_QUANTILE))
    lw_min = math.log(_MIX_MIN_PARTICLES / m)
    lsd_min = math.log(_MIX_MIN_SD)

    def nll(p):
        xi, lb, lw, mu, lsd = (float(t) for t in p)
        if (
            not (_XI_BOUNDS[0] <= xi <= _XI_BOUNDS[1])
            or not (-20.0 < lb < 20.0)
            or not (lw_min <= lw <= math.log(max_fraction))
            or not (lsd_min <= lsd < 3.0)
            or mu < med
        ):
            return 1e300
        sd = math.exp(lsd)
        a = math.log1p(-math.exp(lw)) + _gpd_logpdf(y, xi, math.exp(lb))
        b = lw - 0.5 * ((y - mu) / sd) ** 2 - lsd - 0.5 * math.log(2.0 * math.pi) - float(special.log_ndtr(mu / sd))
        ll = float(np.logaddexp(a, b).sum())
        return -ll if math.isfinite(ll) else 1e300

    best = None
    for k in (3, 5, 10, 20, 40, 80, 160, 320):  # starts: the k strongest peaks are the cluster
        if k > max_fraction * m:
            break
        top = y[:k]
        p0 = [
            xi0,
            lb0,
            math.log(k / m),
            max(float(top.mean()), med),
            math.log(max(float(top.std()), 1.5 * _MIX_MIN_SD)),
        ]
        res = optimize.minimize(nll, p0, method="Nelder-Mead", options=_NM)
        if res.fun < 1e299 and (best is None or res.fun < best.fun):
            best = res
    return None if best is None else (np.asarray(best.x, float), float(best.fun))


def _gpd_cutoff(u: float, xi: float, beta: float, n_above_u: float, n_false_alarms: float) -> float:
    """Score ``c`` with ``n_above_u * S(c - u) = n_false_alarms`` for the GPD tail above ``u``."""
    ratio = n_above_u / n_false_alarms
    if ratio <= 1.0:
        return u
    if abs(xi) < 1e-9:
        return u + beta * math.log(ratio)
    return u + beta / xi * (ratio**xi - 1.0)


def _tail_window(
    peak_scores, tail_fraction: float = 0.2, min_tail: int = 100, max_tail: int = 1000
) -> tuple[float, np.ndarray, float, int]:
    """The window :func:`tail_cutoff` fits: ``(u, y, scale, n)`` with ``u`` the ``(m+1)``-th strongest
    of the ``n`` finite peak scores, ``m = clip(tail_fraction * n, min_tail, max_tail)`` (at most
    ``n // 2``), and ``y`` the exceedances above ``u`` divided by their mean ``scale``.
    ValueError when fewer than 40 (distinct) exceedances remain."""
    vals = np.asarray(peak_scores, float)
    s_desc = np.sort(vals[np.isfinite(vals)])[::-1]
    n = s_desc.size
    m = int(min(max(tail_fraction * n, min_tail), max_tail, n // 2))
    if m < 40:
        raise ValueError(f"only {n} peaks; the tail fit needs at least 80")
    u = float(s_desc[m])
    y = s_desc[:m] - u
    y = y[y > 0]
    if y.size < 40 or not np.ptp(y) > 0:
        raise ValueError(f"only {y.size} distinct peak scores above the tail threshold")
    scale = float(y.mean())
    return u, y / scale, scale, int(n)


def tail_cutoff(
    peak_scores,
    n_false_alarms: float = 1.0,
    *,
    tail_fraction: float = 0.2,
    min_tail: int = 100,
    max_tail: int = 1000,
    max_strong_fraction: float = 0.5,
    min_likelihood_ratio: float = 6.0,
    reference_cutoff: float | None = None,
    min_likelihood_ratio_with_reference: float = 2.0,
) -> tuple[float, dict[str, Any]]:
    """Data-driven cut-off from the tail of the background peak-score distribution.

    Parameters
    ----------
    peak_scores
        Scores of all peaks of the map (the greedy peak list without cut-off).
    n_false_alarms
        Expected number of background peaks above the returned cut-off.
    tail_fraction, min_tail, max_tail
        The fit uses the ``m = clip(tail_fraction * n_peaks, min_tail, max_tail)`` strongest
        peaks (at most half of the peaks; at least 40, else ``ValueError``).
    max_strong_fraction
        Largest fraction of those ``m`` peaks the particle component may take.
    min_likelihood_ratio
        The particle component is kept when it raises twice the log-likelihood by more than
        this (default 6: Akaike's criterion for its 3 extra parameters).
    reference_cutoff, min_likelihood_ratio_with_reference
        Optional independent cut-off (:func:`extract_candidates` passes the Gaussian cut-off of
        the search statistics). When the likelihood gain is weaker (above
        ``min_likelihood_ratio_with_reference``) but the mixture's background predicts at most
        ``3 N_fp`` peaks above the reference, the reference corroborates it: the mixture is
        used and the cut-off is ``max(mixture cut-off, reference)``.

    Returns
    -------
    cutoff, info
        ``info`` holds the background fit (``xi``, ``beta``, threshold ``u``,
        ``n_background_above_threshold``), ``model`` (``"gpd"`` or ``"gpd+particles"``), the
        ``likelihood_ratio`` of the two, and for the mixture the particle component
        (``particle_fraction``, ``particle_mean``, ``particle_sd`` in score units,
        ``n_strong`` = its expected number of peaks).

    Notes
    -----
    The ``m`` strongest peak scores, as exceedances of the next score ``u``, are fitted by
    maximum likelihood twice: (1) a generalized Pareto distribution (GPD, shape ``xi`` in
    ``[-0.2, 1.5]``: from Gaussian-like maxima to heavy tails), and (2) a mixture of a GPD
    background and a Gaussian cluster of particles (fraction ``w``, mean at or above the
    window's median). (2) is used when its likelihood gain exceeds ``min_likelihood_ratio``:
    the strong end of the peak list is then a cluster, not the continuation of the
    background's tail. The cut-off solves ``N_u S(cutoff - u) = N_fp`` with the background
    GPD, ``N_u = m (1 - w)``. Real particles interleaved with the top background peaks no
    longer inflate the background's tail (a single GPD takes them as a heavy tail), and a
    heavy background tail without a cluster is fitted as such.
    """
    nfp = _check_false_alarms(n_false_alarms)
    u, y, scale, n = _tail_window(peak_scores, tail_fraction, min_tail, max_tail)
    xi1, lb1, nll1 = _fit_gpd(y)
    mix = _fit_gpd_mixture(y, xi1, lb1, max_strong_fraction)
    lr = 2.0 * (nll1 - mix[1]) if mix is not None else -math.inf
    info: dict[str, Any] = {"threshold": u, "n_fit": int(y.size), "n_peaks": int(n), "likelihood_ratio": float(lr)}
    corroborated = False
    if (
        mix is not None
        and reference_cutoff is not None
        and math.isfinite(float(reference_cutoff))
        and min_likelihood_ratio_with_reference < lr <= min_likelihood_ratio
    ):
        xi2, lb2, lw2 = (float(t) for t in mix[0][:3])
        y_ref = (float(reference_cutoff) - u) / scale
        lam_ref = (
            y.size
            * (1.0 - math.exp(lw2))
            * (math.exp(float(_gpd_logsf(y_ref, xi2, math.exp(lb2)))) if y_ref > 0 else 1.0)
        )
        info["mixture_background_above_reference"] = float(lam_ref)
        corroborated = lam_ref <= 3.0 * nfp
    if mix is not None and (lr > min_likelihood_ratio or corroborated):
        xi, lb, lw, mu, lsd = mix[0]
        w = math.exp(lw)
        info.update(
            model="gpd+particles",
            particle_fraction=w,
            particle_mean=u + mu * scale,
            particle_sd=math.exp(lsd) * scale,
            n_strong=w * y.size,
        )
    else:
        xi, lb, w = xi1, lb1, 0.0
        info.update(model="gpd", n_strong=0.0)
    info["corroborated_by_reference"] = corroborated
    beta = math.exp(lb) * scale
    n_u = y.size * (1.0 - w)
    info.update(xi=float(xi), beta=beta, n_background_above_threshold=n_u)
    cutoff = _gpd_cutoff(u, float(xi), beta, n_u, nfp)
    if corroborated:
        assert reference_cutoff is not None  # corroborated only with a reference
        cutoff = max(cutoff, float(reference_cutoff))
    return float(cutoff), info


#: the tail cut-off keeping fewer than this fraction of the peaks above the Gaussian cut-off is
#: worth a warning (when those are more than ``max(10, 10 N_fp)``). Measured: a Student-t
#: background with 20 planted peaks, where the tail cut-off is right, keeps 20 of 319 (0.063); the
#: ``hard`` simulation's D7 random-phase search, where it is wrong, 4 of 206 (0.019)
TAIL_GAP_FRACTION = 0.05


def tail_gap_warning(
    peak_scores, cutoff: float, gaussian: float | None, n_false_alarms: float, tail_info, mean: float, std: float
) -> str | None:
    """The one-line warning for a tail cut-off that keeps far fewer peaks than the Gaussian one.

    The tail fit cannot tell from scores alone a broad population of strong peaks (look-alike
    complexes that contain the target, a crowded sample, gold beads, a lamella edge) from a heavy
    background tail; taken as background, such a population lifts the cut-off above most or all of
    the particles (measured on the ``hard`` simulation: docs/extraction.md). Silence there would
    read as "no (more) particles"; the warning names the numbers and the ways to pick deeper.
    It fires when more than ``max(10, 10 N_fp)`` peaks pass the Gaussian cut-off (the noise's own
    expectation is ``N_fp``) and the tail cut-off keeps fewer than :data:`TAIL_GAP_FRACTION` of
    them; None otherwise."""
    vals = np.asarray(peak_scores, float)
    if gaussian is None or not math.isfinite(gaussian):
        return None
    n_gauss = int(np.count_nonzero(vals > gaussian))
    if n_gauss <= max(10.0, 10.0 * float(n_false_alarms)):
        return None
    n_tail = int(np.count_nonzero(vals > cutoff))
    if n_tail >= TAIL_GAP_FRACTION * n_gauss:
        return None
    xi = (tail_info or {}).get("xi")
    heavy = f" (fitted tail shape xi = {xi:+.2f})" if xi is not None else ""
    kept = "is above every peak" if n_tail == 0 else f"keeps {n_tail} peaks"
    return (
        f"the tail cut-off {cutoff:.4g} ({(cutoff - mean) / std:.1f} sigma) {kept}, while"
        f" {n_gauss} peaks pass the Gaussian cut-off {gaussian:.4g} ({(gaussian - mean) / std:.1f} sigma):"
        f" the tail fit took a whole population of strong peaks for background{heavy}: structured"
        " background (gold, edges, other complexes) or targets it could not separate (look-alikes, a"
        " crowded sample); look at --plot and pick deeper with --false-alarms N or --cutoff, or match"
        " again with template --remove-radial-average and --random-phase (docs/extraction.md)"
    )


# --------------------------------------------------------------------------- peaks


def _ball(radius: float, strict: bool = True, extent: tuple[int, int, int] | None = None) -> np.ndarray:
    """Boolean ball of voxels with distance ``< radius`` (``<=`` if not strict) from the centre.

    ``extent``: half-widths ``(z, y, x)`` to cut the box to (a ball wider than a map is only ever
    used within it); default ``ceil(radius)`` on every axis. Built one z plane at a time, so it
    costs one byte per voxel of its box (no integer distance cube).
    """
    rad = max(float(radius), 0.0)
    half = int(math.ceil(rad))
    hz, hy, hx = (half,) * 3 if extent is None else tuple(min(half, max(int(e), 0)) for e in extent)
    r2 = rad * rad
    gy2 = (np.arange(-hy, hy + 1) ** 2)[:, None]
    gx2 = (np.arange(-hx, hx + 1) ** 2)[None, :]
    dyx = gy2 + gx2
    ball = np.empty((2 * hz + 1, 2 * hy + 1, 2 * hx + 1), dtype=bool)
    for i, z in enumerate(range(-hz, hz + 1)):
        d2 = dyx + z * z
        ball[i] = d2 < r2 if strict else d2 <= r2
    ball[hz, hy, hx] = True
    return ball


def _check_radius(
    radius: float,
    shape,
    field: str,
    path=None,
    what: str = "exclusion radius",
    diameter_voxel: tuple[float, float] | None = None,
) -> None:
    """InputError naming ``field`` when ``radius`` (voxels) is larger than the map's largest axis.

    Such a radius has no use (one pick per map, or a top-hat ball wider than the map) and its
    ball would be allocated as a cube of ``(2 r + 1)^3`` voxels: a particle diameter of 1e9 A
    asks for about 1e24 bytes. ``diameter_voxel``: ``(diameter A, voxel size A)`` when the
    radius is half a particle diameter, for a message in Angstrom.
    """
    dims = tuple(int(n) for n in shape)
    largest = max(dims)
    if not float(radius) > largest:
        return
    if diameter_voxel is not None:
        d, vs = diameter_voxel
        raise InputError(
            f"particle diameter {d:g} A is an exclusion radius of {float(radius):.4g} voxels at {vs:g} A, larger"
            f" than the map's largest axis ({largest} voxels of [z, y, x] {dims}); expected at most"
            f" {2 * largest * vs:g} A",
            path,
            field,
        )
    raise InputError(
        f"{what} of {float(radius):.4g} voxels is larger than the map's largest axis ({largest} voxels of"
        f" [z, y, x] {dims}); expected at most {largest} voxels",
        path,
        field,
    )


def exclusion_radius_voxels(particle_diameter_angstrom: float, voxel_size_angstrom: float) -> float:
    """Exclusion radius in voxels: half the particle diameter, ``(d / 2) / voxel``."""
    d = float(particle_diameter_angstrom)
    if not (math.isfinite(d) and d > 0):
        raise InputError(f"particle diameter must be > 0, got {particle_diameter_angstrom}", field="particle diameter")
    return d / 2.0 / float(voxel_size_angstrom)


def pick_peaks(
    scores: np.ndarray,
    radius_voxels: float,
    *,
    cutoff: float = -math.inf,
    max_count: int | None = None,
    eligible: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy peak picking with a spherical exclusion.

    Candidates are the voxels that are maxima of their 3x3x3 neighbourhood (ineligible
    voxels count as ``-inf``), scoring above ``cutoff``. They are taken in decreasing score;
    a candidate closer than ``radius_voxels`` to an accepted peak is skipped.

    Parameters
    ----------
    scores
        Score map ``[z, y, x]``.
    radius_voxels
        Exclusion radius in voxels (``> 0``); peaks closer than this are never both kept.
    cutoff
        Only peaks scoring strictly above this are returned.
    max_count
        Stop after this many peaks (``None``: all).
    eligible
        Boolean map of voxels allowed to hold a peak (``None``: all).

    Returns
    -------
    zyx, values
        ``(K, 3)`` integer voxel indices ``[z, y, x]`` and their scores, strongest first.
    """
    s = np.asarray(scores, dtype=np.float32)
    if s.ndim != 3:
        raise InputError(f"score map must be 3D, got shape {s.shape}")
    if not (float(radius_voxels) > 0):
        raise InputError(f"exclusion radius must be > 0 voxels, got {radius_voxels}", field="radius")
    _check_radius(radius_voxels, s.shape, "radius")
    if max_count is not None and int(max_count) < 1:
        raise InputError(f"maximum number of particles must be >= 1, got {max_count}", field="max count")
    work = s
    if eligible is not None:
        eligible = np.asarray(eligible, dtype=bool)
        if eligible.shape != s.shape:
            raise InputError(f"mask shape {eligible.shape} differs from the score map shape {s.shape}", field="mask")
        work = np.where(eligible, s, -np.inf).astype(np.float32)
    local_max = work == ndimage.maximum_filter(work, size=3, mode="constant", cval=-np.inf)
    cand = local_max & np.isfinite(work) & (work > cutoff)
    flat = np.flatnonzero(cand)
    vals = s.reshape(-1)[flat]
    order = np.argsort(-vals, kind="stable")
    flat = flat[order]
    # cut to the map: a suppression window never reaches further than the map's extent
    ball = _ball(radius_voxels, strict=True, extent=tuple(n - 1 for n in s.shape))  # type: ignore[arg-type]
    hz, hy, hx = (n // 2 for n in ball.shape)
    suppressed = np.zeros(s.shape, dtype=bool)
    sflat = suppressed.reshape(-1)
    nz, ny, nx = s.shape
    picks: list[int] = []
    limit = None if max_count is None else int(max_count)
    for v in flat.tolist():
        if sflat[v]:
            continue
        picks.append(v)
        if limit is not None and len(picks) >= limit:
            break
        z, rem = divmod(v, ny * nx)
        y, x = divmod(rem, nx)
        z0, z1 = max(z - hz, 0), min(z + hz + 1, nz)
        y0, y1 = max(y - hy, 0), min(y + hy + 1, ny)
        x0, x1 = max(x - hx, 0), min(x + hx + 1, nx)
        suppressed[z0:z1, y0:y1, x0:x1] |= ball[
            z0 - z + hz : z1 - z + hz, y0 - y + hy : y1 - y + hy, x0 - x + hx : x1 - x + hx
        ]
    idx = np.asarray(picks, dtype=np.int64)
    zyx = np.stack(np.unravel_index(idx, s.shape), axis=1) if idx.size else np.zeros((0, 3), np.int64)
    return zyx.astype(np.int64), s.reshape(-1)[idx].astype(float)


def refine_subvoxel(scores: np.ndarray, zyx) -> np.ndarray:
    """Sub-voxel peak positions by a 3-point parabola per axis.

    For each axis the parabola through ``f(-1), f(0), f(+1)`` peaks at
    ``0.5 (f(-1) - f(+1)) / (f(-1) - 2 f(0) + f(+1))``; the offset is clipped to ``[-0.5, 0.5]``
    and set to 0 at the map edge or where the three values are not concave.

    Returns
    -------
    ``(K, 3)`` float positions ``[z, y, x]`` in voxels.
    """
    s = np.asarray(scores, dtype=float)
    p = np.asarray(zyx, dtype=np.int64).reshape(-1, 3)
    out = p.astype(float)
    if p.size == 0:
        return out
    f0 = s[p[:, 0], p[:, 1], p[:, 2]]
    for ax in range(3):
        n = s.shape[ax]
        ok = (p[:, ax] > 0) & (p[:, ax] < n - 1)
        lo = p.copy()
        hi = p.copy()
        lo[:, ax] = np.clip(p[:, ax] - 1, 0, n - 1)
        hi[:, ax] = np.clip(p[:, ax] + 1, 0, n - 1)
        fl = s[lo[:, 0], lo[:, 1], lo[:, 2]]
        fh = s[hi[:, 0], hi[:, 1], hi[:, 2]]
        den = fl - 2.0 * f0 + fh
        ok &= den < 0
        with np.errstate(divide="ignore", invalid="ignore"):
            off = np.where(ok, 0.5 * (fl - fh) / np.where(ok, den, 1.0), 0.0)
        out[:, ax] += np.clip(off, -0.5, 0.5)
    return out


def _drop_close_refined(pos_zyx: np.ndarray, radius: float) -> np.ndarray:
    """Keep-mask: drop a (refined) pick closer than ``radius`` to a stronger kept pick."""
    from scipy.spatial import cKDTree

    n = len(pos_zyx)
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    tree = cKDTree(pos_zyx)
    pairs = tree.query_pairs(radius, output_type="ndarray")
    if pairs.size == 0:
        return keep
    d = np.linalg.norm(pos_zyx[pairs[:, 0]] - pos_zyx[pairs[:, 1]], axis=1)
    pairs = pairs[d < radius]
    neighbours: dict[int, list[int]] = {}
    for a, b in pairs.tolist():
        lo, hi = min(a, b), max(a, b)
        neighbours.setdefault(hi, []).append(lo)
    for i in range(n):  # rows are strongest first
        for j in neighbours.get(i, ()):
            if keep[j]:
                keep[i] = False
                break
    return keep


def tophat_mask(
    scores: np.ndarray,
    eligible: np.ndarray | None = None,
    *,
    radius_voxels: float = 1.0,
    n_false_alarms: float = 1.0,
    threshold: float | None = None,
    min_fraction: float = 0.3,
) -> tuple[np.ndarray, float]:
    """Voxels where the white top-hat of the score map stands out (suppresses broad ridges).

    The white top-hat ``T = S - opening(S)`` with a ball of ``radius_voxels`` keeps peaks
    narrower than the ball and removes features broader than it (membranes, gold edges,
    ridges of a strong neighbour). A voxel may hold a peak where both

    * ``T > threshold``; unless given, ``threshold = median(T) + 1.4826 MAD(T) * sqrt(2)
      erfcinv(2 N_fp / N_voxels)`` over the eligible voxels (a robust Gaussian false-alarm
      level of the top-hat values), and
    * ``T >= min_fraction * (S - median(S))``: the peak rises above its surroundings by at
      least this fraction of its height (a crest of a ridge wider than the ball does not).

    Returns
    -------
    mask, threshold
        Boolean map of voxels that may hold a peak, and the top-hat threshold used.
    """
    s = np.asarray(scores, dtype=np.float32)
    fp = _ball(radius_voxels, strict=False)
    th = s - ndimage.grey_opening(s, footprint=fp, mode="nearest")
    sel = eligible if eligible is not None else np.ones(s.shape, bool)
    vals = th[sel]
    if vals.size < 2:
        raise InputError("too few voxels for the top-hat threshold", field="tophat")
    if threshold is None:
        med = float(np.median(vals))
        sig = 1.4826 * float(np.median(np.abs(vals - med)))
        if not sig > 0:
            sig = float(np.std(vals)) or 1e-12
        threshold = med + sig * gaussian_cutoff_sigma(n_false_alarms, vals.size)
    base = float(np.median(s[sel]))
    return (th > threshold) & (th >= float(min_fraction) * (s - base)), float(threshold)


# --------------------------------------------------------------------------- main API


def _search_stats(job, computed: bool = False) -> tuple[float | None, float | None, float | None]:
    """``(n_search, mean, std)`` of the job; ``computed``: ``n_search`` counts every computed
    voxel (a search region's cropped tiles compute a little more than the region)."""
    st = job.get("search_statistics") or {}
    try:
        n = None
        if computed and st.get("n_search_computed") is not None:
            n = float(st["n_search_computed"])
        elif st.get("n_search") is not None:
            n = float(st["n_search"])
        if n is None and st.get("n_voxels") is not None and st.get("n_rotations") is not None:
            n = float(st["n_voxels"]) * float(st["n_rotations"])
        mean = float(st["mean"]) if st.get("mean") is not None else None
        std = float(st["std"]) if st.get("std") is not None else None
    except (TypeError, ValueError):
        raise InputError("search_statistics must hold numbers", job.get("_job_path"), "search_statistics") from None
    if std is not None and not (math.isfinite(std) and std > 0):
        raise InputError(
            f"search standard deviation must be > 0 and finite, got {std}",
            job.get("_job_path"),
            "search_statistics.std",
        )
    return n, mean, std


def _load_mask(mask, shape, job_path) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        m = mask
    else:
        m, _ = read_volume(mask, 1.0, what="mask")
    if m.shape != tuple(shape):
        raise InputError(
            f"mask shape {m.shape} differs from the score map shape {tuple(shape)}",
            None if isinstance(mask, np.ndarray) else mask,
            "mask",
        )
    return np.asarray(m) > 0


def extract_candidates(
    job,
    *,
    max_particles: int = 1000,
    particle_diameter_angstrom: float | None = None,
    radius_voxels: float | None = None,
    cutoff: float | None = None,
    false_alarms: float = 1.0,
    cutoff_method: str | None = None,
    mask=None,
    tophat: bool = False,
    tophat_radius_voxels: float = 1.0,
    border_voxels: int = 0,
    subvoxel: bool = True,
    use_tomogram_mask: bool = True,
    return_details: bool = False,
):
    """Extract particle candidates from a match job.

    Parameters
    ----------
    job
        Path of the job file, or the dict :func:`read_job` returns.
    max_particles
        Largest number of particles (``>= 1``).
    particle_diameter_angstrom, radius_voxels
        Exclusion radius: ``radius_voxels`` directly, else half the diameter (default: the
        job's ``particle_diameter_angstrom``).
    cutoff
        Score (raw LCC) cut-off; given, it selects the ``fixed`` method. Must be ``>= 0``.
    false_alarms
        Expected number of background peaks above the cut-off (``tail``/``gaussian``).
    cutoff_method
        ``"tail"`` (default), ``"gaussian"`` or ``"fixed"``. ``tail`` falls back to
        ``gaussian`` (with a warning) when there are too few peaks to fit.
    mask
        MRC path or boolean array ``[z, y, x]``; peaks only where it is ``> 0``.
    tophat, tophat_radius_voxels
        Apply the top-hat constraint (:func:`tophat_mask`).
    border_voxels
        Ignore peaks within this many voxels of the map faces.
    use_tomogram_mask
        Pick only inside the job's search region (``match --tomogram-mask``/``--search-x/-y/-z``),
        AND-combined with ``mask``; the false-alarm count ``N_search`` is then the region's
        voxels x rotations. False: every voxel the job computed (angle index >= 0) may hold a
        pick, and ``N_search`` counts them all.
    subvoxel
        Refine positions with a 3-point parabola per axis.
    return_details
        Also return a dict with the peak-score list, fits and maps for plotting.

    Returns
    -------
    pandas.DataFrame
        One row per particle, strongest first: ``x, y, z`` (float voxel indices of the matched
        tomogram, sub-voxel), ``x_voxel, y_voxel, z_voxel`` (integer peak voxel), ``score``
        (the LCC maximum), ``score_sigma`` (``(score - mean) / std`` of the search
        statistics), ``rotation_index`` and RELION ``rot, tilt, psi`` (degrees). ``df.attrs``
        holds the cut-off, method, radius and job path (scalars only).
    """
    job = _as_job(job)
    jp = job.get("_job_path")
    method = cutoff_method.lower() if cutoff_method else ("fixed" if cutoff is not None else "tail")
    if method not in CUTOFF_METHODS:
        raise InputError(
            f"unknown cut-off method {cutoff_method!r}; expected one of {', '.join(CUTOFF_METHODS)}",
            field="cutoff-method",
        )
    try:
        max_particles = int(max_particles)
    except (TypeError, ValueError):
        raise InputError(f"expected an integer, got {max_particles!r}", field="max particles") from None
    if max_particles < 1:
        raise InputError(f"maximum number of particles must be >= 1, got {max_particles}", field="max particles")
    if method == "fixed":
        if cutoff is None:
            raise InputError("cut-off method 'fixed' needs a cut-off value", field="cutoff")
        cutoff = float(cutoff)
        if not math.isfinite(cutoff) or cutoff < 0:
            raise InputError(f"cut-off must be a finite score >= 0, got {cutoff}", field="cutoff")
    elif cutoff is not None:
        raise InputError(f"a cut-off value was given with method {method!r}; use method 'fixed'", field="cutoff")
    nfp = _check_false_alarms(false_alarms)
    if int(border_voxels) < 0:
        raise InputError(f"border must be >= 0 voxels, got {border_voxels}", field="border")

    vs = float(job["voxel_size_angstrom"])
    # where the exclusion radius comes from, for a message about its size
    radius_from: dict[str, Any] = {"field": "--radius"}
    if radius_voxels is None:
        d = (
            particle_diameter_angstrom
            if particle_diameter_angstrom is not None
            else job.get("particle_diameter_angstrom")
        )
        if d is None:
            raise InputError(
                "no exclusion radius: give the particle diameter or a radius in voxels"
                " (the job has no particle_diameter_angstrom)",
                jp,
                "particle diameter",
            )
        radius = exclusion_radius_voxels(d, vs)
        radius_from = {"field": "--particle-diameter", "diameter_voxel": (float(d), vs)}
        if particle_diameter_angstrom is None:  # the job's own
            radius_from.update(field="particle_diameter_angstrom", path=jp)
    else:
        radius = float(radius_voxels)
        if not (math.isfinite(radius) and radius > 0):
            raise InputError(f"exclusion radius must be > 0 voxels, got {radius_voxels}", field="radius")
    th_radius = float(tophat_radius_voxels)
    if tophat and not (math.isfinite(th_radius) and th_radius > 0):
        raise InputError(f"top-hat radius must be > 0 voxels, got {tophat_radius_voxels}", field="--tophat-radius")

    def check_sizes(shape) -> None:  # before a ball the size of the radius is allocated
        _check_radius(radius, shape, **radius_from)
        if tophat:
            _check_radius(th_radius, shape, "--tophat-radius", what="top-hat radius")

    if job.get("tomogram_shape_zyx") is not None:  # before the maps are read
        check_sizes(job["tomogram_shape_zyx"])
    scores, angle_idx, rotations = load_job_maps(job)
    check_sizes(scores.shape)
    eligible = angle_idx >= 0
    region = None
    if use_tomogram_mask:
        from .region import job_search_region

        region = job_search_region(job, scores.shape)
        if region is not None:
            eligible &= region
    if mask is not None:
        eligible &= _load_mask(mask, scores.shape, jp)
    b = int(border_voxels)
    if b > 0:
        inner = np.zeros_like(eligible)
        inner[b : -b or None, b : -b or None, b : -b or None] = True
        eligible &= inner
    if not eligible.any():
        raise InputError("no searched voxel is left to pick from (check the mask and the angle map)", jp, "mask")

    n_search, mean, std = _search_stats(job, computed=region is None)
    sigma_source = "search_statistics"
    if mean is None or std is None:
        vals = scores[eligible]
        mean, std = float(vals.mean()), float(vals.std())
        sigma_source = "score map (job has no search statistics)"
        if not std > 0:
            std = 1.0

    th_thr = None
    if tophat:
        th_mask, th_thr = tophat_mask(scores, eligible, radius_voxels=tophat_radius_voxels, n_false_alarms=nfp)
        eligible &= th_mask

    # the whole peak list: the background as the picker sees it (cheap: local maxima only)
    all_zyx, all_vals = pick_peaks(scores, radius, eligible=eligible)
    details: dict[str, Any] = {
        "peak_scores": all_vals,
        "search_mean": mean,
        "search_std": std,
        "n_search": n_search,
        "n_rotations": int(len(rotations)),
        "radius_voxels": radius,
        "tophat_threshold": th_thr,
    }
    gauss = None
    if n_search is not None:
        try:
            gauss = gaussian_cutoff(nfp, n_search, mean, std)
        except InputError:
            gauss = None
    details["gaussian_cutoff"] = gauss
    tail_info = None
    used = method
    if method == "fixed":
        assert cutoff is not None  # checked above for method "fixed"
        c = float(cutoff)
    elif method == "gaussian":
        if n_search is None or sigma_source != "search_statistics":
            raise InputError(
                "the gaussian cut-off needs search_statistics (n_search, mean, std) in the job", jp, "search_statistics"
            )
        c = gaussian_cutoff(nfp, n_search, mean, std)
    else:
        try:
            c, tail_info = tail_cutoff(all_vals, nfp, reference_cutoff=gauss)
        except ValueError as exc:
            if gauss is None:
                raise InputError(
                    f"tail fit impossible ({exc}) and no search statistics for the gaussian cut-off; give --cutoff",
                    jp,
                    "cutoff",
                ) from None
            warnings.warn(f"tail fit impossible ({exc}); using the gaussian cut-off", stacklevel=2)
            c, used = gauss, "gaussian"
    details["tail_fit"] = tail_info
    details["cutoff"] = c
    details["cutoff_method"] = used
    details["cutoff_warning"] = (
        tail_gap_warning(all_vals, c, gauss, nfp, tail_info, mean, std) if used == "tail" else None
    )
    if details["cutoff_warning"]:
        warnings.warn(details["cutoff_warning"], stacklevel=2)

    sel = all_vals > c
    zyx, vals = all_zyx[sel][:max_particles], all_vals[sel][:max_particles]
    pos = refine_subvoxel(scores, zyx) if subvoxel else zyx.astype(float)
    keep = _drop_close_refined(pos, radius)
    zyx, vals, pos = zyx[keep], vals[keep], pos[keep]
    rot_idx = angle_idx[zyx[:, 0], zyx[:, 1], zyx[:, 2]] if len(zyx) else np.zeros(0, np.int64)
    with warnings.catch_warnings():  # e.g. the identity: tilt 0 gives rot + psi, psi set to 0
        warnings.filterwarnings("ignore", message="Gimbal lock", category=UserWarning)
        eul = matrix_to_relion(rotations[rot_idx]) if len(zyx) else np.zeros((0, 3))
    df = pd.DataFrame(
        {
            "x": pos[:, 2],
            "y": pos[:, 1],
            "z": pos[:, 0],
            "score": vals.astype(float),
            "score_sigma": (vals.astype(float) - mean) / std,
            "rotation_index": rot_idx.astype(np.int64),
            "rot": eul[:, 0],
            "tilt": eul[:, 1],
            "psi": eul[:, 2],
            "x_voxel": zyx[:, 2].astype(np.int64),
            "y_voxel": zyx[:, 1].astype(np.int64),
            "z_voxel": zyx[:, 0].astype(np.int64),
        }
    )
    df.attrs.update(
        {
            "cutoff": float(c),
            "cutoff_sigma": float((c - mean) / std),
            "cutoff_method": used,
            "false_alarms": float(nfp),
            "radius_voxels": float(radius),
            "search_mean": float(mean),
            "search_std": float(std),
            "sigma_source": sigma_source,
            "job": jp,
            "n_peaks_total": int(all_vals.size),
            "n_search": None if n_search is None else float(n_search),
            "search_region": region is not None,
            "gaussian_cutoff": None if gauss is None else float(gauss),
        }
    )
    if return_details:
        details["scores"] = scores
        details["eligible"] = eligible
        return df, details
    return df
