"""Run a whole match job: validate -> plan tiles -> search each tile -> merge -> write outputs.

Outputs (``<out_dir>/<name>_*``; the contract is ``docs/matching.md`` / the job schema):
``_scores.mrc`` (float32 max FLCF), ``_angles.mrc`` (float32 rotation index, -1 where not
searched), ``_rotations.txt`` (RELION ZYZ degrees, line i = index i) and ``_job.json``, all
written atomically, the job file last.

Checkpoints: ``<out_dir>/<name>_checkpoints/`` holds ``key.txt`` (a SHA-256 of the input files'
contents and every parameter that changes the result) and one ``tile_<i>.npz`` per tile with
its running maximum, argmax, float64 sums and the number of rotations done, saved atomically
after a batch at most every ``checkpoint_interval_s`` seconds and when the tile ends. Started
again with the same inputs and parameters, a job continues from them and ends with outputs
identical to an uninterrupted run (rotation order and batch boundaries are fixed); a
checkpoint directory with another key is discarded. It is removed after success.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import __version__
from .angles import crowther_step_deg, parse_symmetry, uniform_rotations, write_rotations
from .conventions import check_hand
from .errors import InputError
from .matching import (TileCorrelator, TileState, filter_volume, is_spherical_mask,
                       phase_randomised_template, resolve_device)
from .mrcio import atomic_path, read_volume, read_voxel_size, write_volume
from .tiles import Tile, auto_tile_counts, plan_tiles

__all__ = ["run_match", "read_job", "write_job", "JOB_FORMAT", "DEFAULT_MAX_MEMORY_GB"]

JOB_FORMAT = 1
DEFAULT_MAX_MEMORY_GB = 4.0
_MAX_BATCH = 16


# --------------------------------------------------------------------------- job file


def write_job(path, job: dict) -> Path:
    """Write a job dict as JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(job, indent=2, sort_keys=False) + "\n")
    return path


def read_job(path) -> dict:
    """Read ``<name>_job.json``; relative paths in it are resolved against its directory.

    Adds ``"job_dir"`` (absolute directory of the file). Raises InputError if it is missing,
    unreadable or not a tomomatch job file.
    """
    p = Path(path)
    try:
        job = json.loads(p.read_text())
    except OSError as exc:
        raise InputError(f"cannot read job file ({exc.strerror or exc})", p) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at line {exc.lineno})", p) from None
    if not isinstance(job, dict) or job.get("job_format") != JOB_FORMAT:
        raise InputError(f"not a tomomatch job file (job_format != {JOB_FORMAT})", p, "job_format")
    job["job_dir"] = str(p.resolve().parent)
    return job


# --------------------------------------------------------------------------- helpers


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _ts_json(ts) -> dict | None:
    if ts is None:
        return None

    def arr(a):
        return None if a is None else [float(v) for v in np.asarray(a, float)]

    return {"tilt_angles_deg": arr(ts.tilt_angles_deg), "accumulated_dose": arr(ts.accumulated_dose),
            "defocus_u_um": arr(ts.defocus_u_um), "defocus_v_um": arr(ts.defocus_v_um),
            "astigmatism_angle_deg": arr(ts.astigmatism_angle_deg), "phase_shift_deg": arr(ts.phase_shift_deg),
            "excluded": [bool(v) for v in np.asarray(ts.excluded, bool)], "voltage_kv": float(ts.voltage_kv),
            "cs_mm": float(ts.cs_mm), "amplitude_contrast": float(ts.amplitude_contrast),
            "pixel_size_angstrom": None if ts.pixel_size_angstrom is None else float(ts.pixel_size_angstrom)}


def _rel(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), base.resolve())
    except ValueError:  # different drives
        return str(Path(path).resolve())


class _Progress:
    """rich progress bar (tiles, rotations, ETA) on a TTY unless quiet; silent otherwise."""

    def __init__(self, n_tiles: int, n_rot: int, quiet: bool):
        self.bar = None
        if quiet or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=False)
        self.bar.start()
        self.t_tiles = self.bar.add_task("tiles", total=n_tiles)
        self.t_rot = self.bar.add_task("rotations (all tiles)", total=n_tiles * n_rot)

    def update(self, tiles_done: int, rot_done: int):
        if self.bar is not None:
            self.bar.update(self.t_tiles, completed=tiles_done)
            self.bar.update(self.t_rot, completed=rot_done)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def _batch_size(tc: TileCorrelator, max_memory_gb: float) -> int:
    per = max(tc.batch_bytes(), 1)
    persistent = 6 * 4 * float(np.prod(tc.shape))
    free = max_memory_gb * 1e9 - persistent
    cap = _MAX_BATCH if tc.device.type == "cuda" else 4  # the CPU gains nothing from big batches
    return int(max(1, min(cap, free // per)))


# --------------------------------------------------------------------------- the job


def run_match(template, mask, tomogram, out_dir, *, name: str | None = None,
              voxel_size_angstrom: float | None = None, angular_step_deg: float | None = None,
              particle_diameter_angstrom: float | None = None, symmetry: str = "C1",
              rotations: np.ndarray | None = None,
              low_pass_angstrom: float | None = None, high_pass_angstrom: float | None = None,
              whiten: bool = False, wedge: str | None = None, ctf: str | None = "signed",
              dose: bool = True, cos_weighting: bool = True, tilt_series=None,
              defocus_handedness: int | None = None, hand_mode: str = "full",
              tiles: Sequence[int] | str = (1, 1, 1), device: str = "cpu",
              max_memory_gb: float = DEFAULT_MAX_MEMORY_GB, random_phase: bool = False,
              method: str = "fast", quiet: bool = True, checkpoint_interval_s: float = 60.0,
              batch_size: int | None = None, command: str | None = None) -> dict:
    """Template-match a tomogram file and write the outputs; returns the job dict.

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
        ``"Cn"`` about the template's z axis.
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
        Minimum seconds between rotation-chunk checkpoints (0: after every batch).
    batch_size
        Rotations per batch (default from ``max_memory_gb``).
    command
        The command line, recorded in the job file.
    """
    t_start = time.time()
    dev = resolve_device(device)
    out_dir = Path(out_dir)
    template, mask, tomogram = Path(template), Path(mask), Path(tomogram)
    name = name or tomogram.stem
    if method not in ("fast", "resample", "exact"):
        raise InputError(f"method {method!r}; expected fast, resample or exact", None, "--method")
    if hand_mode not in ("full", "pytom"):
        raise InputError(f"hand mode {hand_mode!r}; expected full or pytom", None, "--hand-mode")
    if max_memory_gb is None or not max_memory_gb > 0:
        raise InputError(f"max memory {max_memory_gb!r} GB; expected > 0", None, "--max-memory")

    # ---------------------------------------------------------------- inputs
    vol_np, voxel = read_volume(tomogram, voxel_size_angstrom, what="tomogram")
    t_vs = read_voxel_size(template)
    tmpl_np, _ = read_volume(template, t_vs if t_vs > 0 else voxel, what="template")
    if t_vs > 0 and abs(t_vs - voxel) > 0.01 * voxel:
        raise InputError(f"template voxel size {t_vs:g} A differs from the tomogram's {voxel:g} A by more"
                         " than 1 %; resample the template", template, "voxel size")
    mask_np, _ = read_volume(mask, voxel, what="mask")
    n = tmpl_np.shape[0]
    if tmpl_np.shape != (n, n, n):
        raise InputError(f"template shape {tmpl_np.shape}; expected a cubic box", template)
    if mask_np.shape != tmpl_np.shape:
        raise InputError(f"mask shape {mask_np.shape} differs from the template's {tmpl_np.shape}", mask)
    if any(n > s for s in vol_np.shape):
        raise InputError(f"template box {n} is larger than the tomogram {vol_np.shape}", template)
    if not mask_np.sum() > 0:
        raise InputError("mask is empty (sum <= 0)", mask)

    ts = tilt_series
    hand = defocus_handedness
    if hand is None:
        hand = ts.hand if (ts is not None and ts.hand is not None) else 0
    try:
        hand = check_hand(hand)
    except ValueError as exc:
        raise InputError(str(exc), None, "--defocus-handedness") from None
    if wedge is None:
        wedge = "per_tilt" if ts is not None else "none"
    wedge = wedge.replace("-", "_")
    if wedge not in ("none", "binary", "per_tilt"):
        raise InputError(f"wedge {wedge!r}; expected none, binary or per-tilt", None, "--wedge")
    if wedge != "none" and ts is None:
        raise InputError(f"--wedge {wedge} needs tilt metadata (e.g. --tilt-angles)", None, "--wedge")
    if ctf not in ("signed", "abs", None, "none"):
        raise InputError(f"ctf {ctf!r}; expected signed, abs or none", None, "--ctf")
    ctf = None if ctf == "none" else ctf
    ctf_used = ctf if (ts is not None and ts.has_defocus and wedge != "none") else None
    # rotations
    if rotations is None:
        if angular_step_deg is None:
            if particle_diameter_angstrom is None:
                raise InputError("give --angular-step or --particle-diameter", None, "--angular-step")
            angular_step_deg = crowther_step_deg(particle_diameter_angstrom, voxel, low_pass_angstrom)
        rots = uniform_rotations(angular_step_deg, symmetry)
    else:
        rots = np.asarray(rotations, float).reshape(-1, 3, 3)
    n_sym = parse_symmetry(symmetry)
    # tiles
    tilts_all = None if ts is None else ts.tilt_angles_deg
    if isinstance(tiles, str):
        if tiles != "auto":
            raise InputError(f"--tiles {tiles!r}; expected three counts or 'auto'", None, "--tiles")
        if ctf_used is None or hand == 0:
            counts = (1, 1, 1)
        else:
            inc = ts.tilt_angles_deg[~ts.excluded]
            res = max(2 * voxel, low_pass_angstrom or 0.0)
            counts = auto_tile_counts(vol_np.shape, voxel, n, inc, res, ts.voltage_kv, hand)
    else:
        counts = tuple(int(c) for c in tiles)
        if len(counts) != 3:
            raise InputError(f"--tiles needs three counts NX NY NZ, got {len(counts)}", None, "--tiles")
    plan = plan_tiles(vol_np.shape, n, counts, voxel, tilts_all, hand, hand_mode)
    for t in plan:
        if any(n > s for s in t.data_shape_zyx):
            raise InputError(f"template box {n} is larger than tile {t.grid_index_xyz} "
                             f"{t.data_shape_zyx}; use fewer tiles", None, "--tiles")
    spherical = is_spherical_mask(mask_np)

    # ---------------------------------------------------------------- weights
    whitening_cache: dict = {}
    vol_t = torch.as_tensor(np.array(vol_np, np.float32), device=dev)
    vol_t = (vol_t - vol_t.mean()) / vol_t.std().clamp_min(1e-30)

    def whitening(shape):
        if not whiten:
            return None
        key = tuple(shape)
        if key not in whitening_cache:
            from .weighting import whitening_filter
            whitening_cache[key] = whitening_filter(vol_t, voxel, key, tilt_angles_deg=(
                None if ts is None else ts.tilt_angles_deg[~ts.excluded]))
        return whitening_cache[key]

    def tomogram_weight(shape):
        from .weighting import bandpass
        w = bandpass(shape, voxel, low_pass_angstrom, high_pass_angstrom, device=dev)
        wh = whitening(shape)
        return w if wh is None else w * wh.to(dev)

    def template_weight_for(tile: Tile):
        if wedge == "none" and low_pass_angstrom is None and high_pass_angstrom is None and not whiten:
            return None
        offs = None
        if ts is not None and hand != 0 and tile.defocus_offsets_um:
            offs = np.asarray(tile.defocus_offsets_um, float)

        def weight(shape):
            from .weighting import bandpass, tilt_series_weight
            if wedge == "none":
                w = bandpass(shape, voxel, low_pass_angstrom, high_pass_angstrom, device=dev)
                wh = whitening(shape)
                return w if wh is None else w * wh.to(dev)
            return tilt_series_weight(ts, shape, voxel, defocus_offset_um=offs, per_tilt=(wedge == "per_tilt"),
                                      ctf_mode=ctf_used, dose_weighting=dose, cos_weighting=cos_weighting,
                                      low_pass_angstrom=low_pass_angstrom, high_pass_angstrom=high_pass_angstrom,
                                      whitening=whitening(shape), device=dev)
        return weight

    # ---------------------------------------------------------------- checkpoint key
    params = {
        "format": JOB_FORMAT, "version": __version__, "method": method, "voxel": voxel,
        "rotations_sha": hashlib.sha256(np.ascontiguousarray(rots, np.float64).tobytes()).hexdigest(),
        "low_pass": low_pass_angstrom, "high_pass": high_pass_angstrom, "whiten": whiten, "wedge": wedge,
        "ctf": ctf_used, "dose": dose, "cos": cos_weighting, "hand": hand, "hand_mode": hand_mode,
        "tiles": list(counts), "random_phase": random_phase, "tilt_series": _ts_json(ts),
        "batch_size": batch_size, "max_memory_gb": max_memory_gb, "device_type": dev.type,
    }
    key_src = json.dumps(params, sort_keys=True) + "".join(_file_digest(p) for p in (tomogram, template, mask))
    key = hashlib.sha256(key_src.encode()).hexdigest()
    ck_dir = out_dir / f"{name}_checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    if ck_dir.exists():
        try:
            old = (ck_dir / "key.txt").read_text().strip()
        except OSError:
            old = ""
        if old != key:
            shutil.rmtree(ck_dir)
    ck_dir.mkdir(exist_ok=True)
    (ck_dir / "key.txt").write_text(key + "\n")

    # ---------------------------------------------------------------- search
    vol_t = filter_volume(vol_t, None if (low_pass_angstrom is None and high_pass_angstrom is None
                                          and not whiten) else tomogram_weight)
    rp = phase_randomised_template(tmpl_np, mask_np) if random_phase else None
    n_rot = len(rots)
    progress = _Progress(len(plan), n_rot, quiet)
    scores = np.zeros(vol_np.shape, np.float32)
    angles = np.full(vol_np.shape, -1.0, np.float32)
    noise = np.zeros(vol_np.shape, np.float32) if random_phase else None
    total_sum = total_sumsq = 0.0
    total_count = 0
    rot_done_all = 0
    resumed = 0
    try:
        for ti, tile in enumerate(plan):
            ck = ck_dir / f"tile_{ti:04d}.npz"
            state = None
            if ck.exists():
                with np.load(ck) as d:
                    state = TileState.from_numpy(dict(d), dev)
                resumed += state.done
            if state is None or state.done < n_rot:
                tc = TileCorrelator(vol_t[tile.data_slices], tmpl_np, mask_np, tile.unique_in_data,
                                    weight=template_weight_for(tile), method=method, spherical=spherical,
                                    random_phase_template=rp, device=dev)
                bs = batch_size or _batch_size(tc, max_memory_gb)
                last = [time.time()]

                def on_batch(st, ck=ck, ti=ti, last=last):
                    progress.update(ti, rot_done_all + st.done)
                    now = time.time()
                    if st.done >= n_rot or now - last[0] >= checkpoint_interval_s:
                        _save_state(ck, st)
                        last[0] = now

                state = tc.run(rots, state, batch_size=bs, on_batch=on_batch)
                del tc
            rot_done_all += n_rot
            progress.update(ti + 1, rot_done_all)
            us = tile.unique_slices
            scores[us] = state.best.cpu().numpy()
            angles[us] = state.index.cpu().numpy().astype(np.float32)
            if noise is not None:
                noise[us] = state.noise_best.cpu().numpy()
            total_sum += state.sum
            total_sumsq += state.sumsq
            total_count += state.count
    finally:
        progress.close()

    noise_mean = None
    if noise is not None:
        noise_mean = float(noise.astype(np.float64).mean())
        scores = (scores.astype(np.float64) - noise + noise_mean).astype(np.float32)
    mean = total_sum / total_count
    std = math.sqrt(max(total_sumsq / total_count - mean * mean, 0.0))

    # ---------------------------------------------------------------- outputs
    f_scores = out_dir / f"{name}_scores.mrc"
    f_angles = out_dir / f"{name}_angles.mrc"
    f_rot = out_dir / f"{name}_rotations.txt"
    f_job = out_dir / f"{name}_job.json"
    write_volume(f_scores, scores, voxel)
    write_volume(f_angles, angles, voxel)
    write_rotations(f_rot, rots)
    relion = None
    if ts is not None and "size_xyz_unbinned" in ts.extra:
        relion = {"unbinned_size_xyz": list(ts.extra["size_xyz_unbinned"]),
                  "tilt_series_pixel_angstrom": ts.pixel_size_angstrom, "tomo_name": ts.name}
    job: dict[str, Any] = {
        "tomomatch_version": __version__, "job_format": JOB_FORMAT, "name": name,
        "tomogram": _rel(tomogram, out_dir), "tomogram_shape_zyx": list(vol_np.shape),
        "voxel_size_angstrom": voxel, "template": _rel(template, out_dir), "mask": _rel(mask, out_dir),
        "template_shape_zyx": list(tmpl_np.shape), "mask_is_spherical": bool(spherical),
        "scores": f_scores.name, "angles": f_angles.name, "rotations": f_rot.name,
        "angular_step_deg": None if angular_step_deg is None else float(angular_step_deg),
        "symmetry": f"C{n_sym}", "n_rotations": int(n_rot),
        "particle_diameter_angstrom": None if particle_diameter_angstrom is None else float(particle_diameter_angstrom),
        "defocus_handedness": hand, "hand_mode": hand_mode, "tiles": list(counts),
        "tile_regions": [{"unique_start_zyx": list(t.unique_start_zyx), "unique_stop_zyx": list(t.unique_stop_zyx),
                          "centre_angstrom_xyz": list(t.centre_angstrom_xyz),
                          "defocus_offsets_um": list(t.defocus_offsets_um)} for t in plan],
        "weighting": {"wedge": wedge, "ctf": ctf_used, "dose": bool(dose and wedge == "per_tilt"),
                      "cos": bool(cos_weighting and wedge == "per_tilt"),
                      "low_pass_angstrom": low_pass_angstrom, "high_pass_angstrom": high_pass_angstrom,
                      "whitening": bool(whiten), "random_phase": bool(random_phase)},
        "tilt_series": _ts_json(ts), "relion": relion,
        "search_statistics": {"n_voxels": int(total_count // max(n_rot, 1)), "n_rotations": int(n_rot),
                              "n_search": int(total_count), "mean": mean, "std": std},
        "random_phase_noise_mean": noise_mean, "method": method, "resumed_rotations": int(resumed),
        "device": str(dev), "elapsed_s": round(time.time() - t_start, 3), "command": command or "",
    }
    write_job(f_job, job)
    shutil.rmtree(ck_dir, ignore_errors=True)
    return job


def _save_state(path: Path, state: TileState) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **state.to_numpy())
