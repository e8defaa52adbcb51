"""Progress of ``match``, ``batch`` and ``hand``: rich bars on a terminal, timed lines in logs.

On a terminal: one bar per counted thing, with elapsed time and ETA. When stderr is not a
terminal (SLURM, ``nohup``, a pipe), bars would show nothing until the end, so a line is
printed every ``log_interval_s`` seconds (default 60, ``--log-interval``) with the counts, the
rate of the first count, the elapsed time and the ETA, and one at the end. Nothing when
``quiet``.
"""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressBars", "configure", "DEFAULT_LOG_INTERVAL_S"]

DEFAULT_LOG_INTERVAL_S = 60.0
_log_interval_s = DEFAULT_LOG_INTERVAL_S


def configure(log_interval_s: float | None = None) -> None:
    """Set the interval of the progress lines written when stderr is not a terminal (the CLI's
    ``--log-interval``; 0 turns them off)."""
    global _log_interval_s
    if log_interval_s is not None:
        if not log_interval_s >= 0:
            from .errors import InputError

            raise InputError(f"{log_interval_s!r} s; expected >= 0 (0: no progress lines)", None, "--log-interval")
        _log_interval_s = float(log_interval_s)


def _clock(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressBars:
    """Progress of the things named by ``totals`` (description -> total, or (total, already completed)).

    ``advance(*counts)`` advances them in the order given; ``close()`` ends the display.
    """

    def __init__(
        self,
        totals: dict[str, int | tuple[int, int]],
        quiet: bool = False,
        *,
        log_interval_s: float | None = None,
        stream=None,
        label: str = "tomomatch",
    ):
        self.bar = None
        self.tasks: list = []
        self.stream = sys.stderr if stream is None else stream
        self.names = list(totals)
        self.totals = [int(t[0] if isinstance(t, tuple) else t) for t in totals.values()]
        self.done = [int(t[1] if isinstance(t, tuple) else 0) for t in totals.values()]
        self.start_done = list(self.done)
        self.label = label
        self.t0 = time.monotonic()
        self.interval = _log_interval_s if log_interval_s is None else float(log_interval_s)
        self.last_log = self.t0
        self.logging = False
        if quiet:
            return
        if not self.stream.isatty():
            self.logging = self.interval > 0
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
        )
        self.bar.start()
        for description, total, done in zip(self.names, self.totals, self.done):
            self.tasks.append(self.bar.add_task(description, total=total, completed=done))

    def line(self) -> str:
        """The progress line: counts, rate of the first count, elapsed, ETA."""
        now = time.monotonic()
        elapsed = now - self.t0
        parts = [f"{n} {d}/{t}" for n, d, t in zip(self.names, self.done, self.totals)]
        msg = f"[{self.label}] " + ", ".join(parts)
        if self.names:
            k = int(max(range(len(self.totals)), key=lambda i: self.totals[i]))  # the finest count
            new = self.done[k] - self.start_done[k]
            rate = new / elapsed if elapsed > 0 else 0.0
            left = self.totals[k] - self.done[k]
            eta = _clock(left / rate) if rate > 0 else "?"
            msg += f" ({rate:.3g} {self.names[k].split(' (')[0]}/s), elapsed {_clock(elapsed)}, ETA {eta}"
        return msg

    def advance(self, *counts: int) -> None:
        for i, k in enumerate(counts[: len(self.done)]):
            self.done[i] += int(k)
        if self.bar is not None:
            for task, k in zip(self.tasks, counts):
                if k:
                    self.bar.advance(task, k)
        elif self.logging and time.monotonic() - self.last_log >= self.interval:
            self._log()

    def _log(self) -> None:
        self.last_log = time.monotonic()
        self.logged_done = list(self.done)
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.logging:
            if getattr(self, "logged_done", None) != self.done:  # not printed at this state yet
                self._log()
            self.logging = False
