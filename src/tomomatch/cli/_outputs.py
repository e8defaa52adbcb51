"""Output locations, checked once before a command does any work (issue 15).

Every command that writes calls one of these with the paths it will write, before it reads a
big input or computes anything. Each refuses, as one :class:`~tomomatch.errors.InputError`
naming the path and the option:

* a folder given where a file is written (``-o OUT.mrc`` naming a folder), and a file given
  where a folder is written (``-d``/``--out``/``simulate -o`` naming a file);
* a missing parent folder: an output file's folder, and the folder an output folder is made in,
  must exist (a mistyped path does not silently create a tree of folders);
* a folder this process may not write into (permissions, a read-only file system).

Nothing is created here. A write that still fails later (a full disk, a folder removed
mid-run) is one line from :func:`tomomatch.mrcio.atomic_path` or from the command line's
``OSError`` handler (:func:`tomomatch.cli.main`), and leaves no ``.part`` file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError

__all__ = [
    "output_file",
    "output_folder",
    "output_prefix",
    "match_output_folder",
    "os_error_message",
    "check_local_cluster",
    "check_dashboard_address",
]


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _why_not_writable(folder: Path) -> str | None:
    """Why this process cannot write into the existing folder ``folder``, or None."""
    if _read_only_fs(folder):
        return "is on a read-only file system"
    if not _writable(folder):
        return "is not writable (permission denied)"
    return None


def _check_parent(folder: Path, target: Path, option: str, what: str) -> None:
    """``folder`` (the parent of ``target``) must be an existing, writable folder."""
    if not folder.exists():
        raise InputError(
            f"folder {str(folder)!r} does not exist; expected the {what} in an existing folder", target, option
        )
    if not folder.is_dir():
        raise InputError(f"{str(folder)!r} is a file, not a folder; expected the {what} in a folder", target, option)
    why = _why_not_writable(folder)
    if why:
        raise InputError(f"folder {str(folder)!r} {why}; expected a writable folder", target, option)


def output_file(path, option: str, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file: not a folder, in an existing writable folder."""
    p = Path(path)
    if str(path) == "":
        raise InputError(f"empty name; expected a file name for the {what}", None, option)
    if p.is_dir():
        raise InputError(f"is a folder; expected a file name for the {what}", p, option)
    _check_parent(p.parent, p, option, what)
    return p


def output_prefix(path, option: str, suffixes: Iterable[str] = (".json", ".png")) -> Path:
    """Check an output prefix ``OUT`` (the command writes ``OUT.json``, ``OUT.png``, ...).

    The files are ``Path(OUT).with_suffix(s)``, as the commands name them.
    """
    p = Path(path)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise InputError("expected an output prefix (OUT gives OUT.json, OUT.png)", path or None, option)
    for s in suffixes:
        f = p.with_suffix(s)
        if f.is_dir():
            raise InputError(f"{str(f)!r} is a folder; expected a file name for the output", p, option)
    _check_parent(p.parent, p, option, "output")
    return p


def output_folder(path, option: str, files: Iterable[str] = ()) -> Path:
    """Check that ``path`` can be used as an output folder: a writable folder, or a new one in an
    existing writable folder. ``files`` (names inside it) must not be folders."""
    p = Path(path)
    if str(path) == "":
        raise InputError("empty name; expected an output folder", None, option)
    if p.exists():
        if not p.is_dir():
            raise InputError("is a file; expected an output folder (an existing folder or a new name)", p, option)
        why = _why_not_writable(p)
        if why:
            raise InputError(f"{why}; expected a writable output folder", p, option)
        for name in files:
            if (p / name).is_dir():
                raise InputError(f"{name!r} in it is a folder; expected a file name to write", p, option)
    else:
        _check_parent(p.absolute().parent, p, option, "output folder")
    return p


def os_error_message(exc: OSError) -> str:
    """One line for an ``OSError`` that reached the command line: the file, what went wrong, and
    what to do for the usual causes (no space, permissions, a read-only file system)."""
    reason = exc.strerror or exc.__class__.__name__
    hint = {
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EDQUOT: "free some space or write elsewhere",
        errno.EACCES: "expected a file or folder this user may read and write",
        errno.EPERM: "expected a file or folder this user may read and write",
        errno.EROFS: "expected a writable file system",
        errno.ENOENT: "expected an existing file or folder",
        errno.ENOTDIR: "expected a folder",
        errno.EISDIR: "expected a file",
    }.get(exc.errno or 0, "")
    names = [os.fspath(n) for n in (exc.filename, exc.filename2) if n is not None]
    text = f"{reason}{'; ' + hint if hint else ''}"
    return f"{' -> '.join(map(str, names))}: {text}" if names else text


def match_output_folder(out_dir, name: str) -> Path:
    """:func:`output_folder` for ``match``'s ``-d``: its four outputs must not be folders."""
    files = [f"{name}_scores.mrc", f"{name}_angles.mrc", f"{name}_rotations.txt", f"{name}_job.json"]
    return output_folder(out_dir, "--out-dir", files)


def check_dashboard_address(address) -> None:
    """``batch --dashboard-address``: ``none``, ``:PORT`` or ``HOST:PORT`` with a port 0-65535."""
    text = str(address)
    if text.lower() == "none":
        return
    host, sep, port = text.rpartition(":")
    ok = bool(sep) and port.isdigit() and int(port) <= 65535 and "/" not in host and " " not in host
    if not ok:
        raise InputError(f"{text!r}; expected :PORT or HOST:PORT (port 0-65535), or none", None, "--dashboard-address")


def check_local_cluster(workers: int | None, threads_per_worker: int, local: bool = True) -> None:
    """``batch``'s local cluster size, checked before anything starts: ``--workers`` and
    ``--threads-per-worker`` at least 1, and at most :func:`max_local_threads` threads in all (a
    huge value would start thousands of processes or threads, and fail only on the workers)."""
    from ..resources import available_cpus

    if workers is not None and workers < 1:
        raise InputError(f"{workers}; expected at least 1 worker", None, "--workers")
    if threads_per_worker < 1:
        raise InputError(f"{threads_per_worker}; expected at least 1 thread per worker", None, "--threads-per-worker")
    if not local:
        return
    limit = max_local_threads()
    n = (workers or 1) * threads_per_worker
    if n > limit:
        raise InputError(
            f"{workers or 1} workers x {threads_per_worker} threads = {n} threads; expected at most {limit} on this "
            f"machine ({available_cpus()} cores; 4 threads per core, at least 64)",
            None,
            "--workers/--threads-per-worker",
        )


def max_local_threads() -> int:
    """Most threads (workers x threads per worker) a local ``batch`` cluster may have."""
    from ..resources import available_cpus

    return max(64, 4 * available_cpus())
