"""Terminal progress bars (rich) shared by ``match`` and ``batch``: one bar per counted thing,
with elapsed time and ETA, on a TTY only and never when ``quiet``."""
from __future__ import annotations

import sys

__all__ = ["ProgressBars"]


class ProgressBars:
    """Bars named by ``totals`` (description -> total, or (total, already completed)).

    ``advance(*counts)`` advances the bars in the order given; a silent no-op when quiet or when
    stderr is not a terminal.
    """

    def __init__(self, totals: dict[str, int | tuple[int, int]], quiet: bool = False):
        self.bar = None
        self.tasks: list = []
        if quiet or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self.bar.start()
        for description, total in totals.items():
            total, done = total if isinstance(total, tuple) else (total, 0)
            self.tasks.append(self.bar.add_task(description, total=total, completed=done))

    def advance(self, *counts: int) -> None:
        if self.bar is not None:
            for task, k in zip(self.tasks, counts):
                if k:
                    self.bar.advance(task, k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
