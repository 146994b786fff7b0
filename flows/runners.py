"""The task runner a heavy step fans out on: `--task-runner threads|processes|dask[://HOST:PORT]|ray[://HOST:PORT]`
(ingest's probes and split's shards). Local ones get the step's worker count; a remote Dask or Ray cluster needs a
lake every worker reaches (S3) and sources they can read.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

TASK_RUNNERS = ("threads", "processes", "dask", "ray")


def make_task_runner(spec: str, workers: int) -> TaskRunner:
    """`threads`, `processes`, `dask[://address]` or `ray[://address]`; local ones get `workers` slots."""
    kind, _, address = spec.partition("://")
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise ValueError("--task-runner dask needs prefect-dask: pip install 'cogflow[cluster]'") from exc
        if address:
            return DaskTaskRunner(address=f"tcp://{address}")
        # One single-threaded worker process per slot: the decoding happens in child processes anyway.
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
        )
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as exc:
            raise ValueError("--task-runner ray needs prefect-ray: pip install prefect-ray") from exc
        return (
            RayTaskRunner(address=f"ray://{address}") if address else RayTaskRunner(init_kwargs={"num_cpus": workers})
        )
    raise ValueError(
        f"unknown task runner {spec!r}: use one of {', '.join(TASK_RUNNERS)} (dask and ray may add ://address)"
    )


def on_runner(flow: Flow[Any, Any], spec: str, workers: int) -> Flow[Any, Any]:
    """`flow` fanning its tasks out on the task runner `spec` names (a subflow of the pipeline, say)."""
    # prefect types task_runner as the invariant TaskRunner[PrefectFuture[Any]], which its own runners are not
    return flow.with_options(task_runner=make_task_runner(spec, workers))  # type: ignore[arg-type]
