"""napari layers for a tomogram, its picks and its score map, built without napari.

:func:`view_layers` returns napari *layer data tuples* ``(data, kwargs, layer_type)``, the form
napari readers return and ``viewer.add_<layer_type>(data, **kwargs)`` takes, so everything here
runs (and is tested) headless; ``tomomatch view`` (:mod:`tomomatch.cli.view`) imports napari
and adds them to a viewer.

Layers, all in voxel units of the tomogram with ``scale`` = the voxel size (Angstrom), so
napari's world coordinates are Angstrom from the tomogram's corner:

``image``
    The tomogram ``[z, y, x]``, grey, contrast limits at the 0.5 / 99.5 percentiles.
``points`` (with ``--particles``)
    One point per particle at its voxel index ``(z, y, x)`` (read by
    :func:`tomomatch.particles.read_particles`, which owns every coordinate convention),
    coloured by score (``viridis``, lowest score -> 0, highest -> 1; the score used is
    ``rlnLCCmax``, else ``rlnAutopickFigureOfMerit``, else one colour). ``features`` carry
    ``score``, ``score_sigma``, the RELION angles ``rot, tilt, psi`` and ``x, y, z``.
``vectors`` (with ``--particles``)
    One arrow per particle from its position along the template's z axis turned by its pose
    (:func:`tomomatch.particles.particle_matrices`), ``vector_length`` voxels long, same colours
    and features.
``image`` (with ``--scores``)
    The score map, ``inferno``, additive blending over the tomogram.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .mrcio import read_volume
from .particles import JobGeometry, particle_matrices, read_particles

__all__ = ["LayerData", "view_layers", "score_colours", "SCORE_COLORMAP"]

#: a napari layer data tuple: (data, layer keyword arguments, layer type)
LayerData = tuple[Any, dict[str, Any], str]

SCORE_COLORMAP = "viridis"


def score_colours(values, colormap: str = SCORE_COLORMAP) -> tuple[np.ndarray, tuple[float, float] | None]:
    """RGBA ``(N, 4)`` of ``values`` on ``colormap``, the lowest finite value at 0 and the highest at 1.

    Equal values (or a single particle) sit at 0.5; NaN values (and all-NaN input) are grey. Also
    returns the ``(low, high)`` score range, or None without finite values.
    """
    from matplotlib import colormaps

    v = np.asarray(values, dtype=float).reshape(-1)
    out = np.tile([0.5, 0.5, 0.5, 1.0], (v.size, 1))
    ok = np.isfinite(v)
    if not ok.any():
        return out, None
    lo, hi = float(v[ok].min()), float(v[ok].max())
    t = np.full(v.size, 0.5) if hi == lo else (v - lo) / (hi - lo)
    out[ok] = np.asarray(colormaps[colormap](np.clip(t[ok], 0.0, 1.0)), dtype=float)
    return out, (lo, hi)


def _particles(path, shape_zyx, voxel: float, job, tomo_name: str | None, default_name: str) -> pd.DataFrame:
    """The particle table of ``path`` in voxel indices of this tomogram."""
    if job is not None:
        df = read_particles(path, job=job)
    else:
        df = read_particles(path)  # tomomatch's own STAR files carry their geometry in the header
        header_shape = df.attrs.get("tomogram_shape_zyx")
        if header_shape is not None and tuple(header_shape) != tuple(shape_zyx):
            raise InputError(
                f"particles were picked in a tomogram of (x, y, z) = {tuple(header_shape[::-1])} voxels, this one"
                f" has {tuple(shape_zyx[::-1])}; expected the matched tomogram (or give its match --job)",
                path,
            )
        if header_shape is None or df[["x", "y", "z"]].isna().to_numpy().any():
            # no geometry in the file: the tomogram shown is the reference (unbinned) tomogram
            df = read_particles(path, job=JobGeometry(shape_zyx, voxel, tomo_name=tomo_name or default_name))
    names = sorted({str(n) for n in df["tomo_name"]})
    if tomo_name is not None:
        df = df[df["tomo_name"].astype(str) == tomo_name].reset_index(drop=True)
        if df.empty:
            raise InputError(f"no particle of tomogram {tomo_name!r}; the file has {', '.join(names)}", path)
    elif len(names) > 1:
        raise InputError(
            f"particles of {len(names)} tomograms ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''});"
            " expected one: give --tomo-name",
            path,
        )
    return df


def view_layers(
    tomogram,
    particles=None,
    scores=None,
    *,
    job=None,
    tomo_name: str | None = None,
    voxel_size_angstrom: float | None = None,
    point_size: float = 6.0,
    vector_length: float = 8.0,
) -> list[LayerData]:
    """napari layer data tuples for ``tomogram`` (MRC), optional ``particles`` (STAR) and ``scores`` (MRC).

    ``job``: the match job (path, dict or :class:`tomomatch.particles.JobGeometry`) whose
    geometry converts the STAR coordinates; default: the geometry tomomatch writes into its
    STAR header, else the tomogram itself taken as the unbinned reference. ``tomo_name`` picks
    one tomogram of a multi-tomogram STAR. ``point_size`` and ``vector_length`` are in voxels.
    """
    tomo_path = Path(tomogram)
    vol, voxel = read_volume(tomo_path, voxel_size_angstrom, what="tomogram")
    scale = (voxel, voxel, voxel)
    lo, hi = (float(x) for x in np.percentile(vol, [0.5, 99.5]))
    layers: list[LayerData] = [
        (
            vol,
            {
                "name": tomo_path.stem,
                "scale": scale,
                "units": "angstrom",
                "colormap": "gray",
                "contrast_limits": (lo, hi) if hi > lo else (lo, lo + 1.0),
                "metadata": {"path": str(tomo_path), "voxel_size_angstrom": voxel},
            },
            "image",
        )
    ]
    if scores is not None:
        sc_path = Path(scores)
        smap, s_voxel = read_volume(sc_path, voxel, what="score map", nonconstant=False)
        if smap.shape != vol.shape:
            raise InputError(
                f"score map of (x, y, z) = {smap.shape[::-1]} voxels, tomogram {vol.shape[::-1]}; expected the"
                " score map of this tomogram",
                sc_path,
            )
        top = float(np.max(smap)) if smap.size else 1.0
        layers.append(
            (
                smap,
                {
                    "name": sc_path.stem,
                    "scale": scale,
                    "units": "angstrom",
                    "colormap": "inferno",
                    "blending": "additive",
                    "opacity": 0.7,
                    "contrast_limits": (0.0, top if top > 0 else 1.0),
                    "metadata": {"path": str(sc_path)},
                },
                "image",
            )
        )
    if particles is not None:
        st_path = Path(particles)
        df = _particles(st_path, vol.shape, voxel, job, tomo_name, tomo_path.stem)
        idx_xyz = df[["x", "y", "z"]].to_numpy(float).reshape(-1, 3)
        pos = idx_xyz[:, ::-1].copy()  # napari: (z, y, x)
        outside = ~np.all((pos >= -0.5) & (pos <= np.array(vol.shape) - 0.5), axis=1)
        if outside.any():
            warnings.warn(
                f"{st_path}: {int(outside.sum())} of {len(df)} particles lie outside the tomogram (wrong tomogram,"
                " --job or --tomo-name?)",
                UserWarning,
                stacklevel=2,
            )
        color_by = next((c for c in ("score", "score_sigma") if df[c].notna().any()), None)
        colours, rng = score_colours(df[color_by] if color_by else np.full(len(df), np.nan))
        features = pd.DataFrame(
            {c: df[c].to_numpy(float) for c in ("score", "score_sigma", "rot", "tilt", "psi", "x", "y", "z")}
        )
        meta = {"path": str(st_path), "color_by": color_by, "score_range": rng, "colormap": SCORE_COLORMAP}
        layers.append(
            (
                pos,
                {
                    "name": f"{st_path.stem} picks",
                    "scale": scale,
                    "units": "angstrom",
                    "size": float(point_size),
                    "face_color": colours,
                    "border_width": 0.0,
                    "features": features,
                    "metadata": meta,
                },
                "points",
            )
        )
        # the template's z axis, turned by each pose: R e_z in (x, y, z), reversed to (z, y, x)
        axis_xyz = particle_matrices(df)[:, :, 2] if len(df) else np.zeros((0, 3))
        vec = np.stack([pos, float(vector_length) * axis_xyz[:, ::-1]], axis=1)
        layers.append(
            (
                vec,
                {
                    "name": f"{st_path.stem} orientations",
                    "scale": scale,
                    "units": "angstrom",
                    "edge_color": colours,
                    "edge_width": 1.0,
                    "length": 1.0,
                    "features": features.copy(),
                    "metadata": dict(meta),
                },
                "vectors",
            )
        )
    return layers
