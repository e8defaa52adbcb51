"""FFT back-ends of the engine: grid sizes, libraries, thread rules and plan caches.

Who transforms what:

* CUDA: torch (cuFFT) throughout.
* CPU, unpacked path (non-spherical masks, ``packed=False``, ``method="resample"``): the
  per-rotation inverse transforms (:func:`_irfftn_scratch`) and the pruned forward transforms
  (:func:`pruned_rfftn`) use pyFFTW where installed and ``EngineConfig.fftw`` (one plan per
  shape, FFTW_ESTIMATE), else scipy.fft (pocketfft, zero-copy through numpy).
* CPU, packed path: torch, except the forward x pass on grids of at least
  ``EngineConfig.fftw_min_voxels``, which is an out-of-place FFTW plan (:class:`FftwXPass`).

FFTW_ESTIMATE everywhere: a measured plan may pick another algorithm in another process or
run, and so change the last bits of the maps; estimated plans are as fast here and the same in
every process, so resumed and multi-process runs stay bit-identical.

Threads: one below ~4 M elements per transform (:data:`_MIN_THREADED_FFT`), else torch's count
(:func:`_fft_threads`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.fft
import torch

from .config import EngineConfig

try:  # a dependency, but keep working where its wheel is missing: FFTW beats pocketfft and MKL here
    import pyfftw as _pyfftw
except ImportError:  # pragma: no cover - depends on the environment
    _pyfftw = None

__all__ = ["fast_fft_shape", "grid_shape", "fft_backend"]

#: FFTW plans (and the pruned transform's buffers) by shape and thread count, per process.
_FFTW_PLANS: dict = {}

#: Transforms (and tiles) of fewer elements run on one thread.
_MIN_THREADED_FFT = 1 << 22


# --------------------------------------------------------------------------- sizes


def fast_fft_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Smallest 5-smooth (2, 3, 5) sizes ``>= shape`` per axis (fast for pocketfft and cuFFT)."""
    return tuple(int(scipy.fft.next_fast_len(int(n), real=True)) for n in shape)


def _cufft_friendly_len(m: int) -> int:
    """Smallest ``n >= m`` of the form ``2^a 3^b 5^c`` with ``b <= 2``, ``c <= 1``.

    Why: cuFFT runs such lengths in one kernel per axis where some 5-smooth lengths (75 =
    3 x 5^2) take two passes over the whole grid (measured on an H200: the z pass of
    75 x 720 x 512 took 0.25 ms in two kernels). Used on CUDA only with
    ``EngineConfig.fft_sizes == "cuda"`` (benchmarks/fft_sizes_cuda.py).
    """
    n = max(int(m), 1)
    while True:
        k = n
        while k % 2 == 0:
            k //= 2
        if k in (1, 3, 5, 9, 15, 45):
            return n
        n += 1


def grid_shape(data_shape: Sequence[int], device, engine: EngineConfig) -> tuple[int, ...]:
    """FFT grid of a tile: :func:`fast_fft_shape`, or on CUDA with ``engine.fft_sizes == "cuda"``
    :func:`_cufft_friendly_len` per axis."""
    if torch.device(device).type == "cuda" and engine.fft_sizes == "cuda":
        return tuple(_cufft_friendly_len(int(n)) for n in data_shape)
    return fast_fft_shape(data_shape)


# --------------------------------------------------------------------------- back-ends


def _fft_threads(n_elements: int) -> int:
    """Threads for one CPU FFT: 1 below ~4 M elements (thread start-up and barriers cost more
    than they save there, badly so on a loaded machine), else torch's thread count."""
    return 1 if n_elements < _MIN_THREADED_FFT else max(1, torch.get_num_threads())


def fft_backend(device="cpu", engine: EngineConfig | None = None) -> str:
    """Library doing the per-rotation inverse FFTs of the unpacked path on ``device``.

    On the CPU: pyFFTW when installed and ``engine.fftw``, else scipy.fft (pocketfft). Plans
    are made per volume shape (FFTW_ESTIMATE, no batching: FFTW's batched plans of small odd
    sizes measured much slower here). ``engine`` None: :meth:`EngineConfig.from_environment`.
    """
    if torch.device(device).type != "cpu":
        return "torch"
    if engine is None:
        engine = EngineConfig.from_environment()
    return "pyfftw" if (_pyfftw is not None and engine.fftw) else "scipy"


def _fftw_x_pass(device: torch.device, n_voxels: int, engine: EngineConfig) -> bool:
    """Whether FFTW does :class:`PairPacker`'s x pass: on the CPU, with pyFFTW, for big grids."""
    return device.type == "cpu" and fft_backend("cpu", engine) == "pyfftw" and n_voxels >= engine.fftw_min_voxels


def _rfftn(x: torch.Tensor, s=None, dim=(-3, -2, -1)) -> torch.Tensor:
    """rfftn; on the CPU through scipy.fft (pocketfft, threaded), zero-copy via numpy."""
    if x.device.type == "cpu":
        out = scipy.fft.rfftn(x.numpy(), s=s, axes=dim, workers=_fft_threads(x.numel()))
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.complex64))
    return torch.fft.rfftn(x, s=s, dim=dim)


def _irfftn(x: torch.Tensor, s, dim=(-3, -2, -1)) -> torch.Tensor:
    """irfftn counterpart of :func:`_rfftn` (may overwrite its input on the CPU)."""
    if x.device.type == "cpu":
        out = scipy.fft.irfftn(x.numpy(), s=s, axes=dim, workers=_fft_threads(x.numel()), overwrite_x=True)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    return torch.fft.irfftn(x, s=s, dim=dim)


def _irfftn_scratch(x: torch.Tensor, s, engine: EngineConfig) -> torch.Tensor:
    """irfftn over the last three axes for the hot loop; ``x`` ``(..., nz, ny, nx//2+1)``.

    May destroy ``x``. With pyFFTW the result is a fresh tensor per call (one plan per shape,
    executed once per leading index).
    """
    if fft_backend(x.device, engine) != "pyfftw":
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
        plan = _pyfftw.FFTW(
            inp,
            out,
            axes=(0, 1, 2),
            direction="FFTW_BACKWARD",
            threads=threads,
            flags=("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT"),
        )
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


# --------------------------------------------------------------------------- pruned forward transform


def _pruned_fftw_plans(n: int, shape: tuple[int, int, int]):
    """Three FFTW plans over preallocated zero-padded buffers (x r2c, y c2c, z c2c)."""
    th = _fft_threads(int(np.prod(shape)))
    key = ("pruned", n, shape, th)
    plans = _FFTW_PLANS.get(key)
    if plans is None:
        nz, ny, nx = shape
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


def pruned_rfftn(boxes: torch.Tensor, n: int, shape: tuple[int, int, int], engine: EngineConfig) -> torch.Tensor:
    """rfftn of boxes ``(..., n, n, n)`` zero-padded (at the corner) to ``shape``, pruned.

    The x pass runs over the ``n^2`` non-zero rows, the y pass over the ``n`` non-zero planes,
    the z pass over the whole grid (:class:`~tomomatch.matching.BoxToTilePruned`). By pyFFTW
    (CPU, ``engine.fftw``), scipy.fft (other CPU) or torch.
    """
    nz, ny, nx = shape
    if boxes.device.type == "cpu" and fft_backend("cpu", engine) == "pyfftw":
        a, b, c, px, py, pz = _pruned_fftw_plans(n, shape)
        lead = tuple(boxes.shape[:-3])
        bx = boxes.reshape((-1, n, n, n))
        res = torch.empty((bx.shape[0], nz, ny, nx // 2 + 1), dtype=torch.complex64)
        for i in range(bx.shape[0]):
            a[:, :, :n] = bx[i].numpy()  # a[..., n:] stays 0 (r2c preserves its input)
            px.execute()  # -> b[:, :n]
            b[:, n:] = 0
            py.execute()
            c[:n] = b
            c[n:] = 0
            pz.execute()
            res[i] = torch.from_numpy(c)
        return res.reshape(lead + tuple(res.shape[1:]))
    if boxes.device.type == "cpu":
        w = _fft_threads(int(np.prod(shape)))
        f = scipy.fft.rfft(boxes.numpy(), n=nx, axis=-1, workers=w)
        f = scipy.fft.fft(f, n=ny, axis=-2, workers=w, overwrite_x=True)
        f = scipy.fft.fft(f, n=nz, axis=-3, workers=w, overwrite_x=True)
        return torch.from_numpy(np.ascontiguousarray(f, dtype=np.complex64))
    f = torch.fft.rfft(boxes, n=nx, dim=-1)
    f = torch.fft.fft(f, n=ny, dim=-2)
    return torch.fft.fft(f, n=nz, dim=-3)


# --------------------------------------------------------------------------- the packed path's x pass


class FftwXPass:
    """:class:`~tomomatch.matching.PairPacker`'s full-grid x pass by an out-of-place FFTW plan.

    Why: the full-grid x pass is a third of the CPU time per rotation, and torch's (MKL)
    single-axis transform is slow: 75 x 720 x 512 on 2 cores took 85-107 ms with torch,
    35-38 ms with an out-of-place FFTW plan (FFTW_ESTIMATE and FFTW_MEASURE alike, so the
    deterministic ESTIMATE plan: a measured plan may differ between processes and runs,
    and so would the last bits of the maps). The 3-D inverse stays with torch, which was
    the fastest there (190 ms; FFTW 247 ms). One thread, FFTW vs torch: 64 x 128 x 128 1.7 vs
    1.5 ms, 64 x 256 x 256 9 vs 19 ms, 75 x 720 x 240 28 vs 68 ms (hence
    ``EngineConfig.fftw_min_voxels``).
    """

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        self._plan: tuple[Any, np.ndarray, np.ndarray] | None = None  # (plan, input buffer, output buffer)

    def buffers(self, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-padded input buffer (``(>= pairs, nz, ny, nx)`` complex, only the box's x columns
        are ever written) and the plan's output buffer, as tensors sharing their memory.

        The plan covers the whole buffer: a shorter (later) batch transforms stale pairs too.
        """
        if self._plan is None or self._plan[1].shape[0] < pairs:
            full = (pairs,) + self.shape
            src = _pyfftw.zeros_aligned(full, dtype="complex64")  # only the box's x columns are written
            dst = _pyfftw.empty_aligned(full, dtype="complex64")
            plan = _pyfftw.FFTW(
                src, dst, axes=(-1,), direction="FFTW_FORWARD", threads=_fft_threads(src.size), flags=("FFTW_ESTIMATE",)
            )
            self._plan = (plan, src, dst)
        return torch.from_numpy(self._plan[1]), torch.from_numpy(self._plan[2])

    def execute(self) -> None:
        """Transform the input buffer into the output buffer."""
        assert self._plan is not None, "buffers() makes the plan before execute()"
        self._plan[0].execute()
