"""Simulation parameters, presets and their validation."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..conventions import HandMode, check_hand
from ..errors import InputError

__all__ = [
    "SimulationConfig",
    "Structure",
    "PRESETS",
    "SHARED_STRUCTURES",
    "preset_config",
    "default_data_dir",
    "shared_structure",
]


@dataclass(frozen=True, eq=False)
class Structure:
    """An in-memory density to simulate (positive, volts above the ice, ``[z, y, x]`` cube
    centred on ``n // 2``) at ``voxel_size_angstrom``. ``name`` is recorded in the outputs."""

    density: np.ndarray
    voxel_size_angstrom: float
    name: str = "array"


@dataclass
class SimulationConfig:
    """Every parameter of one simulation (units in the names; see docs/simulation.md).

    Geometry follows :mod:`tomomatch.conventions`: the tomogram is ``tomogram_size_xyz``
    voxels of ``voxel_size_angstrom`` with its centre (voxel ``n // 2``) on the tilt axis; the
    structures are sampled at ``voxel_size_angstrom / binning`` and their projections are
    evaluated in the band of the tomogram voxel size (i.e. simulated finer, then Fourier-cropped);
    the tilt series has the tomogram's pixel size.
    """

    preset: str = "custom"
    seed: int = 0
    # ---- sample
    structure: Any = "phantom"  # 'phantom', 'phantom-mirror', 'phantom-decoy', a model/map path or Structure
    phantom_diameter_angstrom: float = 250.0
    n_particles: int = 8
    n_decoys: int = 0
    decoy_structure: Any = "phantom-decoy"
    n_blobs: int = 0
    blob_sigma_angstrom: tuple[float, float] = (10.0, 25.0)
    blob_peak_volt: float = 1.5
    thickness_nm: float = 40.0
    slab_offset_nm: float = 0.0  # slab centre along z relative to the tomogram centre
    min_distance_angstrom: float | None = None  # default: sum of the two particles' radii
    particle_positions_angstrom: Any = None  # optional (n, 3) centred x, y, z (A), overrides random placement
    particle_angles_relion_deg: Any = None  # optional (n, 3) rot, tilt, psi, overrides random orientations
    # ---- tomogram
    tomogram_size_xyz: tuple[int, int, int] = (128, 128, 48)
    voxel_size_angstrom: float = 10.0
    binning: int = 2  # density sampled at voxel/binning; projections Fourier-cropped to voxel
    # ---- tilt scheme
    tilt_min_deg: float = -60.0
    tilt_max_deg: float = 60.0
    tilt_step_deg: float = 4.0
    tilt_order: str = "dose-symmetric"
    dose_symmetric_group: int = 2
    dose_per_tilt: float = 3.5
    # ---- optics
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_um: float = 3.0
    defocus_scatter_um: float = 0.15
    astigmatism_um: float = 0.0  # |dU - dV|
    astigmatism_angle_deg: float | None = None  # None: random per tilt
    b_factor_angstrom2: float = 0.0  # extra envelope exp(-B k^2 / 4)
    hand: int = 1
    hand_mode: HandMode = "full"
    apply_ctf: bool = True  # False: ideal dark contrast, transfer -1 at all k (debugging)
    apply_dose_filter: bool = True
    # ---- noise
    shot_noise: bool = True
    ice_noise_rad: float = 0.03  # rms ice phase noise per tilt-series pixel at 0 degrees (white, / sqrt(cos t))
    inelastic_mean_free_path_nm: float = 350.0
    jitter_angstrom: float = 0.0  # rms per-tilt residual misalignment (x and y)
    # ---- realism (docs/simulation.md "Realism"); every one off by default
    template_structure: Any = None  # the matching template's source (None: the particles' structure)
    template_low_pass_angstrom: float | None = None  # low-pass the written template (mismatch)
    crowding_volume_fraction: float = 0.0  # fraction of the slab occupied by crowders (0: none)
    crowder_structures: tuple = ("@26S-map", "@6z6u", "@70S-map")  # '@name' shared data, paths, phantoms
    tilt_rotation_deg: float = 0.0  # rms in-plane rotation per tilt (residual misalignment)
    detector: str = "ideal"  # ideal | k2 | k3 | falcon4 | custom (counting-detector MTF/DQE model)
    detector_pixel_angstrom: float | None = None  # physical detector pixel at the specimen (None: tilt pixel)
    detector_mtf_nyquist: float | None = None  # MTF at the detector's Nyquist (override of the model)
    detector_dqe0: float | None = None  # DQE at zero frequency (override of the model)
    n_gold: int = 0  # gold fiducials at the slab surfaces
    gold_diameter_nm: float = 10.0
    gold_potential_volt: float = 25.0  # mean inner potential of gold above the ice
    gold_amplitude_contrast: float = 0.3  # amplitude contrast of gold (scattering outside the aperture)
    carbon_edge_x_fraction: float | None = None  # carbon film for x > fraction * size (None: no edge)
    carbon_thickness_nm: float = 15.0
    carbon_potential_volt: float = 9.0
    carbon_noise_rad: float = 0.05  # rms amorphous-carbon phase noise per pixel through the film at 0 deg
    estimate_sigma: bool = False  # score the particles at their true pose against the background
    # ---- outputs
    tomo_name: str = "sim"
    template_box_size: int | None = None
    write_noise_free: bool = False  # also write <name>_noisefree.mrc (no ice, no shot noise)
    warnings: list = field(default_factory=list)

    # ------------------------------------------------------------------ derived
    @property
    def simulation_pixel_angstrom(self) -> float:
        return self.voxel_size_angstrom / self.binning

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Structure):
                v = f"<array {v.name} {v.density.shape} at {v.voxel_size_angstrom} A>"
            elif isinstance(v, Path):
                v = os.fspath(v)
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    def validate(self) -> "SimulationConfig":
        """Check every value; raise :class:`InputError` (field named) for bad input."""

        def pos(name, integer=False, allow_zero=False):
            v = getattr(self, name)
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise InputError(f"{v!r} is not a number", field=name) from None
            if not math.isfinite(fv) or fv < 0 or (fv == 0 and not allow_zero):
                raise InputError(f"{v!r} must be {'>= 0' if allow_zero else '> 0'}", field=name)
            if integer and fv != int(fv):
                raise InputError(f"{v!r} must be an integer", field=name)

        for n in (
            "voxel_size_angstrom",
            "thickness_nm",
            "tilt_step_deg",
            "voltage_kv",
            "phantom_diameter_angstrom",
            "inelastic_mean_free_path_nm",
        ):
            pos(n)
        for n in (
            "dose_per_tilt",
            "cs_mm",
            "defocus_scatter_um",
            "astigmatism_um",
            "b_factor_angstrom2",
            "ice_noise_rad",
            "jitter_angstrom",
            "blob_peak_volt",
            "crowding_volume_fraction",
            "tilt_rotation_deg",
            "gold_potential_volt",
            "carbon_potential_volt",
            "carbon_noise_rad",
        ):
            pos(n, allow_zero=True)
        for n in ("n_particles", "n_decoys", "n_blobs", "n_gold"):
            pos(n, integer=True, allow_zero=True)
        for n in ("gold_diameter_nm", "carbon_thickness_nm"):
            pos(n)
        self.n_gold = int(self.n_gold)
        if not 0 <= float(self.gold_amplitude_contrast) < 1:
            raise InputError(f"{self.gold_amplitude_contrast} outside [0, 1)", field="gold amplitude contrast")
        if float(self.crowding_volume_fraction) > 0.45:
            raise InputError(
                f"{self.crowding_volume_fraction} is more than random packing reaches; expected 0-0.45",
                field="crowding volume fraction",
            )
        if float(self.crowding_volume_fraction) > 0 and not len(self.crowder_structures):
            raise InputError("crowding needs at least one crowder structure", field="crowder structures")
        for n in ("template_low_pass_angstrom", "detector_pixel_angstrom"):
            if getattr(self, n) is not None:
                pos(n)
        from .realism import DETECTORS

        if self.detector not in DETECTORS and self.detector != "custom":
            raise InputError(
                f"unknown detector {self.detector!r}; expected {', '.join(DETECTORS)} or custom", field="detector"
            )
        for n in ("detector_mtf_nyquist", "detector_dqe0"):
            val = getattr(self, n)
            if val is not None and not 0 < float(val) <= 1:
                raise InputError(f"{val!r} must be in (0, 1]", field=n)
        if self.detector == "custom" and (self.detector_mtf_nyquist is None or self.detector_dqe0 is None):
            raise InputError("a custom detector needs detector_mtf_nyquist and detector_dqe0", field="detector")
        if self.carbon_edge_x_fraction is not None and not 0 <= float(self.carbon_edge_x_fraction) <= 1:
            raise InputError(f"{self.carbon_edge_x_fraction!r} must be in [0, 1]", field="carbon edge x fraction")
        pos("binning", integer=True)
        self.binning = int(self.binning)
        self.n_particles, self.n_decoys, self.n_blobs = int(self.n_particles), int(self.n_decoys), int(self.n_blobs)
        if self.n_particles + self.n_decoys == 0 and self.particle_positions_angstrom is None:
            pass  # an empty field (noise only) is allowed
        try:
            size = tuple(int(s) for s in self.tomogram_size_xyz)
        except (TypeError, ValueError):
            raise InputError(f"{self.tomogram_size_xyz!r} must be 3 integers", field="tomogram size") from None
        if len(size) != 3 or min(size) < 8:
            raise InputError(f"{self.tomogram_size_xyz!r} must be 3 integers >= 8 (x y z)", field="tomogram size")
        self.tomogram_size_xyz = size
        if not math.isfinite(float(self.slab_offset_nm)):
            raise InputError(f"{self.slab_offset_nm!r} must be finite", field="slab offset")
        if not -90 <= self.tilt_min_deg <= self.tilt_max_deg <= 90:
            raise InputError(
                f"tilt range {self.tilt_min_deg:g}..{self.tilt_max_deg:g} must lie within -90..90 "
                "degrees with min <= max",
                field="tilt range",
            )
        if max(abs(self.tilt_min_deg), abs(self.tilt_max_deg)) >= 89.0:
            raise InputError("tilts of 89 degrees or more leave no usable projection", field="tilt range")
        if self.tilt_order not in ("dose-symmetric", "sequential", "bidirectional"):
            raise InputError(
                f"unknown tilt order {self.tilt_order!r}; expected dose-symmetric, sequential or bidirectional",
                field="tilt order",
            )
        try:
            self.hand = check_hand(self.hand)
        except ValueError as exc:
            raise InputError(str(exc), field="hand") from None
        if self.hand_mode not in ("full", "pytom"):
            raise InputError(f"unknown hand mode {self.hand_mode!r}; expected full or pytom", field="hand mode")
        if not 0 <= float(self.amplitude_contrast) < 1:
            raise InputError(f"{self.amplitude_contrast} outside [0, 1)", field="amplitude contrast")
        # the files the simulator writes must read back: the readers' plausibility range
        from ..metadata.plausibility import DEFOCUS_MAX_UM, DEFOCUS_MIN_UM

        df = float(self.defocus_um)
        if not (math.isfinite(df) and DEFOCUS_MIN_UM <= df <= DEFOCUS_MAX_UM):
            raise InputError(
                f"{self.defocus_um} um; expected {DEFOCUS_MIN_UM:g}-{DEFOCUS_MAX_UM:g} um underfocus"
                " (the range tomomatch's readers accept)",
                field="defocus",
            )
        if not float(self.dose_per_tilt) > 0:
            raise InputError(f"dose per tilt {self.dose_per_tilt}; expected > 0 e/A^2", field="dose per tilt")
        lo, hi = (float(s) for s in self.blob_sigma_angstrom)
        if not 0 < lo <= hi:
            raise InputError(f"{self.blob_sigma_angstrom!r} must be 0 < min <= max", field="blob sigma")
        if self.template_box_size is not None:
            pos("template_box_size", integer=True)
            self.template_box_size = int(self.template_box_size)
        try:
            self.seed = int(self.seed)
        except (TypeError, ValueError):
            raise InputError(f"{self.seed!r} is not an integer", field="seed") from None
        if self.seed < 0:
            raise InputError(f"{self.seed} must be >= 0", field="seed")
        if not str(self.tomo_name) or any(c in str(self.tomo_name) for c in "/\\ \t"):
            raise InputError(
                f"{self.tomo_name!r} must be a non-empty name without spaces or slashes", field="tomo name"
            )
        self._check_memory()
        return self

    def _check_memory(self) -> None:
        """Refuse, before allocating, a simulation whose arrays cannot fit in this machine's memory
        (:func:`tomomatch.resources.check_fits`): the tomogram (float32, a few working copies), the
        tilt series at the fine pixel (complex64 per tilt) and the phantom's fine density grid."""
        from ..resources import check_fits

        nx, ny, nz = (float(n) for n in self.tomogram_size_xyz)
        b = float(self.binning)
        n_tilts = math.floor((float(self.tilt_max_deg) - float(self.tilt_min_deg)) / float(self.tilt_step_deg)) + 1
        fine = float(self.phantom_diameter_angstrom) * b / float(self.voxel_size_angstrom)
        n_objects = float(self.n_particles) + float(self.n_decoys) + float(self.n_blobs)
        need = 4.0 * 4 * nx * ny * nz + 8.0 * n_tilts * (nx * b) * (ny * b) + 4.0 * 2 * (2 * fine) ** 3
        need += 1024.0 * n_objects  # poses, positions and per-tilt tables of every particle, decoy and blob
        # the dose files written must read back: the readers' total-dose limit (metadata.plausibility)
        from ..metadata.plausibility import MAX_TOTAL_DOSE

        if float(self.dose_per_tilt) * n_tilts >= MAX_TOTAL_DOSE:
            raise InputError(
                f"{self.dose_per_tilt} e/A^2 per tilt x {n_tilts:.3g} tilts; expected a total below "
                f"{MAX_TOTAL_DOSE:g} e/A^2 (the range tomomatch's readers accept)",
                field="dose per tilt",
            )
        check_fits(
            need,
            f"a {nx:.0f} x {ny:.0f} x {nz:.0f} tomogram, {n_tilts:.3g} tilts, binning {b:.3g} and "
            f"{n_objects:.3g} particles, decoys and blobs",
            None,
            "tomogram size / binning / tilt step / particles",
            "expected a smaller --size, --binning, --n-particles/--n-decoys/--n-blobs or a coarser --tilt-step",
        )


def default_data_dir() -> Path:
    """Shared data folder (see :func:`tomomatch.shared_data.shared_data_dir`)."""
    from ..shared_data import shared_data_dir

    return shared_data_dir() or Path("shared-data-not-found")


#: ``"@name"`` structure specs: files of the shared data folder (``../shared/data``, see its README)
SHARED_STRUCTURES: dict[str, tuple[str, str, float]] = {
    # name: (relative path, what, fallback phantom diameter in A)
    "@4v5d": ("structures/4v5d.cif.gz", "70S ribosome model 4V5D", 250.0),
    "@3j9i": ("structures/3j9i.pdb.gz", "20S proteasome model 3J9I", 170.0),
    "@6z6u": ("structures/6z6u.pdb.gz", "apoferritin model 6Z6U", 125.0),
    "@20S-map": ("maps/polnet_3j9i_20S_5A.mrc", "PolNet 20S proteasome map (3J9I, 5 A)", 170.0),
    "@26S-map": ("maps/polnet_4cr2_26S_5A.mrc", "PolNet 26S proteasome map (4CR2, 5 A)", 300.0),
    "@70S-map": ("maps/polnet_4v4r_70S_5A.mrc", "PolNet 70S ribosome map (4V4R, 5 A)", 250.0),
}


def shared_structure(spec: str) -> tuple[str | None, list[str]]:
    """Path of a ``"@name"`` structure (:data:`SHARED_STRUCTURES`), or ``(None, [warning])`` when
    the shared data (or gemmi, for a model) is missing."""
    rel, what, _ = SHARED_STRUCTURES[spec]
    p = default_data_dir() / rel
    ok = p.exists()
    if ok and not rel.startswith("maps/"):
        try:
            import gemmi  # noqa: F401
        except ImportError:  # pragma: no cover
            ok = False
    if ok:
        return str(p), []
    return None, [f"{what} {p} not found (or gemmi missing)"]


def _ribosome_structure() -> tuple[Any, list[str]]:
    path, _ = shared_structure("@4v5d")
    if path is not None:
        return path, []
    p = default_data_dir() / "structures" / "4v5d.cif.gz"
    return "phantom", [f"70S model {p} not found (or gemmi missing): simulating the built-in phantom instead"]


def _resolve_shared(params: dict, overrides: dict) -> list[str]:
    """Resolve the ``"@name"`` specs of ``params`` in place (the new structure fields; the 70S of
    the existing presets goes through :func:`_ribosome_structure`, unchanged). Missing files: the
    particles fall back to the phantom, the template to the particles' structure, crowders are
    dropped; each with a warning."""
    warns: list[str] = []
    spec = params.get("structure")
    if isinstance(spec, str) and spec in SHARED_STRUCTURES and spec != "@4v5d":
        path, w = shared_structure(spec)
        if path is None:
            params["structure"] = "phantom"
            if "phantom_diameter_angstrom" not in overrides:
                params["phantom_diameter_angstrom"] = SHARED_STRUCTURES[spec][2]
            warns += [w[0] + ": simulating the built-in phantom instead"]
        else:
            params["structure"] = path
    tspec = params.get("template_structure")
    if isinstance(tspec, str) and tspec in SHARED_STRUCTURES:
        path, w = shared_structure(tspec)
        if path is None:
            warns += [w[0] + ": the template is made from the particles' structure (no mismatch)"]
        params["template_structure"] = path
    crowders = params.get("crowder_structures") or ()
    if isinstance(crowders, str):
        crowders = (crowders,)
    if float(params.get("crowding_volume_fraction") or 0.0) > 0:
        if "crowder_structures" not in params:  # a preset without crowders (`seed-clean --crowding`): the default
            crowders = SimulationConfig.crowder_structures
        kept = []
        for c in crowders:
            if isinstance(c, str) and c in SHARED_STRUCTURES:
                path, w = shared_structure(c)
                if path is None:
                    warns += [w[0] + ": left out of the crowders"]
                    continue
                kept.append(path)
            else:
                kept.append(c)
        if not kept:
            warns += ["no crowder structure is available: crowding switched off"]
            params["crowding_volume_fraction"] = 0.0
        params["crowder_structures"] = tuple(kept)
    else:
        params["crowder_structures"] = tuple(crowders)
    return warns


#: Preset name -> parameter overrides of :class:`SimulationConfig`.
PRESETS: dict[str, dict] = {
    # small and fast: CI and the README demo (<= 20 s on 2 cores)
    "ci": dict(
        structure="phantom",
        phantom_diameter_angstrom=200.0,
        n_particles=8,
        n_decoys=2,
        n_blobs=30,
        thickness_nm=40.0,
        tomogram_size_xyz=(128, 128, 48),
        voxel_size_angstrom=10.0,
        binning=2,
        tilt_min_deg=-60.0,
        tilt_max_deg=60.0,
        tilt_step_deg=4.0,
        dose_per_tilt=3.5,
        defocus_um=3.0,
        defocus_scatter_um=0.15,
        ice_noise_rad=0.03,
    ),
    # like pytom-match-pick's defocus-handedness benchmark (EMPIAR-10985 TS 27), clean: the
    # `seed` preset before its calibration (issue 17), kept so earlier measurements reproduce;
    # its 70S score about 64 sigma at the true pose (docs/simulation.md "Calibration")
    "seed-clean": dict(
        structure="@4v5d",
        n_particles=100,
        n_decoys=0,
        n_blobs=60,
        thickness_nm=70.0,
        tomogram_size_xyz=(514, 720, 84),
        voxel_size_angstrom=8.56,
        binning=2,
        tilt_min_deg=-60.0,
        tilt_max_deg=60.0,
        tilt_step_deg=3.0,
        dose_per_tilt=3.0,
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.07,
        defocus_um=3.0,
        defocus_scatter_um=0.15,
        ice_noise_rad=0.03,
    ),
}

# a wide field of view at a finer voxel, where the gradient matters more: seed-clean's sample and
# optics at half its voxel size over a field four times as wide
PRESETS["wide"] = dict(
    PRESETS["seed-clean"],
    n_particles=80,
    n_blobs=80,
    tomogram_size_xyz=(2064, 512, 168),
    voxel_size_angstrom=4.28,
)

# `seed-clean` calibrated to the seed page's "about 20 sigma against a 7.30 sigma cut-off"
# (docs/simulation.md "Calibration"): the same geometry, optics and dose, plus what separates real
# data from the clean preset: other complexes around the ribosomes (26S, 20S, apoferritin; 10 % of
# the slab's voxels), residual per-tilt misalignment (3 A rms shifts, 0.1 deg rms rotations), a
# K3-like counting detector at the page's 1.07 A pixel, and the ice noise scaled to 70 nm as
# `lamella` does (0.03 rad at 40 nm x sqrt(70 / 40)). Median 20 sigma (seed 1), 100 % above the cut-off.
PRESETS["seed"] = dict(
    PRESETS["seed-clean"],
    ice_noise_rad=0.04,
    crowding_volume_fraction=0.1,
    crowder_structures=("@26S-map", "@20S-map", "@6z6u"),
    jitter_angstrom=3.0,
    tilt_rotation_deg=0.1,
    detector="k3",
    detector_pixel_angstrom=1.07,
)

# a FIB-milled lamella at ci's scale: asymmetric tilt range -40..+60 (a lamella's pre-tilt
# moves the usable range off zero), 2 degree step (51 tilts, dose-symmetric from 0: the
# config has no start angle), 180 nm thick. Ice noise and blob count scale with the
# thickness (ci's 0.03 rad at 40 nm x sqrt(180/40); blobs per volume as ci). Seconds on 2 cores.
PRESETS["lamella"] = dict(
    PRESETS["ci"],
    n_particles=30,
    n_decoys=4,
    n_blobs=130,
    thickness_nm=180.0,
    tomogram_size_xyz=(128, 128, 200),
    tilt_min_deg=-40.0,
    tilt_step_deg=2.0,
    tilt_order="dose-symmetric",
    dose_per_tilt=2.2,
    ice_noise_rad=0.064,
)

# a long, thin strip with a strong defocus gradient along x: 1400 x 56 x 40 voxels of 5 A (7 um
# of field), 24 phantoms of 100 A, 1.5 um defocus, no shot noise. The hand test's CI-size case
# (tests/test_hand.py, benchmarks/hand_acceptance.py): seconds to simulate, a verdict from 24
# particles, and the gradient across the field is what decides.
PRESETS["strip"] = dict(
    PRESETS["ci"],
    phantom_diameter_angstrom=100.0,
    n_particles=24,
    n_decoys=0,
    n_blobs=0,
    tomogram_size_xyz=(1400, 56, 40),
    voxel_size_angstrom=5.0,
    thickness_nm=14.0,
    defocus_um=1.5,
    tilt_step_deg=3.0,
    shot_noise=False,
)


# a hard picking problem: 20S proteasomes (3J9I model) matched with the PolNet 20S map, among
# 26S proteasomes (look-alikes: a 20S core with caps), apoferritin and 70S ribosomes at 20 %
# volume, in 160 nm of ice, with residual misalignment, a K3-like detector, gold fiducials and a
# carbon edge. 200 x 200 x 200 voxels of 10 A; under a minute on 2 cores (docs/simulation.md).
# Calibrated (dose, ice noise, crowding) so the particles score about 5-10 sigma at their true
# pose (median 8) against a full-search cut-off of 7 sigma: some fall inside the background's tail.
PRESETS["hard"] = dict(
    structure="@3j9i",
    template_structure="@20S-map",
    n_particles=40,
    n_decoys=0,
    n_blobs=100,
    thickness_nm=160.0,
    tomogram_size_xyz=(200, 200, 200),
    voxel_size_angstrom=10.0,
    binning=2,
    tilt_min_deg=-60.0,
    tilt_max_deg=60.0,
    tilt_step_deg=3.0,
    dose_per_tilt=1.5,
    defocus_um=3.0,
    defocus_scatter_um=0.15,
    ice_noise_rad=0.2,
    jitter_angstrom=3.0,
    tilt_rotation_deg=0.3,
    detector="k3",
    detector_pixel_angstrom=5.0,
    crowding_volume_fraction=0.2,
    crowder_structures=("@26S-map", "@6z6u", "@70S-map"),
    n_gold=6,
    carbon_edge_x_fraction=0.8,
)


def preset_config(preset: str = "ci", **overrides) -> SimulationConfig:
    """A validated :class:`SimulationConfig` for ``preset`` with keyword overrides.

    Unknown presets or parameter names raise :class:`InputError`. ``structure="@4v5d"``
    resolves to the shared 70S model, falling back to the phantom with a recorded warning.
    """
    if preset not in PRESETS and preset != "custom":
        raise InputError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)} or custom", field="preset")
    params = dict(PRESETS.get(preset, {}))
    names = {f.name for f in fields(SimulationConfig)}
    for k, v in overrides.items():
        if k not in names or k in ("preset", "warnings"):
            raise InputError(f"unknown simulation parameter {k!r}", field=k)
        if v is not None or k in (
            "min_distance_angstrom",
            "template_box_size",
            "astigmatism_angle_deg",
            "template_structure",
            "template_low_pass_angstrom",
            "detector_pixel_angstrom",
            "carbon_edge_x_fraction",
        ):
            params[k] = v
    warns: list[str] = []
    if params.get("structure") == "@4v5d":
        params["structure"], warns = _ribosome_structure()
        if warns and "phantom_diameter_angstrom" not in overrides:
            params["phantom_diameter_angstrom"] = 250.0
    if params.get("decoy_structure") == "@4v5d":
        params["decoy_structure"], w2 = _ribosome_structure()
        warns += w2
    warns += _resolve_shared(params, overrides)
    cfg = SimulationConfig(preset=preset, **params)
    cfg.warnings = warns
    return cfg.validate()


def replace(cfg: SimulationConfig, **changes) -> SimulationConfig:
    return dataclasses.replace(cfg, **changes).validate()
