"""Progress of a long loop: a live bar on a terminal, a plain line every so often anywhere else (logs, CI,
Prefect's captured output)."""

from __future__ import annotations

import sys
import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StepProgress:
    def __init__(self, description: str, total: int, done: int = 0, enabled: bool = True, every: int = 1) -> None:
        self.description, self.total, self.every = description, total, max(1, every)
        self.live = enabled and sys.stderr.isatty()
        self.quiet = not enabled
        self.bar: Progress | None = None
        self.started = time.monotonic()
        if self.live:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                transient=False,
            )
            self.task = self.bar.add_task(description, total=total, completed=done, status="")
            self.bar.start()

    def update(self, done: int, status: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, status=status)
        elif not self.quiet and (done % self.every == 0 or done == self.total):
            print(
                f"{self.description} {done}/{self.total} ({time.monotonic() - self.started:.0f} s) {status}", flush=True
            )

    def log(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
