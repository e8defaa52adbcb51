"""One run per job folder and name: a lock file with the owner's pid and host.

Two ``match`` runs into the same folder and name (say h = +1 and h = -1 by mistake) would
otherwise both run, and the one finishing last would silently replace the other's outputs.
:class:`JobLock` is held for the whole run: ``<out_dir>/<name>.lock`` is created exclusively
(``O_CREAT | O_EXCL``, atomic on local and NFSv3+ file systems) and holds JSON with the
owner's pid, host, start time and command. A second run stops with one line naming the owner.
A lock left by a run that died (same host, pid gone) is stale and taken over; on another host
liveness cannot be checked, so the message says which file to delete.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from .errors import InputError

__all__ = ["JobLock"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class JobLock:
    """Context manager holding ``<folder>/<name>.lock`` for one run.

    Parameters
    ----------
    folder, name
        The job folder and base name (``match``: out dir and job name; ``batch``: out dir and
        ``"batch"``; ``simulate``: out dir and ``"simulation"``).
    what
        Command name for the message.
    """

    def __init__(self, folder, name: str, what: str = "tomomatch"):
        self.path = Path(folder) / f"{name}.lock"
        self.what = what
        self._held = False

    def _record(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": self.what}

    def acquire(self) -> "JobLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cannot create the output folder ({exc.strerror or exc})", self.path.parent, "output"
            ) from None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._take_over_stale():
                    continue
                raise self._held_error() from None
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC):
                    raise InputError(f"cannot write here ({exc.strerror})", self.path.parent, "output") from None
                raise
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(self._record()) + "\n")
            self._held = True
            return self
        raise self._held_error()

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _take_over_stale(self) -> bool:
        owner = self._owner()
        if owner is None:
            # unreadable: being written right now, or damaged; only an old one is taken over
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            if age < 60:
                return False
        elif owner.get("host") != socket.gethostname() or _pid_alive(int(owner.get("pid", -1))):
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        return True

    def _held_error(self) -> InputError:
        o = self._owner() or {}
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o["started"])) if "started" in o else "?"
        return InputError(
            f"another {o.get('command', 'tomomatch')} run (pid {o.get('pid', '?')} on "
            f"{o.get('host', '?')}, since {since}) owns this job; wait for it, or delete this "
            "file if that run is dead",
            self.path,
            "lock",
        )

    def release(self) -> None:
        if self._held:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "JobLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
