"""The ingest flow on the Prefect test harness with hostile inputs: credentials planted in a manifest reach neither
the lake nor the Prefect database, and SIGTERM stops `cogflow ingest` in the middle of a download at once."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import copy_sample, trickle, write_csv
from prefect.client.orchestration import get_client

from cogflow.flows.ingest import run_ingest
from cogflow.pipeline.settings import load_settings

CHECKOUT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-0d1e5e7c"  # noqa: S105  (planted, to be looked for everywhere after the run)
SIGNATURE = "sig-5ecc4e75"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """A file server that wants ann's password, or trickles one byte every 0.2 s for ever at /trickle."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/trickle"):
            trickle(self, self.server.stopping)  # type: ignore[attr-defined]
            return
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(f"ann:{PASSWORD}".encode()).decode():
            self.send_error(401)
            return
        super().do_GET()


@pytest.fixture
def www(tmp_path: Path) -> Iterator[tuple[http.server.ThreadingHTTPServer, Path]]:
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    server.daemon_threads = True
    server.requests = []  # type: ignore[attr-defined]
    server.stopping = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, folder
    server.stopping.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_planted_credentials_reach_neither_the_lake_nor_the_prefect_database(tmp_path, sample_dir, www) -> None:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    server, folder = www
    rows = copy_sample(sample_dir, folder)
    secret_host = f"http://ann:{PASSWORD}@127.0.0.1:{server.server_address[1]}"
    (folder / "subs.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\na caption from subtitles\n", encoding="utf-8")
    write_csv(
        folder / "m.csv",
        [
            {
                "video": f"{rows[0]['video']}?sig={SIGNATURE}",
                "caption": "a relative row",
                "link": f"{secret_host}/page?sig={SIGNATURE}",
            },
            {
                "video": f"{secret_host}/{rows[1]['video']}?X-Amz-Signature={SIGNATURE}",
                "subtitles": f"{secret_host}/subs.srt?sig={SIGNATURE}",
            },
            {"video": f"http://ann:{PASSWORD}@127.0.0.1:1/gone.mp4?token={SIGNATURE}", "caption": "unreachable"},
        ],
    )
    settings = load_settings(home=str(tmp_path / "home"))
    manifest = f"{secret_host}/m.csv?sig={SIGNATURE}"

    summary = run_ingest(settings, manifest=manifest, lake=settings.lake)
    assert summary.outcomes == {"accepted": 2, "download_failed": 1}
    assert any("subs.srt" in r for r in server.requests)  # the subtitles were fetched, with the password

    lake_text = ""
    for path in Path(settings.lake).rglob("*"):
        if path.is_file():
            lake_text += path.read_bytes().decode("latin-1")
            if path.suffix == ".parquet":  # compressed: look at the values too
                lake_text += json.dumps(pq.read_table(path).to_pylist(), default=str)
    assert "a relative row" in lake_text and "/page" in lake_text  # read back, with the extra column, scrubbed
    for secret in (PASSWORD, SIGNATURE):
        assert secret not in lake_text
        assert secret not in summary.text()

    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName
        from prefect.client.schemas.sorting import FlowRunSort

        (ingest_run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest"])), sort=FlowRunSort.START_TIME_DESC, limit=1
        )
    assert ingest_run.parameters["manifest"] == f"http://127.0.0.1:{server.server_address[1]}/m.csv"
    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert len(stored) > 0
    for secret in (PASSWORD, SIGNATURE):
        assert secret.encode() not in stored


def test_sigterm_stops_ingest_in_the_middle_of_a_download(tmp_path, www) -> None:
    from prefect.settings import PREFECT_API_URL

    server, _ = www
    manifest = write_csv(
        tmp_path / "m.csv",
        [
            {
                "video": f"http://127.0.0.1:{server.server_address[1]}/trickle/v.mp4",
                "caption": "a video that never ends",
            },
        ],
    )
    # the minimum rate is measured over stretches of the timeout: 60 s, so only SIGTERM can end this download
    scratch = tmp_path / "tmp"  # the child's TMPDIR: what it leaves behind there is seen
    scratch.mkdir()
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "COGFLOW_DOWNLOAD_TIMEOUT_S": "60",
        "TMPDIR": str(scratch),
    }
    log = tmp_path / "ingest.log"
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "cogflow.flows.cli", "ingest", str(manifest), "--lake", str(tmp_path / "lake")],
            cwd=CHECKOUT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not server.requests and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.requests, "the download never started:\n" + log.read_text()[-3000:]
        time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("cogflow ingest was still running 10 s after SIGTERM:\n" + log.read_text()[-3000:])
        assert time.monotonic() - sent < 5
        assert child.returncode != 0
        # the plan's scratch folder (its DuckDB spill) and the download's folder go with the stopped run
        assert not [p.name for p in scratch.iterdir() if p.name.startswith(("cogflow-ingest-", "cogflow-probe-"))]
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
