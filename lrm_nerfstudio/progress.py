"""Progress of long stages: a rich bar on a terminal, plain periodic lines when the output is a log file.

    with stage_progress("rendering objects", total=len(jobs), unit="objects") as bar:
        for job in jobs:
            ...
            bar.advance()

On a terminal this is a rich `Progress` bar. Elsewhere (a pipe, a file, CI) a live bar would either print nothing
until the end or fill the file with control codes, so it writes one line when the stage starts, then at most one
every `log_every_s` seconds (and whenever the description changes), and one when it ends, each with the count,
the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Real

from nerfstudio.utils.rich_utils import CONSOLE
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StageProgress:
    """Handle of one stage's progress; see `stage_progress`."""

    def __init__(
        self, description: str, total: Real | None, unit: str, console: Console, log_every_s: float, bar
    ) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.console, self.log_every_s, self.bar = console, log_every_s, bar
        self.completed = 0.0
        self.start = self._last_log = time.monotonic()
        self._task = bar.add_task(description, total=total) if bar is not None else None

    def advance(self, amount: Real = 1) -> None:
        """Count `amount` more units done."""
        self.update(completed=self.completed + amount)

    def update(self, completed: Real | None = None, description: str | None = None) -> None:
        """Set the units done and/or the description."""
        changed = description is not None and description != self.description
        if completed is not None:
            self.completed = float(completed)
        if description is not None:
            self.description = description
        if self.bar is not None:
            self.bar.update(self._task, completed=self.completed, description=self.description)
        elif changed or time.monotonic() - self._last_log >= self.log_every_s:
            self.log()

    def line(self, done: bool = False) -> str:
        """The plain-text state: `description: 3/8 objects (38%), 12 s elapsed, about 20 s left`."""
        elapsed = time.monotonic() - self.start
        unit = f" {self.unit}" if self.unit else ""
        if done:
            count = f"{self.completed:g}{unit}" if self.completed else "done"
            return f"{self.description}: {count} in {elapsed:.1f} s"
        if not self.total:
            return f"{self.description}: {self.completed:g}{unit}, {elapsed:.0f} s elapsed"
        fraction = min(1.0, self.completed / self.total)
        left = f", about {elapsed / fraction * (1 - fraction):.0f} s left" if fraction > 0 else ""
        return (
            f"{self.description}: {self.completed:g}/{self.total:g}{unit} ({fraction:.0%}), {elapsed:.0f} s elapsed"
            + left
        )

    def log(self, done: bool = False) -> None:
        """Print `line()` (log mode)."""
        self._last_log = time.monotonic()
        self.console.print(self.line(done), highlight=False, soft_wrap=True)


def is_live(console: Console) -> bool:
    """Whether `console` can show a live bar (an interactive terminal)."""
    return console.is_terminal and not console.is_dumb_terminal


@contextmanager
def stage_progress(
    description: str,
    total: Real | None = None,
    *,
    unit: str = "",
    console: Console | None = None,
    log_every_s: Real = 10.0,
    enabled: bool = True,
) -> Iterator[StageProgress]:
    """Report a stage's progress (a rich bar on a terminal, periodic lines otherwise).

    Args:
        description: what the stage does (shown before the count).
        total: units of work in the stage; None when unknown.
        unit: name of a unit, for the log lines ("objects", "frames").
        console: where to report; default nerfstudio's CONSOLE (what every command prints to).
        log_every_s: most seconds between two log lines when not on a terminal.
        enabled: False reports nothing (the handle still counts).
    """
    console = console or CONSOLE
    if enabled and is_live(console):
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=console, transient=False) as bar:
            yield StageProgress(description, total, unit, console, float(log_every_s), bar)
        return
    handle = StageProgress(description, total, unit, console, float(log_every_s) if enabled else float("inf"), None)
    if enabled:
        handle.log()
    yield handle
    if enabled:
        handle.log(done=True)
