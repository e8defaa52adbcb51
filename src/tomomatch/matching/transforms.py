"""The fast path's transforms: the rotated template in Fourier space and its way onto a tile's grid.

:class:`FourierTemplate`
    the oversampled, gridding-corrected transform of a box, sampled at rotated frequencies.
:class:`BoxToTilePruned`
    exact transform of boxes on a tile's rfft grid by a pruned FFT (``method="fast"``).
:class:`BoxToTile`
    approximate transform by separable linear interpolation (``method="resample"``).
:class:`PairPacker`
    correlations of two boxes with the tile from one complex transform (packed pairs).

Which library runs a transform is :mod:`tomomatch.matching.fft`'s business (by the
:class:`~tomomatch.matching.EngineConfig` passed in).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import scipy.fft
import torch

from ..errors import InputError
from .config import EngineConfig
from .fft import FftwXPass, _fftw_x_pass, _rfftn, pruned_rfftn
from .volumes import place_centered

__all__ = ["FourierTemplate", "BoxToTilePruned", "BoxToTile", "PairPacker"]


class FourierTemplate:
    """Oversampled, gridding-corrected transform of a box, sampled at rotated frequencies.

    Parameters
    ----------
    box
        Real box ``[n, n, n]`` (e.g. the masked normalised template), rotation centre ``n//2``.
    oversample
        Zero-padding factor ``P / n`` (default 2).
    device
        Torch device.
    """

    def __init__(self, box, oversample: int = 2, device="cpu"):
        b = np.asarray(box.cpu().numpy() if isinstance(box, torch.Tensor) else box, np.float64)
        n = b.shape[0]
        if b.shape != (n, n, n):
            raise InputError(f"template box must be cubic, got {b.shape}", None, "template")
        p = int(scipy.fft.next_fast_len(int(math.ceil(oversample * n))))
        if p % 2:
            p += 1
        pad = np.zeros((p, p, p))
        pad[:n, :n, :n] = b
        pad = np.roll(pad, (-(n // 2),) * 3, axis=(0, 1, 2))
        # gridding correction: trilinear interpolation in Fourier space multiplies real space by
        # sinc^2(x / P) per axis; divide it out beforehand.
        x = np.fft.fftfreq(p) * p  # wrapped coordinate
        s = np.sinc(x / p) ** 2
        pad /= s[:, None, None] * s[None, :, None] * s[None, None, :]
        f = np.fft.fftshift(np.fft.fftn(pad))
        self.size = p
        self.box = n
        self.device = torch.device(device)
        # grid_sample wants channels first: (1, 2, D, H, W) = (1, 2, z, y, x)
        self.grid = torch.as_tensor(np.stack([f.real, f.imag]).astype(np.float32), device=self.device)[None]

    def sample(self, rotations: torch.Tensor, q_xyz: torch.Tensor) -> torch.Tensor:
        """Transform of the rotated box ``t(R^T x)`` at frequencies ``q`` (cycles/voxel).

        ``rotations`` ``(B, 3, 3)``, ``q_xyz`` ``(K, 3)`` -> complex ``(B, K)``.
        ``T_R(q) = T(R^T q)``; frequencies outside the oversampled grid give 0.
        """
        p = self.size
        qr = torch.matmul(q_xyz.unsqueeze(0), rotations.to(q_xyz.dtype))  # (B, K, 3) = (R^T q)^T
        # continuous index idx = q * P + P/2 ; grid_sample normalised coordinate (align_corners)
        g = (qr * p + p // 2) * (2.0 / (p - 1)) - 1.0
        out = torch.nn.functional.grid_sample(
            self.grid, g[None, :, None], mode="bilinear", padding_mode="zeros", align_corners=True
        )
        out = out[0, :, :, 0, :]  # (2, B, K)
        return torch.complex(out[0], out[1])


class BoxToTilePruned:
    """Exact transform of boxes (centre ``n // 2``) on a tile's rfft grid by a pruned FFT.

    Equal (up to float round-off) to the rfftn of the box zero-padded into the tile, but the
    x pass runs only over the ``n^2`` non-zero rows and the y pass only over the ``n``
    non-zero planes; only the z pass covers the whole grid (:func:`~tomomatch.matching.fft.pruned_rfftn`,
    by the library ``engine`` selects). The box is placed at the corner (index 0), not
    centred: the centring shift is a phase ramp ``exp(-2 pi i k c / L)`` per axis, which
    :meth:`phase` returns so the caller can fold it into the tile's transform once (it
    multiplies the conjugate of the template's transform).
    """

    corner = True

    def __init__(self, n: int, shape: Sequence[int], device="cpu", *, engine: EngineConfig):
        nz, ny, nx = (int(s) for s in shape)
        self.box, self.shape, self.device = int(n), (nz, ny, nx), torch.device(device)
        self.engine = engine

    def phase(self) -> torch.Tensor:
        """``exp(-2 pi i (kz cz/Lz + ky cy/Ly + kx cx/Lx))`` on the rfft grid, ``c = n // 2``."""
        c = self.box // 2
        nz, ny, nx = self.shape
        ph = [
            torch.exp(-2j * math.pi * c * torch.fft.fftfreq(nz, device=self.device, dtype=torch.float64)),
            torch.exp(-2j * math.pi * c * torch.fft.fftfreq(ny, device=self.device, dtype=torch.float64)),
            torch.exp(-2j * math.pi * c * torch.fft.rfftfreq(nx, device=self.device, dtype=torch.float64)),
        ]
        return (ph[0][:, None, None] * ph[1][None, :, None] * ph[2][None, None, :]).to(torch.complex64)

    def __call__(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(..., n, n, n)`` real boxes -> ``(..., nz, ny, nx // 2 + 1)`` complex transforms."""
        return pruned_rfftn(boxes, self.box, self.shape, self.engine)


class BoxToTile:
    """Approximate transform of boxes (centre ``n // 2``) on the rfft grid of a larger (tile) shape.

    The exact answer is the rfftn of the box zero-padded into the tile with its centre moved
    to index 0 (what the exact path computes, one full-size FFT per box). Here the box is
    instead zero-padded to a small cube of ``P ~ oversample * n`` voxels, divided by the
    trilinear kernel's real-space transform ``sinc^2(x / P)`` per axis (gridding correction),
    transformed, and resampled onto the tile's frequencies by separable linear interpolation
    along z, y and x. The cost per box is one small FFT plus three cheap passes, the largest
    of the size of the tile's rfft grid.
    """

    corner = False

    def __init__(self, n: int, shape: Sequence[int], oversample: int = 2, device="cpu"):
        p = int(scipy.fft.next_fast_len(int(math.ceil(oversample * n))))
        if p % 2:
            p += 1
        self.size, self.box, self.shape = p, int(n), tuple(int(s) for s in shape)
        dev = torch.device(device)
        x = np.fft.fftfreq(p) * p
        g = (np.sinc(x / p) ** 2).astype(np.float32)
        gi = torch.as_tensor(1.0 / g, device=dev)
        self.gcorr = gi[:, None, None] * gi[None, :, None] * gi[None, None, :]
        self.axes = []
        for ax, length in enumerate(self.shape):
            if ax < 2:
                idx = np.mod(np.fft.fftfreq(length) * p, p)
                i0 = np.floor(idx).astype(np.int64)
                f = idx - i0
                i1 = (i0 + 1) % p
            else:
                idx = np.fft.rfftfreq(length) * p
                i0 = np.minimum(np.floor(idx).astype(np.int64), p // 2)
                f = idx - i0
                i1 = np.minimum(i0 + 1, p // 2)
            shp = [-1 if k == ax else 1 for k in range(3)]
            self.axes.append(
                (
                    torch.as_tensor(i0, device=dev),
                    torch.as_tensor(i1, device=dev),
                    torch.as_tensor(f.astype(np.float32), device=dev).reshape(shp),
                )
            )

    def __call__(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(..., n, n, n)`` real boxes -> ``(..., nz, ny, nx // 2 + 1)`` complex transforms."""
        p = self.size
        x = place_centered(boxes, (p, p, p)) * self.gcorr
        f = _rfftn(x)
        for ax, (i0, i1, w) in enumerate(self.axes):
            d = ax - 3
            a = f.index_select(d, i0)
            f = a + (f.index_select(d, i1) - a) * w
        return f


class PairPacker:
    """Correlations of *two* real boxes with a real tile from one complex FFT pair.

    Why: on a GPU the per-rotation cost is memory traffic, not arithmetic. The real-to-complex
    path needs, per rotation, a pruned forward pass, a product and an inverse c2r transform
    (whose input cuFFT destroys, so torch copies it first). Packing two rotated boxes ``a``
    and ``b`` into ``q = a + i b`` gives both correlations from one complex transform of the
    same size, with no copy: because the tile ``v`` is real, the inverse transform of
    ``Q(-k) V(k)`` is ``corr_a + i corr_b`` (the template/tile products of the two parts do
    not mix). ``Q(-k)`` is the forward transform of the flipped box ``q(-x)``; the box sits in
    the grid's corner, and the flip and the centring (rotation centre ``c = n // 2``) become
    the phase ramp ``exp(2 pi i k (n - 1 - c) / L)`` per axis (:meth:`phase`), folded into the
    tile's transform once.

    The forward transform is pruned: z pass over the box's ``n^2`` columns, y pass over ``n``
    columns of each z plane, and one full pass along x (the contiguous axis) from a persistent
    zero-padded buffer (only its first ``n`` x entries are ever written). On the CPU, grids of
    at least ``engine.fftw_min_voxels`` voxels do that x pass by an FFTW plan
    (:class:`~tomomatch.matching.fft.FftwXPass`).
    """

    def __init__(self, n: int, shape: Sequence[int], device="cpu", *, engine: EngineConfig):
        self.box, self.shape, self.device = int(n), tuple(int(s) for s in shape), torch.device(device)
        self.engine = engine
        self._buf: torch.Tensor | None = None
        self._fftw: FftwXPass | None = None  # when FFTW does the x pass

    def _use_fftw(self) -> bool:
        return _fftw_x_pass(self.device, int(np.prod(self.shape)), self.engine)

    def phase(self) -> torch.Tensor:
        """``exp(2 pi i sum_axes f_axis (n - 1 - c))`` on the full FFT grid (``f`` = fftfreq)."""
        shift = self.box - 1 - self.box // 2
        ph = [
            torch.exp(2j * math.pi * shift * torch.fft.fftfreq(m, device=self.device, dtype=torch.float64))
            for m in self.shape
        ]
        return (ph[0][:, None, None] * ph[1][None, :, None] * ph[2][None, None, :]).to(torch.complex64)

    def correlations(self, boxes: torch.Tensor, v_packed: torch.Tensor) -> torch.Tensor:
        """Complex correlation maps of pairs of boxes on the grid, ``(P, nz, ny, nx)``.

        ``boxes`` ``(B, n, n, n)`` real, ``P = ceil(B / 2)``; ``v_packed`` the tile's full
        transform times :meth:`phase`. Map ``p``'s real part is box ``2p``'s correlation, its
        imaginary part box ``2p + 1``'s (zero up to round-off when ``B`` is odd and
        ``2p + 1 == B``). All pairs go through each transform together: on a GPU a 3-tile
        search was bound by kernel launches when pairs were transformed one at a time.
        """
        nz, ny, nx = self.shape
        n = self.box
        if boxes.shape[0] % 2:
            boxes = torch.cat([boxes, boxes.new_zeros((1,) + tuple(boxes.shape[1:]))])
        f = torch.flip(boxes, dims=(-3, -2, -1))
        q = torch.complex(f[0::2].contiguous(), f[1::2].contiguous())
        q = torch.fft.fft(q, n=nz, dim=-3)
        q = torch.fft.fft(q, n=ny, dim=-2)  # (P, nz, ny, n)
        pairs = q.shape[0]
        if self._use_fftw():
            # the plan covers the whole buffer: a shorter (last) batch transforms stale pairs too
            if self._fftw is None:
                self._fftw = FftwXPass(self.shape)
            src, dst = self._fftw.buffers(pairs)
            src[:pairs, ..., :n] = q  # the rest of the buffer stays zero: out-of-place transform
            del q
            self._fftw.execute()
            spec = dst[:pairs]
        else:
            if self._buf is None or self._buf.shape[0] < pairs:
                self._buf = torch.zeros((pairs,) + self.shape, dtype=torch.complex64, device=self.device)
            buf = self._buf[:pairs]
            buf[..., :n] = q  # the rest of the buffer stays zero: the transforms are out of place
            del q
            spec = torch.fft.fft(buf, dim=-1)  # (torch's out= variants copy: no gain)
        spec.mul_(v_packed)
        return torch.fft.ifftn(spec, dim=(-3, -2, -1))
