"""Progress for long steps: a Prefect progress artifact in the UI, and a bar on the terminal."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact


class Progress:
    """Count finished items of one step; cheap to call per item (the artifact updates at most once a second)."""

    def __init__(self, total: int, label: str, key: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self._last = 0.0
        self._tty = sys.stderr.isatty()
        # called from sync code, where Prefect's async_dispatch runs the sync version: the id, not a coroutine
        self._artifact = (
            cast(UUID, create_progress_artifact(progress=0.0, key=key, description=label)) if total else None
        )

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.done < self.total and now - self._last < 1.0:
            return
        self._last = now
        percent = 100.0 * self.done / max(self.total, 1)
        if self._artifact is not None:
            update_progress_artifact(self._artifact, progress=percent)
        if self._tty:
            filled = int(percent // 4)
            end = "\n" if self.done >= self.total else ""
            print(
                f"\r{self.label} [{'#' * filled}{'.' * (25 - filled)}] {self.done}/{self.total}",
                end=end,
                file=sys.stderr,
                flush=True,
            )


def child_log(log: Callable[[str], None], step_line: re.Pattern[str], label: str, key: str) -> Callable[[str], None]:
    """A line handler for a training child's output: every line to `log`, and its periodic step lines
    ("<what> DONE/TOTAL ...", matched by `step_line` with the two numbers as groups) into a progress artifact."""
    progress: Progress | None = None

    def handle(line: str) -> None:
        nonlocal progress
        log(line)
        step = step_line.match(line)
        if step:
            done, total = int(step[1]), int(step[2])
            progress = progress or Progress(total, label, key=key)
            progress.advance(done - progress.done)

    return handle
