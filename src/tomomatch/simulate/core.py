"""The simulation pipeline: sample, tilt series, reconstruction, outputs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.fft as sfft
import starfile
import torch
from scipy.spatial.transform import Rotation

from .. import ctf as ctfmod
from ..conventions import (
    ANGSTROM_PER_MICROMETRE,
    centre_index,
    defocus_at_point_um,
    electron_wavelength_angstrom,
    matrix_to_relion,
    projected_x,
    relion5_centered_angstrom,
    relion_to_matrix,
    tilt_frame,
    GEOMETRY_VERSION,
    beam_direction,
)
from ..errors import InputError
from ..mrcio import atomic_path, write_volume
from ..tiltseries import TiltSeries
from .config import SimulationConfig, Structure, preset_config
from .physics import FourierProjector, interaction_constant, poisson_counts, tilt_scheme, weighted_back_projection
from . import realism

__all__ = ["simulate", "run_simulation", "SimulationResult", "load_structure", "LoadedStructure"]

_SUPPORT_FRACTION = 0.05
_PHANTOMS = {"phantom": ("ribosome", False), "phantom-mirror": ("ribosome", True), "phantom-decoy": ("decoy", False)}


# --------------------------------------------------------------------------- structures


@dataclass
class LoadedStructure:
    """A structure ready to project: density (volts) at the simulation pixel, its radius."""

    name: str
    source: Any
    density: np.ndarray
    voxel_size_angstrom: float
    radius_angstrom: float


def _radius(density: np.ndarray, voxel: float) -> float:
    d = np.asarray(density)
    m = d > _SUPPORT_FRACTION * d.max()
    if not m.any():
        raise InputError("structure density is empty (no positive density)", field="structure")
    idx = np.nonzero(m)
    c = centre_index(d.shape[0])
    r2 = sum((i - c).astype(float) ** 2 for i in idx)
    return float(math.sqrt(np.max(r2)) + 0.5) * voxel


def _cube(density: np.ndarray) -> np.ndarray:
    from ..template import pad_or_crop

    n = max(density.shape)
    n += n % 2
    return pad_or_crop(np.asarray(density, dtype=np.float32), (n, n, n))


def load_structure(
    spec, voxel_size_angstrom: float, phantom_diameter_angstrom: float = 250.0, box_size: int | None = None
) -> LoadedStructure:
    """Density of a structure spec at ``voxel_size_angstrom`` (positive, volts, centred cube).

    ``spec``: ``"phantom"``, ``"phantom-mirror"``, ``"phantom-decoy"`` (built-in, see
    :mod:`tomomatch.phantom`), a :class:`Structure`, or a path to an atomic model
    (PDB/mmCIF, through gemmi: :func:`tomomatch.template.density_from_model`) or a density
    map (MRC: :func:`tomomatch.template.create_template`, re-centred, not inverted).
    """
    from .. import template as tpl
    from ..phantom import phantom_density

    v = float(voxel_size_angstrom)
    if isinstance(spec, Structure):
        dens = np.asarray(spec.density, dtype=np.float32)
        if dens.ndim != 3:
            raise InputError(f"structure array must be 3D, got shape {dens.shape}", field="structure")
        dens = tpl.resample_fourier(dens, spec.voxel_size_angstrom, v)
        if box_size is not None:
            dens = tpl.pad_or_crop(dens, box_size)
        dens = _cube(dens)
        name, source = spec.name, "array"
    elif isinstance(spec, str) and spec in _PHANTOMS:
        variant, mirror = _PHANTOMS[spec]
        dens = phantom_density(v, box_size, phantom_diameter_angstrom, variant=variant, mirror=mirror)
        name, source = spec, f"built-in {spec} (diameter {phantom_diameter_angstrom:g} A)"
    else:
        p = Path(os.fspath(spec))
        if not p.exists():
            raise InputError("structure file not found", p, "structure")
        if tpl.is_model_path(p):
            dens = tpl.density_from_model(p, v, box_size=box_size)
        else:
            dens, _ = tpl.create_template(p, v, box_size=box_size, recentre=True)
            if -dens.min() > dens.max():
                raise InputError("map has dark (negative) density; give a positive-density map", p, "structure")
            dens = np.clip(dens, 0.0, None)
        dens = _cube(dens)
        name, source = p.name, os.fspath(p)
    if not np.all(np.isfinite(dens)) or dens.max() <= 0:
        raise InputError("structure density has no positive values", field="structure")
    return LoadedStructure(name, source, np.ascontiguousarray(dens, dtype=np.float32), v, _radius(dens, v))


# --------------------------------------------------------------------------- result


@dataclass
class SimulationResult:
    """What :func:`simulate` made.

    Attributes
    ----------
    out_dir, paths
        Output folder and a dict of output files (``tilt_series``, ``tomogram``, ``rawtlt``,
        ``tlt``, ``dose``, ``defocus``, ``tomograms_star``, ``particles_star``, ``template``, ``mask``,
        ``summary``).
    particles
        Ground truth table (the particles STAR's rows).
    defocus_um
        Defocus applied to each particle in each tilt, ``(n_particles + n_decoys, n_tilts)``
        micrometres (+ = underfocus, U/V mean), tilts in stack (sorted) order.
    tilt_series
        :class:`TiltSeries` as written (per-tilt nominal defocus at the tilt axis).
    hand
        The true defocus handedness used.
    summary
        The summary JSON as a dict.
    tilt_series_counts, tomogram, tomogram_noise_free
        The tilt series (detected electrons), the reconstruction and, with
        ``write_noise_free``, the reconstruction without noise (else None); set by :func:`simulate`.
    distractors
        Crowders and gold beads (the ``distractors.star`` rows), or None when there are none.
    """

    out_dir: Path
    paths: dict
    particles: pd.DataFrame
    defocus_um: np.ndarray
    tilt_series: TiltSeries
    hand: int
    config: SimulationConfig
    summary: dict = field(default_factory=dict)
    distractors: pd.DataFrame | None = None
    tilt_series_counts: np.ndarray = field(init=False, repr=False, compare=False)
    tomogram: np.ndarray = field(init=False, repr=False, compare=False)
    tomogram_noise_free: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)


# --------------------------------------------------------------------------- placement


def _place(
    rng: np.random.Generator,
    radii: np.ndarray,
    half_extent_xyz: np.ndarray,
    slab_z: tuple[float, float],
    min_distance: float | None,
) -> np.ndarray:
    """Non-overlapping random centres (centred Angstrom), rejection sampling in batches.

    Each particle lies entirely inside the field of view and inside the slab
    ``slab_z = (z_low, z_high)`` (already clipped to the tomogram).
    """
    n = radii.size
    pos = np.zeros((n, 3))
    for i in range(n):
        r = radii[i]
        low = np.array([-half_extent_xyz[0] + r, -half_extent_xyz[1] + r, slab_z[0] + r])
        high = np.array([half_extent_xyz[0] - r, half_extent_xyz[1] - r, slab_z[1] - r])
        if np.any(high < low):
            raise InputError(
                f"a particle of radius {r:.0f} A does not fit in the field/slab "
                f"(half sizes {half_extent_xyz[0]:.0f}, {half_extent_xyz[1]:.0f} A, slab z "
                f"{slab_z[0]:.0f}..{slab_z[1]:.0f} A inside the tomogram)",
                field="thickness / tomogram size",
            )
        placed = False
        for _ in range(200):
            cand = low + rng.random((64, 3)) * (high - low)
            if i == 0:
                pos[0] = cand[0]
                placed = True
                break
            d = np.linalg.norm(cand[:, None, :] - pos[None, :i, :], axis=-1)
            need = (radii[None, :i] + r) if min_distance is None else np.full((1, i), float(min_distance))
            ok = np.all(d >= need, axis=1)
            if ok.any():
                pos[i] = cand[np.argmax(ok)]
                placed = True
                break
        if not placed:
            raise InputError(
                f"could place only {i} of {n} particles without overlap; more particles than fit in the "
                "volume (use fewer particles, a thicker slab or a larger tomogram)",
                field="n particles",
            )
    return pos


# --------------------------------------------------------------------------- pipeline


class _StageClock:
    """Wall and CPU seconds per stage (``<stage>_s``, ``<stage>_cpu_s``) and in total."""

    def __init__(self):
        self.start = self.last = (time.perf_counter(), time.process_time())
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.laps[f"{name}_s"] = now[0] - self.last[0]
        self.laps[f"{name}_cpu_s"] = now[1] - self.last[1]
        self.last = now

    def as_dict(self) -> dict:
        out = {k: round(v, 3) for k, v in self.laps.items()}
        out["total_s"] = round(time.perf_counter() - self.start[0], 3)
        out["total_cpu_s"] = round(time.process_time() - self.start[1], 3)
        return out


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_simulation(cfg: SimulationConfig, out_dir, *, write: bool = True) -> SimulationResult:
    """Run a validated :class:`SimulationConfig` and write its outputs into ``out_dir``."""
    cfg.validate()
    clock = _StageClock()
    out_dir = Path(out_dir)
    ss = np.random.SeedSequence(cfg.seed)
    (rng_place, rng_rot, rng_tilt, rng_noise, rng_blob, rng_jitter, rng_ice) = [
        np.random.default_rng(s) for s in ss.spawn(7)
    ]
    # the realism features' streams, spawned after the first seven (which they leave unchanged)
    rng_crowd, rng_gold, rng_carbon, rng_inplane = [np.random.default_rng(s) for s in ss.spawn(4)]
    nx, ny, nz = cfg.tomogram_size_xyz
    v = float(cfg.voxel_size_angstrom)
    b = int(cfg.binning)
    ps = v / b  # voxel of the simulated density (fine)
    cx, cy = centre_index(nx), centre_index(ny)  # tilt-image pixel of the tilt axis

    # ---------------------------------------------------------------- tilt scheme and optics
    angles, acq = tilt_scheme(
        cfg.tilt_min_deg, cfg.tilt_max_deg, cfg.tilt_step_deg, cfg.tilt_order, cfg.dose_symmetric_group
    )
    nt = angles.size
    if nt == 0:
        raise InputError("the tilt range and step give no tilts", field="tilt range")
    dose_tilt = np.full(nt, float(cfg.dose_per_tilt))
    pre = np.zeros(nt)
    order = np.argsort(acq)
    pre[order] = np.concatenate([[0.0], np.cumsum(dose_tilt[order])[:-1]])
    df_tilt = cfg.defocus_um + cfg.defocus_scatter_um * rng_tilt.standard_normal(nt)
    ast_ang = (
        rng_tilt.uniform(-90, 90, nt)
        if cfg.astigmatism_angle_deg is None
        else np.full(nt, float(cfg.astigmatism_angle_deg))
    )
    df_u = df_tilt + 0.5 * cfg.astigmatism_um
    df_v = df_tilt - 0.5 * cfg.astigmatism_um
    jitter = cfg.jitter_angstrom * rng_jitter.standard_normal((nt, 2))  # (dx, dy) A per tilt
    inplane_deg = cfg.tilt_rotation_deg * rng_inplane.standard_normal(nt)  # in-plane rotation per tilt
    lam = electron_wavelength_angstrom(cfg.voltage_kv)
    sigma_e = interaction_constant(cfg.voltage_kv)
    # columns: image x axis, image y axis, beam (in the tomogram frame), per tilt
    rot_t = np.swapaxes(tilt_frame(angles), -1, -2)

    # ---------------------------------------------------------------- structures
    part = load_structure(cfg.structure, ps, cfg.phantom_diameter_angstrom)
    structs = [part]
    if cfg.n_decoys:
        structs.append(load_structure(cfg.decoy_structure, ps, cfg.phantom_diameter_angstrom))
    crowder_kinds: list[int] = []
    if cfg.crowding_volume_fraction > 0:
        for spec in cfg.crowder_structures:
            crowder_kinds.append(len(structs))
            with warnings.catch_warnings():
                # a crowder map coarser than the simulation pixel (e.g. the 5 A PolNet maps at
                # 4.28 A): harmless, only the tomogram voxel's band is projected
                warnings.filterwarnings("ignore", message="upsampling the map", category=UserWarning)
                structs.append(load_structure(spec, ps, cfg.phantom_diameter_angstrom))
    clock.lap("structures")

    # ---------------------------------------------------------------- sample
    n_tot = cfg.n_particles + cfg.n_decoys
    kind = np.array([0] * cfg.n_particles + [1] * cfg.n_decoys, dtype=int)
    radii = np.array([structs[k].radius_angstrom for k in kind])
    half = np.array([nx * v / 2, ny * v / 2, nz * v / 2])
    z0 = float(cfg.slab_offset_nm) * 10.0
    slab_z = (max(z0 - cfg.thickness_nm * 5.0, -half[2]), min(z0 + cfg.thickness_nm * 5.0, half[2]))
    if slab_z[1] <= slab_z[0]:
        raise InputError(f"the slab (centre {z0:g} A) lies outside the tomogram", field="slab offset")
    if cfg.particle_positions_angstrom is not None:
        pos = np.asarray(cfg.particle_positions_angstrom, dtype=float).reshape(-1, 3)
        if pos.shape[0] != n_tot:
            raise InputError(f"{pos.shape[0]} positions given for {n_tot} particles", field="positions")
        if np.any(np.abs(pos) > half):
            raise InputError("a given particle position lies outside the tomogram", field="positions")
    else:
        pos = _place(rng_place, radii, half, slab_z, cfg.min_distance_angstrom)
    if cfg.particle_angles_relion_deg is not None:
        ang = np.asarray(cfg.particle_angles_relion_deg, dtype=float).reshape(-1, 3)
        if ang.shape[0] != n_tot:
            raise InputError(f"{ang.shape[0]} orientations given for {n_tot} particles", field="angles")
        poses = relion_to_matrix(ang)
    else:
        poses = Rotation.random(n_tot, random_state=rng_rot).as_matrix() if n_tot else np.zeros((0, 3, 3))
    # realism: gold beads and crowders around the particles (occupancy grid at the tomogram voxel)
    extra = _place_extras(cfg, structs, crowder_kinds, kind, pos, poses, slab_z, rng_gold, rng_crowd)
    if extra["crowder_kind"].size:
        kind = np.concatenate([kind, extra["crowder_kind"]])
        pos = np.concatenate([pos, extra["crowder_pos"]])
        poses = np.concatenate([poses, extra["crowder_rot"]])
    n_obj = kind.size  # particles, decoys and crowders: everything projected from a structure
    gold_pos = extra["gold_pos"]
    # per-particle per-tilt defocus (U and V shifted alike), with the TRUE hand
    off_um = (
        defocus_at_point_um(0.0, pos[:, 0:1], pos[:, 2:3], angles[None, :], cfg.hand, cfg.hand_mode)
        if n_obj
        else np.zeros((0, nt))
    )
    part_df = df_tilt[None, :] + off_um
    # background blobs: centres (A), sigma (A)
    blob_pos = np.column_stack(
        [
            rng_blob.uniform(-half[0], half[0], cfg.n_blobs),
            rng_blob.uniform(-half[1], half[1], cfg.n_blobs),
            rng_blob.uniform(slab_z[0], slab_z[1], cfg.n_blobs),
        ]
    )
    blob_sig = rng_blob.uniform(cfg.blob_sigma_angstrom[0], cfg.blob_sigma_angstrom[1], cfg.n_blobs)
    clock.lap("placement")

    # ---------------------------------------------------------------- projection
    # Each particle is projected from the 3D transform of its density at the fine voxel ps
    # (padded to P = b*Q); only the band of the tilt-series pixel v is evaluated, which is
    # the fine projection Fourier-cropped to v (the tilt series is made at v directly).
    k_out = 0.5 / v
    df_max = (
        abs(cfg.defocus_um) + 4 * cfg.defocus_scatter_um + cfg.astigmatism_um + (np.abs(off_um).max() if n_obj else 0.0)
    )
    deloc_px = lam * df_max * ANGSTROM_PER_MICROMETRE * k_out / v  # CTF delocalisation, output pixels
    projectors, qsizes = [], []
    for k, s in enumerate(structs):
        n = s.density.shape[0]
        q = max(int(math.ceil(2 * n / b)), int(math.ceil(n / b + 2 * deloc_px + 4)))
        q = int(sfft.next_fast_len(q + q % 2))
        q += q % 2
        projectors.append(FourierProjector(s.density, b * q) if np.any(kind == k) else None)
        qsizes.append(q)
    clock.lap("fourier_prep")

    counts = np.zeros((nt, ny, nx), dtype=np.float32)
    # path length through the slab: thickness / (beam's z component) (conventions.beam_direction)
    beam_z = beam_direction(angles)[:, 2]
    atten = np.exp(-cfg.thickness_nm / (beam_z * cfg.inelastic_mean_free_path_nm))
    e_per_px = dose_tilt * v * v * atten
    proj_pos_x = projected_x(pos[:, 0:1], pos[:, 2:3], angles[None, :]) if n_obj else np.zeros((0, nt))
    contrast = np.zeros((nt, ny, nx), dtype=np.float32)
    dose_mid = pre + 0.5 * dose_tilt
    # particles of one kind in batches (all tilts at once); patches are made centred on index
    # Q // 2 by folding that shift into the sub-pixel phase ramp
    for k, (pr, Q) in enumerate(zip(projectors, qsizes)):
        members = np.nonzero(kind == k)[0]
        if members.size == 0:
            continue
        assert pr is not None  # made for every kind with members
        ku = torch.from_numpy(np.fft.rfftfreq(Q).astype(np.float32))[None, None, :]  # cycles / pixel
        kv = torch.from_numpy(np.fft.fftfreq(Q).astype(np.float32))[None, :, None]
        per = max(1, int(3_000_000 // (nt * Q * (Q // 2 + 1))))
        for b0 in range(0, members.size, per):
            js = members[b0 : b0 + per]
            mats = np.matmul(poses[js].transpose(0, 2, 1)[:, None], rot_t[None]).reshape(-1, 3, 3)  # R^T @ Rt
            S = pr.slices(mats, Q)  # (len(js)*nt, Q, Q//2+1)
            X = cx + (proj_pos_x[js] + jitter[None, :, 0]) / v  # (len(js), nt)
            Y = cy + (pos[js, 1:2] + jitter[None, :, 1]) / v
            Xi, Yi = np.round(X), np.round(Y)
            dx = torch.from_numpy((X - Xi + centre_index(Q)).astype(np.float32).reshape(-1, 1, 1))
            dy = torch.from_numpy((Y - Yi + centre_index(Q)).astype(np.float32).reshape(-1, 1, 1))
            dfj = part_df[js].reshape(-1)
            filt = _transfer(
                ku / v,
                kv / v,
                cfg,
                dfj + 0.5 * cfg.astigmatism_um,
                dfj - 0.5 * cfg.astigmatism_um,
                np.tile(ast_ang, js.size),
                np.tile(dose_mid, js.size),
            )
            ramp = -2 * math.pi * (dx * ku + dy * kv)
            S = S * (filt * float(np.float32(2.0 * sigma_e * ps / (b * b)))) * torch.polar(torch.ones_like(ramp), ramp)
            patch = torch.fft.irfft2(S, s=(Q, Q)).numpy().reshape(js.size, nt, Q, Q)
            for jj in range(js.size):
                for t in range(nt):
                    _paste(
                        contrast[t], patch[jj, t], int(Yi[jj, t]) - centre_index(Q), int(Xi[jj, t]) - centre_index(Q)
                    )
    if gold_pos.shape[0]:
        _add_gold(contrast, cfg, gold_pos, angles, jitter, df_tilt, ast_ang, dose_mid, deloc_px, cx, cy, sigma_e)
    clock.lap("projection")
    # background: ice phase noise + blobs, through the nominal CTF of each tilt
    signal = np.zeros_like(contrast) if cfg.write_noise_free else None
    if signal is not None:
        signal += contrast
    carbon = _carbon_geometry(cfg, slab_z, half)
    rotate = cfg.tilt_rotation_deg > 0
    if cfg.ice_noise_rad > 0 or cfg.n_blobs or carbon is not None or rotate:
        fy = torch.from_numpy(np.fft.fftfreq(ny).astype(np.float32))[None, :, None] / v
        fx = torch.from_numpy(np.fft.rfftfreq(nx).astype(np.float32))[None, None, :] / v
        for t in range(nt):
            filt = (
                2.0
                * _transfer(fx, fy, cfg, df_u[t : t + 1], df_v[t : t + 1], ast_ang[t : t + 1], dose_mid[t : t + 1])[0]
            )
            bg = np.zeros((ny, nx), dtype=np.float32)
            if cfg.n_blobs:
                _add_blobs(bg, blob_pos, blob_sig, cfg.blob_peak_volt, angles[t], jitter[t], cx, cy, v, sigma_e)
                if signal is not None:
                    signal[t] += torch.fft.irfft2(torch.fft.rfft2(torch.from_numpy(bg)) * filt, s=(ny, nx)).numpy()
            if carbon is not None:
                path = realism.carbon_edge_profile(
                    nx, v, angles[t], jitter[t, 0], carbon["x_edge"], carbon["z_low"], carbon["z_high"]
                )
                cb = np.broadcast_to((sigma_e * cfg.carbon_potential_volt * path)[None, :], (ny, nx)).astype(np.float32)
                if cfg.carbon_noise_rad > 0:
                    rms = cfg.carbon_noise_rad * np.sqrt(path / (cfg.carbon_thickness_nm * 10.0))
                    cb = cb + (rng_carbon.standard_normal((ny, nx)) * rms[None, :]).astype(np.float32)
                bg += cb
                if signal is not None:
                    signal[t] += torch.fft.irfft2(torch.fft.rfft2(torch.from_numpy(cb)) * filt, s=(ny, nx)).numpy()
            if rotate:  # residual in-plane rotation of everything the specimen makes (not the ice noise)
                contrast[t] += torch.fft.irfft2(torch.fft.rfft2(torch.from_numpy(bg)) * filt, s=(ny, nx)).numpy()
                contrast[t] = realism.rotate_image(contrast[t], inplane_deg[t], (cy, cx))
                if signal is not None:
                    signal[t] = realism.rotate_image(signal[t], inplane_deg[t], (cy, cx))
                bg = np.zeros((ny, nx), dtype=np.float32)
            if cfg.ice_noise_rad > 0:
                bg += rng_ice.standard_normal((ny, nx)).astype(np.float32) * np.float32(
                    cfg.ice_noise_rad / math.sqrt(beam_z[t])
                )
            contrast[t] += torch.fft.irfft2(torch.fft.rfft2(torch.from_numpy(bg)) * filt, s=(ny, nx)).numpy()
    # detection: expected electrons per pixel, Poisson (and the detector's MTF and DQE)
    det = (
        None
        if cfg.detector == "ideal"
        else realism.detector_parameters(cfg.detector, cfg.detector_mtf_nyquist, cfg.detector_dqe0)
    )
    for t in range(nt):
        intensity = contrast[t] + np.float32(1.0)
        if det is not None:
            noisy = poisson_counts(intensity, e_per_px[t], rng_noise) if cfg.shot_noise else None
            expected = np.clip(intensity, 0.0, None) * e_per_px[t]
            counts[t] = realism.apply_detector(expected, noisy, v, cfg.detector_pixel_angstrom or v, det[0], det[1])
        elif cfg.shot_noise:
            counts[t] = poisson_counts(intensity, e_per_px[t], rng_noise)
        else:
            counts[t] = intensity * np.float32(e_per_px[t])
    del contrast
    clock.lap("background_and_noise")

    # ---------------------------------------------------------------- reconstruction
    def reconstruct(stack):
        means = stack.mean(axis=(1, 2), keepdims=True)
        return weighted_back_projection(stack / np.maximum(means, 1e-12) - 1.0, angles, (nz, ny, nx))

    tomo = reconstruct(counts)
    tomo_nf = None
    if signal is not None:  # particles + decoys + blobs, no ice or shot noise
        tomo_nf = reconstruct(signal + np.float32(1.0))
        del signal
    clock.lap("reconstruction")

    # ---------------------------------------------------------------- ground truth
    idx_all = (
        np.column_stack(
            [pos[:, 0] / v + centre_index(nx), pos[:, 1] / v + centre_index(ny), pos[:, 2] / v + centre_index(nz)]
        )
        if n_obj
        else np.zeros((0, 3))
    )
    rel_all = relion5_centered_angstrom(idx_all, v, (nx, ny, nz), v) if n_obj else np.zeros((0, 3))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gimbal lock")
        eul_all = matrix_to_relion(poses) if n_obj else np.zeros((0, 3))
    idx, rel, eul = idx_all[:n_tot], rel_all[:n_tot], eul_all[:n_tot]
    particles = pd.DataFrame(
        {
            "rlnTomoName": [cfg.tomo_name] * n_tot,
            "rlnCenteredCoordinateXAngst": rel[:, 0],
            "rlnCenteredCoordinateYAngst": rel[:, 1],
            "rlnCenteredCoordinateZAngst": rel[:, 2],
            "rlnAngleRot": eul[:, 0],
            "rlnAngleTilt": eul[:, 1],
            "rlnAnglePsi": eul[:, 2],
            "tmVoxelIndexX": idx[:, 0],
            "tmVoxelIndexY": idx[:, 1],
            "tmVoxelIndexZ": idx[:, 2],
            "tmIsDecoy": kind[:n_tot].astype(int),
            "tmTrueHand": np.full(n_tot, cfg.hand, dtype=int),
            "tmStructure": [structs[k].name for k in kind[:n_tot]],
        }
    )
    distractors = _distractor_table(
        cfg, structs, kind[n_tot:], rel_all[n_tot:], idx_all[n_tot:], eul_all[n_tot:], gold_pos
    )
    ts = TiltSeries(
        tilt_angles_deg=angles,
        accumulated_dose=pre,
        defocus_u_um=df_u,
        defocus_v_um=df_v,
        astigmatism_angle_deg=ast_ang,
        voltage_kv=cfg.voltage_kv,
        cs_mm=cfg.cs_mm,
        amplitude_contrast=cfg.amplitude_contrast,
        pixel_size_angstrom=v,
        hand=cfg.hand,
        name=cfg.tomo_name,
    )
    summary = {
        "tomomatch_simulation": 1,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "true_hand": cfg.hand,
        "hand_mode": cfg.hand_mode,
        "geometry_version": GEOMETRY_VERSION,
        "defocus_rule": (
            "df_particle = df_tilt + h*(-x sin t + z cos t) (h = rlnTomoHand)"
            if cfg.hand_mode == "full"
            else "df_particle = df_tilt + z cos(s t) + x sin(s t), s = h (pytom)"
        )
        + " ; h=0: no gradient",
        "rlnTomoHand_written": cfg.hand if cfg.hand != 0 else 1,
        "parameters": cfg.to_dict(),
        "warnings": list(cfg.warnings),
        "structures": [
            {
                "name": s.name,
                "source": str(s.source),
                "box_size": int(s.density.shape[0]),
                "voxel_size_angstrom": s.voxel_size_angstrom,
                "radius_angstrom": round(s.radius_angstrom, 3),
                "fourier_pad_size": b * q,
                "patch_size_pixels": q,
            }
            for s, pr, q in zip(structs, projectors, qsizes)
        ],
        "simulation_pixel_angstrom": ps,
        "tomogram_voxel_angstrom": v,
        "tomogram_size_xyz": [nx, ny, nz],
        "tilt_series_pixel_angstrom": v,
        "interaction_constant_rad_per_volt_angstrom": sigma_e,
        "electron_wavelength_angstrom": lam,
        "per_tilt": {
            "tilt_angle_deg": angles.tolist(),
            "acquisition_index": acq.tolist(),
            "pre_exposure_e_per_A2": pre.tolist(),
            "dose_e_per_A2": dose_tilt.tolist(),
            "defocus_u_um": df_u.tolist(),
            "defocus_v_um": df_v.tolist(),
            "astigmatism_angle_deg": ast_ang.tolist(),
            "jitter_xy_angstrom": jitter.tolist(),
            "in_plane_rotation_deg": inplane_deg.tolist(),
            "attenuation": atten.tolist(),
            "electrons_per_simulation_pixel": e_per_px.tolist(),
        },
        "n_particles": cfg.n_particles,
        "n_decoys": cfg.n_decoys,
        "n_blobs": cfg.n_blobs,
        "realism": _realism_summary(cfg, extra, carbon, gold_pos, structs, crowder_kinds, kind, n_tot),
        "conventions": {
            "pose": "particle(r) = template(R^T (r - p)); RELION rot/tilt/psi = conventions.matrix_to_relion(R)",
            "image": "tilt axis y; x' = x cos t + z sin t (IMOD/RELION 5); centre voxel n//2; "
            "tilt series sorted by angle",
            "contrast": "tilt series = detected electrons per pixel (protein dark); tomogram = WBP of "
            "counts/mean - 1 (protein dark); template = -density (dark)",
            "dose": "accumulated dose before each tilt; the damage filter uses pre-exposure + half the tilt dose",
        },
    }
    result = SimulationResult(
        out_dir=out_dir,
        paths={},
        particles=particles,
        defocus_um=part_df[:n_tot],
        tilt_series=ts,
        hand=cfg.hand,
        config=cfg,
        summary=summary,
        distractors=distractors,
    )
    result.tilt_series_counts = counts
    result.tomogram = tomo
    result.tomogram_noise_free = tomo_nf
    if cfg.estimate_sigma and cfg.n_particles:
        from .scoring import particle_sigma

        template, mask, _ = make_template(cfg, structs[0])
        summary["particle_sigma"] = particle_sigma(
            tomo,
            v,
            ts,
            template,
            mask,
            idx[: cfg.n_particles],
            poses[: cfg.n_particles],
            hand=cfg.hand,
            hand_mode=cfg.hand_mode,
            particle_diameter_angstrom=2.0 * structs[0].radius_angstrom,
            seed=cfg.seed,
        )
        clock.lap("particle_sigma")
    if write:
        _write_outputs(result, counts, tomo, structs[0], cfg)
        clock.lap("write")
    summary["timings"] = clock.as_dict()
    summary["peak_memory_gb"] = round(_rss_gb(), 3)
    if write:
        _write_json(out_dir / "summary.json", summary)
    return result


def _support_at_voxel(s: LoadedStructure, v: float) -> np.ndarray:
    """A structure's density resampled to the tomogram voxel ``v`` (for the occupancy grid)."""
    from .. import template as tpl

    return _cube(tpl.resample_fourier(s.density, s.voxel_size_angstrom, v))


def _place_extras(cfg, structs, crowder_kinds, kind, pos, poses, slab_z, rng_gold, rng_crowd) -> dict:
    """Gold beads and crowders, placed on an occupancy grid at the tomogram voxel that already
    holds the particles and decoys (their supports at their poses): nothing overlaps."""
    nx, ny, nz = cfg.tomogram_size_xyz
    v = float(cfg.voxel_size_angstrom)
    out: dict[str, Any] = {
        "gold_pos": np.zeros((0, 3)),
        "crowder_kind": np.zeros(0, dtype=int),
        "crowder_pos": np.zeros((0, 3)),
        "crowder_rot": np.zeros((0, 3, 3)),
        "crowding": None,
    }
    if cfg.n_gold == 0 and cfg.crowding_volume_fraction <= 0:
        return out
    c = np.array([centre_index(nz), centre_index(ny), centre_index(nx)], dtype=float)
    occ = np.zeros((nz, ny, nx), dtype=bool)
    coarse = {}
    for i, k in enumerate(kind):
        if k not in coarse:
            coarse[k] = _support_at_voxel(structs[k], v)
        m = realism.rotated_support(coarse[k], poses[i])
        realism._paste_mask(occ, m, np.rint(pos[i, ::-1] / v + c).astype(int), test_only=False)
    # gold: balls touching one of the slab's two surfaces, anywhere in the field
    r_gold = cfg.gold_diameter_nm * 5.0
    gold = []
    if cfg.n_gold:
        rv = r_gold / v
        n = 2 * int(math.ceil(rv)) + 3
        g = np.arange(n) - centre_index(n)
        ball = (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) <= rv * rv
        half_xy = np.array([nx * v / 2 - r_gold, ny * v / 2 - r_gold])
        if np.any(half_xy <= 0) or slab_z[1] - slab_z[0] < 2 * r_gold:
            raise InputError(
                f"gold beads of {cfg.gold_diameter_nm:g} nm do not fit in the field or the slab", field="gold diameter"
            )
        for _ in range(cfg.n_gold):
            for _try in range(200):
                xy = rng_gold.uniform(-half_xy, half_xy)
                z = slab_z[0] + r_gold if rng_gold.random() < 0.5 else slab_z[1] - r_gold
                p = np.array([xy[0], xy[1], z])
                free, _n = realism._paste_mask(occ, ball, np.rint(p[::-1] / v + c).astype(int), test_only=False)
                if free:
                    gold.append(p)
                    break
            else:
                raise InputError(f"no room for {cfg.n_gold} gold beads (placed {len(gold)})", field="n gold")
    out["gold_pos"] = np.asarray(gold, dtype=float).reshape(-1, 3)
    if cfg.crowding_volume_fraction > 0:
        z0 = int(math.ceil(slab_z[0] / v + c[0] - 1e-9))
        z1 = int(math.floor(slab_z[1] / v + c[0] + 1e-9))
        dens = [_support_at_voxel(structs[k], v) for k in crowder_kinds]
        pl = realism.place_crowders(rng_crowd, dens, occ, (max(z0, 0), min(z1, nz - 1)), cfg.crowding_volume_fraction)
        out["crowder_kind"] = np.asarray(crowder_kinds, dtype=int)[pl.kind] if pl.kind.size else np.zeros(0, int)
        out["crowder_pos"] = (pl.centre_zyx[:, ::-1] - c[::-1]) * v
        out["crowder_rot"] = pl.rotation
        out["crowding"] = pl
        if pl.fraction < 0.9 * cfg.crowding_volume_fraction:
            msg = (
                f"crowders fill {pl.fraction:.3f} of the slab, short of the requested "
                f"{cfg.crowding_volume_fraction:g} (no room found after {pl.n_failures} tries)"
            )
            cfg.warnings.append(msg)
            warnings.warn(msg, stacklevel=3)
    return out


def _add_gold(contrast, cfg, gold_pos, angles, jitter, df_tilt, ast_ang, dose_mid, deloc_px, cx, cy, sigma_e) -> None:
    """Gold beads: uniform balls (``gold_potential_volt``) through the CTF at each bead's own
    defocus, from the analytic transform of a ball's projection (band-limited, exact), with the
    amplitude contrast ``gold_amplitude_contrast`` (gold scatters strongly outside the objective
    aperture: the bead is dark at low frequencies, not only at its rim)."""
    nt = angles.size
    v = float(cfg.voxel_size_angstrom)
    r = cfg.gold_diameter_nm * 5.0
    q = int(sfft.next_fast_len(int(math.ceil(2 * r / v + 2 * deloc_px + 8))))
    q += q % 2
    ku = np.fft.rfftfreq(q)[None, :] / v
    kv = np.fft.fftfreq(q)[:, None] / v
    ft = torch.from_numpy(realism.sphere_projection_ft(np.sqrt(ku * ku + kv * kv), r, cfg.gold_potential_volt))
    ku_t = torch.from_numpy(np.fft.rfftfreq(q).astype(np.float32))[None, None, :]
    kv_t = torch.from_numpy(np.fft.fftfreq(q).astype(np.float32))[None, :, None]
    off = defocus_at_point_um(0.0, gold_pos[:, 0:1], gold_pos[:, 2:3], angles[None, :], cfg.hand, cfg.hand_mode)
    xs = projected_x(gold_pos[:, 0:1], gold_pos[:, 2:3], angles[None, :])
    gold_cfg = dataclasses.replace(cfg, amplitude_contrast=cfg.gold_amplitude_contrast)
    for j in range(gold_pos.shape[0]):
        df = df_tilt + off[j]
        filt = _transfer(
            ku_t / v,
            kv_t / v,
            gold_cfg,
            df + 0.5 * cfg.astigmatism_um,
            df - 0.5 * cfg.astigmatism_um,
            ast_ang,
            dose_mid,
        )
        X = cx + (xs[j] + jitter[:, 0]) / v
        Y = cy + (gold_pos[j, 1] + jitter[:, 1]) / v
        Xi, Yi = np.round(X), np.round(Y)
        dx = torch.from_numpy((X - Xi + centre_index(q)).astype(np.float32).reshape(-1, 1, 1))
        dy = torch.from_numpy((Y - Yi + centre_index(q)).astype(np.float32).reshape(-1, 1, 1))
        ramp = -2 * math.pi * (dx * ku_t + dy * kv_t)
        spec = (ft[None] * (2.0 * sigma_e / (v * v))).to(torch.float32) * filt
        patch = torch.fft.irfft2(spec * torch.polar(torch.ones_like(ramp), ramp), s=(q, q)).numpy()
        for t in range(nt):
            _paste(contrast[t], patch[t], int(Yi[t]) - centre_index(q), int(Xi[t]) - centre_index(q))


def _carbon_geometry(cfg, slab_z, half) -> dict | None:
    """The carbon film: ``x > x_edge``, on top of the ice slab (``slab_z[1] .. + thickness``),
    all y; centred Angstrom."""
    if cfg.carbon_edge_x_fraction is None:
        return None
    nx = cfg.tomogram_size_xyz[0]
    v = float(cfg.voxel_size_angstrom)
    x_edge = (float(cfg.carbon_edge_x_fraction) * nx - centre_index(nx)) * v
    return {
        "x_edge": x_edge,
        "z_low": float(slab_z[1]),
        "z_high": float(slab_z[1]) + cfg.carbon_thickness_nm * 10.0,
        "x_edge_voxel": x_edge / v + centre_index(nx),
    }


def _distractor_table(cfg, structs, ckind, rel, idx, eul, gold_pos) -> pd.DataFrame | None:
    """Crowders and gold beads, for attributing false positives (``distractors.star``)."""
    if ckind.size == 0 and gold_pos.shape[0] == 0:
        return None
    nx, ny, nz = cfg.tomogram_size_xyz
    v = float(cfg.voxel_size_angstrom)
    g_idx = (
        gold_pos / v + np.array([centre_index(nx), centre_index(ny), centre_index(nz)])
        if gold_pos.shape[0]
        else np.zeros((0, 3))
    )
    g_rel = relion5_centered_angstrom(g_idx, v, (nx, ny, nz), v) if gold_pos.shape[0] else np.zeros((0, 3))
    n_c, n_g = ckind.size, gold_pos.shape[0]
    return pd.DataFrame(
        {
            "rlnTomoName": [cfg.tomo_name] * (n_c + n_g),
            "rlnCenteredCoordinateXAngst": np.concatenate([rel[:, 0], g_rel[:, 0]]),
            "rlnCenteredCoordinateYAngst": np.concatenate([rel[:, 1], g_rel[:, 1]]),
            "rlnCenteredCoordinateZAngst": np.concatenate([rel[:, 2], g_rel[:, 2]]),
            "rlnAngleRot": np.concatenate([eul[:, 0], np.zeros(n_g)]),
            "rlnAngleTilt": np.concatenate([eul[:, 1], np.zeros(n_g)]),
            "rlnAnglePsi": np.concatenate([eul[:, 2], np.zeros(n_g)]),
            "tmVoxelIndexX": np.concatenate([idx[:, 0], g_idx[:, 0]]),
            "tmVoxelIndexY": np.concatenate([idx[:, 1], g_idx[:, 1]]),
            "tmVoxelIndexZ": np.concatenate([idx[:, 2], g_idx[:, 2]]),
            "tmSource": ["crowder"] * n_c + ["gold"] * n_g,
            "tmStructure": [structs[k].name for k in ckind] + ["gold"] * n_g,
            "tmRadiusAngstrom": np.concatenate(
                [[structs[k].radius_angstrom for k in ckind], np.full(n_g, cfg.gold_diameter_nm * 5.0)]
            ),
        }
    )


def _realism_summary(cfg, extra, carbon, gold_pos, structs, crowder_kinds, kind, n_tot) -> dict:
    out: dict[str, Any] = {}
    if cfg.template_structure is not None or cfg.template_low_pass_angstrom is not None:
        out["template_mismatch"] = {
            "template_structure": str(cfg.template_structure or cfg.structure),
            "template_low_pass_angstrom": cfg.template_low_pass_angstrom,
        }
    pl = extra.get("crowding")
    if pl is not None:
        names = [structs[k].name for k in kind[n_tot:]]
        out["crowding"] = {
            "requested_volume_fraction": cfg.crowding_volume_fraction,
            "achieved_volume_fraction": round(pl.fraction, 4),
            "definition": "crowder voxels (support above 5 % of the maximum, posed, at the tomogram voxel) "
            "inside the field and the slab / the slab's voxels in the field",
            "n_crowders": int(len(names)),
            "per_structure": {structs[k].name: names.count(structs[k].name) for k in crowder_kinds},
            "failed_poses": pl.n_failures,
        }
    if gold_pos.shape[0]:
        out["gold"] = {
            "n": int(gold_pos.shape[0]),
            "diameter_nm": cfg.gold_diameter_nm,
            "potential_volt": cfg.gold_potential_volt,
            "centres_angstrom": gold_pos.round(3).tolist(),
        }
    if carbon is not None:
        out["carbon_edge"] = {
            "region": "x > x_edge, z_low < z < z_high, all y (centred Angstrom; film on top of the ice slab)",
            "x_edge_angstrom": carbon["x_edge"],
            "x_edge_voxel": carbon["x_edge_voxel"],
            "z_low_angstrom": carbon["z_low"],
            "z_high_angstrom": carbon["z_high"],
            "potential_volt": cfg.carbon_potential_volt,
            "noise_rad": cfg.carbon_noise_rad,
        }
    if cfg.jitter_angstrom > 0 or cfg.tilt_rotation_deg > 0:
        out["misalignment"] = {
            "shift_rms_angstrom": cfg.jitter_angstrom,
            "rotation_rms_deg": cfg.tilt_rotation_deg,
            "per_tilt": "per_tilt.jitter_xy_angstrom (particle and feature shifts) and "
            "per_tilt.in_plane_rotation_deg (image rotated about the tilt-axis centre after the shift)",
        }
    if cfg.detector != "ideal":
        mtf_n, dqe0 = realism.detector_parameters(cfg.detector, cfg.detector_mtf_nyquist, cfg.detector_dqe0)
        out["detector"] = {
            "model": cfg.detector,
            "mtf_nyquist": mtf_n,
            "dqe0": dqe0,
            "detector_pixel_angstrom": cfg.detector_pixel_angstrom or cfg.voxel_size_angstrom,
            "mtf": "sinc(f) exp(-g f^2), f in cycles per detector pixel, MTF(1/2) = mtf_nyquist",
            "noise": "white, variance = counts / dqe0 (DQE(f) = dqe0 MTF(f)^2)",
        }
    return out


def _transfer(kx, ky, cfg: SimulationConfig, du, dv, ang, dose_for_filter) -> torch.Tensor:
    """CTF x dose filter x B envelope on a (t, ny, nx) frequency grid (1/A), float32."""
    nt = len(du)
    shp = (nt, 1, 1)
    k2 = kx * kx + ky * ky
    if cfg.apply_ctf:
        c = ctfmod.ctf(
            kx,
            ky,
            torch.as_tensor(np.asarray(du, dtype=np.float32)).reshape(shp),
            torch.as_tensor(np.asarray(dv, dtype=np.float32)).reshape(shp),
            torch.as_tensor(np.asarray(ang, dtype=np.float32)).reshape(shp),
            voltage_kv=cfg.voltage_kv,
            cs_mm=cfg.cs_mm,
            amplitude_contrast=cfg.amplitude_contrast,
        )
    else:
        c = -torch.ones((nt,) + tuple(torch.broadcast_shapes(kx.shape, ky.shape)[-2:]))
    if cfg.apply_dose_filter:
        k = torch.sqrt(k2)
        c = c * ctfmod.dose_filter(
            k, torch.as_tensor(np.asarray(dose_for_filter, dtype=np.float32)).reshape(shp), voltage_kv=cfg.voltage_kv
        )
    if cfg.b_factor_angstrom2 > 0:
        c = c * torch.exp(-cfg.b_factor_angstrom2 * k2 / 4.0)
    return c.to(torch.float32)


def _paste(dst: np.ndarray, src: np.ndarray, y0: int, x0: int) -> None:
    H, W = dst.shape
    h, w = src.shape
    ya, yb = max(0, y0), min(H, y0 + h)
    xa, xb = max(0, x0), min(W, x0 + w)
    if ya < yb and xa < xb:
        dst[ya:yb, xa:xb] += src[ya - y0 : yb - y0, xa - x0 : xb - x0]


def _add_blobs(img, blob_pos, blob_sig, peak_volt, angle, jit, cx, cy, pixel, sigma_e) -> None:
    """Add the projected phase of 3D Gaussian blobs (peak ``peak_volt``) to ``img``; each is
    widened by half a pixel in quadrature (integral kept) so the sampled image is band-limited."""
    H, W = img.shape
    xs = projected_x(blob_pos[:, 0], blob_pos[:, 2], angle)
    for x, y, s in zip(xs, blob_pos[:, 1], blob_sig):
        X = cx + (x + jit[0]) / pixel
        Y = cy + (y + jit[1]) / pixel
        se = math.sqrt(s * s + (0.5 * pixel) ** 2)
        r = int(math.ceil(4 * se / pixel))
        x0, x1 = max(0, int(X) - r), min(W, int(X) + r + 2)
        y0, y1 = max(0, int(Y) - r), min(H, int(Y) + r + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.exp(-0.5 * ((np.arange(x0, x1) - X) * pixel / se) ** 2)
        gy = np.exp(-0.5 * ((np.arange(y0, y1) - Y) * pixel / se) ** 2)
        # projected potential of a 3D Gaussian: peak * sqrt(2 pi) * s (V A), spread over se^2
        amp = sigma_e * peak_volt * math.sqrt(2 * math.pi) * s * (s / se) ** 2
        img[y0:y1, x0:x1] += (amp * gy[:, None] * gx[None, :]).astype(np.float32)


# --------------------------------------------------------------------------- outputs


def _write_mrc(path: Path, data: np.ndarray, voxel_size_angstrom: float) -> Path:
    return write_volume(path, data, voxel_size_angstrom, label="tomomatch simulate")


def _fix_star_comment(path: Path, comment: str) -> None:
    """Replace starfile's time-stamped first comment line by ``comment`` (deterministic files)."""
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True)
    if lines and lines[0].startswith("# Created by the starfile"):
        lines[0] = comment.rstrip("\n") + "\n"
        with atomic_path(path) as tmp:
            Path(tmp).write_text("".join(lines))


def _write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")


def make_template(cfg: SimulationConfig, part: LoadedStructure) -> tuple[np.ndarray, np.ndarray, dict]:
    """The matching template (dark, like the tomogram) and its spherical mask at the tomogram
    voxel size, as written next to the simulation, and their description.

    Made from ``cfg.template_structure`` when given (template mismatch), else from the particles'
    structure; optionally low-passed (``template_low_pass_angstrom``). The mask radius is the
    template's radius x 1.05 + 1 voxel (Gaussian edge sigma 1 voxel).
    """
    from .. import template as tpl
    from ..mask import spherical_mask
    from ..phantom import phantom_density

    v = cfg.voxel_size_angstrom
    mismatch = cfg.template_structure is not None
    spec = cfg.template_structure if mismatch else cfg.structure
    radius_a = part.radius_angstrom
    if mismatch:
        radius_a = load_structure(spec, v, cfg.phantom_diameter_angstrom).radius_angstrom
    radius_vox = radius_a / v
    mask_radius, mask_sigma = radius_vox * 1.05 + 1.0, 1.0
    # the soft edge (cut at 3 sigma) must stay inside the box's inscribed sphere, so the mask is
    # rotation-invariant and the matcher can take its spherical-mask fast path
    box = cfg.template_box_size or int(2 * math.ceil(max(1.2 * radius_vox + 2, mask_radius + 3 * mask_sigma + 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(spec, Structure):
            t = tpl.pad_or_crop(tpl.resample_fourier(spec.density, spec.voxel_size_angstrom, v), box)
        elif isinstance(spec, str) and spec in _PHANTOMS:
            variant, mirror = _PHANTOMS[spec]
            t = phantom_density(v, box, cfg.phantom_diameter_angstrom, variant=variant, mirror=mirror)
        else:
            t, _ = tpl.create_template(spec, v)
            box = max(box, t.shape[0])
            t = tpl.pad_or_crop(t, box)
        if cfg.template_low_pass_angstrom is not None:
            t = tpl.low_pass(t, v, cfg.template_low_pass_angstrom)
    template = -np.asarray(t, dtype=np.float32)
    mask = spherical_mask(box, mask_radius, mask_sigma)
    info: dict[str, Any] = {
        "box_size": box,
        "mask_radius_voxels": mask_radius,
        "mask_sigma_voxels": mask_sigma,
        "contrast": "dark (inverted density)",
    }
    if mismatch or cfg.template_low_pass_angstrom is not None:
        # how different the template is from the simulated particle: correlation of the two
        # densities at the tomogram voxel, same frame (identity pose), and with the template mirrored
        ref = tpl.pad_or_crop(_support_at_voxel(part, v), box)
        a, b = ref.ravel(), -template.ravel()
        info["source"] = str(spec)
        info["low_pass_angstrom"] = cfg.template_low_pass_angstrom
        info["cc_with_particle_structure"] = round(float(np.corrcoef(a, b)[0, 1]), 4)
        info["cc_with_particle_structure_mirrored"] = round(
            float(np.corrcoef(a, -template[:, :, ::-1].ravel())[0, 1]), 4
        )
        if info["cc_with_particle_structure"] < 0.8:
            msg = (
                f"template {spec} correlates only {info['cc_with_particle_structure']:.2f} with the particles' "
                "structure in the same frame: its frame may differ, so the poses in particles.star (particle "
                "frame) need not be the template's"
            )
            cfg.warnings.append(msg)
            info["warning"] = msg
    return template, mask, info


def _write_outputs(res: SimulationResult, counts: np.ndarray, tomo: np.ndarray, part, cfg: SimulationConfig) -> None:
    from ..metadata import write_dose, write_imod_defocus, write_relion5, write_tilt_angles

    out = res.out_dir
    out.mkdir(parents=True, exist_ok=True)
    name = cfg.tomo_name
    v = cfg.voxel_size_angstrom
    nx, ny, nz = cfg.tomogram_size_xyz
    paths = res.paths
    paths["tilt_series"] = _write_mrc(out / f"{name}_ts.mrc", counts, v)
    paths["tomogram"] = _write_mrc(out / f"{name}.mrc", tomo, v)
    if res.tomogram_noise_free is not None:
        paths["tomogram_noise_free"] = _write_mrc(out / f"{name}_noisefree.mrc", res.tomogram_noise_free, v)
    # IMOD sign, the angles the images were made with (geometry 2: x' = x cos t + z sin t), never
    # negated; .tlt (the aligned angles IMOD's tilt/RELION's IMOD import read) = .rawtlt: no misalignment
    paths["rawtlt"] = write_tilt_angles(out / f"{name}.rawtlt", res.tilt_series.tilt_angles_deg)
    paths["tlt"] = write_tilt_angles(out / f"{name}.tlt", res.tilt_series.tilt_angles_deg)
    paths["dose"] = write_dose(out / f"{name}_dose.txt", res.tilt_series.accumulated_dose)
    paths["defocus"] = write_imod_defocus(out / f"{name}.defocus", res.tilt_series)
    paths["tomograms_star"] = write_relion5(
        out,
        res.tilt_series,
        name,
        (nx, ny, nz),
        1.0,
        tomogram_path=f"{name}.mrc",
        hand=cfg.hand if cfg.hand != 0 else 1,
    )
    paths["tilt_series_star"] = out / "tilt_series" / f"{name}.star"
    for p in (paths["tomograms_star"], paths["tilt_series_star"]):
        _fix_star_comment(
            p,
            f"# tomomatch simulate (preset {cfg.preset}, seed {cfg.seed}); "
            f"rlnTomoHand = true hand {cfg.hand}" + (" (0 = no gradient, written as +1)" if cfg.hand == 0 else ""),
        )
    star = out / "particles.star"
    with atomic_path(star) as tmp:
        starfile.write({"particles": res.particles}, tmp, float_format="%.6f")
        _fix_star_comment(
            tmp,
            f"# tomomatch simulate ground truth: true defocus hand h = {cfg.hand} "
            f"(mode {cfg.hand_mode}); pose R maps template to particle, "
            "angles = RELION ZYZ of R; tmVoxelIndexX/Y/Z = 0-based tomogram voxel indices "
            "(centre n//2)",
        )
    paths["particles_star"] = star

    if res.distractors is not None:
        dstar = out / "distractors.star"
        with atomic_path(dstar) as tmp:
            starfile.write({"distractors": res.distractors}, tmp, float_format="%.6f")
            _fix_star_comment(
                tmp,
                "# tomomatch simulate: crowders and gold beads (tmSource), for attributing false positives; "
                "the carbon edge region is in summary.json (realism.carbon_edge)",
            )
        paths["distractors_star"] = dstar
    template, mask, info = make_template(cfg, part)
    paths["template"] = _write_mrc(out / "template.mrc", template, v)
    paths["mask"] = _write_mrc(out / "mask.mrc", mask, v)
    paths["summary"] = out / "summary.json"
    res.summary["template"] = info
    res.summary["files"] = {k: os.path.relpath(p, out) for k, p in paths.items()}


def simulate(
    preset: str = "ci", out_dir=None, seed: int | None = None, hand: int | None = None, write: bool = True, **overrides
) -> SimulationResult:
    """Simulate a tilt series and tomogram with known particles, poses and defocus handedness.

    Parameters
    ----------
    preset
        ``"ci"`` (small, seconds), ``"lamella"`` (ci-sized, 180 nm thick, asymmetric tilts
        -40..+60 at 2 degrees), ``"seed"`` (70S ribosomes like pytom's handedness benchmark,
        0.44 x 0.62 um at 8.56 A, calibrated to its ~20 sigma), ``"seed-clean"`` (the same in
        clean ice, ~64 sigma), ``"wide"`` (0.88 um field at 4.28 A), ``"hard"`` or ``"custom"``.
    out_dir
        Output folder (created). Required when ``write``.
    seed
        Random seed (default 0). The same seed gives byte-identical files (except timings in
        summary.json).
    hand
        True defocus handedness ``h`` in {+1, -1, 0} (:mod:`tomomatch.conventions`).
    write
        Write the files (default) or only return arrays.
    **overrides
        Any :class:`SimulationConfig` field (e.g. ``n_particles=20``, ``thickness_nm=100``,
        ``structure="model.cif"``, ``shot_noise=False``).

    Returns
    -------
    SimulationResult
    """
    if seed is not None:
        overrides["seed"] = seed
    if hand is not None:
        overrides["hand"] = hand
    cfg = preset_config(preset, **overrides)
    if write and out_dir is None:
        raise InputError("an output folder is required", field="out_dir")
    for w in cfg.warnings:
        warnings.warn(w, stacklevel=2)
    if not write:
        return run_simulation(cfg, ".", write=False)
    from ..locking import JobLock

    with JobLock(out_dir, "simulation", "simulate"):  # one simulation per folder at a time
        return run_simulation(cfg, out_dir, write=True)
