"""Box and volume helpers of the FLCF: devices, normalisation under a mask, placement, rotation,
mask symmetry, the phase-randomised template, the tomogram-side filter and the local sigma.

Pure functions over arrays/tensors (no file I/O, no engine configuration).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.ndimage
import torch

from ..errors import InputError
from ..mask import is_spherical as _is_spherical
from .fft import _irfftn, _rfftn, fast_fft_shape

__all__ = [
    "WeightFn",
    "resolve_device",
    "normalise_under_mask",
    "place_centered",
    "rotate_volume",
    "is_spherical_mask",
    "phase_randomised_template",
    "filter_volume",
    "local_sigma",
]

#: A Fourier weight in the tomogram frame: ``weight(shape_zyx) -> tensor (nz, ny, nx//2+1)``,
#: evaluated on whatever grid is used.
WeightFn = Callable[[tuple[int, int, int]], torch.Tensor]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> torch device; InputError if CUDA is absent."""
    name = "cpu" if device is None else str(device)
    dev = _device_or_error(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} requested but no CUDA device is available", None, "--device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist", None, "--device"
            )
    return dev


def parse_devices(spec: str | torch.device | None, check: bool = True) -> list[str]:
    """``--device`` as one torch device name per worker of a match job.

    ``"cpu"``, ``"cuda"``, ``"cuda:N"``: one worker. ``"cuda:0,1,3"`` (or ``"cuda:0,cuda:1"``): one
    worker per listed GPU; a bare index takes the type of the entry before it. A GPU listed twice
    (``"cuda:0,0"``) gets two workers. ``"cuda:all"``: one worker per visible GPU. ``"cpu,cpu"``:
    two CPU workers (what ``processes=2`` does; it exercises the same assignment on a machine
    without GPUs). Every entry is checked with :func:`resolve_device` when ``check`` (CUDA present,
    index in range); the entries must be all CPU or all CUDA. Bad specs raise :class:`InputError`.
    """
    name = "cpu" if spec is None else str(spec).strip()
    if name.lower() == "cuda:all":
        if not check:
            return ["cuda"]
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            raise InputError("device 'cuda:all' requested but no CUDA device is available", None, "--device")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    devices: list[str] = []
    kind = None
    for item in name.split(","):
        item = item.strip()
        if not item:
            raise InputError(
                f"empty entry in device list {name!r}; expected e.g. cuda:0,1 or cuda:all", None, "--device"
            )
        if item.isdigit() and kind is not None:
            item = f"{kind}:{item}"
        dev = resolve_device(item) if check else _device_or_error(item)
        if dev.type == "cpu" and dev.index is not None:
            dev = torch.device("cpu")
        kind = dev.type
        devices.append(str(dev))
    if len({torch.device(d).type for d in devices}) > 1:
        raise InputError(
            f"device list {name!r} mixes CPU and CUDA; expected one kind (e.g. cuda:0,1)", None, "--device"
        )
    return devices


def _device_or_error(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}; expected cpu, cuda or cuda:N", None, "--device") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {name!r}; expected cpu, cuda or cuda:N", None, "--device")
    return dev


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


def is_spherical_mask(mask, tol: float = 1e-5) -> bool:
    """True when the mask is invariant under every rotation about its centre ``n // 2``.

    The test of :func:`tomomatch.mask.is_spherical`: every voxel at the same squared integer
    distance from the centre agrees within ``tol`` times the mask's maximum, and the mask is
    zero (within ``tol``) outside the largest centred sphere in the box. Only then may the
    engine skip rotating the mask (the spherical shortcut: one local sigma per tile, packed
    pairs); a mask off by a few voxels, or by a few per cent anywhere, is not spherical.
    ``mask``: array or tensor ``[z, y, x]``.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return bool(_is_spherical(np.asarray(mask), atol=tol))


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
    pz, py, px = fast_fft_shape(shape)  # a volume: three axes
    padded = (pz, py, px)
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


def local_sigma(
    v_hat: torch.Tensor, v2_hat: torch.Tensor, mask_hat: torch.Tensor, mask_sum: float, shape: Sequence[int]
) -> torch.Tensor:
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
