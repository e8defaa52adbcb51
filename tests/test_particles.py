"""Particle STAR files: hand-computed values in every format, round trips, merge, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import starfile
from scipy.spatial.transform import Rotation

from tomomatch.cli import main
from tomomatch.conventions import relion_to_matrix
from tomomatch.errors import InputError
from tomomatch.extract import extract_candidates
from tomomatch.particles import job_geometry, merge_stars, particle_matrices, read_particles, write_particles

from test_extract import make_job

SHAPE = (40, 50, 60)  # (z, y, x)
VOXEL = 10.0
PEAK_XYZ = (21, 13, 30)
PEAK = 0.8
TILTS = [-30.0, -15.0, 0.0, 15.0, 30.0]


def _rz(a):
    c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _ry(a):
    c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _job(tmp_path, relion: bool):
    """One particle: a symmetric peak at voxel PEAK_XYZ with rotation index 1 = '210 -60 270'."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    px, py, pz = PEAK_XYZ
    m = PEAK * np.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / (2 * 1.5**2))
    ang = np.ones(SHAPE, np.float32)
    extra = {}
    if relion:
        extra["relion"] = {
            "unbinned_size_xyz": [301, 251, 199],
            "tilt_series_pixel_angstrom": 2.0,
            "tomo_name": "TS_07",
        }
        extra["tilt_series"] = {
            "tilt_angles_deg": TILTS,
            "excluded": [False, False, True, False, False],
            "voltage_kv": 300.0,
            "cs_mm": 2.7,
            "amplitude_contrast": 0.07,
        }
    return make_job(
        tmp_path,
        m.astype(np.float32),
        ang,
        rotations=("0 0 0", "210 -60 270"),
        voxel=VOXEL,
        mean=0.1,
        std=0.05,
        n_search=10**9,
        **extra,
    )


def _particles(job):
    df = extract_candidates(job, radius_voxels=3, cutoff=0.5)
    assert len(df) == 1
    return df


def test_pose_matrix_and_relion_angles_against_scipy_and_hand_matrices():
    # RELION (rot, tilt, psi) intrinsic ZYZ: R = (Rz(rot) Ry(tilt) Rz(psi))^T carries template to particle
    hand = (_rz(30) @ _ry(60) @ _rz(90)).T
    np.testing.assert_allclose(relion_to_matrix([30, 60, 90]), hand, atol=1e-12)
    np.testing.assert_allclose(
        Rotation.from_euler("ZYZ", [30, 60, 90], degrees=True).inv().as_matrix(), hand, atol=1e-12
    )
    # (rot + 180, -tilt, psi + 180) is the same rotation: the file's "210 -60 270" is (30, 60, 90)
    np.testing.assert_allclose(relion_to_matrix([210, -60, 270]), hand, atol=1e-12)
    # by hand: Ry(60) Rz(90) has first row (0, -1/2, sqrt3/2); Rz(30)'s first row (sqrt3/2, -1/2, 0)
    # times that product gives M's first row (-1/2, -sqrt3/4, 3/4) = R's first column, i.e. the
    # template's x axis is carried to (-1/2, -sqrt3/4, 3/4)
    np.testing.assert_allclose(relion_to_matrix([30, 60, 90])[:, 0], [-0.5, -np.sqrt(3) / 4, 0.75], atol=1e-12)


@pytest.mark.parametrize("relion", [True, False])
def test_hand_computed_star_values_in_every_format(tmp_path, relion):
    job = _job(tmp_path, relion)
    df = _particles(job)
    assert (df.x[0], df.y[0], df.z[0]) == pytest.approx(PEAK_XYZ, abs=1e-9)  # symmetric peak: no sub-voxel shift
    sigma = (PEAK - 0.1) / 0.05
    name = "TS_07" if relion else "tomo"

    # RELION 5 ----------------------------------------------------------------------
    out5 = tmp_path / "p5.star"
    write_particles(df, out5, "relion5", job)
    text = out5.read_text()
    assert "data_particles" in text and "data_optics" not in text
    blocks = starfile.read(out5, always_dict=True)
    assert list(blocks) == ["particles"]
    r5 = blocks["particles"].iloc[0]
    if relion:
        # x: 21*10 - (301//2)*2 = -90; y: 13*10 - (251//2)*2 = -120; z: 30*10 - (199//2)*2 = 102
        expect = (-90.0, -120.0, 102.0)
        assert r5.rlnTomoTiltSeriesPixelSize == 2.0
        assert r5.rlnTomoVisibleFrames == "[1,1,0,1,1]"
    else:
        # (index - n//2) * voxel: (21-30)*10, (13-25)*10, (30-20)*10
        expect = (-90.0, -120.0, 100.0)
        assert r5.rlnTomoTiltSeriesPixelSize == VOXEL
        assert "rlnTomoVisibleFrames" not in blocks["particles"]
    assert (
        r5.rlnCenteredCoordinateXAngst,
        r5.rlnCenteredCoordinateYAngst,
        r5.rlnCenteredCoordinateZAngst,
    ) == pytest.approx(expect, abs=1e-6)
    assert r5.rlnTomoName == name
    assert (r5.rlnAngleRot, r5.rlnAngleTilt, r5.rlnAnglePsi) == pytest.approx((30.0, 60.0, 90.0), abs=1e-5)
    assert r5.rlnLCCmax == pytest.approx(PEAK, abs=1e-6)
    assert r5.rlnAutopickFigureOfMerit == pytest.approx(sigma, abs=1e-5)
    assert r5.rlnCutOff == pytest.approx(0.5)
    assert r5.rlnSearchStd == pytest.approx(0.05)

    # RELION 4 ----------------------------------------------------------------------
    out4 = tmp_path / "p4.star"
    write_particles(df, out4, "relion4", job)
    text = out4.read_text()
    # relion_tomo_import_particles reads the first block: the particles, alone
    assert "data_optics" not in text and text.count("data_") == 1 and "data_particles" in text
    b4 = starfile.read(out4, always_dict=True)
    assert list(b4) == ["particles"]
    r4 = b4["particles"].iloc[0]
    if relion:
        expect = (105.0, 65.0, 150.0)  # unbinned pixels: index * 10 / 2
        assert "pixels of 2 A" in text
    else:
        expect = (21.0, 13.0, 30.0)  # tomogram pixels from the corner
        assert f"pixels of {VOXEL:g} A" in text
    assert (r4.rlnCoordinateX, r4.rlnCoordinateY, r4.rlnCoordinateZ) == pytest.approx(expect, abs=1e-6)
    assert {"rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"} <= set(b4["particles"].columns)
    assert r4.rlnTomoName == name
    assert (r4.rlnAngleRot, r4.rlnAngleTilt, r4.rlnAnglePsi) == pytest.approx((30.0, 60.0, 90.0), abs=1e-5)

    # Warp --------------------------------------------------------------------------
    outw = tmp_path / "pw.star"
    write_particles(df, outw, "warp", job)
    assert "\ndata_\n" in outw.read_text()
    rw = starfile.read(outw, always_dict=True)[""].iloc[0]
    if relion:
        expect = (210 / (301 * 2), 130 / (251 * 2), 300 / (199 * 2))  # position / unbinned extent
    else:
        expect = (21 / 60, 13 / 50, 30 / 40)  # index / n
    assert (rw.rlnCoordinateX, rw.rlnCoordinateY, rw.rlnCoordinateZ) == pytest.approx(expect, abs=1e-6)
    assert rw.rlnMicrographName == f"{name}.tomostar"
    assert rw.rlnAutopickFigureOfMerit == pytest.approx(sigma, abs=1e-5)
    assert (rw.rlnAngleRot, rw.rlnAngleTilt, rw.rlnAnglePsi) == pytest.approx((30.0, 60.0, 90.0), abs=1e-5)


@pytest.mark.parametrize("fmt", ["relion5", "relion4", "warp"])
@pytest.mark.parametrize("relion", [True, False])
def test_round_trip(tmp_path, fmt, relion):
    job = _job(tmp_path, relion)
    rng = np.random.default_rng(3)
    n = 25
    df = pd.DataFrame(
        {
            "x": rng.uniform(0, 59, n),
            "y": rng.uniform(0, 49, n),
            "z": rng.uniform(0, 39, n),
            "score": rng.uniform(0.2, 0.9, n),
            "score_sigma": rng.uniform(5, 20, n),
        }
    )
    ang = Rotation.random(n, random_state=4).inv().as_euler("ZYZ", degrees=True)
    df["rot"], df["tilt"], df["psi"] = ang[:, 0], ang[:, 1], ang[:, 2]
    out = tmp_path / f"rt_{fmt}.star"
    write_particles(df, out, fmt, job)
    for kwargs in ({"job": job}, {}):  # with the job, and from the geometry in the header
        back = read_particles(out, **kwargs)
        assert back.attrs["format"] == fmt
        np.testing.assert_allclose(back[["x", "y", "z"]], df[["x", "y", "z"]], atol=2e-4)
        # same rotation (Euler triples may differ by representation)
        rel = Rotation.from_matrix(particle_matrices(back)).inv() * Rotation.from_matrix(particle_matrices(df))
        assert np.degrees(rel.magnitude()).max() < 1e-3
        if fmt != "relion4":
            np.testing.assert_allclose(back["score_sigma"], df["score_sigma"], atol=1e-5)
        np.testing.assert_allclose(back["score"], df["score"], atol=1e-6)
        geo = job_geometry(job)
        np.testing.assert_allclose(
            back[["x_angstrom", "y_angstrom", "z_angstrom"]],
            geo.centered_angstrom(df[["x", "y", "z"]].to_numpy()),
            atol=2e-3,
        )
        assert set(back["tomo_name"]) == {"TS_07" if relion else "tomo"}
        assert back.attrs["tomogram_shape_zyx"] == list(SHAPE)


def test_reading_without_geometry_keeps_what_the_file_says(tmp_path):
    job = _job(tmp_path, True)
    df = _particles(job)
    out = tmp_path / "p5.star"
    write_particles(df, out, "relion5", job)
    bare = tmp_path / "bare.star"  # as another program would write it: no tomomatch header
    starfile.write(starfile.read(out, always_dict=True), bare, overwrite=True)
    back = read_particles(bare)
    assert back.attrs["format"] == "relion5"
    assert (back.x_angstrom[0], back.y_angstrom[0], back.z_angstrom[0]) == pytest.approx((-90, -120, 102))
    assert np.isnan(back.x[0])
    assert read_particles(bare, job=job).x[0] == pytest.approx(21.0)


def test_merge_stars_writes_an_import_list(tmp_path, capsys):
    paths = []
    for name in ("TS_01", "TS_02"):
        d = tmp_path / name
        d.mkdir()
        job = _job(d, True)
        doc = json.loads(job.read_text())
        doc["relion"]["tomo_name"] = name
        job.write_text(json.dumps(doc))
        p = d / "particles.star"
        write_particles(_particles(job), p, "relion5", job)
        paths.append(p)
    out = tmp_path / "import.star"
    assert main(["merge-stars", *map(str, paths), "-o", str(out)]) == 0
    capsys.readouterr()
    tab = starfile.read(out, always_dict=True)["particles"]
    assert list(tab.columns) == ["rlnTomoName", "rlnTomoImportParticleFile"]
    assert list(tab.rlnTomoName) == ["TS_01", "TS_02"]
    assert list(tab.rlnTomoImportParticleFile) == [str(p) for p in paths]
    # a RELION 4 file is not a RELION 5 particle file
    p4 = tmp_path / "p4.star"
    write_particles(_particles(paths[0].parent / "tomo_job.json"), p4, "relion4", paths[0].parent / "tomo_job.json")
    with pytest.raises(InputError, match="RELION 5"):
        merge_stars([p4], tmp_path / "x.star")
    assert main(["merge-stars", str(p4), "-o", str(tmp_path / "x.star")]) == 2
    assert main(["merge-stars", str(tmp_path / "nope.star"), "-o", str(tmp_path / "x.star")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("error" in e for e in err)
    assert not (tmp_path / "x.star").exists()


def test_bad_star_and_bad_format(tmp_path):
    bad = tmp_path / "bad.star"
    bad.write_text("this is not a star file\n")
    with pytest.raises(InputError):
        read_particles(bad)
    with pytest.raises(InputError, match="not found"):
        read_particles(tmp_path / "missing.star")
    job = _job(tmp_path, False)
    with pytest.raises(InputError, match="format"):
        write_particles(_particles(job), tmp_path / "x.star", "relion3", job)
    no_coords = tmp_path / "nocoords.star"
    starfile.write({"particles": pd.DataFrame({"rlnTomoName": ["a"]})}, no_coords)
    with pytest.raises(InputError, match="coordinates"):
        read_particles(no_coords)


def test_warp_micrograph_name_is_the_tilt_series_root_name():
    from tomomatch.particles import warp_root_name

    assert warp_root_name("TS_01_10.00Apx") == ("TS_01", True)
    assert warp_root_name("TS_01_7Apx") == ("TS_01", True)
    assert warp_root_name("TS_01") == ("TS_01", False)
    assert warp_root_name("lamella_3_Apx") == ("lamella_3_Apx", False)


def test_warp_output_strips_pixel_suffix_and_warns_when_guessing(tmp_path):
    import warnings as w

    from tomomatch.particles import particle_table_to_blocks

    df = pd.DataFrame({"x": [1.0], "y": [2.0], "z": [3.0], "rot": 0.0, "tilt": 0.0, "psi": 0.0})
    base = {
        "tomomatch_version": "t",
        "job_format": 1,
        "geometry_version": 2,
        "tomogram_shape_zyx": [8, 8, 8],
        "voxel_size_angstrom": 10.0,
        "scores": "s.mrc",
        "angles": "a.mrc",
        "rotations": "r.txt",
    }
    with w.catch_warnings():
        w.simplefilter("error")
        b = particle_table_to_blocks(df, "warp", {**base, "tomogram": "TS_01_10.00Apx.mrc", "name": "TS_01_10.00Apx"})
    assert b[""]["rlnMicrographName"].iloc[0] == "TS_01.tomostar"
    with pytest.warns(UserWarning, match="file name"):
        b = particle_table_to_blocks(df, "warp", {**base, "tomogram": "rec_lamella.mrc", "name": "rec_lamella"})
    assert b[""]["rlnMicrographName"].iloc[0] == "rec_lamella.tomostar"
    with w.catch_warnings():
        w.simplefilter("error")
        b = particle_table_to_blocks(
            df, "warp", {**base, "tomogram": "rec.mrc", "name": "rec", "tilt_series_name": "TS_07"}
        )
    assert b[""]["rlnMicrographName"].iloc[0] == "TS_07.tomostar"
