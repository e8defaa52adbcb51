"""User-facing errors.

Every problem with user input raises :class:`InputError`. The CLI prints its one-line
message (file, field, what was expected) and exits with status 2, without a traceback
unless ``--debug`` is given.
"""

from __future__ import annotations

import math
import os

__all__ = ["InputError", "positive_number"]


class InputError(ValueError):
    """Bad user input: one clear line naming the file, the field and what was expected.

    Parameters
    ----------
    message
        What is wrong and what was expected.
    path
        File the problem is in, if any.
    field
        Field, column, line or option the problem is in, if any.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, field: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.detail = message
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if field is not None:
            parts.append(str(field))
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


def positive_number(value, field: str, *, zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``zero``), else :class:`InputError` naming
    ``field`` (an option or a field)."""
    if value is None:
        raise InputError("missing; expected a number", None, field)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{value!r}; expected a number", None, field) from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
        raise InputError(f"{value!r}; expected a finite number {'>=' if zero else '>'} 0", None, field)
    return v
