"""A command returns only once Prefect's (temporary) server has recorded its task runs: otherwise the server, stopped
as the process exits, cancels the write in flight ("Error flushing events" with a traceback after a successful run)
and drops the rest (task runs left Running in its history)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

from helpers import copy_sample, write_csv
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterStartTime,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from cogflow.flows.cli import main


def test_ingest_returns_after_the_server_recorded_every_task_run(tmp_path, sample_dir, capsys):
    rows = copy_sample(sample_dir, tmp_path)
    videos = []
    for i in range(24):  # a burst of task-run events at the end of the flow
        source = tmp_path / rows[i % len(rows)]["video"]
        copy = source.with_name(f"copy_{i}{source.suffix}")
        shutil.copyfile(source, copy)
        videos.append({"video": str(copy.relative_to(tmp_path)), "caption": f"caption number {i}"})
    manifest = write_csv(tmp_path / "m.csv", videos)
    started = datetime.now(UTC)
    assert main(["ingest", str(manifest), "--lake", str(tmp_path / "lake"), "--workers", "4"]) == 0
    since = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=since, limit=200)
        unfinished = client.read_task_runs(
            flow_run_filter=since,
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING]))
            ),
        )
    assert unfinished == []
    # one probe task run per batch, not per video: 24 sources over 4 workers are 4 batches of 6
    probes = [r.name for r in runs if r.name.startswith("probe ")]
    assert len(probes) == 4 and all(name.startswith(f"probe 6 videos from {tmp_path}") for name in probes)
