"""Particle tables <-> STAR files: RELION 5, RELION 4 and Warp; RELION 5 import lists.

The particle table is the :class:`pandas.DataFrame` of
:func:`tomomatch.extract.extract_candidates`: ``x, y, z`` are (sub-voxel) indices of the
matched tomogram, ``rot, tilt, psi`` RELION Euler angles in degrees, ``score`` the LCC maximum,
``score_sigma`` the score in units of the search standard deviation. Geometry comes from the
match job (:func:`tomomatch.extract.read_job`): voxel size, tomogram shape and, when the job
knows them, the unbinned tomogram size and tilt-series pixel size of RELION 5.

Formats
-------
``relion5``
    One block ``data_particles`` (RELION's coordinate import reads the first block of each
    file, so no optics block precedes it) with ``rlnTomoName``,
    ``rlnCenteredCoordinateX/Y/ZAngst`` (Angstrom from the centre of the unbinned tomogram,
    :func:`tomomatch.conventions.relion5_centered_angstrom`; without RELION metadata in the
    job the tomogram itself is taken as unbinned, i.e.
    :func:`tomomatch.conventions.index_to_centered_angstrom`), ``rlnAngleRot/Tilt/Psi``,
    ``rlnTomoTiltSeriesPixelSize`` as a column, ``rlnTomoVisibleFrames`` (``[1,1,0,...]``,
    0 for excluded tilts) when the job knows the tilts, and the score columns.
``relion4``
    One block ``data_particles``, what ``relion_tomo_import_particles --i`` reads (the first
    block of the file; the importer makes the optics groups from the tomogram set): ``rlnTomoName``,
    ``rlnCoordinateX/Y/Z`` in pixels from the corner (voxel 0 = 0): unbinned tilt-series pixels
    (index x voxel / pixel) when the job knows the tilt-series pixel size, tomogram voxels
    otherwise (the header comment names the pixel size), angles, scores.
``warp``
    One unnamed block ``data_`` as WarpTools' ``ts_template_match`` writes it:
    ``rlnCoordinateX/Y/Z`` normalised to [0, 1] as *position / volume size*:
    ``index * voxel / (N_unbinned * pixel)`` with RELION metadata, ``index / n`` without
    (Warp's ``MatchFull`` divides the position by ``DimensionsPhysical``; note that its
    ``ts_export_particles --normalized_coords`` multiplies by ``N - 1``, a difference of at
    most one pixel at the far edge), ``rlnAngleRot/Tilt/Psi``, ``rlnMicrographName`` =
    ``<tomo>.tomostar`` and ``rlnAutopickFigureOfMerit``.

Score columns (all formats)
    ``rlnLCCmax``: the LCC maximum (pytom-match-pick's name); ``rlnAutopickFigureOfMerit``:
    score / sigma (RELION's autopicking figure-of-merit label; Warp puts its normalised
    score there too); RELION formats also carry ``rlnCutOff`` (the score cut-off used) and
    ``rlnSearchStd`` (sigma), as pytom-match-pick does.
"""

from __future__ import annotations

import json
import re
import warnings
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import starfile

from .conventions import relion5_centered_angstrom, relion5_centered_to_index, relion_to_matrix
from .errors import InputError
from .mrcio import atomic_path

__all__ = [
    "FORMATS",
    "JobGeometry",
    "job_geometry",
    "particle_table_to_blocks",
    "write_particles",
    "read_particles",
    "particle_matrices",
    "merge_stars",
]

FORMATS = ("relion5", "relion4", "warp")

ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
CENTERED_COLUMNS = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
PIXEL_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
SCORE_COLUMN = "rlnLCCmax"
SIGMA_COLUMN = "rlnAutopickFigureOfMerit"


class JobGeometry:
    """What the STAR writers and readers need to know about the matched tomogram.

    Attributes
    ----------
    shape_zyx
        Tomogram (score map) shape ``[z, y, x]``.
    voxel_size_angstrom
        Tomogram voxel size.
    unbinned_size_xyz, tilt_series_pixel_angstrom
        RELION 5 unbinned tomogram size (pixels) and tilt-series pixel size, or ``None``.
        When absent the tomogram itself counts as unbinned.
    tomo_name
        ``rlnTomoName`` (Warp: ``<tomo_name>.tomostar``).
    visible_frames
        Per-tilt 1/0 (0 = excluded tilt), or ``None`` if the job has no tilt series.
    """

    def __init__(
        self,
        shape_zyx,
        voxel_size_angstrom: float,
        unbinned_size_xyz=None,
        tilt_series_pixel_angstrom: float | None = None,
        tomo_name: str = "tomo",
        visible_frames: list[int] | None = None,
        voltage_kv=None,
        cs_mm=None,
        amplitude_contrast=None,
    ):
        self.shape_zyx = tuple(int(s) for s in shape_zyx)
        self.voxel_size_angstrom = float(voxel_size_angstrom)
        self.has_relion = unbinned_size_xyz is not None and tilt_series_pixel_angstrom is not None
        if self.has_relion:
            assert tilt_series_pixel_angstrom is not None  # has_relion
            self.unbinned_size_xyz = tuple(int(round(float(v))) for v in unbinned_size_xyz)
            self.tilt_series_pixel_angstrom = float(tilt_series_pixel_angstrom)
        else:  # the tomogram is its own unbinned reference
            self.unbinned_size_xyz = self.shape_zyx[::-1]
            self.tilt_series_pixel_angstrom = self.voxel_size_angstrom
        self.tomo_name = str(tomo_name)
        #: whether ``tomo_name`` came from tilt metadata (not from a file name)
        self.name_from_metadata = False
        self.visible_frames = None if visible_frames is None else [int(v) for v in visible_frames]
        self.voltage_kv, self.cs_mm, self.amplitude_contrast = voltage_kv, cs_mm, amplitude_contrast

    # index <-> physical -------------------------------------------------------------
    def centered_angstrom(self, index_xyz) -> np.ndarray:
        """Voxel indices ``(N, 3)`` (x, y, z) -> RELION 5 centred Angstrom."""
        return relion5_centered_angstrom(
            index_xyz, self.voxel_size_angstrom, self.unbinned_size_xyz, self.tilt_series_pixel_angstrom
        )

    def index_from_centered(self, centered_xyz) -> np.ndarray:
        return relion5_centered_to_index(
            centered_xyz, self.voxel_size_angstrom, self.unbinned_size_xyz, self.tilt_series_pixel_angstrom
        )

    @property
    def relion4_pixel_angstrom(self) -> float:
        """Pixel size of RELION 4 coordinates (the tilt-series pixel, or the voxel)."""
        return self.tilt_series_pixel_angstrom

    def warp_extent_angstrom(self) -> np.ndarray:
        """Physical extent (x, y, z) that Warp's normalised coordinates divide by."""
        return np.asarray(self.unbinned_size_xyz, float) * self.tilt_series_pixel_angstrom


def _tomo_name(job: dict[str, Any]) -> str:
    rel = job.get("relion") or {}
    if rel.get("tomo_name"):
        return str(rel["tomo_name"])
    if job.get("tilt_series_name"):
        return str(job["tilt_series_name"])
    if job.get("name"):
        return str(job["name"])
    if job.get("tomogram"):
        return Path(str(job["tomogram"])).stem
    return "tomo"


_WARP_PIXEL_SUFFIX = re.compile(r"_\d+(?:\.\d+)?Apx$")


def warp_root_name(name: str) -> tuple[str, bool]:
    """Warp's tilt-series ``RootName`` for a tomogram or tilt-series name, and whether it is sure.

    WarpTools reconstructs ``<RootName>_<pixel>Apx.mrc`` (e.g. ``TS_01_10.00Apx.mrc``) and
    ``ts_export_particles`` matches particles by ``rlnMicrographName`` = ``<RootName>.tomostar``,
    so the ``_<pixel>Apx`` suffix is stripped. A name from tilt metadata (a Warp XML, a
    ``--tomo-name``, RELION's ``rlnTomoName``) is sure; one taken from a file name is not.
    """
    stripped = _WARP_PIXEL_SUFFIX.sub("", str(name))
    return stripped, stripped != str(name)


def job_geometry(job) -> JobGeometry:
    """:class:`JobGeometry` from a job file path or the dict of :func:`tomomatch.extract.read_job`.

    The shape is the job's ``tomogram_shape_zyx`` (or the score map's, read from its header).
    """
    if isinstance(job, JobGeometry):
        return job
    from .jobfile import as_job as _as_job

    job = _as_job(job)
    jp = job.get("_job_path")
    shape = job.get("tomogram_shape_zyx")
    if shape is None:
        import mrcfile

        try:
            with mrcfile.open(job["scores"], header_only=True, permissive=True) as m:
                h = m.header
                shape = (int(h.nz), int(h.ny), int(h.nx))
        except Exception as exc:  # noqa: BLE001 - any unreadable header is bad input
            raise InputError(f"cannot read the score map header ({exc})", job.get("scores")) from None
    rel = job.get("relion") or {}
    ub, tsp = rel.get("unbinned_size_xyz"), rel.get("tilt_series_pixel_angstrom")
    try:
        if ub is not None and (len(ub) != 3 or any(float(v) <= 0 for v in ub)):
            raise ValueError
        if tsp is not None and not float(tsp) > 0:
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(
            "relion.unbinned_size_xyz must be 3 positive sizes and tilt_series_pixel_angstrom > 0", jp, "relion"
        ) from None
    ts = job.get("tilt_series") or None
    visible = voltage = cs = ac = None
    if isinstance(ts, dict):
        angles = ts.get("tilt_angles_deg")
        if angles is not None:
            excluded = ts.get("excluded") or [False] * len(angles)
            if len(excluded) != len(angles):
                raise InputError(
                    f"{len(excluded)} 'excluded' flags for {len(angles)} tilts", jp, "tilt_series.excluded"
                )
            visible = [0 if bool(e) else 1 for e in excluded]
        voltage, cs, ac = ts.get("voltage_kv"), ts.get("cs_mm"), ts.get("amplitude_contrast")
    geo = JobGeometry(shape, job["voxel_size_angstrom"], ub, tsp, _tomo_name(job), visible, voltage, cs, ac)
    geo.name_from_metadata = bool((job.get("relion") or {}).get("tomo_name") or job.get("tilt_series_name"))
    return geo


# --------------------------------------------------------------------------- writing


def _check_table(df: pd.DataFrame) -> None:
    missing = [c for c in ("x", "y", "z", "rot", "tilt", "psi") if c not in df.columns]
    if missing:
        raise InputError(f"particle table lacks columns {missing}; expected x, y, z, rot, tilt, psi", field="particles")


def _score_columns(df: pd.DataFrame, relion: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "score" in df.columns:
        out[SCORE_COLUMN] = df["score"].to_numpy(float)
    if "score_sigma" in df.columns:
        out[SIGMA_COLUMN] = df["score_sigma"].to_numpy(float)
    if relion:
        if df.attrs.get("cutoff") is not None:
            out["rlnCutOff"] = float(df.attrs["cutoff"])
        if df.attrs.get("search_std") is not None:
            out["rlnSearchStd"] = float(df.attrs["search_std"])
    return out


def particle_table_to_blocks(df: pd.DataFrame, fmt: str, job) -> dict[str, pd.DataFrame]:
    """STAR data blocks (name -> table) of a particle table in format ``fmt``."""
    fmt = _check_format(fmt)
    _check_table(df)
    geo = job_geometry(job)
    n = len(df)
    idx = df[["x", "y", "z"]].to_numpy(float).reshape(-1, 3)
    angles = {c: df[k].to_numpy(float) for c, k in zip(ANGLE_COLUMNS, ("rot", "tilt", "psi"))}
    if fmt == "relion5":
        cen = geo.centered_angstrom(idx).reshape(-1, 3)
        cols: dict[str, Any] = {"rlnTomoName": [geo.tomo_name] * n}
        cols.update({c: cen[:, i] for i, c in enumerate(CENTERED_COLUMNS)})
        cols.update(angles)
        cols["rlnTomoTiltSeriesPixelSize"] = [geo.tilt_series_pixel_angstrom] * n
        if geo.visible_frames is not None:
            cols["rlnTomoVisibleFrames"] = ["[" + ",".join(str(v) for v in geo.visible_frames) + "]"] * n
        cols.update(_score_columns(df, relion=True))
        return {"particles": pd.DataFrame(cols, index=range(n))}
    if fmt == "relion4":
        # relion_tomo_import_particles reads the first data block of its --i file and needs
        # rlnTomoName and rlnCoordinateX/Y/Z (RELION 4.0 docs, "relion_tomo_import_particles");
        # it builds the optics groups itself from the tomogram set, so only the particles go here
        pix = idx * geo.voxel_size_angstrom / geo.relion4_pixel_angstrom
        cols = {"rlnTomoName": [geo.tomo_name] * n}
        cols.update({c: pix[:, i] for i, c in enumerate(PIXEL_COLUMNS)})
        cols.update(angles)
        cols.update(_score_columns(df, relion=True))
        return {"particles": pd.DataFrame(cols, index=range(n))}
    # warp
    frac = idx * geo.voxel_size_angstrom / geo.warp_extent_angstrom()
    cols = {c: frac[:, i] for i, c in enumerate(PIXEL_COLUMNS)}
    cols.update(angles)
    root, stripped = warp_root_name(geo.tomo_name)
    if not geo.name_from_metadata and not stripped:
        warnings.warn(
            f"Warp rlnMicrographName {root}.tomostar is the tomogram's file name; WarpTools matches"
            " its tilt-series name (give --tomo-name if they differ)",
            UserWarning,
            stacklevel=3,
        )
    cols["rlnMicrographName"] = [f"{root}.tomostar"] * n
    sc = _score_columns(df, relion=False)
    if SIGMA_COLUMN in sc:
        cols[SIGMA_COLUMN] = sc.pop(SIGMA_COLUMN)
    cols.update(sc)
    return {"": pd.DataFrame(cols, index=range(n))}


def _check_format(fmt: str) -> str:
    f = str(fmt).lower().replace("-", "").replace("_", "")
    if f not in FORMATS:
        raise InputError(f"unknown particle format {fmt!r}; expected one of {', '.join(FORMATS)}", field="format")
    return f


GEOMETRY_TAG = "# tomomatch-geometry: "


def _geometry_json(geo: JobGeometry, job_path: str | None) -> str:
    d = {
        "shape_zyx": list(geo.shape_zyx),
        "voxel_size_angstrom": geo.voxel_size_angstrom,
        "tomo_name": geo.tomo_name,
        "job": job_path,
    }
    if geo.has_relion:
        d["unbinned_size_xyz"] = list(geo.unbinned_size_xyz)
        d["tilt_series_pixel_angstrom"] = geo.tilt_series_pixel_angstrom
    return json.dumps(d, separators=(",", ":"))


def _geometry_from_header(path: Path) -> tuple[JobGeometry | None, str | None]:
    """The geometry line :func:`write_particles` puts in the header, if present."""
    try:
        with open(path, "r", errors="replace") as fh:
            for _, line in zip(range(40), fh):
                if line.startswith(GEOMETRY_TAG):
                    d = json.loads(line[len(GEOMETRY_TAG) :])
                    geo = JobGeometry(
                        d["shape_zyx"],
                        d["voxel_size_angstrom"],
                        d.get("unbinned_size_xyz"),
                        d.get("tilt_series_pixel_angstrom"),
                        d.get("tomo_name", "tomo"),
                    )
                    return geo, d.get("job")
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    return None, None


def _header_lines(fmt: str, geo: JobGeometry, df: pd.DataFrame, job_path: str | None = None) -> list[str]:
    lines = [
        f"# tomomatch particles, format {fmt}; tomogram {geo.tomo_name},"
        f" shape (x, y, z) = {tuple(geo.shape_zyx[::-1])}, voxel {geo.voxel_size_angstrom:g} A"
    ]
    if fmt == "relion5":
        lines.append(
            f"# centred coordinates: (index * {geo.voxel_size_angstrom:g}) - (N // 2) *"
            f" {geo.tilt_series_pixel_angstrom:g} A, unbinned N (x, y, z) = {geo.unbinned_size_xyz}"
        )
    elif fmt == "relion4":
        lines.append(f"# coordinates in pixels of {geo.relion4_pixel_angstrom:g} A from the corner (voxel 0 = 0)")
    else:
        lines.append(f"# coordinates normalised: position / {tuple(np.round(geo.warp_extent_angstrom(), 3))} A")
    if df.attrs.get("cutoff") is not None:
        lines.append(
            f"# cut-off {df.attrs['cutoff']:.6g} ({df.attrs.get('cutoff_method', '?')},"
            f" {df.attrs.get('cutoff_sigma', float('nan')):.3f} sigma,"
            f" {df.attrs.get('false_alarms', float('nan')):g} false alarms)"
        )
    lines.append(GEOMETRY_TAG + _geometry_json(geo, job_path))
    return lines


def write_particles(df: pd.DataFrame, path, fmt: str = "relion5", job=None) -> Path:
    """Write a particle table as a STAR file (atomically).

    Parameters
    ----------
    df
        Particle table (:func:`tomomatch.extract.extract_candidates`).
    path
        Output STAR path.
    fmt
        ``"relion5"``, ``"relion4"`` or ``"warp"``.
    job
        Job file path, job dict or :class:`JobGeometry` (default: ``df.attrs["job"]``).
    """
    fmt = _check_format(fmt)
    if job is None:
        job = df.attrs.get("job")
        if job is None:
            raise InputError("write_particles needs the match job (geometry of the tomogram)", field="job")
    geo = job_geometry(job)
    job_path = (
        job.get("_job_path")
        if isinstance(job, dict)
        else (None if isinstance(job, JobGeometry) else str(Path(job).resolve()))
    )
    blocks = particle_table_to_blocks(df, fmt, geo)
    path = Path(path)
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, overwrite=True, float_format="%.6f")
        text = Path(tmp).read_text()
        first, _, rest = text.partition("\n")
        Path(tmp).write_text("\n".join([first] + _header_lines(fmt, geo, df, job_path)) + "\n" + rest)
    return path


# --------------------------------------------------------------------------- reading


def _read_blocks(path) -> dict[str, pd.DataFrame]:
    p = Path(path)
    if not p.is_file():
        raise InputError("STAR file not found", p)
    try:
        blocks = starfile.read(p, always_dict=True)
    except Exception as exc:  # noqa: BLE001 - starfile raises many kinds
        raise InputError(f"not a readable STAR file ({exc.__class__.__name__}: {exc})", p) from None
    blocks = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if not blocks:
        raise InputError("no data table (loop) in STAR file", p)
    return blocks


def detect_format(blocks: dict[str, pd.DataFrame]) -> str:
    """``relion5``, ``relion4`` or ``warp`` from the columns and blocks of a STAR file."""
    for tab in blocks.values():
        if set(CENTERED_COLUMNS) <= set(tab.columns):
            return "relion5"
    for tab in blocks.values():
        if set(PIXEL_COLUMNS) <= set(tab.columns):
            names = tab.get("rlnMicrographName")
            coords = tab[list(PIXEL_COLUMNS)].to_numpy(float)
            if (
                "optics" not in blocks
                and names is not None
                and len(tab)
                and all(str(v).endswith(".tomostar") for v in names)
                and np.all((coords >= 0) & (coords <= 1))
            ):
                return "warp"
            return "relion4"
    raise InputError("no particle coordinates (rlnCenteredCoordinate*Angst or rlnCoordinateX/Y/Z) found")


def _particle_block(blocks: dict[str, pd.DataFrame], fmt: str) -> pd.DataFrame:
    want = CENTERED_COLUMNS if fmt == "relion5" else PIXEL_COLUMNS
    for name in ("particles", "") + tuple(blocks):
        tab = blocks.get(name)
        if tab is not None and set(want) <= set(tab.columns):
            return tab
    raise InputError(f"no table with columns {list(want)}")


def read_particles(path, job=None, fmt: str | None = None) -> pd.DataFrame:
    """Read a particle STAR file (RELION 5, RELION 4 or Warp) into a particle table.

    Parameters
    ----------
    path
        STAR file written by :func:`write_particles` (or by RELION, Warp, pytom-match-pick).
    job
        Match job (path, dict or :class:`JobGeometry`) of the tomogram; needed to convert
        coordinates to voxel indices (``x, y, z``) and, for RELION 4 and Warp, to centred
        Angstrom. Without it those columns are NaN where they cannot be derived.
    fmt
        Force a format; default: detected from the columns.

    Returns
    -------
    pandas.DataFrame
        ``tomo_name``, ``x, y, z`` (voxel indices of the job tomogram), ``x_angstrom,
        y_angstrom, z_angstrom`` (RELION 5 centred Angstrom), ``rot, tilt, psi``, ``score``,
        ``score_sigma`` (NaN where absent). ``attrs["format"]`` holds the format.
    """
    p = Path(path)
    blocks = _read_blocks(p)
    try:
        fmt = detect_format(blocks) if fmt is None else _check_format(fmt)
        tab = _particle_block(blocks, fmt)
    except InputError as exc:
        raise InputError(exc.detail, p, exc.field) from None
    job_path = None
    geo: JobGeometry | None
    if job is not None:
        geo = job_geometry(job)
        job_path = (
            job.get("_job_path") if isinstance(job, dict) else (None if isinstance(job, JobGeometry) else str(job))
        )
    else:  # the geometry tomomatch wrote into the header, if any
        geo, job_path = _geometry_from_header(p)
    n = len(tab)
    nan3 = np.full((n, 3), np.nan)
    if fmt == "relion5":
        cen = tab[list(CENTERED_COLUMNS)].to_numpy(float)
        idx = geo.index_from_centered(cen) if geo is not None else nan3
        names = (
            tab["rlnTomoName"].astype(str).to_numpy()
            if "rlnTomoName" in tab
            else np.array([geo.tomo_name if geo else ""] * n)
        )
    elif fmt == "relion4":
        pix = tab[list(PIXEL_COLUMNS)].to_numpy(float)
        px = None
        optics = blocks.get("optics")
        if optics is not None and "rlnTomoTiltSeriesPixelSize" in optics:
            ps = (
                optics.set_index("rlnOpticsGroup")["rlnTomoTiltSeriesPixelSize"]
                if "rlnOpticsGroup" in optics
                else optics["rlnTomoTiltSeriesPixelSize"]
            )
            if "rlnOpticsGroup" in tab and "rlnOpticsGroup" in optics:
                px = tab["rlnOpticsGroup"].map(ps).to_numpy(float)[:, None]
            else:
                px = float(np.asarray(ps)[0])
        if geo is not None:
            # no optics block (tomomatch's own RELION 4 files): the pixel of the job's geometry
            idx = pix * (px if px is not None else geo.relion4_pixel_angstrom) / geo.voxel_size_angstrom
        else:
            idx = pix if px is None else nan3
        names = (
            tab["rlnTomoName"].astype(str).to_numpy()
            if "rlnTomoName" in tab
            else np.array([geo.tomo_name if geo else ""] * n)
        )
        cen = geo.centered_angstrom(idx) if geo is not None else nan3
    else:
        frac = tab[list(PIXEL_COLUMNS)].to_numpy(float)
        idx = frac * geo.warp_extent_angstrom() / geo.voxel_size_angstrom if geo is not None else nan3
        names = np.array(
            [
                str(v)[: -len(".tomostar")] if str(v).endswith(".tomostar") else str(v)
                for v in tab.get("rlnMicrographName", [""] * n)
            ]
        )
        cen = geo.centered_angstrom(idx) if geo is not None else nan3
    ang = tab[list(ANGLE_COLUMNS)].to_numpy(float) if set(ANGLE_COLUMNS) <= set(tab.columns) else np.zeros((n, 3))
    out = pd.DataFrame(
        {
            "tomo_name": names,
            "x": idx[:, 0],
            "y": idx[:, 1],
            "z": idx[:, 2],
            "x_angstrom": cen[:, 0],
            "y_angstrom": cen[:, 1],
            "z_angstrom": cen[:, 2],
            "rot": ang[:, 0],
            "tilt": ang[:, 1],
            "psi": ang[:, 2],
            "score": tab[SCORE_COLUMN].to_numpy(float) if SCORE_COLUMN in tab else np.full(n, np.nan),
            "score_sigma": tab[SIGMA_COLUMN].to_numpy(float) if SIGMA_COLUMN in tab else np.full(n, np.nan),
        }
    )
    out.attrs["format"] = fmt
    out.attrs["path"] = str(p)
    if geo is not None:
        out.attrs["tomogram_shape_zyx"] = list(geo.shape_zyx)
        out.attrs["voxel_size_angstrom"] = geo.voxel_size_angstrom
    if job_path:
        out.attrs["job"] = job_path
    return out


def particle_matrices(df: pd.DataFrame) -> np.ndarray:
    """Pose matrices ``(N, 3, 3)`` of a particle table's RELION ``rot, tilt, psi``."""
    return relion_to_matrix(df[["rot", "tilt", "psi"]].to_numpy(float).reshape(-1, 3))


# --------------------------------------------------------------------------- merge


def merge_stars(paths: Iterable, output) -> Path:
    """Write a RELION 5 import list (``rlnTomoName``, ``rlnTomoImportParticleFile``).

    Each input must be a RELION 5 particle STAR file with ``rlnTomoName``; one row is written
    per tomogram name and file. Paths are written as given: give them relative to the RELION
    project directory.
    """
    rows = []
    paths = list(paths)
    if not paths:
        raise InputError("no STAR files to merge", field="STAR")
    for p in paths:
        blocks = _read_blocks(p)
        tab = next((t for t in blocks.values() if "rlnTomoName" in t.columns), None)
        if tab is None or not set(CENTERED_COLUMNS) <= set(tab.columns):
            raise InputError(
                "not a RELION 5 particle file (needs rlnTomoName and rlnCenteredCoordinate*Angst);"
                " extract with --format relion5",
                p,
            )
        for name in pd.unique(tab["rlnTomoName"].astype(str)):
            rows.append((name, os.fspath(p)))
    names = [r[0] for r in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    out = pd.DataFrame(rows, columns=["rlnTomoName", "rlnTomoImportParticleFile"])
    output = Path(output)
    with atomic_path(output) as tmp:
        starfile.write({"particles": out}, tmp, overwrite=True)
    if dup:
        import warnings

        warnings.warn(f"tomogram names in more than one file: {', '.join(dup)}", stacklevel=2)
    return output
