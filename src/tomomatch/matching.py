"""Core correlation: Roseman's fast local correlation (FLCF) over a set of rotations.

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
    where available (:func:`_pair_folder`: Triton on CUDA, ``torch.compile`` on big CPU tiles;
    :func:`fold_pair` is the reference), with the same numbers as the unpacked path.

    ``"resample"``: like ``"fast"``, but the box reaches the tile grid by separable linear
    interpolation of its 2x-oversampled, gridding-corrected transform (:class:`BoxToTile`)
    instead of the pruned FFT: cheaper (three light passes instead of about half a full FFT)
    but approximate (about 1 % on peak scores; the error depends on the tile's grid, so split
    and unsplit runs differ at that level).

Borders
    Correlations are circular on the padded tile (fast FFT size). Voxels closer than half a
    template box to a face of the tomogram see zero padding/wrapped data there, as in pytom;
    inside, tiles reproduce an unsplit run (see :mod:`tomomatch.tiles`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import scipy.fft
import scipy.ndimage
import torch

from .errors import InputError

__all__ = [
    "WeightFn",
    "fast_fft_shape",
    "resolve_device",
    "normalise_under_mask",
    "place_centered",
    "rotate_volume",
    "is_spherical_mask",
    "phase_randomised_template",
    "filter_volume",
    "local_sigma",
    "FourierTemplate",
    "BoxToTilePruned",
    "BoxToTile",
    "PairPacker",
    "engine_description",
    "TileState",
    "TileCorrelator",
    "match_volume",
    "MatchResult",
    "fft_backend",
]

WeightFn = Callable[[tuple[int, int, int]], torch.Tensor]


# --------------------------------------------------------------------------- helpers


def fast_fft_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Smallest 5-smooth (2, 3, 5) sizes ``>= shape`` per axis (fast for pocketfft and cuFFT)."""
    return tuple(int(scipy.fft.next_fast_len(int(n), real=True)) for n in shape)


def _cufft_friendly_len(m: int) -> int:
    """Smallest ``n >= m`` of the form ``2^a 3^b 5^c`` with ``b <= 2``, ``c <= 1``.

    Why: cuFFT runs such lengths in one kernel per axis where some 5-smooth lengths (75 =
    3 x 5^2) take two passes over the whole grid (measured on an H200: the z pass of
    75 x 720 x 512 took 0.25 ms in two kernels). Used on CUDA only with
    ``TOMOMATCH_FFT_SIZES=cuda`` (benchmarks/fft_sizes_cuda.py).
    """
    n = max(int(m), 1)
    while True:
        k = n
        while k % 2 == 0:
            k //= 2
        if k in (1, 3, 5, 9, 15, 45):
            return n
        n += 1


def grid_shape(data_shape: Sequence[int], device="cpu") -> tuple[int, ...]:
    """FFT grid of a tile: :func:`fast_fft_shape`, or on CUDA with ``TOMOMATCH_FFT_SIZES=cuda``
    :func:`_cufft_friendly_len` per axis."""
    if torch.device(device).type == "cuda" and os.environ.get("TOMOMATCH_FFT_SIZES") == "cuda":
        return tuple(_cufft_friendly_len(int(n)) for n in data_shape)
    return fast_fft_shape(data_shape)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> torch device; InputError if CUDA is absent."""
    name = "cpu" if device is None else str(device)
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}; expected cpu, cuda or cuda:N", None, "--device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} requested but no CUDA device is available", None, "--device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA "
                             "device(s) exist", None, "--device")
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {name!r}; expected cpu, cuda or cuda:N", None, "--device")
    return dev


def _rfftn(x: torch.Tensor, s=None, dim=(-3, -2, -1)) -> torch.Tensor:
    """rfftn; on the CPU through scipy.fft (pocketfft, threaded), zero-copy via numpy."""
    if x.device.type == "cpu":
        out = scipy.fft.rfftn(x.numpy(), s=s, axes=dim, workers=_fft_threads(x.numel()))
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.complex64))
    return torch.fft.rfftn(x, s=s, dim=dim)


try:  # a dependency, but keep working where its wheel is missing: FFTW beats pocketfft and MKL here
    import pyfftw as _pyfftw
except ImportError:  # pragma: no cover - depends on the environment
    _pyfftw = None

_FFTW_PLANS: dict = {}


_MIN_THREADED_FFT = 1 << 22


def _fft_threads(n_elements: int) -> int:
    """Threads for one CPU FFT: 1 below ~4 M elements (thread start-up and barriers cost more
    than they save there, badly so on a loaded machine), else torch's thread count."""
    return 1 if n_elements < _MIN_THREADED_FFT else max(1, torch.get_num_threads())


def fft_backend(device="cpu") -> str:
    """Library doing the per-rotation inverse FFTs on ``device``.

    On the CPU: pyFFTW when installed (``TOMOMATCH_FFTW=0`` turns it off), else scipy.fft
    (pocketfft). Plans are made per volume shape (FFTW_ESTIMATE, no batching: FFTW's batched
    plans of small odd sizes measured much slower here).
    """
    if torch.device(device).type != "cpu":
        return "torch"
    return "pyfftw" if (_pyfftw is not None and os.environ.get("TOMOMATCH_FFTW", "1") != "0") else "scipy"


def _irfftn_scratch(x: torch.Tensor, s) -> torch.Tensor:
    """irfftn over the last three axes for the hot loop; ``x`` ``(..., nz, ny, nx//2+1)``.

    May destroy ``x``. With pyFFTW the result is a fresh tensor per call (one plan per shape,
    executed once per leading index).
    """
    if fft_backend(x.device) != "pyfftw":
        return _irfftn(x, s)
    s = tuple(int(v) for v in s)
    threads = _fft_threads(int(np.prod(s)))
    key = (tuple(x.shape[-3:]), s, threads)
    plan = _FFTW_PLANS.get(key)
    if plan is None:
        if len(_FFTW_PLANS) > 16:
            _FFTW_PLANS.clear()
        inp = _pyfftw.empty_aligned(tuple(x.shape[-3:]), dtype="complex64")
        out = _pyfftw.empty_aligned(s, dtype="float32")
        plan = _pyfftw.FFTW(inp, out, axes=(0, 1, 2), direction="FFTW_BACKWARD", threads=threads,
                            flags=("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT"))
        _FFTW_PLANS[key] = plan
    lead = tuple(x.shape[:-3])
    xs = x.reshape((-1,) + tuple(x.shape[-3:]))
    res = torch.empty((xs.shape[0],) + s, dtype=torch.float32)
    scale = 1.0 / float(np.prod(s))
    for i in range(xs.shape[0]):
        plan.input_array[...] = xs[i].numpy()
        plan.execute()
        torch.mul(torch.from_numpy(plan.output_array), scale, out=res[i])
    return res.reshape(lead + s)


def _irfftn(x: torch.Tensor, s, dim=(-3, -2, -1)) -> torch.Tensor:
    """irfftn counterpart of :func:`_rfftn` (may overwrite its input on the CPU)."""
    if x.device.type == "cpu":
        out = scipy.fft.irfftn(x.numpy(), s=s, axes=dim, workers=_fft_threads(x.numel()),
                               overwrite_x=True)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    return torch.fft.irfftn(x, s=s, dim=dim)


def _as_tensor(x, device, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    a = np.asarray(x)
    if not a.flags.writeable:
        a = a.copy()
    return torch.as_tensor(a, dtype=dtype, device=device)


def normalise_under_mask(template, mask) -> torch.Tensor:
    """``M * (T - mu) / s`` with ``mu, s`` the mask-weighted mean and standard deviation.

    Works for soft masks (weights ``M``): ``sum M T^ = 0`` and ``sum M T^2 = sum M`` for
    ``T^ = (T - mu) / s``. Zero outside the mask. Arrays/tensors ``[z, y, x]`` (or batched
    ``[..., z, y, x]``).
    """
    t = template if isinstance(template, torch.Tensor) else torch.as_tensor(np.asarray(template, np.float32))
    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask, np.float32))
    # two-pass in the input's precision (float32 boxes are small: the sums are accurate)
    m = m.to(t.dtype)
    dims = (-3, -2, -1)
    w = m.sum(dim=dims, keepdim=True)
    mu = (m * t).sum(dim=dims, keepdim=True) / w
    d = t - mu
    var = (m * d * d).sum(dim=dims, keepdim=True) / w
    if t.ndim == 3 and not bool(var.reshape(-1)[0] > 0):
        raise InputError("template is constant under the mask; cannot normalise", None, "template")
    return m * d * torch.rsqrt(var.clamp_min(torch.finfo(t.dtype).tiny))


def place_centered(box: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad a box ``[..., n, n, n]`` to ``shape`` with its centre ``n // 2`` moved to index 0.

    The result is the box "wrapped" around the origin, ready for circular correlation.
    """
    n = box.shape[-3:]
    pad = []
    for s, k in zip(reversed(tuple(shape)), reversed(n)):
        if k > s:
            raise ValueError(f"box {tuple(n)} does not fit into {tuple(shape)}")
        pad += [0, s - k]
    out = torch.nn.functional.pad(box, pad)
    return torch.roll(out, shifts=tuple(-(k // 2) for k in n), dims=(-3, -2, -1))


def _zyx_affine(rotation: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """scipy ``affine_transform`` matrix/offset for ``out(x) = in(R^T (x - c) + c)``, zyx order."""
    rt = np.asarray(rotation, float).T[::-1, ::-1]
    c = np.array([k // 2 for k in shape], float)
    return rt, c - rt @ c


def rotate_volume(volume, rotation, order: int = 3) -> np.ndarray:
    """Rotate a box about its centre ``n // 2``: ``out(x) = in(R^T (x - c) + c)`` (numpy).

    ``rotation`` is a pose matrix acting on ``(x, y, z)`` (:mod:`tomomatch.conventions`);
    ``order`` is the spline order (3: prefiltered cubic B-spline; 1: trilinear). Outside is 0.
    """
    v = np.asarray(volume, dtype=np.float64)
    mat, off = _zyx_affine(rotation, v.shape)
    return scipy.ndimage.affine_transform(v, mat, offset=off, order=order, mode="constant", cval=0.0)


def is_spherical_mask(mask, tol: float = 1e-3) -> bool:
    """True when the mask is (numerically) invariant under rotation about its centre."""
    try:  # prefer the shared implementation when present
        from .mask import is_spherical  # type: ignore
        return bool(is_spherical(np.asarray(mask)))
    except Exception:
        pass
    m = np.asarray(mask, dtype=np.float64)
    scale = float(np.abs(m).max()) or 1.0
    rng = np.random.default_rng(0)
    from scipy.spatial.transform import Rotation
    for r in Rotation.random(3, random_state=rng).as_matrix():
        if np.abs(rotate_volume(m, r, order=1) - m).max() > 0.25 * scale:
            return False
    # finer test: values depend on radius only
    zz, yy, xx = np.indices(m.shape)
    c = [k // 2 for k in m.shape]
    r = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    rb = np.round(r * 4).astype(int)
    sums = np.bincount(rb.ravel(), m.ravel())
    cnt = np.bincount(rb.ravel())
    mean = sums / np.maximum(cnt, 1)
    return bool(np.abs(m - mean[rb]).max() <= tol * scale + 0.05 * scale)


def phase_randomised_template(template, mask, seed: int = 0, iterations: int = 5) -> np.ndarray:
    """A copy of ``mask * template`` with the same amplitude spectrum and random phases.

    Random Hermitian phases come from the rFFT of seeded Gaussian noise; a few alternating
    projections (amplitudes <-> support of the mask) keep it inside the mask. Deterministic
    for a given ``seed``. Returned unnormalised (the caller normalises under the mask).
    """
    t = np.asarray(template, np.float64) * np.asarray(mask, np.float64)
    m = np.asarray(mask, np.float64)
    amp = np.abs(np.fft.rfftn(t))
    rng = np.random.default_rng(seed)
    phase = np.exp(1j * np.angle(np.fft.rfftn(rng.standard_normal(t.shape))))
    x = np.fft.irfftn(amp * phase, s=t.shape, axes=(0, 1, 2))
    for _ in range(iterations):
        x = x * m
        f = np.fft.rfftn(x)
        x = np.fft.irfftn(amp * np.exp(1j * np.angle(f)), s=t.shape, axes=(0, 1, 2))
    x = x * m
    if np.sum(x) * np.sum(t) < 0:
        x = -x
    return x.astype(np.float32)


def filter_volume(volume: torch.Tensor, weight: WeightFn | None) -> torch.Tensor:
    """Multiply a whole volume's transform by ``weight`` on its fast-size padded grid.

    Used for the tomogram-side filter (band pass, whitening) *before* tiling, so that tiles
    see the same filtered data as an unsplit run.
    """
    if weight is None:
        return volume
    shape = tuple(volume.shape)
    padded = fast_fft_shape(shape)
    f = _rfftn(volume, s=padded)
    f = f * weight(padded).to(f.device)
    out = _irfftn(f, s=padded)
    return out[: shape[0], : shape[1], : shape[2]].clone()


def _rfft_grid(shape: Sequence[int], device) -> torch.Tensor:
    """Frequencies (cycles/voxel) of the rfft grid of ``shape``: tensor ``(nz, ny, nx//2+1, 3)``
    holding ``(qx, qy, qz)``."""
    nz, ny, nx = shape
    qz = torch.fft.fftfreq(nz, device=device)
    qy = torch.fft.fftfreq(ny, device=device)
    qx = torch.fft.rfftfreq(nx, device=device)
    gz, gy, gx = torch.meshgrid(qz, qy, qx, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1)


def local_sigma(v_hat: torch.Tensor, v2_hat: torch.Tensor, mask_hat: torch.Tensor, mask_sum: float,
                shape: Sequence[int]) -> torch.Tensor:
    """Local standard deviation of a volume under a (wrapped) mask from transforms.

    ``v_hat``/``v2_hat`` are the rfft of ``V`` and ``V^2``; ``mask_hat`` the rfft of the mask
    placed with its centre at index 0. Returns ``sigma(r)`` (0 where the variance is not
    positive within float32 round-off).
    """
    mu = _irfftn(torch.conj(mask_hat) * v_hat, s=tuple(shape)) / mask_sum
    m2 = _irfftn(torch.conj(mask_hat) * v2_hat, s=tuple(shape)) / mask_sum
    var = m2 - mu * mu
    tiny = 1e-5 * float(torch.clamp(m2.abs().max(), min=1e-30))
    var = torch.where(var > tiny, var, torch.zeros_like(var))
    return torch.sqrt(var)


# --------------------------------------------------------------------------- fast path


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
        self.grid = torch.as_tensor(np.stack([f.real, f.imag]).astype(np.float32),
                                    device=self.device)[None]

    def sample(self, rotations: torch.Tensor, q_xyz: torch.Tensor) -> torch.Tensor:
        """Transform of the rotated box ``t(R^T x)`` at frequencies ``q`` (cycles/voxel).

        ``rotations`` ``(B, 3, 3)``, ``q_xyz`` ``(K, 3)`` -> complex ``(B, K)``.
        ``T_R(q) = T(R^T q)``; frequencies outside the oversampled grid give 0.
        """
        p = self.size
        qr = torch.matmul(q_xyz.unsqueeze(0), rotations.to(q_xyz.dtype))  # (B, K, 3) = (R^T q)^T
        # continuous index idx = q * P + P/2 ; grid_sample normalised coordinate (align_corners)
        g = (qr * p + p // 2) * (2.0 / (p - 1)) - 1.0
        out = torch.nn.functional.grid_sample(self.grid, g[None, :, None], mode="bilinear",
                                              padding_mode="zeros", align_corners=True)
        out = out[0, :, :, 0, :]  # (2, B, K)
        return torch.complex(out[0], out[1])


class BoxToTilePruned:
    """Exact transform of boxes (centre ``n // 2``) on a tile's rfft grid by a pruned FFT.

    Equal (up to float round-off) to the rfftn of the box zero-padded into the tile, but the
    x pass runs only over the ``n^2`` non-zero rows and the y pass only over the ``n``
    non-zero planes; only the z pass covers the whole grid. The box is placed at the corner
    (index 0), not centred: the centring shift is a phase ramp ``exp(-2 pi i k c / L)`` per
    axis, which :meth:`phase` returns so the caller can fold it into the tile's transform
    once (it multiplies the conjugate of the template's transform).
    """

    corner = True

    def __init__(self, n: int, shape: Sequence[int], device="cpu"):
        self.box, self.shape, self.device = int(n), tuple(int(s) for s in shape), torch.device(device)

    def phase(self) -> torch.Tensor:
        """``exp(-2 pi i (kz cz/Lz + ky cy/Ly + kx cx/Lx))`` on the rfft grid, ``c = n // 2``."""
        c = self.box // 2
        nz, ny, nx = self.shape
        ph = [torch.exp(-2j * math.pi * c * torch.fft.fftfreq(nz, device=self.device, dtype=torch.float64)),
              torch.exp(-2j * math.pi * c * torch.fft.fftfreq(ny, device=self.device, dtype=torch.float64)),
              torch.exp(-2j * math.pi * c * torch.fft.rfftfreq(nx, device=self.device, dtype=torch.float64))]
        return (ph[0][:, None, None] * ph[1][None, :, None] * ph[2][None, None, :]).to(torch.complex64)

    def _fftw_plans(self):
        """Three FFTW plans over preallocated zero-padded buffers (x r2c, y c2c, z c2c)."""
        th = _fft_threads(int(np.prod(self.shape)))
        key = ("pruned", self.box, self.shape, th)
        plans = _FFTW_PLANS.get(key)
        if plans is None:
            n, (nz, ny, nx) = self.box, self.shape
            nxh = nx // 2 + 1
            fl = ("FFTW_ESTIMATE",)
            a = _pyfftw.zeros_aligned((n, n, nx), dtype="float32")
            b = _pyfftw.zeros_aligned((n, ny, nxh), dtype="complex64")
            c = _pyfftw.zeros_aligned((nz, ny, nxh), dtype="complex64")
            px = _pyfftw.FFTW(a, b[:, :n, :], axes=(2,), threads=th, flags=fl)
            py = _pyfftw.FFTW(b, b, axes=(1,), threads=th, flags=fl)
            pz = _pyfftw.FFTW(c, c, axes=(0,), threads=th, flags=fl)
            plans = (a, b, c, px, py, pz)
            _FFTW_PLANS[key] = plans
        return plans

    def __call__(self, boxes: torch.Tensor) -> torch.Tensor:
        nz, ny, nx = self.shape
        if boxes.device.type == "cpu" and fft_backend("cpu") == "pyfftw":
            n = self.box
            a, b, c, px, py, pz = self._fftw_plans()
            lead = tuple(boxes.shape[:-3])
            bx = boxes.reshape((-1, n, n, n))
            res = torch.empty((bx.shape[0], nz, ny, nx // 2 + 1), dtype=torch.complex64)
            for i in range(bx.shape[0]):
                a[:, :, :n] = bx[i].numpy()  # a[..., n:] stays 0 (r2c preserves its input)
                px.execute()                 # -> b[:, :n]
                b[:, n:] = 0
                py.execute()
                c[:n] = b
                c[n:] = 0
                pz.execute()
                res[i] = torch.from_numpy(c)
            return res.reshape(lead + tuple(res.shape[1:]))
        if boxes.device.type == "cpu":
            w = _fft_threads(int(np.prod(self.shape)))
            f = scipy.fft.rfft(boxes.numpy(), n=nx, axis=-1, workers=w)
            f = scipy.fft.fft(f, n=ny, axis=-2, workers=w, overwrite_x=True)
            f = scipy.fft.fft(f, n=nz, axis=-3, workers=w, overwrite_x=True)
            return torch.from_numpy(np.ascontiguousarray(f, dtype=np.complex64))
        f = torch.fft.rfft(boxes, n=nx, dim=-1)
        f = torch.fft.fft(f, n=ny, dim=-2)
        return torch.fft.fft(f, n=nz, dim=-3)


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
            self.axes.append((torch.as_tensor(i0, device=dev), torch.as_tensor(i1, device=dev),
                              torch.as_tensor(f.astype(np.float32), device=dev).reshape(shp)))

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


def _sums_of_squares(x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``sum x[b]^2`` per leading index ``b``: float32 dot products of ``chunk`` elements summed
    in float64, for the whole batch in one matrix product (one kernel, not one per rotation).

    Returns float64 ``(B,)`` on ``x``'s device, so the caller synchronises with the host once
    per batch (a per-rotation ``float()`` stalls a GPU every rotation).
    """
    f = x.reshape(x.shape[0], -1)
    k = f.shape[1] // chunk * chunk
    if k == f.shape[1]:  # whole rows: one matrix product for the batch, no copy
        h = f.reshape(-1, 1, chunk)
        return torch.bmm(h, h.transpose(1, 2)).reshape(f.shape[0], -1).double().sum(1)
    parts = []
    for row in f:  # row by row: f[:, :k] is not a view that reshapes without a copy
        h = row[:k].view(-1, 1, chunk)
        r = row[k:]
        parts.append(torch.bmm(h, h.transpose(1, 2)).double().sum() + torch.dot(r, r).double())
    return torch.stack(parts)


def _use_packed(device: torch.device, packed: bool | None) -> bool:
    """Whether the fast path packs rotation pairs (:class:`PairPacker`); default yes.

    Measured faster on CUDA and on the CPU (torch's FFT, case b of benchmarks/bench_match.py:
    1.9x). ``TOMOMATCH_PACKED=0|1`` overrides the default (benchmarks); an explicit
    ``packed`` wins.
    """
    if packed is not None:
        return bool(packed)
    return os.environ.get("TOMOMATCH_PACKED", "1") != "0"


def _fftw_x_pass(device: torch.device, n_voxels: int, min_voxels: int) -> bool:
    """Whether FFTW does :class:`PairPacker`'s x pass: on the CPU, with pyFFTW, for big grids."""
    return device.type == "cpu" and fft_backend("cpu") == "pyfftw" and n_voxels >= min_voxels


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
    zero-padded buffer (only its first ``n`` x entries are ever written).
    """

    #: Grids at least this large (voxels) use an FFTW plan for the x pass on the CPU
    #: (``TOMOMATCH_FFTW_MIN_VOXELS`` overrides; the resume test sets 0). One thread, FFTW vs
    #: torch: 64 x 128 x 128 1.7 vs 1.5 ms, 64 x 256 x 256 9 vs 19 ms, 75 x 720 x 240 28 vs 68 ms.
    fftw_min_voxels = int(os.environ.get("TOMOMATCH_FFTW_MIN_VOXELS", 1 << 21))

    def __init__(self, n: int, shape: Sequence[int], device="cpu"):
        self.box, self.shape, self.device = int(n), tuple(int(s) for s in shape), torch.device(device)
        self._buf: torch.Tensor | None = None
        self._fftw = None  # (plan, input buffer, output buffer) when FFTW does the x pass

    def _use_fftw(self) -> bool:
        return _fftw_x_pass(self.device, int(np.prod(self.shape)), self.fftw_min_voxels)

    def _x_pass_fftw(self, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-padded input buffer and its x transform, by an FFTW plan over both.

        Why: the full-grid x pass is a third of the CPU time per rotation, and torch's (MKL)
        single-axis transform is slow: 75 x 720 x 512 on 2 cores took 85-107 ms with torch,
        35-38 ms with an out-of-place FFTW plan (FFTW_ESTIMATE and FFTW_MEASURE alike, so the
        deterministic ESTIMATE plan: a measured plan may differ between processes and runs,
        and so would the last bits of the maps). The 3-D inverse stays with torch, which was
        the fastest there (190 ms; FFTW 247 ms).
        Returns the buffers as tensors (shared memory) for the caller to fill and to read.
        """
        if self._fftw is None or self._fftw[1].shape[0] < pairs:
            full = (pairs,) + self.shape
            src = _pyfftw.zeros_aligned(full, dtype="complex64")  # only the box's x columns are written
            dst = _pyfftw.empty_aligned(full, dtype="complex64")
            plan = _pyfftw.FFTW(src, dst, axes=(-1,), direction="FFTW_FORWARD", threads=_fft_threads(src.size),
                                flags=("FFTW_ESTIMATE",))
            self._fftw = (plan, src, dst)
        return torch.from_numpy(self._fftw[1]), torch.from_numpy(self._fftw[2])

    def phase(self) -> torch.Tensor:
        """``exp(2 pi i sum_axes f_axis (n - 1 - c))`` on the full FFT grid (``f`` = fftfreq)."""
        shift = self.box - 1 - self.box // 2
        ph = [torch.exp(2j * math.pi * shift * torch.fft.fftfreq(m, device=self.device, dtype=torch.float64))
              for m in self.shape]
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
            src, dst = self._x_pass_fftw(pairs)
            src[:pairs, ..., :n] = q  # the rest of the buffer stays zero: out-of-place transform
            del q
            self._fftw[0].execute()
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


def fold_pair(pair: torch.Tensor, inv_norm: torch.Tensor, best: torch.Tensor, index: torch.Tensor,
              first_index: torch.Tensor) -> torch.Tensor:
    """Fold one packed pair of correlation maps into the running maximum, in one pass.

    ``pair`` ``(..., 2)``: the unique region of :class:`PairPacker`'s output as real and
    imaginary parts (rotations ``first_index`` and ``first_index + 1``); ``inv_norm`` the
    per-voxel ``1 / (W sigma)``. Updates ``best``/``index`` in place exactly as two
    rotation-by-rotation strict ``>`` updates would (ties keep the lower index) and returns
    ``[sum_a, sum_b, sum_a^2, sum_b^2]`` (float64) of the two score maps.

    Written as plain tensor code so that ``torch.compile`` fuses it into one or two kernels on
    CUDA (:func:`_pair_folder`); the same function runs eagerly in the CPU tests.
    """
    a = pair[..., 0] * inv_norm
    b = pair[..., 1] * inv_norm
    a64, b64 = a.double(), b.double()
    stats = torch.stack([a64.sum(), b64.sum(), (a64 * a64).sum(), (b64 * b64).sum()])
    m = torch.maximum(a, b)
    take_b = b > a
    gt = m > best
    best.copy_(torch.where(gt, m, best))
    index.copy_(torch.where(gt, first_index + take_b.to(index.dtype), index))
    return stats


_FOLDERS: dict = {}


_FUSED_MIN_VOXELS = 1 << 22
_FUSED_DISABLED: set = set()  # device types whose fused kernel failed once in this process


def _triton_fold_pairs():
    """:func:`tomomatch._triton_fold.fold_pairs`, or None where Triton is not installed."""
    try:
        from ._triton_fold import fold_pairs
    except Exception:  # ImportError, or a Triton that cannot initialise here
        return None
    return fold_pairs


_TRITON_CHECKED: dict = {}


def _triton_self_check(fold, device: torch.device) -> bool:
    """Run the Triton fold once on a tiny random problem against :func:`fold_pair`.

    Why: the kernel is compiled on the user's GPU by the user's Triton; a version that fails to
    compile is caught by the caller, one that compiles to wrong numbers is caught here (once per
    process and device; a mismatch disables the kernel with a warning).
    """
    key = str(device)
    if key not in _TRITON_CHECKED:
        ok = False
        try:
            g = torch.Generator().manual_seed(1)
            corr = torch.complex(torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 5, 6, 7, generator=g))
            unique = (slice(1, 4), slice(0, 6), slice(2, 7))
            inv = torch.rand(3, 6, 5, generator=g)
            best, index = torch.randn(3, 6, 5, generator=g), torch.zeros((3, 6, 5), dtype=torch.int32)
            rb, ri, ref = best.clone(), index.clone(), []
            for p in range(2):
                v = fold_pair(torch.view_as_real(corr[p])[unique], inv, rb, ri, torch.tensor(5 + 2 * p, dtype=torch.int32))
                ref += [[float(v[0]), float(v[2])], [float(v[1]), float(v[3])]]
            b, i = best.to(device), index.to(device)
            stats = fold(corr.to(device), unique, inv.to(device), b, i, 5, 4).cpu()
            ok = (torch.equal(b.cpu(), rb) and torch.equal(i.cpu(), ri)
                  and torch.allclose(stats, torch.tensor(ref, dtype=torch.float64), rtol=1e-4, atol=1e-4))
            msg = "numbers differ from the reference"
        except Exception as exc:  # compile or launch failure
            msg = f"{type(exc).__name__}: {str(exc)[:200]}"
        if not ok:
            import warnings
            warnings.warn(f"Triton fold kernel disabled on {device} ({msg}); using separate kernels",
                          RuntimeWarning, stacklevel=3)
        _TRITON_CHECKED[key] = ok
    return _TRITON_CHECKED[key]


def _pair_folder(device: torch.device, n_voxels: int = 0):
    """How packed pairs are folded into the running maximum: a fused kernel, or None.

    Returns :func:`tomomatch._triton_fold.fold_pairs` (one Triton kernel per batch), the
    ``torch.compile``d :func:`fold_pair` (one kernel per pair), or None (separate torch
    kernels per batch, :func:`_update_running_max`).

    ``TOMOMATCH_FUSED``: ``0`` none; ``triton``; ``1`` the compiled fold; ``auto`` (default):
    Triton on CUDA when installed (torch's CUDA wheels ship it), the compiled fold on the CPU
    for unique regions of at least ~4 M voxels, else none. Why: the score, statistics and
    running-maximum passes cost as much as the transforms as separate kernels (CPU case b, one
    core: 0.45 of 0.78 s per rotation; 0.12 s compiled); ``torch.compile`` costs ~25 s once per
    process and, on an H200, ~0.4 ms of host time per call (small tiles became launch-bound),
    which the hand-written Triton kernel (one launch per batch) avoids. Triton runs on the CPU
    only in its interpreter (``TRITON_INTERPRET=1``, the tests). A fused kernel that fails to
    compile falls back to separate kernels with a warning (``_run``).
    """
    mode = os.environ.get("TOMOMATCH_FUSED", "auto")
    if mode == "0" or device.type in _FUSED_DISABLED:
        return None
    if mode == "triton" or (mode == "auto" and device.type == "cuda"):
        fold = _triton_fold_pairs()
        if (fold is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
                and _triton_self_check(fold, device)):
            return fold
        return None
    if mode != "1" and (device.type != "cpu" or n_voxels < _FUSED_MIN_VOXELS):
        return None
    if device.type not in _FOLDERS:
        try:
            _FOLDERS[device.type] = torch.compile(fold_pair, dynamic=False)
        except Exception:  # pragma: no cover - depends on the installation
            _FOLDERS[device.type] = None
    return _FOLDERS[device.type]


def engine_description(device, method: str, spherical: bool, n_voxels: int) -> dict:
    """What the search engine does for these settings (recorded in the job file).

    ``packed``: rotation pairs in one complex FFT; ``fold``: how scores, statistics and the
    running maximum are computed (``triton``, ``compiled`` or ``separate`` kernels);
    ``fft_sizes``: the grid-size rule; ``fft_library``: who does the CPU transforms (``torch``,
    ``torch+fftw`` when FFTW does the packed path's x pass, or the unpacked path's
    ``pyfftw``/``scipy``); plus the torch version.
    """
    dev = torch.device(device)
    packed = method == "fast" and bool(spherical) and _use_packed(dev, None)
    fold = "separate"
    if packed:
        f = _pair_folder(dev, int(n_voxels))
        fold = "separate" if f is None else ("triton" if f is _triton_fold_pairs() else "compiled")
    sizes = "cuda" if dev.type == "cuda" and os.environ.get("TOMOMATCH_FFT_SIZES") == "cuda" else "5-smooth"
    library = fft_backend(dev)
    if packed and dev.type == "cpu":
        library = "torch+fftw" if _fftw_x_pass(dev, int(n_voxels), PairPacker.fftw_min_voxels) else "torch"
    return {"packed_pairs": packed, "fold": fold, "fft_sizes": sizes, "fft_library": library,
            "torch": torch.__version__}


def _update_running_max(state: "TileState", scores: list[torch.Tensor], start: int) -> None:
    """Fold a batch of scores ``(B, ...)`` (rotations ``start ...``) into the running maximum.

    One update per batch: the batch's maximum and its first index (``torch.max`` returns the
    first maximal index), then a strict ``>`` against the state. Equal to updating rotation
    by rotation with a strict ``>``: ties keep the lower rotation index.
    """
    s = scores[0]
    if s.device.type == "cpu" or s.shape[0] == 1:
        # rotation by rotation: torch.max over the batch axis is ~10x slower on the CPU
        gt = torch.empty_like(state.best, dtype=torch.bool)
        for b in range(s.shape[0]):
            torch.gt(s[b], state.best, out=gt)
            torch.maximum(state.best, s[b], out=state.best)
            state.index.masked_fill_(gt, start + b)
    else:
        vals, arg = torch.max(s, dim=0)
        idx = arg.to(state.index.dtype).add_(start)
        gt = vals > state.best
        torch.maximum(state.best, vals, out=state.best)
        torch.where(gt, idx, state.index, out=state.index)
    if len(scores) > 1:
        torch.maximum(state.noise_best, torch.amax(scores[1], dim=0), out=state.noise_best)


@dataclass
class TileState:
    """Running state of one tile's search (what a checkpoint stores).

    ``best``/``index`` cover the tile's unique region; ``sum``/``sumsq`` are float64 sums of
    every score value searched there; ``done`` is the number of rotations processed (in order,
    the index of the next rotation). ``rotation_sums``/``rotation_sumsqs`` hold the same sums
    per rotation processed (so that partial states merge exactly in any grouping).
    """

    best: torch.Tensor
    index: torch.Tensor
    noise_best: torch.Tensor | None = None
    sum: float = 0.0
    sumsq: float = 0.0
    count: int = 0
    done: int = 0
    rotation_sums: list = field(default_factory=list)
    rotation_sumsqs: list = field(default_factory=list)

    def add_rotation_statistics(self, sums, sumsqs, n_voxels: int) -> None:
        """Accumulate per-rotation sums and sums of squares (in rotation order, float64)."""
        for rs, rq in zip(sums, sumsqs):
            self.sum += rs
            self.sumsq += rq
            self.rotation_sums.append(rs)
            self.rotation_sumsqs.append(rq)
            self.count += int(n_voxels)

    @classmethod
    def empty(cls, shape, device, random_phase: bool = False) -> "TileState":
        return cls(best=torch.full(tuple(shape), -torch.inf, device=device),
                   index=torch.full(tuple(shape), -1, dtype=torch.int32, device=device),
                   noise_best=(torch.full(tuple(shape), -torch.inf, device=device)
                               if random_phase else None))

    def to_numpy(self) -> dict:
        d = {"best": self.best.cpu().numpy(), "index": self.index.cpu().numpy(),
             "sum": np.float64(self.sum), "sumsq": np.float64(self.sumsq),
             "count": np.int64(self.count), "done": np.int64(self.done),
             "rotation_sums": np.asarray(self.rotation_sums, np.float64),
             "rotation_sumsqs": np.asarray(self.rotation_sumsqs, np.float64)}
        if self.noise_best is not None:
            d["noise_best"] = self.noise_best.cpu().numpy()
        return d

    @classmethod
    def from_numpy(cls, d, device) -> "TileState":
        nb = d["noise_best"] if "noise_best" in d else None
        return cls(best=torch.as_tensor(np.asarray(d["best"]), device=device),
                   index=torch.as_tensor(np.asarray(d["index"], np.int32), device=device),
                   noise_best=None if nb is None else torch.as_tensor(np.asarray(nb), device=device),
                   sum=float(d["sum"]), sumsq=float(d["sumsq"]), count=int(d["count"]),
                   done=int(d["done"]),
                   rotation_sums=[float(v) for v in d["rotation_sums"]] if "rotation_sums" in d else [],
                   rotation_sumsqs=[float(v) for v in d["rotation_sumsqs"]] if "rotation_sumsqs" in d else [])


class TileCorrelator:
    """FLCF of one tile against a set of rotations (fast or exact path).

    Parameters
    ----------
    tile
        Real tile ``[z, y, x]`` (filtered tomogram data; zero where outside the tomogram).
    template, mask
        Cubic boxes of the same shape. The template is normalised under the mask here.
    unique
        Slices (z, y, x) of the tile whose scores are kept (the tile's unique region).
    weight
        Tomogram-frame Fourier weight for the template (callable ``shape -> rfft-grid tensor``)
        or None.
    method
        ``"fast"``, ``"resample"`` or ``"exact"`` (module docstring).
    spherical
        Whether the mask is spherical (None: detect).
    random_phase_template
        Optional second template (e.g. :func:`phase_randomised_template`) matched alongside.
    device
        Torch device.
    oversample
        Oversampling of the fast path's template transform.
    """

    def __init__(self, tile, template, mask, unique: tuple[slice, slice, slice], *,
                 weight: WeightFn | None = None, method: str = "fast", spherical: bool | None = None,
                 random_phase_template=None, device="cpu", oversample: int = 2,
                 packed: bool | None = None):
        if method not in ("fast", "resample", "exact"):
            raise ValueError(f"method must be 'fast', 'resample' or 'exact', got {method!r}")
        dev = torch.device(device)
        self.device, self.method = dev, method
        tmpl = np.array(template, np.float32)
        msk = np.array(mask, np.float32)
        if tmpl.shape != msk.shape:
            raise InputError(f"template {tmpl.shape} and mask {msk.shape} shapes differ", None, "mask")
        n = tmpl.shape[0]
        tile_t = _as_tensor(tile, dev)
        if any(n > s for s in tile_t.shape):
            raise InputError(f"template box {n} larger than the tile {tuple(tile_t.shape)}", None, "template")
        self.box = n
        self.data_shape = tuple(tile_t.shape)
        self.shape = grid_shape(self.data_shape, dev)
        self.unique = unique
        self.weight = weight
        self.spherical = is_spherical_mask(msk) if spherical is None else bool(spherical)
        self.mask_np = msk
        self.mask_sum = float(msk.astype(np.float64).sum())
        if self.mask_sum <= 0:
            raise InputError("mask is empty (sum <= 0)", None, "mask")
        padded = torch.zeros(self.shape, device=dev)
        padded[: self.data_shape[0], : self.data_shape[1], : self.data_shape[2]] = tile_t
        self.v_hat = _rfftn(padded.clone())
        self.v2_hat = _rfftn(padded * padded)
        mask_t = _as_tensor(msk, dev)
        if self.spherical:
            m_hat = _rfftn(place_centered(mask_t, self.shape))
            sigma = local_sigma(self.v_hat, self.v2_hat, m_hat, self.mask_sum, self.shape)
            self.inv_norm = self._inv(sigma, self.mask_sum)[unique].contiguous()
        self.templates = [tmpl]
        if random_phase_template is not None:
            self.templates.append(np.asarray(random_phase_template, np.float32))
        self.normed = [normalise_under_mask(torch.as_tensor(t, dtype=torch.float64),
                                            torch.as_tensor(msk, dtype=torch.float64)).float().numpy()
                       for t in self.templates]
        self._box_weight = None if weight is None else weight((n, n, n)).to(dev)
        self.packed = method == "fast" and self.spherical and _use_packed(dev, packed)
        if method != "exact":
            self._setup_fast(oversample, padded if self.packed else None)
        del padded

    @staticmethod
    def _inv(sigma: torch.Tensor, mask_sum) -> torch.Tensor:
        inv = torch.zeros_like(sigma)
        ok = sigma > 0
        if isinstance(mask_sum, torch.Tensor):
            inv[ok] = 1.0 / (mask_sum[ok] * sigma[ok])
        else:
            inv[ok] = 1.0 / (mask_sum * sigma[ok])
        return inv

    # ------------------------------------------------------------------ fast path set-up
    def _setup_fast(self, oversample: int, padded_tile: torch.Tensor | None = None):
        dev, n = self.device, self.box
        self.ftemplates = [FourierTemplate(t, oversample, dev) for t in self.normed]
        qb = _rfft_grid((n, n, n), dev)
        sel = torch.linalg.vector_norm(qb, dim=-1) <= 0.5
        self.box_sel = torch.nonzero(sel.reshape(-1)).reshape(-1)
        self.q_box = qb.reshape(-1, 3)[self.box_sel].contiguous()
        if self.method == "resample":
            self.resampler = BoxToTile(n, self.shape, oversample, dev)
            self.v_fast, self.v2_fast = self.v_hat, self.v2_hat
        else:
            self.resampler = BoxToTilePruned(n, self.shape, dev)
            ph = self.resampler.phase()
            self.v_fast, self.v2_fast = self.v_hat * ph, self.v2_hat * ph
        if padded_tile is not None:
            self.packer = PairPacker(n, self.shape, dev)
            self.v_packed = torch.fft.fftn(padded_tile.to(torch.complex64)).mul_(self.packer.phase())
            self.v2_fast = None  # a spherical mask needs no per-rotation sigma
        self.mask_t = _as_tensor(self.mask_np, dev)
        if not self.spherical:
            c = torch.arange(n, device=dev, dtype=torch.float32) - n // 2
            gz, gy, gx = torch.meshgrid(c, c, c, indexing="ij")
            self.box_xyz = torch.stack([gx, gy, gz], -1).reshape(-1, 3)

    def batch_bytes(self) -> int:
        """Approximate memory per rotation in a batch (bytes)."""
        n = float(np.prod(self.shape))
        per = 4 * n + 4 * n + 4 * n  # template spectrum, product spectrum, real output
        per += 8 * float(self.resampler.size ** 3) if self.method == "resample" else 0.0
        if not self.spherical:
            per += 3 * 8 * n
        return int(per * len(self.templates))

    # ------------------------------------------------------------------ scores
    def scores(self, rotations) -> list[torch.Tensor]:
        """Scores of a batch of rotations on the unique region: one ``(B, ...)`` per template."""
        rot = torch.as_tensor(np.asarray(rotations, np.float32), device=self.device)
        if rot.ndim == 2:
            rot = rot[None]
        if self.packed:
            return self._scores_packed(rot)
        if self.method != "exact":
            return self._scores_fast(rot)
        return self._scores_exact(np.asarray(rotations, np.float64).reshape(-1, 3, 3))

    def _rotated_masks(self, rot: torch.Tensor) -> torch.Tensor:
        """Masks rotated in real space (trilinear), ``(B, n, n, n)``."""
        n = self.box
        src = torch.matmul(self.box_xyz.unsqueeze(0), rot)  # (R^T x)^T = x^T R
        g = (src + n // 2) * (2.0 / (n - 1)) - 1.0
        out = torch.nn.functional.grid_sample(self.mask_t[None, None].expand(1, 1, n, n, n),
                                              g.reshape(1, -1, 1, 1, 3), mode="bilinear",
                                              padding_mode="zeros", align_corners=True)
        return out.reshape(rot.shape[0], n, n, n).clamp_min(0)

    def _sigma_inv(self, masks: torch.Tensor) -> torch.Tensor:
        """``1 / (W_R sigma_V,R)`` on the unique region for a batch of rotated masks."""
        b = masks.shape[0]
        w_r = masks.double().sum(dim=(1, 2, 3)).float().reshape(b, 1, 1, 1)
        if self.method == "exact":
            m_hat, v, v2 = _rfftn(place_centered(masks, self.shape)), self.v_hat, self.v2_hat
        else:
            m_hat, v, v2 = self.resampler(masks), self.v_fast, self.v2_fast
        mu = _irfftn_scratch(torch.conj(m_hat) * v, self.shape)[(slice(None),) + self.unique] / w_r
        m2 = _irfftn_scratch(torch.conj(m_hat) * v2, self.shape)[(slice(None),) + self.unique] / w_r
        var = m2 - mu * mu
        tiny = 1e-5 * torch.clamp(m2.abs().amax(dim=(1, 2, 3), keepdim=True), min=1e-30)
        sig = torch.sqrt(torch.where(var > tiny, var, torch.zeros_like(var)))
        return torch.where(sig > 0, 1.0 / (w_r * sig.clamp_min(1e-30)), torch.zeros_like(sig))

    def _box_templates(self, ft: "FourierTemplate", rot: torch.Tensor, masks) -> torch.Tensor:
        """Rotated (Fourier space), weighted, masked, normalised templates on the box."""
        n, b = self.box, rot.shape[0]
        spec = torch.zeros((b, n * n * (n // 2 + 1)), dtype=torch.complex64, device=self.device)
        spec[:, self.box_sel] = ft.sample(rot, self.q_box)
        spec = spec.reshape(b, n, n, n // 2 + 1)
        if self._box_weight is not None:
            spec = spec * self._box_weight
        box = _irfftn(spec, s=(n, n, n))
        box = torch.roll(box, shifts=(n // 2,) * 3, dims=(1, 2, 3))  # centre from index 0 to n//2
        return normalise_under_mask(box, masks)

    def _scores_fast(self, rot: torch.Tensor) -> list[torch.Tensor]:
        if self.spherical:
            masks, inv = self.mask_t, self.inv_norm
        else:
            masks = self._rotated_masks(rot)
            inv = self._sigma_inv(masks)
        out = []
        for ft in self.ftemplates:
            box = self._box_templates(ft, rot, masks)
            t_hat = self.resampler(box)
            t_hat = torch.conj_physical(t_hat).mul_(self.v_fast)
            corr = _irfftn_scratch(t_hat, self.shape)
            del t_hat
            out.append(corr[(slice(None),) + self.unique] * inv)
        return out

    def _scores_packed(self, rot: torch.Tensor, reuse: bool = False) -> list[torch.Tensor]:
        """Fast path, two rotations per complex transform (:class:`PairPacker`); spherical mask."""
        return [self._scores_packed_one(ft, rot, k if reuse else None) for k, ft in enumerate(self.ftemplates)]

    def _scores_packed_one(self, ft: "FourierTemplate", rot: torch.Tensor, reuse: int | None = None) -> torch.Tensor:
        """Scores ``(B, ...)``; ``reuse=k``: into buffer ``k``, which the next such call overwrites
        (the hot loop; fresh multi-100-MB tensors per batch cost page faults on the CPU)."""
        b = rot.shape[0]
        ushape = tuple(s.stop - s.start for s in self.unique)
        box = self._box_templates(ft, rot, self.mask_t)
        corr = self.packer.correlations(box, self.v_packed)
        pairs = torch.view_as_real(corr)[(slice(None),) + self.unique]  # (P, ..., 2)
        shape = (2 * corr.shape[0],) + ushape
        if reuse is not None:
            bufs = self.__dict__.setdefault("_score_bufs", {})
            if reuse not in bufs or bufs[reuse].shape[0] < shape[0]:
                bufs[reuse] = torch.empty(shape, device=self.device)
            scores = bufs[reuse][: shape[0]]
        else:
            scores = torch.empty(shape, device=self.device)
        # one kernel for the batch: (P, ..., 2) -> (P, 2, ...) scaled by 1 / (W sigma)
        torch.mul(pairs.movedim(-1, 1), self.inv_norm, out=scores.view((corr.shape[0], 2) + ushape))
        return scores[:b]

    def _fold_batch(self, folder, rotations: np.ndarray, start: int, state: "TileState",
                    ids: torch.Tensor) -> None:
        """Packed pairs folded into ``state`` by ``folder`` (:func:`fold_pair`), one batch.

        The statistics enter the state only at the end, and folding a pair twice leaves the
        maximum and index unchanged, so after a failure part-way the caller can redo the whole
        batch with the per-batch path.
        """
        rot = torch.as_tensor(np.asarray(rotations, np.float32), device=self.device).reshape(-1, 3, 3)
        b = rot.shape[0]
        stats = []
        box = self._box_templates(self.ftemplates[0], rot, self.mask_t)
        corr_all = self.packer.correlations(box, self.v_packed)
        if folder is _triton_fold_pairs():  # one kernel for the whole batch
            stats = [folder(corr_all, self.unique, self.inv_norm, state.best, state.index, start, b)]
            pairs_done = corr_all.shape[0]
        else:
            pairs_done = 0
        for p in range(pairs_done, corr_all.shape[0]):
            pair = torch.view_as_real(corr_all[p])[self.unique]
            if 2 * p + 1 < b:
                stats.append(folder(pair, self.inv_norm, state.best, state.index, ids[start + 2 * p]))
            else:  # odd batch: the last rotation alone
                a = pair[..., 0] * self.inv_norm
                a64 = a.double()
                stats.append(torch.stack([a64.sum(), a64.new_zeros(()), (a64 * a64).sum(), a64.new_zeros(())]))
                _update_running_max(state, [a.unsqueeze(0)], start + 2 * p)
            del pair
        if len(self.ftemplates) > 1:
            noise = self._scores_packed_one(self.ftemplates[1], rot, reuse=1)
            torch.maximum(state.noise_best, torch.amax(noise, dim=0), out=state.noise_best)
        if pairs_done:  # (B, 2): sum and sum of squares per rotation
            per_rotation = stats[0].tolist()
        else:  # (P, 4) per pair: sum a, sum b, sum a^2, sum b^2
            vals = torch.stack(stats).tolist()
            per_rotation = [(vals[k // 2][k % 2], vals[k // 2][2 + k % 2]) for k in range(b)]
        state.add_rotation_statistics([v[0] for v in per_rotation], [v[1] for v in per_rotation],
                                      self.inv_norm.numel())

    def _scores_exact(self, rots: np.ndarray) -> list[torch.Tensor]:
        dev = self.device
        outs = [[] for _ in self.templates]
        for r in rots:
            if self.spherical:
                m_r = self.mask_np.astype(np.float64)
                inv = self.inv_norm
            else:
                m_r = np.clip(rotate_volume(self.mask_np, r, order=1), 0, None)
                inv = self._sigma_inv(_as_tensor(m_r, dev)[None])[0]
            for k, t in enumerate(self.normed):
                t_r = torch.as_tensor(rotate_volume(t, r, order=3), dtype=torch.float32, device=dev)
                if self._box_weight is not None:
                    t_r = _irfftn(_rfftn(t_r) * self._box_weight, s=t_r.shape)
                tn = normalise_under_mask(t_r, torch.as_tensor(m_r, dtype=torch.float32, device=dev))
                t_hat = _rfftn(place_centered(tn, self.shape))
                corr = _irfftn(torch.conj(t_hat) * self.v_hat, s=self.shape)
                outs[k].append(corr[self.unique] * inv)
        return [torch.stack(o) for o in outs]

    # ------------------------------------------------------------------ running max
    def run(self, rotations: np.ndarray, state: TileState | None = None, batch_size: int = 4,
            on_batch: Callable[[TileState], None] | None = None, stop: int | None = None) -> TileState:
        """Process rotations ``state.done`` onward in batches, updating the running state.

        ``stop`` (default: all) ends the run before that rotation index (a rotation chunk
        ``[state.done, stop)``; rotation indices stay global).

        ``on_batch(state)`` is called after each batch (progress, checkpoints). Rotation order
        and batch boundaries (multiples of ``batch_size`` from 0) are fixed, so a resumed run
        reproduces an uninterrupted one exactly.
        """
        threads = torch.get_num_threads()
        small = self.device.type == "cpu" and float(np.prod(self.shape)) < _MIN_THREADED_FFT
        if small and threads > 1:  # small tiles: one thread is faster (no barriers per op)
            torch.set_num_threads(1)
        try:
            return self._run(rotations, state, batch_size, on_batch, stop)
        finally:
            if small and threads > 1:
                torch.set_num_threads(threads)

    def _run(self, rotations, state, batch_size, on_batch, stop=None) -> TileState:
        rotations = np.asarray(rotations, np.float64).reshape(-1, 3, 3)
        ushape = tuple(s.stop - s.start for s in self.unique)
        if state is None:
            state = TileState.empty(ushape, self.device, random_phase=len(self.templates) > 1)
        n = len(rotations) if stop is None else min(int(stop), len(rotations))
        start = state.done
        folder = _pair_folder(self.device, int(np.prod(ushape))) if self.packed else None
        ids = torch.arange(n + 1, device=self.device, dtype=state.index.dtype) if folder is not None else None
        while start < n:
            stop = min(n, (start // batch_size + 1) * batch_size)
            if folder is not None:
                try:
                    self._fold_batch(folder, rotations[start:stop], start, state, ids)
                except Exception as exc:  # pragma: no cover - compiler missing/failing on this machine
                    if isinstance(exc, (torch.cuda.OutOfMemoryError, InputError, KeyboardInterrupt)):
                        raise
                    import warnings
                    warnings.warn(f"fused kernel unavailable ({type(exc).__name__}: {str(exc)[:300]}); "
                                  "using separate kernels", RuntimeWarning, stacklevel=2)
                    _FUSED_DISABLED.add(self.device.type)
                    folder = None
                    continue
                state.done = stop
                start = stop
                if on_batch is not None:
                    on_batch(state)
                continue
            if self.packed:  # into reused buffers: consumed before the next batch
                rot = torch.as_tensor(np.asarray(rotations[start:stop], np.float32), device=self.device)
                sc = self._scores_packed(rot, reuse=True)
            else:
                sc = self.scores(rotations[start:stop])
            # per-rotation float32 sums (cascade summation) and float64 sums of squares, kept on
            # the device and fetched once per batch; accumulated in float64 in rotation order
            sums = sc[0].sum(dim=tuple(range(1, sc[0].ndim))).double().tolist()
            state.add_rotation_statistics(sums, _sums_of_squares(sc[0]).tolist(), sc[0][0].numel())
            _update_running_max(state, sc, start)
            del sc
            state.done = stop
            start = stop
            if on_batch is not None:
                on_batch(state)
        return state


@dataclass
class MatchResult:
    """Result of :func:`match_volume`: score and rotation-index maps plus search statistics."""

    scores: np.ndarray
    angles: np.ndarray
    n_voxels: int
    n_rotations: int
    mean: float
    std: float
    noise_mean: float | None = None
    extra: dict = field(default_factory=dict)


def match_volume(tomogram, template, mask, rotations, *, weight: WeightFn | None = None,
                 tomogram_weight: WeightFn | None = None, method: str = "fast",
                 spherical: bool | None = None, random_phase: bool = False, device="cpu",
                 batch_size: int = 4, oversample: int = 2) -> MatchResult:
    """Template search of a whole (small) volume held in memory, as one tile.

    Parameters
    ----------
    tomogram
        ``[z, y, x]`` volume.
    template, mask
        Cubic boxes of equal shape, rotation centre ``n // 2``.
    rotations
        ``(N, 3, 3)`` pose matrices (:mod:`tomomatch.conventions`).
    weight
        Template weight in the tomogram frame (callable ``shape -> rfft-grid tensor``) or None.
    tomogram_weight
        Filter applied to the whole tomogram first (band pass, whitening) or None.
    method
        ``"fast"`` (Fourier-space rotation, exact pruned transform; default), ``"resample"``
        (approximate, cheaper) or ``"exact"`` (real-space reference).
    random_phase
        Match a phase-randomised template alongside and subtract its per-voxel maximum
        (``score - noise + mean(noise)``).

    Returns
    -------
    MatchResult
        ``scores`` float32 and ``angles`` (int64 rotation index) maps ``[z, y, x]``.
    """
    dev = resolve_device(device)
    vol = _as_tensor(tomogram, dev)
    if not torch.all(torch.isfinite(vol)):
        raise InputError("tomogram contains NaN or Inf", None, "tomogram")
    vol = (vol - vol.mean()) / vol.std().clamp_min(1e-30)
    vol = filter_volume(vol, tomogram_weight)
    rp = phase_randomised_template(template, mask) if random_phase else None
    unique = tuple(slice(0, s) for s in vol.shape)
    tc = TileCorrelator(vol, template, mask, unique, weight=weight, method=method, spherical=spherical,
                        random_phase_template=rp, device=dev, oversample=oversample)
    st = tc.run(rotations, batch_size=batch_size)
    scores = st.best
    noise_mean = None
    if st.noise_best is not None:
        noise_mean = float(st.noise_best.double().mean())
        scores = scores - st.noise_best + noise_mean
    mean = st.sum / st.count
    std = math.sqrt(max(st.sumsq / st.count - mean * mean, 0.0))
    return MatchResult(scores=scores.cpu().numpy().astype(np.float32), angles=st.index.cpu().numpy(),
                       n_voxels=int(np.prod(vol.shape)), n_rotations=len(rotations), mean=mean, std=std,
                       noise_mean=noise_mean)
