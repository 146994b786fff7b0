"""WebDataset tars as a manifest: a user's video2dataset download (or a `cogflow export`) ingested in place.

`cogflow ingest DIR` (a local folder of `.tar` files), `cogflow ingest s3://bucket/prefix/` or one `.tar` file:
each tar is read once, as a stream, for its member headers and its small members. A sample is the members sharing
a key (`KEY.mp4` + `KEY.txt` and/or `KEY.json`, as video2dataset and webdataset write them); each sample with a
video member becomes one manifest row:
- `video`: the member's address, `<tar URI>#member=<name>&offset=<data offset>&size=<bytes>`; the video stays in
  its tar and is read from there (a seek in a local file, one ranged GET on S3), never unpacked into a copy;
- `caption`: `KEY.txt`, else the `caption` field of `KEY.json` (video2dataset's);
- `wds_key`, `wds_shard` and `wds_json` (the object in `KEY.json`: video2dataset's `url`, `key`, `status`,
  `clips`, ... or an export's scores) as the row's metadata. The JSON's fields stay inside `wds_json`, so that its
  `start_s` or `video_id` (an export's: the span and video the clip came from) are not read as this row's span
  or video: the member is the whole video.
A sample without a caption is an ordinary row reject (`empty_caption`), a broken video member an ordinary
probe reject. Tars over http(s) are not listed (no folder listing): give a local folder or an S3 prefix.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import urllib.parse
from pathlib import Path
from typing import IO

from cogflow.pipeline.fetch import fetch
from cogflow.pipeline.settings import Limits
from cogflow.pipeline.sources import FetchError, safe_uri
from cogflow.pipeline.storage import Storage, is_remote, s3_client, split_s3

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi", "m4v")
CAPTION_EXTENSION, META_EXTENSION = "txt", "json"
SMALL_MEMBER = 1 << 20  # captions and JSON are read from the stream; a larger one is not a caption
_MEMBER = re.compile(r"#member=(?P<name>[^&]+)&offset=(?P<offset>\d+)&size=(?P<size>\d+)$")


def is_shards(uri: str) -> bool:
    """Whether `uri` names WebDataset tars: a `.tar` file, a local folder, or an S3 prefix ending in '/'."""
    if uri.lower().endswith(".tar"):
        return True
    if uri.startswith("s3://"):
        return uri.endswith("/")
    return not is_remote(uri) and Path(uri).is_dir()


def tar_uris(uri: str) -> list[str]:
    """The tars `uri` names, sorted: itself, or the `.tar` files in the folder or under the S3 prefix."""
    if is_remote(uri) and not uri.startswith("s3://"):
        raise ValueError(f"WebDataset tars are read from a local folder or S3, not {safe_uri(uri)}")
    if uri.lower().endswith(".tar"):
        return [uri if is_remote(uri) else os.path.realpath(uri)]
    if uri.startswith("s3://"):
        store = Storage.at(uri.rstrip("/"))
        return [store.uri(rel) for rel in store.list_files("", ".tar")]
    return sorted(str(p) for p in Path(os.path.realpath(uri)).glob("*.tar") if p.is_file())


def member_uri(tar_uri: str, name: str, offset: int, size: int) -> str:
    return f"{tar_uri}#member={urllib.parse.quote(name, safe='')}&offset={offset}&size={size}"


def split_member(uri: str) -> tuple[str, str, int, int] | None:
    """(tar URI, member name, data offset, size) of a member address, or None for any other URI."""
    found = _MEMBER.search(uri)
    if found is None:
        return None
    name = urllib.parse.unquote(found["name"])
    return uri[: found.start()], name, int(found["offset"]), int(found["size"])


def _open_tar(tar_uri: str) -> IO[bytes]:
    if tar_uri.startswith("s3://"):
        bucket, key = split_s3(tar_uri)
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    return open(tar_uri, "rb")  # noqa: SIM115 (closed by the caller)


def samples(tar_uri: str) -> list[dict]:
    """One dict per sample of the tar with a video member: its key, the video member's address, the caption and
    the JSON fields. Reads the tar once, front to back (a stream: S3 tars are not downloaded whole to disk)."""
    found: dict[str, dict] = {}
    with _open_tar(tar_uri) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            key, ext = _key_ext(member.name)
            if not member.isfile() or not ext:
                continue
            sample = found.setdefault(key, {"key": key})
            if ext in VIDEO_EXTENSIONS and "video" not in sample:
                sample["video"] = member_uri(tar_uri, member.name, member.offset_data, member.size)
            elif ext in (CAPTION_EXTENSION, META_EXTENSION) and member.size <= SMALL_MEMBER:
                data = tar.extractfile(member)
                sample[ext] = data.read() if data is not None else b""
    rows = []
    for key, sample in found.items():
        if "video" not in sample:
            continue
        meta = _json_object(sample.get(META_EXTENSION, b""))
        caption = sample[CAPTION_EXTENSION].decode("utf-8", "replace") if CAPTION_EXTENSION in sample else None
        if caption is None and isinstance(meta.get("caption"), str):
            caption = meta["caption"]
        rows.append({"key": key, "video": sample["video"], "caption": caption, "meta": meta})
    return rows


def _key_ext(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name, the extension the rest."""
    folder, _, file = name.rpartition("/")
    stem, _, ext = file.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _json_object(data: bytes) -> dict:
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def manifest_rows(uri: str, video_col: str, caption_col: str) -> list[dict]:
    """The manifest rows of every sample of every tar `uri` names (see the module's docstring)."""
    tars = tar_uris(uri)
    rows = []
    for tar_uri in tars:
        try:
            found = samples(tar_uri)
        except (tarfile.TarError, OSError) as exc:
            raise ValueError(f"cannot read WebDataset tar {safe_uri(tar_uri)}: {exc}") from exc
        for sample in found:
            rows.append(
                {
                    video_col: sample["video"],
                    caption_col: sample["caption"],
                    "wds_key": sample["key"],
                    "wds_shard": safe_uri(tar_uri),
                    "wds_json": sample["meta"],
                }
            )
    return rows


def read_member(uri: str, dest: Path, limits: Limits) -> Path:
    """The video member at `uri` as the file `dest`: a ranged read of its tar (local or S3)."""
    member = split_member(uri)
    assert member is not None, uri
    tar_uri, _, offset, size = member
    if size > limits.max_bytes:
        raise FetchError("bytes_over_limit", f"{size} bytes > limit {limits.max_bytes}")
    if tar_uri.startswith("s3://"):
        return fetch(
            tar_uri,
            dest,
            max_bytes=limits.max_bytes,
            timeout_s=limits.download_timeout_s,
            retries=limits.download_retries,
            byte_range=(offset, size),
        )
    if is_remote(tar_uri):
        raise FetchError("unsupported_uri", f"tar members are read from local or S3 tars, not {safe_uri(tar_uri)}")
    try:
        with open(tar_uri, "rb") as tar, open(dest, "wb") as out:
            tar.seek(offset)
            data = tar.read(size)
            out.write(data)
    except FileNotFoundError:
        raise FetchError("missing_file", f"{tar_uri} does not exist") from None
    if len(data) != size:
        dest.unlink(missing_ok=True)
        raise FetchError("missing_file", f"{tar_uri} ends before its member's {size} bytes at {offset}")
    return dest
