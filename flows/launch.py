"""Training entry points run as child processes: `python -m <module>` for one process, `torchrun --standalone`
for several. Their output goes line by line to the flow's log; their result comes back through a JSON file.

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
from pathlib import Path

from cogflow.pipeline.settings import Settings


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
    module: str, args: list[str], settings: Settings, nproc: int = 1, log: Callable[[str], None] = print
) -> dict:
    """Run `module` (which must accept --result-file) and return the result it wrote.

    Exit code 2 is the entry point's usage error (ValueError with its message); any other failure is ChildFailed."""
    with tempfile.TemporaryDirectory(prefix="cogflow-child-") as tmp:
        result_file = Path(tmp) / "result.json"
        launcher = (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
            if nproc > 1
            else [sys.executable]
        )
        command = [*launcher, "-m", module, *args, "--result-file", str(result_file)]
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
        if code == 2 and nproc == 1:
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
