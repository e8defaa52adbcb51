"""Tomogram preparation shared by the matching engine and ``hand``'s re-scoring.

Both must see the same filtered tomogram, or ``hand`` would re-score candidates on other data
than they were found on: the volume is normalised (zero mean, unit standard deviation), the
whitening filter (if asked for) is estimated once from that unfiltered volume on the CPU (CUDA's
``index_add_`` is not deterministic) for the padded whole-volume grid and the template box, and
the band pass times whitening is applied to the whole volume before any tiling
(:func:`tomomatch.matching.filter_volume`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

__all__ = ["PreparedTomogram", "prepare_tomogram"]


@dataclass
class PreparedTomogram:
    """The normalised, filtered tomogram and the whitening filters by rfft grid shape."""

    volume: torch.Tensor
    whitening: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)


def prepare_tomogram(
    volume,
    voxel_size_angstrom: float,
    *,
    low_pass_angstrom: float | None = None,
    high_pass_angstrom: float | None = None,
    whiten: bool = False,
    tilt_angles_deg=None,
    template_shape_zyx: Sequence[int] | None = None,
    device="cpu",
) -> PreparedTomogram:
    """Normalise and filter a tomogram as the engine does.

    Parameters
    ----------
    volume
        ``[z, y, x]`` tomogram (numpy or torch).
    low_pass_angstrom, high_pass_angstrom, whiten
        The job's band pass and whitening (:class:`tomomatch.options.WeightingOptions`).
    tilt_angles_deg
        Included tilt angles: the whitening filter averages only the sampled Fourier voxels.
    template_shape_zyx
        Template box: a whitening filter is also made on its grid (for the template weight).
    device
        Where the volume is put.
    """
    from .matching import fast_fft_shape, filter_volume
    from .weighting import bandpass, whitening_filter

    dev = torch.device(device)
    vol_t = torch.as_tensor(np.array(volume, np.float32), device=dev)
    vol_t = (vol_t - vol_t.mean()) / vol_t.std().clamp_min(1e-30)
    white: dict[tuple[int, ...], torch.Tensor] = {}
    if whiten:  # estimated once from the unfiltered tomogram, for both grids used
        grids = {tuple(fast_fft_shape(vol_t.shape))}
        if template_shape_zyx is not None:
            grids.add(tuple(int(s) for s in template_shape_zyx))
        vol_cpu = vol_t.cpu()
        for shape in grids:
            white[shape] = whitening_filter(vol_cpu, voxel_size_angstrom, shape, tilt_angles_deg=tilt_angles_deg)
        del vol_cpu
    if low_pass_angstrom is not None or high_pass_angstrom is not None or whiten:

        def tomogram_weight(shape):
            w = bandpass(shape, voxel_size_angstrom, low_pass_angstrom, high_pass_angstrom, device=dev)
            wh = white.get(tuple(shape))
            return w if wh is None else w * wh.to(dev)

        vol_t = filter_volume(vol_t, tomogram_weight)
    return PreparedTomogram(vol_t, white)
