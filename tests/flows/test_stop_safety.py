"""SIGTERM stops `cogflow split` and `cogflow tokenize encode` within seconds, whatever they wait on (a download
that trickles, a decoder that does not answer), and what they leave behind is nothing a later run trusts."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import trickle, write_csv

from cogflow.pipeline import lake
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.split import split
from cogflow.pipeline.storage import Storage

CHECKOUT = Path(__file__).resolve().parents[2]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves its folder; once the server's `trickle` is set, every GET gets one byte every 0.2 s, for ever."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if not self.server.trickle.is_set():  # type: ignore[attr-defined]
            super().do_GET()
            return
        self.server.trickled.set()  # type: ignore[attr-defined]
        trickle(self, self.server.stopping)  # type: ignore[attr-defined]


@pytest.fixture
def www(tmp_path: Path) -> Iterator[tuple[http.server.ThreadingHTTPServer, Path]]:
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    server.daemon_threads = True
    for name in ("trickle", "trickled", "stopping"):
        setattr(server, name, threading.Event())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, folder
    server.stopping.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def _one_video_lake(tmp_path: Path, sample_dir: Path, video_uri: str | None = None) -> Settings:
    """A lake holding one sample video, at `video_uri` when given (it must serve the same bytes), else local."""
    local = tmp_path / "data" / "v.mp4"
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(next((sample_dir / "videos").glob("*.mp4")), local)
    settings = load_settings(home=str(tmp_path / "home"))
    manifest = write_csv(tmp_path / "data" / "m.csv", [{"video": video_uri or str(local), "caption": "a moving shape"}])
    ingest(str(manifest), settings)
    return settings


def _start(tmp_path: Path, *command: str, **env: str) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    full_env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **env}
    out = open(tmp_path / "command.log", "wb")  # noqa: SIM115  (the child holds it)
    return subprocess.Popen(
        [sys.executable, "-m", "cogflow.flows.cli", *command],
        cwd=CHECKOUT,
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _children(pid: int, module: str) -> list[int]:
    """Processes whose parent is `pid` and that run `python -m <module>`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and module in (stat.parent / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def _terminate_promptly(child: subprocess.Popen, log: Path) -> float:
    """SIGTERM `child`; fail unless it exits within 10 s; the seconds it took."""
    child.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("still running 10 s after SIGTERM:\n" + log.read_text(errors="replace")[-3000:])
    return time.monotonic() - sent


def _nothing_published(settings: Settings) -> None:
    store = Storage.at(settings.lake)
    assert lake.finished_shards(store) == set()
    # a shard's clips and rejects are written only with its record: none of a stopped shard may be there
    assert store.list_files("clips", ".parquet") == []
    shard_rejects = lake.read_table(store, "clip_rejects", ["shard_id"])["shard_id"].drop_null()
    assert len(shard_rejects) == 0


def _wait_for(condition, child: subprocess.Popen, log: Path, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if child.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} never happened:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.02)


def test_sigterm_stops_split_in_the_middle_of_a_download(tmp_path, sample_dir, www) -> None:
    server, folder = www
    shutil.copy(next((sample_dir / "videos").glob("*.mp4")), folder / "v.mp4")
    settings = _one_video_lake(tmp_path, sample_dir, f"http://127.0.0.1:{server.server_address[1]}/v.mp4")
    server.trickle.set()  # type: ignore[attr-defined]
    # the minimum rate is measured over stretches of the timeout: 60 s, so only SIGTERM can end this download
    child = _start(
        tmp_path, "split", "--lake", settings.lake, COGFLOW_DOWNLOAD_TIMEOUT_S="60", COGFLOW_SPLIT_WORKERS="1"
    )
    try:
        _wait_for(server.trickled.is_set, child, tmp_path / "command.log", "the download")  # type: ignore[attr-defined]
        time.sleep(0.3)
        assert _terminate_promptly(child, tmp_path / "command.log") < 5
        assert child.returncode != 0
        _nothing_published(settings)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def test_sigterm_stops_split_while_its_decoder_works(tmp_path, sample_dir) -> None:
    """The decoder child is stopped (SIGSTOP) as soon as it starts: a decode that does not come back, as on a
    stalled mount or in an FFmpeg loop, until split's own timeout (600 s)."""
    settings = _one_video_lake(tmp_path, sample_dir)
    child = _start(tmp_path, "split", "--lake", settings.lake, COGFLOW_SPLIT_WORKERS="1")
    decoders: list[int] = []
    try:
        _wait_for(
            lambda: bool(decoders.extend(_children(child.pid, "cogflow.pipeline.decoder")) or decoders),
            child,
            tmp_path / "command.log",
            "the decoder's start",
        )
        os.kill(decoders[0], signal.SIGSTOP)
        time.sleep(1.0)  # the shard sends its job and waits for frames
        assert _terminate_promptly(child, tmp_path / "command.log") < 5
        assert child.returncode != 0
        gone = time.monotonic() + 2  # a decoder stuck in its job would not see its input close: it is killed
        while Path(f"/proc/{decoders[0]}").exists() and time.monotonic() < gone:
            time.sleep(0.05)
        assert not Path(f"/proc/{decoders[0]}").exists(), "the decoder outlived split"
        _nothing_published(settings)
    finally:
        for pid in decoders:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    summary = split(settings)  # a later run does the shard whole
    assert summary.clips_written > 0 and summary.rejects == {}


def test_sigterm_stops_ingest_in_the_middle_of_a_probe(tmp_path) -> None:
    """The probe reads the whole of a 64 GiB file (of zeros, sparse) to hash it: half a minute or more, until
    COGFLOW_PROBE_TIMEOUT_S (10 minutes)."""
    with open(tmp_path / "huge.mp4", "wb") as f:
        f.truncate(64 * 2**30)
    manifest = write_csv(tmp_path / "m.csv", [{"video": "huge.mp4", "caption": "sixty-four gigabytes of nothing"}])
    child = _start(tmp_path, "ingest", str(manifest), "--lake", str(tmp_path / "lake"), COGFLOW_MAX_BYTES="100GiB")
    log = tmp_path / "command.log"
    try:
        _wait_for(lambda: "new sources to probe" in log.read_text(errors="replace"), child, log, "the probe")
        time.sleep(1.0)
        probers = _children(child.pid, "cogflow.pipeline.prober")
        assert _terminate_promptly(child, log) < 5
        assert child.returncode != 0
        time.sleep(0.5)
        assert not [pid for pid in probers if Path(f"/proc/{pid}").exists()], "a probe outlived ingest"
        store = Storage.at(str(tmp_path / "lake"))
        assert store.list_files("videos", ".parquet") == [] and store.list_files("rejects", ".parquet") == []
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
