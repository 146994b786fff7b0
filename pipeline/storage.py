"""One storage interface over a local folder or an `s3://bucket/prefix`, plus fetching of source files.

- Parquet goes through pyarrow file systems (`Storage.arrow`), objects through boto3.
- Every write is atomic: locally a temporary name in the same folder then `os.replace`; on S3 one upload
  that only becomes visible when it completes (boto3 aborts a failed multipart upload), so a crash never
  leaves a partial file that a reader would trust.
- pyarrow ignores AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, so the endpoint is passed to it explicitly.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import pyarrow.fs as pafs


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    parsed = urllib.parse.urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client(timeout_s: float = 60.0):
    # boto3 itself honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; retries are the SDK's standard mode.
    config = botocore.config.Config(
        connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 5, "mode": "standard"}
    )
    return boto3.client("s3", endpoint_url=s3_endpoint(), config=config)


def arrow_s3_filesystem() -> pafs.S3FileSystem:
    endpoint = s3_endpoint()
    kwargs: dict = {}
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint)
        kwargs = {"endpoint_override": parsed.netloc or parsed.path, "scheme": parsed.scheme or "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def is_remote(uri: str) -> bool:
    return uri[:8].lower().startswith(("s3://", "http://", "https://"))


class Storage:
    """A root (local folder or s3://bucket/prefix) and relative paths below it, always with '/'."""

    root: str

    @staticmethod
    def at(root: str | Path) -> "Storage":
        root = str(root)
        if root.startswith("s3://"):
            return S3Storage(root.rstrip("/"))
        if root.startswith("file://"):
            root = urllib.parse.urlparse(root).path
        return LocalStorage(str(Path(root).absolute()))

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    # The arrow file system and the path of `rel` inside it, for pyarrow.parquet / pyarrow.dataset.
    def arrow(self, rel: str) -> tuple[pafs.FileSystem, str]:
        raise NotImplementedError

    def list_files(self, prefix: str, suffix: str = "") -> list[str]:
        """Relative paths of the files under `prefix` ending in `suffix`, sorted; temporary files excluded."""
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def put_file(self, rel: str, local_path: str | Path) -> None:
        """Publish a finished local file at `rel`, atomically."""
        raise NotImplementedError

    def put_bytes(self, rel: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            tmp.write(data)
        try:
            self.put_file(rel, tmp.name)
        finally:
            Path(tmp.name).unlink(missing_ok=True)

    def delete(self, rel: str) -> None:
        """Remove the file at `rel` (nothing when it is already gone)."""
        raise NotImplementedError

    def list_temporary(self, prefix: str = "") -> list[str]:
        """Relative paths of the temporary files under `prefix` (`.tmp-*`: what an unfinished write leaves), sorted."""
        raise NotImplementedError


TMP_MARK = ".tmp-"


@dataclass
class LocalStorage(Storage):
    root: str

    def arrow(self, rel: str) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), self.uri(rel)

    def list_files(self, prefix: str, suffix: str = "") -> list[str]:
        base = Path(self.root) / prefix
        if not base.exists():
            return []
        found = [
            p.relative_to(self.root).as_posix()
            for p in base.rglob(f"*{suffix}")
            if p.is_file() and not p.name.startswith(TMP_MARK)
        ]
        return sorted(found)

    def exists(self, rel: str) -> bool:
        return (Path(self.root) / rel).exists()

    def read_bytes(self, rel: str) -> bytes:
        return (Path(self.root) / rel).read_bytes()

    def put_file(self, rel: str, local_path: str | Path) -> None:
        target = Path(self.root) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copy to a hidden temporary name in the target folder (same file system), then rename: readers see
        # either nothing or the whole file. Listing skips the temporary names.
        tmp = target.parent / f"{TMP_MARK}{uuid.uuid4().hex}-{target.name}"
        try:
            shutil.copyfile(local_path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, rel: str) -> None:
        (Path(self.root) / rel).unlink(missing_ok=True)

    def list_temporary(self, prefix: str = "") -> list[str]:
        base = Path(self.root) / prefix
        if not base.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob(f"{TMP_MARK}*") if p.is_file())


@dataclass
class S3Storage(Storage):
    root: str  # s3://bucket/prefix

    @cached_property
    def _bucket_prefix(self) -> tuple[str, str]:
        return split_s3(self.root)

    @cached_property
    def client(self):
        return s3_client()

    def key(self, rel: str) -> str:
        _bucket, prefix = self._bucket_prefix
        return f"{prefix}/{rel}".strip("/") if prefix else rel

    @cached_property
    def _arrow_fs(self) -> pafs.S3FileSystem:
        # one per store: making one costs tens of milliseconds, and readers ask for it once per part
        return arrow_s3_filesystem()

    def arrow(self, rel: str) -> tuple[pafs.FileSystem, str]:
        bucket, _ = self._bucket_prefix
        return self._arrow_fs, f"{bucket}/{self.key(rel)}"

    def list_files(self, prefix: str, suffix: str = "") -> list[str]:
        bucket, _ = self._bucket_prefix
        base = self.key(prefix).rstrip("/")
        base = f"{base}/" if base else ""
        root_key = self.key("")
        strip = len(root_key) + 1 if root_key else 0
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                rel = obj["Key"][strip:]
                if rel.endswith(suffix) and not rel.rsplit("/", 1)[-1].startswith(TMP_MARK):
                    found.append(rel)
        return sorted(found)

    def exists(self, rel: str) -> bool:
        bucket, _ = self._bucket_prefix
        try:
            self.client.head_object(Bucket=bucket, Key=self.key(rel))
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def read_bytes(self, rel: str) -> bytes:
        bucket, _ = self._bucket_prefix
        return self.client.get_object(Bucket=bucket, Key=self.key(rel))["Body"].read()

    def put_file(self, rel: str, local_path: str | Path) -> None:
        bucket, _ = self._bucket_prefix
        # upload_file completes a multipart upload only after every part arrived and aborts it on error:
        # the key never holds a partial object.
        self._check_lease()
        self.client.upload_file(str(local_path), bucket, self.key(rel))

    def _check_lease(self) -> None:
        """Refuse to write when a lease this thread holds on the lake was lost (pipeline/lease.py)."""
        from pipeline.lease import check_held  # lease.py builds on this module

        check_held(self.root)

    def delete(self, rel: str) -> None:
        bucket, _ = self._bucket_prefix
        self._check_lease()
        self.client.delete_object(Bucket=bucket, Key=self.key(rel))

    def list_temporary(self, prefix: str = "") -> list[str]:
        bucket, _ = self._bucket_prefix
        base = self.key(prefix).rstrip("/")
        base = f"{base}/" if base else ""
        strip = len(self.key("")) + 1 if self.key("") else 0
        found = [
            obj["Key"][strip:]
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
            for obj in page.get("Contents", [])
            if obj["Key"].rsplit("/", 1)[-1].startswith(TMP_MARK)
        ]
        return sorted(found)

    # Conditional requests: S3 has no locks, but If-None-Match / If-Match make one write win a race. The lake's
    # lease (pipeline/lease.py) is built on these three.

    def read_with_etag(self, rel: str) -> tuple[bytes, str] | None:
        """The object's bytes and its ETag, or None when there is no object."""
        bucket, _ = self._bucket_prefix
        try:
            response = self.client.get_object(Bucket=bucket, Key=self.key(rel))
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def put_bytes_if(self, rel: str, data: bytes, etag: str | None) -> str | None:
        """Write `data` at `rel` only if no object is there (`etag` None) or the object still has `etag`.

        Returns the new ETag, or None when the condition failed: someone else wrote (or removed) it first."""
        bucket, _ = self._bucket_prefix
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            return self.client.put_object(Bucket=bucket, Key=self.key(rel), Body=data, **condition)["ETag"]
        except botocore.exceptions.ClientError as exc:
            # 412: the condition failed; 409: a racing conditional write was in flight (S3 says: retry);
            # 404: an If-Match on an object that is gone
            if self._code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                return None
            raise

    def delete_if(self, rel: str, etag: str) -> bool:
        """Remove the object at `rel` only if it still has `etag`; False when it has changed or is gone."""
        bucket, _ = self._bucket_prefix
        try:
            self.client.delete_object(Bucket=bucket, Key=self.key(rel), IfMatch=etag)
            return True
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                return False
            raise

    @staticmethod
    def _code(exc: botocore.exceptions.ClientError) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))


# ---------------------------------------------------------------------------------------------------------------
# Fetching source files (manifests, videos, subtitles)


class FetchError(Exception):
    """A source that could not be fetched; `reason` is the reject code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _redact(uri: str) -> str:
    """Drop user:password@ and query strings (presigned URLs carry credentials there) before logging."""
    parsed = urllib.parse.urlparse(uri)
    return urllib.parse.urlunparse((parsed.scheme, _host_port(parsed), parsed.path, "", "", ""))


def _host_port(parsed: urllib.parse.ParseResult) -> str:
    """The netloc without user:password@ (IPv6 brackets kept)."""
    return parsed.netloc.rpartition("@")[2]


def safe_uri(uri: str) -> str:
    return _redact(uri) if is_remote(uri) else uri


def fetch(uri: str, dest: str | Path, *, max_bytes: int, timeout_s: float, retries: int) -> Path:
    """Download an s3:// or http(s):// object to `dest`, with retries, a timeout and a size cap.

    Raises FetchError("bytes_over_limit" | "download_failed" | "missing_file", ...). A partial download is
    deleted, never left behind.
    """
    dest = Path(dest)
    last_error = "unknown error"
    for attempt in range(retries + 1):
        try:
            if uri.startswith("s3://"):
                _fetch_s3(uri, dest, max_bytes, timeout_s)
            else:
                _fetch_http(uri, dest, max_bytes, timeout_s)
            return dest
        except FetchError:
            dest.unlink(missing_ok=True)
            raise
        except (
            OSError,
            http.client.HTTPException,  # e.g. IncompleteRead: a chunked body that stopped early
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        ) as exc:
            dest.unlink(missing_ok=True)
            last_error = f"{type(exc).__name__}: {exc}"
            if _is_not_found(exc):
                raise FetchError("missing_file", f"{safe_uri(uri)} does not exist") from exc
            if attempt < retries:
                time.sleep(min(0.2 * 2**attempt, 5.0))
    raise FetchError("download_failed", f"{safe_uri(uri)} after {retries + 1} attempts: {_redact_text(last_error)}")


def _redact_text(text: str) -> str:
    # botocore/urllib messages can echo the URL with its query (a presigned signature): cut at '?'.
    return text.split("?", 1)[0] if "?" in text else text


def _is_not_found(exc: Exception) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 404
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")
    return False


def _fetch_s3(uri: str, dest: Path, max_bytes: int, timeout_s: float) -> None:
    bucket, key = split_s3(uri)
    client = s3_client(timeout_s)
    size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    if size > max_bytes:
        raise FetchError("bytes_over_limit", f"{size} bytes > limit {max_bytes}")
    client.download_file(bucket, key, str(dest))


def _fetch_http(uri: str, dest: Path, max_bytes: int, timeout_s: float) -> None:
    parsed = urllib.parse.urlparse(uri)
    headers = {"User-Agent": "cogflow"}
    if parsed.username is not None:  # urllib does not read user:password@ itself: send it as basic auth
        token = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        uri = urllib.parse.urlunparse(parsed._replace(netloc=_host_port(parsed)))
    request = urllib.request.Request(uri, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        declared = response.headers.get("Content-Length")
        if declared is not None and int(declared) > max_bytes:
            raise FetchError("bytes_over_limit", f"{declared} bytes > limit {max_bytes}")
        received = 0
        with open(dest, "wb") as out:
            while chunk := response.read(1 << 20):
                received += len(chunk)
                if received > max_bytes:  # the header can lie or be absent: count what arrives
                    raise FetchError("bytes_over_limit", f"more than {max_bytes} bytes received")
                out.write(chunk)
        if declared is not None and received != int(declared):
            raise OSError(f"connection closed after {received} of {declared} bytes")
