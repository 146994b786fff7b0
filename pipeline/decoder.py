"""Decoding in a child process, so a video that hangs or crashes its decoder costs that video, not the run.

`Decoder` (the parent side) starts `python -m cogflow.pipeline.decoder`, sends it one job per video and reads back
each window as soon as it is complete. It waits at most `timeout_s` per video: a child that overruns (an
FFmpeg loop, a read that never returns on a stalled mount) is killed, its remaining windows become
`decode_timeout` rejects, and the next video gets a fresh child. A child that dies (a crash inside a codec)
turns the remaining windows into `decoder_crashed`. Windows already received are kept either way. The child
is also replaced every `recycle_after` videos, so memory an FFmpeg build leaks cannot pile up.

Messages are pickles framed by an 8-byte length on the child's stdin and stdout; the child's own output goes
to stderr. Both sides are cogflow, so unpickling the child's replies is safe.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from cogflow.pipeline.contract import CLIP_SIZE
from cogflow.pipeline.video import (
    FULL,
    DecodeStats,
    WindowFailed,
    WindowFrames,
    file_sha256,
    sample_windows,
)

HEADER = struct.Struct(">Q")
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True)
class DecodeJob:
    path: str  # a local file
    windows: list[list[float]]  # per window, its target instants in seconds from the video's start
    sha256: str | None = None  # when given, the file must still hold these bytes (the lake's video_id)
    size: int = CLIP_SIZE
    crop: tuple[float, ...] = FULL  # the content box inside the video's bars (scan.py), as shares of the frame
    threads: int = 0
    seek_gap_s: float = 10.0


Result = WindowFrames | WindowFailed | DecodeStats


def run_job(job: DecodeJob) -> Iterator[Result]:
    """The child's work for one video: check the file is the one ingested, then sample its windows."""
    path = Path(job.path)
    problem = None
    if not path.exists():
        problem = ("missing_file", f"{job.path} does not exist any more")
    elif job.sha256 is not None and file_sha256(path)[0] != job.sha256:
        problem = ("video_changed", f"{job.path} no longer holds the bytes ingested (sha256 {job.sha256[:16]}…)")
    if problem is not None:
        for w in range(len(job.windows)):
            yield WindowFailed(w, *problem)
        yield DecodeStats(0, 0, 0.0)
        return
    yield from sample_windows(
        path, job.windows, size=job.size, crop=job.crop, threads=job.threads, seek_gap_s=job.seek_gap_s
    )


def _send(out: IO[bytes], message: object) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(HEADER.pack(len(payload)))
    out.write(payload)
    out.flush()


def child_main() -> None:
    """Serve jobs from stdin until it closes."""
    jobs = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printed (FFmpeg, warnings) goes to stderr, not into the replies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes our stdin
    while (header := _read_exactly(jobs, HEADER.size)) is not None:
        payload = _read_exactly(jobs, HEADER.unpack(header)[0])
        if payload is None:
            break
        job: DecodeJob = pickle.loads(payload)
        for result in run_job(job):
            _send(replies, result)


class Decoder:
    """A child decoder process, started on first use and replaced after a timeout, a crash or `recycle_after` jobs.

    A thread reads the child's replies as fast as it writes them, into a bounded queue, so the child keeps
    decoding while the caller compresses and writes what it already has.
    """

    def __init__(self, recycle_after: int = 100, queue_size: int = 64) -> None:
        self.recycle_after = recycle_after
        self.queue_size = queue_size  # replies held at most: 64 clips are 25 MB
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies: queue.Queue = queue.Queue()
        self._jobs = 0

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> subprocess.Popen[bytes]:
        """Start the child now (it is started on first use otherwise)."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "cogflow.pipeline.decoder"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            assert self._proc.stdin is not None and self._proc.stdout is not None  # both are pipes
            try:  # a 1 MB pipe holds two clips: fewer switches between the child and the reader (Linux only)
                fcntl.fcntl(self._proc.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
            except (AttributeError, OSError):
                pass
            self._replies = queue.Queue(maxsize=self.queue_size)
            threading.Thread(target=_pump, args=(self._proc.stdout, self._replies), daemon=True).start()
            # A decoder dropped without close() (its thread ended) still lets its child go: closing the child's
            # input ends it.
            self._finalizer = weakref.finalize(self, self._proc.stdin.close)
            self._jobs = 0
        return self._proc

    def _kill(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        self._finalizer.detach()
        proc.kill()
        code = proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        _drain(self._replies)  # unblock the reader thread, which then sees the end of the pipe and stops
        return code

    def close(self) -> None:
        """Let the child finish (it exits when its stdin closes); kill it if it does not within a few seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._finalizer.detach()
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, OSError):
            proc.kill()
            proc.wait()
        _drain(self._replies)

    def run(self, job: DecodeJob, timeout_s: float) -> Iterator[Result]:
        """The windows of `job` as they complete, then DecodeStats. Never raises for a bad video."""
        started = time.monotonic()
        pending = set(range(len(job.windows)))
        finished = False
        try:
            proc = self.start()
            assert proc.stdin is not None  # start() gives the child a pipe as its stdin
            try:
                _send(proc.stdin, job)
            except OSError:  # the child died between jobs: one fresh try
                self._kill()
                proc = self.start()
                assert proc.stdin is not None
                _send(proc.stdin, job)
            deadline = started + timeout_s
            while True:
                try:
                    result = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError from None
                if result is _CLOSED:
                    raise EOFError
                if isinstance(result, DecodeStats):
                    finished = True
                    yield result
                    break
                pending.discard(result.index)
                yield result
        except TimeoutError:
            self._kill()
            for w in sorted(pending):
                yield WindowFailed(w, "decode_timeout", f"no result within {timeout_s:g} s; the decoder was stopped")
            finished = True
            yield DecodeStats(0, 0, time.monotonic() - started)
        except (EOFError, OSError) as exc:
            code = self._kill()
            detail = f"the decoder process died (exit code {code})" if isinstance(exc, EOFError) else str(exc)
            for w in sorted(pending):
                yield WindowFailed(w, "decoder_crashed", detail)
            finished = True
            yield DecodeStats(0, 0, time.monotonic() - started)
        finally:
            if not finished:  # the caller stopped reading mid-video: the child is mid-job, start afresh
                self._kill()
        self._jobs += 1
        if self._jobs >= self.recycle_after:
            self.close()


_CLOSED = object()  # put on the queue when the child's output ends


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    """n bytes from a pipe (which hands out what it has), or None at its end."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _pump(stream: BinaryIO, replies: queue.Queue) -> None:
    """Move the child's replies from its stdout into `replies` until the pipe ends."""
    try:
        while (header := _read_exactly(stream, HEADER.size)) is not None:
            payload = _read_exactly(stream, HEADER.unpack(header)[0])
            if payload is None:
                break
            replies.put(pickle.loads(payload))
    except (OSError, ValueError):  # the pipe was closed under us: the child is gone
        pass
    finally:
        replies.put(_CLOSED)
        stream.close()


def _drain(replies: queue.Queue) -> None:
    while True:
        try:
            replies.get_nowait()
        except queue.Empty:
            return


if __name__ == "__main__":
    child_main()
