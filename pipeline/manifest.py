"""Reading manifests into DuckDB and resolving the videos they point at (README: Ingest).

A manifest is CSV, JSONL or Parquet (one row per video and caption), or an SRT / WebVTT subtitle file next
to its video, local or at an s3:// or http(s):// address. Every row lands in the temp table `raw_rows` as
raw JSON; `resolved` maps each distinct video value to a source URI, or to the reason it cannot be used.

Local paths must stay inside the manifest's folder or a configured root, so a manifest cannot make cogflow
read `../../etc/passwd`; a remote manifest may only point at remote videos or paths below its own prefix.
"""

from __future__ import annotations

import codecs
import contextlib
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

import botocore.exceptions
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cogflow.pipeline import db, webdataset
from cogflow.pipeline.fetch import fetch, http_exists
from cogflow.pipeline.settings import Limits
from cogflow.pipeline.sources import FetchError, s3_uri_problem, safe_uri, source_key
from cogflow.pipeline.storage import Storage, is_remote, split_s3
from cogflow.pipeline.subtitles import (
    SUBTITLE_SUFFIXES,
    Cue,
    SubtitleError,
    parse_subtitles,
)

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
        raise ManifestError(
            f"unknown manifest format {suffix!r} for {safe_uri(uri)}; expected one of {sorted(FORMATS)}"
        )
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
    try:
        parsed = urllib.parse.urlparse(value)
    except ValueError as exc:  # 'http://[::1/v.mp4': the message does not repeat the URL (it may hold a password)
        return Resolved(None, None, "malformed_uri", f"not a valid URL: {exc}")
    scheme = parsed.scheme.lower()
    if scheme == "s3":
        uri = "s3://" + value[len("s3://") :]
        problem = s3_uri_problem(uri) if value[3:5] == "//" else "s3 URIs are written s3://bucket/key"
        return Resolved(None, None, "malformed_uri", problem) if problem else Resolved(uri, uri)
    if scheme in ("http", "https"):
        problem = _http_uri_problem(value)
        if problem:
            return Resolved(None, None, "malformed_uri", problem)
        uri = scheme + value[len(scheme) :]
        return Resolved(source_key(uri), uri)
    if scheme == "file":
        value = urllib.request.url2pathname(parsed.path)
    elif len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        return Resolved(
            None, None, "unsupported_uri", f"{scheme}:// is not supported (local path, file://, s3://, http(s)://)"
        )

    if is_remote(base):
        if os.path.isabs(value) or scheme == "file":
            return Resolved(
                None, None, "path_outside_roots", f"{value!r}: a remote manifest cannot point at local files"
            )
        prefix = urllib.parse.urlparse(base)
        path = posixpath.normpath(posixpath.join(prefix.path, parsed.path))
        # the server decodes %2e%2e into '..': the decoded path must stay below the prefix too
        if not (
            path.startswith(prefix.path)
            and urllib.parse.unquote(path) == posixpath.normpath(urllib.parse.unquote(path))
        ):
            return Resolved(
                None, None, "path_outside_roots", f"{parsed.path!r} leaves the manifest's prefix {safe_uri(base)}"
            )
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


def _http_uri_problem(uri: str) -> str | None:
    """Why an http(s) URL cannot be fetched as written (no host, a port that is not one), or None."""
    parts = urllib.parse.urlsplit(uri)
    try:
        parts.port  # noqa: B018  (parsing the port is the check)
    except ValueError:
        return f"{safe_uri(uri)!r} has a port that is not a number from 0 to 65535"
    if not parts.hostname:
        return f"{safe_uri(uri)!r} names no host"
    return None


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
    return fetch(
        uri, dest, max_bytes=limits.max_bytes, timeout_s=limits.download_timeout_s, retries=limits.download_retries
    )


def _source_exists(uri: str) -> bool:
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        return Storage.at(f"s3://{bucket}").exists(key)
    if is_remote(uri):
        return http_exists(uri, timeout_s=30)
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
    read: dict[str, list[Cue] | Exception] = {}  # each file once, however many rows name it (a slow server once)
    for row_number, raw, subtitles in db.run(con, "staging/rows_with_subtitles").fetchall():
        resolved = resolve_source(subtitles, base, roots)
        if resolved.reason:
            replaced.append((row_number, raw, resolved.reason, f"subtitles: {resolved.detail}"))
            continue
        assert resolved.fetch_uri is not None  # resolve_source gives a fetch URI whenever it gives no reason
        if resolved.fetch_uri not in read:
            try:
                read[resolved.fetch_uri] = _read_subtitles(resolved.fetch_uri, workdir, limits)
            except (SubtitleError, FetchError, OSError) as exc:
                read[resolved.fetch_uri] = exc
        cues = read[resolved.fetch_uri]
        if isinstance(cues, Exception):
            replaced.append((row_number, raw, "bad_subtitles", f"{resolved.source_uri}: {cues}"))
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
    limits: Limits = Limits(),  # noqa: B008 (a frozen dataclass)
    workdir: Path,
    encoding: str | None = None,
) -> None:
    """Fill `raw_rows` and `resolved` for the manifest at `uri`. Raises ManifestError for unusable manifests.

    A text manifest is decoded strictly with `encoding`, or the one its byte order mark names, else UTF-8.
    """
    if webdataset.is_shards(uri):  # tars: their samples are the rows, their members the videos
        fmt, base, path = "jsonl", _shards_base(uri), _shards_manifest(uri, workdir, video_col, caption_col)
    else:
        fmt, base = manifest_format(uri), manifest_base(uri)
        try:
            path = local_copy(uri, workdir, limits)
        except (FetchError, OSError) as exc:
            raise ManifestError(f"cannot read manifest {safe_uri(uri)}: {exc}") from exc
    # Subtitle files guess their own encoding (pipeline/subtitles.py) unless told; Parquet strings are UTF-8.
    if fmt in ("csv", "jsonl") or (fmt == "subtitles" and encoding):
        path = decode_manifest(path, encoding, safe_uri(uri), workdir)

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
    for col, count in ((video_col, with_video), (caption_col, with_caption)):
        if readable and not count:
            raise _missing_column(uri, col, columns, video_col)

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


def csv_header(path: Path, encoding: str = "utf-8") -> tuple[str, dict[str, str]]:
    """The delimiter (the most frequent of , TAB ; | in the header line) and the columns, all as text.

    Blank and repeated names get DuckDB's own style (column3, caption_1), so every column is kept.
    """
    with open(path, encoding=encoding, newline="") as f:
        first = f.readline()
        if not first.strip():
            return ",", {}
        delim = max([",", "\t", ";", "|"], key=first.count)
        f.seek(0)
        names = next(csv.reader(f, delimiter=delim))
    names[0] = names[0].removeprefix("\ufeff")  # a byte order mark the codec named by --encoding kept
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
    """The non-blank lines of a UTF-8 JSONL file (decode_manifest made it so) with their line numbers."""
    numbers, lines = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                numbers.append(number)
                lines.append(line.rstrip("\n"))
    return pa.table({"row_number": pa.array(numbers, pa.int64()), "line": pa.array(lines, pa.string())})


# --- decoding text manifests ---------------------------------------------------------------------------------------
# Strictly: a byte that is not text in the manifest's encoding refuses the file with the line it is on. Replacing it
# would store mojibake captions (a GB18030 file read as UTF-8) or reject half the rows as malformed.

_CHUNK = 1 << 20


def text_codec(encoding: str) -> str:
    """The canonical name of a text codec ('UTF8' -> 'utf-8'); ManifestError for unknown names and non-text codecs."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise ManifestError(
            f"unknown encoding {encoding!r}: give a Python codec name such as utf-8, gb18030, big5, shift_jis or utf-16"
        ) from None
    if not getattr(info, "_is_text_encoding", True):  # base64, zlib, rot13: codecs, but not for text files
        raise ManifestError(f"{encoding!r} is not a text encoding: give one such as utf-8, gb18030 or utf-16")
    return info.name


def manifest_codec(path: Path, encoding: str | None, name: str) -> str:
    """The codec to decode a text manifest with: `encoding` if given, else its byte order mark's, else UTF-8."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if encoding:
        codec = text_codec(encoding)
        return "utf-8-sig" if codec == "utf-8" and head.startswith(codecs.BOM_UTF8) else codec
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # reads the byte order from the mark
    # UTF-16 without a mark: plain ASCII in it is every other byte NUL, which UTF-8 would accept as text.
    if head.count(0) * 4 >= len(head) > 0:
        raise ManifestError(
            f"{name}: line 1 is not utf-8 text ({head.count(0)} of its first {len(head)} bytes are NUL): UTF-16 without "
            "a byte order mark? give its encoding with --encoding utf-16-le or --encoding utf-16-be"
        )
    return "utf-8"


def decode_manifest(path: Path, encoding: str | None, name: str, workdir: Path | None) -> Path:
    """Check that the text manifest at `path` decodes, and return a UTF-8 file with its text (without a byte order
    mark): `path` itself when it is UTF-8 already, else a copy in `workdir` (with no workdir: check only).

    Raises ManifestError naming the file (`name`), the first line that does not decode and the encoding tried.
    """
    codec = manifest_codec(path, encoding, name)
    out_path = Path(tempfile.mkdtemp(dir=workdir)) / path.name if workdir is not None and codec != "utf-8" else None
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    line, first = 1, True
    writer = open(out_path, "w", encoding="utf-8", newline="") if out_path else contextlib.nullcontext()
    with open(path, "rb") as src, writer as out:
        while True:
            chunk = src.read(_CHUNK)
            state = decoder.getstate()
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                decoder.setstate(state)
                line += _lines_before_error(decoder, chunk)
                shown = codec.removesuffix("-sig")  # 'utf-8-sig' is UTF-8 that began with a byte order mark
                hint = (
                    f"is {encoding!r} the file's encoding?"
                    if encoding
                    else "give its encoding with --encoding, e.g. --encoding gb18030"
                )
                bad = exc.object[exc.start : exc.end].hex(" ")
                raise ManifestError(
                    f"{name}: line {line} is not {shown} text ({exc.reason}: bytes {bad}); {hint}"
                ) from None
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            line += text.count("\n")
            if out is not None:
                out.write(text)
            if not chunk:
                return out_path or path


def _lines_before_error(decoder: codecs.IncrementalDecoder, chunk: bytes) -> int:
    """The line breaks `chunk` holds before the byte `decoder` fails on: fed a byte at a time to find it."""
    lines = 0
    for i in range(len(chunk)):
        try:
            lines += decoder.decode(chunk[i : i + 1]).count("\n")
        except UnicodeDecodeError:
            break
    return lines


def _missing_column(uri: str, col: str, columns: object, video_col: str) -> ManifestError:
    option = "--video-col" if col == video_col else "--caption-col"
    return ManifestError(f"no row of {safe_uri(uri)} has a {col!r} column (columns: {columns}); map it with {option}")


def _shards_base(uri: str) -> str:
    """What member addresses must stay inside: the folder or prefix of the tars."""
    if uri.lower().endswith(".tar"):
        return manifest_base(uri)
    return uri if uri.startswith("s3://") else os.path.realpath(local_path(uri))


def _shards_manifest(uri: str, workdir: Path, video_col: str, caption_col: str) -> Path:
    """The samples of WebDataset tars as a JSONL manifest in `workdir` (pipeline/webdataset.py)."""
    try:
        rows = webdataset.manifest_rows(uri, video_col, caption_col)
    except (ValueError, FetchError) as exc:
        raise ManifestError(str(exc)) from exc
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:  # listing or opening on S3
        raise ManifestError(f"cannot read WebDataset tars at {safe_uri(uri)}: {exc}") from exc
    path = workdir / "webdataset.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def check_manifest(
    uri: str, *, encoding: str | None = None, video_col: str = "video", caption_col: str = "caption"
) -> None:
    """Refuse, before any flow starts, what load_manifest would refuse of a local manifest: its format, its encoding,
    a line that does not decode, a header without the video or caption column. One ManifestError line each.

    A remote manifest is only checked for its format and encoding name here; the rest when the flow reads it.
    """
    if webdataset.is_shards(uri):
        if not is_remote(uri) and not webdataset.tar_uris(uri):
            raise ManifestError(f"no WebDataset tars (*.tar) in {safe_uri(uri)}")
        return
    fmt = manifest_format(uri)
    if encoding:
        text_codec(encoding)
    path = Path(local_path(uri))
    if is_remote(uri):
        return
    if not path.is_file():
        raise ManifestError(f"cannot read manifest {safe_uri(uri)}: no such file")
    name = safe_uri(uri)
    columns: list[str] = []
    if fmt in ("csv", "jsonl"):
        decode_manifest(path, encoding, name, None)
        codec = manifest_codec(path, encoding, name)
        columns = list(csv_header(path, codec)[1]) if fmt == "csv" else _jsonl_keys(path, codec, video_col, caption_col)
    elif fmt == "parquet":
        try:
            columns = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"cannot parse parquet manifest {name}: {exc}") from exc
    else:  # subtitles: they decode themselves (or with --encoding), and caption the video next to them
        if encoding:
            decode_manifest(path, encoding, name, None)
        sibling_video(uri)
        return
    if not columns:  # an empty manifest: nothing to ingest, nothing wrong
        return
    if video_col not in columns:
        raise _missing_column(uri, video_col, sorted(columns)[:30], video_col)
    if caption_col not in columns and SUBTITLES_COL not in columns:  # a subtitles file gives each row its captions
        raise _missing_column(uri, caption_col, sorted(columns)[:30], video_col)


def _jsonl_keys(path: Path, codec: str, video_col: str, caption_col: str) -> list[str]:
    """Keys of the JSON objects in a JSONL file, read until the video and caption (or subtitles) keys are seen:
    usually one line."""
    keys: set[str] = set()
    with open(path, encoding=codec) as f:
        for line in f:
            try:
                row = json.loads(line.removeprefix("\ufeff"))
            except ValueError:
                continue  # a malformed line is a row reject, not a reason to refuse the file
            if isinstance(row, dict):
                keys.update(row)
                if video_col in keys and (caption_col in keys or SUBTITLES_COL in keys):
                    break
    return sorted(keys)
