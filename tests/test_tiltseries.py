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


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(tilt_angles_deg=[0, 95]), "outside -90..90"),
    (dict(tilt_angles_deg=[0, np.nan]), "NaN"),
    (dict(tilt_angles_deg=[0, 3], accumulated_dose=[1]), "expected one per tilt"),
    (dict(tilt_angles_deg=[0, 3], defocus_u_um=[30000, 30000]), "implausible"),
    (dict(tilt_angles_deg=[0, 3], hand=2), "handedness"),
    (dict(tilt_angles_deg=[]), "no tilts"),
])
def test_bad_values_raise_one_line(kwargs, fragment):
    with pytest.raises(InputError, match=fragment) as err:
        TiltSeries(source="x.star", **kwargs)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("x.star")
