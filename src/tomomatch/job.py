"""Run a whole match job: plan -> execute work units -> merge -> persist.

The four steps live apart, as plain data and functions, so that a job runs the same way in one
process, in a local process pool (``processes=N``) or spread over a Dask cluster
(:mod:`tomomatch.distributed`):

:func:`plan_match`
    Validates the inputs and parameters and returns a :class:`MatchPlan`: the tile plan, the
    rotation set, the checkpoint key and a list of :class:`WorkUnit` ``(tile, rotation chunk
    [start, stop))``. Picklable; holds no volume data.
:func:`run_unit`
    Searches one unit and returns a :class:`UnitResult` (running maximum, argmax, noise
    maximum and float64 sums per rotation over the tile's unique region), saved atomically as
    the unit's checkpoint file. Deterministic: rotation batches are fixed multiples of the
    tile's batch size counted from rotation 0, and chunk boundaries are multiples of it too,
    so a unit's scores are bit-identical whatever the chunking.
:func:`merge_units`
    Exact and order-independent: per voxel the maximum over chunks, ties going to the lower
    rotation index (the index of the first rotation reaching the maximum, as in one
    uninterrupted pass); the search statistics are exactly rounded sums (``math.fsum``) of
    the per-rotation sums. Any chunking and any completion order give identical outputs.
:func:`write_outputs`
    ``_scores.mrc`` (float32 max FLCF), ``_angles.mrc`` (float32 rotation index, -1 where not
    searched), ``_rotations.txt`` (RELION ZYZ degrees, line i = index i) and ``_job.json``
    (the contract is ``docs/matching.md`` / the job schema), all written atomically, the job
    file last.

Checkpoints: ``<out_dir>/<name>_checkpoints/`` holds ``key.txt`` (a SHA-256 of the input files'
contents and every parameter that changes the result) and one file per unit:
``tile_<i>.npz`` when the unit covers all rotations of tile ``i``, else
``tile_<i>_rot_<start>-<stop>.npz``. Each stores the key, the unit's range and its running
state, saved atomically after a batch at most every ``checkpoint_interval_s`` seconds and when
the unit ends. Started again with the same inputs and parameters, a job skips finished units,
continues unfinished ones from their last batch and ends with outputs identical to an
uninterrupted run; a checkpoint directory (or file) with another key is discarded. The
directory is removed after success.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import scipy.fft
import torch

from . import __version__
from .angles import crowther_step_deg, parse_symmetry, read_angle_list, uniform_rotations, write_rotations
from .conventions import GEOMETRY_VERSION
from .errors import InputError
from .matching import (
    EngineConfig,
    TileCorrelator,
    TileState,
    configure_allocator,
    engine_description,
    fast_fft_shape,
    is_spherical_mask,
    phase_randomised_template,
    parse_devices,
    resolve_device,
)
from .matching.fft import _MIN_THREADED_FFT
from .mrcio import atomic_path, check_voxel_size_agrees, read_volume, read_voxel_size, write_volume
from .jobfile import JOB_FORMAT, check_geometry_version, read_job, write_job
from .options import DEFAULT_MAX_MEMORY_GB, MatchOptions
from . import preparation
from .progress import ProgressBars
from .region import file_sha256, load_search_region
from .template import SYMMETRY_AGREEMENT_MIN, symmetry_agreement
from .tiles import Tile, auto_tile_counts, crop_tiles, plan_tiles

__all__ = [
    "run_match",
    "read_job",
    "write_job",
    "check_geometry_version",
    "JOB_FORMAT",
    "DEFAULT_MAX_MEMORY_GB",
    "MatchPlan",
    "WorkUnit",
    "UnitResult",
    "MergedMatch",
    "plan_match",
    "prepare_checkpoints",
    "load_unit",
    "run_unit",
    "merge_units",
    "load_unit_results",
    "write_outputs",
    "remove_checkpoints",
]

_MAX_BATCH = 16


# --------------------------------------------------------------------------- job file


# --------------------------------------------------------------------------- helpers


def _rel(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), base.resolve())
    except ValueError:  # different drives
        return str(Path(path).resolve())


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class WorkUnit:
    """One unit of work: rotations ``[start, stop)`` of tile ``tile`` (``index``: position in the plan)."""

    index: int
    tile: int
    start: int
    stop: int


@dataclass
class MatchPlan:
    """Everything a match job needs, validated: inputs, parameters, tiles, rotations, units.

    Plain, picklable data (no volumes): it travels to worker processes. ``options`` are the
    job's :class:`~tomomatch.options.MatchOptions` *resolved* against the inputs: the
    handedness (metadata or 0), wedge (per-tilt with metadata, else none), CTF actually used
    (None without defocus), angular step, canonical symmetry, tile counts and device. ``key`` is the
    checkpoint key (SHA-256 of the input files and of every parameter that changes the
    result); ``batch_sizes[i]`` is tile ``i``'s rotation batch (batches start at multiples of
    it, and so do the unit boundaries). ``engine`` is the engine configuration (FFT sizes and
    libraries, packed path, fold kernel; :class:`~tomomatch.matching.EngineConfig`) every unit
    is computed with, whatever process or machine runs it; it is part of the key. ``devices``
    are the workers' devices of ``--device cuda:0,1`` (empty: ``options.device``, which is the
    first of them; :attr:`worker_devices`).
    """

    name: str
    out_dir: Path
    tomogram: Path
    template: Path
    mask: Path
    voxel_size_angstrom: float
    shape_zyx: tuple[int, int, int]
    template_shape_zyx: tuple[int, int, int]
    mask_is_spherical: bool
    rotations: np.ndarray
    options: MatchOptions
    tilt_series: Any
    tiles: list[Tile]
    batch_sizes: list[int]
    units: list[WorkUnit]
    key: str
    engine: EngineConfig
    search_region: dict | None = None
    devices: tuple[str, ...] = ()

    @property
    def worker_devices(self) -> tuple[str, ...]:
        """The device of each worker slot (``--device cuda:0,1``), or the options' one device."""
        return self.devices or (str(self.options.device),)

    @property
    def n_voxels_computed(self) -> int:
        """Voxels whose scores the tiles compute (the union of their unique regions)."""
        return int(sum(np.prod([b - a for a, b in zip(t.unique_start_zyx, t.unique_stop_zyx)]) for t in self.tiles))

    @property
    def n_voxels_searched(self) -> int:
        """Voxels of the search region (the whole tomogram without one)."""
        if self.search_region is None:
            return int(np.prod(self.shape_zyx))
        return int(self.search_region["n_voxels"])

    @property
    def n_rotations(self) -> int:
        return int(len(self.rotations))

    def with_units(self, rotations_per_unit: int | None = None, min_units: int = 1) -> "MatchPlan":
        """The same plan cut into other work units (not part of the key: any cut gives the same
        outputs, and finished units of another cut are recomputed, never mixed)."""
        units = _make_units(len(self.tiles), self.n_rotations, self.batch_sizes, rotations_per_unit, min_units)
        return replace(self, units=units)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / f"{self.name}_checkpoints"

    def unit_path(self, unit: WorkUnit) -> Path:
        """Checkpoint file of ``unit``."""
        if unit.start == 0 and unit.stop == self.n_rotations:
            return self.checkpoint_dir / f"tile_{unit.tile:04d}.npz"
        return self.checkpoint_dir / f"tile_{unit.tile:04d}_rot_{unit.start:06d}-{unit.stop:06d}.npz"

    def output_paths(self) -> dict[str, Path]:
        """The output files: ``scores``, ``angles``, ``rotations``, ``job``."""
        o, n = self.out_dir, self.name
        return {
            "scores": o / f"{n}_scores.mrc",
            "angles": o / f"{n}_angles.mrc",
            "rotations": o / f"{n}_rotations.txt",
            "job": o / f"{n}_job.json",
        }


def _estimate_batch_size(
    data_shape, box: int, method: str, spherical: bool, n_templates: int, device_type: str, max_memory_gb: float
) -> int:
    """Rotations per batch for a tile (the memory model of ``TileCorrelator.batch_bytes``)."""
    n = float(np.prod(fast_fft_shape(data_shape)))
    per = 4 * n + 4 * n + 4 * n
    if method == "resample":
        p = int(scipy.fft.next_fast_len(int(math.ceil(2 * box))))
        p += p % 2
        per += 8 * float(p**3)
    if not spherical:
        per += 3 * 8 * n
    per = max(int(per * n_templates), 1)
    free = max_memory_gb * 1e9 - 6 * 4 * n
    # the CPU gains nothing from big batches; at the seed's size one pair per batch ran 3-8 %
    # faster than two (smaller working set)
    cap = _MAX_BATCH if device_type == "cuda" else (2 if n >= _MIN_THREADED_FFT else 4)
    return int(max(1, min(cap, free // per)))


def _make_units(
    n_tiles: int, n_rot: int, batch_sizes: Sequence[int], rotations_per_unit: int | None, min_units: int
) -> list[WorkUnit]:
    units: list[WorkUnit] = []
    if rotations_per_unit is None:
        chunks = max(1, math.ceil(max(int(min_units), 1) / n_tiles))
        rotations_per_unit = math.ceil(n_rot / chunks)
    if rotations_per_unit < 1:
        raise InputError(f"rotations per unit {rotations_per_unit}; expected >= 1", None, "--rotations-per-unit")
    for ti in range(n_tiles):
        bs = batch_sizes[ti]
        size = max(bs, math.ceil(rotations_per_unit / bs) * bs)  # a multiple of the batch size
        for start in range(0, n_rot, size):
            units.append(WorkUnit(len(units), ti, start, min(n_rot, start + size)))
    return units


def _check_relion_tomogram_size(ts, shape_zyx, tomogram) -> None:
    """A tomogram must have RELION 5's ``rlnTomoSizeX/Y/Z / binning`` shape (one voxel of
    rounding allowed): particle coordinates are centred on that size, so another tomogram
    would put every particle off by the difference."""
    if ts is None or "size_xyz_unbinned" not in ts.extra or not ts.extra.get("binning"):
        return
    binning = float(ts.extra["binning"])
    want_xyz = np.asarray(ts.extra["size_xyz_unbinned"], float) / binning
    have_xyz = np.asarray(shape_zyx[::-1], float)
    if np.any(np.abs(have_xyz - want_xyz) > 1.0):
        want = tuple(round(float(v), 1) for v in want_xyz)
        raise InputError(
            f"tomogram size (x, y, z) {tuple(int(v) for v in have_xyz)} differs from RELION's "
            f"rlnTomoSizeX/Y/Z / binning {binning:g} = {want} (from {ts.extra.get('tomograms_star')});"
            " expected the tomogram RELION reconstructed for this tilt series",
            tomogram,
            "rlnTomoSizeX/Y/Z",
        )


#: symmetry agreement per (template SHA-256, mask SHA-256, group): batch rows and hand's coarse
#: searches plan the same template many times, and the check turns it |G| - 1 times
_AGREEMENT_CACHE: dict[tuple[str, str, str], float] = {}


def _symmetry_agreement_of_files(digests: tuple[str, str], symmetry: str, tmpl_np, mask_np) -> float:
    """:func:`tomomatch.template.symmetry_agreement` of the template and mask whose files have the
    SHA-256 ``digests``, computed once per their contents and the group in this process."""
    key = (digests[0], digests[1], symmetry)
    if key not in _AGREEMENT_CACHE:
        _AGREEMENT_CACHE[key] = symmetry_agreement(tmpl_np, mask_np, symmetry)
    return _AGREEMENT_CACHE[key]


def plan_match(
    template,
    mask,
    tomogram,
    out_dir,
    options: MatchOptions | None = None,
    *,
    tilt_series=None,
    rotations: np.ndarray | None = None,
    rotations_per_unit: int | None = None,
    min_units: int = 1,
    check_device: bool = True,
    engine: EngineConfig | None = None,
    **option_fields,
) -> MatchPlan:
    """Validate a match job and plan it (tiles, rotations, work units, checkpoint key).

    Parameters are those of :func:`run_match` (``options``, or its fields as keywords on top of
    ``options``), plus:

    rotations_per_unit
        Rotations per work unit (rounded up to a multiple of the tile's batch size). Default:
        all rotations of a tile in one unit, or fewer so that there are at least ``min_units``.
    min_units
        Least number of units to aim for (e.g. a few per worker) when ``rotations_per_unit``
        is not given.
    check_device
        Check that ``device`` exists here (off when the workers, not this machine, hold the GPUs).
    engine
        The engine configuration of the whole job (:class:`~tomomatch.matching.EngineConfig`);
        default: read from the environment (``TOMOMATCH_*``) here, once. It enters the
        checkpoint key and the job file, and the workers use it, not their own environment.

    Reads the three volumes once to validate them; the plan itself holds no volume data.
    Raises :class:`InputError` for bad input.
    """
    configure_allocator()
    opts = MatchOptions.from_flat(options, **option_fields) if option_fields else (options or MatchOptions())
    if not isinstance(opts, MatchOptions):
        raise TypeError(f"options must be MatchOptions, got {type(opts).__name__}")
    if engine is None:
        engine = EngineConfig.from_environment()
    elif not isinstance(engine, EngineConfig):
        raise TypeError(f"engine must be an EngineConfig, got {type(engine).__name__}")
    wopts = opts.weighting
    # one device per worker (--device cuda:0,1 / cuda:all); the plan is made for the first, the
    # others compute the same units with the same batches (the key holds the device type only)
    devices = parse_devices(opts.device, check=check_device)
    dev = torch.device(devices[0])
    out_dir = Path(out_dir).absolute()
    template, mask, tomogram = Path(template).absolute(), Path(mask).absolute(), Path(tomogram).absolute()
    name = opts.name or tomogram.stem
    low_pass_angstrom = wopts.low_pass_angstrom

    # ---------------------------------------------------------------- inputs
    vol_np, voxel = read_volume(tomogram, opts.voxel_size_angstrom, what="tomogram")
    t_vs = read_voxel_size(template)
    tmpl_np, _ = read_volume(template, t_vs if t_vs > 0 else voxel, what="template")
    check_voxel_size_agrees(template, voxel, "template", "resample the template", "voxel size")
    check_voxel_size_agrees(mask, voxel, "mask", "make the mask at the template's voxel size", "voxel size")
    mask_np, _ = read_volume(mask, voxel, what="mask")
    digests = (file_sha256(template), file_sha256(mask))  # the checkpoint key's and the symmetry cache's
    nz, ny, nx = vol_np.shape  # 3-D: read_volume's default ndim
    vol_shape = (int(nz), int(ny), int(nx))
    del vol_np
    _check_relion_tomogram_size(tilt_series, vol_shape, tomogram)
    n = tmpl_np.shape[0]
    if tmpl_np.shape != (n, n, n):
        raise InputError(f"template shape {tmpl_np.shape}; expected a cubic box", template)
    if mask_np.shape != tmpl_np.shape:
        raise InputError(f"mask shape {mask_np.shape} differs from the template's {tmpl_np.shape}", mask)
    if any(n > s for s in vol_shape):
        raise InputError(f"template box {n} is larger than the tomogram {vol_shape}", template)
    if not mask_np.sum() > 0:
        raise InputError("mask is empty (sum <= 0)", mask)

    ts = tilt_series
    hand = opts.defocus_handedness
    if hand is None:
        hand = ts.hand if (ts is not None and ts.hand is not None) else 0
    wedge = wopts.wedge if wopts.wedge is not None else ("per_tilt" if ts is not None else "none")
    if wedge != "none" and ts is None:
        raise InputError(f"--wedge {wedge.replace('_', '-')} needs tilt metadata (e.g. --tilt-angles)", None, "--wedge")
    ctf_used = wopts.ctf if (ts is not None and ts.has_defocus and wedge != "none") else None
    angular_step_deg, symmetry = opts.angular_step_deg, parse_symmetry(opts.symmetry)
    angle_list, angle_list_sha = opts.angle_list, None
    # rotations
    if rotations is not None and angle_list is not None:
        raise InputError("rotations given and --angle-list too; expected one of them", None, "--angle-list")
    if angle_list is not None:  # searched as given; the file's SHA-256 enters the key
        alist = read_angle_list(angle_list)
        rots, angle_list, angle_list_sha = alist.rotations, alist.spec, alist.sha256
    elif rotations is None:
        if angular_step_deg is None:
            if opts.particle_diameter_angstrom is None:
                raise InputError("give --angular-step, --particle-diameter or --angle-list", None, "--angular-step")
            angular_step_deg = crowther_step_deg(opts.particle_diameter_angstrom, voxel, low_pass_angstrom)
        rots = uniform_rotations(angular_step_deg, symmetry)
        if symmetry != "C1":
            agreement = _symmetry_agreement_of_files(digests, symmetry, tmpl_np, mask_np)
            if agreement < SYMMETRY_AGREEMENT_MIN:
                warnings.warn(
                    f"{template}: the template correlates only {agreement:.2f} with its own {symmetry} mates"
                    f" (expected >= {SYMMETRY_AGREEMENT_MIN}): it is not in RELION's {symmetry} orientation"
                    " (n-fold axis along z), so --symmetry would skip orientations the particles need;"
                    " align it (tomomatch template --align-symmetry, or relion_align_symmetry) or search C1",
                    stacklevel=2,
                )
    else:
        rots = np.asarray(rotations, float).reshape(-1, 3, 3)
    if len(rots) == 0:
        raise InputError("no rotations to search", None, "rotations")
    # tiles
    tilts_all = None if ts is None else ts.tilt_angles_deg
    if opts.tiles == "auto":
        if ctf_used is None or hand == 0:
            counts = (1, 1, 1)
        else:
            inc = ts.tilt_angles_deg[~ts.excluded]
            res = max(2 * voxel, low_pass_angstrom or 0.0)
            counts = auto_tile_counts(vol_shape, voxel, n, inc, res, ts.voltage_kv, hand)
    else:
        assert not isinstance(opts.tiles, str)  # MatchOptions holds "auto" or three int counts (parse_tiles)
        counts = opts.tiles
    tile_plan = plan_tiles(
        vol_shape, n, counts, voxel, tilts_all, hand, opts.hand_mode, x_tilt_deg=0.0 if ts is None else ts.x_tilt_deg
    )
    # search region: tiles that miss it are dropped, the others cropped to it (their centres and
    # defocus offsets stay those of the full tiles, so the scores are the unrestricted search's)
    region, region_record = load_search_region(opts, vol_shape, voxel)
    if region is not None:
        tile_plan = crop_tiles(tile_plan, region, n)
        del region
    for t in tile_plan:
        if any(n > s for s in t.data_shape_zyx):
            raise InputError(
                f"template box {n} is larger than tile {t.grid_index_xyz} {t.data_shape_zyx}; use fewer tiles",
                None,
                "--tiles",
            )
    spherical = is_spherical_mask(mask_np)
    n_templates = 2 if opts.random_phase else 1
    batch_sizes = [
        opts.batch_size
        if opts.batch_size
        else _estimate_batch_size(
            t.data_shape_zyx, n, opts.method, spherical, n_templates, dev.type, opts.max_memory_gb
        )
        for t in tile_plan
    ]
    units = _make_units(len(tile_plan), len(rots), batch_sizes, rotations_per_unit, min_units)

    # ---------------------------------------------------------------- checkpoint key
    resolved = replace(
        opts,
        name=name,
        angular_step_deg=None if angular_step_deg is None else float(angular_step_deg),
        symmetry=symmetry,
        angle_list=angle_list,
        defocus_handedness=hand,
        tiles=counts,
        device=str(dev),
        weighting=replace(wopts, wedge=wedge, ctf=ctf_used),
        tomogram_mask=None if region_record is None else region_record["tomogram_mask"],
    )
    params = {
        "format": JOB_FORMAT,
        "geometry_version": GEOMETRY_VERSION,
        "version": __version__,
        "method": resolved.method,
        "voxel": voxel,
        "rotations_sha": hashlib.sha256(np.ascontiguousarray(rots, np.float64).tobytes()).hexdigest(),
        "low_pass": wopts.low_pass_angstrom,
        "high_pass": wopts.high_pass_angstrom,
        "whiten": wopts.whiten,
        "wedge": wedge,
        "ctf": ctf_used,
        "dose": wopts.dose,
        "cos": wopts.cos_weighting,
        "hand": hand,
        "hand_mode": resolved.hand_mode,
        "tiles": list(counts),
        "random_phase": resolved.random_phase,
        "tilt_series": None if ts is None else ts.to_json(),
        "batch_sizes": batch_sizes,
        "device_type": dev.type,
        "units_format": 2,
        "engine": engine.to_json(),
    }
    if angle_list_sha is not None:
        params["angle_list_sha256"] = angle_list_sha
    if region_record is not None:  # another region crops other tiles: never resume across regions
        params["search_region"] = {
            k: region_record[k] for k in ("tomogram_mask_sha256", "search_x", "search_y", "search_z", "n_voxels")
        }
    key_src = json.dumps(params, sort_keys=True) + file_sha256(tomogram) + "".join(digests)
    key = hashlib.sha256(key_src.encode()).hexdigest()
    return MatchPlan(
        name=name,
        out_dir=out_dir,
        tomogram=tomogram,
        template=template,
        mask=mask,
        voxel_size_angstrom=float(voxel),
        shape_zyx=vol_shape,
        template_shape_zyx=tuple(tmpl_np.shape),
        mask_is_spherical=bool(spherical),
        rotations=rots,
        options=resolved,
        tilt_series=ts,
        tiles=list(tile_plan),
        batch_sizes=batch_sizes,
        units=units,
        key=key,
        engine=engine,
        search_region=region_record,
        devices=tuple(devices),
    )


# --------------------------------------------------------------------------- checkpoints


def prepare_checkpoints(plan: MatchPlan) -> Path:
    """Create ``<name>_checkpoints/`` with the plan's key; a folder with another key is discarded."""
    ck_dir = plan.checkpoint_dir
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    if ck_dir.exists():
        try:
            old = (ck_dir / "key.txt").read_text().strip()
        except OSError:
            old = ""
        if old and any(ck_dir.glob("*.npz")):
            # finished work of another tilt geometry is never resumed nor silently thrown away
            try:
                version = (ck_dir / "geometry.txt").read_text().strip()
            except OSError:
                version = "1"  # checkpoints written before the geometry was recorded
            check_geometry_version(version, ck_dir, "checkpoints")
        if old != plan.key:
            shutil.rmtree(ck_dir)
    ck_dir.mkdir(exist_ok=True)
    if not (ck_dir / "key.txt").exists():
        with atomic_path(ck_dir / "geometry.txt") as tmp:
            tmp.write_text(f"{GEOMETRY_VERSION}\n")
        with atomic_path(ck_dir / "key.txt") as tmp:
            tmp.write_text(plan.key + "\n")
    return ck_dir


def remove_checkpoints(plan: MatchPlan) -> None:
    """Remove the plan's checkpoint folder (after the outputs are written)."""
    shutil.rmtree(plan.checkpoint_dir, ignore_errors=True)


def _save_unit(plan: MatchPlan, unit: WorkUnit, state: TileState) -> None:
    path = plan.unit_path(unit)
    d = state.to_numpy()
    d.update(key=np.array(plan.key), tile=np.int64(unit.tile), start=np.int64(unit.start), stop=np.int64(unit.stop))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **d)


#: What reading a damaged, truncated or foreign checkpoint file raises (it is then recomputed).
#: Anything else (MemoryError, a CUDA error moving the state to the device, a bug) propagates.
_DAMAGED_CHECKPOINT = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)


def load_unit(plan: MatchPlan, unit: WorkUnit, device="cpu") -> TileState | None:
    """The unit's saved state (finished or not), or None if absent, damaged (unreadable, truncated,
    fields missing or malformed: :data:`_DAMAGED_CHECKPOINT`) or of another key."""
    path = plan.unit_path(unit)
    if not path.exists():
        return None
    try:
        with np.load(path) as d:
            d = dict(d)
        ok = (
            str(d.get("key", "")) == plan.key
            and int(d["tile"]) == unit.tile
            and int(d["start"]) == unit.start
            and int(d["stop"]) == unit.stop
            and unit.start <= int(d["done"]) <= unit.stop
            and len(d.get("rotation_sums", ())) == int(d["done"]) - unit.start
        )
        if not ok:
            return None
        return TileState.from_numpy(d, device)
    except _DAMAGED_CHECKPOINT:  # a damaged file is recomputed
        return None


def unit_finished(plan: MatchPlan, unit: WorkUnit) -> bool:
    """Whether ``unit`` has a finished checkpoint with the plan's key."""
    st = load_unit(plan, unit)
    return st is not None and st.done == unit.stop


# --------------------------------------------------------------------------- execute


@dataclass
class UnitResult:
    """Search result of one work unit over its tile's unique region (numpy, picklable).

    ``best`` float32 maximum, ``index`` int32 global index of the first rotation reaching it,
    ``noise_best`` the phase-randomised template's maximum (or None), ``rotation_sums`` and
    ``rotation_sumsqs`` float64 sums of the scores per rotation, ``count`` values summed,
    ``resumed`` rotations restored from a checkpoint instead of computed.
    """

    unit: WorkUnit
    best: np.ndarray
    index: np.ndarray
    noise_best: np.ndarray | None
    rotation_sums: np.ndarray
    rotation_sumsqs: np.ndarray
    count: int
    resumed: int = 0
    #: the worker slot that computed it (``execute_local``), None when restored from a checkpoint
    worker: int | None = None

    @classmethod
    def from_state(cls, unit: WorkUnit, st: TileState, resumed: int = 0) -> "UnitResult":
        return cls(
            unit=unit,
            best=st.best.cpu().numpy(),
            index=st.index.cpu().numpy().astype(np.int32),
            noise_best=None if st.noise_best is None else st.noise_best.cpu().numpy(),
            rotation_sums=np.asarray(st.rotation_sums, np.float64),
            rotation_sumsqs=np.asarray(st.rotation_sumsqs, np.float64),
            count=int(st.count),
            resumed=int(resumed),
        )


@dataclass
class _Context:
    volume: torch.Tensor
    template: np.ndarray
    mask: np.ndarray
    random_phase_template: np.ndarray | None
    whitening: dict = field(default_factory=dict)


# per-process caches (a worker running several units of one tomogram/tile reads and filters once)
_CONTEXTS: dict = {}
_CORRELATORS: dict = {}


def clear_caches() -> None:
    """Drop the per-process volume and tile caches of :func:`run_unit`."""
    _CONTEXTS.clear()
    _CORRELATORS.clear()


class _one_torch_thread:
    """Set-up work (normalisation, filters, weights) on one torch thread: vectorised and scalar
    code paths of some elementwise functions round differently, and how a tensor is split among
    threads decides which path each element takes; one thread makes the set-up, and so the
    scores, independent of the thread count of the process running a unit."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        if self.n > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.n > 1:
            torch.set_num_threads(self.n)
        return False


def _build_context(plan: MatchPlan, dev: torch.device) -> _Context:
    with _one_torch_thread():
        return _build_context_1(plan, dev)


def _build_context_1(plan: MatchPlan, dev: torch.device) -> _Context:
    vol_np, _ = read_volume(plan.tomogram, plan.voxel_size_angstrom, what="tomogram")
    tmpl_np, _ = read_volume(plan.template, plan.voxel_size_angstrom, what="template")
    mask_np, _ = read_volume(plan.mask, plan.voxel_size_angstrom, what="mask")
    ts, n, wo = plan.tilt_series, plan.template_shape_zyx[0], plan.options.weighting
    prep = preparation.prepare_tomogram(
        vol_np,
        plan.voxel_size_angstrom,
        low_pass_angstrom=wo.low_pass_angstrom,
        high_pass_angstrom=wo.high_pass_angstrom,
        whiten=wo.whiten,
        tilt_angles_deg=None if ts is None else ts.tilt_angles_deg[~ts.excluded],
        template_shape_zyx=(n, n, n),
        device=dev,
    )
    del vol_np
    vol_t, white = prep.volume, prep.whitening
    rp = phase_randomised_template(tmpl_np, mask_np) if plan.options.random_phase else None
    return _Context(vol_t, tmpl_np, mask_np, rp, white)


def _context(plan: MatchPlan, dev: torch.device) -> _Context:
    k = (plan.key, str(dev))
    if k not in _CONTEXTS:
        clear_caches()  # one tomogram at a time per process
        _CONTEXTS[k] = _build_context(plan, dev)
    return _CONTEXTS[k]


def _template_weight(plan: MatchPlan, ctx: _Context, tile: Tile, dev: torch.device):
    wo, ts, voxel = plan.options.weighting, plan.tilt_series, plan.voxel_size_angstrom
    lp, hp = wo.low_pass_angstrom, wo.high_pass_angstrom
    if wo.wedge == "none" and lp is None and hp is None and not wo.whiten:
        return None
    offs = None
    if ts is not None and plan.options.defocus_handedness != 0 and tile.defocus_offsets_um:
        offs = np.asarray(tile.defocus_offsets_um, float)

    def weight(shape):
        from .weighting import bandpass, tilt_series_weight

        wh = ctx.whitening.get(tuple(shape)) if wo.whiten else None
        if wo.whiten and wh is None:
            raise RuntimeError(f"no whitening filter for grid {tuple(shape)}")
        if wo.wedge == "none":
            w = bandpass(shape, voxel, lp, hp, device=dev)
            return w if wh is None else w * wh.to(dev)
        # built on the CPU (a box-sized grid): the per-tilt insertion uses index_add_, whose
        # CUDA atomics would make the weight, and so the scores, vary from run to run
        return tilt_series_weight(
            ts,
            shape,
            voxel,
            defocus_offset_um=offs,
            per_tilt=(wo.wedge == "per_tilt"),
            ctf_mode=wo.ctf,
            dose_weighting=wo.dose,
            cos_weighting=wo.cos_weighting,
            low_pass_angstrom=lp,
            high_pass_angstrom=hp,
            whitening=None if wh is None else wh.cpu(),
            device="cpu",
        ).to(dev)

    return weight


def _correlator(plan: MatchPlan, ti: int, dev: torch.device) -> TileCorrelator:
    k = (plan.key, str(dev), ti)
    if k not in _CORRELATORS:
        ctx = _context(plan, dev)
        _CORRELATORS.clear()
        tile = plan.tiles[ti]
        with _one_torch_thread():
            _CORRELATORS[k] = TileCorrelator(
                ctx.volume[tile.data_slices],
                ctx.template,
                ctx.mask,
                tile.unique_in_data,
                weight=_template_weight(plan, ctx, tile, dev),
                method=plan.options.method,
                spherical=plan.mask_is_spherical,
                random_phase_template=ctx.random_phase_template,
                device=dev,
                engine=plan.engine,
            )
    return _CORRELATORS[k]


def run_unit(
    plan: MatchPlan, unit: WorkUnit, *, device: str | None = None, on_progress: Callable[[int], None] | None = None
) -> UnitResult:
    """Search one work unit, saving its checkpoint (atomically); returns its :class:`UnitResult`.

    A finished checkpoint with the plan's key is returned without computing; an unfinished one
    is continued. ``device`` overrides the plan's (e.g. the GPU of a worker);
    ``on_progress(n)`` is called with the number of rotations each batch added. The checkpoint
    folder must exist (:func:`prepare_checkpoints`).
    """
    configure_allocator()
    dev = resolve_device(device or plan.options.device)
    state = load_unit(plan, unit, dev)
    resumed = 0 if state is None else state.done - unit.start
    if state is None or state.done < unit.stop:
        tc = _correlator(plan, unit.tile, dev)
        if state is None:
            tile = plan.tiles[unit.tile]
            ushape = tuple(b - a for a, b in zip(tile.unique_start_zyx, tile.unique_stop_zyx))
            state = TileState.empty(ushape, dev, random_phase=plan.options.random_phase)
            state.done = unit.start
        last = [time.time(), state.done]

        def on_batch(st):
            if on_progress is not None:
                on_progress(st.done - last[1])
            last[1] = st.done
            now = time.time()
            if st.done >= unit.stop or now - last[0] >= plan.options.checkpoint_interval_s:
                _save_unit(plan, unit, st)
                last[0] = now

        state = tc.run(plan.rotations, state, batch_size=plan.batch_sizes[unit.tile], on_batch=on_batch, stop=unit.stop)
    return UnitResult.from_state(unit, state, resumed)


def load_unit_results(plan: MatchPlan) -> list[UnitResult]:
    """Finished results of all the plan's units from their checkpoints (ValueError if one is missing)."""
    out = []
    for u in plan.units:
        st = load_unit(plan, u)
        if st is None or st.done != u.stop:
            raise ValueError(f"unit {u} of {plan.name} has no finished checkpoint in {plan.checkpoint_dir}")
        out.append(UnitResult.from_state(u, st, resumed=u.stop - u.start))
    return out


# --------------------------------------------------------------------------- merge


@dataclass
class MergedMatch:
    """Merged maps and statistics of a match job (see :func:`merge_units`)."""

    scores: np.ndarray
    angles: np.ndarray
    n_search: int
    mean: float
    std: float
    noise_mean: float | None
    resumed_rotations: int


def merge_units(plan: MatchPlan, results: Sequence[UnitResult]) -> MergedMatch:
    """Merge unit results into the score/angle maps and search statistics, exactly.

    Per tile the chunks are taken in rotation order; a later chunk wins a voxel only with a
    strictly larger score, so ties keep the lower rotation index, and the maps equal those of
    one uninterrupted pass over all rotations whatever the chunking or completion order. The
    mean and standard deviation come from exactly rounded sums (``math.fsum``) of the
    per-rotation float64 sums, so they do not depend on the order either.

    With ``random_phase`` the scores become ``max - noise max + mean(noise max)``: the
    per-voxel bias of the maximum is replaced by its mean, so the corrected map stays on the
    scale of the raw maxima, and the raw per-rotation mean and standard deviation remain the
    statistics of the Gaussian cut-off and ``score_sigma`` (tested on pure noise:
    ``test_random_phase_scores_keep_the_scale_of_the_search_statistics``).
    """
    by_tile: dict[int, list[UnitResult]] = {}
    for r in results:
        by_tile.setdefault(r.unit.tile, []).append(r)
    n_rot = plan.n_rotations
    scores = np.zeros(plan.shape_zyx, np.float32)
    angles = np.full(plan.shape_zyx, -1.0, np.float32)
    noise = np.zeros(plan.shape_zyx, np.float32) if plan.options.random_phase else None
    sums: list[np.ndarray] = []
    sumsqs: list[np.ndarray] = []
    count = resumed = 0
    for ti, tile in enumerate(plan.tiles):
        parts = sorted(by_tile.get(ti, []), key=lambda r: r.unit.start)
        pos = 0
        for p in parts:
            if p.unit.start != pos or len(p.rotation_sums) != p.unit.stop - p.unit.start:
                break
            pos = p.unit.stop
        if pos != n_rot or not parts:
            raise ValueError(f"tile {ti} of {plan.name}: unit results do not cover rotations 0..{n_rot} once")
        best = torch.from_numpy(np.array(parts[0].best, np.float32))
        index = torch.from_numpy(np.array(parts[0].index, np.int32))
        nb = None if noise is None else torch.from_numpy(np.array(parts[0].noise_best, np.float32))
        for p in parts[1:]:
            pb = torch.from_numpy(np.asarray(p.best, np.float32))
            gt = torch.gt(pb, best)
            best = torch.maximum(best, pb)
            index[gt] = torch.from_numpy(np.asarray(p.index, np.int32))[gt]
            if nb is not None:
                nb = torch.maximum(nb, torch.from_numpy(np.asarray(p.noise_best, np.float32)))
        us = tile.unique_slices
        scores[us] = best.numpy()
        angles[us] = index.numpy().astype(np.float32)
        if noise is not None:
            assert nb is not None  # set above whenever noise is
            noise[us] = nb.numpy()
        for p in parts:
            sums.append(p.rotation_sums)
            sumsqs.append(p.rotation_sumsqs)
            count += int(p.count)
            resumed += int(p.resumed)
    noise_mean = None
    if noise is not None:
        noise_mean = float(noise.astype(np.float64).mean())
        scores = (scores.astype(np.float64) - noise + noise_mean).astype(np.float32)
    total = math.fsum(np.concatenate(sums).tolist())
    total_sq = math.fsum(np.concatenate(sumsqs).tolist())
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return MergedMatch(
        scores=scores,
        angles=angles,
        n_search=int(count),
        mean=mean,
        std=std,
        noise_mean=noise_mean,
        resumed_rotations=int(resumed),
    )


# --------------------------------------------------------------------------- persist


def write_outputs(
    plan: MatchPlan,
    merged: MergedMatch,
    *,
    elapsed_s: float = 0.0,
    command: str | None = None,
    device: str | None = None,
    execution: dict | None = None,
) -> dict:
    """Write the maps, the rotation list and (last) the job file, atomically; returns the job dict."""
    paths = plan.output_paths()
    voxel, ts, out_dir = plan.voxel_size_angstrom, plan.tilt_series, plan.out_dir
    write_volume(paths["scores"], merged.scores, voxel)
    write_volume(paths["angles"], merged.angles, voxel)
    write_rotations(paths["rotations"], plan.rotations)
    relion = None
    if ts is not None and "size_xyz_unbinned" in ts.extra:
        relion = {
            "unbinned_size_xyz": list(ts.extra["size_xyz_unbinned"]),
            "tilt_series_pixel_angstrom": ts.pixel_size_angstrom,
            "tomo_name": ts.name,
        }
    n_rot, opts = plan.n_rotations, plan.options
    wo, wedge = opts.weighting, opts.weighting.wedge
    search_region = None
    if plan.search_region is not None:
        search_region = dict(plan.search_region)
        if search_region["tomogram_mask"]:
            search_region["tomogram_mask"] = _rel(Path(search_region["tomogram_mask"]), out_dir)
        search_region["n_voxels_computed"] = int(merged.n_search // max(n_rot, 1))
    job: dict[str, Any] = {
        "tomomatch_version": __version__,
        "job_format": JOB_FORMAT,
        "geometry_version": GEOMETRY_VERSION,
        "name": plan.name,
        "tomogram": _rel(plan.tomogram, out_dir),
        "tomogram_shape_zyx": list(plan.shape_zyx),
        "voxel_size_angstrom": voxel,
        "template": _rel(plan.template, out_dir),
        "mask": _rel(plan.mask, out_dir),
        "template_shape_zyx": list(plan.template_shape_zyx),
        "mask_is_spherical": bool(plan.mask_is_spherical),
        "scores": paths["scores"].name,
        "angles": paths["angles"].name,
        "rotations": paths["rotations"].name,
        "angular_step_deg": opts.angular_step_deg,
        "symmetry": opts.symmetry,
        "n_rotations": int(n_rot),
        "particle_diameter_angstrom": opts.particle_diameter_angstrom,
        "defocus_handedness": opts.defocus_handedness,
        "hand_mode": opts.hand_mode,
        "tiles": list(opts.tiles),
        "tile_regions": [
            {
                "grid_index_xyz": list(t.grid_index_xyz),
                "unique_start_zyx": list(t.unique_start_zyx),
                "unique_stop_zyx": list(t.unique_stop_zyx),
                "centre_angstrom_xyz": list(t.centre_angstrom_xyz),
                "defocus_offsets_um": list(t.defocus_offsets_um),
            }
            for t in plan.tiles
        ],
        "weighting": {
            "wedge": wedge,
            "ctf": wo.ctf,
            "dose": bool(wo.dose and wedge == "per_tilt"),
            "cos": bool(wo.cos_weighting and wedge == "per_tilt"),
            "low_pass_angstrom": wo.low_pass_angstrom,
            "high_pass_angstrom": wo.high_pass_angstrom,
            "whitening": bool(wo.whiten),
            "random_phase": bool(opts.random_phase),
        },
        "tilt_series": None if ts is None else ts.to_json(),
        "relion": relion,
        "search_region": search_region,
        "search_statistics": {
            # the false-alarm count of extract: the searched voxels (the region) x rotations
            "n_voxels": int(plan.n_voxels_searched),
            "n_rotations": int(n_rot),
            "n_search": int(plan.n_voxels_searched) * int(n_rot),
            # mean and std are over every computed score: the region's bounding box per tile
            "n_voxels_computed": int(merged.n_search // max(n_rot, 1)),
            "n_search_computed": int(merged.n_search),
            "mean": merged.mean,
            "std": merged.std,
        },
        "random_phase_noise_mean": merged.noise_mean,
        "method": plan.options.method,
        "engine": {
            **engine_description(
                device or plan.options.device,
                plan.options.method,
                plan.mask_is_spherical,
                max(int(np.prod([b - a for a, b in zip(t.unique_start_zyx, t.unique_stop_zyx)])) for t in plan.tiles),
                engine=plan.engine,
            ),
            "config": plan.engine.to_json(),
        },
        "resumed_rotations": int(merged.resumed_rotations),
        "plan_key": plan.key,
        "device": device or plan.options.device,
        "elapsed_s": round(float(elapsed_s), 3),
        "command": command or "",
        "options": opts.to_json(),
        "tilt_series_name": (ts.name or None) if ts is not None else None,
        "execution": dict(execution or {}),
    }
    write_job(paths["job"], job)
    return job


# --------------------------------------------------------------------------- local execution


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker process die when its parent does (a SIGKILLed ``match`` must not leave
    its workers running): Linux's ``PR_SET_PDEATHSIG``, and a check that the parent is still the
    one that started us (it may have died before the call)."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except OSError:
            pass  # no libc by that name: the per-unit check below still applies
    if os.getppid() != parent_pid:
        os._exit(1)


#: this pool worker's slot and device (set once by ``_pool_init`` from the slot queue)
_WORKER_SLOT: tuple[int, str | None] = (0, None)


def _pool_init(parent_pid: int | None = None, slots=None) -> None:  # worker processes of the local pool
    global _WORKER_SLOT
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    torch.set_num_threads(1)
    if slots is not None:  # each worker takes one (slot, device): its GPU for the whole job
        _WORKER_SLOT = slots.get(timeout=60)


def _pool_unit(plan: MatchPlan, unit: WorkUnit, parent_pid: int | None = None) -> UnitResult:
    if parent_pid is not None and os.getppid() != parent_pid:  # orphaned: stop, do not compute
        os._exit(1)
    slot, device = _WORKER_SLOT
    return replace(run_unit(plan, unit, device=device), worker=slot)


def worker_slots(devices: Sequence[str], processes: int) -> list[tuple[int, str]]:
    """``(slot, device)`` of each of ``processes`` pool workers: the devices in turn."""
    return [(i, str(devices[i % len(devices)])) for i in range(processes)]


def _worker_record(results: Sequence[UnitResult], devices: Sequence[str], processes: int) -> list[dict]:
    """Per worker slot: its device, and the units and rotations it computed (resumed ones left out)."""
    slots = worker_slots(devices, processes)
    units, rotations = [0] * len(slots), [0] * len(slots)
    for r in results:
        if r.worker is not None and r.worker < len(slots):
            units[r.worker] += 1
            rotations[r.worker] += r.unit.stop - r.unit.start - r.resumed
    return [{"slot": i, "device": d, "units": units[i], "rotations": rotations[i]} for i, d in slots]


def execute_local(
    plan: MatchPlan, processes: int = 1, quiet: bool = True, devices: Sequence[str] | None = None
) -> list[UnitResult]:
    """Run all the plan's units here (``processes == 1``) or in a pool of single-threaded processes.

    ``devices`` (default: the plan's :attr:`MatchPlan.worker_devices`) are given to the pool's
    workers in turn, one device per worker for the whole job (``--device cuda:0,1``): units go
    to whichever worker is free, and the merge is the same as for any other split, so the
    outputs do not depend on the devices or their number. Finished units (checkpoints with the
    plan's key) are loaded, not recomputed. Returns the results in unit order; each computed
    result names its worker slot (:attr:`UnitResult.worker`). The checkpoint folder must exist
    (:func:`prepare_checkpoints`).
    """
    if processes < 1:
        raise InputError(f"{processes} processes; expected >= 1", None, "--processes")
    devs = list(devices or plan.worker_devices)
    results: dict[int, UnitResult] = {}
    todo = []
    for u in plan.units:
        st = load_unit(plan, u)
        if st is not None and st.done == u.stop:
            results[u.index] = UnitResult.from_state(u, st, resumed=u.stop - u.start)
        else:
            todo.append(u)
    n_rot_total = sum(u.stop - u.start for u in plan.units)
    done_rot = sum(u.stop - u.start for u in plan.units if u.index in results)
    progress = ProgressBars(
        {"work units": (len(plan.units), len(results)), "rotations (all tiles)": (n_rot_total, done_rot)}, quiet
    )
    try:
        if processes == 1 or len(todo) <= 1:
            for u in todo:
                res = run_unit(plan, u, device=devs[0], on_progress=lambda k: progress.advance(0, k))
                results[u.index] = replace(res, worker=0)
                progress.advance(1, 0)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            parent = os.getpid()
            n_workers = min(processes, len(todo))
            ctx = mp.get_context("spawn")
            slots = ctx.Queue()
            for slot in worker_slots(devs, n_workers):
                slots.put(slot)
            with ProcessPoolExecutor(
                max_workers=n_workers,
                mp_context=ctx,
                initializer=_pool_init,
                initargs=(parent, slots),
            ) as pool:
                futs = {pool.submit(_pool_unit, plan, u, parent): u for u in todo}
                for f in as_completed(futs):
                    u = futs[f]
                    results[u.index] = f.result()
                    progress.advance(1, u.stop - u.start - results[u.index].resumed)
    finally:
        progress.close()
    return [results[u.index] for u in plan.units]


# --------------------------------------------------------------------------- the job


#: voxels x rotations below which ``processes=None`` runs in this process (about 20 s of CPU work)
_AUTO_PROCESSES_MIN_WORK = 2e9


def run_match(
    template,
    mask,
    tomogram,
    out_dir,
    options: MatchOptions | None = None,
    *,
    tilt_series=None,
    rotations: np.ndarray | None = None,
    quiet: bool = True,
    command: str | None = None,
    processes: int | None = None,
    rotations_per_unit: int | None = None,
    engine: EngineConfig | None = None,
    **option_fields,
) -> dict:
    """Template-match a tomogram file and write the outputs; returns the job dict.

    :func:`plan_match` + :func:`execute_local` (skipping finished units) + :func:`merge_units`
    + :func:`write_outputs`; the checkpoint folder is removed after success.

    The options are a :class:`~tomomatch.options.MatchOptions` (``options``) and/or its fields
    as keywords (weighting fields flat: ``low_pass_angstrom=30``), applied on top of
    ``options``. Their meanings:

    Parameters
    ----------
    template, mask, tomogram
        MRC paths. Template and mask: cubic boxes of one shape, rotation centre ``n // 2``.
    out_dir, name
        Output folder and base name (default: the tomogram's stem).
    voxel_size_angstrom
        Overrides the tomogram header; the template's header must agree within 1 %.
    angular_step_deg, particle_diameter_angstrom
        Angular step, or the particle diameter for the Crowther step
        (``resolution / diameter``, resolution ``max(2 voxel, low pass)``). One is required
        unless ``rotations`` (``(N, 3, 3)`` pose matrices) are given.
    symmetry
        The template's point group in RELION's convention: ``"Cn"``, ``"Dn"``, ``"T"``, ``"O"``,
        ``"I"`` (I2; also I1, I3, I4); the rotations cover one asymmetric unit
        (:func:`tomomatch.angles.uniform_rotations`).
    low_pass_angstrom, high_pass_angstrom, whiten
        Band pass and spectral whitening, applied to tomogram and template.
    wedge
        ``"none"``, ``"binary"`` or ``"per_tilt"`` (default: ``"per_tilt"`` with tilt metadata,
        else ``"none"``).
    ctf
        ``"signed"``, ``"abs"`` (phase-flipped tomogram) or None; ignored without defocus.
    dose, cos_weighting
        Exposure filter and cos(tilt) in the per-tilt wedge.
    tilt_series
        :class:`tomomatch.tiltseries.TiltSeries` or None.
    defocus_handedness
        ``h`` in {1, -1, 0}; None takes the metadata's hand (RELION/Warp) or 0.
    hand_mode
        ``"full"`` or ``"pytom"`` (:func:`tomomatch.conventions.defocus_offset_angstrom`).
    tiles
        ``(nx, ny, nz)`` tile counts or ``"auto"``.
    device, max_memory_gb
        Torch device (``cpu``, ``cuda``, ``cuda:N``) and memory budget for rotation batches.
    random_phase
        Subtract the per-voxel maximum of a phase-randomised template (pytom/STOPGAP).
    method
        ``"fast"`` (Fourier-space rotation, exact transform onto the tile; default),
        ``"resample"`` (approximate, cheaper) or ``"exact"`` (real-space reference); see
        :mod:`tomomatch.matching`.
    quiet
        No progress bar.
    checkpoint_interval_s
        Minimum seconds between checkpoints inside a work unit (0: after every batch).
    batch_size
        Rotations per batch (default from ``max_memory_gb``).
    command
        The command line, recorded in the job file.
    processes
        Work units run in this many single-threaded processes (1: here, in this process).
        The outputs are identical for any number. Default (None): on the CPU, the cores this
        job may use (:func:`tomomatch.resources.available_cpus`: affinity and cgroup quota)
        when the search is big enough to pay for the workers' start-up, else 1; on a GPU, 1.
        The job file records what was used (``execution``).
    rotations_per_unit
        Rotations per work unit (default: a whole tile, or chunks giving about four units per
        process).
    engine
        :class:`~tomomatch.matching.EngineConfig` (default: from the ``TOMOMATCH_*`` environment
        variables, read once; see :func:`plan_match`).
    """
    from .locking import JobLock
    from .resources import available_cpus

    t_start = time.time()
    configure_allocator()
    auto = processes is None
    if not auto and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 1):
        raise InputError(f"{processes!r} processes; expected an integer >= 1", None, "--processes")
    cpus = available_cpus()

    def min_units(n_proc: int) -> int:
        return 4 * n_proc if n_proc > 1 else 1

    plan = plan_match(
        template,
        mask,
        tomogram,
        out_dir,
        options,
        tilt_series=tilt_series,
        rotations=rotations,
        rotations_per_unit=rotations_per_unit,
        min_units=min_units(1 if processes is None else int(processes)),
        engine=engine,
        **option_fields,
    )
    devices = plan.worker_devices
    if len(devices) > 1:  # --device cuda:0,1: one worker per listed device unless --processes says
        if processes is None:  # planned for one process: re-cut for the workers
            processes = len(devices)
            plan = plan.with_units(rotations_per_unit, min_units(processes))
    elif processes is None:  # auto
        work = float(plan.n_voxels_computed) * plan.n_rotations
        # a worker costs a few seconds to start (spawn, import torch): not worth it for small searches
        processes = (
            cpus if (torch.device(plan.options.device).type == "cpu" and work >= _AUTO_PROCESSES_MIN_WORK) else 1
        )
        if processes > 1:  # units for the pool (the same outputs, finer chunks); inputs not read again
            plan = plan.with_units(rotations_per_unit, min_units(processes))
    execution: dict[str, Any] = {
        "processes": int(processes),
        "processes_rule": "auto" if auto else "given",
        "available_cpus": int(cpus),
        "devices": list(devices),
    }
    with JobLock(plan.out_dir, plan.name, "match"):
        prepare_checkpoints(plan)
        try:
            results = execute_local(plan, processes, quiet)
        finally:
            clear_caches()
        execution["workers"] = _worker_record(results, devices, processes)
        merged = merge_units(plan, results)
        write_outputs(plan, merged, elapsed_s=time.time() - t_start, command=command, execution=execution)
        remove_checkpoints(plan)
    # the record as any reader sees it: paths resolved against the job file's folder
    return read_job(plan.output_paths()["job"])
