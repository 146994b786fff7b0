"""infra/stack.py for real: moto's S3 server, `mlflow server` and `prefect server` as processes on 127.0.0.1,
prefect.yaml deployed to them, an ingest run by a real process worker into the lake on S3, and `down`.

One stack for the module (about 25 s to healthy and deployed on 2 busy cores); the whole file takes about a
minute. The services get their settings from the environment stack.py gives them, never from this process:
the Prefect test harness of conftest.py is replaced here by a fixture that starts nothing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
import psutil
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import upload_tree

CHECKOUT = Path(__file__).resolve().parents[2]
STACK = str(CHECKOUT / "infra" / "stack.py")
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    """Overrides the session-wide Prefect test harness (tests/flows/conftest.py): nothing here runs a flow in
    this process, and 10 s of a second server would only slow the stack down."""
    yield


@dataclass
class Stack:
    state: Path
    env: dict[str, str]  # what `stack.py env` exports, plus a PREFECT_HOME of the test's own
    up_output: str

    @property
    def api(self) -> str:
        return self.env["PREFECT_API_URL"]

    def ports(self) -> dict[str, int]:
        return json.loads((self.state / "stack.json").read_text())["ports"]


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the harness's Prefect settings (PREFECT_HOME, an API URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "COGFLOW_"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _run(command: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=CHECKOUT, capture_output=True, text=True, timeout=timeout)


def _api(stack: Stack, path: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        stack.api + path,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("stack")
    env = _clean_env()
    t0 = time.monotonic()
    up = _run(
        [
            sys.executable,
            STACK,
            "up",
            "--state",
            str(state),
            "--prefect-port",
            "0",
            "--mlflow-port",
            "0",
            "--s3-port",
            "0",
            "--no-worker",
        ],
        env,
        timeout=300,
    )
    try:
        assert up.returncode == 0, f"stack.py up failed:\n{up.stdout}\n{up.stderr}"
        print(f"stack up in {time.monotonic() - t0:.1f} s")
        exported = _run([sys.executable, STACK, "env", "--state", str(state)], env)
        assert exported.returncode == 0, exported.stderr
        values = dict(
            line.removeprefix("export ").split("=", 1)
            for line in exported.stdout.splitlines()
            if line.startswith("export ")
        )
        home = tmp_path_factory.mktemp("prefect-client")
        yield Stack(state, {**_clean_env(**values), "PREFECT_HOME": str(home)}, up.stdout)
    finally:
        _run([sys.executable, STACK, "down", "--state", str(state)], env, timeout=120)


def test_up_reports_a_healthy_stack_and_a_second_up_changes_nothing(stack):
    ports = stack.ports()
    assert len(set(ports.values())) == 3 and 0 not in ports.values()  # port 0: a free port each
    for url in (f"http://127.0.0.1:{ports['prefect']}", f"http://127.0.0.1:{ports['mlflow']}"):
        assert url in stack.up_output  # the UIs
    assert f"export AWS_ENDPOINT_URL_S3=http://127.0.0.1:{ports['s3']}" in stack.up_output
    assert stack.env["COGFLOW_LAKE"] == "s3://cogflow/lake" and stack.env["COGFLOW_CHECKOUT"] == str(CHECKOUT)
    assert stack.env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['mlflow']}"

    status = _run([sys.executable, STACK, "status", "--state", str(stack.state)], _clean_env())
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("healthy") == 3 and "worker-cogflow-cpu" in status.stdout

    pids = sorted(p.read_text() for p in (stack.state / "pids").glob("*.pid"))
    again = _run([sys.executable, STACK, "up", "--state", str(stack.state), "--no-worker"], _clean_env())
    assert again.returncode == 0 and "already running" in again.stdout
    assert sorted(p.read_text() for p in (stack.state / "pids").glob("*.pid")) == pids
    assert stack.ports() == ports


def test_the_deployments_of_prefect_yaml_are_on_the_server(stack):
    spec = yaml.safe_load((CHECKOUT / "prefect.yaml").read_text())
    status, deployments = _api(stack, "/deployments/filter", {})
    assert status == 200
    on_server = {d["name"]: d for d in deployments}
    assert set(on_server) == {d["name"] for d in spec["deployments"]}
    assert {"data-to-model", "ingest", "split", "register"} <= set(on_server)

    status, pools = _api(stack, "/work_pools/filter", {})
    assert {p["name"]: p["type"] for p in pools} == {"cogflow-cpu": "process", "cogflow-gpu-pool": "process"}
    status, limits = _api(stack, "/v2/concurrency_limits/filter", {})
    assert {"name": "cogflow-gpu", "limit": 1} in [{"name": x["name"], "limit": x["limit"]} for x in limits]

    for wanted in spec["deployments"]:
        got = on_server[wanted["name"]]
        assert got["work_pool_name"] == wanted["work_pool"]["name"]
        assert got["enforce_parameter_schema"] is True
        assert got["parameters"] == wanted.get("parameters", {})
        assert got["global_concurrency_limit"]["limit"] == 1
        assert got["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        # Left for each worker to resolve from its own environment (stack.py deploys without COGFLOW_CHECKOUT).
        assert got["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $COGFLOW_CHECKOUT }}"}}
        ]
        schedules = {
            (s["slug"], s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in got["schedules"]
        }
        assert schedules == {(s["slug"], s["cron"], s["timezone"], s["active"]) for s in wanted.get("schedules") or []}
    assert on_server["data-to-model"]["work_pool_name"] == "cogflow-gpu-pool"
    assert on_server["ingest"]["schedules"] and not on_server["tokenize"]["schedules"]

    # The scheduler (its loop for recently changed deployments runs every few seconds) puts the next nightly runs
    # on the calendar, at the minute and hour of the cron.
    nightly = on_server["data-to-model"]
    minute, hour = (int(x) for x in nightly["schedules"][0]["schedule"]["cron"].split()[:2])
    deadline = time.monotonic() + 60
    while True:
        status, runs = _api(
            stack,
            "/flow_runs/filter",
            {
                "deployments": {"id": {"any_": [nightly["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            },
        )
        if runs or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status == 200 and runs, "the scheduler made no runs of data-to-model within a minute"
    assert all(re.search(f"T{hour:02d}:{minute:02d}:00", r["expected_start_time"]) for r in runs)
    assert all(r["work_queue_name"] == "default" and r["auto_scheduled"] for r in runs)


def test_the_server_refuses_runs_with_bad_parameters(stack):
    _, deployments = _api(stack, "/deployments/filter", {})
    ids = {d["name"]: d["id"] for d in deployments}
    status, reply = _api(
        stack, f"/deployments/{ids['data-to-model']}/create_flow_run", {"parameters": {"training": {"nproc": 0}}}
    )
    assert status == 409 and "nproc" in reply["detail"], reply
    status, reply = _api(stack, f"/deployments/{ids['ingest']}/create_flow_run", {"parameters": {"manifest": 5}})
    assert status == 409 and "manifest" in reply["detail"], reply
    status, runs = _api(stack, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"not_any_": ["SCHEDULED"]}}}})
    assert runs == []  # nothing was created


def test_a_worker_runs_the_ingest_deployment_into_the_lake_on_s3(stack, sample_dir):
    s3 = boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL_S3"])
    upload_tree(s3, "cogflow", sample_dir, "incoming")
    with open(sample_dir / "manifest.csv", newline="") as f:
        captions = sorted(row["caption"] for row in csv.DictReader(f))

    run = _run(
        [PREFECT, "deployment", "run", "ingest/ingest", "-p", "manifest=s3://cogflow/incoming/manifest.csv"], stack.env
    )
    assert run.returncode == 0, run.stdout + run.stderr
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
    worker = _run(
        [PREFECT, "worker", "start", "--pool", "cogflow-cpu", "--run-once", "--install-policy", "never"], stack.env
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr

    status, flow_run = _api(stack, f"/flow_runs/{flow_run_id}")
    assert flow_run["state_type"] == "COMPLETED", worker.stdout + worker.stderr
    assert flow_run["parameters"] == {"manifest": "s3://cogflow/incoming/manifest.csv"}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="cogflow", Prefix="lake/captions/").get("Contents", [])]
    assert keys and all(k.endswith(".parquet") for k in keys)
    tables = [pq.read_table(io.BytesIO(s3.get_object(Bucket="cogflow", Key=k)["Body"].read())) for k in keys]
    assert sorted(c for t in tables for c in t.column("caption").to_pylist()) == captions
    assert not list((stack.state / "home").glob("lake*"))  # nothing went to a local lake


def test_down_stops_every_process_and_frees_the_ports(stack):
    pids = [int(p.read_text().split()[0]) for p in (stack.state / "pids").glob("*.pid")]
    ports = stack.ports()
    assert len(pids) == 3  # s3, mlflow, prefect (--no-worker)
    groups = set(pids) | {os.getpgid(c.pid) for pid in pids for c in psutil.Process(pid).children(recursive=True)}

    down = _run([sys.executable, STACK, "down", "--state", str(stack.state)], _clean_env(), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert all(f"stopped {name}" in down.stdout for name in ("s3", "mlflow", "prefect")) and "gone" in down.stdout

    def alive(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) in groups
        except (psutil.Error, ProcessLookupError):
            return False

    assert [p.info for p in psutil.process_iter(["pid", "cmdline"]) if alive(p)] == []
    for port in ports.values():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # a new stack could listen there
    assert list((stack.state / "pids").glob("*.pid")) == []
    status = _run([sys.executable, STACK, "status", "--state", str(stack.state)], _clean_env())
    assert status.returncode == 3 and "not running" in status.stdout
