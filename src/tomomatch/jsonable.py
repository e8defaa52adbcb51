"""Plain JSON values from numpy-laden reports (one rule for every report tomomatch writes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["jsonable"]


def jsonable(obj):
    """``obj`` with numpy scalars/arrays as Python numbers/lists, paths as strings, and
    non-finite floats as None (JSON has no NaN/Inf); dict keys become strings."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj
