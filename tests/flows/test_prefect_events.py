"""A command returns only once Prefect's (temporary) server has recorded its task runs: otherwise the server, stopped
as the process exits, cancels the write in flight ("Error flushing events" with a traceback after a successful run)
and drops the rest (task runs left Running in its history)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from helpers import write_csv
from odd_videos import moving_frames
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
from cogflow.pipeline.encode import encode_video


def test_ingest_returns_after_the_server_recorded_every_task_run(tmp_path, capsys):
    """300 small real videos (each its own: a moving square at another place and pace) over 4 workers."""
    videos = []
    for i in range(300):  # a burst of task-run events at the end of the flow
        frames = [np.roll(f, 3 * i, axis=1) for f in moving_frames(4 + i % 5, size=32)]
        path = encode_video(tmp_path / f"v{i:03d}.mp4", frames, fps=4)
        videos.append({"video": path.name, "caption": f"caption number {i}"})
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
    # one probe task run per batch, not per video: 300 sources over 4 workers are 4 batches of 75, and the whole
    # ingest a handful of task runs
    probes = [r.name for r in runs if r.name.startswith("probe ")]
    assert len(probes) == 4 and all(name.startswith(f"probe 75 videos from {tmp_path}") for name in probes)
    assert len(runs) < 20
