import os
import stat

import mrcfile
import numpy as np
import pytest

from tomomatch.errors import InputError
from tomomatch.mrcio import read_volume, write_volume


def test_write_read_round_trip_voxel_size_and_axis_order(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # z, y, x
    p = write_volume(tmp_path / "v.mrc", data, 7.5)
    with mrcfile.open(p) as m:
        assert (int(m.header.nx), int(m.header.ny), int(m.header.nz)) == (4, 3, 2)
        assert m.voxel_size.x == pytest.approx(7.5)
    back, vs = read_volume(p)
    assert vs == pytest.approx(7.5)
    assert np.array_equal(back, data)


def test_write_is_deterministic_and_world_readable(tmp_path):
    data = np.ones((3, 3, 3), np.float32)
    a = write_volume(tmp_path / "a.mrc", data, 1.0).read_bytes()
    b = write_volume(tmp_path / "b.mrc", data, 1.0).read_bytes()
    assert a == b
    mode = stat.S_IMODE(os.stat(tmp_path / "a.mrc").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert not list(tmp_path.glob("*.part"))


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "missing.mrc")
    (tmp_path / "x.mrc").write_text("not an mrc")
    with pytest.raises(InputError, match="MRC"):
        read_volume(tmp_path / "x.mrc")
    p = write_volume(tmp_path / "z.mrc", np.ones((2, 2, 2), np.float32), 0.0)
    with pytest.raises(InputError, match="voxel size"):
        read_volume(p)
    assert read_volume(p, 3.0)[1] == 3.0
    bad = np.ones((2, 2, 2), np.float32)
    bad[0, 0, 0] = np.nan
    p = write_volume(tmp_path / "n.mrc", bad, 1.0)
    with pytest.raises(InputError, match="NaN"):
        read_volume(p)
