"""Tile plan: partition, overlap, per-tile defocus offsets (both hands), auto tile counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tomomatch.conventions import electron_wavelength_angstrom
from tomomatch.errors import InputError
from tomomatch.tiles import auto_tile_counts, defocus_tolerance_angstrom, plan_tiles, split_axis, tile_defocus_um
from tomomatch.tiltseries import TiltSeries


@pytest.mark.parametrize("n,count,box", [(30, 3, 8), (31, 4, 9), (100, 1, 20), (17, 5, 3)])
def test_unique_regions_partition_and_data_covers_reach(n, count, box):
    parts = split_axis(n, count, box)
    assert len(parts) == count
    covered = np.zeros(n, int)
    for u0, u1, d0, d1 in parts:
        covered[u0:u1] += 1
        assert d0 == max(0, u0 - box // 2)
        assert d1 == min(n, u1 + box - box // 2 - 1)
    assert np.all(covered == 1)


def test_plan_covers_volume_once():
    shape = (20, 33, 47)
    tiles = plan_tiles(shape, 8, (3, 2, 2), 10.0)
    assert len(tiles) == 12
    count = np.zeros(shape, int)
    for t in tiles:
        count[t.unique_slices] += 1
        # the unique region inside the data array is where it belongs
        data = np.arange(np.prod(shape)).reshape(shape)
        assert np.array_equal(data[t.data_slices][t.unique_in_data], data[t.unique_slices])
    assert np.all(count == 1)


def test_bad_tile_counts():
    with pytest.raises(InputError):
        plan_tiles((10, 10, 10), 4, (0, 1, 1), 1.0)
    with pytest.raises(InputError):
        plan_tiles((10, 10, 10), 4, (11, 1, 1), 1.0)


TILTS = np.array([-60.0, 0.0, 30.0])


@pytest.mark.parametrize("hand", [1, -1])
def test_x_tile_offsets_hand_computed(hand):
    # nx = 30 in 3 tiles: unique [0,10) [10,20) [20,30) -> centre indices 5, 15, 25;
    # tomogram centre 15 -> x = -100, 0, +100 A (voxel 10 A); z centre index 5 of 10 -> z = 0.
    tiles = plan_tiles((10, 20, 30), 4, (3, 1, 1), 10.0, TILTS, hand)
    xs = [t.centre_angstrom_xyz[0] for t in tiles]
    assert xs == [-100.0, 0.0, 100.0]
    assert all(t.centre_angstrom_xyz[2] == 0.0 for t in tiles)
    # offset = h * depth = h * (-x sin t + z cos t) (RELION getCtf): x = +100 A, z = 0,
    # t = -60, 0, 30 -> +86.6025, 0, -50 A
    s60 = math.sqrt(3) / 2
    expect_right = hand * np.array([100 * s60, 0.0, -50.0]) / 1e4
    np.testing.assert_allclose(tiles[2].defocus_offsets_um, expect_right, atol=1e-12)
    np.testing.assert_allclose(tiles[0].defocus_offsets_um, -expect_right, atol=1e-12)
    np.testing.assert_allclose(tiles[1].defocus_offsets_um, 0.0, atol=1e-12)
    # a point at +x is less underfocused at +30 deg for h = +1, more for h = -1 (IMOD's
    # ctfphaseflip: "the right side ... more underfocused" at positive tilts is h = -1)
    assert np.sign(tiles[2].defocus_offsets_um[2]) == -hand


@pytest.mark.parametrize("hand", [1, -1])
def test_z_tile_offsets_hand_computed(hand):
    # nz = 10 in 2 tiles: unique [0,5) [5,10) -> centres 2 and 7; tomogram centre 5 -> z = -30, +20 A
    tiles = plan_tiles((10, 20, 30), 4, (1, 1, 2), 10.0, TILTS, hand)
    assert [t.centre_angstrom_xyz[2] for t in tiles] == [-30.0, 20.0]
    # full mode: h * z cos(theta) -> for z = +20: h * (10, 20, 17.3205) A
    np.testing.assert_allclose(
        tiles[1].defocus_offsets_um, hand * np.array([10.0, 20.0, 20 * math.sqrt(3) / 2]) / 1e4, atol=1e-12
    )
    # pytom mode: z cos(h theta) + x sin(h theta); x = 0 here, so the z term keeps its sign for both hands
    tp = plan_tiles((10, 20, 30), 4, (1, 1, 2), 10.0, TILTS, hand, "pytom")
    np.testing.assert_allclose(
        tp[1].defocus_offsets_um, np.array([10.0, 20.0, 20 * math.sqrt(3) / 2]) / 1e4, atol=1e-12
    )


def test_hand_zero_and_unsplit_give_zero_offsets():
    for t in plan_tiles((10, 20, 30), 4, (3, 1, 2), 10.0, TILTS, 0):
        assert np.all(np.asarray(t.defocus_offsets_um) == 0)
    (t,) = plan_tiles((11, 20, 31), 4, (1, 1, 1), 10.0, TILTS, 1)
    assert t.centre_angstrom_xyz == (0.0, 0.0, 0.0)
    assert np.all(np.asarray(t.defocus_offsets_um) == 0)


def test_tile_defocus_every_tilt_its_own_value():
    ts = TiltSeries(tilt_angles_deg=TILTS, defocus_u_um=[3.0, 3.0, 3.0], defocus_v_um=[3.2, 3.2, 3.2])
    tiles = plan_tiles((10, 20, 30), 4, (3, 1, 1), 10.0, ts.tilt_angles_deg, 1)
    du, dv = tile_defocus_um(ts, tiles[2], 1)
    s60 = math.sqrt(3) / 2
    # x = +100 A, z = 0, h = +1: depth -x sin t at t = -60, 0, 30
    np.testing.assert_allclose(du, 3.0 + np.array([100 * s60, 0, -50]) / 1e4, atol=1e-12)
    np.testing.assert_allclose(dv, 3.2 + np.array([100 * s60, 0, -50]) / 1e4, atol=1e-12)
    # the tilt series is not modified (pytom mutates/aliases its CTF objects)
    np.testing.assert_array_equal(ts.defocus_u_um, [3.0, 3.0, 3.0])
    assert tile_defocus_um(TiltSeries(tilt_angles_deg=TILTS), tiles[0], 1) == (None, None)


def test_defocus_tolerance_value():
    lam = electron_wavelength_angstrom(300)
    assert defocus_tolerance_angstrom(20.0, 300) == pytest.approx(400 / (4 * lam))
    assert defocus_tolerance_angstrom(20.0, 300) / 1e4 == pytest.approx(0.508, abs=0.002)  # field survey table


def test_auto_tile_counts():
    tilts = np.arange(-60, 61, 3.0)
    # 1000 x-voxels of 5 A = 0.5 um; d = 12 A -> tolerance d^2/(4 lambda) = 1829 A. Residual of a tile
    # of widths wx, wz: wx/2 sin60 + wz/2 cos0, wz = 20 voxels = 100 A -> 50 A from the cos term.
    counts = auto_tile_counts((20, 100, 1000), 5.0, 10, tilts, 12.0, 300.0, hand=1)
    tol = defocus_tolerance_angstrom(12.0)
    assert tol == pytest.approx(1829, abs=2)
    cx = counts[0]
    assert counts == (2, 1, 1)
    w = math.ceil(1000 / cx) * 5.0
    assert w / 2 * math.sin(math.radians(60)) + 50 <= tol
    w_prev = math.ceil(1000 / (cx - 1)) * 5.0
    assert w_prev / 2 * math.sin(math.radians(60)) + 50 > tol  # fewest tiles
    assert auto_tile_counts((20, 100, 1000), 5.0, 10, tilts, 12.0, 300.0, hand=0) == (1, 1, 1)
    # a coarse search needs no split at all
    assert auto_tile_counts((20, 100, 1000), 5.0, 10, tilts, 40.0, 300.0, hand=1) == (1, 1, 1)
    # a thick specimen needs z tiles too: 800 z-voxels = 4000 A -> 2000 A > tol from the cos term
    cz = auto_tile_counts((800, 100, 1000), 5.0, 10, tilts, 12.0, 300.0, hand=1)
    assert cz[2] >= 2
