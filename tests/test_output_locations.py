"""Every command checks its output location once, before any work (issue 15).

For each command that writes and each kind of bad location (a folder where a file is written, a
file where a folder is written, a missing parent folder, a file as the parent, a folder that may
not be written), ``tomomatch`` exits 2 with one line on stderr naming the path, writes nothing
and leaves no ``.part`` file. A write that fails later with an ``OSError`` (no space, permission,
read-only file system) is one line too (``tomomatch.cli.main``).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from tomomatch.cli import _outputs

from _cli_inputs import OUTPUT_KIND, base_argv, make_inputs, run_cli

COMMANDS = sorted(OUTPUT_KIND)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("outputs_inputs"))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _case(tmp_path: Path, inputs: Path) -> Path:
    d = tmp_path / "in"
    shutil.copytree(inputs, d)
    return d


def _bad_location(kind: str, command: str, tmp_path: Path) -> tuple[Path, str]:
    """(path to give, text the error must contain) for a bad location of ``kind``."""
    out_kind = OUTPUT_KIND[command]
    if kind == "wrong-type":
        if out_kind == "folder":  # a file given as the output folder
            p = tmp_path / "a_file"
            p.write_text("keep\n")
            return p, "is a file; expected an output folder"
        if out_kind == "file":  # a folder given as the output file
            p = tmp_path / "a_folder"
            p.mkdir()
            return p, "is a folder; expected a file name"
        p = tmp_path / "prefix"  # prefix: OUT.json is a folder
        (tmp_path / "prefix.json").mkdir()
        return p, "is a folder; expected a file name"
    if kind == "missing-parent":
        return tmp_path / "no_such_folder" / "out", "does not exist; expected"
    if kind == "file-as-parent":
        (tmp_path / "plain").write_text("x")
        return tmp_path / "plain" / "out", "is a file, not a folder"
    if kind == "read-only":
        ro = tmp_path / "read_only"
        ro.mkdir()
        ro.chmod(0o555)
        if out_kind == "folder" and command in ("match", "batch", "demo"):
            return ro, "not writable"  # an existing output folder that may not be written
        return ro / "out", "not writable"
    raise AssertionError(kind)


KINDS = ["wrong-type", "missing-parent", "file-as-parent", "read-only"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_output_location_is_one_line_and_writes_nothing(command, kind, tmp_path, inputs):
    if kind == "read-only" and IS_ROOT:
        pytest.skip("root ignores folder permissions (see test_unwritable_folder_as_root)")
    d = _case(tmp_path, inputs)
    target, words = _bad_location(kind, command, tmp_path)
    before = _snapshot(tmp_path)
    try:
        rc, _, err = run_cli(base_argv(command, d, target))
    finally:
        for p in tmp_path.rglob("*"):
            if p.is_dir():
                p.chmod(0o755)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tomomatch {command}: error: "), err
    assert str(target) in lines[0] and words in lines[0], err
    assert "--o" in lines[0], err  # the option is named (--output, --out-dir, --out)
    assert _snapshot(tmp_path) == before  # nothing written, no .part file
    assert not list(tmp_path.rglob(".*.part"))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("why", ["permission", "read-only file system"])
def test_unwritable_folder_as_root(command, why, tmp_path, inputs, monkeypatch):
    """The same refusal where permissions cannot be simulated with chmod (root): the checks are
    made to see a folder without write permission, or on a read-only file system."""
    d = _case(tmp_path, inputs)
    folder = tmp_path / "locked"
    folder.mkdir()
    if why == "permission":
        monkeypatch.setattr(_outputs, "_writable", lambda f: Path(f).absolute() != folder.absolute())
    else:
        monkeypatch.setattr(_outputs, "_read_only_fs", lambda f: Path(f).absolute() == folder.absolute())
    target = folder if command in ("match", "batch", "demo") else folder / "out"
    before = _snapshot(tmp_path)
    rc, _, err = run_cli(base_argv(command, d, target))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert str(target) in err and ("not writable" in err if why == "permission" else "read-only" in err), err
    assert _snapshot(tmp_path) == before


def test_a_new_output_folder_in_an_existing_folder_is_made(tmp_path, inputs):
    d = _case(tmp_path, inputs)
    rc, _, err = run_cli(base_argv("match", d, tmp_path / "new_folder"))
    assert rc == 0, err
    assert (tmp_path / "new_folder" / "tomo_job.json").is_file()


def test_match_refuses_a_folder_in_place_of_one_of_its_outputs(tmp_path, inputs):
    d = _case(tmp_path, inputs)
    (tmp_path / "out" / "tomo_scores.mrc").mkdir(parents=True)
    before = _snapshot(tmp_path)
    rc, _, err = run_cli(base_argv("match", d, tmp_path / "out"))
    assert rc == 2 and "'tomo_scores.mrc' in it is a folder" in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "code,words",
    [
        (errno.ENOSPC, "No space left on device; free some space"),
        (errno.EACCES, "Permission denied"),
        (errno.EROFS, "Read-only file system; expected a writable file system"),
    ],
)
def test_os_errors_anywhere_in_a_command_are_one_line(code, words, tmp_path, monkeypatch):
    """An OSError raised outside the atomic writes (here: while the mask is computed) is one line
    naming the file, exit 2; with --debug it is raised."""
    import tomomatch.cli.mask as M

    where = tmp_path / "somewhere" / "file.bin"

    def fail(*a, **k):
        raise OSError(code, os.strerror(code), str(where))

    monkeypatch.setattr(M, "spherical_mask", fail)
    argv = ["mask", "-o", str(tmp_path / "m.mrc"), "-b", "8", "--voxel-size", "10", "--radius", "3"]
    rc, _, err = run_cli(argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"tomomatch mask: error: {where}: ") and words in err, err
    assert not (tmp_path / "m.mrc").exists()
    with pytest.raises(OSError):
        run_cli(["--debug", *argv])


def test_memory_error_is_one_line(tmp_path, monkeypatch):
    import tomomatch.cli.mask as M

    def fail(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(M, "spherical_mask", fail)
    rc, _, err = run_cli(["mask", "-o", str(tmp_path / "m.mrc"), "-b", "8", "--voxel-size", "10", "--radius", "3"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "out of memory" in err, err


def test_argument_errors_are_one_line(capsys):
    for argv in (
        ["mask", "-o", "m.mrc", "-b", "8", "--voxel-size", "10", "--radius", "abc"],
        ["match", "-t", "x"],
        ["nonsense"],
    ):
        rc, _, err = run_cli(argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "error:" in err and "--help" in err, err
