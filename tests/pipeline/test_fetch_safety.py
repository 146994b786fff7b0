"""Fetching what an untrusted manifest names: a source's identity keeps what selects it, no request to internal
addresses (SSRF), every download bounded in time and rate, credentials never follow a redirect to another origin.
Real HTTP servers on 127.0.0.x and moto's S3 server; nothing is mocked."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import copy_sample, write_csv

from cogflow.pipeline import lake
from cogflow.pipeline.fetch import fetch, http_exists, stop_downloads_on_error
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.manifest import resolve_source
from cogflow.pipeline.settings import Limits, load_settings
from cogflow.pipeline.sources import FetchError, safe_uri, source_key
from cogflow.pipeline.split import _local_source
from cogflow.pipeline.storage import Storage

PAYLOAD = bytes(range(256)) * 16  # 4 KiB


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Routes below; every request is recorded as (path, Authorization header) on the server."""

    protocol_version = "HTTP/1.1"
    folder: Path | None = None

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.close_connection = True
        server = self.server
        server.requests.append((self.path, self.headers.get("Authorization")))  # type: ignore[attr-defined]
        path, _, query = self.path.partition("?")
        if path == "/get":  # the file named by the query: ?f=NAME
            name = dict(p.split("=", 1) for p in query.split("&") if "=" in p)["f"]
            self._send(200, (self.folder / name).read_bytes())  # type: ignore[operator]
        elif path == "/clip.mp4":
            self._send(200, PAYLOAD)
        elif path == "/auth/clip.mp4":
            ok = self.headers.get("Authorization") == "Basic " + base64.b64encode(b"ann:s3cret").decode()
            self._send(200, PAYLOAD) if ok else self._send(401, b"who are you?")
        elif path == "/redirect":  # to the URL in the query, as a file host hands over to its CDN
            self._send(302, Location=query)
        elif path == "/redirect-utf8":  # to /files/视频/1.mp4, the path in raw UTF-8 as some servers send it
            self._send(302, Location="/files/视频/1.mp4".encode().decode("latin-1"))
        elif path.startswith("/files/"):  # a file of the folder, by its percent-encoded UTF-8 name
            self._send(200, (self.folder / urllib.parse.unquote(path[len("/files/") :])).read_bytes())  # type: ignore[operator]
        elif path == "/slow-headers":  # a 200 whose headers arrive one byte every 0.2 s for 5 s, then an empty body
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
            self._drip(1, 0.2, until=5.0, then=b"\r\nContent-Length: 0\r\n\r\n")
        elif path == "/trickle":  # one byte every 0.2 s of a 1000-byte body; later requests fail at once
            if len(server.requests) > 1:  # type: ignore[attr-defined]
                return self._send(500, b"busy")
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self._drip(1, 0.2, until=3.0)
        elif path == "/endless":  # 2 KiB every 0.05 s (40 KiB/s) of a 10 MB body
            self.send_response(200)
            self.send_header("Content-Length", str(10**7))
            self.end_headers()
            self._drip(2048, 0.05, until=4.0)
        else:
            self._send(404, b"not here")

    def do_HEAD(self) -> None:  # /files/ only
        self.close_connection = True
        found = (
            self.path.startswith("/files/")
            and (self.folder / urllib.parse.unquote(self.path[len("/files/") :])).is_file()
        )  # type: ignore[operator]
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _drip(self, size: int, every: float, until: float, then: bytes = b"") -> None:
        stop = time.monotonic() + until
        try:
            while time.monotonic() < stop:
                self.wfile.write(b"x" * size)
                self.wfile.flush()
                time.sleep(every)
            self.wfile.write(then)
        except OSError:
            pass  # the client hung up


@contextmanager
def serve(host: str = "127.0.0.1", folder: Path | None = None) -> Iterator[http.server.ThreadingHTTPServer]:
    handler = type("Handler", (_Recorder,), {"folder": folder})
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url(server: http.server.ThreadingHTTPServer, path: str, host: str | None = None) -> str:
    address, port = server.server_address[:2]
    return f"http://{host or address}:{port}{path}"


@pytest.fixture
def www() -> Iterator[http.server.ThreadingHTTPServer]:
    with serve() as server:
        yield server


# ---------------------------------------------------------------------------------------------------------------
# Identity: the query selects the resource; only credentials are left out


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("http://h/get?f=a.mp4", "http://h/get?f=a.mp4"),
        (
            "HTTPS://ann:pw@h:8443/get?f=a.mp4&sig=S&X-Amz-Signature=S&X-Amz-Credential=C&X-Amz-Security-Token=T#t=3",
            "https://h:8443/get?f=a.mp4",
        ),
        (
            "https://b.s3.amazonaws.com/k.mp4?versionId=7&X-Amz-Algorithm=A&X-Amz-Date=D&X-Amz-Expires=60",
            "https://b.s3.amazonaws.com/k.mp4?versionId=7",
        ),
        (
            "https://storage.googleapis.com/b/k.mp4?GoogleAccessId=G&Expires=1&Signature=S&generation=2",
            "https://storage.googleapis.com/b/k.mp4?generation=2",
        ),
        ("https://h/v.mp4?token=T&Key-Pair-Id=K&Policy=P&x-goog-signature=S&part=2", "https://h/v.mp4?part=2"),
        ("http://[::1]:8080/v.mp4?id=3&Signature=S", "http://[::1]:8080/v.mp4?id=3"),
        ("s3://bucket/key/v.mp4", "s3://bucket/key/v.mp4"),
        ("/data/videos/a?b.mp4", "/data/videos/a?b.mp4"),  # local paths are left alone
    ],
)
def test_source_key_keeps_what_selects_the_resource(uri: str, key: str) -> None:
    assert source_key(uri) == key
    assert safe_uri(uri) == key  # what logs and reject details show is no more than what the lake holds


def test_rows_that_differ_only_in_the_query_are_different_videos(tmp_path: Path, sample_dir: Path) -> None:
    rows = copy_sample(sample_dir, tmp_path / "www")
    first, second = rows[0]["video"], rows[1]["video"]
    assert first.endswith(".mp4") and second.endswith(".webm")
    with serve(folder=tmp_path / "www") as server:
        manifest = write_csv(
            tmp_path / "m.csv",
            [
                {"video": url(server, f"/get?f={first}"), "caption": "the first video"},
                {"video": url(server, f"/get?f={second}&sig=onlyasignature"), "caption": "the second video"},
            ],
        )
        settings = load_settings(home=str(tmp_path / "home"))
        summary = ingest(str(manifest), settings)
        assert summary.outcomes == {"accepted": 2}
        assert sorted(path for path, _ in server.requests) == sorted(
            [f"/get?f={first}", f"/get?f={second}&sig=onlyasignature"]
        )
    store = Storage.at(settings.lake)
    videos = {v["video_id"]: v for v in lake.read_table(store, "videos").to_pylist()}
    assert {v["source_uri"] for v in videos.values()} == {
        url(server, f"/get?f={first}"),
        url(server, f"/get?f={second}"),
    }
    by_caption = {c["caption"]: videos[c["video_id"]] for c in lake.read_table(store, "captions").to_pylist()}
    assert by_caption["the first video"]["container"] != by_caption["the second video"]["container"]  # mp4 vs webm


def test_urls_in_extra_columns_are_stored_without_credentials(tmp_path: Path, sample_dir: Path) -> None:
    rows = copy_sample(sample_dir, tmp_path)
    (tmp_path / "subs.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nfrom subtitles\n", encoding="utf-8")
    manifest = tmp_path / "m.jsonl"  # JSON may also spell '/' as '\/' and '@' as '\u0040'
    line = (
        r'{"video": "VIDEO", "subtitles": "subs.srt", "page": "https://ann:hunter2@example.com/v?id=7&sig=deadbeef",'
        r' "mirror": "https:\/\/ann:hunter2\u0040example.com\/v"}'
    )
    rejected = line.replace('"subtitles": "subs.srt"', '"caption": ""')  # its raw row is kept in rejects/
    manifest.write_text(
        "\n".join(x.replace("VIDEO", rows[0]["video"]) for x in (line, rejected)) + "\n", encoding="utf-8"
    )
    settings = load_settings(home=str(tmp_path / "home"))
    assert ingest(str(manifest), settings).outcomes == {"accepted": 1, "empty_caption": 1}
    store = Storage.at(settings.lake)
    (caption,) = lake.read_table(store, "captions").to_pylist()
    metadata = json.loads(caption["metadata"])
    assert metadata["page"] == "https://example.com/v" and metadata["mirror"] == "https://example.com/v"
    assert metadata["subtitles"] == "subs.srt"
    (reject,) = lake.read_table(store, "rejects").to_pylist()
    assert "example.com" in reject["raw"] and "hunter2" not in reject["raw"] and "deadbeef" not in reject["raw"]


@pytest.mark.parametrize(
    "value",
    [
        "s3://..",
        "s3://",
        "s3:///key.mp4",
        "s3://bucket",
        "s3://bucket/",
        "s3://a/v.mp4",
        "s3://../v.mp4",
        "s3://user:pw@bucket/v.mp4",
        "http://[::1/v.mp4",
        "http://h:99999/v.mp4",
        "https://:443/v.mp4",
    ],
)
def test_malformed_remote_uris_are_rejected_with_a_reason(value: str) -> None:
    resolved = resolve_source(value, "/data")
    assert resolved.reason == "malformed_uri", resolved
    assert resolved.detail and "pw" not in resolved.detail


# ---------------------------------------------------------------------------------------------------------------
# The host guard (SSRF): no connection to internal addresses, however they are written


@pytest.fixture
def listener() -> Iterator[tuple[int, list]]:
    """A plain TCP listener on 127.0.0.1 that counts the connections it accepts."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.05)
    accepted: list = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                accepted.append(conn)
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield sock.getsockname()[1], accepted
    stop.set()
    thread.join()
    sock.close()


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1", "0x7f.1", "0177.0.0.1", "2130706433", "localhost", "[::ffff:127.0.0.1]", "LOCALHOST."],
)
def test_loopback_in_any_spelling_is_refused_without_a_connection(host, listener, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("COGFLOW_ALLOWED_HOSTS", raising=False)
    port, accepted = listener
    with pytest.raises(FetchError) as info:
        fetch(f"http://{host}:{port}/v.mp4", tmp_path / "v.mp4", max_bytes=10**6, timeout_s=2, retries=0)
    assert info.value.reason == "host_not_allowed"
    assert "COGFLOW_ALLOWED_HOSTS" in info.value.detail
    time.sleep(0.1)
    assert accepted == []


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "[::ffff:169.254.169.254]",
        "[fd00:ec2::254]",
        "2852039166",
        "0xa9fea9fe",
        "0.0.0.0",
        "0",
        "[::]",
        "10.1.2.3",
        "192.168.0.1",
        "100.64.0.1",
        "224.0.0.1",
        "[ff02::1]",
        "[fe80::1]",
        "[::a9fe:a9fe]",
        "[64:ff9b::a9fe:a9fe]",
        "metadata.google.internal",
        "metadata",
        "printer.local",
    ],
)
def test_internal_addresses_and_names_are_refused(host: str, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch(f"http://{host}/latest/meta-data/", tmp_path / "x", max_bytes=10**6, timeout_s=2, retries=2)
    assert info.value.reason == "host_not_allowed", info.value
    assert time.monotonic() - start < 1.5  # refused before any connection attempt, not after one timed out


def test_allowed_hosts_readmit_named_hosts(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGFLOW_ALLOWED_HOSTS", " localhost ")
    assert (
        fetch(url(www, "/clip.mp4", "localhost"), tmp_path / "a", max_bytes=10**6, timeout_s=2, retries=0).read_bytes()
        == PAYLOAD
    )
    with pytest.raises(FetchError) as info:  # localhost is listed by name, not every address it may resolve to
        fetch(url(www, "/clip.mp4"), tmp_path / "b", max_bytes=10**6, timeout_s=2, retries=0)
    assert info.value.reason == "host_not_allowed"
    monkeypatch.setenv("COGFLOW_ALLOWED_HOSTS", "example.org,127.0.0.1")
    assert (
        fetch(url(www, "/clip.mp4", "127.1"), tmp_path / "c", max_bytes=10**6, timeout_s=2, retries=0).read_bytes()
        == PAYLOAD
    )


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:99999/v.mp4",
        "http://127.0.0.1:port/v.mp4",
        "http://[::1/v.mp4",
        "http://" + "a" * 64 + ".example/v.mp4",
    ],
)
def test_a_malformed_redirect_target_is_a_reject_reason(www, tmp_path: Path, target: str) -> None:
    start = url(www, "/redirect?" + target)
    with pytest.raises(FetchError) as info:  # was a bare ValueError or UnicodeError, which failed a whole shard
        fetch(start, tmp_path / "x", max_bytes=10**6, timeout_s=2, retries=2)
    assert info.value.reason == "malformed_uri", info.value
    assert len(www.requests) == 1  # not asked again: the answer will not change
    assert http_exists(start, timeout_s=2) is False


def test_a_host_name_dns_cannot_carry_is_a_reject_reason(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as info:  # a label over 63 characters: UnicodeError from the resolver
        fetch("http://" + "a" * 64 + ".example/v.mp4", tmp_path / "x", max_bytes=10**6, timeout_s=2, retries=0)
    assert info.value.reason == "malformed_uri", info.value


def test_a_bad_redirect_does_not_fail_the_shard(www, tmp_path: Path) -> None:
    bad = url(www, "/redirect?http://[::1/v.mp4")
    local, problem = _local_source([bad], tmp_path, Limits(download_timeout_s=2, download_retries=0))
    assert local is None and problem[0] == "malformed_uri"  # a reject reason for the video, not a traceback
    local, _ = _local_source([bad, url(www, "/clip.mp4")], tmp_path, Limits(download_timeout_s=2, download_retries=0))
    assert local is not None and local.read_bytes() == PAYLOAD  # and the video's next known path is tried


def test_non_ascii_paths_and_queries_are_percent_encoded(tmp_path: Path) -> None:
    (tmp_path / "www" / "视频").mkdir(parents=True)
    (tmp_path / "www" / "视频" / "1.mp4").write_bytes(PAYLOAD)
    (tmp_path / "www" / "视频" / "第 2 集.mp4").write_bytes(PAYLOAD[::-1])
    with serve(folder=tmp_path / "www") as server:
        got = fetch(url(server, "/files/视频/1.mp4?标题=猫"), tmp_path / "a", max_bytes=10**6, timeout_s=2, retries=0)
        assert got.read_bytes() == PAYLOAD
        assert server.requests[-1][0] == "/files/%E8%A7%86%E9%A2%91/1.mp4?%E6%A0%87%E9%A2%98=%E7%8C%AB"  # UTF-8
        got = fetch(url(server, "/files/视频/第 2 集.mp4"), tmp_path / "b", max_bytes=10**6, timeout_s=2, retries=0)
        assert got.read_bytes() == PAYLOAD[::-1]  # a space too
        got = fetch(
            url(server, "/files/%E8%A7%86%E9%A2%91/1.mp4"), tmp_path / "c", max_bytes=10**6, timeout_s=2, retries=0
        )
        assert got.read_bytes() == PAYLOAD  # escapes already there are left as they are
        got = fetch(url(server, "/redirect-utf8"), tmp_path / "d", max_bytes=10**6, timeout_s=2, retries=0)
        assert got.read_bytes() == PAYLOAD  # a Location header in raw UTF-8
        assert http_exists(url(server, "/files/视频/1.mp4"), timeout_s=2) is True


def test_redirects_are_checked_like_the_first_request(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGFLOW_ALLOWED_HOSTS", "127.0.0.1")
    with serve(host="127.0.0.2") as internal:  # another loopback address: not on the allow-list
        with pytest.raises(FetchError) as info:
            fetch(
                url(www, "/redirect?" + url(internal, "/clip.mp4")),
                tmp_path / "x",
                max_bytes=10**6,
                timeout_s=2,
                retries=2,
            )
        assert info.value.reason == "host_not_allowed"
        assert internal.requests == []
        with pytest.raises(FetchError) as info:
            fetch(url(www, "/redirect?file:///etc/passwd"), tmp_path / "y", max_bytes=10**6, timeout_s=2, retries=0)
        assert info.value.reason == "download_failed" and "file" in info.value.detail
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ---------------------------------------------------------------------------------------------------------------
# Credentials and redirects


def test_credentials_follow_same_origin_redirects_only(www, tmp_path: Path) -> None:
    with serve() as other:  # same address, another port: another origin
        to_other = url(www, "/redirect?" + url(other, "/auth/clip.mp4")).replace("http://", "http://ann:s3cret@", 1)
        with pytest.raises(FetchError) as info:
            fetch(to_other, tmp_path / "x", max_bytes=10**6, timeout_s=2, retries=0)
        assert info.value.reason == "download_failed" and "401" in info.value.detail
        assert other.requests == [("/auth/clip.mp4", None)]
    same = url(www, "/redirect?/auth/clip.mp4").replace("http://", "http://ann:s3cret@", 1)
    assert fetch(same, tmp_path / "y", max_bytes=10**6, timeout_s=2, retries=0).read_bytes() == PAYLOAD
    assert www.requests[-1][1] is not None


# ---------------------------------------------------------------------------------------------------------------
# Deadlines: slow and silent servers


def test_a_trickling_server_is_cut_off_for_its_rate(www, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch(url(www, "/trickle"), tmp_path / "x", max_bytes=10**6, timeout_s=1, retries=3)
    assert info.value.reason == "download_too_slow", info.value
    assert time.monotonic() - start < 3  # cut after 1 s, not at the end of the 200 s body
    assert len(www.requests) == 1  # a slow server is not asked again
    assert not (tmp_path / "x").exists()


def test_every_download_has_a_total_deadline(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGFLOW_DOWNLOAD_DEADLINE_S", "1")
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch(url(www, "/endless"), tmp_path / "x", max_bytes=10**8, timeout_s=5, retries=3)
    assert info.value.reason == "download_timeout", info.value
    assert "1 s" in info.value.detail
    assert time.monotonic() - start < 2.5
    assert not (tmp_path / "x").exists()


def test_the_deadline_holds_while_the_headers_trickle_in(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGFLOW_DOWNLOAD_DEADLINE_S", "1")
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch(url(www, "/slow-headers"), tmp_path / "x", max_bytes=10**6, timeout_s=0.5, retries=3)
    assert info.value.reason == "download_timeout", info.value
    assert time.monotonic() - start < 3  # the headers take 5 s, each byte well within the 0.5 s timeout
    assert len(www.requests) == 1 and not (tmp_path / "x").exists()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def test_a_silent_server_costs_one_timeout(silent_port: int, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch(f"http://127.0.0.1:{silent_port}/v.mp4", tmp_path / "x", max_bytes=10**6, timeout_s=0.5, retries=3)
    assert info.value.reason == "download_timeout"
    assert time.monotonic() - start < 1.5  # 4 attempts took 3.4 s


def test_a_silent_s3_endpoint_costs_one_timeout(silent_port: int, tmp_path: Path, monkeypatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{silent_port}")
    boto3.client("s3")  # loads the service model once, so what is timed below is the download
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch("s3://bucket/v.mp4", tmp_path / "x", max_bytes=10**6, timeout_s=0.5, retries=3)
    assert info.value.reason == "download_timeout"
    assert time.monotonic() - start < 4  # the SDK's own retries made it 5 timeouts per attempt, 20 in all (10 s)


def test_bad_download_settings_are_one_clear_line(www, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGFLOW_DOWNLOAD_MIN_RATE", "fast")
    with pytest.raises(ValueError, match="COGFLOW_DOWNLOAD_MIN_RATE"):
        fetch(url(www, "/clip.mp4"), tmp_path / "x", max_bytes=10**6, timeout_s=2, retries=0)


# ---------------------------------------------------------------------------------------------------------------
# Stopping a run (SIGTERM, Ctrl-C)


def test_a_stopped_run_stops_its_own_downloads_only(www, tmp_path: Path) -> None:
    def get(path: str, name: str) -> Path:
        return fetch(url(www, path), tmp_path / name, max_bytes=10**8, timeout_s=5, retries=3)

    shard = ThreadPoolExecutor(1)  # as a shard fetches its videos: one thread, one download after another
    try:
        with pytest.raises(KeyboardInterrupt), stop_downloads_on_error():
            running = shard.submit(get, "/endless", "a")
            while not www.requests:
                time.sleep(0.01)
            raise KeyboardInterrupt
        with pytest.raises(FetchError) as info:
            running.result(timeout=2)
        assert info.value.reason == "download_stopped"
        assert len(www.requests) == 1  # the download in flight is shut, not tried again
        with pytest.raises(FetchError) as info:  # nor does the stopped run's thread start its next one
            shard.submit(get, "/clip.mp4", "b").result(timeout=2)
        assert info.value.reason == "download_stopped"
    finally:
        shard.shutdown()
    # what runs after the stopped block is not stopped: this thread, a new one, the next block
    assert get("/clip.mp4", "c").read_bytes() == PAYLOAD
    with ThreadPoolExecutor(1) as later:
        assert later.submit(get, "/clip.mp4", "d").result(timeout=5).read_bytes() == PAYLOAD
    with stop_downloads_on_error():
        assert get("/clip.mp4", "e").read_bytes() == PAYLOAD
