"""Tile plan: split a tomogram into tiles whose unique regions cover it exactly once.

Each tile has a *unique* region (the voxels whose scores it owns) and a *data* region: the
unique region widened by the template's reach (``n // 2`` voxels before, ``n - n // 2 - 1``
after, for a template box of ``n``), clipped to the tomogram. Because every unique voxel sees
all the data its template placement touches, a split run reproduces an unsplit run inside the
tomogram (border voxels closer than half a box to a tomogram face see that tile's own zero
padding, see :mod:`tomomatch.matching`).

The defocus of each tilt is evaluated at the centre of the tile's unique region: index
``start + (stop - start) // 2`` per axis (the ``n // 2`` rule of
:mod:`tomomatch.conventions`, so an unsplit tomogram's single tile sits at the tomogram
centre and gets zero offset), converted to centred Angstrom, and shifted per tilt by
``conventions.defocus_offset_angstrom`` with the hand and hand mode.

A search region (:func:`crop_tiles`) drops the tiles whose unique region holds no voxel of it
and crops the others to the region's bounding box inside their unique region; the data region
is that cropped box widened by the template reach as above (and to at least one template box).
A cropped tile keeps its grid index, centre and defocus offsets: those of the full tile, so
every voxel it still owns is scored exactly as in the unrestricted search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .conventions import (
    HandMode,
    defocus_at_point_um,
    defocus_offset_angstrom,
    depth_along_beam,
    electron_wavelength_angstrom,
    index_to_centered_angstrom,
)
from .errors import InputError

__all__ = [
    "Tile",
    "split_axis",
    "plan_tiles",
    "crop_tiles",
    "auto_tile_counts",
    "tile_defocus_um",
    "defocus_tolerance_angstrom",
]


@dataclass(frozen=True)
class Tile:
    """One tile. Index ranges are ``[start, stop)`` in ``(z, y, x)`` voxel indices."""

    grid_index_xyz: tuple[int, int, int]
    unique_start_zyx: tuple[int, int, int]
    unique_stop_zyx: tuple[int, int, int]
    data_start_zyx: tuple[int, int, int]
    data_stop_zyx: tuple[int, int, int]
    centre_angstrom_xyz: tuple[float, float, float]
    defocus_offsets_um: tuple[float, ...] = field(default=())

    @property
    def data_slices(self) -> tuple[slice, slice, slice]:
        """Slices of the tomogram holding the tile's data."""
        return _slices3(self.data_start_zyx, self.data_stop_zyx)

    @property
    def unique_slices(self) -> tuple[slice, slice, slice]:
        """Slices of the tomogram the tile owns."""
        return _slices3(self.unique_start_zyx, self.unique_stop_zyx)

    @property
    def unique_in_data(self) -> tuple[slice, slice, slice]:
        """The unique region as slices of the tile's data array."""
        (u0z, u0y, u0x), (u1z, u1y, u1x) = self.unique_start_zyx, self.unique_stop_zyx
        dz, dy, dx = self.data_start_zyx
        return slice(u0z - dz, u1z - dz), slice(u0y - dy, u1y - dy), slice(u0x - dx, u1x - dx)

    @property
    def data_shape_zyx(self) -> tuple[int, int, int]:
        (az, ay, ax), (bz, by, bx) = self.data_start_zyx, self.data_stop_zyx
        return bz - az, by - ay, bx - ax

    def to_json(self) -> dict:
        return {
            "grid_index_xyz": list(self.grid_index_xyz),
            "unique_start_zyx": list(self.unique_start_zyx),
            "unique_stop_zyx": list(self.unique_stop_zyx),
            "data_start_zyx": list(self.data_start_zyx),
            "data_stop_zyx": list(self.data_stop_zyx),
            "centre_angstrom_xyz": [float(v) for v in self.centre_angstrom_xyz],
            "defocus_offsets_um": [float(v) for v in self.defocus_offsets_um],
        }


def _slices3(start_zyx: tuple[int, int, int], stop_zyx: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """``[start, stop)`` per axis as three slices."""
    return slice(start_zyx[0], stop_zyx[0]), slice(start_zyx[1], stop_zyx[1]), slice(start_zyx[2], stop_zyx[2])


def split_axis(n: int, count: int, box: int) -> list[tuple[int, int, int, int]]:
    """Split an axis of ``n`` voxels into ``count`` tiles for a template box of ``box``.

    Returns ``(unique_start, unique_stop, data_start, data_stop)`` per tile. Unique regions are
    as equal as possible (boundaries ``round(i n / count)``) and partition ``[0, n)``; data
    regions add ``box // 2`` before and ``box - box // 2 - 1`` after, clipped to ``[0, n)``.
    """
    if count < 1:
        raise InputError(f"tile count {count} must be >= 1", None, "--tiles")
    if count > n:
        raise InputError(f"{count} tiles along an axis of {n} voxels", None, "--tiles")
    bounds = [int(round(i * n / count)) for i in range(count + 1)]
    lo, hi = box // 2, box - box // 2 - 1
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        out.append((a, b, max(0, a - lo), min(n, b + hi)))
    return out


def plan_tiles(
    shape_zyx: Sequence[int],
    box: int,
    counts_xyz: Sequence[int],
    voxel_size_angstrom: float,
    tilt_angles_deg=None,
    hand: int = 0,
    hand_mode: HandMode = "full",
    x_tilt_deg=0.0,
) -> list[Tile]:
    """Tiles for a tomogram of ``shape_zyx`` split ``counts_xyz`` times along (x, y, z).

    ``defocus_offsets_um`` holds, per tilt, ``offset(x_c, y_c, z_c, tilt, x_tilt, hand, mode)``
    in micrometres (``conventions.defocus_offset_angstrom``) at the centre of the unique region;
    empty when no tilt angles are given.
    """
    nz, ny, nx = (int(s) for s in shape_zyx)
    cx, cy, cz = (int(c) for c in counts_xyz)
    for c, s, ax in ((cx, nx, "x"), (cy, ny, "y"), (cz, nz, "z")):
        if c < 1 or c > s:
            raise InputError(f"{c} tiles along {ax} for {s} voxels; expected 1..{s}", None, "--tiles")
    sx, sy, sz = split_axis(nx, cx, box), split_axis(ny, cy, box), split_axis(nz, cz, box)
    tiles = []
    for iz, (zu0, zu1, zd0, zd1) in enumerate(sz):
        for iy, (yu0, yu1, yd0, yd1) in enumerate(sy):
            for ix, (xu0, xu1, xd0, xd1) in enumerate(sx):
                centre_idx_xyz = [u0 + (u1 - u0) // 2 for u0, u1 in ((xu0, xu1), (yu0, yu1), (zu0, zu1))]
                c_a = index_to_centered_angstrom(centre_idx_xyz, (nz, ny, nx), voxel_size_angstrom)
                offs: tuple[float, ...] = ()
                if tilt_angles_deg is not None:
                    o = (
                        defocus_offset_angstrom(
                            c_a[0],
                            c_a[2],
                            np.asarray(tilt_angles_deg, float),
                            hand,
                            hand_mode,
                            y_angstrom=c_a[1],
                            x_tilt_deg=np.asarray(x_tilt_deg, float),
                        )
                        / 1e4
                    )
                    offs = tuple(float(v) for v in np.atleast_1d(o))
                tiles.append(
                    Tile(
                        (ix, iy, iz),
                        (zu0, yu0, xu0),
                        (zu1, yu1, xu1),
                        (zd0, yd0, xd0),
                        (zd1, yd1, xd1),
                        (float(c_a[0]), float(c_a[1]), float(c_a[2])),
                        offs,
                    )
                )
    return tiles


def crop_tiles(tiles: Sequence[Tile], region, box: int) -> list[Tile]:
    """The tiles restricted to a search region (boolean ``[z, y, x]`` array, the tomogram's shape).

    A tile whose unique region holds no region voxel is dropped. The others keep their grid
    index, ``centre_angstrom_xyz`` and ``defocus_offsets_um`` (the full tile's, so the weights,
    and so the scores, are those of the unrestricted search); their unique region becomes the
    bounding box of the region voxels inside it, and their data region that box widened by the
    template reach (``box // 2`` before, ``box - box // 2 - 1`` after), clipped to the tomogram
    and, where that leaves fewer than ``box`` voxels along an axis, widened inside the
    tomogram to ``box`` (the extra voxels lie beyond every kept voxel's template reach).
    """
    region = np.asarray(region, bool)
    shape = region.shape
    lo, hi = box // 2, box - box // 2 - 1
    out = []
    for t in tiles:
        sub = region[t.unique_slices]
        if not sub.any():
            continue
        u0, u1, d0, d1 = [], [], [], []
        for ax in range(3):
            other = tuple(a for a in range(3) if a != ax)
            hit = np.flatnonzero(sub.any(axis=other))
            a = t.unique_start_zyx[ax] + int(hit[0])
            b = t.unique_start_zyx[ax] + int(hit[-1]) + 1
            n = shape[ax]
            ds, de = max(0, a - lo), min(n, b + hi)
            if de - ds < box:  # at least one template box of data (the tomogram is >= box)
                de = min(n, ds + box)
                ds = max(0, de - box)
            u0.append(a)
            u1.append(b)
            d0.append(ds)
            d1.append(de)
        out.append(
            replace(
                t,
                unique_start_zyx=(u0[0], u0[1], u0[2]),
                unique_stop_zyx=(u1[0], u1[1], u1[2]),
                data_start_zyx=(d0[0], d0[1], d0[2]),
                data_stop_zyx=(d1[0], d1[1], d1[2]),
            )
        )
    return out


def tile_defocus_um(tilt_series, tile: Tile, hand: int, hand_mode: HandMode = "full"):
    """Per-tilt defocus U and V (micrometres) at the centre of ``tile``'s unique region.

    Every tilt gets its own value ``df_i + offset_i`` (no shared objects). Returns
    ``(defocus_u_um, defocus_v_um)`` arrays, or ``(None, None)`` without defocus data.
    """
    if tilt_series is None or not tilt_series.has_defocus:
        return None, None
    x, y, z = tile.centre_angstrom_xyz
    t = tilt_series.tilt_angles_deg
    geom = dict(y_angstrom=y, x_tilt_deg=tilt_series.x_tilt_deg)
    du = defocus_at_point_um(tilt_series.defocus_u_um, x, z, t, hand, hand_mode, **geom)
    dv = defocus_at_point_um(tilt_series.defocus_v_um, x, z, t, hand, hand_mode, **geom)
    return np.array(du, float), np.array(dv, float)


def defocus_tolerance_angstrom(resolution_angstrom: float, voltage_kv: float = 300.0) -> float:
    """Defocus error tolerated at resolution ``d``: ``d^2 / (4 lambda)`` in Angstrom (pi/4 phase)."""
    return float(resolution_angstrom) ** 2 / (4.0 * electron_wavelength_angstrom(voltage_kv))


def _max_residual_angstrom(wx: float, wz: float, tilt_angles_deg) -> float:
    """Largest depth ``|-dx sin t + dz cos t|`` over ``|dx| <= wx/2, |dz| <= wz/2`` and the tilts
    (the corners of the tile, :func:`tomomatch.conventions.depth_along_beam`)."""
    t = np.asarray(tilt_angles_deg, float)[:, None]
    dx = 0.5 * wx * np.array([1.0, 1.0, -1.0, -1.0])
    dz = 0.5 * wz * np.array([1.0, -1.0, 1.0, -1.0])
    return float(np.max(np.abs(depth_along_beam(dx, dz, t))))


def auto_tile_counts(
    shape_zyx: Sequence[int],
    voxel_size_angstrom: float,
    box: int,
    tilt_angles_deg,
    resolution_angstrom: float,
    voltage_kv: float = 300.0,
    hand: int = 1,
) -> tuple[int, int, int]:
    """Fewest tiles ``(nx, 1, nz)`` keeping the residual defocus error below ``d^2/(4 lambda)``.

    The residual inside a tile of widths ``wx, wz`` (Angstrom) is at most
    ``max_t (wx/2 |sin t| + wz/2 |cos t|)`` over the tilts; y needs no split (tilt axis).
    ``hand = 0`` (no gradient) gives one tile. Tiles are kept at least one template box wide.
    """
    nz, ny, nx = (int(s) for s in shape_zyx)
    if hand == 0 or tilt_angles_deg is None:
        return (1, 1, 1)
    tol = defocus_tolerance_angstrom(resolution_angstrom, voltage_kv)
    best = None
    max_x = max(1, nx // max(box, 1))
    max_z = max(1, nz // max(box, 1))
    for cz in range(1, max_z + 1):
        for cx in range(1, max_x + 1):
            wx = math.ceil(nx / cx) * voxel_size_angstrom
            wz = math.ceil(nz / cz) * voxel_size_angstrom
            if _max_residual_angstrom(wx, wz, tilt_angles_deg) <= tol:
                key = (cx * cz, cz)
                if best is None or key < best[0]:
                    best = (key, (cx, 1, cz))
                break
    if best is None:  # cannot reach the tolerance with tiles >= one box: use the finest allowed
        return (max_x, 1, max_z)
    return best[1]
