"""Split: captioned videos of the lake into 5-frame 160x160 clips with frame-rate tokens (README: Split).

Three plain steps, which `flows/split.py` orders and fans out:
1. `plan_split` plans the windows of every caption not yet planned, in SQL (sql/marts/clip_windows.sql,
   clip_plan.sql), groups them into shards of whole videos, and appends that plan and the captions that got
   no window to the lake. It returns every planned shard without a completion record: this run's, and any
   that a killed run left behind.
2. `split_shard` decodes each video of one shard once, in a child process (pipeline/decoder.py), and writes
   the shard: its clips per stage, its rejects, and last its completion record in `clip_shards/`. Every name
   derives from the shard id, so redoing a shard overwrites whatever a killed attempt left; readers trust
   only shards that have a record. A run that is stopped (SIGTERM, Ctrl-C: `stop_shards_on_error`) kills its
   decoders, shuts its downloads and publishes none of the shards it was splitting.
3. `finish_split` runs the data checks over the whole lake and sums the run up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cogflow.pipeline import checks, db, lake, webdataset
from cogflow.pipeline.children import ChildProcesses
from cogflow.pipeline.contract import (
    CLIP_FRAMES,
    CLIP_STAGES,
    SQL_PARAMS,
    fps_token,
)
from cogflow.pipeline.decoder import DecodeJob, Decoder
from cogflow.pipeline.fetch import fetch
from cogflow.pipeline.scan import luma, moved_share
from cogflow.pipeline.settings import Limits, Settings
from cogflow.pipeline.sources import FetchError, safe_uri
from cogflow.pipeline.storage import Storage, is_remote
from cogflow.pipeline.video import FULL, WindowFailed, WindowFrames

STAGES = CLIP_STAGES
EST_CLIP_BYTES = 250_000  # one clip of real footage once compressed (384,000 raw bytes), for sizing shards
ROW_GROUP_CLIPS = 32  # clips per Parquet row group: about 12 MB of frames in memory per stage


def frame_instants(start_s: float, fps: float) -> list[float]:
    """The 5 target instants of a window, in seconds from the video's start."""
    return [round(start_s + k / fps, 6) for k in range(CLIP_FRAMES)]


def shard_paths(shard_id: str) -> dict[str, str]:
    """Where a shard's outputs live, relative to the lake."""
    return {
        "record": f"clip_shards/shard-{shard_id}.parquet",
        "rejects": f"clip_rejects/shard-{shard_id}.parquet",
        **{f"stage{s}": f"clips/stage={s}/shard-{shard_id}.parquet" for s in STAGES},
    }


def clip_counts(store: Storage) -> dict[tuple[int, float], int]:
    """Clips of finished shards per (stage, frame rate)."""
    table = lake.read_clips(store, ["stage", "fps"])
    grouped = table.group_by(["stage", "fps"]).aggregate([("stage", "count")])
    return {(s, f): n for s, f, n in zip(*(grouped[c].to_pylist() for c in ("stage", "fps", "stage_count")))}


# ---------------------------------------------------------------------------------------------------------------
# 1. Plan


@dataclass(frozen=True)
class ShardTask:
    shard_id: str
    plan_part: str  # the clip_plan part listing its windows
    videos: int
    clips: int


@dataclass
class SplitPlan:
    lake: str  # as shown (credentials removed)
    stages: tuple[int, ...]
    new_windows: int  # planned by this run
    plan_rejects: dict[str, int]  # reason -> captions this run found no window for
    pending: list[ShardTask]  # shards to do, this run's and those a killed run left
    finished_before: int  # shards complete before this run
    started: float = field(default_factory=time.monotonic)


def _plan_params(settings: Settings, stages: tuple[int, ...]) -> dict[str, Any]:
    opts = settings.split
    return {
        "stages": list(stages),
        **SQL_PARAMS,
        "stage1_windows": opts.stage1_windows,
        "stage2_windows": opts.stage2_windows,
        "window_step": opts.window_step,
        "clip_bytes": EST_CLIP_BYTES,
        "shard_bytes": opts.shard_mb * 1e6,
        "shard_videos": opts.shard_videos,
        # Several workers need several shards each, so that they finish close together; one worker needs one
        # (each shard's start and finish leaves its decoder idle for a moment).
        "min_shards": 1 if opts.workers == 1 else 4 * opts.workers,
        "now": lake.now(),
    }


def _planned(store: Storage) -> pa.Table:
    """(caption_id, stage) already planned: windows in clip_plan, or a planning reject."""
    plan = lake.read_table(store, "clip_plan", ["caption_id", "stage"])
    rejects = lake.read_table(store, "clip_rejects", ["caption_id", "stage", "clip_id"])
    rejects = rejects.filter(pc.is_null(rejects["clip_id"])).select(["caption_id", "stage"])
    return pa.concat_tables([plan, rejects])


def pending_shards(store: Storage) -> tuple[list[ShardTask], int]:
    """Planned shards without a completion record, and how many have one."""
    done = lake.finished_shards(store)
    pending = []
    for part in store.list_files("clip_plan", ".parquet"):
        rows = lake.read_table(store, "clip_plan", ["shard_id", "video_id"], parts=[part])
        grouped = rows.group_by("shard_id").aggregate([("video_id", "count_distinct"), ("video_id", "count")])
        for shard_id, videos, clips in zip(
            *(grouped[c].to_pylist() for c in ("shard_id", "video_id_count_distinct", "video_id_count"))
        ):
            if shard_id not in done:
                pending.append(ShardTask(shard_id, part, videos, clips))
    return sorted(pending, key=lambda s: s.shard_id), len(done)


def plan_split(settings: Settings, stages: tuple[int, ...] = STAGES, retry_rejects: bool = False) -> SplitPlan:
    """Plan the windows of captions not yet planned for `stages` and list every unfinished shard.

    With `retry_rejects`, windows a shard failed to decode (and none has made since) are planned again, in new
    shards."""
    started = time.monotonic()
    store = Storage.at(settings.lake)
    params = _plan_params(settings, stages)
    with lake.writer_lock(store), tempfile.TemporaryDirectory(prefix="cogflow-plan-") as tmp:
        con = db.connect(temp_directory=str(Path(tmp) / "duckdb"))
        try:
            db.register(
                con,
                captions=lake.read_table(
                    store, "captions", ["caption_id", "video_id", "caption", "language", "split", "start_s", "end_s"]
                ),
                videos=lake.read_table(
                    store,
                    "videos",
                    [
                        "video_id",
                        "source_uri",
                        "sha256",
                        "bytes",
                        "fps",
                        "frame_count",
                        "duration_s",
                        "width",
                        "height",
                        *("crop_left", "crop_top", "crop_right", "crop_bottom"),
                    ],
                ),
                shots=lake.read_table(store, "shots", ["video_id", "shot_index", "start_s", "end_s"]),
                sources=lake.read_table(store, "sources", ["source_uri", "video_id"]),
                planned=_planned(store),
            )
            db.materialize(con, "marts/clip_windows", **params)
            windows = lake.append(
                store, "clip_plan", db.relation(con, "marts/clip_plan", salt="", **params).to_arrow_reader()
            ).rows
            rejects = db.query_arrow(con, "marts/clip_plan_rejects", **params)
            lake.append(store, "clip_rejects", rejects)
            if retry_rejects:
                db.register(
                    con,
                    clip_plan=lake.read_table(store, "clip_plan"),
                    clip_rejects=lake.read_table(store, "clip_rejects", ["clip_id", "stage", "shard_id"]),
                    made=lake.read_clips(store, ["clip_id"]),
                )
                db.materialize(con, "marts/clip_retry", table="clip_windows", **params)
                retry = db.relation(con, "marts/clip_plan", salt=f"retry {params['now'].isoformat()} ", **params)
                windows += lake.append(store, "clip_plan", retry.to_arrow_reader()).rows
        finally:
            con.close()
    pending, finished = pending_shards(store)
    reasons = dict(Counter(rejects["reason"].to_pylist()))
    return SplitPlan(safe_uri(settings.lake), tuple(stages), windows, reasons, pending, finished, started)


# ---------------------------------------------------------------------------------------------------------------
# 2. One shard


@dataclass
class ShardResult:
    shard_id: str
    videos: int = 0
    clips_planned: int = 0
    clips: Counter = field(default_factory=Counter)  # (stage, fps) -> clips written
    rejects: Counter = field(default_factory=Counter)  # reason -> clips rejected
    frames_decoded: int = 0
    seeks: int = 0
    bytes_written: int = 0
    decode_seconds: float = 0.0
    seconds: float = 0.0
    already_done: bool = False  # another run (or an earlier attempt) had finished it

    @property
    def clips_written(self) -> int:
        return sum(self.clips.values())


class _ShardWriter:
    """The clips of one shard, per stage, streamed into local Parquet files a row group at a time."""

    PLAN_COLUMNS = [
        "clip_id",
        "video_id",
        "caption_id",
        "caption",
        "language",
        "stage",
        "fps",
        "fps_token",
        "start_s",
        "split",
    ]

    def __init__(self, folder: Path, shard_id: str, stages: set[int]) -> None:
        self.shard_id = shard_id
        self.paths = {s: folder / f"stage{s}.parquet" for s in stages}
        self.writers = {
            s: pq.ParquetWriter(
                path,
                lake.CLIPS,
                compression="zstd",
                # repeated text compresses by dictionary; min/max statistics only where readers filter
                use_dictionary=["video_id", "caption_id", "caption", "language", "fps_token", "split", "shard_id"],
                write_statistics=["clip_id", "video_id", "caption_id", "stage", "fps", "start_s", "shard_id"],
            )
            for s, path in self.paths.items()
        }
        self.rows: dict[int, list[dict]] = {s: [] for s in stages}

    def add(self, window: dict, result: WindowFrames, motion: float) -> None:
        stage = window["stage"]
        row = {k: window[k] for k in self.PLAN_COLUMNS}
        row.update(
            frame_times=list(result.times), frames=result.frames.tobytes(), motion=motion, shard_id=self.shard_id
        )  # (5, 160, 160, 3)
        self.rows[stage].append(row)
        if len(self.rows[stage]) >= ROW_GROUP_CLIPS:
            self._flush(stage)

    def _flush(self, stage: int) -> None:
        if self.rows[stage]:
            self.writers[stage].write_table(pa.Table.from_pylist(self.rows[stage], schema=lake.CLIPS))
            self.rows[stage] = []

    def close(self) -> dict[int, Path]:
        for stage, writer in self.writers.items():
            self._flush(stage)
            writer.close()
        return self.paths


def _read_shard_plan(store: Storage, shard: ShardTask) -> list[dict]:
    fs, path = store.arrow(shard.plan_part)
    table = pq.read_table(path, filesystem=fs, filters=[("shard_id", "=", shard.shard_id)], partitioning=None)
    return table.to_pylist()


def _by_video(windows: list[dict]) -> list[list[dict]]:
    """The shard's windows in groups of one video each (the plan is sorted by video within a shard)."""
    groups: list[list[dict]] = []
    for window in windows:
        if not groups or window["video_id"] != groups[-1][0]["video_id"]:
            groups.append([])
        groups[-1].append(window)
    return groups


def _local_source(uris: list[str], folder: Path, limits: Limits) -> tuple[Path | None, tuple[str, str]]:
    """The first of the video's known paths that can be read, fetched into `folder` if remote."""
    problem = ("missing_file", "the video has no known path")
    for uri in uris:
        if webdataset.split_member(uri) is not None:  # a video inside a WebDataset tar
            try:
                return webdataset.read_member(uri, folder / "video", limits), problem
            except FetchError as exc:
                problem = (exc.reason, exc.detail)
                continue
        if not is_remote(uri):
            if Path(uri).is_file():
                return Path(uri), problem
            problem = ("missing_file", f"{uri} does not exist any more")
            continue
        try:
            return fetch(
                uri,
                folder / "video",
                max_bytes=limits.max_bytes,
                timeout_s=limits.download_timeout_s,
                retries=limits.download_retries,
            ), problem
        except FetchError as exc:
            problem = (exc.reason, exc.detail)
    return None, problem


def clip_motion(frames: np.ndarray) -> float:
    """The share of a clip's pixels that move from one frame to the next, averaged over its steps: (T, H, W, 3)."""
    y = luma(frames)
    return round(float(np.mean([moved_share(a, b) for a, b in zip(y, y[1:])])), 6)


def _static(motion: float, settings: Settings) -> str:
    return (
        f"{motion:.2%} of its pixels move from frame to frame, under the {settings.split.min_motion:.2%} "
        f"a clip needs (COGFLOW_MIN_MOTION)"
    )


def _reject_row(window: dict, reason: str, detail: str, shard_id: str) -> dict:
    return {
        "reject_id": hashlib.md5(f"{window['clip_id']}|{reason}".encode()).hexdigest(),
        "stage": window["stage"],
        "clip_id": window["clip_id"],
        "caption_id": window["caption_id"],
        "video_id": window["video_id"],
        "fps": window["fps"],
        "start_s": window["start_s"],
        "reason": reason,
        "detail": detail[:2000],
        "shard_id": shard_id,
        "seen_at": lake.now(),
    }


# --- stopping every shard at once, from the thread that waits on them ------------------------------------------


class SplitStopped(Exception):
    """The run is being stopped: the shard is left unpublished (no record), for the next run to redo whole."""


# The decoders of this process's shard threads; `stop_shards_on_error` is the block a split flow waits in. A stop
# shuts the downloads in flight, kills the decoders (one may be stuck in a video for up to COGFLOW_VIDEO_TIMEOUT_S)
# and makes each shard raise SplitStopped rather than publish what it has, which would record the windows it did
# not get to as rejects.
_decoders = ChildProcesses(lambda: SplitStopped("the run was stopped"))
stop_shards_on_error = _decoders.stop_on_error
_check_stopping = _decoders.check


_worker = threading.local()


def _thread_decoder() -> Decoder:
    """The decoder of this worker thread, kept from shard to shard: starting one costs a tenth of a second.

    It goes when the thread goes (its child exits when its input closes) or after `recycle_after` videos."""
    if getattr(_worker, "decoder", None) is None:
        _worker.decoder = Decoder()
    return _worker.decoder


def _decode_threads(settings: Settings) -> int:
    opts = settings.split
    return opts.decode_threads or max(1, (os.cpu_count() or 1) // max(1, opts.workers))


def _fetched(
    groups: list[list[dict]], folder: Path, limits: Limits
) -> Generator[tuple[list[dict], Path | None, tuple[str, str]], None, None]:
    """Each video's windows with a readable copy of the video; a remote one is fetched while the one before it
    decodes. Yields (windows, local path or None, the reason when None); each download goes once it is used."""

    def fetch_one(i: int) -> tuple[Path | None, tuple[str, str]]:
        target = folder / f"download-{i}"
        target.mkdir()
        return _local_source(groups[i][0]["source_uris"], target, limits)

    with ThreadPoolExecutor(1, thread_name_prefix="cogflow-fetch") as pool:
        upcoming = pool.submit(fetch_one, 0) if groups else None
        for i, group in enumerate(groups):
            assert upcoming is not None  # submitted for every group
            local, problem = upcoming.result()
            upcoming = pool.submit(fetch_one, i + 1) if i + 1 < len(groups) else None
            yield group, local, problem
            shutil.rmtree(folder / f"download-{i}", ignore_errors=True)


def split_shard(
    settings: Settings, shard: ShardTask, on_video: Callable[[ShardResult], None] | None = None
) -> ShardResult:
    """Decode and write one shard; skip it when its completion record exists. Never fails for a bad video."""
    store = Storage.at(settings.lake)
    with lake.shard_lock(store, shard.shard_id):  # another run on this lake may be splitting it right now
        if store.exists(shard_paths(shard.shard_id)["record"]):
            return ShardResult(shard.shard_id, already_done=True)
        return _split_shard(settings, store, shard, on_video)


def _split_shard(
    settings: Settings, store: Storage, shard: ShardTask, on_video: Callable[[ShardResult], None] | None
) -> ShardResult:
    started = time.monotonic()
    result = ShardResult(shard.shard_id)
    rejects: list[dict] = []
    decoder = _thread_decoder()
    decoder.start()  # a new child imports PyAV while the plan is read
    windows = _read_shard_plan(store, shard)
    result.clips_planned = len(windows)
    with tempfile.TemporaryDirectory(prefix="cogflow-shard-") as tmp:
        folder = Path(tmp)
        writer = _ShardWriter(folder, shard.shard_id, {w["stage"] for w in windows})
        try:
            # closed at once when the shard stops: its next download is waited for, not left running
            with contextlib.closing(_fetched(_by_video(windows), folder, settings.limits)) as videos:
                for group, local, problem in videos:
                    _check_stopping()
                    if problem[0] == "download_stopped":  # the run is stopping: no fault of the video's
                        raise SplitStopped(problem[1])
                    result.videos += 1
                    if local is None:
                        rejects += [_reject_row(w, *problem, shard.shard_id) for w in group]
                        continue
                    job = DecodeJob(
                        str(local),
                        [frame_instants(w["start_s"], w["fps"]) for w in group],
                        sha256=group[0]["sha256"],
                        crop=tuple(group[0]["crop"] or FULL),
                        threads=_decode_threads(settings),
                        seek_gap_s=settings.split.seek_gap_s,
                    )
                    # the decoder a stop kills; its windows then come back as decoder_crashed, which is not the video's
                    # fault: the shard stops instead of recording them
                    with _decoders.working(decoder.start()):
                        for item in decoder.run(job, settings.split.video_timeout_s):
                            _check_stopping()
                            if isinstance(item, WindowFrames):
                                window, motion = group[item.index], clip_motion(item.frames)
                                if motion < settings.split.min_motion:
                                    rejects.append(
                                        _reject_row(window, "static", _static(motion, settings), shard.shard_id)
                                    )
                                    continue
                                writer.add(window, item, motion)
                                result.clips[(window["stage"], window["fps"])] += 1
                            elif isinstance(item, WindowFailed):
                                rejects.append(_reject_row(group[item.index], item.reason, item.detail, shard.shard_id))
                            else:
                                result.frames_decoded += item.frames_decoded
                                result.seeks += item.seeks
                                result.decode_seconds += item.seconds
                    if on_video is not None:
                        on_video(result)
        finally:
            files = writer.close()
        _check_stopping()
        _publish(store, shard.shard_id, files, rejects, result, folder, started)
    return result


def _publish(
    store: Storage,
    shard_id: str,
    files: dict[int, Path],
    rejects: list[dict],
    result: ShardResult,
    folder: Path,
    started: float,
) -> None:
    """The shard's clips and rejects, then the record that makes them count (each write atomic on its own)."""
    paths = shard_paths(shard_id)
    for stage, local_file in files.items():
        store.put_file(paths[f"stage{stage}"], local_file)
        result.bytes_written += local_file.stat().st_size
    rejects_file = folder / "rejects.parquet"
    pq.write_table(pa.Table.from_pylist(rejects, schema=lake.CLIP_REJECTS), rejects_file, compression="zstd")
    store.put_file(paths["rejects"], rejects_file)
    result.rejects.update(r["reason"] for r in rejects)
    result.seconds = time.monotonic() - started
    record = {
        "shard_id": shard_id,
        "videos": result.videos,
        "clips_planned": result.clips_planned,
        "clips_written": result.clips_written,
        "stage1_clips": sum(n for (s, _), n in result.clips.items() if s == 1),
        "stage2_clips": sum(n for (s, _), n in result.clips.items() if s == 2),
        "rejects": len(rejects),
        "frames_decoded": result.frames_decoded,
        "seeks": result.seeks,
        "bytes_written": result.bytes_written,
        "decode_seconds": result.decode_seconds,
        "seconds": result.seconds,
        "finished_at": lake.now(),
    }
    record_file = folder / "record.parquet"
    pq.write_table(pa.Table.from_pylist([record], schema=lake.CLIP_SHARDS), record_file)
    store.put_file(paths["record"], record_file)


# ---------------------------------------------------------------------------------------------------------------
# 3. Finish


@dataclass
class SplitSummary:
    lake: str
    stages: tuple[int, ...]
    new_windows: int
    shards_done: int  # by this run
    shards_skipped: int  # finished before this run started
    videos: int
    clips: dict[tuple[int, float], int]  # (stage, fps) -> clips written by this run
    rejects: dict[str, int]  # reason -> clips rejected by this run (decoding) or captions (planning)
    frames_decoded: int
    bytes_written: int
    decode_seconds: float
    checks: list[str]
    seconds: float

    @property
    def clips_written(self) -> int:
        return sum(self.clips.values())

    def table(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [
            {"what": "windows planned", "count": self.new_windows},
            {"what": "shards split", "count": self.shards_done},
            {"what": "shards already finished", "count": self.shards_skipped},
            {"what": "videos decoded", "count": self.videos},
            {"what": "frames decoded", "count": self.frames_decoded},
            {"what": "clips written", "count": self.clips_written},
        ]
        rows += [{"what": f"  stage {s} at {fps_token(f)}", "count": n} for (s, f), n in sorted(self.clips.items())]
        rows.append({"what": "rejected", "count": sum(self.rejects.values())})
        rows += [{"what": f"  {reason}", "count": n} for reason, n in sorted(self.rejects.items())]
        return rows

    def text(self) -> str:
        width = max(len(str(r["what"])) for r in self.table())
        rate = self.frames_decoded / self.decode_seconds if self.decode_seconds else 0.0
        lines = [
            f"split {self.lake} stages {','.join(map(str, self.stages))} ({self.seconds:.1f} s, {rate:,.0f} frames/s per decoder)"
        ]
        lines += [f"  {str(r['what']):<{width}}  {r['count']:>9,}" for r in self.table()]
        lines.append(f"  data checks passed: {len(self.checks)}")
        return "\n".join(lines)


def finish_split(settings: Settings, plan: SplitPlan, results: list[ShardResult]) -> SplitSummary:
    """Run the data checks over the whole lake and sum up the run."""
    names = checks.check_lake(Storage.at(settings.lake))
    done = [r for r in results if not r.already_done]
    clips: Counter = Counter()
    rejects: Counter = Counter(plan.plan_rejects)
    for r in done:
        clips.update(r.clips)
        rejects.update(r.rejects)
    return SplitSummary(
        lake=plan.lake,
        stages=plan.stages,
        new_windows=plan.new_windows,
        shards_done=len(done),
        shards_skipped=plan.finished_before + len(results) - len(done),
        videos=sum(r.videos for r in done),
        clips=dict(clips),
        rejects=dict(rejects),
        frames_decoded=sum(r.frames_decoded for r in done),
        bytes_written=sum(r.bytes_written for r in done),
        decode_seconds=sum(r.decode_seconds for r in done),
        checks=names,
        seconds=time.monotonic() - plan.started,
    )


def split(settings: Settings, stages: tuple[int, ...] = STAGES, retry_rejects: bool = False) -> SplitSummary:
    """The whole split in one process, one shard after another (the flow splits shards in parallel)."""
    plan = plan_split(settings, stages, retry_rejects)
    return finish_split(settings, plan, [split_shard(settings, shard) for shard in plan.pending])
