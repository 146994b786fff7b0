"""The split flow: the lake's captioned videos into clip shards (plain steps in pipeline/split.py).

Planning runs once; the shards fan out over the flow's task runner. Each shard task drives its own decoder
process (pipeline/decoder.py), so `workers` shards decode in `workers` processes whichever runner carries
the tasks. The default runner is a bounded thread pool: a shard task only relays its decoder's clips into
Parquet, and threads start in no time. `processes` puts each task in a Prefect process pool as well (each
pool process then talks to the Prefect API itself: against the temporary local API every one of them starts
its own server, so use it with a Prefect server), and `dask` / `ray` spread the shards over a cluster
(`dask://host:8786`, `ray://host:10001`, or a local cluster when no address is given).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from cogflow.flows.progress import Progress
from cogflow.flows.runners import on_runner
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.split import (
    STAGES,
    ShardResult,
    ShardTask,
    SplitSummary,
    finish_split,
    plan_split,
    split_shard,
    stop_shards_on_error,
)
from cogflow.pipeline.storage import Storage

PROGRESS_EVERY_S = 10.0  # a shard's progress line at most this often (and after its first and last video)

plan_task = task(name="plan-clips", cache_policy=NO_CACHE)(plan_split)
finish_task = task(name="check-clips", cache_policy=NO_CACHE)(finish_split)


@task(name="split-shard", cache_policy=NO_CACHE, task_run_name="shard {shard.shard_id}")
def shard_task(settings: Settings, shard: ShardTask) -> ShardResult:
    return split_shard(settings, shard, on_video=ShardLog(shard, get_run_logger().info))


class ShardLog:
    """A shard's progress lines: after its first video, then at most every `every_s`, and after its last. A slow
    shard of real footage shows it is alive; a quick one does not print a line per video (the demo's 9 shards
    printed 576)."""

    def __init__(
        self,
        shard: ShardTask,
        log: Callable[..., None],
        every_s: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shard, self.log, self.every_s, self.clock = shard, log, every_s, clock
        self.last = -math.inf  # when the last line went out

    def __call__(self, result: ShardResult) -> None:
        now = self.clock()
        if result.videos in (1, self.shard.videos) or now - self.last >= self.every_s:
            self.last = now
            self.log(
                "shard %s: %d/%d videos, %d clips",
                self.shard.shard_id,
                result.videos,
                self.shard.videos,
                result.clips_written,
            )


def parse_stages(stage: str | int) -> tuple[int, ...]:
    if str(stage) == "all":
        return STAGES
    if str(stage) in {"1", "2"}:
        return (int(stage),)
    raise ValueError(f"stage must be 1, 2 or all, not {stage!r}")


def _split_all(settings: Settings, shards: list[ShardTask]) -> list[ShardResult]:
    if not shards:
        return []
    progress = Progress(sum(s.clips for s in shards), "splitting clips", key="split-progress")
    clips = {shard.shard_id: shard.clips for shard in shards}
    results = []
    # SIGTERM (Prefect turns it into an exception here) or Ctrl-C stops every shard at once, unpublished: the task
    # runner waits for its threads before the process can exit, and a download or a decode could hold them for long.
    with stop_shards_on_error():
        futures = [shard_task.submit(settings, shard) for shard in shards]
        for future in as_completed(futures):
            results.append(future.result())
            progress.advance(clips[results[-1].shard_id])
    return results


def publish_report(settings: Settings) -> Path | None:
    """The dataset report of the lake as it is now (pipeline/report.py), written over `<home>/reports/split.html`
    (one file, not one per scheduled run), and its numbers and path as the `split-report` artifact: a Prefect
    artifact cannot hold the HTML itself. The report is for people, so a failure to make it is a warning, never a failed
    split; it reads a few columns and draws a handful of clips, well under a second for a few hundred clips."""
    logger = get_run_logger()
    out = Path(settings.home).absolute() / "reports" / "split.html"
    try:
        from cogflow.pipeline.report import write_report

        summary = write_report(Storage.at(settings.lake), out)
        create_markdown_artifact(
            key="split-report", markdown=summary.markdown(), description=f"dataset report of {summary.lake}"
        )
    except Exception as exc:  # whatever it was, the clips are written and checked: only the report is missing
        logger.warning("no dataset report: %s: %s", type(exc).__name__, " ".join(str(exc).split()))
        return None
    logger.info("dataset report written to %s (%.1f s)", out, summary.seconds)
    return out


# prefect types task_runner as the invariant TaskRunner[PrefectFuture[Any]], which its own runners are not
@flow(name="split", task_runner=ThreadPoolTaskRunner(max_workers=load_settings().split.workers))  # type: ignore[arg-type]
def split_flow(lake: str | None = None, stage: str = "all", retry_rejects: bool = False) -> SplitSummary:
    """Cut every captioned video of the lake not split yet into 5-frame 160x160 clips (stage 1, 2 or all).

    `retry_rejects` plans again the clips that failed to decode (say, after a missing file came back)."""
    # Tasks may run in other processes (or machines, with the lake on S3): hand them an absolute lake path.
    settings = load_settings(lake=lake)
    settings = settings.replace(lake=Storage.at(settings.lake).root)
    logger = get_run_logger()
    plan = plan_task(settings, parse_stages(stage), retry_rejects)
    logger.info(
        "%d new windows planned; %d shards to split (%d clips), %d already finished",
        plan.new_windows,
        len(plan.pending),
        sum(s.clips for s in plan.pending),
        plan.finished_before,
    )
    summary = finish_task(settings, plan, _split_all(settings, plan.pending))
    create_table_artifact(key="split-summary", table=summary.table(), description=f"split {summary.lake}")
    logger.info(
        "%d clips written from %d videos (%d frames decoded), %d rejected",
        summary.clips_written,
        summary.videos,
        summary.frames_decoded,
        sum(summary.rejects.values()),
    )
    publish_report(settings)
    return summary


def run_split(settings: Settings, task_runner: str = "threads", **parameters: Any) -> SplitSummary:
    """Run the flow on the named task runner, sized from the settings."""
    return on_runner(split_flow, task_runner, settings.split.workers)(**parameters)
