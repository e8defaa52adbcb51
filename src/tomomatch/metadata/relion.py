"""RELION 5 tomography metadata: ``tomograms.star`` (``data_global``) and per-tilt-series STAR files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ..conventions import ANGSTROM_PER_MICROMETRE, check_hand, hand_from_relion
from ..errors import InputError
from ..mrcio import atomic_path
from ..tiltseries import TiltSeries
from ._common import require_file

__all__ = ["read_relion5", "write_relion5", "list_relion5_tomograms"]


def _read_star(path: Path, what: str) -> dict:
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=["rlnTomoName"])
    except Exception as exc:  # starfile raises various parser errors
        raise InputError(f"not a readable STAR file ({exc.__class__.__name__}: {exc})", path) from None
    if not blocks:
        raise InputError(f"no data blocks; expected a RELION 5 {what}", path)
    return blocks


def _global_table(path: Path) -> pd.DataFrame:
    blocks = _read_star(path, "tomograms.star")
    df = blocks.get("global")
    if not isinstance(df, pd.DataFrame):
        raise InputError("no data_global loop; expected a RELION 5 tomograms.star", path, "data_global")
    if "rlnTomoName" not in df.columns:
        raise InputError("data_global has no rlnTomoName column", path, "rlnTomoName")
    return df


def list_relion5_tomograms(tomograms_star) -> list[str]:
    """The ``rlnTomoName`` values of a RELION 5 ``tomograms.star``."""
    p = require_file(tomograms_star, "RELION 5 tomograms.star")
    return [str(n) for n in _global_table(p)["rlnTomoName"]]


def _resolve_tilt_series_star(value: str, star: Path) -> Path:
    """Find a ``rlnTomoTiltSeriesStarFile``: as given if absolute, else relative to the star
    file's directory, to the current directory, to each parent of the star file (the RELION
    project directory is usually two or three levels up), and finally
    ``<star dir>/tilt_series/<basename>`` (pytom-match-pick's rule)."""
    v = Path(value)
    if v.is_absolute():
        candidates = [v]
    else:
        star_dir = star.resolve().parent
        candidates = [star_dir / v, Path.cwd() / v]
        candidates += [parent / v for parent in star_dir.parents]
        candidates.append(star_dir / "tilt_series" / v.name)
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(
        f"rlnTomoTiltSeriesStarFile {value!r} not found (looked relative to the star file's "
        "directory, the current directory and the RELION project directory)", star,
        "rlnTomoTiltSeriesStarFile")


def _col(df: pd.DataFrame, name: str, path: Path, required: bool = True):
    if name in df.columns:
        values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise InputError(f"row {bad[0] + 1}: {df[name].iloc[bad[0]]!r} is not a finite number",
                             path, name)
        return values
    if required:
        raise InputError("column missing; expected a RELION 5 tilt-series STAR column", path, name)
    return None


def read_relion5(tomograms_star, tomo_name: str | None = None, *, tilt_series_star=None) -> TiltSeries:
    """Read one tilt series from a RELION 5 ``tomograms.star``.

    Parameters
    ----------
    tomograms_star
        The ``tomograms.star`` with its ``data_global`` loop.
    tomo_name
        ``rlnTomoName`` to read; may be omitted if the file holds exactly one tomogram.
    tilt_series_star
        Explicit path of the per-tilt STAR file, overriding ``rlnTomoTiltSeriesStarFile``.

    Per-tilt fields: tilt angle from ``rlnTomoYTilt`` (the aligned tilt RELION reconstructs
    the tomogram with), falling back to ``rlnTomoNominalStageTiltAngle`` if there is no
    alignment; pytom-match-pick uses the nominal stage angle (both are kept in ``extra``).
    ``rlnMicrographPreExposure`` -> accumulated dose, ``rlnDefocusU/V`` Angstrom -> um,
    ``rlnDefocusAngle`` deg, ``rlnPhaseShift`` deg if present. Global fields: voltage, Cs,
    amplitude contrast, ``rlnTomoHand`` -> ``hand``, ``rlnTomoTiltSeriesPixelSize`` ->
    ``pixel_size_angstrom``. Tilt axis: mean ``rlnTomoZRot`` else
    ``rlnTomoNominalTiltAxisAngle``. ``extra`` keeps ``size_xyz_unbinned``, ``binning``,
    ``tomogram_voxel_angstrom`` (pixel size x binning), ``reconstructed_tomogram``,
    ``tilt_series_star``, ``tomograms_star``, ``nominal_stage_tilt_deg``, ``y_tilt_deg``,
    ``x_tilt_deg``, ``original_pixel_size_angstrom``.
    """
    star = require_file(tomograms_star, "RELION 5 tomograms.star")
    glob = _global_table(star)
    names = [str(n) for n in glob["rlnTomoName"]]
    if tomo_name is None:
        if len(names) != 1:
            raise InputError(f"holds {len(names)} tomograms ({', '.join(names[:6])}"
                             f"{', ...' if len(names) > 6 else ''}); give the tomogram name (--tomo-name)",
                             star, "rlnTomoName")
        tomo_name = names[0]
    tomo_name = str(tomo_name)
    if tomo_name not in names:
        raise InputError(f"no tomogram named {tomo_name!r}; names: {', '.join(names[:10])}", star, "rlnTomoName")
    row = glob.iloc[names.index(tomo_name)]

    def g(name, default=None):
        if name in glob.columns:
            return row[name]
        if default is None:
            raise InputError("column missing in data_global", star, name)
        return default

    if tilt_series_star is not None:
        ts_path = require_file(tilt_series_star, "RELION 5 tilt-series STAR")
    else:
        ts_path = _resolve_tilt_series_star(str(g("rlnTomoTiltSeriesStarFile")), star)
    blocks = _read_star(ts_path, "tilt-series STAR file")
    df = blocks.get(tomo_name)
    if not isinstance(df, pd.DataFrame):
        tables = [b for b in blocks.values() if isinstance(b, pd.DataFrame)]
        if len(tables) != 1:
            raise InputError(f"no data_{tomo_name} loop", ts_path, f"data_{tomo_name}")
        df = tables[0]
    if len(df) == 0:
        raise InputError("no tilts in the tilt-series table", ts_path)

    nominal = _col(df, "rlnTomoNominalStageTiltAngle", ts_path, required=False)
    y_tilt = _col(df, "rlnTomoYTilt", ts_path, required=False)
    if y_tilt is None and nominal is None:
        raise InputError("no tilt angles (rlnTomoYTilt or rlnTomoNominalStageTiltAngle)", ts_path,
                         "rlnTomoNominalStageTiltAngle")
    angles = y_tilt if y_tilt is not None else nominal
    dose = _col(df, "rlnMicrographPreExposure", ts_path, required=False)
    du = _col(df, "rlnDefocusU", ts_path, required=False)
    dv = _col(df, "rlnDefocusV", ts_path, required=False)
    if du is not None:
        du = du / ANGSTROM_PER_MICROMETRE
        dv = du if dv is None else dv / ANGSTROM_PER_MICROMETRE
    astig_angle = _col(df, "rlnDefocusAngle", ts_path, required=False)
    phase = _col(df, "rlnPhaseShift", ts_path, required=False)
    z_rot = _col(df, "rlnTomoZRot", ts_path, required=False)
    axis_nominal = _col(df, "rlnTomoNominalTiltAxisAngle", ts_path, required=False)
    axis = float(np.mean(z_rot)) if z_rot is not None else (
        float(np.mean(axis_nominal)) if axis_nominal is not None else 0.0)

    try:
        hand = hand_from_relion(float(g("rlnTomoHand")))
    except (TypeError, ValueError):
        raise InputError(f"rlnTomoHand {g('rlnTomoHand')!r}; expected +1 or -1", star, "rlnTomoHand") from None
    pixel = float(g("rlnTomoTiltSeriesPixelSize"))
    binning = float(g("rlnTomoTomogramBinning", 1.0))
    extra = {
        "tomograms_star": str(star),
        "tilt_series_star": str(ts_path),
        "binning": binning,
        "tomogram_voxel_angstrom": pixel * binning,
        "nominal_stage_tilt_deg": nominal,
        "y_tilt_deg": y_tilt,
        "x_tilt_deg": _col(df, "rlnTomoXTilt", ts_path, required=False),
        "tilt_angle_source": "rlnTomoYTilt" if y_tilt is not None else "rlnTomoNominalStageTiltAngle",
    }
    if all(c in glob.columns for c in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")):
        extra["size_xyz_unbinned"] = tuple(int(round(float(row[c]))) for c in
                                           ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"))
    if "rlnTomoReconstructedTomogram" in glob.columns:
        extra["reconstructed_tomogram"] = str(row["rlnTomoReconstructedTomogram"])
    if "rlnMicrographOriginalPixelSize" in glob.columns:
        extra["original_pixel_size_angstrom"] = float(row["rlnMicrographOriginalPixelSize"])
    if "rlnMicrographName" in df.columns:
        extra["micrograph_names"] = [str(x) for x in df["rlnMicrographName"]]

    return TiltSeries(
        tilt_angles_deg=angles,
        accumulated_dose=dose,
        defocus_u_um=du,
        defocus_v_um=dv if du is not None else None,
        astigmatism_angle_deg=astig_angle,
        phase_shift_deg=phase,
        voltage_kv=float(g("rlnVoltage")),
        cs_mm=float(g("rlnSphericalAberration")),
        amplitude_contrast=float(g("rlnAmplitudeContrast")),
        pixel_size_angstrom=pixel,
        hand=hand,
        tilt_axis_angle_deg=axis,
        name=tomo_name,
        source=str(ts_path),
        extra=extra,
    )


def _write_star_atomic(blocks: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")


def write_relion5(out_dir, tilt_series: TiltSeries, tomo_name: str, tomogram_size_xyz_unbinned,
                  binning: float, tomogram_path=None, hand: int | None = None) -> Path:
    """Write RELION 5 ``tomograms.star`` and ``tilt_series/<tomo_name>.star`` into ``out_dir``.

    Parameters
    ----------
    out_dir
        Directory; ``tomograms.star`` is created or, if present, the row of ``tomo_name`` is
        replaced (other tomograms are kept).
    tilt_series
        Per-tilt data. Excluded tilts are *not* written (RELION drops excluded tilts from the
        tilt-series table). Tilt angles go to ``rlnTomoNominalStageTiltAngle`` and
        ``rlnTomoYTilt`` (``rlnTomoXTilt`` = 0, shifts 0), the tilt-axis angle to
        ``rlnTomoNominalTiltAxisAngle`` and ``rlnTomoZRot``, ``rlnCtfScalefactor`` = cos(tilt).
        Defocus and ``rlnPhaseShift`` only if the series has defocus.
    tomo_name
        ``rlnTomoName`` and the tilt-series data block name.
    tomogram_size_xyz_unbinned
        ``rlnTomoSizeX/Y/Z`` in tilt-series pixels.
    binning
        ``rlnTomoTomogramBinning`` (tomogram voxel / tilt-series pixel).
    tomogram_path
        ``rlnTomoReconstructedTomogram`` (written as given); omitted if None.
    hand
        ``rlnTomoHand`` (+1 or -1); defaults to ``tilt_series.hand``. Required one way or the other.

    Returns
    -------
    Path of ``tomograms.star``. Both files are written atomically. The tilt-series path is
    stored relative to ``out_dir`` (``tilt_series/<tomo_name>.star``), which
    :func:`read_relion5` resolves against the star file's directory.
    """
    ts = tilt_series
    h = ts.hand if hand is None else hand
    if h is None or check_hand(h) == 0:
        raise ValueError("write_relion5 needs hand +1 or -1 (rlnTomoHand); give hand=")
    if ts.pixel_size_angstrom is None:
        raise ValueError("write_relion5 needs tilt_series.pixel_size_angstrom")
    size = [int(v) for v in tomogram_size_xyz_unbinned]
    if len(size) != 3 or min(size) <= 0:
        raise ValueError(f"tomogram_size_xyz_unbinned must be 3 positive ints, got {tomogram_size_xyz_unbinned}")
    out_dir = Path(out_dir)
    tomo_name = str(tomo_name)
    inc = ts.included()
    n = inc.n_tilts
    names = [f"{tomo_name}_{i:03d}_{a:.2f}.mrc" for i, a in enumerate(inc.tilt_angles_deg)]
    per_tilt = {
        "rlnMicrographMovieName": names,
        "rlnTomoNominalStageTiltAngle": inc.tilt_angles_deg,
        "rlnTomoNominalTiltAxisAngle": np.full(n, ts.tilt_axis_angle_deg),
        "rlnMicrographPreExposure": inc.accumulated_dose,
        "rlnMicrographName": names,
    }
    if inc.has_defocus:
        per_tilt.update({
            "rlnTomoNominalDefocus": -inc.defocus_um,
            "rlnDefocusU": inc.defocus_u_um * ANGSTROM_PER_MICROMETRE,
            "rlnDefocusV": inc.defocus_v_um * ANGSTROM_PER_MICROMETRE,
            "rlnCtfAstigmatism": np.abs(inc.defocus_u_um - inc.defocus_v_um) * ANGSTROM_PER_MICROMETRE,
            "rlnDefocusAngle": inc.astigmatism_angle_deg,
            "rlnPhaseShift": inc.phase_shift_deg,
        })
    per_tilt.update({
        "rlnTomoXTilt": np.zeros(n),
        "rlnTomoYTilt": inc.tilt_angles_deg,
        "rlnTomoZRot": np.full(n, ts.tilt_axis_angle_deg),
        "rlnTomoXShiftAngst": np.zeros(n),
        "rlnTomoYShiftAngst": np.zeros(n),
        "rlnCtfScalefactor": np.cos(np.deg2rad(inc.tilt_angles_deg)),
    })
    ts_rel = Path("tilt_series") / f"{tomo_name}.star"
    _write_star_atomic({tomo_name: pd.DataFrame(per_tilt)}, out_dir / ts_rel)

    row = {
        "rlnTomoName": tomo_name,
        "rlnVoltage": ts.voltage_kv,
        "rlnSphericalAberration": ts.cs_mm,
        "rlnAmplitudeContrast": ts.amplitude_contrast,
        "rlnMicrographOriginalPixelSize": ts.pixel_size_angstrom,
        "rlnTomoHand": float(check_hand(h)),
        "rlnTomoTiltSeriesPixelSize": ts.pixel_size_angstrom,
        "rlnTomoTiltSeriesStarFile": ts_rel.as_posix(),
        "rlnTomoTomogramBinning": float(binning),
        "rlnTomoSizeX": size[0],
        "rlnTomoSizeY": size[1],
        "rlnTomoSizeZ": size[2],
    }
    if tomogram_path is not None:
        row["rlnTomoReconstructedTomogram"] = os.fspath(tomogram_path)
    star = out_dir / "tomograms.star"
    new = pd.DataFrame([row])
    if star.exists():
        old = _global_table(star)
        old = old[[str(x) != tomo_name for x in old["rlnTomoName"]]]
        new = pd.concat([old, new], ignore_index=True)
        if "rlnTomoReconstructedTomogram" in new.columns:
            new["rlnTomoReconstructedTomogram"] = new["rlnTomoReconstructedTomogram"].fillna("None")
    _write_star_atomic({"global": new}, star)
    return star
