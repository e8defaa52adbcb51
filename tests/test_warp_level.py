"""Warp's sample levelling angles (LevelAngleX/Y) and Warp's phase-flipped reconstructions.

The expected values are derived from Warp's own source, not from tomomatch:

* ``warpem/warp`` ``WarpLib/TiltSeries/TiltSeries.cs``, ``GetPositionInAllTilts`` (and
  ``GetAngleInAllTilts``, ``GetPositionsInOneTilt``): a volume point ``r`` (centred, Angstrom) is
  seen in tilt ``t`` at ``M_t r`` with
  ``M_t = Matrix3.Euler(0, (Angles[t] + LevelAngleY) * ToRad, -TiltAxisAngles[t] * ToRad)
  * Matrix3.RotateX(LevelAngleX * ToRad)``; X and Y of ``M_t r`` are the image position, Z the
  depth that enters the defocus (``result.Z = GridDefocus + 1e-4 * Z``).
* ``WarpLib/Tools/Matrix3.cs``: the constructor takes the entries column by column
  (``m11, m21, m31, m12, ...``); ``RotateX(a) = Matrix3(1, 0, 0, 0, c, s, 0, -s, c)``;
  ``Euler(rot, tilt, psi)`` sets ``M11 = cg cc - sg sa`` ... ``M33 = cb`` (written out in
  :func:`_warp_euler` below exactly as there); ``operator *`` is the ordinary matrix product.

tomomatch's frame of a tilt is ``conventions.tilt_frame(tilt, x_tilt, z_rot)`` (rows: image x,
image y, beam/depth), so the reader is right if ``tilt_frame`` of what it returns equals Warp's
``M_t`` for the same tilt, levelling angles and axis angle.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from tomomatch.conventions import tilt_frame
from tomomatch.errors import InputError
from tomomatch.metadata import load_tilt_series, read_warp_xml

from _cli_inputs import run_cli
from _synthetic import asymmetric_template, sphere_mask

FIXTURES = Path(__file__).parent / "fixtures" / "tilt_metadata"
WARP_XML = FIXTURES / "warp_small.xml"


def _warp_matrix3(m11, m21, m31, m12, m22, m32, m13, m23, m33) -> np.ndarray:
    """Warp's ``new Matrix3(...)``: arguments column by column (Matrix3.cs)."""
    return np.array([[m11, m12, m13], [m21, m22, m23], [m31, m32, m33]], dtype=float)


def _warp_rotate_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return _warp_matrix3(1, 0, 0, 0, c, s, 0, -s, c)  # Matrix3.RotateX


def _warp_euler(rot: float, tilt: float, psi: float) -> np.ndarray:
    """Matrix3.Euler(rot, tilt, psi), entry by entry as in Matrix3.cs."""
    ca, cb, cg = math.cos(rot), math.cos(tilt), math.cos(psi)
    sa, sb, sg = math.sin(rot), math.sin(tilt), math.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty((3, 3))
    m[0] = [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb]
    m[1] = [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb]
    m[2] = [sc, ss, cb]
    return m


def _warp_tilt_matrix(angle_deg: float, axis_deg: float, level_x_deg: float, level_y_deg: float) -> np.ndarray:
    """TiltSeries.GetPositionInAllTilts' ``TiltMatrices[t]``."""
    r = math.pi / 180
    return _warp_euler(0, (angle_deg + level_y_deg) * r, -axis_deg * r) @ _warp_rotate_x(level_x_deg * r)


def _xml(tmp_path, level_x="1.5", level_y="-0.5", name="edited.xml") -> Path:
    text = WARP_XML.read_text().replace('LevelAngleX="1.5"', f'LevelAngleX="{level_x}"')
    text = text.replace('LevelAngleY="-0.5"', f'LevelAngleY="{level_y}"')
    p = tmp_path / name
    p.write_text(text)
    return p


def test_warp_matrices_sanity():
    """The transcribed Warp matrices: RotateX is the right-handed Rx, Euler(0, b, 0) = Ry(-b)."""
    a = math.radians(20)
    np.testing.assert_allclose(
        _warp_rotate_x(a), [[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]]
    )
    np.testing.assert_allclose(
        _warp_euler(0, a, 0), [[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]]
    )


def test_level_angles_hand_computed(tmp_path):
    """Warp angle 30, LevelAngleY -10, LevelAngleX 10 (Warp's formula, worked by hand).

    ``Euler(0, 30 - 10, 0) = Ry(-20)`` (rows ``[cos20, 0, -sin20]``, ``[0, 1, 0]``,
    ``[sin20, 0, cos20]``), times ``RotateX(10)`` (rows ``[1, 0, 0]``, ``[0, cos10, -sin10]``,
    ``[0, sin10, cos10]``). Third row (the depth): ``[sin20, cos20 sin10, cos20 cos10]`` =
    ``[0.342020, 0.163176, 0.925417]``; first row (image x): ``[cos20, -sin20 sin10, -sin20 cos10]``
    = ``[0.939693, -0.059391, -0.336824]``. In tomomatch's frame that is tilt -20 (= -30 - (-10))
    and x tilt +10. A point at x = 100 A sits at depth +34.20 A and image x +93.97 A.
    """
    p = _xml(tmp_path, "10", "-10")
    p.write_text(re.sub(r"<AxisAngle>.*?</AxisAngle>", "<AxisAngle>0 0 0 0 0</AxisAngle>", p.read_text(), flags=re.S))
    ts = read_warp_xml(p)
    i = int(np.flatnonzero(ts.extra["warp_angles_deg"] == 30)[0])
    assert ts.tilt_angles_deg[i] == pytest.approx(-20.0)
    assert ts.x_tilt_deg[i] == pytest.approx(10.0)
    frame = tilt_frame(ts.tilt_angles_deg[i], ts.x_tilt_deg[i], 0.0)
    np.testing.assert_allclose(frame[2], [0.342020, 0.163176, 0.925417], atol=1e-6)
    np.testing.assert_allclose(frame[0], [0.939693, -0.059391, -0.336824], atol=1e-6)
    np.testing.assert_allclose(frame @ [100.0, 0, 0], [93.9693, 0, 34.2020], atol=1e-4)
    lv = ts.extra["level_angles"]
    assert (lv["LevelAngleX"], lv["LevelAngleY"], lv["x_tilt_deg"], lv["tilt_angle_offset_deg"]) == (10, -10, 10, 10)
    np.testing.assert_allclose(ts.extra["unleveled_tilt_angles_deg"], -ts.extra["warp_angles_deg"])


@pytest.mark.parametrize("level_x, level_y", [("1.5", "-0.5"), ("10.24746", "-10.760223"), ("-7", "4"), ("0", "0")])
def test_tilt_frame_equals_warp_projection(tmp_path, level_x, level_y):
    """Every tilt: tilt_frame(reader's tilt, x tilt, axis) == Warp's TiltMatrices[t] (all 9 entries).

    The second case is the ``ts_autolevel`` result quoted in pytom-match-pick#352.
    """
    ts = read_warp_xml(_xml(tmp_path, level_x, level_y))
    warp = ts.extra["warp_angles_deg"]
    for t in range(ts.n_tilts):
        m = _warp_tilt_matrix(warp[t], 84.5, float(level_x), float(level_y))
        np.testing.assert_allclose(tilt_frame(ts.tilt_angles_deg[t], ts.x_tilt_deg[t], 84.5), m, atol=1e-12)


def test_no_level_angles_changes_nothing(tmp_path):
    text = WARP_XML.read_text().replace(' LevelAngleX="1.5" LevelAngleY="-0.5"', "")
    p = tmp_path / "plain.xml"
    p.write_text(text)
    ts = read_warp_xml(p)
    np.testing.assert_allclose(ts.tilt_angles_deg, [30, 15, 0, -15, -30])
    assert not ts.has_x_tilt and "level_angles" not in ts.extra


def test_tilt_angle_file_gets_the_same_level_offset(tmp_path):
    """-a replaces Warp's angles; Warp still reconstructed with LevelAngleY, so it is applied too."""
    (tmp_path / "a.tlt").write_text("31\n16\n1\n-14\n-29\n")
    ts = load_tilt_series(warp_xml=WARP_XML, tilt_angles=tmp_path / "a.tlt")
    np.testing.assert_allclose(ts.tilt_angles_deg, [31.5, 16.5, 1.5, -13.5, -28.5])
    np.testing.assert_allclose(ts.x_tilt_deg, 1.5)
    assert ts.extra["level_angles"]["applied_to"] == str(tmp_path / "a.tlt")


@pytest.mark.parametrize(
    "level_x, level_y, fragment",
    [
        ("abc", "0", r"LevelAngleX: LevelAngleX='abc' is not a number"),
        ("nan", "0", r"LevelAngleX: LevelAngleX='nan'; expected a finite"),
        ("0", "60", r"LevelAngleY: LevelAngleY='60'; expected a finite sample levelling angle within \+-45"),
    ],
)
def test_bad_level_angles(tmp_path, level_x, level_y, fragment):
    p = _xml(tmp_path, level_x, level_y)
    with pytest.raises(InputError, match=fragment) as exc:
        read_warp_xml(p)
    assert str(p) in str(exc.value)


def test_levelled_tilt_beyond_90_is_refused(tmp_path):
    p = _xml(tmp_path, "0", "-40")
    p.write_text(p.read_text().replace("<Angles>-30", "<Angles>-60"))  # tilt 1: 60 - (-40) = 100
    with pytest.raises(InputError, match=r"Angles - LevelAngleY: tilt 1: tilt angle 100 outside -90..90"):
        read_warp_xml(p)


# --------------------------------------------------------------------------- phase flip


def _match_inputs(d: Path):
    from tomomatch.mrcio import write_volume

    rng = np.random.default_rng(3)
    tomo = rng.normal(0, 0.2, (20, 20, 20)).astype(np.float32)
    write_volume(d / "tomo.mrc", tomo, 10.0)
    write_volume(d / "tmpl.mrc", asymmetric_template(8), 10.0)
    write_volume(d / "mask.mrc", sphere_mask(8, 3.5), 10.0)
    (d / "rot.txt").write_text("0 0 0\n")
    return [
        "match",
        *("-t", d / "tmpl.mrc", "-m", d / "mask.mrc", "-v", d / "tomo.mrc"),
        *("--quiet", "--processes", "1", "--angle-list", d / "rot.txt"),
    ]


def test_warp_xml_defaults_to_abs_ctf(tmp_path):
    """Warp's TiltSeries.ReconstructFull multiplies every tilt's FT by its CTF and divides by |CTF|
    ("Weight and phase-flip image FTs"), with no option to skip it: a Warp tomogram is phase-flipped."""
    import json

    argv = _match_inputs(tmp_path)
    rc, out, err = run_cli(argv + ["-d", tmp_path / "auto", "--warp-xml", WARP_XML])
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if "--ctf abs" in ln]
    assert len(lines) == 1 and "phase-flips" in lines[0] and str(WARP_XML) in lines[0]
    job = json.loads(next((tmp_path / "auto").glob("*_job.json")).read_text())
    assert job["options"]["weighting"]["ctf"] == "abs"
    # an explicit choice wins, silently
    rc, out, err = run_cli(argv + ["-d", tmp_path / "signed", "--warp-xml", WARP_XML, "--ctf", "signed"])
    assert rc == 0, err
    assert "--ctf abs" not in err
    job = json.loads(next((tmp_path / "signed").glob("*_job.json")).read_text())
    assert job["options"]["weighting"]["ctf"] == "signed"
    # other metadata: signed, as before
    (tmp_path / "a.tlt").write_text("-30\n0\n30\n")
    rc, out, err = run_cli(argv + ["-d", tmp_path / "tlt", "-a", tmp_path / "a.tlt", "--defocus", "3", "--no-dose"])
    assert rc == 0, err
    assert "--ctf abs" not in err
    job = json.loads(next((tmp_path / "tlt").glob("*_job.json")).read_text())
    assert job["options"]["weighting"]["ctf"] == "signed"


@pytest.mark.parametrize("ctf_from_reconstruction, expected", [(True, "abs"), (False, "signed")])
def test_batch_rows_follow_the_reconstruction(tmp_path, monkeypatch, ctf_from_reconstruction, expected):
    """batch plans each row as match would: a Warp row gets abs unless the user chose --ctf."""
    from tomomatch import distributed
    from tomomatch.distributed import BatchEntry, run_batch

    _match_inputs(tmp_path)
    planned = []
    real_plan = distributed.plan_match

    def spy(*args, **kwargs):
        plan = real_plan(*args, **kwargs)
        planned.append((plan.name, plan.options.weighting.ctf))
        return plan

    class NoCluster(Exception):
        pass

    def no_cluster(*args, **kwargs):
        raise NoCluster  # planning is done; nothing more is needed

    monkeypatch.setattr(distributed, "plan_match", spy)
    monkeypatch.setattr(distributed, "make_cluster", no_cluster)
    entries = [
        BatchEntry("warp", tmp_path / "tomo.mrc", read_warp_xml(WARP_XML)),
        BatchEntry("bare", tmp_path / "tomo.mrc", None),  # no metadata: no CTF at all
    ]
    lines: list[str] = []
    with pytest.raises(NoCluster):
        run_batch(
            entries,
            tmp_path / "tmpl.mrc",
            tmp_path / "mask.mrc",
            tmp_path / "out",
            match={"angle_list": str(tmp_path / "rot.txt")},
            device="cpu",
            quiet=False,
            log=lines.append,
            ctf_from_reconstruction=ctf_from_reconstruction,
        )
    assert planned == [("warp", expected), ("bare", None)]
    assert sum("--ctf abs" in ln for ln in lines) == (expected == "abs")
