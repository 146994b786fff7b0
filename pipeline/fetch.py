"""Fetching source files (manifests, videos, subtitles) from s3:// and http(s):// into a local file, safely.

A manifest is untrusted input, so every fetch:
- is known by its `source_key` (the URL without its credentials) and shows no more than that (`safe_uri`);
- connects only to hosts that are and resolve to public addresses, unless COGFLOW_ALLOWED_HOSTS names them, checks
  every redirect target again, and connects to the very addresses it checked (DNS cannot switch them in between);
- sends user:password@ credentials to the URL's own origin only, never to another one a redirect names;
- ends within COGFLOW_DOWNLOAD_DEADLINE_S (all attempts and redirects together, an HTTP answer's headers included),
  is cut off when it is slower than COGFLOW_DOWNLOAD_MIN_RATE over any stretch of `timeout_s`, and does not ask a
  server that kept silent again;
- sends a non-ASCII path or query percent-encoded as UTF-8, and turns an address it cannot use (the URL's own or a
  redirect's) into FetchError('malformed_uri'), never another exception;
- can be stopped at once from another thread (`stop_downloads_on_error`), so SIGTERM ends a run promptly.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import urllib3.exceptions

from cogflow.pipeline.sources import (
    DownloadPolicy,
    FetchError,
    checked_addresses,
    connect_checked,
    download_policy,
    host_port,
    safe_uri,
)
from cogflow.pipeline.storage import S3_ERRORS, S3_TIMEOUTS, S3ClientError, s3_client, split_s3

# --- limits of one download ------------------------------------------------------------------------------------


@dataclass
class _Budget:
    """The time one fetch may take, all attempts and redirects together, and the run it belongs to."""

    timeout_s: float  # per connect and per read; also the stretch over which the rate is measured
    policy: DownloadPolicy
    started: float = dataclasses.field(default_factory=time.monotonic)
    run: _Run = dataclasses.field(default_factory=lambda: _joined_run())
    cut: bool = False  # the deadline timer shut a connection of this fetch (`_Line`)

    def remaining(self) -> float:
        return self.policy.deadline_s - (time.monotonic() - self.started)

    def wait_s(self) -> float:
        """How long the next connect or read may wait: the timeout, cut short by the deadline."""
        left = self.remaining()
        if left <= 0:
            raise self.expired()
        return min(self.timeout_s, left)

    def expired(self) -> FetchError:
        return FetchError(
            "download_timeout",
            f"not finished within the deadline of {self.policy.deadline_s:g} s (COGFLOW_DOWNLOAD_DEADLINE_S)",
        )

    def check(self) -> None:
        """FetchError when the run was stopped or the deadline cut the connection: what a socket that was shut
        returns (an end of file, half a header) is no answer."""
        if self.run.stopped.is_set():
            raise _stopped()
        if self.cut:
            raise self.expired()


# --- stopping downloads from another thread --------------------------------------------------------------------


class _Run:
    """The downloads of one `stop_downloads_on_error` block, which are stopped together."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # the threads that downloaded for it
        self._in_flight: set[Callable[[], None]] = set()  # how to shut each download's connection right now

    def stop(self) -> None:
        with _runs_lock:
            self.stopped.set()
            in_flight = list(self._in_flight)
        for shut in in_flight:
            shut()

    @contextlib.contextmanager
    def tracking(self, shut: Callable[[], None]) -> Iterator[None]:
        """A download in flight: stopping the run calls `shut`, which ends whatever read it is blocked in."""
        with _runs_lock:
            if self.stopped.is_set():
                raise _stopped()
            self._in_flight.add(shut)
        try:
            yield
        finally:
            with _runs_lock:
                self._in_flight.discard(shut)


_runs_lock = threading.Lock()
_latest_run = _Run()  # the latest block's (before any block: one that nothing stops)


def _joined_run() -> _Run:
    """The run a download starting now belongs to: the latest block's. Once that run is stopped it keeps only the
    threads that downloaded for it (a shard's next video is stopped too); any other thread - later work in this
    process, a new worker - gets a run of its own, so a stopped run never stops what comes after it."""
    me = threading.current_thread()
    with _runs_lock:
        run = _latest_run
        if run.stopped.is_set() and me not in run.threads:
            return _Run()
        run.threads.add(me)
        return run


@contextlib.contextmanager
def stop_downloads_on_error() -> Iterator[None]:
    """A block that waits on downloads running in other threads (probe tasks). If it ends by an exception - SIGTERM
    becomes one in the main thread (Prefect's TerminationSignal), so does Ctrl-C - every download started for it is
    stopped at once: its socket is shut down, so a thread blocked reading comes back instead of the process waiting
    for it, and it is not tried again. Downloads that start after the block, other than by the threads that were
    downloading for it, run as usual (`_joined_run`)."""
    global _latest_run
    run = _Run()
    with _runs_lock:
        _latest_run = run
    try:
        yield
    except BaseException:
        run.threads.discard(threading.current_thread())  # the thread that stops the run goes on to later work
        run.stop()
        raise


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: safe under an SSL reader


def _stopped() -> FetchError:
    return FetchError("download_stopped", "the run was stopped")


# --- fetch -----------------------------------------------------------------------------------------------------


class _HTTPStatus(OSError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status = status


_TIMEOUTS = (TimeoutError, urllib3.exceptions.TimeoutError, *S3_TIMEOUTS)
_FAILURES = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError, *S3_ERRORS)


def fetch(
    uri: str,
    dest: str | Path,
    *,
    max_bytes: int,
    timeout_s: float,
    retries: int,
    byte_range: tuple[int, int] | None = None,
) -> Path:
    """Download an s3:// or http(s):// object to `dest`, with a size cap, a per-read timeout, the deadline and
    minimum rate of `download_policy()`, and up to `retries` more attempts after a failure that may pass (a refused
    or cut connection, a 5xx answer); a timeout is not retried.

    Raises FetchError("host_not_allowed" | "malformed_uri" | "bytes_over_limit" | "missing_file" | "download_timeout" |
    "download_too_slow" | "download_failed" | "download_stopped", ...), never another exception for what a URL or a
    server does; ValueError for a malformed download setting.
    A partial download is deleted, never left behind. `byte_range` (offset, size), s3:// only: that part of the
    object (a member of a tar, pipeline/webdataset.py).
    """
    if byte_range is not None and uri[:5].lower() != "s3://":
        raise ValueError("byte ranges are fetched from s3:// objects only")
    dest = Path(dest)
    budget = _Budget(timeout_s, download_policy())
    last_error, attempts = "unknown error", 0
    for attempt in range(retries + 1):
        attempts = attempt + 1
        try:
            budget.check()
            if uri[:5].lower() == "s3://":
                _fetch_s3(uri, dest, max_bytes, budget, byte_range)
            else:
                _fetch_http(uri, dest, max_bytes, budget)
            return dest
        except FetchError:
            dest.unlink(missing_ok=True)
            raise
        except _TIMEOUTS:
            dest.unlink(missing_ok=True)
            if budget.run.stopped.is_set():
                raise _stopped() from None
            if budget.remaining() <= 0:
                raise budget.expired() from None
            raise FetchError(
                "download_timeout", f"{safe_uri(uri)} sent nothing for {timeout_s:g} s (COGFLOW_DOWNLOAD_TIMEOUT_S)"
            ) from None
        except _FAILURES as exc:
            dest.unlink(missing_ok=True)
            if budget.run.stopped.is_set():
                raise _stopped() from None
            if budget.cut or budget.remaining() <= 0:  # the deadline timer shut the connection
                raise budget.expired() from None
            if _is_not_found(exc):
                raise FetchError("missing_file", f"{safe_uri(uri)} does not exist") from exc
            last_error = str(exc) if isinstance(exc, _HTTPStatus) else f"{type(exc).__name__}: {exc}"
            pause = min(0.2 * 2**attempt, 5.0)
            if not _may_pass(exc) or attempt == retries or budget.remaining() <= pause:
                break
            budget.run.stopped.wait(pause)
    raise FetchError("download_failed", f"{safe_uri(uri)} after {attempts} attempts: {_redact_text(last_error)}")


def _redact_text(text: str) -> str:
    # botocore/urllib messages can echo the URL with its query (a presigned signature): cut at '?'.
    return text.split("?", 1)[0] if "?" in text else text


def _is_not_found(exc: Exception) -> bool:
    if isinstance(exc, _HTTPStatus):
        return exc.status in (404, 410)
    if isinstance(exc, S3ClientError):
        return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")
    return False


def _may_pass(exc: Exception) -> bool:
    """Whether another attempt may succeed: yes after a refused, reset or cut connection, a 5xx, 408 or 429 answer or
    S3 throttling; no after another 4xx answer or a request that cannot be made."""
    if isinstance(exc, _HTTPStatus):
        return exc.status >= 500 or exc.status in (408, 429)
    if isinstance(exc, S3ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500
        return status >= 500 or status in (408, 429)
    return not isinstance(exc, (http.client.InvalidURL, socket.gaierror))


def _copy_body(
    read: Callable[[int], bytes], set_timeout: Callable[[float], None], dest: Path, max_bytes: int, budget: _Budget
) -> int:
    """Write what `read` returns (as soon as anything arrived) to `dest`; return the bytes received. Each read
    waits at most the timeout (cut short by the deadline); the rate is measured over stretches of the timeout."""
    received = 0
    stretch_start, stretch_bytes = time.monotonic(), 0
    with open(dest, "wb") as out:
        while True:
            set_timeout(budget.wait_s())
            chunk = read(1 << 20)
            budget.check()
            if not chunk:
                return received
            received += len(chunk)
            if received > max_bytes:  # the header can lie or be absent: count what arrives
                raise FetchError("bytes_over_limit", f"more than {max_bytes} bytes received")
            out.write(chunk)
            stretch_bytes += len(chunk)
            elapsed = time.monotonic() - stretch_start
            if elapsed >= budget.timeout_s:
                if stretch_bytes < budget.policy.min_rate * elapsed:
                    raise FetchError(
                        "download_too_slow",
                        f"{stretch_bytes / elapsed:.0f} bytes/s over {elapsed:.1f} s, "
                        f"under the minimum of {budget.policy.min_rate:g} (COGFLOW_DOWNLOAD_MIN_RATE)",
                    )
                stretch_start, stretch_bytes = time.monotonic(), 0


def _declared_length(value: object) -> int | None:
    try:
        return int(value) if value is not None else None  # type: ignore[call-overload]
    except ValueError:
        return None


def _fetch_s3(uri: str, dest: Path, max_bytes: int, budget: _Budget, byte_range: tuple[int, int] | None) -> None:
    bucket, key = split_s3(uri)
    # No SDK retries: fetch's own loop retries what may pass, and a timeout is not retried.
    client = s3_client(budget.timeout_s, connect_timeout_s=budget.wait_s(), attempts=1)
    extra = {} if byte_range is None else {"Range": f"bytes={byte_range[0]}-{byte_range[0] + byte_range[1] - 1}"}
    response = client.get_object(Bucket=bucket, Key=key, **extra)
    raw = response["Body"]._raw_stream  # urllib3's response: read1 returns what has arrived, so a trickle is measured
    try:
        size = _declared_length(response.get("ContentLength"))
        if size is not None and size > max_bytes:
            raise FetchError("bytes_over_limit", f"{size} bytes > limit {max_bytes}")

        def sock() -> socket.socket | None:
            return getattr(raw.connection, "sock", None)

        def set_timeout(seconds: float) -> None:
            if (s := sock()) is not None:
                s.settimeout(seconds)

        with budget.run.tracking(lambda: _shut(sock())):
            received = _copy_body(raw.read1, set_timeout, dest, max_bytes, budget)
        if size is not None and received != size:
            raise OSError(f"connection closed after {received} of {size} bytes")
    finally:
        raw.close()  # the client is this fetch's own: nothing to hand back to a pool


_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").rstrip("."), parts.port or (443 if scheme == "https" else 80)


def _parsed(url: str, what: str) -> urllib.parse.SplitResult:
    """`url` split, its port checked; FetchError('malformed_uri') naming `what` when Python cannot parse it."""
    try:
        parts = urllib.parse.urlsplit(url)
        _origin(parts)  # ValueError for a port that is not a number or out of range
    except ValueError as exc:
        raise FetchError("malformed_uri", f"{what} is not a valid URL ({exc})") from None
    return parts


# What a request line may carry as written: printable ASCII, '%' included, so escapes the URL already has stay.
_REQUEST_SAFE = "".join(map(chr, range(0x21, 0x7F)))


def _request_target(parts: urllib.parse.SplitResult) -> str:
    """The path and query as sent: what HTTP cannot carry (non-ASCII, spaces, control characters) percent-encoded as
    UTF-8, as browsers do (/视频/1.mp4 -> /%E8%A7%86%E9%A2%91/1.mp4); the rest as the URL has it."""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        return urllib.parse.quote(target, safe=_REQUEST_SAFE)
    except UnicodeEncodeError:  # a lone surrogate (JSON can write '\\ud800'): no bytes to send
        raise FetchError("malformed_uri", "the URL's path or query has a character that UTF-8 cannot encode") from None


def _header_text(value: str) -> str:
    """A header as its sender meant it: http.client decodes headers as Latin-1, and a Location is often UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


class _Line:
    """One HTTP connection's socket, as other threads reach it: a duplicate descriptor, which TLS wrapping does not
    detach, so shutting it down ends a handshake, request or read blocked in any phase. A timer shuts it at the
    fetch's deadline: the per-read timeout alone lets a server that sends its headers a byte at a time hold a fetch
    for as long as it likes."""

    def __init__(self, budget: _Budget) -> None:
        self._budget = budget
        self._lock = threading.Lock()  # close() must not free the descriptor while shut() uses it
        self._sock: socket.socket | None = None
        self._timer: threading.Timer | None = None

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock.dup()
        self._timer = threading.Timer(max(0.0, self._budget.remaining()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self._budget.cut = True
        self.shut()

    def shut(self) -> None:
        with self._lock:
            _shut(self._sock)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _fetch_http(uri: str, dest: Path, max_bytes: int, budget: _Budget) -> None:
    try:
        with _http_response(uri, "GET", budget) as (response, sock):
            if response.status >= 300:
                raise _HTTPStatus(response.status, response.reason)
            declared = _declared_length(response.getheader("Content-Length"))
            if declared is not None and declared > max_bytes:
                raise FetchError("bytes_over_limit", f"{declared} bytes > limit {max_bytes}")
            received = _copy_body(response.read1, sock.settimeout, dest, max_bytes, budget)
            if declared is not None and received != declared:
                raise OSError(f"connection closed after {received} of {declared} bytes")
    except ValueError as exc:  # a request http.client cannot make that no check above foresaw: a reason all the same
        raise FetchError("download_failed", f"{safe_uri(uri)}: {type(exc).__name__}: {_redact_text(str(exc))}") from exc


def http_exists(uri: str, timeout_s: float) -> bool:
    """Whether an http(s) URL answers a HEAD request with success, under the same guard and limits as `fetch`."""
    budget = _Budget(timeout_s, download_policy())  # a malformed setting is the caller's ValueError, not a False
    try:
        with _http_response(uri, "HEAD", budget) as (response, _):
            return 200 <= response.status < 300
    except (FetchError, ValueError, *_TIMEOUTS, *_FAILURES):
        return False


@contextlib.contextmanager
def _http_response(uri: str, method: str, budget: _Budget) -> Iterator[tuple[http.client.HTTPResponse, socket.socket]]:
    """The response to `method` on `uri`, and its socket, after following redirects (each target checked by the host
    guard; the Authorization made of user:password@ goes to the URL's own origin only). Until the block ends the
    connection stays tracked, so `stop_downloads_on_error` can shut it, and the deadline timer shuts it on time."""
    parts = _parsed(uri, safe_uri(uri))
    authorization = None
    if parts.username is not None:  # user:password@ is sent as basic auth, to this origin only
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(token.encode()).decode()
    home = _origin(parts)
    for _ in range(_MAX_REDIRECTS + 1):
        scheme, host, port = _origin(parts)
        if scheme not in ("http", "https"):
            raise FetchError("download_failed", f"redirected to {scheme}:, which is not fetched (only http and https)")
        if not host:
            raise FetchError("malformed_uri", f"{safe_uri(uri)} redirects to an address without a host")
        infos = checked_addresses(host, port, budget.policy)
        target = _request_target(parts)
        connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = connection_class(host, port, timeout=budget.wait_s())
        line = _Line(budget)

        def connect(_address: object, timeout: float, _source: object = None) -> socket.socket:
            sock = connect_checked(infos, timeout)  # noqa: B023 (called within this iteration)
            line.attach(sock)  # noqa: B023 (called within this iteration)
            return sock

        conn._create_connection = connect  # type: ignore[attr-defined]
        headers = {"User-Agent": "cogflow", "Accept-Encoding": "identity"}
        if authorization and (scheme, host, port) == home:
            headers["Authorization"] = authorization
        with budget.run.tracking(line.shut):
            try:
                conn.connect()
                sock = conn.sock  # kept: the connection lets go of its socket when the response says close
                conn.request(method, target, headers=headers)
                response = conn.getresponse()
                budget.check()  # a connection shut half-way through the headers still parses as an answer
                location = response.getheader("Location") if response.status in _REDIRECTS else None
                if location is None:
                    yield response, sock
                    return
            finally:
                conn.close()
                line.close()
        # the next hop: relative to this URL, never with credentials a server hands out
        here = urllib.parse.urlunsplit(parts._replace(netloc=host_port(parts.netloc)))
        try:
            joined = urllib.parse.urljoin(here, _header_text(location).strip())
        except ValueError as exc:
            raise FetchError("malformed_uri", f"{safe_uri(uri)} redirects to an invalid URL ({exc})") from None
        parts = _parsed(joined, f"the redirect target of {safe_uri(uri)}")
        parts = parts._replace(netloc=host_port(parts.netloc), fragment="")
        if _origin(parts) != home:
            authorization = None  # once the chain has left the origin, credentials stay behind for good
    raise FetchError("download_failed", f"{safe_uri(uri)}: more than {_MAX_REDIRECTS} redirects")
