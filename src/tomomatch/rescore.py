"""``tomomatch hand``'s engine: re-score candidates at their own positions under several hands.

:func:`rescore_particles` re-scores every particle with local rotation refinement around its
pose, using a template weighted with the particle's *own* per-tilt defocus under
``h = +1, -1, 0`` (:mod:`tomomatch.conventions`); the tomogram is prepared exactly as the
matching engine prepares it (:mod:`tomomatch.preparation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import InputError
from .hand_stats import HandScores

if TYPE_CHECKING:
    from .conventions import HandMode

__all__ = ["RescoreResult", "oversample_volume", "rotate_volumes", "rescore_particles"]


@dataclass
class RescoreResult:
    """Per-particle scores of :func:`rescore_particles`.

    Attributes
    ----------
    hands
        The hands scored, in column order (e.g. ``(1, -1, 0)``).
    scores
        ``(n_particles, n_hands)`` best normalised cross-correlation under each hand,
        maximised over the local rotations and the shifts.
    best_rotation
        ``(n_particles, n_hands, 3, 3)`` pose at the best score.
    best_shift_voxels
        ``(n_particles, n_hands, 3)`` integer ``(x, y, z)`` shift of the best score from the
        rounded particle position.
    centred_angstrom
        ``(n_particles, 3)`` centred ``(x, y, z)`` of the rounded particle positions, Angstrom.
    n_rotations
        Local rotations tried per particle.
    """

    hands: tuple[int, ...]
    scores: np.ndarray
    best_rotation: np.ndarray
    best_shift_voxels: np.ndarray
    centred_angstrom: np.ndarray
    n_rotations: int

    def score(self, hand: int) -> np.ndarray:
        """Column of ``scores`` for one hand."""
        return self.scores[:, self.hands.index(int(hand))]

    def to_hand_scores(self) -> HandScores:
        """The :class:`HandScores` for :func:`hand_statistics` (needs hands +1 and -1)."""
        c = self.centred_angstrom
        return HandScores(
            x_angstrom=c[:, 0],
            y_angstrom=c[:, 1],
            z_angstrom=c[:, 2],
            score_plus=self.score(1),
            score_minus=self.score(-1),
            score_zero=self.score(0) if 0 in self.hands else None,
        )


def oversample_volume(volume, factor: int = 2) -> np.ndarray:
    """Cubic B-spline resampling of a ``[z, y, x]`` box onto a grid ``factor`` times finer.

    Fine index ``j`` is coarse index ``j / factor`` (so coarse voxel ``i`` is fine voxel
    ``factor * i``); the result has ``factor * (n - 1) + 1`` voxels per axis. Used once per
    template so that the many rotations of :func:`rotate_volumes` can use fast trilinear
    interpolation on the fine grid with little blurring.
    """
    from scipy import ndimage

    v = np.asarray(volume, dtype=np.float64)
    f = int(factor)
    if f == 1:
        return v.astype(np.float32)
    shape = tuple(f * (n - 1) + 1 for n in v.shape)
    return ndimage.affine_transform(
        v, np.full(3, 1.0 / f), output_shape=shape, order=3, mode="constant", cval=0.0
    ).astype(np.float32)


def rotate_volumes(volume, matrices, *, oversampling: int = 1, out_shape_zyx=None, dtype=None):
    """Rotate a box about its centre voxel ``n // 2`` by each pose matrix (batched, torch).

    ``out_k(r) = volume(R_k^T (r - c) + c)`` (trilinear, zeros outside): the template carried
    onto a particle with pose ``R_k`` (:mod:`tomomatch.conventions`).

    Parameters
    ----------
    volume
        ``[z, y, x]`` array or tensor; with ``oversampling = f > 1`` it is the output of
        :func:`oversample_volume` (``f`` times finer than the output grid).
    matrices
        ``(k, 3, 3)`` rotation matrices acting on ``(x, y, z)``.
    oversampling
        Ratio of the input grid's sampling to the output's.
    out_shape_zyx
        Output box; default the input's shape (``oversampling = 1``) or the coarse box
        ``(n - 1) / f + 1``.

    Returns
    -------
    torch.Tensor
        ``(k, z, y, x)``, on the input tensor's device (the CPU for an array); the sampling grid
        is built there too, so a CUDA tensor is rotated on its GPU.
    """
    import torch
    import torch.nn.functional as F

    vol = volume if isinstance(volume, torch.Tensor) else torch.as_tensor(np.array(volume))
    vol = vol.to(dtype or torch.float32)
    dev = vol.device
    mats = torch.as_tensor(np.asarray(matrices, dtype=float), dtype=vol.dtype, device=dev).reshape(-1, 3, 3)
    f = int(oversampling)
    in_z, in_y, in_x = vol.shape
    if out_shape_zyx is None:
        out_shape_zyx = tuple((n - 1) // f + 1 for n in vol.shape)
    nz, ny, nx = (int(v) for v in out_shape_zyx)
    in_size_xyz = torch.tensor([in_x, in_y, in_z], dtype=vol.dtype, device=dev)
    centre = torch.tensor([nx // 2, ny // 2, nz // 2], dtype=vol.dtype, device=dev)
    zz, yy, xx = torch.meshgrid(
        torch.arange(nz, dtype=vol.dtype, device=dev),
        torch.arange(ny, dtype=vol.dtype, device=dev),
        torch.arange(nx, dtype=vol.dtype, device=dev),
        indexing="ij",
    )
    r = torch.stack([xx, yy, zz], -1).reshape(-1, 3) - centre  # (V, 3) as (x, y, z)
    # source = R^T r (row form r @ R), in input-grid voxels
    src = (torch.einsum("vi,kij->kvj", r, mats) + centre) * f
    grid = 2.0 * src / (in_size_xyz - 1).clamp(min=1) - 1.0
    grid = grid.reshape(-1, nz, ny, nx, 3)
    out = F.grid_sample(
        vol.expand(grid.shape[0], 1, in_z, in_y, in_x), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out[:, 0]


def _window_region(tomogram: np.ndarray, centre_zyx: np.ndarray, box_zyx: tuple[int, int, int], shift: int):
    """The ``box + 2 shift`` region around ``centre_zyx`` (float64) that :func:`_windows` cuts.

    Parts outside the tomogram are filled with the mean of the part inside.
    """
    b = np.asarray(box_zyx)
    lo = centre_zyx - b // 2 - shift
    hi = lo + b + 2 * shift
    shape = np.asarray(tomogram.shape)
    clo = np.maximum(lo, 0)
    chi = np.minimum(hi, shape)
    inner = tomogram[clo[0] : chi[0], clo[1] : chi[1], clo[2] : chi[2]].astype(np.float64)
    region = np.full(tuple(hi - lo), inner.mean() if inner.size else 0.0)
    region[clo[0] - lo[0] : chi[0] - lo[0], clo[1] - lo[1] : chi[1] - lo[1], clo[2] - lo[2] : chi[2] - lo[2]] = inner
    return region


def _windows(tomogram: np.ndarray, centre_zyx: np.ndarray, box_zyx: tuple[int, int, int], shift: int, device=None):
    """All ``(2 shift + 1)^3`` boxes around ``centre_zyx`` as a ``(n_shifts, V)`` float64 tensor.

    Box ``[c - box//2 + s, c - box//2 + s + box)`` per axis for shifts ``s`` in ``-shift..shift``
    (ordered z, y, x). Parts outside the tomogram are filled with the mean of the part inside.
    Only the small region (:func:`_window_region`) goes to ``device``; the ``n_shifts`` copies of
    the box are made there.
    """
    import torch

    bz, by, bx = (int(v) for v in box_zyx)
    region = torch.as_tensor(_window_region(tomogram, centre_zyx, box_zyx, shift), device=device)
    view = region.unfold(0, bz, 1).unfold(1, by, 1).unfold(2, bx, 1)  # (2s+1,)*3 + box
    return view.reshape(-1, bz * by * bx)  # a contiguous copy


def _hand_weights(
    tilt_series, box_zyx, voxel_size_angstrom: float, centred_xyz, hands, hand_mode, weight_options: dict[str, Any]
):
    """rfft-grid template weights ``(n_particles, n_hands, z, y, x//2+1)``.

    The per-tilt defocus is shifted to each particle's own centred ``(x, y, z)`` under each hand
    (:func:`tomomatch.conventions.defocus_offset_angstrom`) and all ``particles x hands``
    positions go to one :func:`tomomatch.weighting.tilt_series_weight` call.
    """
    from .conventions import ANGSTROM_PER_MICROMETRE, defocus_offset_angstrom
    from .weighting import tilt_series_weight

    c = np.asarray(centred_xyz, dtype=float).reshape(-1, 3)
    tilts = np.asarray(tilt_series.tilt_angles_deg, dtype=float)
    x_tilts = np.asarray(tilt_series.x_tilt_deg, dtype=float)
    offsets = (
        np.stack(
            [
                defocus_offset_angstrom(
                    c[:, 0, None],
                    c[:, 2, None],
                    tilts[None],
                    h,
                    hand_mode,
                    y_angstrom=c[:, 1, None],
                    x_tilt_deg=x_tilts[None],
                )
                for h in hands
            ],
            axis=1,
        )
        / ANGSTROM_PER_MICROMETRE
    )  # (P, H, n_tilts), all tilts
    w = tilt_series_weight(
        tilt_series,
        tuple(int(v) for v in box_zyx),
        voxel_size_angstrom,
        defocus_offset_um=offsets.reshape(-1, tilts.size),
        **weight_options,
    )
    return w.reshape(len(c), len(hands), *w.shape[-3:])


def rescore_particles(
    tomogram: np.ndarray,
    voxel_size_angstrom: float,
    tilt_series,
    template: np.ndarray,
    mask: np.ndarray,
    positions_xyz,
    poses,
    *,
    hands: Sequence[int] = (1, -1, 0),
    hand_mode: HandMode = "full",
    max_angle_deg: float = 8.0,
    angle_step_deg: float = 4.0,
    shift_voxels: int = 1,
    oversampling: int = 2,
    low_pass_angstrom: float | None = None,
    high_pass_angstrom: float | None = None,
    whiten: bool = False,
    weight_options: dict[str, Any] | None = None,
    weight_function=None,
    progress=None,
    device="cpu",
) -> RescoreResult:
    """Re-score every particle under several defocus hands, with local refinement.

    For each particle: the per-tilt defocus at its own centred ``(x, z)`` is computed with
    :func:`tomomatch.conventions.defocus_at_point_um` for each hand; the template is rotated
    to every pose within ``max_angle_deg`` of the particle's pose
    (:func:`tomomatch.angles.local_rotations`), multiplied in Fourier space by that hand's
    per-tilt weight (:func:`tomomatch.weighting.tilt_series_weight`), masked and normalised
    (zero mean, unit variance under the rotated mask); and its normalised cross-correlation
    with the tomogram (mean and variance of the tomogram under the mask at each position) is
    taken at the particle's voxel and its neighbours within ``shift_voxels``. The score of a
    hand is the maximum over rotations and shifts; every hand sees the same rotations, shifts
    and data, so ``delta`` is a paired difference.

    Parameters
    ----------
    tomogram
        ``[z, y, x]`` volume.
    voxel_size_angstrom
        Voxel size of tomogram, template and mask.
    tilt_series
        :class:`tomomatch.tiltseries.TiltSeries` with defocus (excluded tilts are left out).
    template, mask
        ``[z, y, x]`` boxes of the same shape (template already with the tomogram's contrast
        convention, as for matching).
    positions_xyz
        ``(n, 3)`` particle positions as voxel indices ``(x, y, z)`` (rounded here).
    poses
        ``(n, 3, 3)`` pose matrices (template to particle).
    hands
        Hands to score (default ``(1, -1, 0)``).
    hand_mode
        ``"full"`` or ``"pytom"`` (:func:`tomomatch.conventions.defocus_offset_angstrom`).
    max_angle_deg, angle_step_deg
        Local rotation set (0 for the pose alone).
    shift_voxels
        Search radius for the position, voxels per axis (default 1: 27 positions).
    oversampling
        The template is resampled once onto a grid this many times finer (cubic B-spline,
        :func:`oversample_volume`) and every rotation then interpolates it trilinearly
        (:func:`rotate_volumes`): 2 keeps about 80 % of the high-frequency power that plain
        trilinear rotation (1) loses half of. The mask is rotated trilinearly (not at all if
        spherical).
    low_pass_angstrom, high_pass_angstrom, whiten
        Band pass and spectral whitening applied to the tomogram (whole volume, once) and the
        template, as the matching engine does (:func:`tomomatch.job.run_match`); use the
        match job's values.
    weight_options
        Extra keyword arguments for :func:`tomomatch.weighting.tilt_series_weight`
        (``ctf_mode``, ``low_pass_angstrom``, ``high_pass_angstrom``, ``per_tilt``,
        ``dose_weighting``, ``cos_weighting``, ...); the default is its default: per-tilt
        weighting with signed CTF, dose and cos weighting, no band pass.
    weight_function
        Replacement for the weight computation, ``f(centred_xyz, hand) -> rfft-grid weight``
        (tests; default the per-tilt wedge with the particle's defocus).
    progress
        Optional callable ``progress(i, n)`` called after each particle.
    device
        Torch device (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`; checked by
        :func:`tomomatch.matching.resolve_device`). The tomogram's band pass and whitening, the
        weights, the oversampled template, the mask, the rotations, FFTs, normalisations and
        correlations of every particle are computed there; the (prepared) tomogram is kept in
        host memory and only each particle's ``box + 2 shift`` region is sent. The results come
        back as numpy arrays. The same code runs on every device (on the CPU, boxes below 64^3
        run on one torch thread).

    Returns
    -------
    RescoreResult
    """
    import torch

    from .angles import local_rotations
    from .conventions import check_hand, index_to_centered_angstrom
    from .matching import resolve_device

    dev = resolve_device(device)
    hands = tuple(check_hand(h) for h in hands)
    tomo = np.asarray(tomogram, dtype=np.float32)
    tmpl = np.asarray(template, dtype=np.float32)
    msk = np.asarray(mask, dtype=np.float32)
    if tmpl.shape != msk.shape:
        raise InputError(f"template shape {tmpl.shape} differs from mask shape {msk.shape}", field="mask")
    box = tmpl.shape
    pos = np.asarray(positions_xyz, dtype=float).reshape(-1, 3)
    mats = np.asarray(poses, dtype=float).reshape(-1, 3, 3)
    if len(mats) != len(pos):
        raise ValueError("one pose per position expected")
    shape_xyz = np.asarray(tomo.shape[::-1])
    idx = np.rint(pos).astype(int)
    outside = np.any((idx < 0) | (idx >= shape_xyz), axis=1)
    if np.any(outside):
        k = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"{int(outside.sum())} particle(s) lie outside the tomogram (first: voxel "
            f"{tuple(pos[k].round(1))}, tomogram x, y, z size {tuple(shape_xyz)})",
            field="coordinates",
        )
    centred = index_to_centered_angstrom(idx, tomo.shape, voxel_size_angstrom)
    ts = None
    if weight_function is None:
        if tilt_series is None or not tilt_series.has_defocus:
            raise InputError(
                "tilt metadata hold no per-tilt defocus; the hand test needs it",
                None if tilt_series is None else tilt_series.source,
                "defocus",
            )
        ts = tilt_series
    opts = dict(weight_options or {})
    if low_pass_angstrom is not None or high_pass_angstrom is not None or whiten:
        from . import preparation

        prep = preparation.prepare_tomogram(
            tomo,
            voxel_size_angstrom,
            low_pass_angstrom=low_pass_angstrom,
            high_pass_angstrom=high_pass_angstrom,
            whiten=whiten,
            tilt_angles_deg=(None if tilt_series is None else tilt_series.tilt_angles_deg[~tilt_series.excluded]),
            template_shape_zyx=box,
            device=dev,
        )
        if whiten:
            opts["whitening"] = prep.whitening[tuple(box)]
        opts["low_pass_angstrom"] = low_pass_angstrom
        opts["high_pass_angstrom"] = high_pass_angstrom
        tomo = prep.volume.cpu().numpy()
        del prep
    opts["device"] = dev

    n, nh = len(pos), len(hands)
    shifts = np.stack(np.meshgrid(*(np.arange(-shift_voxels, shift_voxels + 1),) * 3, indexing="ij"), -1).reshape(
        -1, 3
    )  # (z, y, x) order, as _windows
    scores = np.zeros((n, nh))
    best_rot = np.zeros((n, nh, 3, 3))
    best_shift = np.zeros((n, nh, 3), dtype=int)
    from .matching import is_spherical_mask, normalise_under_mask

    tmpl_fine = torch.as_tensor(oversample_volume(tmpl, oversampling), device=dev)
    msk_t = torch.as_tensor(np.array(msk), device=dev)
    spherical = is_spherical_mask(msk)
    n_rot = 0
    weight_batch = max(1, int(2**24 // (nh * np.prod(box))))  # ~64 MB of weights per batch
    vox = int(np.prod(box))
    # ~32 MB per float64 template stack on the CPU (cache); 32x that on a GPU (fewer, larger kernels)
    rot_chunk = max(1, int((2**25 if dev.type == "cpu" else 2**30) // (8 * nh * vox)))
    hand_index = torch.arange(nh, device=dev)
    # small boxes on the CPU: one torch thread is faster (no barrier per op; matters on a loaded machine)
    threads = torch.get_num_threads()
    single = dev.type == "cpu" and vox < 2**18 and threads > 1
    if single:
        torch.set_num_threads(1)
    try:
        for i in range(n):
            rots = local_rotations(mats[i], max_angle_deg, angle_step_deg) if max_angle_deg > 0 else mats[i][None]
            n_rot = len(rots)
            if weight_function is None:
                if i % weight_batch == 0:  # weights for the next batch of particles in one call
                    w_batch = _hand_weights(
                        ts, box, voxel_size_angstrom, centred[i : i + weight_batch], hands, hand_mode, opts
                    )
                w = w_batch[i % weight_batch]
            else:
                w = torch.stack([torch.as_tensor(weight_function(centred[i], h)) for h in hands])
            w = w.to(device=dev, dtype=torch.float32)
            x = _windows(tomo, idx[i][::-1], box, shift_voxels, dev)  # (S, V) float64
            x2 = x * x
            cc_parts = []
            for k0 in range(0, n_rot, rot_chunk):
                rk = rots[k0 : k0 + rot_chunk]
                nk = len(rk)
                t_rot = rotate_volumes(tmpl_fine, rk, oversampling=oversampling, out_shape_zyx=box)  # (k, z, y, x)
                m_rot = (
                    msk_t.expand(nk, *box) if spherical else rotate_volumes(msk_t, rk).clamp(0.0, 1.0)
                )  # (k, z, y, x)
                ft = torch.fft.rfftn(t_rot, dim=(-3, -2, -1))
                weighted = torch.fft.irfftn(ft[None] * w[:, None], s=box, dim=(-3, -2, -1))  # (H, k, z, y, x)
                del ft, t_rot
                # zero mean, unit variance under the rotated mask (mask-weighted), zero outside
                t_norm = normalise_under_mask(weighted.to(torch.float64), m_rot.to(torch.float64))
                t_norm = t_norm.reshape(nh, nk, -1)
                del weighted
                mk = m_rot.to(torch.float64).reshape(nk, -1)  # (k, V)
                n_m = mk.sum(-1)  # (k,)
                mean_x = x @ mk.T / n_m  # (S, k)
                var_x = x2 @ mk.T / n_m - mean_x**2
                num = torch.einsum("sv,hkv->hsk", x, t_norm)  # (H, S, k)
                cc_parts.append(num / (n_m[None, None] * torch.sqrt(var_x.clamp(min=1e-30))[None]))
                del t_norm, mk
            cc = torch.cat(cc_parts, dim=2)  # (H, S, K)
            flat = cc.reshape(nh, -1)
            best = torch.argmax(flat, dim=1)
            scores[i] = flat[hand_index, best].cpu().numpy()
            best = best.cpu()
            s_idx = (best // n_rot).numpy()
            k_idx = (best % n_rot).numpy()
            best_rot[i] = rots[k_idx]
            best_shift[i] = shifts[s_idx][:, ::-1]
            if progress is not None:
                progress(i + 1, n)
    finally:
        if single:
            torch.set_num_threads(threads)
    return RescoreResult(
        hands=hands,
        scores=scores,
        best_rotation=best_rot,
        best_shift_voxels=best_shift,
        centred_angstrom=centred,
        n_rotations=n_rot,
    )
