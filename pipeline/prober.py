"""Probing in a child process, bounded in time as split bounds its decoder (pipeline/decoder.py).

A probe reads the whole file (its hash, every packet) and decodes its first frame and its last group of pictures,
so a pathological file - a huge one, a long group of enormous frames, a demuxer that loops - can keep it busy for
minutes inside FFmpeg, where no thread can be interrupted. `probe_bounded` therefore runs `pipeline.video.probe`
in a child process (`python -m cogflow.pipeline.prober`), one per probing thread and kept from file to file (starting one
costs a few tenths of a second). A probe that takes longer than its timeout (COGFLOW_PROBE_TIMEOUT_S) has its child
killed and becomes ProbeError('probe_timeout'); a child that dies (a crash in a codec) costs that file, as
'probe_error', not the run. `stop_probes_on_error` kills every probe in flight when the run stops. A video the
probe accepts is then scanned in the same child (pipeline/scan.py: one more decode, small) for at most half the
timeout: a scan that would take longer (hours of video on a slow machine) is given up, and the video is accepted
without scores, as an unscanned one.

Messages are pickles over a socket pair (multiprocessing.connection): a path, the limits and whether to scan one
way; a Probed, a (reason, detail) reject or another failure's text back. Both ends are cogflow, so unpickling them is safe.
"""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

from cogflow.pipeline.children import ChildProcesses
from cogflow.pipeline.scan import SCAN_WIDTH, Scan, scan
from cogflow.pipeline.video import ProbeError, ProbeResult, probe, scan_frames


class Probed(NamedTuple):
    result: ProbeResult
    scan: Scan | None  # None when not asked for, or given up


def _until(frames: Iterator[tuple[float, Any]], deadline: float) -> Iterator[tuple[float, Any]]:
    for item in frames:
        if time.monotonic() > deadline:
            raise TimeoutError
        yield item


def scan_within(path: str, duration_s: float, budget_s: float) -> Scan | None:
    """The scan of `path`, or None when it takes longer than `budget_s`."""
    try:
        return scan(_until(scan_frames(path, SCAN_WIDTH), time.monotonic() + budget_s), duration_s)
    except TimeoutError:
        return None


STARTUP_TIMEOUT_S = 120.0  # a child that has not imported PyAV by then (a machine far too busy) is given up


class Prober:
    """A child process that probes one file at a time, started on first use and replaced after a timeout or a crash."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None

    def _start(self) -> tuple[subprocess.Popen, Connection]:
        if self._proc is not None and self._conn is not None and self._proc.poll() is None:
            return self._proc, self._conn
        self._kill()
        mine, theirs = multiprocessing.Pipe()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cogflow.pipeline.prober", str(theirs.fileno())], pass_fds=(theirs.fileno(),)
        )
        theirs.close()  # the child's end is the child's only: its exit is then an end of file here
        self._proc, self._conn = proc, mine
        self._finalizer = weakref.finalize(self, mine.close)  # a prober dropped with its thread lets its child go
        # The clock of a probe starts once the child is ready, so that a busy machine's slow start is not charged
        # to the file.
        try:
            if not mine.poll(STARTUP_TIMEOUT_S):
                self._kill()
                raise ProbeError("probe_error", f"the probe process did not start within {STARTUP_TIMEOUT_S:g} s")
            mine.recv()
        except (EOFError, OSError):
            raise ProbeError(
                "probe_error", f"the probe process exited as it started (exit code {self._kill()})"
            ) from None
        return proc, mine

    def _kill(self) -> int | None:
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if conn is not None:
            self._finalizer.detach()
            conn.close()
        if proc is None:
            return None
        proc.kill()
        return proc.wait()

    def close(self) -> None:
        """Let the child go (it exits when its end of the pipe closes)."""
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if conn is not None:
            self._finalizer.detach()
            conn.close()
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def probe(self, path: str | Path, timeout_s: float, scan: bool = True, **limits: float) -> Probed:
        """`pipeline.video.probe(path, **limits)` in the child, then the scan of an accepted video when `scan`;
        ProbeError('probe_timeout') when both take longer than `timeout_s`, the reject reasons of `probe`
        otherwise."""
        proc, conn = self._start()
        try:
            with _children.working(proc):
                conn.send((str(path), timeout_s / 2 if scan else None, limits))
                if not conn.poll(timeout_s):
                    self._kill()
                    raise ProbeError(
                        "probe_timeout",
                        f"the probe took longer than {timeout_s:g} s and was stopped (COGFLOW_PROBE_TIMEOUT_S)",
                    )
                reply = conn.recv()
        except (EOFError, OSError):  # the child died: a crash, or the run stopping killed it
            code = self._kill()
            if _children.stopping:
                raise ProbeError("probe_stopped", "the run was stopped") from None
            raise ProbeError("probe_error", f"the probe process died (exit code {code})") from None
        if isinstance(reply, Probed):
            return reply
        if isinstance(reply, tuple):  # a reject: (reason, detail)
            raise ProbeError(*reply)
        raise ProbeError("probe_error", str(reply))  # any other failure, as its type and message (retried next run)


# --- stopping every probe at once ------------------------------------------------------------------------------

# The probe children of this process's threads; `stop_probes_on_error` is the block an ingest flow waits in.
_children = ChildProcesses(lambda: ProbeError("probe_stopped", "the run was stopped"))
stop_probes_on_error = _children.stop_on_error


_worker = threading.local()


def probe_bounded(path: str | Path, timeout_s: float, scan: bool = True, **limits: float) -> Probed:
    """Probe (and scan) `path` in this thread's child process, for at most `timeout_s` (see Prober.probe)."""
    if getattr(_worker, "prober", None) is None:
        _worker.prober = Prober()
    return _worker.prober.probe(path, timeout_s, scan, **limits)


# --- the child -------------------------------------------------------------------------------------------------


def child_main(fd: int) -> None:
    """Probe the files asked for on `fd` until the parent closes its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us if need be
    conn = Connection(fd)
    conn.send("ready")
    while True:
        try:
            path, scan_budget_s, limits = conn.recv()
        except EOFError:
            return
        try:
            result = probe(path, **limits)
            scanned = None if scan_budget_s is None else scan_within(path, result.duration_s, scan_budget_s)
            reply: object = Probed(result, scanned)
        except ProbeError as exc:
            reply = (exc.reason, exc.detail)
        except Exception as exc:  # an exotic file or a bug: its type and message, for probe_source to record
            reply = f"{type(exc).__name__}: {exc}"
        conn.send(reply)


if __name__ == "__main__":
    # the importable module's copy, so that the Probed it pickles is cogflow.pipeline.prober's, not __main__'s
    from cogflow.pipeline import prober

    prober.child_main(int(sys.argv[1]))
