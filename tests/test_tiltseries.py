import numpy as np
import pytest

from tomomatch.errors import InputError
from tomomatch.tiltseries import TiltSeries


def test_defaults_and_derived_values():
    ts = TiltSeries([-3, 0, 3], defocus_u_um=[3.0, 3.1, 3.2], defocus_v_um=[3.2, 3.1, 3.0])
    assert ts.n_tilts == 3
    assert np.allclose(ts.defocus_um, [3.1, 3.1, 3.1])
    assert np.allclose(ts.accumulated_dose, 0)
    assert not ts.excluded.any()


def test_excluded_tilts_are_dropped():
    ts = TiltSeries([-3, 0, 3], accumulated_dose=[3, 0, 6], excluded=[False, True, False])
    inc = ts.included()
    assert np.allclose(inc.tilt_angles_deg, [-3, 3])
    assert np.allclose(inc.accumulated_dose, [3, 6])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(tilt_angles_deg=[0, 95]), "outside -90..90"),
        (dict(tilt_angles_deg=[0, np.nan]), "NaN"),
        (dict(tilt_angles_deg=[0, 3], accumulated_dose=[1]), "expected one per tilt"),
        (dict(tilt_angles_deg=[0, 3], defocus_u_um=[30000, 30000]), "implausible"),
        (dict(tilt_angles_deg=[0, 3], hand=2), "handedness"),
        (dict(tilt_angles_deg=[]), "no tilts"),
    ],
)
def test_bad_values_raise_one_line(kwargs, fragment):
    with pytest.raises(InputError, match=fragment) as err:
        TiltSeries(source="x.star", **kwargs)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("x.star")


@pytest.mark.parametrize(
    "kwargs, field, fragment",
    [
        (dict(tilt_angles_deg=[0, 3, 3.0, 6]), "tilt angle", "tilt angle 3 at tilts 2 and 3"),
        (dict(tilt_angles_deg=[-0.0, 0.0]), "tilt angle", "at tilts 1 and 2"),
        (dict(tilt_angles_deg=[0, 3], tilt_axis_angle_deg=float("inf")), "tilt_axis_angle_deg", "expected a finite"),
        (dict(tilt_angles_deg=[0, 3], tilt_axis_angle_deg=float("nan")), "tilt_axis_angle_deg", "expected a finite"),
        (
            dict(tilt_angles_deg=[0, 3], pixel_size_angstrom=0.0),
            "pixel size",
            "expected a finite number of Angstrom > 0",
        ),
        (dict(tilt_angles_deg=[0, 3], pixel_size_angstrom=float("nan")), "pixel size", "> 0"),
        (dict(tilt_angles_deg=[0, 3], voltage_kv=0.0), "voltage_kv", "expected kV > 0"),
    ],
)
def test_duplicate_angles_non_finite_axis_and_bad_pixel_size(kwargs, field, fragment):
    with pytest.raises(InputError, match=fragment) as err:
        TiltSeries(source="x.star", **kwargs)
    assert err.value.field == field and "\n" not in str(err.value) and str(err.value).startswith("x.star")


def test_json_never_holds_infinity():
    import json

    ts = TiltSeries([-3.0, 0.0, 3.0], tilt_axis_angle_deg=85.0, pixel_size_angstrom=2.0)
    text = json.dumps(ts.to_json(), allow_nan=False)
    assert TiltSeries.from_json(json.loads(text)).n_tilts == 3
    with pytest.raises(InputError, match="tilt angle 3 at tilts 2 and 3"):
        TiltSeries.from_json({**ts.to_json(), "tilt_angles_deg": [0.0, 3.0, 3.0]}, source="job.json")
