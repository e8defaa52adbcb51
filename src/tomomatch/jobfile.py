"""The job record: ``<name>_job.json``, written by ``match`` and read by everything after it.

One module reads and writes it. :func:`read_job` checks the format and the tilt-geometry
version, the keys every reader needs, and resolves the file paths in it (scores, angles,
rotations, tomogram, template, mask) against the job file's folder, so a job dict is the
same wherever it came from (a file, or :func:`tomomatch.job.run_match`'s return value, which
is the file read back). The dict also holds ``"_job_path"`` (absolute path of the file) and
``"job_dir"`` (its folder).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .conventions import GEOMETRY_VERSION
from .errors import InputError
from .mrcio import atomic_path, read_volume

__all__ = [
    "JOB_FORMAT",
    "write_job",
    "read_job",
    "as_job",
    "check_geometry_version",
    "load_job_maps",
    "tilt_series_from_job",
    "job_options",
    "job_hand",
]

JOB_FORMAT = 1

_REQUIRED = ("scores", "angles", "rotations", "voxel_size_angstrom")
_PATH_KEYS = ("scores", "angles", "rotations", "tomogram", "template", "mask")


def write_job(path, job: dict) -> Path:
    """Write a job dict as JSON atomically (keys starting with ``_`` and ``job_dir`` are not
    written: they describe where the file was read from)."""
    path = Path(path)
    doc = {k: v for k, v in job.items() if not k.startswith("_") and k != "job_dir"}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def check_geometry_version(version, source, field: str = "geometry_version") -> None:
    """Refuse results made with another tilt geometry (``conventions.GEOMETRY_VERSION``).

    Version 1 (job files without the field, tomomatch before December 2026) used the mirror
    image of IMOD/RELION 5's tilt geometry: its tile offsets, weights and scores must not be
    read as if they were made with the current one.
    """
    try:
        v = int(version)
    except (TypeError, ValueError):
        raise InputError(f"{version!r}; expected an integer tilt-geometry version", source, field) from None
    if v != GEOMETRY_VERSION:
        old = " (the mirror image of IMOD/RELION 5's geometry, tomomatch before 2026-12)" if v == 1 else ""
        raise InputError(
            f"made with tilt geometry version {v}{old}; this tomomatch uses version "
            f"{GEOMETRY_VERSION}: re-run `tomomatch match` (results are not reinterpreted)",
            source,
            field,
        )


def read_job(path) -> dict[str, Any]:
    """Read and check ``<name>_job.json``.

    Raises
    ------
    InputError
        Missing or unreadable file, invalid JSON, not a tomomatch job file, another tilt-geometry
        version, a required key (``scores``, ``angles``, ``rotations``, ``voxel_size_angstrom``)
        absent, or a non-positive voxel size.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("job file not found", p)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise InputError(f"cannot read job file ({exc.strerror or exc})", p) from None
    except UnicodeDecodeError:
        raise InputError("not a text (JSON) job file", p) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at line {exc.lineno})", p) from None
    if not isinstance(doc, dict) or doc.get("job_format") != JOB_FORMAT:
        raise InputError(f"not a tomomatch job file (job_format != {JOB_FORMAT})", p, "job_format")
    check_geometry_version(doc.get("geometry_version", 1), p)
    for key in _REQUIRED:
        if doc.get(key) in (None, ""):
            raise InputError("required key missing from the job file", p, key)
    try:
        vs = float(doc["voxel_size_angstrom"])
    except (TypeError, ValueError):
        raise InputError(f"expected a number, got {doc['voxel_size_angstrom']!r}", p, "voxel_size_angstrom") from None
    if not (math.isfinite(vs) and vs > 0):
        raise InputError(f"voxel size must be > 0, got {vs}", p, "voxel_size_angstrom")
    doc["voxel_size_angstrom"] = vs
    base = p.resolve().parent
    for key in _PATH_KEYS:
        val = doc.get(key)
        if isinstance(val, str) and val:
            q = Path(val)
            doc[key] = str(q if q.is_absolute() else base / q)
    region = doc.get("search_region")
    if isinstance(region, dict) and isinstance(region.get("tomogram_mask"), str) and region["tomogram_mask"]:
        q = Path(region["tomogram_mask"])
        region["tomogram_mask"] = str(q if q.is_absolute() else base / q)
    doc["_job_path"] = str(p.resolve())
    doc["job_dir"] = str(base)
    return doc


def as_job(job) -> dict[str, Any]:
    """A job dict from a path (:func:`read_job`) or a dict (returned as is, after checking the
    keys a file would need when it was built in memory)."""
    if isinstance(job, dict):
        if "_job_path" not in job:
            for key in _REQUIRED:
                if job.get(key) in (None, ""):
                    raise InputError("required key missing from the job", field=key)
        return job
    return read_job(job)


def load_job_maps(job) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score map, angle-index map (int64, ``-1`` = not searched) and pose matrices of a job.

    Raises :class:`InputError` if the two maps differ in shape, disagree with the job's
    ``tomogram_shape_zyx``, or the angle map holds an index outside the rotation list.
    """
    from .angles import read_rotations

    job = as_job(job)
    jp = job.get("_job_path")
    vs = float(job["voxel_size_angstrom"])
    scores, _ = read_volume(job["scores"], vs, what="score map")
    angles_f, _ = read_volume(job["angles"], vs, what="angle map")
    if scores.shape != angles_f.shape:
        raise InputError(
            f"score map shape {scores.shape} and angle map shape {angles_f.shape} differ;"
            " expected the same [z, y, x] shape",
            jp,
            "angles",
        )
    shape = job.get("tomogram_shape_zyx")
    if shape is not None and tuple(int(s) for s in shape) != scores.shape:
        raise InputError(
            f"score map shape {scores.shape} differs from tomogram_shape_zyx {tuple(shape)}", jp, "tomogram_shape_zyx"
        )
    angles = np.rint(angles_f).astype(np.int64)
    frac = np.abs(angles_f - angles) > 1e-3
    if np.any(frac):
        v = float(angles_f[frac].flat[0])
        raise InputError(
            f"angle map holds {int(frac.sum())} fractional rotation index(es) (first {v:g});"
            " expected the integer indices match writes (is it a score map?)",
            job["angles"],
        )
    angles[angles < 0] = -1
    rotations = read_rotations(job["rotations"])
    if angles.size and angles.max() >= len(rotations):
        raise InputError(
            f"angle map holds rotation index {int(angles.max())} but the rotation list has {len(rotations)} entries",
            jp,
            "rotations",
        )
    return scores, angles, rotations


def tilt_series_from_job(job: dict[str, Any]):
    """The :class:`~tomomatch.tiltseries.TiltSeries` recorded in a match job (or None)."""
    from .tiltseries import TiltSeries

    d = job.get("tilt_series")
    if not d:
        return None
    return TiltSeries.from_json(d, source=job.get("_job_path"))


def job_options(job: dict[str, Any]):
    """The job's resolved :class:`~tomomatch.options.MatchOptions`.

    From ``"options"``; a job file written before that record existed is read from its
    ``weighting``, ``defocus_handedness``, ... fields (the same values).
    """
    from .options import MatchOptions, WeightingOptions

    src = job.get("_job_path")
    if job.get("options") is not None:
        return MatchOptions.from_json(job["options"], src)
    w = job.get("weighting") or {}
    try:
        return MatchOptions(
            name=job.get("name"),
            angular_step_deg=job.get("angular_step_deg"),
            particle_diameter_angstrom=job.get("particle_diameter_angstrom"),
            symmetry=job.get("symmetry") or "C1",
            weighting=WeightingOptions(
                wedge=w.get("wedge"),
                ctf=w.get("ctf"),
                dose=w.get("dose", True),
                cos_weighting=w.get("cos", True),
                low_pass_angstrom=w.get("low_pass_angstrom"),
                high_pass_angstrom=w.get("high_pass_angstrom"),
                whiten=w.get("whitening", False),
            ),
            defocus_handedness=job.get("defocus_handedness"),
            hand_mode=job.get("hand_mode") or "full",
            tiles=job.get("tiles") or (1, 1, 1),
            random_phase=bool(w.get("random_phase", False)),
            method=job.get("method") or "fast",
        )
    except InputError as exc:
        raise InputError(exc.detail, src, exc.field) from None


def job_hand(job: dict[str, Any]) -> int | None:
    """The job's defocus handedness (None if it does not record one)."""
    from .conventions import check_hand

    h = job.get("defocus_handedness")
    if h is None:
        return None
    try:
        return check_hand(h)
    except ValueError as exc:
        raise InputError(str(exc), job.get("_job_path"), "defocus_handedness") from None
