"""One storage interface over a local folder or an `s3://bucket/prefix`, written atomically
(fetching sources from s3:// and http(s):// is pipeline/fetch.py's).

- Parquet goes through pyarrow file systems (`Storage.arrow`), objects through boto3.
- Every write is atomic: locally a temporary name in the same folder then `os.replace`; on S3 one upload
  that only becomes visible when it completes (boto3 aborts a failed multipart upload), so a crash never
  leaves a partial file that a reader would trust.
- pyarrow ignores AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, so the endpoint is passed to it explicitly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
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
    """'s3://bucket/a/b' -> ('bucket', 'a/b'). The key is taken literally, as the AWS CLI does: '?' and '#' are part
    of it, not a query or a fragment."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


# What an S3 call can raise that is not a bug of ours: the SDK's own errors and the service's answers (fetch.py's
# failures; the one place that names botocore's exceptions).
S3_TIMEOUTS = (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)
S3_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
S3ClientError = botocore.exceptions.ClientError


def s3_client(timeout_s: float = 60.0, connect_timeout_s: float | None = None, attempts: int = 6):
    """A boto3 S3 client (boto3 itself honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL); `attempts` in the SDK's
    standard retry mode, the first try included (6: five retries)."""
    config = botocore.config.Config(
        connect_timeout=timeout_s if connect_timeout_s is None else connect_timeout_s,
        read_timeout=timeout_s,
        retries={"total_max_attempts": attempts, "mode": "standard"},
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
    def at(root: str | Path) -> Storage:
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

    def _list(self, prefix: str) -> Iterator[str]:
        """Relative paths of every object under `prefix`, a page (up to 1000) at a time."""
        bucket, _ = self._bucket_prefix
        base = self.key(prefix).rstrip("/")
        base = f"{base}/" if base else ""
        root_key = self.key("")
        strip = len(root_key) + 1 if root_key else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def list_files(self, prefix: str, suffix: str = "") -> list[str]:
        return sorted(
            rel
            for rel in self._list(prefix)
            if rel.endswith(suffix) and not rel.rsplit("/", 1)[-1].startswith(TMP_MARK)
        )

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
        from cogflow.pipeline.lease import check_held  # lease.py builds on this module

        check_held(self.root)

    def delete(self, rel: str) -> None:
        bucket, _ = self._bucket_prefix
        self._check_lease()
        self.client.delete_object(Bucket=bucket, Key=self.key(rel))

    def list_temporary(self, prefix: str = "") -> list[str]:
        return sorted(rel for rel in self._list(prefix) if rel.rsplit("/", 1)[-1].startswith(TMP_MARK))

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
            if self._code(exc) in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
                "409",
                "NoSuchKey",
                "404",
            ):
                return None
            raise

    def delete_if(self, rel: str, etag: str) -> bool:
        """Remove the object at `rel` only if it still has `etag`; False when it has changed or is gone."""
        bucket, _ = self._bucket_prefix
        try:
            self.client.delete_object(Bucket=bucket, Key=self.key(rel), IfMatch=etag)
            return True
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
                "409",
                "NoSuchKey",
                "404",
            ):
                return False
            raise

    @staticmethod
    def _code(exc: botocore.exceptions.ClientError) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))
