"""``tomomatch view``: napari layers built headless (no napari needed) and the CLI without napari."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import starfile

from tomomatch.errors import InputError
from tomomatch.mrcio import write_volume
from tomomatch.particles import JobGeometry, write_particles
from tomomatch.view import view_layers

from _cli_inputs import run_cli

VOXEL = 5.0
SHAPE = (20, 24, 30)  # z, y, x
# RELION 5 geometry: the tomogram is bin 2 of a 60 x 48 x 40 tilt series at 2.5 A
GEO = JobGeometry(SHAPE, VOXEL, unbinned_size_xyz=(60, 48, 40), tilt_series_pixel_angstrom=2.5, tomo_name="TS_01")
GEO.name_from_metadata = True  # a tilt-series name (no Warp file-name warning)


def _inputs(tmp_path, fmt="relion5", geo=GEO):
    rng = np.random.default_rng(1)
    tomo = rng.normal(0, 1, SHAPE).astype(np.float32)
    write_volume(tmp_path / "tomo.mrc", tomo, VOXEL)
    scores = np.zeros(SHAPE, np.float32)
    scores[3, 5, 10] = 0.8
    write_volume(tmp_path / "tomo_scores.mrc", scores, VOXEL)
    df = pd.DataFrame(
        {
            "x": [10.0, 20.0, 4.0],
            "y": [5.0, 12.0, 20.0],
            "z": [3.0, 10.0, 15.0],
            "rot": [0.0, 0.0, 30.0],
            "tilt": [0.0, 90.0, 45.0],
            "psi": [0.0, 0.0, 60.0],
            "score": [0.8, 0.2, 0.5],
            "score_sigma": [8.0, 2.0, 5.0],
        }
    )
    star = tmp_path / f"picks_{fmt}.star"
    write_particles(df, star, fmt, job=geo)
    return tmp_path / "tomo.mrc", star, tmp_path / "tomo_scores.mrc", df


def test_layers_from_relion5_star(tmp_path):
    tomo, star, scores, df = _inputs(tmp_path)
    # the writer's RELION 5 coordinates, by hand: index x voxel - (N_unbinned // 2) x pixel;
    # particle 0 at index (10, 5, 3): (50 - 30 x 2.5, 25 - 24 x 2.5, 15 - 20 x 2.5) = (-25, -35, -35) A
    tab = starfile.read(star)
    np.testing.assert_allclose(
        tab[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]].to_numpy()[
            0
        ],
        [-25, -35, -35],
    )
    layers = view_layers(tomo, star, scores)
    kinds = [k for _, _, k in layers]
    assert kinds == ["image", "image", "points", "vectors"]
    for _, kw, _ in layers:
        assert kw["scale"] == (VOXEL, VOXEL, VOXEL)
    image, score_map, points, vectors = layers
    assert image[0].shape == SHAPE and image[1]["colormap"] == "gray"
    assert score_map[1]["blending"] == "additive" and score_map[0][3, 5, 10] == pytest.approx(0.8)
    # napari order (z, y, x): particle 0 at index (x, y, z) = (10, 5, 3) -> (3, 5, 10)
    np.testing.assert_allclose(points[0][0], [3, 5, 10], atol=1e-4)
    np.testing.assert_allclose(points[0], df[["z", "y", "x"]].to_numpy(), atol=1e-4)
    feats = points[1]["features"]
    np.testing.assert_allclose(feats["score"], [0.8, 0.2, 0.5], atol=1e-6)
    np.testing.assert_allclose(feats[["rot", "tilt", "psi"]].to_numpy(), df[["rot", "tilt", "psi"]].to_numpy())
    # colour by score on viridis: highest (0.8) -> viridis(1) = #fde725, lowest (0.2) -> viridis(0)
    # = #440154, 0.5 (the middle of the range) -> entry 128 of matplotlib's 256-entry viridis table
    colours = points[1]["face_color"]
    np.testing.assert_allclose(colours[0], [0xFD / 255, 0xE7 / 255, 0x25 / 255, 1], atol=0.005)
    np.testing.assert_allclose(colours[1], [0x44 / 255, 0x01 / 255, 0x54 / 255, 1], atol=0.005)
    np.testing.assert_allclose(colours[2], [0.128729, 0.563265, 0.551229, 1], atol=1e-5)
    assert points[1]["metadata"]["color_by"] == "score"
    assert points[1]["metadata"]["score_range"] == pytest.approx((0.2, 0.8), abs=1e-6)
    # orientations: the template z axis turned by the pose. RELION (0, 0, 0): +z -> (z, y, x) = (8, 0, 0);
    # RELION (0, 90, 0): R = [[0, 0, -1], [0, 1, 0], [1, 0, 0]], R e_z = (-1, 0, 0) -> (0, 0, -8)
    vec = vectors[0]
    assert vec.shape == (3, 2, 3)
    np.testing.assert_allclose(vec[:, 0], points[0])
    np.testing.assert_allclose(vec[0, 1], [8, 0, 0], atol=1e-9)
    np.testing.assert_allclose(vec[1, 1], [0, 0, -8], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(vec[:, 1], axis=1), 8.0)
    np.testing.assert_allclose(vectors[1]["edge_color"], colours)


@pytest.mark.parametrize("fmt", ["relion4", "warp"])
def test_layers_from_relion4_and_warp_stars(tmp_path, fmt):
    tomo, star, _, df = _inputs(tmp_path, fmt)
    if fmt == "relion4":  # pixels of 2.5 A from the corner: particle 0 at x = 10 x 5 / 2.5 = 20
        assert starfile.read(star)["rlnCoordinateX"].iloc[0] == pytest.approx(20.0)
    else:  # position / extent: 10 x 5 / (60 x 2.5) = 1/3
        assert starfile.read(star)["rlnCoordinateX"].iloc[0] == pytest.approx(1 / 3, abs=1e-6)
    points = view_layers(tomo, star)[1]
    np.testing.assert_allclose(points[0], df[["z", "y", "x"]].to_numpy(), atol=1e-4)


def test_star_without_geometry_uses_the_tomogram_and_job_wins(tmp_path):
    # a RELION 5 file from elsewhere (no tomomatch header): the tomogram is the unbinned reference,
    # index = centred / voxel + n // 2: particle 0 at -25 / 5 + 15 = 10 (x), -35 / 5 + 12 = 5, -35 / 5 + 10 = 3
    tomo, star, _, df = _inputs(tmp_path)
    text = star.read_text().splitlines()
    bare = tmp_path / "bare.star"
    bare.write_text("\n".join(ln for ln in text if not ln.startswith("#")) + "\n")
    np.testing.assert_allclose(view_layers(tomo, bare)[1][0][0], [3, 5, 10], atol=1e-4)
    # with a job geometry of another binning, that geometry converts: unbinned 120 x 96 x 80 at
    # 1.25 A: x = (-25 + 60 x 1.25) / 5 = 10 -> the same here; y = (-35 + 48 x 1.25) / 5 = 5
    other = JobGeometry(SHAPE, VOXEL, unbinned_size_xyz=(121, 96, 80), tilt_series_pixel_angstrom=1.25)
    np.testing.assert_allclose(view_layers(tomo, bare, job=other)[1][0][0], [3, 5, 10], atol=1e-4)


def test_bad_inputs_are_one_line(tmp_path):
    tomo, star, scores, _ = _inputs(tmp_path)
    write_volume(tmp_path / "small.mrc", np.random.default_rng(0).normal(size=(4, 4, 4)).astype(np.float32), VOXEL)
    with pytest.raises(InputError, match=r"score map of \(x, y, z\) = \(4, 4, 4\) voxels, tomogram \(30, 24, 20\)"):
        view_layers(tomo, None, tmp_path / "small.mrc")
    with pytest.raises(InputError, match=r"particles were picked in a tomogram of \(x, y, z\) = \(30, 24, 20\)"):
        view_layers(tmp_path / "small.mrc", star)
    # two tomograms in one file: --tomo-name chooses
    tab = starfile.read(star)
    tab2 = tab.copy()
    tab2["rlnTomoName"] = "TS_02"
    two = tmp_path / "two.star"
    starfile.write(pd.concat([tab, tab2], ignore_index=True), two)
    with pytest.raises(InputError, match=r"two.star: particles of 2 tomograms \(TS_01, TS_02\); expected one"):
        view_layers(tomo, two)
    assert len(view_layers(tomo, two, tomo_name="TS_02")[1][0]) == 3
    with pytest.raises(InputError, match=r"no particle of tomogram 'TS_03'"):
        view_layers(tomo, two, tomo_name="TS_03")


def test_particles_outside_the_tomogram_are_warned_about(tmp_path):
    tomo, star, _, _ = _inputs(tmp_path)
    tab = starfile.read(star)  # +50 A = +10 voxels in x: 10, 20, 4 -> 20, 30 (beyond 29.5), 14
    tab["rlnCenteredCoordinateXAngst"] = tab["rlnCenteredCoordinateXAngst"] + 50.0
    moved = tmp_path / "moved.star"
    starfile.write(tab, moved)
    with pytest.warns(UserWarning, match=r"moved.star: 1 of 3 particles lie outside the tomogram"):
        view_layers(tomo, moved, job=GEO)


def test_cli_without_napari_exits_2_with_one_line(tmp_path, monkeypatch):
    tomo, star, scores, _ = _inputs(tmp_path)
    monkeypatch.setitem(sys.modules, "napari", None)  # "import napari" raises ImportError
    rc, out, err = run_cli(["view", tomo, "--particles", star, "--scores", scores])
    assert rc == 2
    assert err == "tomomatch view: error: napari is not installed: pip install 'tomomatch[view]'\n"
    assert out == ""


def test_cli_dry_run_lists_the_layers(tmp_path, monkeypatch):
    tomo, star, scores, _ = _inputs(tmp_path)
    monkeypatch.setitem(sys.modules, "napari", None)  # not needed for --dry-run
    rc, out, err = run_cli(["view", tomo, "-p", star, "-s", scores, "--dry-run"])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "image 'tomo': 20x24x30, scale 5 A"
    assert lines[2] == f"points '{star.stem} picks': 3x3, scale 5 A, coloured by score"
    assert lines[3].startswith(f"vectors '{star.stem} orientations': 3x2x3")
    rc, out, err = run_cli(["view", tomo, "--vector-length", "0", "--dry-run"])
    assert rc == 2 and err.count("\n") == 1 and "--vector-length: 0; expected > 0 voxels" in err
