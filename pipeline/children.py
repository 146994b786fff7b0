"""Child processes that worker threads wait on (probes, decoders), stopped together when the run stops.

A flow waits on tasks in other threads. When the wait ends by an exception - SIGTERM becomes one in the main thread
(Prefect's TerminationSignal), so does Ctrl-C - the process must not stay alive until each thread's child is done
with its file: `stop_on_error` shuts the downloads in flight (pipeline.storage) and kills every registered child,
and from then on `check` raises in the threads, so none starts a new one. The next block lets them run again.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Callable, Iterator


class ChildProcesses:
    def __init__(self, stopped: Callable[[], Exception]) -> None:
        self._stopped = stopped  # the exception a thread raises once the run is stopping
        self._stopping = threading.Event()
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def check(self) -> None:
        """Raise the stop exception if the run is stopping."""
        if self._stopping.is_set():
            raise self._stopped()

    @contextlib.contextmanager
    def working(self, proc: subprocess.Popen) -> Iterator[None]:
        """A block in which a thread waits on `proc`: a stop kills it."""
        with self._lock:
            self._running.add(proc)
        try:
            self.check()  # a stop that came just before the child was registered would miss it
            yield
        finally:
            with self._lock:
                self._running.discard(proc)

    @contextlib.contextmanager
    def stop_on_error(self) -> Iterator[None]:
        """The block that waits on the threads: on any exception out of it, stop them all, then re-raise."""
        from cogflow.pipeline.fetch import stop_downloads_on_error

        self._stopping.clear()
        with stop_downloads_on_error():
            try:
                yield
            except BaseException:
                self._stopping.set()
                with self._lock:
                    running = list(self._running)
                for proc in running:
                    with contextlib.suppress(OSError):
                        proc.kill()
                raise
