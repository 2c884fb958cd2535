"""The live per-epoch bar (rich) and the plain log lines a run prints."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["EpochBar", "RunLog", "each_with_bar"]


class RunLog:
    """Prints lines on stdout (rank 0 only) and keeps a copy in ``RUN/train.log``."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.file: TextIO | None = None
        self.pending: list[str] = []  # text logged during set-up, before the run dir is known

    def attach(self, path: Path) -> None:
        if self.enabled:
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed in close())
            self._write("".join(self.pending))
            self.pending = []

    def _write(self, text: str) -> None:
        if self.file is None:
            self.pending.append(text)
        else:
            self.file.write(text)
            self.file.flush()

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        print(message, file=self.stream, flush=True)
        self._write(message + "\n")

    def warn(self, message: str) -> None:
        if self.enabled:
            print(f"warning: {message}", file=sys.stderr, flush=True)
            self._write(f"warning: {message}\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class EpochBar:
    """One rich progress bar per epoch: loss, accuracy, lr, images/s, ETA.

    Disabled (a no-op) when asked to be quiet, on ranks other than 0, and when stderr is not a
    terminal, where a bar would only litter logs.
    """

    def __init__(self, enabled: bool) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.progress: Progress | None = None
        self.task = None

    def start(self, description: str, total: int) -> None:
        if not self.enabled:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(description, total=total, stats="")

    def update(self, completed: int, stats: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, stats=stats)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def each_with_bar(
    names: Sequence[str], label: str, *, enabled: bool, console: Console | None = None
) -> Iterator[str]:
    """Yield each of ``names`` while a transient bar (stderr by default) shows the name being
    worked on, how many are done and the time so far."""
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    bar_console = console or Console(stderr=True)
    with Progress(*columns, console=bar_console, transient=True, disable=not enabled) as bar:
        task = bar.add_task("", total=len(names))
        for name in names:
            bar.update(task, description=name)
            yield name
            bar.advance(task)
