"""COGFLOW_DOWNLOAD_DEADLINE_S and COGFLOW_DOWNLOAD_MIN_RATE are typed settings: they take units (`90s`, `1h`;
`10KB`, `10KB/s`, `10240`) and ranges, where they are used (every fetch) and when a command starts alike."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cogflow.pipeline.fetch import fetch
from cogflow.pipeline.settings import SettingError, read_settings
from cogflow.pipeline.sources import FetchError, download_policy


@pytest.mark.parametrize(
    ("deadline", "rate", "expected"),
    [
        ("90s", "10KB", (90.0, 10_000.0)),
        ("1h", "10KiB/s", (3600.0, 10_240.0)),
        ("1h30m", "10240", (5400.0, 10_240.0)),
        ("2.5", "0", (2.5, 0.0)),  # plain seconds; 0: no minimum rate
    ],
)
def test_download_limits_take_units(monkeypatch: pytest.MonkeyPatch, deadline: str, rate: str, expected) -> None:
    monkeypatch.setenv("COGFLOW_DOWNLOAD_DEADLINE_S", deadline)
    monkeypatch.setenv("COGFLOW_DOWNLOAD_MIN_RATE", rate)
    policy = download_policy()
    assert (policy.deadline_s, policy.min_rate) == expected
    assert read_settings()[1] == {}  # and a command starts with them


@pytest.mark.parametrize(
    ("name", "value", "accepts"),
    [
        ("COGFLOW_DOWNLOAD_DEADLINE_S", "0s", "a duration such as 90s, 5m, 2h or a number of seconds (more than 0)"),
        ("COGFLOW_DOWNLOAD_DEADLINE_S", "soon", "a duration such as 90s, 5m, 2h or a number of seconds (more than 0)"),
        ("COGFLOW_DOWNLOAD_MIN_RATE", "-5KB", "a rate in bytes per second such as 10KB, 10KB/s or 10240 (at least 0)"),
        ("COGFLOW_DOWNLOAD_MIN_RATE", "fast", "a rate in bytes per second such as 10KB, 10KB/s or 10240 (at least 0)"),
    ],
)
def test_bad_download_limits_are_one_line_naming_them(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, accepts: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError) as info:
        download_policy()
    assert str(info.value) == f"{name}: expected {accepts}, not {value!r}"
    assert name in read_settings()[1]


class _Endless(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        try:
            while True:  # fast enough for any minimum rate, but it never ends
                self.wfile.write(b"x" * 65536)
                time.sleep(0.01)
        except OSError:
            pass


@pytest.fixture
def endless() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v.mp4"
    server.shutdown()
    server.server_close()


def test_a_deadline_with_units_cuts_a_download(endless: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGFLOW_DOWNLOAD_DEADLINE_S", "800ms")
    monkeypatch.setenv("COGFLOW_DOWNLOAD_MIN_RATE", "1KB/s")
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch(endless, tmp_path / "x", max_bytes=10**10, timeout_s=5, retries=0)
    assert info.value.reason == "download_timeout", info.value
    assert "0.8 s" in info.value.detail
    assert time.monotonic() - start < 2.5
