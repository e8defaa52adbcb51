"""Big reads are estimated against the machine's memory before they allocate (issue 15).

An MRC file whose header claims more voxels than fit (e.g. 10^5 x 10^5 x 10^3 float32: 37 TB) is
refused from its header, naming the file and the size in GiB, before any data are read; so is an
``--angle-list`` file of too many lines, and a simulation whose volumes cannot fit.
"""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from tomomatch import mrcio
from tomomatch import resources as R
from tomomatch.angles import read_angle_list
from tomomatch.cli import main
from tomomatch.errors import InputError
from tomomatch.mrcio import read_volume, write_volume

from _synthetic import asymmetric_template, sphere_mask


def _claims(path, nx, ny, nz, mode=2):
    """A small MRC file whose header claims nx x ny x nz voxels of ``mode``."""
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ones((4, 4, 4), np.float32))
        m.voxel_size = 10.0
    with mrcfile.open(path, mode="r+", permissive=True, header_only=True) as m:
        m.header.nx, m.header.ny, m.header.nz, m.header.mode = nx, ny, nz, mode
    return path


def test_a_huge_header_is_refused_before_the_data_are_read(tmp_path, monkeypatch):
    p = _claims(tmp_path / "huge.mrc", 100_000, 100_000, 1_000)
    opened = []
    real_open = mrcfile.open

    def spy(*a, **k):
        opened.append(k.get("header_only", False))
        return real_open(*a, **k)

    monkeypatch.setattr(mrcio.mrcfile, "open", spy)
    with pytest.raises(InputError) as e:
        read_volume(p, what="tomogram")
    msg = str(e.value)
    assert msg.startswith(f"{p}: header: ") and "\n" not in msg
    assert "100000 x 100000 x 1000 voxels" in msg and "GiB of memory" in msg and "46,566 GiB" in msg, msg
    assert opened == [True]  # only the header was opened


def test_the_estimate_follows_the_mode_and_the_limit(tmp_path, monkeypatch):
    p = _claims(tmp_path / "int8.mrc", 1000, 1000, 100, mode=0)  # 1e8 voxels: 1 + 4 + 1 bytes each
    monkeypatch.setattr(R, "MAX_MEMORY_BYTES", int(6e8))
    mrcio.check_volume_fits(p)  # exactly fits
    monkeypatch.setattr(R, "MAX_MEMORY_BYTES", int(6e8) - 1)
    with pytest.raises(InputError, match="MRC mode 0"):
        mrcio.check_volume_fits(p)
    # a normal file still reads, and a damaged one still gets its own message
    small = tmp_path / "small.mrc"
    write_volume(small, np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32), 10.0)
    assert read_volume(small)[0].shape == (8, 8, 8)
    (tmp_path / "junk.mrc").write_bytes(b"not an mrc file at all" * 10)
    with pytest.raises(InputError, match="MRC"):
        read_volume(tmp_path / "junk.mrc")


@pytest.mark.parametrize("role", ["-v", "-t", "-m"])
def test_match_refuses_a_huge_tomogram_template_or_mask_in_one_line(role, tmp_path, capsys):
    files = {"-v": tmp_path / "tomo.mrc", "-t": tmp_path / "tmpl.mrc", "-m": tmp_path / "mask.mrc"}
    rng = np.random.default_rng(1)
    write_volume(files["-v"], rng.normal(size=(16, 16, 16)).astype(np.float32), 10.0)
    write_volume(files["-t"], asymmetric_template(8), 10.0)
    write_volume(files["-m"], sphere_mask(8, 3), 10.0)
    _claims(files[role], 100_000, 100_000, 1_000)
    argv = [a for k, v in files.items() for a in (k, str(v))]
    rc = main(["match", *argv, "-d", str(tmp_path / "out"), "--angular-step", "90", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(files[role]) in err and "GiB" in err, err
    assert not (tmp_path / "out").exists()


def test_a_huge_angle_list_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    p = tmp_path / "angles.txt"
    p.write_text("0 0 0\n10 20 30\n" * 500)
    assert len(read_angle_list(str(p)).rotations) == 1000
    size = p.stat().st_size
    # the file itself (2 bytes per byte: the bytes and the text)
    monkeypatch.setattr(R, "MAX_MEMORY_BYTES", 2 * size - 1)
    with pytest.raises(InputError, match="reading the file needs about") as e:
        read_angle_list(str(p))
    assert str(e.value).startswith(f"{p}: --angle-list: ")
    # its lines: refused before the rows are parsed
    from tomomatch import angles as A

    monkeypatch.setattr(R, "MAX_MEMORY_BYTES", 2 * size + A.ANGLE_LIST_BYTES_PER_LINE * 1001 - 1)
    monkeypatch.setattr(A, "_parse_rotations", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(InputError, match="reading 1,001 lines"):
        read_angle_list(str(p))


def test_simulate_refuses_volumes_that_cannot_fit(tmp_path, capsys):
    for extra in (["--binning", "99999999999999999999"], ["--size", "100000", "100000", "100000"]):
        rc = main(["simulate", "-o", str(tmp_path / "sim"), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and ("GiB" in err or "TiB" in err), err
        assert not (tmp_path / "sim").exists()


def test_memory_limit_is_the_physical_memory_unless_set(monkeypatch):
    import os

    assert R.memory_limit_bytes() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(R, "MAX_MEMORY_BYTES", 123)
    assert R.memory_limit_bytes() == 123
    assert (
        R.gib(2**30) == "1 GiB"
        and R.gib(200 * 2**30) == "200 GiB"
        and R.gib(2**41) == "2,048 GiB"
        and R.gib(2**53) == "8.19e+03 TiB"
    )
