"""Tilt metadata readers and writers: real files, synthetic fixtures, round trips, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tomomatch.shared_data import shared_data_dir

from tomomatch.cli import main
from tomomatch.errors import InputError
from tomomatch.metadata import (
    load_tilt_series,
    read_aln,
    read_defocus_text,
    read_dose,
    read_imod_defocus,
    read_mdoc,
    read_relion5,
    read_tilt_angles,
    read_warp_xml,
    write_dose,
    write_imod_defocus,
    write_relion5,
    write_tilt_angles,
)
from tomomatch.conventions import tilt_frame
from tomomatch.metadata.relion import angles_from_projection_matrices, relion5_projection_matrices
from tomomatch.tiltseries import TiltSeries

FIXTURES = Path(__file__).parent / "fixtures" / "tilt_metadata"


def _shared_tilt_metadata() -> Path | None:
    root = shared_data_dir()
    d = None if root is None else root / "tilt_metadata"
    return d if d is not None and (d / "pytom_test_angles.rawtlt").is_file() else None


REAL = _shared_tilt_metadata()
needs_real = pytest.mark.skipif(REAL is None, reason="shared/data/tilt_metadata not available")


def _relion_project(tmp_path: Path) -> Path:
    """Lay the real RELION 5 files out as in a RELION project (copied into tmp only)."""
    job = tmp_path / "Tomograms" / "job009"
    (job / "tilt_series").mkdir(parents=True)
    shutil.copy(REAL / "tomo200528_relion5_tomograms.star", job / "tomograms.star")
    shutil.copy(REAL / "tomo200528_107_relion5_tiltseries.star", job / "tilt_series" / "tomo200528_107.star")
    return job / "tomograms.star"


def _astig_series(n=5, phase=False, hand=-1) -> TiltSeries:
    angles = np.linspace(-40, 40, n)
    order = np.argsort(np.abs(angles), kind="stable")
    dose = np.empty(n)
    dose[order] = 3.0 * np.arange(n)
    du = 3.0 + 0.1 * np.arange(n)
    return TiltSeries(
        angles,
        accumulated_dose=dose,
        defocus_u_um=du,
        defocus_v_um=du - 0.2,
        astigmatism_angle_deg=np.linspace(-30, 60, n),
        phase_shift_deg=np.linspace(0, 90, n) if phase else None,
        voltage_kv=300,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        pixel_size_angstrom=2.5,
        hand=hand,
        tilt_axis_angle_deg=-87.5,
    )


# --------------------------------------------------------------------------- real files


@needs_real
def test_real_rawtlt_dose_and_imod_defocus():
    angles = read_tilt_angles(REAL / "pytom_test_angles.rawtlt")
    assert angles.size == 35
    assert angles[0] == -51.0 and angles[-1] == 51.0 and angles[17] == 0.0
    dose = read_dose(REAL / "pytom_test_dose.txt", tilt_angles_deg=angles)
    assert dose.size == 35
    assert dose[0] == pytest.approx(60.165) and dose[17] == pytest.approx(0.955)
    assert dose[-1] == pytest.approx(65.895)
    imod = read_imod_defocus(REAL / "pytom_test_imod.defocus")
    assert imod["version"] == 2
    assert imod["defocus_u_um"].size == 35
    assert imod["defocus_u_um"][0] == pytest.approx(3.083)  # 3083 nm
    assert imod["defocus_u_um"][-1] == pytest.approx(3.354)
    assert np.array_equal(imod["defocus_u_um"], imod["defocus_v_um"])
    assert imod["tilt_angles_deg"][0] == pytest.approx(-50.99)
    assert imod["tilt_angles_deg"][-1] == pytest.approx(51.0)


@needs_real
def test_real_plain_defocus_in_nm_is_refused():
    # pytom's test file holds nanometres (3083 ...): tomomatch does not guess the unit.
    with pytest.raises(InputError, match=r"line 1: defocus 3083 .*expected micrometres"):
        read_defocus_text(REAL / "pytom_test_defocus.txt")


@needs_real
def test_real_relion5(tmp_path):
    star = _relion_project(tmp_path)
    ts = read_relion5(star, "tomo200528_107")
    assert ts.n_tilts == 35
    assert ts.name == "tomo200528_107"
    assert ts.hand == -1
    assert ts.voltage_kv == 200.0 and ts.cs_mm == 2.7 and ts.amplitude_contrast == pytest.approx(0.08)
    assert ts.pixel_size_angstrom == pytest.approx(1.724)
    # first row: YTilt -50.99, nominal stage -50.9936, pre-exposure 68.2, U 24013.296875 A
    assert ts.tilt_angles_deg[0] == pytest.approx(-50.99)
    assert ts.extra["nominal_stage_tilt_deg"][0] == pytest.approx(-50.9936)
    assert ts.accumulated_dose[0] == pytest.approx(68.2)
    assert ts.defocus_u_um[0] == pytest.approx(2.4013296875)
    assert ts.defocus_v_um[0] == pytest.approx(2.2401580078)
    assert ts.astigmatism_angle_deg[0] == pytest.approx(-58.5313)
    # last row: 51.0, 74.8 e/A^2, U 31305.253906 A
    assert ts.tilt_angles_deg[-1] == pytest.approx(51.0)
    assert ts.accumulated_dose[-1] == pytest.approx(74.8)
    assert ts.defocus_u_um[-1] == pytest.approx(3.1305253906)
    assert ts.accumulated_dose.min() == 0.0
    assert 2.0 < ts.defocus_um.min() and ts.defocus_um.max() < 3.9
    assert ts.tilt_axis_angle_deg == pytest.approx(-90.5451)
    assert ts.extra["size_xyz_unbinned"] == (4000, 4000, 2000)
    assert ts.extra["binning"] == pytest.approx(8.12065)
    assert ts.extra["reconstructed_tomogram"].endswith("rec_tomo200528_107.mrc")
    # no rlnTomoProj* columns: angles from rlnTomoYTilt / rlnTomoXTilt (all 0 here)
    assert ts.extra["tilt_angle_source"] == "rlnTomoYTilt" and ts.extra["x_tilt_source"] == "rlnTomoXTilt"
    assert not ts.has_x_tilt and "projection_matrices" not in ts.extra


@needs_real
def test_real_relion5_needs_name_and_tilt_series_file(tmp_path):
    star = _relion_project(tmp_path)
    with pytest.raises(InputError, match="holds 10 tomograms"):
        read_relion5(star)
    with pytest.raises(InputError, match="no tomogram named 'nope'"):
        read_relion5(star, "nope")
    # tomo200528_100's tilt-series star file is not there
    with pytest.raises(InputError, match=r"rlnTomoTiltSeriesStarFile .*not found"):
        read_relion5(star, "tomo200528_100")


# --------------------------------------------------------------------------- IMOD .defocus fixtures


def test_imod_v3_astigmatism_and_view_ranges():
    r = read_imod_defocus(FIXTURES / "v3_astig.defocus")
    assert r["version"] == 3 and r["flags"] == 1
    np.testing.assert_allclose(r["defocus_u_um"], [3.2, 3.1, 3.1, 3.3])
    np.testing.assert_allclose(r["defocus_v_um"], [3.0, 2.9, 2.9, 3.3])
    np.testing.assert_allclose(r["astigmatism_angle_deg"], [45, 30, 30, 0])
    # views 2-3 share one line; angles interpolated -15 -> 15
    np.testing.assert_allclose(r["tilt_angles_deg"], [-30, -15, 15, 30])
    np.testing.assert_allclose(r["phase_shift_deg"], 0)


def test_imod_v3_radians_phase_and_inverted_angles():
    r = read_imod_defocus(FIXTURES / "v3_flags31.defocus")
    np.testing.assert_allclose(r["astigmatism_angle_deg"], [45, 90], atol=1e-6)
    np.testing.assert_allclose(r["phase_shift_deg"], [90, 0], atol=1e-6)
    np.testing.assert_allclose(r["tilt_angles_deg"], [-10, 10])  # flag 16 inverts
    np.testing.assert_allclose(r["defocus_u_um"], [2.5, 2.6])


def test_imod_v3_phase_in_degrees_and_cut_on_column():
    r = read_imod_defocus(FIXTURES / "v3_flags37.defocus")
    np.testing.assert_allclose(r["phase_shift_deg"], [90, 85])
    np.testing.assert_allclose(r["astigmatism_angle_deg"], [10, 12])
    np.testing.assert_allclose(r["defocus_v_um"], [3.8, 3.9])
    np.testing.assert_allclose(r["tilt_angles_deg"], [-3, 3])


# --------------------------------------------------------------------------- writers round trip


def test_tilt_angles_and_dose_round_trip(tmp_path):
    a = np.array([-60.0, -1.25, 0.0, 33.333333, 60.0])
    write_tilt_angles(tmp_path / "a.rawtlt", a)
    np.testing.assert_allclose(read_tilt_angles(tmp_path / "a.rawtlt"), a, atol=1e-6)
    d = np.array([0.0, 3.5, 7.0, 10.5, 14.0])
    write_dose(tmp_path / "d.txt", d)
    np.testing.assert_allclose(read_dose(tmp_path / "d.txt"), d, atol=1e-6)
    assert not list(tmp_path.glob("*.part"))


def test_multi_column_rawtlt_uses_first_column(tmp_path):
    p = tmp_path / "multi.rawtlt"
    p.write_text("# angle weight\n-10.5 0.3\n\n0.0 1.0\n10.5, 0.3\n")
    np.testing.assert_allclose(read_tilt_angles(p), [-10.5, 0.0, 10.5])


def test_per_tilt_dose_accumulates_in_file_order(tmp_path):
    (tmp_path / "d.txt").write_text("2.0\n3.0\n4.0\n")
    np.testing.assert_allclose(read_dose(tmp_path / "d.txt", per_tilt=True), [0.0, 2.0, 5.0])


@pytest.mark.parametrize("astig, phase, version", [(False, False, 2), (True, False, 3), (True, True, 3)])
def test_imod_defocus_round_trip(tmp_path, astig, phase, version):
    ts = _astig_series(phase=phase)
    if not astig:
        ts = ts.with_(defocus_v_um=None, astigmatism_angle_deg=None)
    write_imod_defocus(tmp_path / "x.defocus", ts)
    r = read_imod_defocus(tmp_path / "x.defocus")
    assert r["version"] == version
    np.testing.assert_allclose(r["defocus_u_um"], ts.defocus_u_um, atol=1e-5)
    np.testing.assert_allclose(r["defocus_v_um"], ts.defocus_v_um, atol=1e-5)
    np.testing.assert_allclose(r["tilt_angles_deg"], ts.tilt_angles_deg, atol=0.005)
    if astig:
        np.testing.assert_allclose(r["astigmatism_angle_deg"], ts.astigmatism_angle_deg, atol=0.005)
    np.testing.assert_allclose(r["phase_shift_deg"], ts.phase_shift_deg, atol=0.005)


def test_relion5_round_trip(tmp_path):
    ts = _astig_series(phase=True, hand=1)
    star = write_relion5(tmp_path / "proj", ts, "TS_01", (512, 480, 200), 4.0, tomogram_path="rec/TS_01.mrc")
    assert star.name == "tomograms.star" and (tmp_path / "proj" / "tilt_series" / "TS_01.star").is_file()
    back = read_relion5(star)
    assert back.name == "TS_01" and back.hand == 1
    for field in (
        "tilt_angles_deg",
        "accumulated_dose",
        "defocus_u_um",
        "defocus_v_um",
        "astigmatism_angle_deg",
        "phase_shift_deg",
    ):
        np.testing.assert_allclose(getattr(back, field), getattr(ts, field), atol=1e-5, err_msg=field)
    assert back.voltage_kv == 300 and back.amplitude_contrast == pytest.approx(0.1)
    assert back.pixel_size_angstrom == pytest.approx(2.5)
    assert back.tilt_axis_angle_deg == pytest.approx(-87.5)
    assert back.extra["size_xyz_unbinned"] == (512, 480, 200)
    assert back.extra["binning"] == 4.0 and back.extra["tomogram_voxel_angstrom"] == pytest.approx(10.0)
    assert back.extra["reconstructed_tomogram"] == "rec/TS_01.mrc"
    # a second tomogram is added, the first kept; rewriting the first replaces its row
    write_relion5(tmp_path / "proj", ts.with_(hand=-1), "TS_02", (512, 480, 200), 4.0)
    write_relion5(tmp_path / "proj", ts.with_(voltage_kv=200), "TS_01", (512, 480, 200), 4.0)
    assert read_relion5(star, "TS_02").hand == -1
    assert read_relion5(star, "TS_01").voltage_kv == 200
    assert not list((tmp_path / "proj").rglob("*.part"))


def test_relion5_writer_drops_excluded_tilts_and_needs_hand(tmp_path):
    ts = _astig_series().with_(excluded=[False, True, False, False, True])
    star = write_relion5(tmp_path, ts, "t", (10, 10, 10), 1.0)
    back = read_relion5(star)
    np.testing.assert_allclose(back.tilt_angles_deg, ts.tilt_angles_deg[[0, 2, 3]])
    with pytest.raises(ValueError, match="hand"):
        write_relion5(tmp_path, ts.with_(hand=None), "t", (10, 10, 10), 1.0)


# --------------------------------------------------------------------------- RELION projection matrices

PROJ_FIXTURE = FIXTURES / "relion4_matrices_tomograms.star"


def test_relion_projection_matrix_fixture():
    # row 2 has RELION's test values: rlnTomoYTilt 9.02, rlnTomoZRot 85.267,
    # rlnTomoProjZ [-0.156779,0,0.987634,...]; row 3 has x tilt 1.5
    ts = read_relion5(PROJ_FIXTURE)
    assert ts.extra["tilt_angle_source"] == ts.extra["x_tilt_source"] == "rlnTomoProjX/Y/Z/W"
    assert ts.tilt_angles_deg[1] == pytest.approx(9.02, abs=1e-3)
    np.testing.assert_allclose(ts.tilt_angles_deg, [-2.98, 9.02, 12.03], atol=1e-3)
    np.testing.assert_allclose(ts.x_tilt_deg, [0, 0, 1.5], atol=1e-3)
    assert ts.has_x_tilt
    np.testing.assert_allclose(ts.extra["matrix_angles_deg"][:, 2], [85.267, 85.267, 85.31], atol=1e-3)
    assert ts.tilt_axis_angle_deg == pytest.approx(np.mean([85.267, 85.267, 85.31]), abs=1e-3)
    assert ts.extra["angles_disagree_with_matrices"] is False
    assert max(ts.extra["angles_vs_matrices_max_diff_deg"].values()) < 1e-3
    # RELION setProjectionMatrix: the tomogram centre int(N/2) = (2000, 2000, 1000) lands on the
    # image centre int(w/2), int(h/2) = (2046, 2880) plus the shift / pixel size (12.5, -3.25) / 1.35
    p = ts.extra["projection_matrices"][0]
    np.testing.assert_allclose(p @ [2000, 2000, 1000, 1], [2046 + 12.5 / 1.35, 2880 - 3.25 / 1.35, 0, 1], atol=0.01)
    np.testing.assert_allclose(p[:3, :3], tilt_frame(-2.98, 0, 85.267), atol=2e-6)


def _proj_fixture_edit(tmp_path, row, cells):
    """Copy the projection-matrix fixture into tmp with cells ``{column: text}`` of one row replaced."""
    lines = (FIXTURES / "relion4_matrices_tiltseries.star").read_text().splitlines()
    header = [ln.split()[0][1:] for ln in lines if ln.startswith("_rln")]
    data = [i for i, ln in enumerate(lines) if ln.startswith("TS_proj_")]
    toks = lines[data[row]].split()
    for column, new in cells.items():
        toks[header.index(column)] = new
    lines[data[row]] = " ".join(toks)
    (tmp_path / "relion4_matrices_tiltseries.star").write_text("\n".join(lines) + "\n")
    shutil.copy(PROJ_FIXTURE, tmp_path / PROJ_FIXTURE.name)
    return tmp_path / PROJ_FIXTURE.name


def test_relion_matrices_win_over_disagreeing_angles(tmp_path):
    star = _proj_fixture_edit(tmp_path, 1, {"rlnTomoYTilt": "9.520000"})
    with pytest.warns(UserWarning, match=r"rlnTomoYTilt 0\.5.*using the matrices"):
        ts = read_relion5(star)
    assert ts.tilt_angles_deg[1] == pytest.approx(9.02, abs=1e-3)
    assert ts.extra["angles_disagree_with_matrices"] is True
    assert ts.extra["angles_vs_matrices_max_diff_deg"]["rlnTomoYTilt"] == pytest.approx(0.5, abs=1e-3)
    assert ts.extra["y_tilt_deg"][1] == 9.52  # the column as written


@pytest.mark.parametrize(
    "column, new, fragment",
    [
        # row norm 1.01: not orthonormal
        ("rlnTomoProjZ", "[-0.156779,0,0.997634,-674.0752]", r"rlnTomoProjX/Y/Z: row 2: .*not a rotation"),
        # mirrored depth axis: orthonormal but det -1
        ("rlnTomoProjZ", "[0.156779,0,-0.987634,-674.0752]", r"rlnTomoProjX/Y/Z: row 2: .*det -1"),
        ("rlnTomoProjW", "[0,0,1]", r"rlnTomoProjW: row 2: '\[0,0,1\]' has 3 numbers"),
        ("rlnTomoProjW", "[0,0,0.5,1]", r"rlnTomoProjW: row 2: .*expected \[0,0,0,1\]"),
        ("rlnTomoProjX", "0.08,-0.99,0.01,3863", r"rlnTomoProjX: row 2: .*expected 4 numbers"),
        ("rlnTomoProjY", "[0.98,x,0.15,590]", r"rlnTomoProjY: row 2: .*is not numeric"),
    ],
)
def test_relion_bad_projection_matrices(tmp_path, column, new, fragment):
    star = _proj_fixture_edit(tmp_path, 1, {column: new})
    with pytest.raises(InputError, match=fragment) as exc:
        read_relion5(star)
    assert "relion4_matrices_tiltseries.star" in str(exc.value) and "\n" not in str(exc.value)


def test_relion_projection_matrix_refusals_x_tilt_and_missing_row(tmp_path):
    # Rx(-90): a rotation, but the tomogram's depth axis would be y (RELION 4 import without flipYZ)
    star = _proj_fixture_edit(
        tmp_path, 1, {"rlnTomoProjX": "[1,0,0,0]", "rlnTomoProjY": "[0,0,1,0]", "rlnTomoProjZ": "[0,-1,0,0]"}
    )
    with pytest.raises(InputError, match=r"rlnTomoProjZ: row 2: x tilt -90 .*depth axis not z"):
        read_relion5(star)
    text = (FIXTURES / "relion4_matrices_tiltseries.star").read_text()
    (tmp_path / "relion4_matrices_tiltseries.star").write_text(text.replace("_rlnTomoProjW #15", "_rlnTomoProjQ #15"))
    with pytest.raises(InputError, match=r"rlnTomoProjW: .*present but rlnTomoProjW missing"):
        read_relion5(star)


def test_angles_from_projection_matrices_inverts_tilt_frame():
    rng = np.random.default_rng(0)
    y, x, z = rng.uniform(-80, 80, 50), rng.uniform(-40, 40, 50), rng.uniform(-179, 179, 50)
    np.testing.assert_allclose(angles_from_projection_matrices(tilt_frame(y, x, z)), np.stack([y, x, z], -1), atol=1e-9)
    # |ytilt| = 90: only zrot - xtilt is defined; xtilt 0 and the same rotation
    a = angles_from_projection_matrices(tilt_frame(90.0, 10.0, 30.0)[None])[0]
    assert a[0] == pytest.approx(90) and a[1] == 0
    np.testing.assert_allclose(tilt_frame(*a), tilt_frame(90.0, 10.0, 30.0), atol=1e-12)


def test_relion5_write_read_x_tilt_and_projection_matrices(tmp_path):
    ts = _astig_series(hand=-1).with_(x_tilt_deg=[0.0, 0.5, -1.0, 2.0, 0.0], tilt_axis_angle_deg=85.3)
    # without the image size: angles only (RELION 5 builds the matrices from them)
    star = write_relion5(tmp_path / "a", ts, "TS", (4000, 3000, 1000), 8.0)
    text = (tmp_path / "a" / "tilt_series" / "TS.star").read_text()
    assert "rlnTomoProj" not in text and "_rlnTomoXTilt" in text
    back = read_relion5(star)
    assert back.extra["x_tilt_source"] == "rlnTomoXTilt"
    np.testing.assert_allclose(back.x_tilt_deg, ts.x_tilt_deg, atol=1e-6)
    # with the image size: also rlnTomoProjX/Y/Z/W, RELION 5's setProjectionMatrix with zero shifts
    star = write_relion5(tmp_path / "b", ts, "TS", (4000, 3000, 1000), 8.0, tilt_image_size_xy=(4092, 5760))
    back = read_relion5(star)
    assert back.extra["tilt_angle_source"] == "rlnTomoProjX/Y/Z/W"
    assert back.extra["angles_disagree_with_matrices"] is False
    np.testing.assert_allclose(back.tilt_angles_deg, ts.tilt_angles_deg, atol=1e-6)
    np.testing.assert_allclose(back.x_tilt_deg, ts.x_tilt_deg, atol=1e-6)
    assert back.tilt_axis_angle_deg == pytest.approx(85.3, abs=1e-6)
    expected = relion5_projection_matrices(ts.tilt_angles_deg, ts.x_tilt_deg, 85.3, (4000, 3000, 1000), (4092, 5760))
    np.testing.assert_allclose(back.extra["projection_matrices"], expected, atol=1e-6)
    # the tomogram centre (2000, 1500, 500) projects onto the image centre (2046, 2880) at depth 0
    np.testing.assert_allclose(expected @ np.array([2000, 1500, 500, 1.0]), [[2046, 2880, 0, 1]] * 5, atol=1e-9)
    # by hand for tilt 0, no x tilt, no z rotation: x' = x - 2000 + 2046, y' = y - 1500 + 2880, depth z - 500
    flat = TiltSeries([0.0], pixel_size_angstrom=2.0, hand=1)
    write_relion5(tmp_path / "c", flat, "TS", (4000, 3000, 1000), 8.0, tilt_image_size_xy=(4092, 5760))
    row = [
        ln.split()
        for ln in (tmp_path / "c" / "tilt_series" / "TS.star").read_text().splitlines()
        if ln.startswith("TS_")
    ][0]
    assert row[-4:] == ["[1,0,0,46]", "[0,1,0,1380]", "[0,0,1,-500]", "[0,0,0,1]"]


def test_angle_signs_follow_the_file_except_warp(tmp_path):
    # IMOD .tlt, mdoc and AreTomo .aln TILT keep their sign (IMOD's); Warp <Angles> are negated
    write_tilt_angles(tmp_path / "a.tlt", [-30, 30])
    np.testing.assert_allclose(read_tilt_angles(tmp_path / "a.tlt"), [-30, 30])
    assert read_mdoc(FIXTURES / "small_ts.mrc.mdoc").tilt_angles_deg[0] == pytest.approx(-6.01)
    assert read_aln(FIXTURES / "dark_frames.aln").tilt_angles_deg[3] == -6.0  # SEC 3 TILT -6
    ts = read_warp_xml(FIXTURES / "warp_small.xml")
    # negated, then LevelAngleY = -0.5 subtracted (tests/test_warp_level.py)
    np.testing.assert_allclose(ts.extra["unleveled_tilt_angles_deg"], -ts.extra["warp_angles_deg"])
    assert ts.extra["warp_angles_deg"][0] == -30 and ts.tilt_angles_deg[0] == 30.5


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("1.0\n2.0\nabc\n", r"line 3: 'abc' is not a number"),
        ("1.0\nnan\n", r"line 2: 'nan' is not a finite number"),
        ("", "is empty"),
        ("-30\n95\n", r"line 2: tilt angle 95 outside -90..90"),
    ],
)
def test_bad_tilt_angle_files(tmp_path, content, fragment):
    p = tmp_path / "bad.rawtlt"
    p.write_text(content)
    with pytest.raises(InputError, match=fragment) as exc:
        read_tilt_angles(p)
    assert str(p) in str(exc.value) and "\n" not in str(exc.value)


def test_bad_dose_and_defocus_files(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("0\n-1\n")
    with pytest.raises(InputError, match=r"line 2: dose -1 is negative"):
        read_dose(p)
    p.write_text("0\n1\n2\n")
    with pytest.raises(InputError, match=r"3 dose values but 2 tilts"):
        read_dose(p, tilt_angles_deg=[0, 3])
    p.write_text("3.1\n\n30500\n")
    with pytest.raises(InputError, match=r"line 3: defocus 30500 is implausible"):
        read_defocus_text(p)
    with pytest.raises(InputError, match="file not found"):
        read_defocus_text(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("1 1 0 0 3000 4\n", "version 4 not supported"),
        ("1 0 0 0 0 3\n1 1 0 0 3000\n", r"line 2: 5 fields; expected 7"),
        ("1 1 0 0 3000 2\n3 3 6 6 3000\n", "view 2 has no line"),
        ("1 1 0 0 3000 2\n1 1 0 0 3000\n", r"line 2: view 1 given twice"),
        ("1 1 0 0 3e6 2\n", "implausible"),
        ("1 1 0 0 x 2\n", r"line 1: 'x' is not a number"),
    ],
)
def test_bad_imod_defocus(tmp_path, content, fragment):
    p = tmp_path / "bad.defocus"
    p.write_text(content)
    with pytest.raises(InputError, match=fragment):
        read_imod_defocus(p)


# --------------------------------------------------------------------------- Warp XML


def test_warp_xml_fixture():
    ts = read_warp_xml(FIXTURES / "warp_small.xml")
    # Warp angles -30..30 are negated to the IMOD/RELION sign, then LevelAngleY = -0.5 is
    # subtracted and LevelAngleX = 1.5 becomes the x tilt (tests/test_warp_level.py)
    np.testing.assert_allclose(ts.tilt_angles_deg, [30.5, 15.5, 0.5, -14.5, -29.5])
    np.testing.assert_allclose(ts.x_tilt_deg, 1.5)
    np.testing.assert_allclose(ts.accumulated_dose, [9, 3, 0, 6, 12])
    assert ts.excluded.tolist() == [False, False, False, True, False]
    # U = D + delta/2, V = D - delta/2 (Warp's RELION export)
    np.testing.assert_allclose(ts.defocus_u_um, [3.15, 3.10, 3.10, 3.25, 3.35])
    np.testing.assert_allclose(ts.defocus_v_um, [3.05, 3.00, 2.90, 3.15, 3.25])
    np.testing.assert_allclose(ts.defocus_um, [3.10, 3.05, 3.00, 3.20, 3.30])
    np.testing.assert_allclose(ts.astigmatism_angle_deg, [30, 30, 40, 30, 30])
    np.testing.assert_allclose(ts.phase_shift_deg, 45.0)  # 0.25 pi
    assert ts.hand == -1  # AreAnglesInverted=False
    assert (ts.voltage_kv, ts.cs_mm, ts.amplitude_contrast, ts.pixel_size_angstrom) == (300, 2.7, 0.1, 1.5)
    assert ts.tilt_axis_angle_deg == pytest.approx(84.5)
    assert ts.extra["LevelAngleX"] == 1.5 and ts.extra["LevelAngleY"] == -0.5
    assert ts.name == "warp_small"


def _edit_xml(tmp_path, old, new, count=-1):
    text = (FIXTURES / "warp_small.xml").read_text()
    assert old in text
    p = tmp_path / "edited.xml"
    p.write_text(text.replace(old, new, count))
    return p


def test_warp_xml_inverted_hand_spatial_grid_and_fallback(tmp_path):
    p = _edit_xml(tmp_path, 'AreAnglesInverted="False"', 'AreAnglesInverted="True"')
    assert read_warp_xml(p).hand == 1
    # a 2x1x5 GridCTF: per-tilt values are the mean over X
    text = (FIXTURES / "warp_small.xml").read_text()
    start, end = text.index("\t<GridCTF "), text.index("</GridCTF>") + len("</GridCTF>")
    nodes = "".join(
        f'<Node X="{x}" Y="0" Z="{z}" Value="{3.0 + z * 0.1 + x * 0.2}" />' for z in range(5) for x in range(2)
    )
    p.write_text(text[:start] + f'<GridCTF Width="2" Height="1" Depth="5">{nodes}</GridCTF>' + text[end:])
    np.testing.assert_allclose(read_warp_xml(p).defocus_um, 3.1 + 0.1 * np.arange(5))
    # a 1x1x1 GridCTF holds one value for every tilt
    p.write_text(
        text[:start] + '<GridCTF Width="1" Height="1" Depth="1"><Node X="0" Y="0" Z="0" Value="2.5" />'
        '</GridCTF>' + text[end:]
    )
    one = read_warp_xml(p)
    np.testing.assert_allclose(one.defocus_um, 2.5)
    np.testing.assert_allclose(one.defocus_u_um, [2.55, 2.55, 2.6, 2.55, 2.55])  # delta 0.2 on tilt 2
    # no grids: the <CTF> Params give one value for every tilt
    import re

    p.write_text(re.sub(r"\t<GridCTF.*?</GridCTF\w*>\n", "", text, flags=re.S))
    ts = read_warp_xml(p)
    np.testing.assert_allclose(ts.defocus_u_um, 3.15)
    np.testing.assert_allclose(ts.defocus_v_um, 3.05)
    np.testing.assert_allclose(ts.astigmatism_angle_deg, 30)
    np.testing.assert_allclose(ts.phase_shift_deg, 45)


@pytest.mark.parametrize(
    "old, new, fragment",
    [
        ("<Dose>9.0\n", "<Dose>", "Dose: 4 entries but 5 tilt angles"),
        ("<Angles>-30\n", "<Angles>-95\n", "outside -90..90"),
        ('Value="3.05"', 'Value="abc"', "GridCTF: node"),
        ('Depth="5"', 'Depth="4"', "Depth 4 but 5 tilts"),
        ("<UseTilt>True", "<UseTilt>maybe", "expected True or False"),
        ("TiltSeries", "Other", "expected a Warp <TiltSeries> XML"),
    ],
)
def test_warp_xml_bad_input(tmp_path, old, new, fragment):
    with pytest.raises(InputError, match=fragment):
        read_warp_xml(_edit_xml(tmp_path, old, new))


def test_warp_xml_not_xml(tmp_path):
    p = tmp_path / "x.xml"
    p.write_text("<TiltSeries><Angles>1\n2</Angles>")
    with pytest.raises(InputError, match="not a readable XML file"):
        read_warp_xml(p)


# --------------------------------------------------------------------------- mdoc


def test_mdoc_dose_accumulated_in_acquisition_time_order():
    ts = read_mdoc(FIXTURES / "small_ts.mrc.mdoc")
    np.testing.assert_allclose(ts.tilt_angles_deg, [-6.01, -3.0, 0.02, 3.0, 6.0])
    # acquired 0, +3, -3, -6, +6 with exposures 2.9, 3.0, 3.0, 3.1, 3.2 e/A^2
    np.testing.assert_allclose(ts.accumulated_dose, [8.9, 5.9, 0.0, 2.9, 12.0])
    assert ts.extra["dose_order_source"] == "DateTime"
    assert ts.pixel_size_angstrom == 2.125 and ts.voltage_kv == 300.0
    assert ts.tilt_axis_angle_deg == pytest.approx(85.3)
    assert ts.name == "small_ts" and ts.hand is None


def test_mdoc_without_datetime_uses_zvalue_order(tmp_path):
    text = (FIXTURES / "small_ts.mrc.mdoc").read_text()
    p = tmp_path / "nodate.mdoc"
    p.write_text("\n".join(line for line in text.splitlines() if not line.startswith("DateTime")))
    ts = read_mdoc(p)
    assert ts.extra["dose_order_source"] == "ZValue"
    np.testing.assert_allclose(ts.accumulated_dose, [0.0, 3.1, 6.1, 9.0, 12.0])


def test_mdoc_bad_input(tmp_path):
    text = (FIXTURES / "small_ts.mrc.mdoc").read_text()
    p = tmp_path / "bad.mdoc"
    p.write_text(text.replace("TiltAngle = -3.0", "TiltAngle = -93.0"))
    with pytest.raises(InputError, match="outside -90..90"):
        read_mdoc(p)
    p.write_text(text.replace("TiltAngle = -3.0", "TiltAngle = minus three"))
    with pytest.raises(InputError, match=str(p)):
        read_mdoc(p)
    p.write_text("PixelSpacing = 2\n")
    with pytest.raises(InputError, match="TiltAngle"):
        read_mdoc(p)


# --------------------------------------------------------------------------- aln


def test_aln_dark_frames_become_excluded_tilts_at_raw_positions():
    ts = read_aln(FIXTURES / "dark_frames.aln")
    # raw stack (SEC / DarkFrame 2nd number): 0:0 1:-3 2:+3 3:-6 4:+6 5:-9 (dark) 6:+9 (dark)
    np.testing.assert_allclose(ts.tilt_angles_deg, [0, -3, 3, -6, 6, -9, 9])
    assert ts.excluded.tolist() == [False] * 5 + [True] * 2
    assert ts.n_tilts == ts.extra["raw_size"][2] == 7
    assert ts.tilt_axis_angle_deg == pytest.approx(np.mean([-85.3, -85.4, -85.3, -85.2, -85.3]))
    np.testing.assert_allclose(ts.extra["shifts_px"][1], [1.5, 0.5])
    assert ts.extra["alpha_offset"] == -1.5
    np.testing.assert_allclose(ts.included().tilt_angles_deg, [0, -3, 3, -6, 6])


def test_aln_without_offset_lines():
    ts = read_aln(FIXTURES / "no_offsets.aln")
    np.testing.assert_allclose(ts.tilt_angles_deg, [-2, 0, 2])
    assert ts.tilt_axis_angle_deg == 86.0 and not ts.excluded.any()


def test_aln_bad_input(tmp_path):
    p = tmp_path / "bad.aln"
    p.write_text("# AreTomo Alignment / Priims bprmMn\n# RawSize = 1 1 1\n")
    with pytest.raises(InputError, match="no global alignment rows"):
        read_aln(p)
    p.write_text((FIXTURES / "no_offsets.aln").read_text().replace("0.500      0.500", "0.500      x.500"))
    with pytest.raises(InputError, match="not a readable AreTomo .aln"):
        read_aln(p)


# --------------------------------------------------------------------------- load_tilt_series


def test_load_combines_primary_extra_files_and_overrides(tmp_path):
    write_tilt_angles(tmp_path / "a.tlt", [-3, 0, 3, -6, 6, -9, 9])
    write_dose(tmp_path / "d.txt", np.arange(7) * 2.0)
    ts = load_tilt_series(
        aln=FIXTURES / "dark_frames.aln",
        tilt_angles=tmp_path / "a.tlt",
        dose=tmp_path / "d.txt",
        defocus="3.5",
        voltage_kv=200,
        cs_mm=0.01,
        amplitude_contrast=0.1,
        phase_shift_deg=90,
        hand=1,
        pixel_size_angstrom=1.1,
    )
    np.testing.assert_allclose(ts.tilt_angles_deg, [-3, 0, 3, -6, 6, -9, 9])
    assert ts.excluded.tolist() == [False] * 5 + [True] * 2  # kept from the aln
    np.testing.assert_allclose(ts.accumulated_dose, np.arange(7) * 2.0)
    np.testing.assert_allclose(ts.defocus_um, 3.5)
    np.testing.assert_allclose(ts.phase_shift_deg, 90)
    assert (ts.voltage_kv, ts.cs_mm, ts.amplitude_contrast, ts.hand, ts.pixel_size_angstrom) == (200, 0.01, 0.1, 1, 1.1)


@needs_real
def test_load_pytom_style_inputs():
    ts = load_tilt_series(
        tilt_angles=REAL / "pytom_test_angles.rawtlt",
        dose=REAL / "pytom_test_dose.txt",
        defocus=REAL / "pytom_test_imod.defocus",
        voltage_kv=200,
        amplitude_contrast=0.08,
    )
    assert ts.n_tilts == 35 and ts.hand is None
    assert ts.defocus_um[0] == pytest.approx(3.083) and ts.accumulated_dose[0] == pytest.approx(60.165)
    assert ts.name == "pytom_test_angles"


def test_load_tilt_count_mismatch_names_both_files(tmp_path):
    write_tilt_angles(tmp_path / "a.rawtlt", [-3, 0, 3])
    (tmp_path / "df.txt").write_text("3.0\n3.1\n")
    with pytest.raises(InputError) as exc:
        load_tilt_series(tilt_angles=tmp_path / "a.rawtlt", defocus=tmp_path / "df.txt")
    msg = str(exc.value)
    assert "df.txt" in msg and "a.rawtlt" in msg and "2 tilts" in msg and "has 3" in msg


def test_load_refusals(tmp_path):
    with pytest.raises(InputError, match="no tilt angles"):
        load_tilt_series(dose=tmp_path / "d.txt")
    with pytest.raises(InputError, match="several tilt-series sources"):
        load_tilt_series(mdoc=FIXTURES / "small_ts.mrc.mdoc", aln=FIXTURES / "no_offsets.aln")
    with pytest.raises(InputError, match="unknown file type .* AreTomo .aln"):
        load_tilt_series(tilt_angles=FIXTURES / "no_offsets.aln")
    with pytest.raises(InputError, match="not a plausible value in micrometres"):
        load_tilt_series(aln=FIXTURES / "no_offsets.aln", defocus="35000")
    with pytest.raises(InputError, match="file not found"):
        load_tilt_series(warp_xml=tmp_path / "missing.xml")


# --------------------------------------------------------------------------- CLI


def test_cli_metadata_table_and_json(capsys):
    assert main(["metadata", "--warp-xml", str(FIXTURES / "warp_small.xml"), "--voltage", "200"]) == 0
    out = capsys.readouterr().out
    assert "5 tilts (1 excluded)" in out and "voltage 200 kV" in out and "hand -1" in out
    assert main(["metadata", "--aln", str(FIXTURES / "dark_frames.aln"), "--json", "--allow-missing-dose"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_tilts"] == 7 and data["excluded"][-2:] == [True, True]
    assert data["tilt_angles_deg"][:3] == [0.0, -3.0, 3.0]


@pytest.mark.parametrize(
    "extra_args, fragment",
    [
        ([], "no tilt-series metadata given"),
        (["-a", "{tmp}/missing.rawtlt"], "file not found"),
        (["-a", "{tmp}/a.rawtlt", "--dose", "{tmp}/d.txt"], "2 tilts, but"),
        (["-a", "{tmp}/bad.rawtlt"], "line 2: 'x' is not a number"),
    ],
)
def test_cli_metadata_bad_input_exit_2(tmp_path, capsys, extra_args, fragment):
    write_tilt_angles(tmp_path / "a.rawtlt", [-3, 0, 3])
    write_dose(tmp_path / "d.txt", [0, 3])
    (tmp_path / "bad.rawtlt").write_text("1\nx\n")
    args = ["metadata"] + [a.format(tmp=tmp_path) for a in extra_args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert err.count("\n") == 1 and err.startswith("tomomatch metadata: error:")


def test_relion5_bad_input(tmp_path):
    ts = _astig_series()
    star = write_relion5(tmp_path, ts, "t", (10, 10, 10), 1.0)
    ts_star = tmp_path / "tilt_series" / "t.star"
    text = ts_star.read_text()
    ts_star.write_text(text.replace("\t30000.000000\t", "\tabc\t", 1))
    with pytest.raises(InputError, match=r"rlnDefocusU: row 1: 'abc' is not a finite number"):
        read_relion5(star)
    # explicit tilt-series file overrides rlnTomoTiltSeriesStarFile
    other = tmp_path / "elsewhere.star"
    other.write_text(text)
    ts_star.unlink()
    assert read_relion5(star, tilt_series_star=other).n_tilts == 5
    with pytest.raises(InputError, match="rlnTomoTiltSeriesStarFile 'tilt_series/t.star' not found"):
        read_relion5(star)
    g = star.read_text()
    star.write_text(g.replace("_rlnTomoHand", "_rlnTomoHandX"))
    with pytest.raises(InputError, match="rlnTomoHand: column missing"):
        read_relion5(star, tilt_series_star=other)
    (tmp_path / "x.star").write_text("data_particles\nloop_\n_rlnTomoName #1\na\n")
    with pytest.raises(InputError, match="no data_global loop"):
        read_relion5(tmp_path / "x.star")


# --------------------------------------------------------------------------- plausibility (units both ways)

SMALL_STAR = FIXTURES / "relion5_small_tomograms.star"
SMALL_TS = FIXTURES / "relion5_small_tiltseries.star"


def _small_relion(tmp_path, edit=None, columns=None) -> Path:
    """Copy the small RELION 5 fixture into tmp; ``edit(column, value) -> value`` rewrites the
    tilt-series cells, ``columns`` (names) are dropped."""
    lines = SMALL_TS.read_text().splitlines()
    header = [ln.split()[0][1:] for ln in lines if ln.startswith("_rln")]
    out = []
    for ln in lines:
        toks = ln.split()
        if ln.startswith("_rln") and columns and toks[0][1:] in columns:
            continue
        if len(toks) == len(header) and not ln.startswith("_"):
            toks = [edit(c, t) if edit else t for c, t in zip(header, toks)]
            toks = [t for c, t in zip(header, toks) if not (columns and c in columns)]
            ln = " ".join(toks)
        out.append(ln)
    (tmp_path / SMALL_TS.name).write_text("\n".join(out) + "\n")
    shutil.copy(SMALL_STAR, tmp_path / SMALL_STAR.name)
    return tmp_path / SMALL_STAR.name


def _scale(column, factor):
    return lambda c, t: f"{float(t) * factor:.6f}" if c == column else t


def test_new_fixtures_read():
    ts = read_relion5(SMALL_STAR)
    np.testing.assert_allclose(ts.tilt_angles_deg, [-5.99, -2.99, 0.01, 3.01, 6.01])
    np.testing.assert_allclose(ts.accumulated_dose, [12, 6, 0, 3, 9])
    np.testing.assert_allclose(ts.defocus_u_um, [3.12, 3.05, 3.0, 3.04, 3.1])
    both = load_tilt_series(
        tilt_angles=FIXTURES / "ts5.rawtlt", dose=FIXTURES / "ts5_dose.txt", defocus=FIXTURES / "ts5_v2.defocus"
    )
    np.testing.assert_allclose(both.defocus_um, [3.12, 3.05, 3.0, 3.04, 3.1])
    np.testing.assert_allclose(read_defocus_text(FIXTURES / "ts5_defocus.txt"), both.defocus_um)


@pytest.mark.parametrize(
    "content, fragment",
    [
        # ctfplotter writes nm: 3.1 is micrometres (0.0031 um as read)
        (
            "1 1 -3 -3 3.1 2\n2 2 0 0 3.1\n",
            r"line 1: defocus 3.1 nm = 0.0031 um is implausible; expected nanometres as in IMOD \.defocus, 0.5-20 um "
            r"underfocus \(looks like micrometres: 3.1 um\?\)",
        ),
        # x10: 31 um
        ("1 1 -3 -3 31000 2\n2 2 0 0 31000\n", r"line 1: defocus 31000 nm = 31 um is implausible"),
        # a version-3 file with defocus2 in Angstrom
        ("1 0 0 0 0 3\n1 1 -3 -3 3100 31000 10\n", r"line 2: defocus 31000 nm = 31 um is implausible"),
    ],
)
def test_imod_defocus_in_the_wrong_unit_is_refused(tmp_path, content, fragment):
    p = tmp_path / "x.defocus"
    p.write_text(content)
    with pytest.raises(InputError, match=fragment) as exc:
        read_imod_defocus(p)
    assert "\n" not in str(exc.value) and "--allow-unusual-defocus" in str(exc.value)
    read_imod_defocus(p, allow_unusual_defocus=True)


def test_plain_defocus_and_option_in_the_wrong_unit_are_refused(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("0.003\n0.003\n0.003\n")
    with pytest.raises(
        InputError,
        match=r"line 1: defocus 0.003 is implausible.*expected micrometres, 0.5-20 um "
        r"underfocus \(looks like millimetres: 3 um\?\)",
    ):
        read_defocus_text(p)
    np.testing.assert_allclose(read_defocus_text(p, allow_unusual_defocus=True), 0.003)
    p.write_text("-3.0\n3.0\n")  # overfocus sign
    with pytest.raises(InputError, match="overfocus sign"):
        read_defocus_text(p)
    p.write_text("0.3\n0.3\n")  # near focus: only with a phase plate
    with pytest.raises(InputError, match="line 1: defocus 0.3 is implausible"):
        read_defocus_text(p)
    np.testing.assert_allclose(read_defocus_text(p, phase_plate=True), 0.3)
    write_tilt_angles(tmp_path / "a.rawtlt", [-3, 3])
    assert load_tilt_series(tilt_angles=tmp_path / "a.rawtlt", defocus=p, phase_shift_deg=90).defocus_um[0] == 0.3
    for value in ("3e-6", "35000", "-3", "0.05", "25"):
        with pytest.raises(InputError, match=r"^defocus: defocus .* is implausible"):
            load_tilt_series(tilt_angles=tmp_path / "a.rawtlt", defocus=value)
    ts = load_tilt_series(tilt_angles=tmp_path / "a.rawtlt", defocus="25", allow_unusual_defocus=True)
    assert ts.defocus_um[0] == 25


@pytest.mark.parametrize(
    "factor, fragment",
    [
        (
            0.1,
            r"rlnDefocusU: row 1 \(line 19\): defocus 3120 A = 0.312 um is implausible; expected Angstrom as in "
            r"RELION STAR, 0.5-20 um underfocus \(looks like nanometres: 3.12 um\?\)",
        ),
        (10, r"rlnDefocusU: row 1 \(line 19\): defocus 312000 A = 31.2 um is implausible"),
        (1e-4, r"rlnDefocusU: row 1 \(line 19\): defocus 3.12 A = 0.000312 um is implausible.*micrometres: 3.12 um\?"),
    ],
)
def test_relion_defocus_in_the_wrong_unit_is_refused(tmp_path, factor, fragment):
    star = _small_relion(tmp_path, _scale("rlnDefocusU", factor))
    with pytest.raises(InputError, match=fragment) as exc:
        read_relion5(star)
    assert "\n" not in str(exc.value)
    assert read_relion5(star, allow_unusual_defocus=True).defocus_u_um[0] == pytest.approx(3.12 * factor)


def test_relion_near_focus_defocus_needs_a_phase_plate(tmp_path):
    near = _small_relion(tmp_path, lambda c, t: "3000" if c in ("rlnDefocusU", "rlnDefocusV") else t)
    with pytest.raises(InputError, match="0.3 um is implausible"):
        read_relion5(near)
    text = (
        (tmp_path / SMALL_TS.name)
        .read_text()
        .replace("_rlnTomoYShiftAngst #12", "_rlnTomoYShiftAngst #12\n_rlnPhaseShift #13")
    )
    text = "\n".join(ln + " 90.0" if ln.startswith("frames/") else ln for ln in text.splitlines()) + "\n"
    (tmp_path / SMALL_TS.name).write_text(text)
    ts = read_relion5(near)
    assert ts.defocus_um[0] == pytest.approx(0.3) and ts.phase_shift_deg[0] == 90


def test_warp_defocus_in_the_wrong_unit_is_refused(tmp_path):
    p = _edit_xml(tmp_path, 'Value="3.05"', 'Value="3050"')
    with pytest.raises(InputError, match=r"GridCTF: tilt 2: defocus 3050 is implausible"):
        read_warp_xml(p)
    # a tilt Warp does not use is not checked
    p = _edit_xml(tmp_path, '<Node X="0" Y="0" Z="3" Value="3.2" />', '<Node X="0" Y="0" Z="3" Value="0.01" />', 1)
    assert read_warp_xml(p).excluded[3]


def test_implausible_dose_and_pixel_size(tmp_path):
    # e/nm^2 written as e/A^2: x100
    star = _small_relion(tmp_path, _scale("rlnMicrographPreExposure", 100))
    with pytest.raises(
        InputError,
        match=r"rlnMicrographPreExposure: row 1 \(line 19\): accumulated dose 1200 e/A\^2 "
        r"is implausible; expected e/A\^2 \(not e/nm\^2\)",
    ):
        read_relion5(star)
    assert read_relion5(star, allow_unusual_dose=True).accumulated_dose[0] == 1200
    star = _small_relion(tmp_path, lambda c, t: "-3" if c == "rlnMicrographPreExposure" else t)
    with pytest.raises(InputError, match="accumulated dose -3 is negative"):
        read_relion5(star, allow_unusual_dose=True)
    p = tmp_path / "d.txt"
    p.write_text("0\n600\n1200\n")
    with pytest.raises(InputError, match=r"line 3: dose 1200 e/A\^2 is implausible"):
        read_dose(p)
    p.write_text("400\n400\n400\n")
    with pytest.raises(InputError, match=r"line 3: the doses add up to 1200 e/A\^2"):
        read_dose(p, per_tilt=True)
    mdoc = (FIXTURES / "small_ts.mrc.mdoc").read_text()
    (tmp_path / "m.mdoc").write_text(mdoc.replace("ExposureDose = 3.0", "ExposureDose = 500.0"))
    # acquired Z 2, 3, 1, 0, 4: the sum passes 1000 at Z 1
    with pytest.raises(InputError, match=r"ExposureDose: line 22 \[ZValue = 1\]: the doses add up to 1009.2 e/A\^2"):
        read_mdoc(tmp_path / "m.mdoc")
    (tmp_path / "m.mdoc").write_text(mdoc.replace("PixelSpacing = 2.125", "PixelSpacing = 0"))
    with pytest.raises(InputError, match=r"PixelSpacing: pixel size 0; expected Angstrom > 0"):
        read_mdoc(tmp_path / "m.mdoc")
    star = _small_relion(tmp_path)
    star.write_text(star.read_text().replace("1.350000 relion5", "0.000000 relion5"))
    with pytest.raises(InputError, match=r"rlnTomoTiltSeriesPixelSize: pixel size 0; expected Angstrom > 0"):
        read_relion5(star)
    with pytest.raises(InputError, match="pixel size"):
        TiltSeries([0.0, 3.0], pixel_size_angstrom=0.0)


# --------------------------------------------------------------------------- missing columns are not zeros


def test_relion_without_dose_column_is_an_error_unless_allowed(tmp_path):
    star = _small_relion(tmp_path, columns={"rlnMicrographPreExposure"})
    with pytest.raises(InputError, match=r"rlnMicrographPreExposure: column missing: no dose.*--allow-missing-dose"):
        read_relion5(star)
    with pytest.raises(InputError, match="rlnMicrographPreExposure: column missing"):
        load_tilt_series(relion5=star)
    assert np.all(read_relion5(star, allow_missing_dose=True).accumulated_dose == 0)
    # a dose file supplies it
    ts = load_tilt_series(relion5=star, dose=FIXTURES / "ts5_dose.txt")
    np.testing.assert_allclose(ts.accumulated_dose, [12, 6, 0, 3, 9])
    # 0 for every tilt is no dose information either
    zero = _small_relion(tmp_path, lambda c, t: "0.0" if c == "rlnMicrographPreExposure" else t)
    with pytest.raises(InputError, match="rlnMicrographPreExposure: dose is 0 for every tilt"):
        read_relion5(zero)


def test_relion_defocus_v_without_u_is_an_error(tmp_path):
    star = _small_relion(tmp_path, columns={"rlnDefocusU"})
    with pytest.raises(InputError, match="rlnDefocusU: column missing while rlnDefocusV is present"):
        read_relion5(star)
    # neither: no defocus (it is optional); U alone: no astigmatism
    assert not read_relion5(_small_relion(tmp_path, columns={"rlnDefocusU", "rlnDefocusV"})).has_defocus
    ts = read_relion5(_small_relion(tmp_path, columns={"rlnDefocusV"}))
    np.testing.assert_allclose(ts.defocus_v_um, ts.defocus_u_um)


def test_mdoc_and_warp_without_dose_are_errors_unless_allowed(tmp_path):
    text = (FIXTURES / "small_ts.mrc.mdoc").read_text()
    p = tmp_path / "nodose.mdoc"
    p.write_text("\n".join(line for line in text.splitlines() if not line.startswith("ExposureDose")))
    with pytest.raises(InputError, match=r"ExposureDose: no ExposureDose in the sections"):
        read_mdoc(p)
    assert np.all(read_mdoc(p, allow_missing_dose=True).accumulated_dose == 0)
    # SerialEM writes ExposureDose = 0 without a dose calibration
    p.write_text(re.sub(r"ExposureDose = [0-9.]+", "ExposureDose = 0", text))
    with pytest.raises(InputError, match="ExposureDose: dose is 0 for every tilt"):
        read_mdoc(p)
    x = _edit_xml(tmp_path, "<Dose>", "<DoseX>").read_text().replace("</Dose>", "</DoseX>")
    (tmp_path / "nodose.xml").write_text(x)
    with pytest.raises(InputError, match=r"Dose: no <Dose> list"):
        read_warp_xml(tmp_path / "nodose.xml")
    assert np.all(read_warp_xml(tmp_path / "nodose.xml", allow_missing_dose=True).accumulated_dose == 0)


def test_cli_missing_dose_needs_allow_missing_dose_or_no_dose(tmp_path, capsys):
    import argparse

    from tomomatch.cli._metadata_args import add_tilt_metadata_arguments, tilt_series_from_args

    star = _small_relion(tmp_path, columns={"rlnMicrographPreExposure"})
    assert main(["metadata", "--relion5-tomograms", str(star)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rlnMicrographPreExposure: column missing" in err
    assert main(["metadata", "--relion5-tomograms", str(star), "--allow-missing-dose", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accumulated_dose"] == [0.0] * 5
    # match's --no-dose passes allow_missing_dose to the readers
    parser = argparse.ArgumentParser()
    add_tilt_metadata_arguments(parser)
    parser.add_argument("--no-dose", action="store_true")
    with pytest.raises(InputError, match="column missing"):
        tilt_series_from_args(parser.parse_args(["--relion5-tomograms", str(star)]))
    ts = tilt_series_from_args(parser.parse_args(["--relion5-tomograms", str(star), "--no-dose"]))
    assert np.all(ts.accumulated_dose == 0)


# --------------------------------------------------------------------------- duplicate angles, non-finite axis


def test_duplicate_tilt_angles_are_errors(tmp_path):
    p = tmp_path / "a.rawtlt"
    p.write_text("-3\n0\n3\n0.0\n")
    with pytest.raises(InputError, match=r"a.rawtlt: line 4: tilt angle 0 repeats line 2; expected each tilt"):
        read_tilt_angles(p)
    star = _small_relion(tmp_path, lambda c, t: "3.01" if c == "rlnTomoYTilt" and t == "6.01000" else t)
    with pytest.raises(InputError, match=r"rlnTomoYTilt: row 5 \(line 23\): tilt angle 3.01 repeats row 4 \(line 22\)"):
        read_relion5(star)
    mdoc = (FIXTURES / "small_ts.mrc.mdoc").read_text()
    (tmp_path / "m.mdoc").write_text(mdoc.replace("TiltAngle = 6.0", "TiltAngle = 3.0"))
    with pytest.raises(
        InputError,
        match=r"TiltAngle: line \d+ \[ZValue = 4\]: tilt angle 3 repeats line \d+ "
        r"\[ZValue = 3\]",
    ):
        read_mdoc(tmp_path / "m.mdoc")
    aln = (FIXTURES / "no_offsets.aln").read_text()
    (tmp_path / "a.aln").write_text(aln.replace("0.00      2.00", "0.00      0.00"))
    with pytest.raises(InputError, match=r"TILT: line 7: tilt angle 0 repeats line 6"):
        read_aln(tmp_path / "a.aln")
    with pytest.raises(InputError, match=r"tilt angle 3 at tilts 2 and 3"):
        TiltSeries([0.0, 3.0, 3.0])


def test_non_finite_tilt_axis_is_an_error(tmp_path, capsys):
    mdoc = (FIXTURES / "small_ts.mrc.mdoc").read_text()
    (tmp_path / "m.mdoc").write_text(mdoc.replace("Tilt axis angle = 85.3", "Tilt axis angle = 1e999"))
    with pytest.raises(InputError, match=r"Tilt axis angle: '1e999' is not a finite number"):
        read_mdoc(tmp_path / "m.mdoc")
    assert main(["metadata", "--mdoc", str(tmp_path / "m.mdoc"), "--json"]) == 2
    assert "Infinity" not in capsys.readouterr().out
    aln = (FIXTURES / "no_offsets.aln").read_text()
    (tmp_path / "a.aln").write_text(aln.replace("86.0000", "inf", 1))
    with pytest.raises(InputError, match=r"line 5: .*ROT 'inf' is not a finite number"):
        read_aln(tmp_path / "a.aln")
    with pytest.raises(InputError, match="tilt_axis_angle_deg"):
        TiltSeries([0.0, 3.0], tilt_axis_angle_deg=float("inf"))


# --------------------------------------------------------------------------- RELION STAR values and structure


def test_relion_non_numeric_and_nan_values(tmp_path):
    star = _small_relion(tmp_path, lambda c, t: "nan" if c == "rlnTomoYTilt" and t == "3.01000" else t)
    with pytest.raises(
        InputError,
        match=r"rlnTomoYTilt: row 4: NaN is not a finite number; expected a number "
        r"\(line 22\)",
    ) as exc:
        read_relion5(star)
    assert "np.float64" not in str(exc.value)
    # the global table: a text voltage, a NaN binning, a hand of 2524
    for old, new, fragment in (
        ("300.000000", "abc", r"rlnVoltage: 'abc' for 'TS_small' is not a finite number"),
        ("8.000000", "nan", r"rlnTomoTomogramBinning: NaN for 'TS_small' is not a finite"),
        ("-1.00000", "2524", r"rlnTomoHand: rlnTomoHand 2524; expected \+1 or -1"),
        ("-1.00000", "inf", r"rlnTomoHand: rlnTomoHand inf; expected \+1 or -1"),
        (
            "300.000000",
            "300000",
            r"rlnVoltage: voltage 300000 is implausible; expected kV, "
            r"20-1000 \(looks like volts: 300 kV\?\)",
        ),
    ):
        star = _small_relion(tmp_path)
        star.write_text(SMALL_STAR.read_text().replace(old, new, 1))
        with pytest.raises(InputError, match=fragment) as exc:
            read_relion5(star)
        assert "\n" not in str(exc.value) and "np.float64" not in str(exc.value)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda ln: ln + " 1.0", r"line 23: 13 values in a row of data_TS_small; expected 12, one per column"),
        (lambda ln: ln.rsplit(" ", 2)[0], r"line 23: 10 values in a row of data_TS_small; expected 12"),
        (lambda ln: ln.replace("frames/", '"frames/', 1), r"line 23: unbalanced quote"),
    ],
)
def test_relion_ragged_rows_are_one_line_with_the_line(tmp_path, change, fragment):
    star = _small_relion(tmp_path)
    lines = (tmp_path / SMALL_TS.name).read_text().splitlines()
    lines[22] = change(lines[22].rstrip())
    (tmp_path / SMALL_TS.name).write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=fragment) as exc:
        read_relion5(star)
    assert "\n" not in str(exc.value) and str(tmp_path / SMALL_TS.name) in str(exc.value)


def test_relion_structure_errors(tmp_path):
    star = _small_relion(tmp_path)
    ts = tmp_path / SMALL_TS.name
    text = ts.read_text()
    ts.write_text(text.replace("_rlnTomoZRot #10", "_rlnTomoYTilt #10"))
    with pytest.raises(InputError, match=r"line 16: column rlnTomoYTilt appears twice"):
        read_relion5(star)
    ts.write_bytes(text.encode().replace(b"frames/TS_small_0.0", b"frames/TS\xff_0.0"))
    with pytest.raises(InputError, match=r"line 21: byte 0xff is not UTF-8 text"):
        read_relion5(star)
    ts.write_text("data_TS_small\n\n")
    with pytest.raises(InputError, match=r"line 1: data_TS_small has no loop_"):
        read_relion5(star)


def test_cli_metadata_into_a_closed_pipe_is_quiet(tmp_path, monkeypatch):
    """``tomomatch metadata ... | head -1``: the reader goes away; no BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    write_tilt_angles(tmp_path / "many.rawtlt", np.linspace(-89, 89, 2001))
    # a child whose pipe is closed before it writes (head has exited): a deterministic EPIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "tomomatch", "metadata", "-a", str(tmp_path / "many.rawtlt"), "--allow-missing-dose"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""  # no traceback, no "Exception ignored"
    # in process: a stdout that breaks on write
    r, w = os.pipe()

    class Broken:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            return w

    monkeypatch.setattr(sys, "stdout", Broken())
    try:
        assert main(["metadata", "-a", str(tmp_path / "many.rawtlt"), "--json", "--allow-missing-dose"]) == 141
    finally:
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------------- one-line messages from libraries


def test_mdoc_library_errors_name_the_line_and_key(tmp_path):
    text = (FIXTURES / "small_ts.mrc.mdoc").read_text()
    p = tmp_path / "bad.mdoc"
    p.write_text(text.replace("TiltAngle = -3.0", "TiltAngle = minus three"))
    with pytest.raises(
        InputError,
        match=r"bad.mdoc: line 23: \[ZValue = 1\]: TiltAngle: Input should be a valid "
        r"number.*\(got 'minus three'\)",
    ) as exc:
        read_mdoc(p)
    assert "validation error for" not in str(exc.value) and "\n" not in str(exc.value)
    p.write_text(text.replace("ImageSize = 1024 1024", "ImageSize 1024 1024"))
    with pytest.raises(InputError, match=r"line 4: 'ImageSize 1024 1024'; expected 'Key = value'"):
        read_mdoc(p)
    p.write_text(text.replace("StagePosition = 10.5 -20.25", "StagePosition = 10.5", 1))
    with pytest.raises(InputError, match=r"line 13: \[ZValue = 0\]: StagePosition"):
        read_mdoc(p)
    p.write_bytes(text.encode().replace(b"Magnification = 64000", b"Magnification = \xff\xfe", 1))
    with pytest.raises(InputError, match=r"line 14: .*Magnification"):
        read_mdoc(p)


@pytest.mark.parametrize(
    "old, new, fragment",
    [
        (
            "    1    86.0000    1.00000      0.500      0.500     1.00     1.00     1.00     0.00      0.00",
            "    1    86.0000    1.00000",
            r"line 6: not a readable AreTomo .aln file: 3 fields; expected 10 "
            r"\(SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT\)",
        ),
        ("# RawSize = 512 512 3", "# RawSize = 512 512", r"line 2: .*2 values; expected 3 \(width height sections\)"),
        ("# NumPatches = 0", "# NumPatches = none", r"line 3: .*NumPatches 'none' is not an integer"),
        ("    2    86", "  2.5    86", r"line 7: .*SEC '2.5' is not an integer"),
    ],
)
def test_aln_library_errors_name_the_line_and_column(tmp_path, old, new, fragment):
    text = (FIXTURES / "no_offsets.aln").read_text()
    assert old in text
    p = tmp_path / "bad.aln"
    p.write_text(text.replace(old, new))
    with pytest.raises(InputError, match=fragment) as exc:
        read_aln(p)
    msg = str(exc.value)
    assert "\n" not in msg and "list index out of range" not in msg and "validation error" not in msg


def test_override_errors_blame_the_option(tmp_path, capsys):
    write_tilt_angles(tmp_path / "a.rawtlt", [-3, 0, 3])
    for args, fragment in (
        (["--voltage", "-300"], "--voltage: voltage -300 is implausible; expected kV"),
        (["--voltage", "300000"], "looks like volts: 300 kV?"),
        (["--cs", "2700"], "--cs: Cs 2700 is implausible; expected mm"),
        (["--amplitude-contrast", "7"], "--amplitude-contrast: amplitude contrast 7"),
        (["--phase-shift", "nan"], "--phase-shift: NaN is not a finite number"),
        (["--defocus", "3e-6"], "--defocus: defocus 3e-06 is implausible"),
    ):
        assert main(["metadata", "-a", str(tmp_path / "a.rawtlt"), "--allow-missing-dose"] + args) == 2
        err = capsys.readouterr().err
        assert fragment in err and "a.rawtlt" not in err and err.count("\n") == 1
    with pytest.raises(InputError) as exc:
        load_tilt_series(tilt_angles=tmp_path / "a.rawtlt", voltage_kv=-300, allow_missing_dose=True)
    assert str(exc.value).startswith("voltage_kv: ")
    assert (
        main(
            [
                "metadata",
                "-a",
                str(tmp_path / "a.rawtlt"),
                "--defocus",
                "30",
                "--allow-unusual-defocus",
                "--allow-missing-dose",
            ]
        )
        == 0
    )
