"""What this job may use of the machine: CPU cores (affinity and cgroup quota aware).

``os.cpu_count()`` counts the machine's cores, not the ones a job may use: a SLURM allocation
or ``taskset`` narrows the affinity mask, and a container's cgroup (v2 ``cpu.max``, v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``) caps the CPU time. The default number of worker
processes of ``match`` is the smaller of the two.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus"]


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
