"""Peak memory of a benchmark: the resident set of this process (and, when asked, of every process it started),
sampled in a thread, for the benchmarks that report what a step costs in memory (bench_ingest, bench_split)."""

from __future__ import annotations

import resource
import sys
import threading

import psutil  # the [test] extra


class RssSampler:
    """Samples RSS every `interval_s` in a thread while it is entered; `peak` since the last `reset`.

    With `children`, the RSS of every descendant is added. A sum of RSS counts the pages processes share (the FFmpeg
    and Python libraries) once per process: an upper bound, and what a memory limit on the whole process tree (a
    container's) would see. `peak_parent` and `peak_children` are the two parts' own peaks."""

    def __init__(self, interval_s: float = 0.01, children: bool = False) -> None:
        self.interval_s, self.children = interval_s, children
        self.me = psutil.Process()
        self.baseline = self.me.memory_info().rss
        self.peak = self.peak_parent = self.peak_children = 0
        self.children_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children_rss(self) -> int:
        total = 0
        for child in self.me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:  # one that exited between the listing and the read
                continue
            self.children_seen.add(child.pid)
        return total

    def current(self) -> int:
        return self.me.memory_info().rss + (self._children_rss() if self.children else 0)

    def sample(self) -> None:
        parent = self.me.memory_info().rss
        children = self._children_rss() if self.children else 0
        self.peak_parent = max(self.peak_parent, parent)
        self.peak_children = max(self.peak_children, children)
        self.peak = max(self.peak, parent + children)

    def reset(self) -> None:
        self.peak = self.current()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def max_rss_bytes() -> int:
    """The most this process has held at once, as the kernel counts it (ru_maxrss: KiB on Linux, bytes on macOS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"
