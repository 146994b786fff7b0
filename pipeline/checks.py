"""The lake's data checks: every query in `sql/checks/` must return zero rows (dbt-style tests).

Each check reads the lake tables registered under their own names. The clip tables hold only shards with a
completion record (a shard a killed run left half written is not part of the lake yet), and never the frames;
the same goes for token files and their records, of every frame tokenizer version.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb

from cogflow.pipeline import db, lake
from cogflow.pipeline.contract import SQL_PARAMS
from cogflow.pipeline.storage import Storage

# The columns the checks read, per table.
CHECK_COLUMNS = {
    "videos": ["video_id", "duration_s"],
    "shots": ["video_id", "shot_index", "start_s", "end_s"],
    "sources": ["source_uri", "video_id"],
    "captions": ["caption_id", "video_id", "caption", "language", "start_s", "end_s", "split"],
    "rejects": ["reject_id", "reason", "detail"],
    "clip_plan": ["shard_id", "stage", "clip_id", "video_id", "caption_id", "fps", "start_s"],
    "clip_rejects": ["reject_id", "stage", "clip_id", "caption_id", "reason", "detail", "shard_id"],
    "clip_shards": ["shard_id", "clips_planned", "clips_written", "rejects"],
}
TOKEN_CHECK_COLUMNS = ["clip_id", "stage", "shard_id", "frame_tokenizer_version", "text_tokenizer_version"]
CLIP_CHECK_COLUMNS = [
    "clip_id",
    "video_id",
    "caption_id",
    "stage",
    "fps",
    "fps_token",
    "start_s",
    "frame_times",
    "split",
    "shard_id",
]


class DataCheckError(Exception):
    """A check in sql/checks/ returned rows: the lake breaks one of its promises."""


def register_lake(con: duckdb.DuckDBPyConnection, store: Storage) -> None:
    """Register every table the checks read, as the lake holds it now."""
    db.register(con, **{name: lake.read_table(store, name, cols) for name, cols in CHECK_COLUMNS.items()})
    db.register(con, clips=lake.read_clips(store, CLIP_CHECK_COLUMNS))
    db.register(con, token_shards=lake.token_records(store), tokens=lake.read_tokens(store, None, TOKEN_CHECK_COLUMNS))


def run_checks(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Run every query in sql/checks/ against the registered tables; raise if any returns rows."""
    failures, names = [], db.check_names()
    for name in names:
        result = db.run(con, name, **SQL_PARAMS)
        columns = [d[0] for d in result.description]
        rows = result.fetchall()
        if rows:
            sample = "; ".join(str(dict(zip(columns, r))) for r in rows[:5])
            failures.append(f"{name} returned {len(rows)} rows, e.g. {sample}")
    if failures:
        raise DataCheckError("data checks failed:\n  " + "\n  ".join(failures))
    return names


def check_lake(store: Storage) -> list[str]:
    """Run every check over the lake as it is now, on a connection of its own (spilling to a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="cogflow-checks-") as tmp:
        con = db.connect(temp_directory=str(Path(tmp) / "duckdb"))
        try:
            register_lake(con, store)
            return run_checks(con)
        finally:
            con.close()
