"""How far the simulated particles stand above the background, in units of the search's sigma.

:func:`particle_sigma` scores every particle with the written template at its true pose and
position (:func:`tomomatch.rescore.rescore_particles`: per-tilt wedge x signed CTF at the
particle's own defocus x dose, normalised cross-correlation under the mask, best of the 27
positions within one voxel) and compares the scores with the background distribution of the
same correlation: the template at a few random rotations over the whole tomogram (or its central
part) with :func:`tomomatch.matching.match_volume` and the same weighting. The background's mean
and standard deviation over all positions and rotations are what a global search reports as its
search statistics (pytom's sigma); ``sigma_i = (score_i - mean) / std``.

Why this and not a noise-free versus noisy SNR: the score a user reads (the seed page's "about 20
sigma against a 7.30 sigma cut-off") is exactly this ratio, and it includes what a SNR from the
noise-free tomogram would miss: the template mismatch, the wedge and CTF weighting, the
normalisation under the mask and the background of other complexes, which correlate with the
template too. It costs one correlation per particle and a few full-volume correlations.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["particle_sigma"]


def particle_sigma(
    tomogram: np.ndarray,
    voxel_size_angstrom: float,
    tilt_series,
    template: np.ndarray,
    mask: np.ndarray,
    positions_xyz: np.ndarray,
    poses: np.ndarray,
    *,
    hand: int = 1,
    hand_mode: str = "full",
    particle_diameter_angstrom: float | None = None,
    n_background_rotations: int = 3,
    max_background_voxels: float = 4e6,
    seed: int = 0,
) -> dict:
    """Per-particle score at the true pose, in units of the background's sigma.

    Parameters
    ----------
    tomogram, voxel_size_angstrom, tilt_series, template, mask
        As for matching (template dark like the tomogram).
    positions_xyz, poses
        True particle centres (voxel indices x, y, z) and poses (template to particle).
    hand, hand_mode
        Defocus hand used for each particle's weighting.
    particle_diameter_angstrom
        For the Gaussian cut-off of a full search (Crowther step at this diameter, 1 expected false
        alarm over the tomogram's voxels x rotations); default from the mask.
    n_background_rotations, max_background_voxels, seed
        Background sample: that many random rotations over the central part of the tomogram of at
        most that many voxels.

    Returns
    -------
    dict with ``sigma`` (per particle), ``score``, the background ``mean`` / ``std``, a summary
    (min, percentiles, max) and the full-search cut-off in sigma.
    """
    from scipy.spatial.transform import Rotation

    from ..angles import crowther_step_deg, uniform_rotation_count
    from ..extract import gaussian_cutoff_sigma
    from ..matching import match_volume
    from ..rescore import rescore_particles
    from ..weighting import tilt_series_weight

    tomo = np.asarray(tomogram, dtype=np.float32)
    v = float(voxel_size_angstrom)
    res = rescore_particles(
        tomo,
        v,
        tilt_series,
        template,
        mask,
        positions_xyz,
        poses,
        hands=(int(hand),),
        hand_mode=hand_mode,  # type: ignore[arg-type]
        max_angle_deg=0.0,
        shift_voxels=1,
    )
    scores = res.scores[:, 0]
    # background: the central part of the tomogram, a few random rotations
    shape = np.array(tomo.shape)
    keep = shape.copy()
    while np.prod(keep) > max_background_voxels:
        i = int(np.argmax(keep))
        keep[i] = max(keep[i] * 3 // 4, template.shape[0] * 2)
        if np.all(keep <= template.shape[0] * 2):
            break
    lo = (shape - keep) // 2
    crop = tomo[lo[0] : lo[0] + keep[0], lo[1] : lo[1] + keep[1], lo[2] : lo[2] + keep[2]]
    rots = Rotation.random(int(n_background_rotations), random_state=np.random.default_rng(seed)).as_matrix()

    def weight(grid_shape):
        return tilt_series_weight(tilt_series, grid_shape, v, device="cpu")

    bg = match_volume(crop, template, mask, rots, weight=weight, device="cpu")
    mean, std = float(bg.mean), float(bg.std)
    sig = (scores - mean) / std
    diameter = particle_diameter_angstrom
    if diameter is None:
        m = np.asarray(mask) > 0.5
        diameter = 2.0 * v * float(np.cbrt(3 * m.sum() / (4 * math.pi)))
    step = crowther_step_deg(diameter, v)
    n_rot = uniform_rotation_count(step)
    n_search = float(np.prod(shape)) * n_rot
    cut = gaussian_cutoff_sigma(1.0, n_search)
    q = np.percentile(sig, [0, 10, 25, 50, 75, 90, 100]) if sig.size else np.full(7, np.nan)
    return {
        "method": "score at the true pose and position (rescore, +-1 voxel) vs the background of "
        f"{len(rots)} random rotations over {int(np.prod(keep))} voxels (same weighting)",
        "score": [round(float(x), 5) for x in scores],
        "sigma": [round(float(x), 3) for x in sig],
        "background_mean": mean,
        "background_std": std,
        "summary": {
            "n": int(sig.size),
            "min": round(float(q[0]), 2),
            "p10": round(float(q[1]), 2),
            "p25": round(float(q[2]), 2),
            "median": round(float(q[3]), 2),
            "p75": round(float(q[4]), 2),
            "p90": round(float(q[5]), 2),
            "max": round(float(q[6]), 2),
        },
        "full_search": {
            "particle_diameter_angstrom": round(diameter, 1),
            "crowther_step_deg": round(step, 3),
            "n_rotations": int(n_rot),
            "n_search": n_search,
            "cutoff_sigma_1_false_alarm": round(cut, 3),
            "fraction_above_cutoff": round(float(np.mean(sig > cut)), 3) if sig.size else None,
        },
    }
