"""The correlation engine: Roseman's fast local correlation (FLCF) over a set of rotations.

Pure functions over arrays/tensors; no file I/O (that is :mod:`tomomatch.job`).

Score
    For a tile ``V`` (already filtered by the tomogram-side filter, e.g. band pass), a mask ``M``
    (sum ``W``) and a template ``T`` normalised under the mask (``T^ = (T - mu_M) / s_M``,
    ``T~ = M T^``), the score of rotation ``R`` at voxel ``r`` is the mask-weighted Pearson
    correlation

        ``FLCF_R(r) = sum_u T~_R(u) V(r + u) / (W_R sigma_V,R(r))``

    with ``sigma_V,R(r)^2 = (M_R * V^2)(r)/W_R - ((M_R * V)(r)/W_R)^2`` the local variance of
    the tile under the rotated mask (FFT convolutions). ``u`` are offsets from the template's
    rotation centre ``n // 2`` (:mod:`tomomatch.conventions`). For a spherical mask ``M_R = M``
    and ``sigma_V`` is computed once per tile. The output per voxel is the maximum over
    rotations and the index of the first rotation reaching it.

Weights
    The Fourier weight (missing wedge, per-tilt CTF, dose, band pass) belongs to the tomogram,
    so it is defined in the *tomogram frame* and multiplies the template *after* rotation.
    It is passed as a callable ``weight(shape_zyx) -> tensor (nz, ny, nx//2+1)`` evaluated on
    whatever grid is used.

Three paths (``method=``), one order of operations
    All paths compute, for each rotation ``R``: ``T~`` (the template normalised under the mask,
    zero outside) rotated about ``n // 2``, multiplied by the weight on the template box's
    rfft grid, multiplied by the (rotated) mask and normalised under it (zero mean, unit
    variance inside the mask), correlated with the tile and divided by ``W_R sigma_V,R``. They
    differ only in how the rotation is interpolated and how the box reaches the tile's grid:

    ``"exact"`` (reference): rotation in real space (prefiltered cubic B-spline; linear for a
    non-spherical mask), box pasted into the tile, full forward FFT, multiply, inverse FFT.

    ``"fast"`` (default): the rotation is done in Fourier space -- the transform of ``T~`` is
    computed once on a box zero-padded ``oversample`` times (rotation centre at index 0, so no
    phase ramp; divided beforehand by the trilinear kernel's ``sinc^2``, the gridding
    correction) and sampled by trilinear interpolation at ``R^T q`` for the frequencies ``q``
    of the template box's own rfft grid (``|q| <= 1/2``), in batches; the weight multiplies it
    there, a small inverse FFT gives the rotated weighted template on the box, which is masked
    and normalised exactly as above. The box then reaches the tile's rfft grid by an *exact*
    pruned FFT (:class:`BoxToTilePruned`: only the z pass covers the whole grid; the centring
    is a phase ramp folded into the tile's transform once), and one full-size inverse FFT per
    rotation gives the correlation. Rotations are batched. The answer equals the exact path's
    up to the rotation interpolation (peak scores within ~0.5 %, tests), and it is independent
    of the tile's grid, so split and unsplit runs agree to float round-off.

    With a spherical mask the fast path packs two rotations into one complex transform
    (:class:`PairPacker`) and folds each batch into the running maximum with one fused kernel
    where available (:func:`tomomatch.matching.fold._pair_folder`: Triton on CUDA,
    ``torch.compile`` on big CPU tiles; :func:`~tomomatch.matching.fold.fold_pair` is the
    reference), with the same numbers as the unpacked path.

    ``"resample"``: like ``"fast"``, but the box reaches the tile grid by separable linear
    interpolation of its 2x-oversampled, gridding-corrected transform (:class:`BoxToTile`)
    instead of the pruned FFT: cheaper (three light passes instead of about half a full FFT)
    but approximate (about 1 % on peak scores; the error depends on the tile's grid, so split
    and unsplit runs differ at that level).

Borders
    Correlations are circular on the padded tile (fast FFT size). Voxels closer than half a
    template box to a face of the tomogram see zero padding/wrapped data there, as in pytom;
    inside, tiles reproduce an unsplit run (see :mod:`tomomatch.tiles`).

Modules
    :mod:`~tomomatch.matching.config`
        :class:`EngineConfig` (the ``TOMOMATCH_*`` switches, read once and passed down) and
        :func:`configure_allocator` (huge pages, where the engine starts).
    :mod:`~tomomatch.matching.volumes`
        box and volume helpers: devices, normalisation under a mask, placement, rotation, mask
        symmetry, the phase-randomised template, the tomogram filter, the local sigma.
    :mod:`~tomomatch.matching.transforms`
        the fast path's transforms: :class:`FourierTemplate`, :class:`BoxToTilePruned`,
        :class:`BoxToTile`, :class:`PairPacker`.
    :mod:`~tomomatch.matching.fft`
        FFT back-ends (torch, pyFFTW, scipy.fft), grid sizes, thread rules and plan caches.
    :mod:`~tomomatch.matching.fold`
        folding scores into the running maximum: the reference, the fused kernels
        (``torch.compile``, Triton in :mod:`~tomomatch.matching._triton_fold`) and their dispatch.
    :mod:`~tomomatch.matching.correlator`
        :class:`TileCorrelator`, :class:`TileState`, :func:`match_volume`,
        :func:`engine_description`.

Configuration
    Every environment switch of the engine is a field of :class:`EngineConfig`, read from the
    environment once at an entry point (:func:`match_volume`, a :class:`TileCorrelator` or
    :func:`engine_description` given no ``engine``, :func:`tomomatch.job.plan_match`) and passed
    down explicitly; nothing below reads ``os.environ``.
"""

from __future__ import annotations

from .config import EngineConfig, configure_allocator
from .correlator import MatchResult, TileCorrelator, TileState, engine_description, match_volume
from .fft import fast_fft_shape, fft_backend
from .fft import grid_shape as grid_shape
from .fold import fold_pair as fold_pair
from .transforms import BoxToTile as BoxToTile
from .transforms import BoxToTilePruned as BoxToTilePruned
from .transforms import FourierTemplate as FourierTemplate
from .transforms import PairPacker as PairPacker
from .volumes import (
    WeightFn,
    filter_volume,
    is_spherical_mask,
    local_sigma,
    normalise_under_mask,
    phase_randomised_template,
    place_centered,
    parse_devices,
    resolve_device,
    rotate_volume,
)

# What a user calls. The building blocks re-exported above ("X as X": grid_shape, fold_pair and
# the transforms) stay importable from here, as before the split; private names live in their
# modules only (tomomatch.matching.fft, .fold, ...).
__all__ = [
    "EngineConfig",
    "configure_allocator",
    "WeightFn",
    "parse_devices",
    "resolve_device",
    "match_volume",
    "MatchResult",
    "TileCorrelator",
    "TileState",
    "engine_description",
    "fft_backend",
    "fast_fft_shape",
    "filter_volume",
    "normalise_under_mask",
    "place_centered",
    "rotate_volume",
    "is_spherical_mask",
    "phase_randomised_template",
    "local_sigma",
]
