"""One tile's search: the FLCF of a tile against a set of rotations, and its running state.

:class:`TileCorrelator` sets a tile up (its transforms, the local sigma, the template's Fourier
representation) and runs rotations in fixed batches into a :class:`TileState` (running maximum,
argmax, per-rotation sums); :func:`match_volume` is the whole search of a small volume held in
memory; :func:`engine_description` says what the engine does for given settings (the job
file's ``engine`` entry). The order of operations is the package's
(:mod:`tomomatch.matching`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from . import fold as _fold
from .config import EngineConfig, configure_allocator
from .fft import _MIN_THREADED_FFT, _fftw_x_pass, _irfftn, _irfftn_scratch, _rfftn, fft_backend, grid_shape
from .fold import _sums_of_squares, _update_running_max
from .transforms import BoxToTile, BoxToTilePruned, FourierTemplate, PairPacker
from .volumes import (
    WeightFn,
    _as_tensor,
    _rfft_grid,
    filter_volume,
    is_spherical_mask,
    local_sigma,
    normalise_under_mask,
    phase_randomised_template,
    place_centered,
    resolve_device,
    rotate_volume,
)

__all__ = ["TileState", "TileCorrelator", "MatchResult", "match_volume", "engine_description"]


def _engine(engine: EngineConfig | None) -> EngineConfig:
    """``engine``, or the environment's (read here, once per entry point)."""
    if engine is None:
        return EngineConfig.from_environment()
    if not isinstance(engine, EngineConfig):
        raise TypeError(f"engine must be an EngineConfig, got {type(engine).__name__}")
    return engine


def _use_packed(device: torch.device, packed: bool | None, engine: EngineConfig) -> bool:
    """Whether the fast path packs rotation pairs (:class:`PairPacker`); default yes.

    Measured faster on CUDA and on the CPU (torch's FFT, case b of benchmarks/bench_match.py:
    1.9x). ``engine.packed`` (``TOMOMATCH_PACKED``) sets the default (benchmarks); an explicit
    ``packed`` wins.
    """
    if packed is not None:
        return bool(packed)
    return engine.packed


def engine_description(device, method: str, spherical: bool, n_voxels: int, engine: EngineConfig | None = None) -> dict:
    """What the search engine does for these settings (recorded in the job file).

    ``packed``: rotation pairs in one complex FFT; ``fold``: how scores, statistics and the
    running maximum are computed (``triton``, ``compiled`` or ``separate`` kernels);
    ``fft_sizes``: the grid-size rule; ``fft_library``: who does the CPU transforms (``torch``,
    ``torch+fftw`` when FFTW does the packed path's x pass, or the unpacked path's
    ``pyfftw``/``scipy``); plus the torch version. ``engine`` None: the environment's.
    """
    engine = _engine(engine)
    dev = torch.device(device)
    packed = method == "fast" and bool(spherical) and _use_packed(dev, None, engine)
    fold = "separate"
    if packed:
        fold = _fold._fold_name(_fold._pair_folder(dev, int(n_voxels), engine))
    sizes = "cuda" if dev.type == "cuda" and engine.fft_sizes == "cuda" else "5-smooth"
    library = fft_backend(dev, engine)
    if packed and dev.type == "cpu":
        library = "torch+fftw" if _fftw_x_pass(dev, int(n_voxels), engine) else "torch"
    return {
        "packed_pairs": packed,
        "fold": fold,
        "fft_sizes": sizes,
        "fft_library": library,
        "torch": torch.__version__,
    }


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
        return cls(
            best=torch.full(tuple(shape), -torch.inf, device=device),
            index=torch.full(tuple(shape), -1, dtype=torch.int32, device=device),
            noise_best=(torch.full(tuple(shape), -torch.inf, device=device) if random_phase else None),
        )

    def to_numpy(self) -> dict:
        d = {
            "best": self.best.cpu().numpy(),
            "index": self.index.cpu().numpy(),
            "sum": np.float64(self.sum),
            "sumsq": np.float64(self.sumsq),
            "count": np.int64(self.count),
            "done": np.int64(self.done),
            "rotation_sums": np.asarray(self.rotation_sums, np.float64),
            "rotation_sumsqs": np.asarray(self.rotation_sumsqs, np.float64),
        }
        if self.noise_best is not None:
            d["noise_best"] = self.noise_best.cpu().numpy()
        return d

    @classmethod
    def from_numpy(cls, d, device) -> "TileState":
        nb = d["noise_best"] if "noise_best" in d else None
        return cls(
            best=torch.as_tensor(np.asarray(d["best"]), device=device),
            index=torch.as_tensor(np.asarray(d["index"], np.int32), device=device),
            noise_best=None if nb is None else torch.as_tensor(np.asarray(nb), device=device),
            sum=float(d["sum"]),
            sumsq=float(d["sumsq"]),
            count=int(d["count"]),
            done=int(d["done"]),
            rotation_sums=[float(v) for v in d["rotation_sums"]] if "rotation_sums" in d else [],
            rotation_sumsqs=[float(v) for v in d["rotation_sumsqs"]] if "rotation_sumsqs" in d else [],
        )


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
    packed
        Pack rotation pairs into one complex transform (None: ``engine.packed``; only the fast
        path with a spherical mask packs).
    engine
        The :class:`~tomomatch.matching.EngineConfig` (FFT sizes and libraries, packed path, fold
        kernel); None: read from the environment here, once. Kept as ``self.engine``.
    """

    def __init__(
        self,
        tile,
        template,
        mask,
        unique: tuple[slice, slice, slice],
        *,
        weight: WeightFn | None = None,
        method: str = "fast",
        spherical: bool | None = None,
        random_phase_template=None,
        device="cpu",
        oversample: int = 2,
        packed: bool | None = None,
        engine: EngineConfig | None = None,
    ):
        if method not in ("fast", "resample", "exact"):
            raise ValueError(f"method must be 'fast', 'resample' or 'exact', got {method!r}")
        dev = torch.device(device)
        self.device, self.method = dev, method
        self.engine = _engine(engine)
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
        self.shape = grid_shape(self.data_shape, dev, self.engine)
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
        self.normed = [
            normalise_under_mask(torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(msk, dtype=torch.float64))
            .float()
            .numpy()
            for t in self.templates
        ]
        self._box_weight = None if weight is None else weight((n, n, n)).to(dev)
        self.packed = method == "fast" and self.spherical and _use_packed(dev, packed, self.engine)
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
        self.resampler: BoxToTile | BoxToTilePruned
        self.v2_fast: torch.Tensor | None
        if self.method == "resample":
            self.resampler = BoxToTile(n, self.shape, oversample, dev)
            self.v_fast, self.v2_fast = self.v_hat, self.v2_hat
        else:
            pruned = BoxToTilePruned(n, self.shape, dev, engine=self.engine)
            ph = pruned.phase()
            self.resampler = pruned
            self.v_fast, self.v2_fast = self.v_hat * ph, self.v2_hat * ph
        if padded_tile is not None:
            self.packer = PairPacker(n, self.shape, dev, engine=self.engine)
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
        if self.method == "resample":
            assert isinstance(self.resampler, BoxToTile)  # set so by _setup_fast
            per += 8 * float(self.resampler.size**3)
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
        out = torch.nn.functional.grid_sample(
            self.mask_t[None, None].expand(1, 1, n, n, n),
            g.reshape(1, -1, 1, 1, 3),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
        return out.reshape(rot.shape[0], n, n, n).clamp_min(0)

    def _sigma_inv(self, masks: torch.Tensor) -> torch.Tensor:
        """``1 / (W_R sigma_V,R)`` on the unique region for a batch of rotated masks."""
        b = masks.shape[0]
        w_r = masks.double().sum(dim=(1, 2, 3)).float().reshape(b, 1, 1, 1)
        if self.method == "exact":
            m_hat, v, v2 = _rfftn(place_centered(masks, self.shape)), self.v_hat, self.v2_hat
        else:
            assert self.v2_fast is not None  # None only on the packed path, whose spherical mask needs no sigma
            m_hat, v, v2 = self.resampler(masks), self.v_fast, self.v2_fast
        mu = _irfftn_scratch(torch.conj(m_hat) * v, self.shape, self.engine)[(slice(None),) + self.unique] / w_r
        m2 = _irfftn_scratch(torch.conj(m_hat) * v2, self.shape, self.engine)[(slice(None),) + self.unique] / w_r
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
            corr = _irfftn_scratch(t_hat, self.shape, self.engine)
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

    def _fold_batch(self, folder, rotations: np.ndarray, start: int, state: "TileState", ids: torch.Tensor) -> None:
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
        if folder is _fold._triton_fold_pairs():  # one kernel for the whole batch
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
            assert state.noise_best is not None  # a random-phase search's state holds its noise maximum
            torch.maximum(state.noise_best, torch.amax(noise, dim=0), out=state.noise_best)
        if pairs_done:  # (B, 2): sum and sum of squares per rotation
            per_rotation = stats[0].tolist()
        else:  # (P, 4) per pair: sum a, sum b, sum a^2, sum b^2
            vals = torch.stack(stats).tolist()
            per_rotation = [(vals[k // 2][k % 2], vals[k // 2][2 + k % 2]) for k in range(b)]
        state.add_rotation_statistics([v[0] for v in per_rotation], [v[1] for v in per_rotation], self.inv_norm.numel())

    def _scores_exact(self, rots: np.ndarray) -> list[torch.Tensor]:
        dev = self.device
        outs: list[list[torch.Tensor]] = [[] for _ in self.templates]
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
    def run(
        self,
        rotations: np.ndarray,
        state: TileState | None = None,
        batch_size: int = 4,
        on_batch: Callable[[TileState], None] | None = None,
        stop: int | None = None,
    ) -> TileState:
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
        folder = _fold._pair_folder(self.device, int(np.prod(ushape)), self.engine) if self.packed else None
        ids = torch.arange(n + 1, device=self.device, dtype=state.index.dtype) if folder is not None else None
        while start < n:
            stop = min(n, (start // batch_size + 1) * batch_size)
            if folder is not None:
                assert ids is not None  # made whenever folder is
                try:
                    self._fold_batch(folder, rotations[start:stop], start, state, ids)
                except Exception as exc:
                    # only a kernel that cannot be compiled (or launched for lack of resources)
                    # here falls back; a shape/dtype bug, an out-of-memory or a CUDA error raise
                    if not _fold.is_compile_failure(exc):
                        raise
                    warnings.warn(
                        f"fused kernel unavailable ({type(exc).__name__}: {str(exc)[:300]}); using separate kernels",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    _fold._FUSED_DISABLED.add(self.device.type)
                    folder = None
                    continue  # the batch again, with separate kernels (see _fold_batch)
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


def match_volume(
    tomogram,
    template,
    mask,
    rotations,
    *,
    weight: WeightFn | None = None,
    tomogram_weight: WeightFn | None = None,
    method: str = "fast",
    spherical: bool | None = None,
    random_phase: bool = False,
    device="cpu",
    batch_size: int = 4,
    oversample: int = 2,
    engine: EngineConfig | None = None,
) -> MatchResult:
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
    engine
        :class:`~tomomatch.matching.EngineConfig`; None: read from the environment here, once.

    Returns
    -------
    MatchResult
        ``scores`` float32 and ``angles`` (int64 rotation index) maps ``[z, y, x]``.
    """
    configure_allocator()
    engine = _engine(engine)
    dev = resolve_device(device)
    vol = _as_tensor(tomogram, dev)
    if not torch.all(torch.isfinite(vol)):
        raise InputError("tomogram contains NaN or Inf", None, "tomogram")
    vol = (vol - vol.mean()) / vol.std().clamp_min(1e-30)
    vol = filter_volume(vol, tomogram_weight)
    rp = phase_randomised_template(template, mask) if random_phase else None
    nz, ny, nx = vol.shape
    unique = (slice(0, nz), slice(0, ny), slice(0, nx))
    tc = TileCorrelator(
        vol,
        template,
        mask,
        unique,
        weight=weight,
        method=method,
        spherical=spherical,
        random_phase_template=rp,
        device=dev,
        oversample=oversample,
        engine=engine,
    )
    st = tc.run(rotations, batch_size=batch_size)
    scores = st.best
    noise_mean = None
    if st.noise_best is not None:
        noise_mean = float(st.noise_best.double().mean())
        scores = scores - st.noise_best + noise_mean
    mean = st.sum / st.count
    std = math.sqrt(max(st.sumsq / st.count - mean * mean, 0.0))
    return MatchResult(
        scores=scores.cpu().numpy().astype(np.float32),
        angles=st.index.cpu().numpy(),
        n_voxels=int(np.prod(vol.shape)),
        n_rotations=len(rotations),
        mean=mean,
        std=std,
        noise_mean=noise_mean,
    )
