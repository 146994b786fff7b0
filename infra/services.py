"""What the local stack is (infra/stack.py): its state folder, ports, services, their commands and environments,
and starting one as a process of its own. Plain standard library; PyYAML (a Prefect dependency) reads the pool names
from prefect.yaml."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from processes import alive, start_time  # infra/processes.py, beside this module

CHECKOUT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the virtualenv's bin: mlflow, prefect
HOST = "127.0.0.1"
BUCKET = "cogflow"
LAKE = f"s3://{BUCKET}/lake"
MLFLOW_ARTIFACTS = f"s3://{BUCKET}/mlflow"
CHECKPOINTS = f"s3://{BUCKET}/checkpoints"
DUMMY_KEY = "cogflow-local"  # moto takes any credentials; real ones never go near a local stack
DEFAULT_PORTS = {"s3": 5055, "mlflow": 5000, "prefect": 4200}
SERVERS = ("s3", "mlflow", "prefect")
GPU_LIMIT = "cogflow-gpu"  # flows/launch.py: the global concurrency limit the GPU steps take a slot of
ENV_EXPORTS = (
    "PREFECT_API_URL",
    "MLFLOW_TRACKING_URI",
    "COGFLOW_LAKE",
    "COGFLOW_CHECKPOINTS",
    "COGFLOW_HOME",
    "COGFLOW_CHECKOUT",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)
# Settings in the caller's environment that would point a service somewhere else than this stack.
FOREIGN = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_HOME",
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
    "PREFECT_UI_API_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "COGFLOW_LAKE",
    "COGFLOW_HOME",
    "COGFLOW_CHECKPOINTS",
    "COGFLOW_ARTIFACTS",
    "COGFLOW_CHECKOUT",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


class StackError(RuntimeError):
    """Something the user must fix; the message says what and where to look."""


# --- the stack ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def http_ok(url: str, method: str = "GET", timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as reply:
            return 200 <= reply.status < 300
    except (OSError, urllib.error.HTTPError):
        return False


def work_pools(prefect_file: Path = CHECKOUT / "prefect.yaml") -> list[str]:
    """The pools of prefect.yaml, defined once under definitions.work_pools."""
    import yaml

    doc = yaml.safe_load(prefect_file.read_text())
    return [pool["name"] for pool in doc["definitions"]["work_pools"].values()]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env.update(extra)
    return env


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    health: str | None = None  # polled until it answers 2xx
    url: str | None = None  # what a user opens
    pool: str | None = None  # a worker's work pool
    worker: str | None = None  # and the name it polls under


@dataclass
class Stack:
    state: Path
    ports: dict[str, int] = field(default_factory=dict)

    # paths
    @property
    def pid_dir(self) -> Path:
        return self.state / "pids"

    @property
    def log_dir(self) -> Path:
        return self.state / "logs"

    def pid_file(self, name: str) -> Path:
        return self.pid_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    # what runs
    def load(self) -> Stack:
        info = self.state / "stack.json"
        if info.exists():
            self.ports = {**json.loads(info.read_text())["ports"], **self.ports}
        return self

    def save(self) -> None:
        (self.state / "stack.json").write_text(json.dumps({"ports": self.ports, "checkout": str(CHECKOUT)}, indent=2))

    def pid(self, name: str) -> int | None:
        """The pid of a running service, None when it does not run (a stale pid file is removed)."""
        path = self.pid_file(name)
        try:
            pid, start = (int(x) for x in path.read_text().split())
        except (OSError, ValueError):
            return None
        if alive(pid, start):
            return pid
        path.unlink(missing_ok=True)
        return None

    def running(self) -> dict[str, int]:
        names = [p.stem for p in sorted(self.pid_dir.glob("*.pid"))] if self.pid_dir.exists() else []
        return {name: pid for name in names if (pid := self.pid(name)) is not None}

    # URLs and environments
    def base_url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    def client_env(self) -> dict[str, str]:
        """What points cogflow, Prefect and MLflow clients at this stack (the workers' and `env`'s settings)."""
        return {
            "PREFECT_API_URL": f"{self.base_url('prefect')}/api",
            "MLFLOW_TRACKING_URI": self.base_url("mlflow"),
            "COGFLOW_LAKE": LAKE,
            "COGFLOW_CHECKPOINTS": CHECKPOINTS,
            "COGFLOW_HOME": str(self.state / "home"),
            "COGFLOW_CHECKOUT": str(CHECKOUT),
            "AWS_ENDPOINT_URL_S3": self.base_url("s3"),
            "AWS_ACCESS_KEY_ID": DUMMY_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def worker_env(self) -> dict[str, str]:
        return clean_env(
            **self.client_env(),
            PREFECT_HOME=str(self.state / "prefect"),
            MLFLOW_DISABLE_TELEMETRY="true",
            PYTHONUNBUFFERED="1",
        )

    def services(self, pools: list[str]) -> list[Service]:
        s3, mlflow, prefect = (self.base_url(n) for n in SERVERS)
        aws = {"AWS_ACCESS_KEY_ID": DUMMY_KEY, "AWS_SECRET_ACCESS_KEY": DUMMY_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
        services = [
            Service(
                "s3",
                # moto, its requests one at a time so that conditional writes are atomic as S3's (s3_server.py)
                [sys.executable, str(CHECKOUT / "infra" / "s3_server.py"), "-H", HOST, "-p", str(self.ports["s3"])],
                clean_env(),
                health=f"{s3}/",
                url=s3,
            ),
            Service(
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{self.state / 'mlflow.db'}",
                    "--artifacts-destination",
                    MLFLOW_ARTIFACTS,
                    "--host",
                    HOST,
                    "--port",
                    str(self.ports["mlflow"]),
                    "--workers",
                    "1",
                ],
                # No job runner: its consumers (GenAI scoring, trace archival) are 7 processes cogflow has no use for.
                clean_env(
                    MLFLOW_S3_ENDPOINT_URL=s3,
                    AWS_ENDPOINT_URL_S3=s3,
                    MLFLOW_DISABLE_TELEMETRY="true",
                    MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
                    **aws,
                ),
                health=f"{mlflow}/health",
                url=mlflow,
            ),
            Service(
                "prefect",
                [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(self.ports["prefect"])],
                clean_env(
                    PREFECT_HOME=str(self.state / "prefect-server"),
                    PREFECT_API_URL=f"{prefect}/api",
                    PREFECT_SERVER_ANALYTICS_ENABLED="false",
                ),
                health=f"{prefect}/api/health",
                url=prefect,
            ),
        ]
        for pool in pools:
            worker = f"{pool}-{socket.gethostname()}"
            services.append(
                Service(
                    f"worker-{pool}",
                    [
                        str(BIN / "prefect"),
                        "worker",
                        "start",
                        "--pool",
                        pool,
                        "--name",
                        worker,
                        "--install-policy",
                        "never",
                    ],
                    self.worker_env(),
                    pool=pool,
                    worker=worker,
                )
            )
        return services

    def start(self, service: Service) -> subprocess.Popen:
        log = self.log_file(service.name)
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(service.command)}\n".encode())
            out.flush()
            child = subprocess.Popen(
                service.command,
                env=service.env,
                cwd=CHECKOUT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file(service.name).write_text(f"{child.pid} {start_time(child.pid)}\n")
        return child
