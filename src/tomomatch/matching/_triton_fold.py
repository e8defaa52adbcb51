"""One GPU kernel that folds a batch of packed rotation pairs into the running maximum.

Why: on an H200 at the seed's sizes the score, statistics and running-maximum passes took about
as long as the transforms when run as separate torch kernels (each re-reads the 27 M-voxel
maps), and ``torch.compile`` fused them but cost ~0.4 ms of host time per call. This kernel
reads each pair's correlation map once, the per-voxel ``1 / (W sigma)``, the running maximum and
its index once per *batch*, and writes per-block partial sums for the statistics (summed in
float64 afterwards, in a fixed order, so the result is deterministic).

The numbers are those of :func:`tomomatch.matching.fold.fold_pair` applied pair after pair: the
same float32 products, the same strict ``>`` (ties keep the lower rotation index). Runs on CUDA
with Triton (shipped with torch's CUDA wheels); ``TRITON_INTERPRET=1`` runs it on the CPU, which
is how the tests check it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _fold_pairs_kernel(
    corr_ptr,
    inv_ptr,
    best_ptr,
    index_ptr,
    partial_ptr,
    n_vox,
    uy,
    ux,
    z0,
    y0,
    x0,
    s_p,
    s_z,
    s_y,
    s_x,
    n_pairs,
    n_valid,
    start,
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_vox
    x = offs % ux
    t = offs // ux
    y = t % uy
    z = t // uy
    base = (z + z0).to(tl.int64) * s_z + (y + y0).to(tl.int64) * s_y + (x + x0).to(tl.int64) * s_x
    inv = tl.load(inv_ptr + offs, mask=mask, other=0.0)
    m = tl.load(best_ptr + offs, mask=mask, other=0.0)
    idx = tl.load(index_ptr + offs, mask=mask, other=0)
    row = partial_ptr + pid.to(tl.int64) * (4 * n_pairs)
    ptr = corr_ptr + base  # 64-bit pointer, advanced by one pair per iteration
    for p in range(0, n_pairs):
        a = tl.load(ptr, mask=mask, other=0.0) * inv
        take = a > m
        m = tl.where(take, a, m)
        idx = tl.where(take, start + 2 * p, idx)
        tl.store(row + 4 * p, tl.sum(a, axis=0))
        tl.store(row + 4 * p + 2, tl.sum(a * a, axis=0))
        if 2 * p + 1 < n_valid:
            b = tl.load(ptr + 1, mask=mask, other=0.0) * inv
            take = b > m
            m = tl.where(take, b, m)
            idx = tl.where(take, start + 2 * p + 1, idx)
            tl.store(row + 4 * p + 1, tl.sum(b, axis=0))
            tl.store(row + 4 * p + 3, tl.sum(b * b, axis=0))
        ptr += s_p
    tl.store(best_ptr + offs, m, mask=mask)
    tl.store(index_ptr + offs, idx, mask=mask)


def fold_pairs(
    corr: torch.Tensor,
    unique: tuple[slice, slice, slice],
    inv_norm: torch.Tensor,
    best: torch.Tensor,
    index: torch.Tensor,
    start: int,
    n_valid: int,
) -> torch.Tensor:
    """Fold ``n_valid`` rotations (pairs of ``corr``) into ``best``/``index``, in place.

    Parameters
    ----------
    corr
        Complex ``(P, nz, ny, nx)`` contiguous: pair ``p``'s real part is rotation
        ``start + 2p``, its imaginary part rotation ``start + 2p + 1``.
    unique
        The tile's unique region (slices into the grid); ``inv_norm``, ``best`` (float32) and
        ``index`` (int32) are contiguous over it.
    n_valid
        Rotations in the batch (``2P`` or ``2P - 1``).

    Returns
    -------
    torch.Tensor
        float64 ``(n_valid, 2)``: per rotation the sum and the sum of squares of its scores.
    """
    if not (
        corr.is_contiguous()
        and inv_norm.is_contiguous()
        and best.is_contiguous()
        and index.is_contiguous()
        and index.dtype == torch.int32
        and best.dtype == torch.float32
    ):
        raise ValueError("fold_pairs needs contiguous float32 best/inv_norm and int32 index")
    real = torch.view_as_real(corr)  # (P, nz, ny, nx, 2) float32
    n_pairs = int(corr.shape[0])
    uz, uy, ux = (s.stop - s.start for s in unique)
    n_vox = uz * uy * ux
    n_blocks = triton.cdiv(n_vox, BLOCK)
    partial = torch.zeros((n_blocks, n_pairs, 4), dtype=torch.float32, device=corr.device)
    sp, sz, sy, sx, _ = real.stride()
    _fold_pairs_kernel[(n_blocks,)](
        real,
        inv_norm,
        best,
        index,
        partial,
        n_vox,
        uy,
        ux,
        unique[0].start,
        unique[1].start,
        unique[2].start,
        sp,
        sz,
        sy,
        sx,
        n_pairs,
        int(n_valid),
        int(start),
        BLOCK_SIZE=BLOCK,
    )
    sums = partial.double().sum(0)  # (P, 4): sum a, sum b, sum a^2, sum b^2
    per_rot = torch.stack([sums[:, [0, 1]].reshape(-1), sums[:, [2, 3]].reshape(-1)], dim=1)
    return per_rot[:n_valid]
