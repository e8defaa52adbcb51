"""Tilt metadata readers and writers: real files, synthetic fixtures, round trips, bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tomomatch.errors import InputError
from tomomatch.metadata import (read_defocus_text, read_dose, read_imod_defocus, read_relion5,
                                read_tilt_angles, write_dose, write_imod_defocus, write_relion5,
                                write_tilt_angles)
from tomomatch.tiltseries import TiltSeries

FIXTURES = Path(__file__).parent / "fixtures" / "tilt_metadata"


def _shared_tilt_metadata() -> Path | None:
    for root in (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")):
        d = root / "tilt_metadata"
        if (d / "pytom_test_angles.rawtlt").is_file():
            return d
    return None


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
    return TiltSeries(angles, accumulated_dose=dose, defocus_u_um=du, defocus_v_um=du - 0.2,
                      astigmatism_angle_deg=np.linspace(-30, 60, n),
                      phase_shift_deg=np.linspace(0, 90, n) if phase else None,
                      voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.1, pixel_size_angstrom=2.5,
                      hand=hand, tilt_axis_angle_deg=-87.5)


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
    assert imod["defocus_u_um"][0] == pytest.approx(3.083)   # 3083 nm
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
    np.testing.assert_allclose(r["tilt_angles_deg"], [-10, 10])   # flag 16 inverts
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
    for field in ("tilt_angles_deg", "accumulated_dose", "defocus_u_um", "defocus_v_um",
                  "astigmatism_angle_deg", "phase_shift_deg"):
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


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("content, fragment", [
    ("1.0\n2.0\nabc\n", r"line 3: 'abc' is not a number"),
    ("1.0\nnan\n", r"line 2: 'nan' is not a finite number"),
    ("", "is empty"),
    ("-30\n95\n", r"line 2: tilt angle 95 outside -90..90"),
])
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


@pytest.mark.parametrize("content, fragment", [
    ("1 1 0 0 3000 4\n", "version 4 not supported"),
    ("1 0 0 0 0 3\n1 1 0 0 3000\n", r"line 2: 5 fields; expected 7"),
    ("1 1 0 0 3000 2\n3 3 6 6 3000\n", "view 2 has no line"),
    ("1 1 0 0 3000 2\n1 1 0 0 3000\n", r"line 2: view 1 given twice"),
    ("1 1 0 0 3e6 2\n", "implausible"),
    ("1 1 0 0 x 2\n", r"line 1: 'x' is not a number"),
])
def test_bad_imod_defocus(tmp_path, content, fragment):
    p = tmp_path / "bad.defocus"
    p.write_text(content)
    with pytest.raises(InputError, match=fragment):
        read_imod_defocus(p)
