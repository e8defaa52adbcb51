"""Progress: bars on a terminal, timed lines in logs, nothing when quiet."""

from __future__ import annotations

import io
import time

import pytest

from tomomatch import progress
from tomomatch.errors import InputError
from tomomatch.progress import ProgressBars


def test_log_lines_when_not_a_terminal():
    out = io.StringIO()  # not a TTY
    bars = ProgressBars({"rotations": 100, "work units": (4, 1)}, log_interval_s=0.05, stream=out, label="t")
    bars.advance(10, 0)
    assert out.getvalue() == ""  # not yet: less than the interval
    time.sleep(0.06)
    bars.advance(30, 1)
    line = out.getvalue().strip().splitlines()[-1]
    assert line.startswith("[t] rotations 40/100, work units 2/4 (") and "rotations/s" in line
    assert "elapsed 0:00:00" in line and "ETA 0:00:0" in line
    bars.advance(60, 2)
    bars.close()
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 2 and "rotations 100/100, work units 4/4" in lines[-1]  # a final line
    bars.close()  # not twice at the same state
    assert len(out.getvalue().strip().splitlines()) == 2


def test_quiet_and_zero_interval_print_nothing():
    out = io.StringIO()
    b = ProgressBars({"rotations": 10}, quiet=True, stream=out)
    b.advance(5)
    b.close()
    b = ProgressBars({"rotations": 10}, log_interval_s=0, stream=out)
    b.advance(5)
    b.close()
    assert out.getvalue() == ""


def test_configure_checks_and_sets_the_default():
    with pytest.raises(InputError):
        progress.configure(-1)
    progress.configure(0.01)
    try:
        out = io.StringIO()
        b = ProgressBars({"particles": 3}, stream=out)
        time.sleep(0.02)
        b.advance(1)
        assert "particles 1/3" in out.getvalue()
    finally:
        progress.configure(progress.DEFAULT_LOG_INTERVAL_S)
