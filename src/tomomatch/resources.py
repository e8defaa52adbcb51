"""What this job may use of the machine: CPU cores (affinity and cgroup quota aware), memory.

``os.cpu_count()`` counts the machine's cores, not the ones a job may use: a SLURM allocation
or ``taskset`` narrows the affinity mask, and a container's cgroup (v2 ``cpu.max``, v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``) caps the CPU time. The default number of worker
processes of ``match`` is the smaller of the two.

Memory: :func:`memory_limit_bytes` is the machine's physical memory (or
:data:`MAX_MEMORY_BYTES` when set), against which big reads are estimated before they allocate
(:func:`check_fits`: MRC volumes from their header, ``--angle-list`` files from their size).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "memory_limit_bytes", "check_fits", "gib", "MAX_MEMORY_BYTES"]

#: Largest memory (bytes) one read may need (:func:`check_fits`); None: the machine's physical
#: memory (``os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')``, 64 GiB if unknown).
MAX_MEMORY_BYTES: int | None = None


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's quota, or None when unlimited or unknown."""
    try:
        text = (root / "cpu.max").read_text().split()  # v2: "<quota|max> <period>"
        if text and text[0] != "max":
            return float(text[0]) / float(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1
        period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(cgroup_root: Path | str = "/sys/fs/cgroup") -> int:
    """Cores this process may use: the affinity mask, capped by the cgroup CPU quota (>= 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota(Path(cgroup_root))
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, int(n))


def memory_limit_bytes() -> int:
    """:data:`MAX_MEMORY_BYTES`, else the physical memory of this machine (64 GiB if unknown)."""
    if MAX_MEMORY_BYTES is not None:
        return int(MAX_MEMORY_BYTES)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return 64 * 2**30


def gib(n: float) -> str:
    """``n`` bytes as GiB (TiB above a PiB), three significant digits."""
    if n < 100 * 2**30:
        return f"{n / 2**30:.3g} GiB"
    return f"{n / 2**30:,.0f} GiB" if n < 2**50 else f"{n / 2**40:.3g} TiB"


def check_fits(need_bytes: float, what: str, path=None, field: str | None = None, expected: str = "") -> None:
    """Refuse, before allocating, a read estimated at ``need_bytes``: one
    :class:`~tomomatch.errors.InputError` naming ``path``, ``field``, the size in GiB and the limit."""
    from .errors import InputError

    limit = memory_limit_bytes()
    if need_bytes <= limit:
        return
    raise InputError(
        f"{what} needs about {gib(need_bytes)} of memory, more than the {gib(limit)} allowed (this machine's "
        f"memory, or tomomatch.resources.MAX_MEMORY_BYTES){'; ' + expected if expected else ''}",
        path,
        field,
    )
