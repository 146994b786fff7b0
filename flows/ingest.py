"""The ingest flow: a manifest of captioned videos into the lake (plain steps in pipeline/ingest.py).

Planning and writing run once; probing fans out over the flow's task runner, bounded by
`Settings.probe_workers` (threads: the time goes to I/O and to FFmpeg, which releases the GIL), in batches of
sources: one task run per batch, never one per video, so a manifest of millions of videos makes thousands of task
runs, which a Prefect server holds, and progress still moves with each batch.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from cogflow.flows.progress import Progress
from cogflow.flows.runners import on_runner
from cogflow.pipeline.ingest import (
    IngestPlan,
    IngestSummary,
    finish_ingest,
    plan_ingest,
    probe_source,
)
from cogflow.pipeline.manifest import check_manifest
from cogflow.pipeline.prober import stop_probes_on_error
from cogflow.pipeline.settings import Limits, Settings, load_settings
from cogflow.pipeline.sources import safe_uri

# Results stay in memory: every step is idempotent against the lake, which is the only state that matters.
plan_task = task(name="plan-ingest", cache_policy=NO_CACHE)(plan_ingest)
finish_task = task(name="write-lake", cache_policy=NO_CACHE)(finish_ingest)


PROBE_BATCH = 256  # sources per probe task at most


def probe_batches(sources: list[tuple[str, str]], workers: int, most: int = PROBE_BATCH) -> list[list[tuple[str, str]]]:
    """`sources` in batches of one size: enough of them to keep `workers` busy, none over `most` sources."""
    size = max(1, min(most, math.ceil(len(sources) / max(workers, 1))))
    return [sources[i : i + size] for i in range(0, len(sources), size)]


@task(name="probe-videos", cache_policy=NO_CACHE, task_run_name="probe {count} videos from {first}")
def probe_task(batch: list[tuple[str, str]], limits: Limits, count: int, first: str) -> list[dict[str, object]]:
    """Probe a batch of sources one after another (`count` and `first` only name the task run)."""
    return [probe_source(source_uri, fetch_uri, limits) for source_uri, fetch_uri in batch]


def _probe_all(plan: IngestPlan, batch: int = PROBE_BATCH) -> list[dict[str, object]]:
    if not plan.to_probe:
        return []
    progress = Progress(len(plan.to_probe), "probing videos", key="ingest-probe-progress")
    probes = []
    # SIGTERM (Prefect turns it into an exception here) or Ctrl-C stops the downloads and probes at once: the task
    # runner waits for its threads before the process can exit, and a slow server or file would hold them for long.
    with stop_probes_on_error():
        futures = [
            probe_task.submit(b, plan.settings.limits, len(b), b[0][0])
            for b in probe_batches(plan.to_probe, plan.settings.probe_workers, batch)
        ]
        for future in as_completed(futures):
            done = future.result()
            probes += done
            progress.advance(len(done))
    return probes


# A manifest URI can carry credentials (user:password@, a presigned query), and Prefect stores a flow run's parameters
# and shows them in its UI. So the flow's `manifest` parameter is the URI without them, and the URI itself is handed
# over inside this process (`hand_over_manifest`; run_ingest does it): it is never a parameter.
_handed_over: dict[str, str] = {}


def hand_over_manifest(manifest: str) -> str:
    """Keep `manifest` for ingest flows run by this process; returns what to pass as the flow's parameter."""
    shown = safe_uri(manifest)
    if shown != manifest:
        _handed_over[shown] = manifest
    return shown


# prefect types task_runner as the invariant TaskRunner[PrefectFuture[Any]], which its own runners are not
@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=load_settings().probe_workers))  # type: ignore[arg-type]
def ingest_flow(
    manifest: str,
    lake: str | None = None,
    video_col: str = "video",
    caption_col: str = "caption",
    retry_rejects: bool = False,
    encoding: str | None = None,
) -> IngestSummary:
    """Ingest one manifest (CSV, JSONL, Parquet, SRT or WebVTT; local, s3:// or http(s)://) into the lake."""
    settings = load_settings(lake=lake)
    logger = get_run_logger()
    manifest = _handed_over.get(manifest, manifest)
    plan = plan_task(
        manifest,
        settings,
        video_col=video_col,
        caption_col=caption_col,
        retry_rejects=retry_rejects,
        encoding=encoding,
    )
    logger.info("%d new sources to probe with %d workers", len(plan.to_probe), settings.probe_workers)
    with plan.discarded_on_error():
        probes = _probe_all(plan)
    summary = finish_task(plan, probes)
    create_table_artifact(key="ingest-summary", table=summary.table(), description=f"ingest {summary.manifest_uri}")
    # One line in the run's log; the full table is the artifact (and what the CLI prints).
    logger.info(
        "%d of %d rows accepted (%d new captions), %d rejected, %d videos probed",
        summary.accepted_rows,
        summary.manifest_rows,
        summary.new_rows["captions"],
        summary.rejected_rows,
        summary.sources_probed,
    )
    return summary


def run_ingest(settings: Settings, task_runner: str = "threads", **parameters: Any) -> IngestSummary:
    """Run the flow on the named task runner (flows/runners.py), sized from the settings (the decorator cannot know
    them).

    A local manifest that cannot be read (encoding, columns) raises ManifestError before the flow starts, so the
    user sees one line rather than Prefect's tracebacks of the failed task and flow.
    """
    check_manifest(
        str(parameters["manifest"]),
        encoding=parameters.get("encoding"),
        video_col=str(parameters.get("video_col", "video")),
        caption_col=str(parameters.get("caption_col", "caption")),
    )
    parameters["manifest"] = hand_over_manifest(str(parameters["manifest"]))
    return on_runner(ingest_flow, task_runner, settings.probe_workers)(**parameters)
