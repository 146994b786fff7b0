"""Reading manifests into DuckDB and resolving the videos they point at (README: Ingest).

A manifest is CSV, JSONL or Parquet (one row per video and caption), or an SRT / WebVTT subtitle file next
to its video, local or at an s3:// or http(s):// address. Every row lands in the temp table `raw_rows` as
raw JSON; `resolved` maps each distinct video value to a source URI, or to the reason it cannot be used.

Local paths must stay inside the manifest's folder or a configured root, so a manifest cannot make cogflow
read `../../etc/passwd`; a remote manifest may only point at remote videos or paths below its own prefix.
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline import db
from pipeline.settings import Limits
from pipeline.storage import FetchError, Storage, fetch, is_remote, safe_uri, split_s3
from pipeline.subtitles import SUBTITLE_SUFFIXES, Cue, SubtitleError, parse_subtitles

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
FORMATS.update({suffix: "subtitles" for suffix in SUBTITLE_SUFFIXES})
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
SUBTITLES_COL = "subtitles"


class ManifestError(Exception):
    """The manifest as a whole cannot be read (format, columns, address): a usage error, not a row reject."""


@dataclass(frozen=True)
class Resolved:
    source_uri: str | None  # what the lake records: an absolute path or a URI without credentials
    fetch_uri: str | None  # what is opened: may carry a presigned query; never written anywhere
    reason: str | None = None
    detail: str | None = None


def manifest_format(uri: str) -> str:
    suffix = _suffix(uri)
    if suffix not in FORMATS:
        raise ManifestError(f"unknown manifest format {suffix!r} for {safe_uri(uri)}; expected one of {sorted(FORMATS)}")
    return FORMATS[suffix]


def manifest_base(uri: str) -> str:
    """What relative paths resolve against: the manifest's folder (real path) or its remote prefix."""
    uri = local_path(uri)
    if is_remote(uri):
        parsed = urllib.parse.urlparse(uri)
        folder = posixpath.dirname(parsed.path).rstrip("/") + "/"
        return urllib.parse.urlunparse((parsed.scheme, parsed.netloc, folder, "", "", ""))
    return os.path.realpath(os.path.dirname(os.path.abspath(uri)))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def json_key(column: str) -> str:
    """A JSON path that reads `column` as a plain key, whatever it contains ('$video', 'a.b', 'we"ird')."""
    return "$." + json.dumps(column, ensure_ascii=False)


def resolve_source(value: str | None, base: str, allowed_roots: Sequence[str] = ()) -> Resolved:
    """Turn a manifest's video (or subtitles) value into a source URI, or a reason it cannot be used."""
    value = (value or "").strip()
    if not value:
        return Resolved(None, None, "missing_video", "the row names no video")
    if "\x00" in value:
        return Resolved(None, None, "unsupported_uri", "the path contains a NUL character")
    parsed = urllib.parse.urlparse(value)
    scheme = parsed.scheme.lower()
    if scheme in ("s3", "http", "https"):
        if not parsed.netloc:
            return Resolved(None, None, "unsupported_uri", f"{safe_uri(value)!r} names no host or bucket")
        uri = urllib.parse.urlunparse(parsed._replace(scheme=scheme))
        return Resolved(safe_uri(uri), uri)
    if scheme == "file":
        value = urllib.request.url2pathname(parsed.path)
    elif len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        return Resolved(None, None, "unsupported_uri", f"{scheme}:// is not supported (local path, file://, s3://, http(s)://)")

    if is_remote(base):
        if os.path.isabs(value) or scheme == "file":
            return Resolved(None, None, "path_outside_roots", f"{value!r}: a remote manifest cannot point at local files")
        prefix = urllib.parse.urlparse(base)
        path = posixpath.normpath(posixpath.join(prefix.path, parsed.path))
        # the server decodes %2e%2e into '..': the decoded path must stay below the prefix too
        if not (path.startswith(prefix.path) and urllib.parse.unquote(path) == posixpath.normpath(urllib.parse.unquote(path))):
            return Resolved(None, None, "path_outside_roots", f"{parsed.path!r} leaves the manifest's prefix {safe_uri(base)}")
        uri = urllib.parse.urlunparse((prefix.scheme, prefix.netloc, path, "", parsed.query, ""))
        return Resolved(safe_uri(uri), uri)

    try:
        path = os.path.realpath(os.path.join(base, os.path.expanduser(value)))  # realpath: symlinks cannot escape
    except (ValueError, OSError) as exc:
        return Resolved(None, None, "unsupported_uri", f"{value!r}: {exc}")
    roots = [base, *(os.path.realpath(r) for r in allowed_roots)]
    if not any(_inside(path, root) for root in roots):
        return Resolved(None, None, "path_outside_roots", f"{value!r} resolves to {path}, outside {', '.join(roots)}")
    return Resolved(path, path)


def local_path(uri: str) -> str:
    """A file:// URI as a plain path; other values unchanged."""
    return urllib.request.url2pathname(urllib.parse.urlparse(uri).path) if uri.startswith("file://") else uri


def local_copy(uri: str, workdir: Path, limits: Limits) -> Path:
    """A local file with the content at `uri` (the file itself when it is local)."""
    uri = local_path(uri)
    if not is_remote(uri):
        if not Path(uri).is_file():
            raise FileNotFoundError(uri)
        return Path(uri)
    name = posixpath.basename(urllib.parse.urlparse(uri).path) or "download"
    dest = Path(tempfile.mkdtemp(dir=workdir)) / name
    return fetch(uri, dest, max_bytes=limits.max_bytes, timeout_s=limits.download_timeout_s, retries=limits.download_retries)


def _source_exists(uri: str) -> bool:
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        return Storage.at(f"s3://{bucket}").exists(key)
    if is_remote(uri):
        try:
            with urllib.request.urlopen(urllib.request.Request(uri, method="HEAD"), timeout=30):
                return True
        except OSError:
            return False
    return Path(uri).is_file()


def sibling_video(subtitle_uri: str) -> str:
    """The video next to a subtitle file: same name, a video suffix (clip.srt -> clip.mp4)."""
    stem = posixpath.splitext(posixpath.basename(urllib.parse.urlparse(subtitle_uri).path))[0]
    base = manifest_base(subtitle_uri)
    for suffix in VIDEO_SUFFIXES:
        resolved = resolve_source(stem + suffix, base)
        if resolved.fetch_uri and _source_exists(resolved.fetch_uri):
            return stem + suffix
    raise ManifestError(f"no video named {stem}{{{','.join(VIDEO_SUFFIXES)}}} next to {safe_uri(subtitle_uri)}")


def _expand(row: dict, cues: list[Cue], caption_col: str) -> list[str]:
    """One raw row per cue: the row's other columns are kept, caption and span come from the cue."""
    out = []
    for cue in cues:
        expanded = {**row, caption_col: cue.text, "start_s": cue.start, "end_s": cue.end, "subtitle_cue": cue.index}
        out.append(json.dumps(expanded, ensure_ascii=False))
    return out


def _subtitle_table(rows: list[tuple[int, str, str | None, str | None]]) -> pa.Table:
    return pa.table(
        {
            "row_number": pa.array([r[0] for r in rows], pa.int64()),
            "raw": pa.array([r[1] for r in rows], pa.string()),
            "load_reason": pa.array([r[2] for r in rows], pa.string()),
            "load_detail": pa.array([r[3] for r in rows], pa.string()),
        }
    )


def _suffix(uri: str) -> str:
    return posixpath.splitext(urllib.parse.urlparse(uri).path if is_remote(uri) else uri)[1].lower()


def _read_subtitles(uri: str, workdir: Path, limits: Limits) -> list[Cue]:
    return parse_subtitles(local_copy(uri, workdir, limits).read_bytes(), _suffix(uri))


def _expand_subtitle_column(
    con: duckdb.DuckDBPyConnection, base: str, roots: Sequence[str], caption_col: str, workdir: Path, limits: Limits
) -> None:
    """Rows with a `subtitles` value become one row per cue; an unusable subtitle file rejects its row."""
    replaced: list[tuple[int, str, str | None, str | None]] = []
    for row_number, raw, subtitles in db.run(con, "staging/rows_with_subtitles").fetchall():
        resolved = resolve_source(subtitles, base, roots)
        if resolved.reason:
            replaced.append((row_number, raw, resolved.reason, f"subtitles: {resolved.detail}"))
            continue
        try:
            cues = _read_subtitles(resolved.fetch_uri, workdir, limits)
        except (SubtitleError, FetchError, OSError) as exc:
            replaced.append((row_number, raw, "bad_subtitles", f"{resolved.source_uri}: {exc}"))
            continue
        replaced.extend((row_number, line, None, None) for line in _expand(json.loads(raw), cues, caption_col))
    if replaced:
        db.register(con, subtitle_rows=_subtitle_table(replaced))
        db.run(con, "staging/replace_subtitle_rows")


def load_manifest(
    con: duckdb.DuckDBPyConnection,
    uri: str,
    *,
    video_col: str = "video",
    caption_col: str = "caption",
    allowed_roots: Sequence[str] = (),
    limits: Limits = Limits(),
    workdir: Path,
) -> None:
    """Fill `raw_rows` and `resolved` for the manifest at `uri`. Raises ManifestError for unusable manifests."""
    fmt = manifest_format(uri)
    base = manifest_base(uri)
    try:
        path = local_copy(uri, workdir, limits)
    except (FetchError, OSError) as exc:
        raise ManifestError(f"cannot read manifest {safe_uri(uri)}: {exc}") from exc

    db.run(con, "staging/create_raw_rows")
    try:
        if fmt == "csv":
            delim, columns = csv_header(path)
            if columns:  # an empty file has no rows to load
                db.run(con, "staging/load_csv", path=str(path), delim=delim, columns=columns)
            db.run(con, "staging/load_csv_malformed")
        elif fmt == "parquet":
            db.run(con, "staging/load_parquet", path=str(path))
        elif fmt == "jsonl":
            db.register(con, manifest_lines=_jsonl_lines(path))
            db.run(con, "staging/load_lines")
        else:  # a subtitle file is the manifest: its cues caption the video next to it
            cues = parse_subtitles(path.read_bytes(), _suffix(uri))
            row = {video_col: sibling_video(uri)}
            lines = _expand(row, cues, caption_col)
            db.register(con, subtitle_rows=_subtitle_table([(1, line, None, None) for line in lines]))
            db.run(con, "staging/replace_subtitle_rows")
    except (duckdb.Error, SubtitleError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot parse {fmt} manifest {safe_uri(uri)}: {exc}") from exc

    _expand_subtitle_column(con, base, allowed_roots, caption_col, workdir, limits)
    readable, with_video, with_caption, columns = db.run(
        con, "staging/manifest_columns", video_key=json_key(video_col), caption_key=json_key(caption_col)
    ).fetchall()[0]
    for col, count, option in ((video_col, with_video, "--video-col"), (caption_col, with_caption, "--caption-col")):
        if readable and not count:
            raise ManifestError(f"no row of {safe_uri(uri)} has a {col!r} column (columns: {columns}); map it with {option}")

    values = [v for (v,) in db.run(con, "staging/distinct_videos", video_key=json_key(video_col)).fetchall()]
    resolved = [resolve_source(v, base, allowed_roots) for v in values]
    db.register(
        con,
        resolved=pa.table(
            {
                "video_value": pa.array(values, pa.string()),
                "source_uri": pa.array([r.source_uri for r in resolved], pa.string()),
                "fetch_uri": pa.array([r.fetch_uri for r in resolved], pa.string()),
                "resolve_reason": pa.array([r.reason for r in resolved], pa.string()),
                "resolve_detail": pa.array([r.detail for r in resolved], pa.string()),
            }
        ),
    )


def csv_header(path: Path) -> tuple[str, dict[str, str]]:
    """The delimiter (the most frequent of , TAB ; | in the header line) and the columns, all as text.

    Blank and repeated names get DuckDB's own style (column3, caption_1), so every column is kept.
    """
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        first = f.readline()
        if not first.strip():
            return ",", {}
        delim = max([",", "\t", ";", "|"], key=first.count)
        f.seek(0)
        names = next(csv.reader(f, delimiter=delim))
    columns: dict[str, str] = {}
    for i, name in enumerate(names):
        name = name.strip() or f"column{i}"
        unique, n = name, 0
        while unique in columns:
            n += 1
            unique = f"{name}_{n}"
        columns[unique] = "VARCHAR"
    return delim, columns


def _jsonl_lines(path: Path) -> pa.Table:
    numbers, lines = [], []
    with open(path, encoding="utf-8-sig", errors="replace") as f:  # a bad byte spoils one row, not the file
        for number, line in enumerate(f, start=1):
            if line.strip():
                numbers.append(number)
                lines.append(line.rstrip("\n"))
    return pa.table({"row_number": pa.array(numbers, pa.int64()), "line": pa.array(lines, pa.string())})
