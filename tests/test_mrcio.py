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


# --------------------------------------------------------------------------- bad input and faults


def test_damaged_header_is_one_line_error_not_warnings(tmp_path):
    p = write_volume(tmp_path / "v.mrc", np.random.default_rng(0).normal(size=(8, 8, 8)), 2.0)
    raw = bytearray(p.read_bytes())
    (tmp_path / "short.mrc").write_bytes(bytes(raw[:-100]))  # data block shorter than the header says
    with pytest.raises(InputError) as exc:
        read_volume(tmp_path / "short.mrc", what="tomogram")
    assert "\n" not in str(exc.value) and "short.mrc" in str(exc.value)
    raw[12:16] = np.int32(1).tobytes()  # mode 1 (int16): the data size no longer matches
    (tmp_path / "mode.mrc").write_bytes(bytes(raw))
    with pytest.raises(InputError) as exc:
        read_volume(tmp_path / "mode.mrc", what="tomogram")
    assert "\n" not in str(exc.value)


def test_complex_constant_and_folder_inputs_are_errors(tmp_path):
    with mrcfile.new(tmp_path / "c.mrc") as m:
        m.set_data((np.ones((4, 4, 4)) * (1 + 2j)).astype(np.complex64))
        m.voxel_size = 1.0
    with pytest.raises(InputError, match="complex"):
        read_volume(tmp_path / "c.mrc", what="tomogram")
    write_volume(tmp_path / "z.mrc", np.zeros((6, 6, 6)), 1.0)
    with pytest.raises(InputError, match="every voxel is 0"):
        read_volume(tmp_path / "z.mrc", what="tomogram")
    with pytest.raises(InputError, match="every voxel is 0"):
        read_volume(tmp_path / "z.mrc", what="template")
    assert read_volume(tmp_path / "z.mrc", what="mask")[0].shape == (6, 6, 6)  # a mask may be flat
    with pytest.raises(InputError, match="folder"):
        read_volume(tmp_path, what="tomogram")


def test_unwritable_outputs_are_one_line_and_leave_no_part_files(tmp_path, monkeypatch):
    data = np.ones((3, 3, 3), np.float32)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError) as exc:  # the output folder is a file
        write_volume(tmp_path / "afile" / "v.mrc", data, 1.0)
    assert exc.value.field == "output"
    (tmp_path / "dir.mrc").mkdir()
    with pytest.raises(InputError, match="is a folder"):  # the output file is a folder
        write_volume(tmp_path / "dir.mrc", data, 1.0)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(InputError, match="No space left"):
        write_volume(tmp_path / "v.mrc", data, 1.0)
    assert not list(tmp_path.glob(".*.part")) and not (tmp_path / "v.mrc").exists()
