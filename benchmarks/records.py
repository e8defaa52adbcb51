"""Machine-readable benchmark records under ``benchmarks/results/`` (one JSON file per run).

Every benchmark that times something writes one: ``cpu-YYYY-MM-DD[-N].json`` for CPU runs,
``gpu-YYYY-MM-DD[-N].json`` for GPU runs (the next free ``N`` on a second run of the day).
:func:`record_path` picks the name, :func:`header` holds what every record carries (date,
commit, machine, torch), :func:`write_record` writes it.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def commit() -> str | None:
    """``$COMMIT`` (the device machine's copy of the tree has no .git), else ``git rev-parse HEAD``."""
    if os.environ.get("COMMIT"):
        return os.environ["COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def header(benchmark: str) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "benchmark": benchmark,
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "gpu": gpu,
    }


def record_path(kind: str, folder: Path | None = None, date: str | None = None) -> Path:
    """``<folder>/<kind>-<date>.json``, or ``-2``, ``-3``, ... when taken (kind: ``cpu`` or ``gpu``)."""
    folder = Path(folder) if folder is not None else Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS
    date = date or datetime.date.today().isoformat()
    path = folder / f"{kind}-{date}.json"
    n = 2
    while path.exists():
        path = folder / f"{kind}-{date}-{n}.json"
        n += 1
    return path


def _clean(x):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_record(record: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(record), indent=1) + "\n")
    print(f"-> {path}", flush=True)
    return path
