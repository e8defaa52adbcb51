"""Folding scores into the running maximum: the reference, the fused kernels and their dispatch.

Per batch of rotations the engine keeps, per voxel of the tile's unique region, the maximum
score and the index of the first rotation reaching it, plus float64 sums of the scores per
rotation. Three ways to do it, with the same maps (ties keep the lower index):

* separate torch kernels per batch (:func:`_update_running_max`, :func:`_sums_of_squares`);
* :func:`fold_pair`, one packed pair in one pass, ``torch.compile``\\ d into one kernel;
* the Triton kernel :func:`tomomatch.matching._triton_fold.fold_pairs`, a whole batch of
  packed pairs in one launch.

:func:`_pair_folder` chooses by the :class:`~tomomatch.matching.EngineConfig`'s ``fused``
switch, the device and the tile's size. A fused kernel that fails to *compile* (or launch for
lack of resources) is turned off for the process with a warning and the batch is redone with
separate kernels (:func:`is_compile_failure`); any other error (a shape or dtype bug) raises.
"""

from __future__ import annotations

import subprocess
import warnings
from typing import TYPE_CHECKING

import torch

from .config import EngineConfig

if TYPE_CHECKING:
    from .correlator import TileState

__all__ = ["fold_pair"]


def fold_pair(
    pair: torch.Tensor, inv_norm: torch.Tensor, best: torch.Tensor, index: torch.Tensor, first_index: torch.Tensor
) -> torch.Tensor:
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
        assert state.noise_best is not None  # a random-phase search's state holds its noise maximum
        torch.maximum(state.noise_best, torch.amax(scores[1], dim=0), out=state.noise_best)


# --------------------------------------------------------------------------- fused kernels and dispatch


#: ``torch.compile``\ d :func:`fold_pair` per device type (None where torch.compile is unavailable).
_FOLDERS: dict = {}

#: Unique regions of at least this many voxels use the compiled fold on the CPU (``fused="auto"``).
_FUSED_MIN_VOXELS = 1 << 22

#: Device types whose fused kernel failed to compile once in this process.
_FUSED_DISABLED: set = set()

_TRITON: dict = {}  # "fold": the Triton fold, or None where Triton is not installed


def _triton_fold_pairs():
    """:func:`tomomatch.matching._triton_fold.fold_pairs`, or None where Triton is not installed.

    A Triton that is installed but cannot be imported here (a broken or mismatched
    installation) also gives None, with a warning, once per process.
    """
    if "fold" not in _TRITON:
        try:
            from ._triton_fold import fold_pairs
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] != "triton":
                raise  # our own module missing: a packaging bug, not an absent Triton
            fold_pairs = None  # Triton not installed: separate kernels
        except (ImportError, AttributeError, RuntimeError, OSError) as exc:  # installed, cannot initialise
            warnings.warn(
                f"Triton cannot be imported ({type(exc).__name__}: {str(exc)[:200]}); the "
                "Triton fold kernel is off, using separate kernels",
                RuntimeWarning,
                stacklevel=2,
            )
            fold_pairs = None
        _TRITON["fold"] = fold_pairs
    return _TRITON["fold"]


def _compile_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions of a fused kernel that cannot be compiled (or launched for lack of resources)
    here: torch.compile's backend failure (``InductorError`` derives from it: e.g. no working
    C++ compiler) and Triton's compilation, PTX assembler and out-of-resources errors."""
    types: list = []
    try:
        from torch._dynamo.exc import BackendCompilerFailed

        types.append(BackendCompilerFailed)
    except ImportError:  # pragma: no cover - torch without dynamo
        pass
    try:
        from triton.compiler.errors import CompilationError
        from triton.runtime import errors as triton_errors

        types += [CompilationError, triton_errors.OutOfResources]
        if hasattr(triton_errors, "PTXASError"):
            types.append(triton_errors.PTXASError)
    except ImportError:  # Triton not installed: it raises none of these
        pass
    return tuple(types)


def is_compile_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says a fused kernel cannot be compiled or launched here (and only that).

    A shape or dtype error (``ValueError``, ``RuntimeError``, dynamo's ``TorchRuntimeError``
    from tracing), an out-of-memory or a CUDA error are not: they raise.
    """
    return isinstance(exc, _compile_error_types())


_TRITON_CHECKED: dict = {}


def _triton_self_check(fold, device: torch.device) -> bool:
    """Run the Triton fold once on a tiny random problem against :func:`fold_pair`.

    Why: the kernel is compiled on the user's GPU by the user's Triton; a version that fails to
    compile or launch here (compiler, PTX assembler, C compiler for the launcher, driver) is
    caught here, and one that compiles to wrong numbers too (once per process and device; either
    disables the kernel with a warning). A ``ValueError``/``TypeError``/``IndexError`` (a bug of
    the wrapper, the same everywhere) is not caught.
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
                v = fold_pair(
                    torch.view_as_real(corr[p])[unique], inv, rb, ri, torch.tensor(5 + 2 * p, dtype=torch.int32)
                )
                ref += [[float(v[0]), float(v[2])], [float(v[1]), float(v[3])]]
            b, i = best.to(device), index.to(device)
            stats = fold(corr.to(device), unique, inv.to(device), b, i, 5, 4).cpu()
            ok = (
                torch.equal(b.cpu(), rb)
                and torch.equal(i.cpu(), ri)
                and torch.allclose(stats, torch.tensor(ref, dtype=torch.float64), rtol=1e-4, atol=1e-4)
            )
            msg = "numbers differ from the reference"
        except Exception as exc:
            # compile or launch failure: Triton's own errors, or a RuntimeError/OSError/
            # subprocess error from its driver or from building the launcher
            if not (is_compile_failure(exc) or isinstance(exc, (RuntimeError, OSError, subprocess.SubprocessError))):
                raise
            msg = f"{type(exc).__name__}: {str(exc)[:200]}"
        if not ok:
            warnings.warn(
                f"Triton fold kernel disabled on {device} ({msg}); using separate kernels", RuntimeWarning, stacklevel=3
            )
        _TRITON_CHECKED[key] = ok
    return _TRITON_CHECKED[key]


def _pair_folder(device: torch.device, n_voxels: int, engine: EngineConfig):
    """How packed pairs are folded into the running maximum: a fused kernel, or None.

    Returns :func:`tomomatch.matching._triton_fold.fold_pairs` (one Triton kernel per batch),
    the ``torch.compile``\\ d :func:`fold_pair` (one kernel per pair), or None (separate torch
    kernels per batch, :func:`_update_running_max`).

    ``engine.fused``: ``"0"`` none; ``"triton"``; ``"1"`` the compiled fold; ``"auto"``
    (default): Triton on CUDA when installed (torch's CUDA wheels ship it), the compiled fold
    on the CPU for unique regions of at least ~4 M voxels, else none. Why: the score,
    statistics and running-maximum passes cost as much as the transforms as separate kernels
    (CPU case b, one core: 0.45 of 0.78 s per rotation; 0.12 s compiled); ``torch.compile``
    costs ~25 s once per process and, on an H200, ~0.4 ms of host time per call (small tiles
    became launch-bound), which the hand-written Triton kernel (one launch per batch) avoids.
    Triton runs on the CPU only in its interpreter (``engine.triton_interpret``, the tests). A
    fused kernel that fails to compile falls back to separate kernels with a warning
    (``TileCorrelator._run``, :func:`is_compile_failure`).
    """
    mode = engine.fused
    if mode == "0" or device.type in _FUSED_DISABLED:
        return None
    if mode == "triton" or (mode == "auto" and device.type == "cuda"):
        fold = _triton_fold_pairs()
        if fold is not None and (device.type == "cuda" or engine.triton_interpret) and _triton_self_check(fold, device):
            return fold
        return None
    if mode != "1" and (device.type != "cpu" or n_voxels < _FUSED_MIN_VOXELS):
        return None
    if device.type not in _FOLDERS:
        try:
            _FOLDERS[device.type] = torch.compile(fold_pair, dynamic=False)
        except RuntimeError as exc:  # pragma: no cover - torch.compile unsupported here (Python version, platform)
            warnings.warn(
                f"torch.compile unavailable ({str(exc)[:200]}); using separate kernels", RuntimeWarning, stacklevel=2
            )
            _FOLDERS[device.type] = None
    return _FOLDERS[device.type]


def _fold_name(folder) -> str:
    """``"separate"``, ``"triton"`` or ``"compiled"`` for what :func:`_pair_folder` returned."""
    if folder is None:
        return "separate"
    return "triton" if folder is _triton_fold_pairs() else "compiled"
