"""Where the optional real test data (structures, maps, tilt metadata) live.

They are never part of the package or the repository. Looked up in order: ``$TOMOMATCH_DATA``,
``<repository>/../shared/data`` (the layout of the development machines) and
``<current directory>/../shared/data``. Callers skip cleanly when nothing is found.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_data_dir"]


def shared_data_dir() -> Path | None:
    """The shared data folder, or ``None`` when it is not on this machine."""
    env = os.environ.get("TOMOMATCH_DATA")
    candidates = [Path(env)] if env else []
    candidates += [
        Path(__file__).resolve().parents[3] / "shared" / "data",
        Path.cwd().resolve().parent / "shared" / "data",
    ]
    for c in candidates:
        if c.is_dir():
            return c
    return None
