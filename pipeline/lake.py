"""The lake's tables: Parquet part files under `<lake>/<table>/`, appended atomically, read as one table.

A table is the union of its part files. Writers add complete parts (see `Storage.put_file`), and every step
anti-joins on the table's key before appending, so re-running a step adds nothing and a step that crashed half
way is finished by the next run. Two steps take rows out again, and do so in place (`rewrite`: the part keeps
its path, and is left empty rather than removed), because readers take no lock and may have listed it: an
ingest clearing its manifest's stale rejects, and `cogflow repair` cutting duplicate rows out. Only `cogflow
repair` removes files: those of a shard planned twice or without a completion record (readers read a shard's
files only while its record is there, and the record goes first), and `.tmp-*` files of writes that never
finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from cogflow.pipeline import lease as lease_module
from cogflow.pipeline.contract import CLIP_STAGES
from cogflow.pipeline.lease import WRITER_LEASE, S3Lease
from cogflow.pipeline.storage import S3Storage, Storage

VIDEOS = pa.schema(
    [
        ("video_id", pa.string()),
        ("source_uri", pa.string()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("container", pa.string()),
        ("codec", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("fps", pa.float64()),
        ("duration_s", pa.float64()),
        ("frame_count", pa.int64()),
        ("rotation", pa.int32()),
        ("header_duration_s", pa.float64()),
        # Scores from ingest's scan (pipeline/scan.py), NULL for videos ingested without one. The content box inside
        # the video's bars, as shares of the stored frame: split crops to it.
        ("crop_left", pa.float64()),
        ("crop_top", pa.float64()),
        ("crop_right", pa.float64()),
        ("crop_bottom", pa.float64()),
        ("motion", pa.float64()),  # share of pixels that move in 0.25 s, over the whole video
        ("brightness", pa.float64()),  # mean luma, 0-255
        ("sharpness", pa.float64()),  # variance of the Laplacian at 128 pixels wide
        ("shot_count", pa.int32()),
        ("fingerprint", pa.list_(pa.int64())),  # 64-bit DCT hashes at 10/30/50/70/90% of the video (near-duplicates)
        ("colour_layout", pa.binary()),  # mean colours of 4x4 cells at the same instants, (5, 4, 4, 3) uint8
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)

# The shots of each scanned video, in time order: clip windows never span two.
SHOTS = pa.schema(
    [
        ("video_id", pa.string()),
        ("shot_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("detector", pa.string()),  # what began the shot: 'start', 'cut' or 'fade'
        ("score", pa.float64()),  # the colour-histogram change at the cut (1 for a fade, 0 for the first shot)
        ("motion", pa.float64()),  # share of pixels that move in 0.25 s inside the shot
    ]
)

# Every path (or URI) that held an accepted video: how a later run knows a source without probing it again,
# even when its bytes duplicate a video first seen under another path.
SOURCES = pa.schema(
    [
        ("source_uri", pa.string()),
        ("video_id", pa.string()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("first_seen_at", pa.timestamp("us", tz="UTC")),
    ]
)

CAPTIONS = pa.schema(
    [
        ("caption_id", pa.string()),
        ("video_id", pa.string()),
        ("source_uri", pa.string()),
        ("caption", pa.string()),
        ("language", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("split", pa.string()),
        ("source_video_id", pa.string()),  # the manifest's own video_id column, if it had one
        ("metadata", pa.string()),  # JSON of the manifest's other columns
        ("manifest_uri", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)

REJECTS = pa.schema(
    [
        ("reject_id", pa.string()),  # hash of (raw row, reason): one record per row and reason
        ("row_id", pa.string()),  # hash of the raw row
        ("manifest_uri", pa.string()),
        ("row_number", pa.int64()),
        ("source_uri", pa.string()),  # resolved when possible, else the raw value
        ("caption", pa.string()),  # the raw caption
        ("raw", pa.string()),  # the whole raw row as JSON
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("seen_at", pa.timestamp("us", tz="UTC")),
    ]
)

# Clip windows as planned by `split` (sql/marts/clip_plan.sql): what each shard must produce. A caption is
# planned once per stage; a run that dies mid-shard finds its shards here and finishes them.
CLIP_PLAN = pa.schema(
    [
        ("shard_id", pa.string()),
        ("stage", pa.int8()),
        ("clip_id", pa.string()),  # hash of (caption_id, stage, fps, start_s)
        ("video_id", pa.string()),
        ("caption_id", pa.string()),
        ("caption", pa.string()),
        ("language", pa.string()),
        ("split", pa.string()),
        ("fps", pa.float64()),
        ("fps_token", pa.string()),
        ("start_s", pa.float64()),
        ("source_uris", pa.list_(pa.string())),  # the video's known paths, the first one first
        ("sha256", pa.string()),  # what the file must still hold
        ("bytes", pa.int64()),
        ("crop", pa.list_(pa.float64())),  # the video's content box (left, top, right, bottom); NULL: the whole frame
        ("planned_at", pa.timestamp("us", tz="UTC")),
    ]
)

# One 5-frame clip, in `clips/stage=S/shard-<shard_id>.parquet`.
CLIPS = pa.schema(
    [
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("caption_id", pa.string()),
        ("caption", pa.string()),
        ("language", pa.string()),
        ("stage", pa.int8()),
        ("fps", pa.float64()),
        ("fps_token", pa.string()),  # '<fps_0.25>' ... '<fps_8>', a reserved piece of the text vocabulary
        ("start_s", pa.float64()),  # first target instant, seconds from the video's start
        ("frame_times", pa.list_(pa.float64())),  # presentation time of each frame picked (nearest to its instant)
        ("frames", pa.binary()),  # 5 x 160 x 160 x 3 uint8, time order, row-major RGB
        ("motion", pa.float64()),  # share of pixels that move from one frame to the next (mean of the 4 steps)
        ("split", pa.string()),
        ("shard_id", pa.string()),
    ]
)

# A caption that got no window, or a planned clip that could not be decoded.
CLIP_REJECTS = pa.schema(
    [
        ("reject_id", pa.string()),
        ("stage", pa.int8()),
        ("clip_id", pa.string()),  # NULL for a caption rejected at planning
        ("caption_id", pa.string()),
        ("video_id", pa.string()),
        ("fps", pa.float64()),
        ("start_s", pa.float64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("shard_id", pa.string()),  # NULL for a caption rejected at planning
        ("seen_at", pa.timestamp("us", tz="UTC")),
    ]
)

# The completion record of a shard, written after its clips and rejects: only shards listed here count.
CLIP_SHARDS = pa.schema(
    [
        ("shard_id", pa.string()),
        ("videos", pa.int64()),
        ("clips_planned", pa.int64()),
        ("clips_written", pa.int64()),
        ("stage1_clips", pa.int64()),
        ("stage2_clips", pa.int64()),
        ("rejects", pa.int64()),
        ("frames_decoded", pa.int64()),
        ("seeks", pa.int64()),
        ("bytes_written", pa.int64()),
        ("decode_seconds", pa.float64()),
        ("seconds", pa.float64()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)

# One encoded clip, in `tokens/v<frame tokenizer version>/stage=S/shard-<shard_id>.parquet` (model/tokenizers/encode.py):
# what both CogVideo stages train on.
TOKENS = pa.schema(
    [
        ("clip_id", pa.string()),
        ("caption_id", pa.string()),
        ("video_id", pa.string()),
        ("stage", pa.int8()),
        ("fps", pa.float64()),
        ("split", pa.string()),
        ("text_ids", pa.list_(pa.int32())),  # the caption's pieces, left-padded with <pad> (0) to the text length
        ("text_mask", pa.list_(pa.bool_())),  # True where text_ids holds a piece
        ("text_truncated", pa.bool_()),  # the caption had more pieces than the text length (the tail was cut)
        ("fps_token_id", pa.int32()),  # the id of '<fps_...>' in the text vocabulary
        ("frame_codes", pa.binary()),  # 5 x code_grid x code_grid int16, little-endian, time order, row-major
        ("code_grid", pa.int16()),  # codes per side of a frame: 10 (compression 16) or 20 (compression 8)
        ("text_tokenizer_version", pa.string()),
        ("frame_tokenizer_version", pa.string()),
        ("shard_id", pa.string()),  # the split shard the clip came from; its token file has the same name
    ]
)

# The completion record of one encoded clip file, in `token_shards/v<frame version>/stage=S/shard-<id>.parquet`,
# written after its token rows: only token files with a record count.
TOKEN_SHARDS = pa.schema(
    [
        ("shard_id", pa.string()),
        ("stage", pa.int8()),
        ("frame_tokenizer_version", pa.string()),
        ("text_tokenizer_version", pa.string()),
        ("clips", pa.int64()),
        ("seconds", pa.float64()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "videos": VIDEOS,
    "shots": SHOTS,
    "sources": SOURCES,
    "captions": CAPTIONS,
    "rejects": REJECTS,
    "clip_plan": CLIP_PLAN,
    "clips": CLIPS,
    "clip_rejects": CLIP_REJECTS,
    "clip_shards": CLIP_SHARDS,
    "tokens": TOKENS,
    "token_shards": TOKEN_SHARDS,
}


def now() -> datetime:
    return datetime.now(UTC)


def read_table(store: Storage, name: str, columns: list[str] | None = None, parts: list[str] | None = None) -> pa.Table:
    """All parts of table `name` (or just `parts`, paths relative to the lake) as one Arrow table.

    Empty, with the schema, when there are none. Folder names such as `stage=1` are not read as columns.
    """
    schema = SCHEMAS.get(name)
    parts = store.list_files(name, ".parquet") if parts is None else parts
    if not parts:
        if schema is None:
            raise FileNotFoundError(f"no table {name!r} under {store.root}")
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    fs, _ = store.arrow("")
    paths = [store.arrow(p)[1] for p in parts]
    return pq.ParquetDataset(paths, filesystem=fs, schema=schema, partitioning=None).read(columns=columns)


class Written(NamedTuple):
    path: str | None  # the new part, relative to the lake root; None when there was nothing to write
    rows: int


def append(store: Storage, name: str, data: pa.Table | pa.RecordBatchReader) -> Written:
    """Write `data` as one new part of table `name` (no part at all for 0 rows).

    A reader is written batch by batch, so a million new rows never sit in memory twice (DuckDB + Arrow).
    """
    schema = SCHEMAS[name]
    batches = data.to_batches() if isinstance(data, pa.Table) else data
    rows, rel = 0, None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "part.parquet"
        with pq.ParquetWriter(local, schema, compression="zstd") as writer:
            for batch in batches:
                if batch.num_rows:
                    writer.write_table(pa.Table.from_batches([batch]).select(schema.names).cast(schema))
                    rows += batch.num_rows
        if rows:
            rel = f"{name}/part-{now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
            store.put_file(rel, local)
    return Written(rel, rows)


def rewrite(store: Storage, name: str, part: str, table: pa.Table) -> None:
    """Replace part `part` of table `name` with `table` (which may have no rows), at the same path.

    `Storage.put_file` swaps the whole file at once (a rename locally, one PUT on S3), so a reader that listed
    the part finds it still there, with the old rows or the new ones; a part is never removed instead, even
    when no row is left. Not covered: on S3, a reader part-way through the old object's bytes at that moment
    (a part is read in a few requests) can fail to read it and has to be run again.
    """
    schema = SCHEMAS[name]
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "part.parquet"
        pq.write_table(table.select(schema.names).cast(schema), local, compression="zstd")
        store.put_file(part, local)


@contextlib.contextmanager
def _flock(path: Path, remove: bool = False, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive advisory lock on `path` (created if need be); `remove` deletes it before letting go,
    which is safe only when whoever gets the lock next re-checks what the lock guards. Without `wait`, yields
    False at once when someone else holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a")  # "a": never truncated
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            yield False
            return
        except BaseException:  # e.g. Ctrl-C while waiting
            handle.close()
            raise
        # A holder with `remove` deletes the file before letting go: whoever opened it before then gets the lock
        # of a file no longer at `path`, while a newcomer makes and locks a new one there. Only the lock of the
        # file at `path` counts; anyone else tries again.
        try:
            here = os.stat(path)
        except FileNotFoundError:
            here = None
        mine = os.fstat(handle.fileno())
        if here is not None and (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
            break
        handle.close()  # lets go of the lock of the removed file
    try:
        yield True
    finally:
        if remove:
            path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def writer_lock(store: Storage) -> Iterator[None]:
    """One writer at a time: an advisory lock on `<lake>/.writer.lock` on a local lake, a lease on S3
    (`<lake>/.writer.lease`, pipeline/lease.py) that a killed writer's lease gives up after its time to live.

    Writers re-read the keys under the lock before appending, so two runs that planned at the same time
    still add each row once. On S3 a writer whose lease was lost stops writing (LeaseLost).
    """
    if isinstance(store, S3Storage):
        with S3Lease(store, WRITER_LEASE, "writer", lease_module.DEFAULT_TTL_S).held():
            yield
        return
    with _flock(Path(store.root) / ".writer.lock"):
        yield


def _shard_lease(store: S3Storage, shard_id: str) -> S3Lease:
    return S3Lease(store, f".locks/shard-{shard_id}.lease", f"shard {shard_id}", lease_module.DEFAULT_TTL_S)


@contextlib.contextmanager
def shard_lock(store: Storage, shard_id: str) -> Iterator[None]:
    """One writer per shard, so two runs never write the same shard at once (a lock file on a local lake,
    a lease on S3, as for writer_lock).

    Whoever gets the lock must check for the shard's completion record first: the lock goes when its
    holder is done, and a run that waited for it finds the shard finished.
    """
    if isinstance(store, S3Storage):
        with _shard_lease(store, shard_id).held():
            yield
        return
    with _flock(Path(store.root) / ".locks" / f"shard-{shard_id}.lock", remove=True):
        yield


@contextlib.contextmanager
def try_shard_lock(store: Storage, shard_id: str) -> Iterator[bool]:
    """shard_lock without waiting: yields False at once when a live writer holds the shard."""
    if isinstance(store, S3Storage):
        lease = _shard_lease(store, shard_id)
        if not lease.try_acquire():
            yield False
            return
        try:
            yield True
        finally:
            lease.release()
        return
    with _flock(Path(store.root) / ".locks" / f"shard-{shard_id}.lock", remove=True, wait=False) as held:
        yield held


def finished_shards(store: Storage) -> set[str]:
    """Ids of the shards whose completion record exists."""
    return {Path(rel).stem.removeprefix("shard-") for rel in store.list_files("clip_shards", ".parquet")}


def clip_parts(store: Storage, stage: int | None = None) -> list[str]:
    """The clip files of finished shards (of one stage, or both)."""
    done = finished_shards(store)
    stages = CLIP_STAGES if stage is None else (stage,)
    return [
        rel
        for s in stages
        for rel in store.list_files(f"clips/stage={s}", ".parquet")
        if Path(rel).stem.removeprefix("shard-") in done
    ]


def read_clips(store: Storage, columns: list[str] | None = None, stage: int | None = None) -> pa.Table:
    """Clips of finished shards only: a shard a killed run left half done is not read."""
    return read_table(store, "clips", columns, parts=clip_parts(store, stage))


def row_counts(store: Storage) -> dict[str, int]:
    """Rows per table (top-level folder) of the lake, read from Parquet footers only."""
    fs, _ = store.arrow("")
    counts: dict[str, int] = {name: 0 for name in SCHEMAS}
    for rel in store.list_files("", ".parquet"):
        table = rel.split("/")[0]
        if table == rel:
            continue  # a file at the lake's root is no table's part
        with fs.open_input_file(store.arrow(rel)[1]) as f:
            counts[table] = counts.get(table, 0) + pq.ParquetFile(f).metadata.num_rows
    return counts


def token_lock_id(frame_version: str, stage: int, shard_id: str) -> str:
    """The shard lock (`shard_lock`) a token file and its record are written under (model/tokenizers/encode.py)."""
    return f"tokens-v{frame_version}-{stage}-{shard_id}"


def token_paths(frame_version: str, stage: int, shard_id: str) -> dict[str, str]:
    """Where the tokens of one clip file (a split shard's clips of one stage) and their record live."""
    return {
        "tokens": f"tokens/v{frame_version}/stage={stage}/shard-{shard_id}.parquet",
        "record": f"token_shards/v{frame_version}/stage={stage}/shard-{shard_id}.parquet",
    }


def token_file_key(rel: str) -> tuple[str, int, str] | None:
    """(frame version, stage, shard id) when `rel` is a path `token_paths` gives (a token file or its record)."""
    parts = rel.split("/")
    if len(parts) != 4 or not parts[2].removeprefix("stage=").isdigit():
        return None
    key = (
        parts[1].removeprefix("v"),
        int(parts[2].removeprefix("stage=")),
        parts[3].removeprefix("shard-").removesuffix(".parquet"),
    )
    return key if rel in token_paths(*key).values() else None


def token_records(store: Storage, frame_version: str | None = None) -> pa.Table:
    """Completion records of encoded clip files (of one frame tokenizer version, or all)."""
    prefix = "token_shards" if frame_version is None else f"token_shards/v{frame_version}"
    return read_table(store, "token_shards", parts=store.list_files(prefix, ".parquet"))


def token_parts(store: Storage, frame_version: str | None = None, stage: int | None = None) -> list[str]:
    """The token files with a completion record, of one frame tokenizer version (or all), of one stage (or both)."""
    records = token_records(store, frame_version).to_pylist()
    return sorted(
        token_paths(r["frame_tokenizer_version"], r["stage"], r["shard_id"])["tokens"]
        for r in records
        if stage is None or r["stage"] == stage
    )


def read_tokens(
    store: Storage, frame_version: str | None, columns: list[str] | None = None, stage: int | None = None
) -> pa.Table:
    """Token rows of finished token files only (of one frame tokenizer version, or all)."""
    return read_table(store, "tokens", columns, parts=token_parts(store, frame_version, stage))
