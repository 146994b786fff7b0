"""Training entry points run as child processes: `python -m <module>` for one process, `torchrun --standalone`
for several on one machine, and torchrun with a c10d rendezvous for a job over several machines (`Nodes`: the same
command on each, with its node rank). Their output goes line by line to the flow's log; their result comes back
through a JSON file, on every machine.

A child keeps PyTorch's threads, memory and process group out of the flow's process, and a crash in it fails
the task with the child's last lines instead of taking the flow (or its worker) down.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cogflow.pipeline.settings import Settings


@dataclass(frozen=True)
class Nodes:
    """This machine's place in a multi-node training: torchrun's `--nnodes`, `--node-rank` and c10d rendezvous."""

    count: int = 1
    rank: int = 0
    endpoint: str | None = None  # HOST:PORT where the nodes meet (node 0's address and a free port)
    job: str = "cogflow"  # the rendezvous id: the same on every node of one job, another for a job beside it

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.rank < self.count:
            raise ValueError(f"node rank must be 0..{self.count - 1}, not {self.rank}")
        if self.count > 1 and not (self.endpoint and ":" in self.endpoint):
            raise ValueError("a multi-node job needs --rdzv-endpoint HOST:PORT (node 0's address and a free port)")


ONE_NODE = Nodes()


def launcher(nproc: int, nodes: Nodes) -> list[str]:
    """The command a training module runs under: plain Python, torchrun on one machine, or torchrun across nodes."""
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    if nodes.count > 1:
        return [
            *torchrun,
            f"--nnodes={nodes.count}",
            f"--node-rank={nodes.rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={nodes.endpoint}",
            f"--rdzv-id={nodes.job}",
            f"--nproc-per-node={nproc}",
        ]
    return [*torchrun, "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable]


class ChildFailed(RuntimeError):
    """The child exited with an error; the message ends with its last lines of output."""


def child_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child see the same settings as this process."""
    env = {
        **os.environ,
        "COGFLOW_HOME": settings.home,
        "COGFLOW_LAKE": settings.lake,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "PYTHONUNBUFFERED": "1",
    }
    if settings.s3_endpoint:
        env["AWS_ENDPOINT_URL_S3"] = settings.s3_endpoint
    return env


def run_module(
    module: str,
    args: list[str],
    settings: Settings,
    nproc: int = 1,
    log: Callable[[str], None] = print,
    nodes: Nodes = ONE_NODE,
) -> dict:
    """Run `module` (which must accept --result-file) and return the result it wrote.

    Exit code 2 is the entry point's usage error (ValueError with its message); any other failure is ChildFailed."""
    with tempfile.TemporaryDirectory(prefix="cogflow-child-") as tmp:
        result_file = Path(tmp) / "result.json"
        command = [*launcher(nproc, nodes), "-m", module, *args, "--result-file", str(result_file)]
        tail: deque[str] = deque(maxlen=20)
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(settings), bufsize=1
        ) as child:
            assert child.stdout is not None
            for line in child.stdout:
                line = line.rstrip()
                tail.append(line)
                log(line)
            code = child.wait()
        last = "\n".join(tail)
        if code == 2 and nproc == 1 and nodes.count == 1:
            raise ValueError(last.splitlines()[-1].split(": ", 1)[-1] if last else f"{module}: usage error")
        if code != 0 or not result_file.exists():
            raise ChildFailed(f"{module} exited with code {code}; its last lines:\n{last}")
        return json.loads(result_file.read_text())


GPU_LIMIT = "cogflow-gpu"  # Prefect global concurrency limit: how many GPU steps may run at once


@contextlib.contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold a slot of the `cogflow-gpu` limit (created with $COGFLOW_GPU_SLOTS slots, default 1, when the Prefect
    server has none) while training or evaluating: two flows never share the GPU, whoever started them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another flow created it meanwhile
                slots = int(os.environ.get("COGFLOW_GPU_SLOTS", "1"))
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))
    with concurrency(GPU_LIMIT, occupy=1):
        yield
