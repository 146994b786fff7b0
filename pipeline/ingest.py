"""Ingest: a manifest's rows into the lake's videos/, sources/, captions/ and rejects/ tables.

Three plain steps, which `flows/ingest.py` orders and parallelises:
1. `plan_ingest` reads the manifest, cleans and checks every row in SQL, and lists the sources no earlier
   run has settled (a re-run of the same manifest lists none).
2. `probe_source` fetches (if remote) and probes one source, in a child process bounded in time
   (pipeline/prober.py); it never raises, it returns a reason instead.
3. `finish_ingest` turns the probes into new rows, appends them (videos, sources, captions, rejects, in that
   order, so a crash between two appends is finished by the next run), then runs the data checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from cogflow.pipeline import checks, db, dedup, lake, webdataset
from cogflow.pipeline.checks import DataCheckError  # noqa: F401  (raised by finish_ingest)
from cogflow.pipeline.fetch import fetch
from cogflow.pipeline.manifest import json_key, load_manifest, local_path
from cogflow.pipeline.prober import probe_bounded
from cogflow.pipeline.scan import FINGERPRINT_POINTS, Scan
from cogflow.pipeline.settings import Limits, Settings
from cogflow.pipeline.sources import FetchError, download_policy, safe_uri
from cogflow.pipeline.storage import Storage, is_remote
from cogflow.pipeline.video import FULL, ProbeError, ProbeResult

# Reasons that lie in a source's bytes: remembered, so the source is not probed again on every run.
# Transient ones (missing_file, download_failed, probe_error) are retried by the next run.
CACHED_REASONS = [
    "empty_file",
    "unreadable_container",
    "no_video_stream",
    "resolution_over_limit",
    "aspect_ratio_over_limit",
    "truncated_container",
    "no_frames",
    "undecodable_stream",
    "zero_duration",
    "too_short",
    "duration_over_limit",
    "bytes_over_limit",
    "path_too_long",  # the file system cannot hold the path: it will not be there next run either
    "probe_timeout",  # like split's decode_timeout: tried again with --retry-rejects only
    "near_duplicate",  # the other video stays in the lake: tried again with --retry-rejects only
]

# One row per probed source: a reason, or the ProbeResult fields and the scan's scores (typed as in videos/) and
# shots (as in shots/).
SCAN_COLUMNS = list(Scan([], FULL, 0, 0, 0).columns())
PROBES = pa.schema(
    [("source_uri", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
    + [lake.VIDEOS.field(f.name) for f in dataclasses.fields(ProbeResult)]
    + [lake.VIDEOS.field(name) for name in SCAN_COLUMNS]
    + [pa.field("shots", pa.list_(pa.struct([f for f in lake.SHOTS if f.name not in ("video_id", "shot_index")])))]
)

# The columns each step needs from the lake as it was before this run.
KNOWN_COLUMNS = {
    "videos": ["video_id", "duration_s"],
    "sources": ["source_uri", "video_id"],
    "captions": ["caption_id"],
    "rejects": ["reject_id", "manifest_uri", "source_uri", "reason", "detail"],
}


@dataclass
class IngestPlan:
    manifest_uri: str  # as recorded (credentials removed)
    settings: Settings
    con: duckdb.DuckDBPyConnection
    to_probe: list[tuple[str, str]]  # (source_uri, fetch_uri), fetch_uri may carry a presigned query
    workdir: Path
    started: float  # time.monotonic() when planning began

    def discard(self) -> None:
        """Close the plan's database and remove its scratch folder: after the lake is written, or when probing
        stopped (an error, SIGTERM, Ctrl-C), so that no run leaves a cogflow-ingest-* folder behind."""
        self.con.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @contextlib.contextmanager
    def discarded_on_error(self) -> Iterator[None]:
        """Around the probing: a run that stops there discards the plan (finish_ingest discards it otherwise)."""
        try:
            yield
        except BaseException:
            self.discard()
            raise


@dataclass
class IngestSummary:
    manifest_uri: str
    lake: str
    manifest_rows: int
    accepted_rows: int
    outcomes: dict[str, int]  # 'accepted' and every reject reason -> rows of this manifest
    sources_probed: int
    sources_known: int  # usable sources settled by earlier runs, not probed again
    new_rows: dict[str, int]  # lake table -> rows appended by this run
    duplicate_rows: int  # accepted rows merged into an identical (video, caption, span)
    known_captions: int  # accepted captions the lake already held
    checks: list[str]
    seconds: float
    cleared_rejects: int = 0  # earlier reject records of this manifest that this run no longer gives

    @property
    def rejected_rows(self) -> int:
        return self.manifest_rows - self.accepted_rows

    def table(self) -> list[dict[str, object]]:
        """Rows for the printed summary and the Prefect table artifact."""
        rows: list[dict[str, object]] = [
            {"what": "manifest rows", "count": self.manifest_rows},
            {"what": "accepted rows", "count": self.accepted_rows},
            {"what": "  new captions", "count": self.new_rows.get("captions", 0)},
            {"what": "  already in the lake", "count": self.known_captions},
            {"what": "  duplicates merged", "count": self.duplicate_rows},
            {"what": "rejected rows", "count": self.rejected_rows},
        ]
        rows += [{"what": f"  {reason}", "count": n} for reason, n in self.outcomes.items() if reason != "accepted"]
        rows += [
            {"what": "new reject records", "count": self.new_rows.get("rejects", 0)},
            *([{"what": "  earlier rejects cleared", "count": self.cleared_rejects}] if self.cleared_rejects else []),
            {"what": "sources probed", "count": self.sources_probed},
            {"what": "sources already known", "count": self.sources_known},
            {"what": "new videos", "count": self.new_rows.get("videos", 0)},
        ]
        return rows

    def text(self) -> str:
        width = max(len(str(r["what"])) for r in self.table())
        lines = [f"ingest {self.manifest_uri} -> {self.lake} ({self.seconds:.1f} s)"]
        lines += [f"  {str(r['what']):<{width}}  {r['count']:>9,}" for r in self.table()]
        lines.append(f"  data checks passed: {len(self.checks)}")
        return "\n".join(lines)


def _register_lake(con: duckdb.DuckDBPyConnection, store: Storage, columns: dict[str, list[str]], prefix: str) -> None:
    db.register(con, **{f"{prefix}{name}": lake.read_table(store, name, cols) for name, cols in columns.items()})


def _params(s: Settings, manifest_uri: str) -> dict[str, Any]:
    """The values the SQL files bind (each file takes the ones it uses)."""
    return {
        "manifest_uri": manifest_uri,
        "min_caption_chars": s.limits.min_caption_chars,
        "max_caption_chars": s.limits.max_caption_chars,
        "span_tolerance_s": s.limits.span_tolerance_s,
        "val_percent": s.val_percent,
        "cached_reasons": CACHED_REASONS,
    }


def plan_ingest(
    manifest: str,
    settings: Settings,
    *,
    video_col: str = "video",
    caption_col: str = "caption",
    retry_rejects: bool = False,
    encoding: str | None = None,
) -> IngestPlan:
    """Read and clean the manifest and list the sources to probe. Raises ManifestError for unusable manifests."""
    started = time.monotonic()
    download_policy()  # a malformed download setting fails the run here, not every source it would fetch
    # One manifest, one identity: the same file reached through '..', a symlink or file:// is the same manifest.
    manifest_uri = safe_uri(manifest) if is_remote(manifest) else os.path.realpath(local_path(manifest))
    workdir = Path(tempfile.mkdtemp(prefix="cogflow-ingest-"))
    con = db.connect(temp_directory=str(workdir / "duckdb"))
    try:
        load_manifest(
            con,
            manifest,
            video_col=video_col,
            caption_col=caption_col,
            allowed_roots=settings.allowed_roots,
            limits=settings.limits,
            workdir=workdir,
            encoding=encoding,
        )
        params = _params(settings, manifest_uri)
        db.materialize(
            con,
            "staging/stg_manifest",
            video_col=video_col,
            caption_col=caption_col,
            video_key=json_key(video_col),
            caption_key=json_key(caption_col),
            **params,
        )
        db.run(con, "staging/drop_raw_rows")  # stg_manifest carries all of it; free the memory for what follows
        _register_lake(con, Storage.at(settings.lake), KNOWN_COLUMNS, prefix="lake_")
        to_probe = db.run(con, "marts/sources_to_probe", retry_rejects=retry_rejects, **params).fetchall()
    except BaseException:
        con.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return IngestPlan(manifest_uri, settings, con, [tuple(r) for r in to_probe], workdir, started)


def _local_video(fetch_uri: str, tmp: Path, limits: Limits) -> Path:
    if webdataset.split_member(fetch_uri) is not None:  # a video inside a WebDataset tar
        return webdataset.read_member(fetch_uri, tmp / "video", limits)
    if is_remote(fetch_uri):
        return fetch(
            fetch_uri,
            tmp / "video",
            max_bytes=limits.max_bytes,
            timeout_s=limits.download_timeout_s,
            retries=limits.download_retries,
        )
    path = Path(fetch_uri)
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise ProbeError("path_too_long", f"{fetch_uri[:200]}...: {exc.strerror}") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise ProbeError("missing_file", f"{fetch_uri} does not exist") from None
        raise
    if not stat.S_ISREG(info.st_mode):  # never opened: a FIFO would block the probe until a writer comes
        kind = (
            "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else "no regular file"
        )
        raise ProbeError("not_a_file", f"{fetch_uri} is {kind}")
    size = info.st_size
    if size > limits.max_bytes:
        raise ProbeError("bytes_over_limit", f"{size} bytes > limit {limits.max_bytes}")
    return path


def probe_source(source_uri: str, fetch_uri: str, limits: Limits) -> dict[str, object]:
    """Probe one source into a `PROBES` row. Never raises: a failure is a reason and a detail."""
    row: dict[str, object] = {"source_uri": source_uri}
    try:
        with tempfile.TemporaryDirectory(prefix="cogflow-probe-") as tmp:
            path = _local_video(fetch_uri, Path(tmp), limits)
            # in a child process, stopped after probe_timeout_s: a pathological file can keep FFmpeg busy for ever
            result, scanned = probe_bounded(
                path,
                limits.probe_timeout_s,
                bool(limits.scan),
                max_width=limits.max_width,
                max_height=limits.max_height,
                max_pixels=limits.max_pixels,
                max_aspect_ratio=limits.max_aspect_ratio,
            )
        if result.duration_s <= 0:
            raise ProbeError("zero_duration", f"{result.frame_count} frames over {result.duration_s} s")
        if result.duration_s < limits.min_duration_s:
            raise ProbeError("too_short", f"{result.duration_s:.3f} s < {limits.min_duration_s} s")
        if result.duration_s > limits.max_duration_s:
            raise ProbeError("duration_over_limit", f"{result.duration_s:.1f} s > {limits.max_duration_s} s")
        row.update(result.as_dict())
        if scanned is not None:
            row.update(scanned.columns(), shots=[dataclasses.asdict(shot) for shot in scanned.shots])
    except (ProbeError, FetchError) as exc:
        row.update(reason=exc.reason, detail=exc.detail)
    except Exception as exc:  # an exotic file or a bug must not sink the run: recorded, and retried next run
        row.update(reason="probe_error", detail=f"{type(exc).__name__}: {exc}"[:2000])
    return row


def finish_ingest(plan: IngestPlan, probes: list[dict[str, object]]) -> IngestSummary:
    """Write what the probes decided, run the data checks, and summarise the run."""
    settings = plan.settings
    store = Storage.at(settings.lake)
    try:
        with lake.writer_lock(store):
            summary = _write(plan, store, probes)
    finally:
        plan.discard()
    return summary


def _write(plan: IngestPlan, store: Storage, probes: list[dict[str, object]]) -> IngestSummary:
    """The part of finish_ingest that runs under the lake's writer lock."""
    con, settings = plan.con, plan.settings
    # Another run may have written since this one planned: anti-join against the lake as it is now.
    _register_lake(con, store, KNOWN_COLUMNS, prefix="lake_")
    probes = mark_near_duplicates(store, probes, settings.limits.near_duplicate_bits)
    db.register(con, probes=pa.Table.from_pylist(probes, schema=PROBES))
    params = {**_params(settings, plan.manifest_uri), "now": lake.now()}
    db.materialize(con, "marts/source_outcomes", **params)
    db.materialize(con, "marts/row_outcomes", **params)
    new_rows = {}
    cleared = 0
    for table in ("videos", "shots", "sources", "captions", "rejects"):  # this order keeps a crash recoverable
        if table == "rejects":
            cleared = _clear_stale_rejects(con, store, plan.manifest_uri, params)
        new = con.table(db.materialize(con, f"marts/{table}_new", **params))
        new_rows[table] = lake.append(store, table, new.to_arrow_reader()).rows
    outcomes = dict(db.run(con, "marts/outcome_counts").fetchall())
    manifest_rows, accepted, distinct_captions, usable_sources = db.run(con, "marts/run_counts").fetchall()[0]
    db.run(con, "marts/drop_run_tables")  # the checks read the whole lake: give them the memory
    checks.register_lake(con, store)
    check_names = checks.run_checks(con)
    return IngestSummary(
        manifest_uri=plan.manifest_uri,
        lake=safe_uri(settings.lake),
        manifest_rows=manifest_rows,
        accepted_rows=accepted,
        outcomes=outcomes,
        sources_probed=len(probes),
        sources_known=usable_sources - len(probes),
        new_rows=new_rows,
        duplicate_rows=accepted - distinct_captions,
        known_captions=distinct_captions - new_rows["captions"],
        checks=check_names,
        seconds=time.monotonic() - plan.started,
        cleared_rejects=cleared,
    )


def mark_near_duplicates(store: Storage, probes: list[dict[str, object]], bits: int) -> list[dict[str, object]]:
    """The probes with every new video that is a near-duplicate of an accepted one (or of a better new one: more
    pixels, then more bytes) turned into a `near_duplicate` reject naming the other video."""
    if bits <= 0:
        return probes
    known = lake.read_table(store, "videos", ["sha256", "fingerprint", "colour_layout", "duration_s"]).to_pylist()
    accepted = [dedup.Video(v["sha256"], v["fingerprint"], v["colour_layout"], v["duration_s"]) for v in known]
    new = {  # one entry per new video: several sources may hold the same bytes
        str(r["sha256"]): dedup.Video(
            str(r["sha256"]),
            cast("list[int]", r["fingerprint"]),
            cast("bytes | None", r.get("colour_layout")),
            cast(float, r["duration_s"]),
            cast(int, r["width"]) * cast(int, r["height"]),
            cast(int, r["bytes"]),
        )
        for r in probes
        if r.get("reason") is None and r.get("fingerprint")
    }
    known_shas = {v.key for v in accepted}  # exact copies of an accepted video are that video
    near = dedup.find(accepted, [v for k, v in new.items() if k not in known_shas], bits, len(FINGERPRINT_POINTS))
    out = []
    for row in probes:
        if row.get("reason") is None and row.get("sha256") in near:
            other, apart = near[str(row["sha256"])]
            row = {
                "source_uri": row["source_uri"],
                "reason": "near_duplicate",
                "detail": f"the pictures of video {other[:16]} ({apart} of {64 * len(FINGERPRINT_POINTS)} fingerprint "
                "bits apart; COGFLOW_NEAR_DUPLICATE_BITS)",
            }
        out.append(row)
    return out


def _clear_stale_rejects(con: duckdb.DuckDBPyConnection, store: Storage, manifest_uri: str, params: dict) -> int:
    """Take out this manifest's reject records that this run no longer gives (a row corrected, a file that arrived or
    fails for another reason now, a row gone from the manifest), so rejects/ holds each manifest's latest verdict.

    Each part holding one is rewritten in place without them (`lake.rewrite`): readers take no lock, and one that
    listed the parts just before must still find them all. Returns how many records were cleared.
    """
    stale = {r for (r,) in db.run(con, "marts/rejects_stale", **params).fetchall()}
    if not stale:
        return 0
    for part in store.list_files("rejects", ".parquet"):
        ids = lake.read_table(store, "rejects", ["reject_id", "manifest_uri"], parts=[part])
        if stale.isdisjoint(ids["reject_id"].to_pylist()):
            continue
        whole = lake.read_table(store, "rejects", parts=[part])
        # a record goes only if it is this manifest's: the same row with the same reason in another manifest stays
        goes = pc.and_(
            pc.is_in(whole["reject_id"], pa.array(sorted(stale), pa.string())),
            pc.fill_null(pc.equal(whole["manifest_uri"], manifest_uri), False),
        )
        lake.rewrite(store, "rejects", part, whole.filter(pc.invert(goes)))
    _register_lake(con, store, {"rejects": KNOWN_COLUMNS["rejects"]}, prefix="lake_")
    return len(stale)


def ingest(manifest: str, settings: Settings, **options: Any) -> IngestSummary:
    """The whole ingest in one process, probing one source after another (the flow probes in parallel)."""
    plan = plan_ingest(manifest, settings, **options)
    with plan.discarded_on_error():
        probes = [probe_source(uri, fetch_uri, settings.limits) for uri, fetch_uri in plan.to_probe]
    return finish_ingest(plan, probes)
