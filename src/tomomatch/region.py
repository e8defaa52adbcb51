"""The search region of a match job: ``--tomogram-mask`` and ``--search-x/-y/-z``.

The region is the set of voxels (indices of the full tomogram) whose scores are wanted:

* ``--tomogram-mask MRC``: voxels where the mask (the tomogram's shape and voxel size) is ``> 0``;
* ``--search-x/-y/-z START END``: voxel indices ``START .. END-1`` along that axis, END
  exclusive (a Python slice ``[START:END]``, as pytom-match-pick's ``--search-x``, whose job
  takes ``END <= size`` and searches ``END - START`` voxels). pytom's ``--search-x 10 490`` is
  tomomatch's ``--search-x 10 490``.

Mask and ranges combine with AND. :func:`load_search_region` checks them against the tomogram
(one :class:`~tomomatch.errors.InputError` line naming the option) and returns the boolean
region and the record the job file keeps under ``"search_region"``; :func:`job_search_region`
rebuilds the region from that record for ``extract`` (the mask file must still have the
recorded SHA-256).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .mrcio import check_voxel_size_agrees, read_volume

__all__ = ["load_search_region", "job_search_region", "file_sha256"]

_AXES = {"x": 2, "y": 1, "z": 0}


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _ranges_box(ranges: dict[str, Any], shape_zyx) -> tuple[slice, slice, slice]:
    sl = [slice(0, int(n)) for n in shape_zyx]
    for axis, r in ranges.items():
        if r is not None:
            sl[_AXES[axis]] = slice(int(r[0]), int(r[1]))
    return sl[0], sl[1], sl[2]


def _read_mask(path: Path, shape_zyx, voxel: float, field: str) -> np.ndarray:
    try:
        m, _ = read_volume(path, voxel, what="tomogram mask", nonconstant=False)
    except InputError as exc:
        raise InputError(exc.detail, exc.path or path, field) from None
    check_voxel_size_agrees(path, voxel, "", "expected a mask of the tomogram's voxels", field)
    if m.shape != tuple(int(s) for s in shape_zyx):
        raise InputError(
            f"shape [z, y, x] {m.shape} differs from the tomogram's {tuple(int(s) for s in shape_zyx)};"
            " expected a mask of the tomogram's shape",
            path,
            field,
        )
    return m > 0


def load_search_region(options, shape_zyx, voxel_size_angstrom: float) -> tuple[np.ndarray | None, dict | None]:
    """The search region of ``options`` for a tomogram of ``shape_zyx``, or ``(None, None)``.

    Returns the boolean ``[z, y, x]`` region and its record: ``tomogram_mask`` (absolute path
    or None), ``tomogram_mask_sha256``, ``search_x/y/z`` (``[START, END]``, END exclusive, or
    None), ``end_exclusive`` (True), ``n_voxels`` (voxels in the region), ``n_voxels_tomogram``,
    ``bounding_box_start_zyx`` / ``bounding_box_stop_zyx`` (``[start, stop)``).

    Raises :class:`InputError` naming the option for a range beyond the tomogram, a mask of
    another shape or voxel size, an unreadable mask, or an empty region.
    """
    if not options.has_search_region:
        return None, None
    shape = tuple(int(s) for s in shape_zyx)
    ranges: dict[str, Any] = {}
    for axis in "xyz":
        r = getattr(options, f"search_{axis}")
        n = shape[_AXES[axis]]
        if r is not None and r[1] > n:
            raise InputError(
                f"END {r[1]} is beyond the tomogram's {n} voxels along {axis}; expected 0 <= START < END <= {n}"
                " (END exclusive)",
                None,
                f"--search-{axis}",
            )
        ranges[axis] = None if r is None else [int(r[0]), int(r[1])]
    region = np.zeros(shape, bool)
    region[_ranges_box(ranges, shape)] = True
    mask_path, sha = None, None
    if options.tomogram_mask is not None:
        mask_path = Path(options.tomogram_mask).absolute()
        m = _read_mask(mask_path, shape, float(voxel_size_angstrom), "--tomogram-mask")
        if not m.any():
            raise InputError("no voxel > 0; expected a mask marking the voxels to search", mask_path, "--tomogram-mask")
        region &= m
        sha = file_sha256(mask_path)
    n_vox = int(np.count_nonzero(region))
    if n_vox == 0:
        given = " and ".join(
            ([f"--tomogram-mask {mask_path}"] if mask_path else [])
            + [f"--search-{a} {r[0]} {r[1]}" for a, r in ranges.items() if r is not None]
        )
        raise InputError(
            f"{given} leave no voxel to search; expected ranges that overlap the mask",
            None,
            "--tomogram-mask" if mask_path else "--search-x/-y/-z",
        )
    idx = [np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    record = {
        "tomogram_mask": None if mask_path is None else str(mask_path),
        "tomogram_mask_sha256": sha,
        "search_x": ranges["x"],
        "search_y": ranges["y"],
        "search_z": ranges["z"],
        "end_exclusive": True,
        "n_voxels": n_vox,
        "n_voxels_tomogram": int(np.prod(shape)),
        "bounding_box_start_zyx": [int(i[0]) for i in idx],
        "bounding_box_stop_zyx": [int(i[-1]) + 1 for i in idx],
    }
    return region, record


def job_search_region(job: dict[str, Any], shape_zyx=None) -> np.ndarray | None:
    """The boolean search region recorded in a match job (None when it searched everything).

    The mask file named in ``search_region.tomogram_mask`` (resolved against the job file's
    folder) must still hold the recorded SHA-256, and the rebuilt region must count the
    recorded ``n_voxels``; else :class:`InputError` (``extract --ignore-tomogram-mask``
    extracts without it).
    """
    rec = job.get("search_region")
    if not rec:
        return None
    jp = job.get("_job_path")
    if shape_zyx is None:
        shape_zyx = job.get("tomogram_shape_zyx")
    if shape_zyx is None:
        raise InputError("a search region but no tomogram_shape_zyx", jp, "search_region")
    shape = tuple(int(s) for s in shape_zyx)
    hint = "; restore it or give --ignore-tomogram-mask"
    try:
        region = np.zeros(shape, bool)
        region[_ranges_box({a: rec.get(f"search_{a}") for a in "xyz"}, shape)] = True
        mpath = rec.get("tomogram_mask")
        if mpath:
            p = Path(mpath)
            if not p.is_file():
                raise InputError(f"the job's tomogram mask is missing{hint}", p, "search_region.tomogram_mask")
            if rec.get("tomogram_mask_sha256") and file_sha256(p) != rec["tomogram_mask_sha256"]:
                raise InputError(
                    f"the job's tomogram mask changed since match (SHA-256 differs){hint}",
                    p,
                    "search_region.tomogram_mask",
                )
            region &= _read_mask(p, shape, float(job["voxel_size_angstrom"]), "search_region.tomogram_mask")
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"malformed search region ({exc})", jp, "search_region") from None
    want = rec.get("n_voxels")
    if want is not None and int(want) != int(np.count_nonzero(region)):
        raise InputError(
            f"the rebuilt search region has {int(np.count_nonzero(region))} voxels, the job recorded {want}{hint}",
            jp,
            "search_region.n_voxels",
        )
    return region
