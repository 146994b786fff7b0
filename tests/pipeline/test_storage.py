"""cogflow.pipeline.storage and pipeline.lake over a real folder, a real S3 API (moto's server) and real HTTP servers."""

from __future__ import annotations

import base64
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from cogflow.pipeline import lake
from cogflow.pipeline import storage as storage_module
from cogflow.pipeline.fetch import fetch
from cogflow.pipeline.sources import FetchError, safe_uri
from cogflow.pipeline.storage import TMP_MARK, LocalStorage, S3Storage, Storage

PAYLOAD = bytes(range(256)) * 64  # 16 KiB, every byte value


def video_rows(*ids: str) -> pa.Table:
    at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = [
        {
            "video_id": vid,
            "source_uri": f"s3://src/{vid}.mp4",
            "sha256": vid * 4,
            "bytes": 1000 + i,
            "container": "mov,mp4,m4a,3gp,3g2,mj2",
            "codec": "h264",
            "width": 320,
            "height": 240,
            "fps": 25.0,
            "duration_s": 2.0 + i,
            "frame_count": 50 + 25 * i,
            "rotation": 0,
            "header_duration_s": None,
            "ingested_at": at,
        }
        for i, vid in enumerate(ids)
    ]
    return pa.Table.from_pylist(rows, schema=lake.VIDEOS)


def no_temp_files(folder: Path) -> bool:
    return not any(TMP_MARK in p.name for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------------------------
# LocalStorage


def test_storage_at_picks_the_backend(tmp_path: Path) -> None:
    local = Storage.at(tmp_path / "lake")
    assert isinstance(local, LocalStorage) and local.root == str(tmp_path / "lake")
    assert Storage.at(f"file://{tmp_path}/lake") == local
    assert local.uri("videos/a.parquet") == f"{tmp_path}/lake/videos/a.parquet"
    assert local.uri("") == local.root
    remote = Storage.at("s3://bucket/some/prefix/")
    assert isinstance(remote, S3Storage) and remote.root == "s3://bucket/some/prefix"
    assert remote.key("videos/a.parquet") == "some/prefix/videos/a.parquet"
    assert Storage.at("s3://bucket").key("videos/a.parquet") == "videos/a.parquet"


def test_local_put_read_exists_list(tmp_path: Path) -> None:
    store = Storage.at(tmp_path / "lake")
    source = tmp_path / "part.parquet"
    source.write_bytes(PAYLOAD)
    store.put_file("videos/part-2.parquet", source)
    store.put_bytes("videos/part-1.parquet", b"one")
    store.put_bytes("captions/part-1.parquet", b"caption part")
    store.put_bytes("notes.txt", b"hello")
    store.put_bytes("videos/sub/deep.parquet", b"deep")
    # A writer that crashed between copy and rename would leave this behind: it must never be listed.
    (tmp_path / "lake" / "videos" / f"{TMP_MARK}0123abcd-part-3.parquet").write_bytes(b"half")

    assert store.read_bytes("videos/part-2.parquet") == PAYLOAD
    assert store.read_bytes("notes.txt") == b"hello"
    assert store.exists("videos/part-1.parquet") and not store.exists("videos/part-9.parquet")
    assert store.list_files("") == [
        "captions/part-1.parquet",
        "notes.txt",
        "videos/part-1.parquet",
        "videos/part-2.parquet",
        "videos/sub/deep.parquet",
    ]
    assert store.list_files("", ".parquet") == [
        "captions/part-1.parquet",
        "videos/part-1.parquet",
        "videos/part-2.parquet",
        "videos/sub/deep.parquet",
    ]
    assert store.list_files("videos", ".parquet") == [
        "videos/part-1.parquet",
        "videos/part-2.parquet",
        "videos/sub/deep.parquet",
    ]
    assert store.list_files("", ".txt") == ["notes.txt"]
    assert store.list_files("vid") == []  # a prefix is a folder, not a string prefix
    assert store.list_files("missing") == []
    assert Storage.at(tmp_path / "nowhere").list_files("") == []


def test_local_put_overwrites_whole_file(tmp_path: Path) -> None:
    store = Storage.at(tmp_path / "lake")
    store.put_bytes("a/b.bin", PAYLOAD)
    store.put_bytes("a/b.bin", b"short")
    assert store.read_bytes("a/b.bin") == b"short"
    assert no_temp_files(tmp_path / "lake")


def half_copy_then_crash(src, dst, *args, **kwargs):
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: len(data) // 2])
    raise OSError(28, "No space left on device (simulated)")


def test_local_put_is_atomic_when_copy_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Storage.at(tmp_path / "lake")
    assert storage_module.shutil is shutil
    monkeypatch.setattr(storage_module.shutil, "copyfile", half_copy_then_crash)
    with pytest.raises(OSError, match="simulated"):
        store.put_bytes("videos/part-1.parquet", PAYLOAD)
    assert not store.exists("videos/part-1.parquet")
    assert store.list_files("") == []
    assert list((tmp_path / "lake" / "videos").iterdir()) == []  # not even a temporary file


def test_local_overwrite_that_crashes_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Storage.at(tmp_path / "lake")
    store.put_bytes("videos/part-1.parquet", b"old complete content")
    monkeypatch.setattr(storage_module.shutil, "copyfile", half_copy_then_crash)
    with pytest.raises(OSError):
        store.put_bytes("videos/part-1.parquet", PAYLOAD)
    assert store.read_bytes("videos/part-1.parquet") == b"old complete content"
    assert store.list_files("") == ["videos/part-1.parquet"]
    assert [p.name for p in (tmp_path / "lake" / "videos").iterdir()] == ["part-1.parquet"]


# ---------------------------------------------------------------------------------------------------------------
# S3Storage on moto


def bucket_keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3.bucket).get("Contents", []))


def test_s3_storage_at_bucket_root(s3, tmp_path: Path) -> None:
    store = Storage.at(f"s3://{s3.bucket}")
    assert isinstance(store, S3Storage)
    assert store.list_files("") == []
    source = tmp_path / "part.parquet"
    source.write_bytes(PAYLOAD)
    store.put_file("videos/part-2.parquet", source)
    store.put_bytes("videos/part-1.parquet", b"one")
    store.put_bytes("notes.txt", b"hello")
    store.put_bytes("videos/sub/deep.parquet", b"deep")

    assert bucket_keys(s3) == ["notes.txt", "videos/part-1.parquet", "videos/part-2.parquet", "videos/sub/deep.parquet"]
    assert store.read_bytes("videos/part-2.parquet") == PAYLOAD
    assert store.exists("notes.txt") and not store.exists("videos/part-3.parquet")
    assert store.list_files("") == [
        "notes.txt",
        "videos/part-1.parquet",
        "videos/part-2.parquet",
        "videos/sub/deep.parquet",
    ]
    assert store.list_files("", ".parquet") == [
        "videos/part-1.parquet",
        "videos/part-2.parquet",
        "videos/sub/deep.parquet",
    ]
    assert store.list_files("videos/sub") == ["videos/sub/deep.parquet"]
    assert store.list_files("vid") == []  # folder semantics, as LocalStorage
    assert store.list_files("captions") == []


def test_s3_storage_under_prefix(s3) -> None:
    store = Storage.at(f"s3://{s3.bucket}/some/prefix")
    # Neighbours that share a string prefix, and the bucket's other content, are not part of this root.
    s3.put_object(Bucket=s3.bucket, Key="some/prefixed/videos/x.parquet", Body=b"x")
    s3.put_object(Bucket=s3.bucket, Key="other/videos/y.parquet", Body=b"y")
    s3.put_object(Bucket=s3.bucket, Key=f"some/prefix/videos/{TMP_MARK}abc-z.parquet", Body=b"z")
    assert store.list_files("") == []

    store.put_bytes("videos/part-1.parquet", PAYLOAD)
    store.put_bytes("captions/part-1.parquet", b"c")
    assert "some/prefix/videos/part-1.parquet" in bucket_keys(s3)
    assert "some/prefix/captions/part-1.parquet" in bucket_keys(s3)
    assert store.read_bytes("videos/part-1.parquet") == PAYLOAD
    assert store.exists("videos/part-1.parquet") and not store.exists("videos/x.parquet")
    assert store.list_files("") == ["captions/part-1.parquet", "videos/part-1.parquet"]
    assert store.list_files("videos", ".parquet") == ["videos/part-1.parquet"]
    assert store.list_files("", ".txt") == []
    assert store.uri("videos/part-1.parquet") == f"s3://{s3.bucket}/some/prefix/videos/part-1.parquet"

    empty = Storage.at(f"s3://{s3.bucket}/empty/prefix")
    assert empty.list_files("") == []
    assert empty.list_files("videos", ".parquet") == []


def test_s3_arrow_file_system_honours_endpoint(s3) -> None:
    store = Storage.at(f"s3://{s3.bucket}/lake")
    store.put_bytes("videos/probe.bin", b"through boto3")
    fs, path = store.arrow("videos/probe.bin")
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == f"{s3.bucket}/lake/videos/probe.bin"
    with fs.open_input_file(path) as f:  # would reach real AWS (and fail) without the endpoint override
        assert f.read() == b"through boto3"


def test_lake_on_s3_round_trip(s3) -> None:
    store = Storage.at(f"s3://{s3.bucket}/lake")
    first = lake.append(store, "videos", video_rows("a", "b")).path
    second = lake.append(store, "videos", video_rows("c")).path
    assert first and second and first != second
    assert store.list_files("videos", ".parquet") == sorted([first, second])
    table = lake.read_table(store, "videos")
    assert table.schema == lake.VIDEOS
    assert sorted(table.column("video_id").to_pylist()) == ["a", "b", "c"]
    assert lake.read_table(store, "videos", columns=["video_id"]).column_names == ["video_id"]
    counts = lake.row_counts(store)
    assert counts["videos"] == 3 and counts["captions"] == 0 and counts["rejects"] == 0
    assert lake.read_table(store, "captions").num_rows == 0


# ---------------------------------------------------------------------------------------------------------------
# The lake on a local folder


def test_lake_appends_read_as_one_table(tmp_path: Path) -> None:
    store = Storage.at(tmp_path / "lake")
    shuffled = video_rows("x").select(list(reversed(lake.VIDEOS.names))).append_column("extra", pa.array([1]))
    first = lake.append(store, "videos", video_rows("a", "b")).path
    second = lake.append(store, "videos", shuffled).path  # column order and extra columns do not matter
    assert first.startswith("videos/part-") and first.endswith(".parquet")
    assert store.list_files("videos", ".parquet") == sorted([first, second])
    table = lake.read_table(store, "videos")
    assert table.schema == lake.VIDEOS
    assert table.num_rows == 3
    by_id = {r["video_id"]: r for r in table.to_pylist()}
    assert set(by_id) == {"a", "b", "x"}
    assert by_id["b"]["frame_count"] == 75 and by_id["b"]["header_duration_s"] is None
    assert lake.row_counts(store) == {name: 3 if name == "videos" else 0 for name in lake.SCHEMAS}


def test_lake_empty_append_writes_nothing(tmp_path: Path) -> None:
    store = Storage.at(tmp_path / "lake")
    assert lake.append(store, "videos", lake.VIDEOS.empty_table()) == (None, 0)
    assert store.list_files("") == []
    assert not (tmp_path / "lake").exists()


def test_lake_missing_table_reads_as_empty(tmp_path: Path) -> None:
    store = Storage.at(tmp_path / "lake")
    for name, schema in lake.SCHEMAS.items():
        table = lake.read_table(store, name)
        assert table.num_rows == 0 and table.schema == schema
    picked = lake.read_table(store, "captions", columns=["caption_id", "caption"])
    assert picked.column_names == ["caption_id", "caption"] and picked.num_rows == 0
    with pytest.raises(FileNotFoundError):
        lake.read_table(store, "no_such_table")
    assert lake.row_counts(store) == {name: 0 for name in lake.SCHEMAS}


# ---------------------------------------------------------------------------------------------------------------
# fetch()


def test_fetch_from_s3(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=s3.bucket, Key="src/clip.mp4", Body=PAYLOAD)
    dest = fetch(
        f"s3://{s3.bucket}/src/clip.mp4", tmp_path / "clip.mp4", max_bytes=len(PAYLOAD), timeout_s=10, retries=0
    )
    assert dest == tmp_path / "clip.mp4"
    assert dest.read_bytes() == PAYLOAD


def test_fetch_from_s3_over_size_cap(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=s3.bucket, Key="src/clip.mp4", Body=PAYLOAD)
    dest = tmp_path / "dl" / "clip.mp4"
    dest.parent.mkdir()
    with pytest.raises(FetchError) as info:
        fetch(f"s3://{s3.bucket}/src/clip.mp4", dest, max_bytes=len(PAYLOAD) - 1, timeout_s=10, retries=2)
    assert info.value.reason == "bytes_over_limit"
    assert list(dest.parent.iterdir()) == []


def test_fetch_missing_s3_key(s3, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "nothing.mp4"
    dest.parent.mkdir()
    with pytest.raises(FetchError) as info:
        fetch(f"s3://{s3.bucket}/src/nothing.mp4", dest, max_bytes=10**6, timeout_s=10, retries=2)
    assert info.value.reason == "missing_file"
    assert f"s3://{s3.bucket}/src/nothing.mp4" in info.value.detail
    assert list(dest.parent.iterdir()) == []


def test_fetch_over_http(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, folder = http_root
    (folder / "videos").mkdir()
    (folder / "videos" / "clip.mp4").write_bytes(PAYLOAD)
    dest = fetch(f"{base}/videos/clip.mp4", tmp_path / "clip.mp4", max_bytes=len(PAYLOAD), timeout_s=5, retries=0)
    assert dest.read_bytes() == PAYLOAD  # exactly at the cap is allowed


def test_fetch_over_http_size_cap(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, folder = http_root
    (folder / "clip.mp4").write_bytes(PAYLOAD)
    dest = tmp_path / "dl" / "clip.mp4"
    dest.parent.mkdir()
    with pytest.raises(FetchError) as info:
        fetch(f"{base}/clip.mp4", dest, max_bytes=1000, timeout_s=5, retries=2)
    assert info.value.reason == "bytes_over_limit"
    assert list(dest.parent.iterdir()) == []


def test_fetch_http_404_is_missing_file_without_the_query(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_root
    uri = f"{base}/videos/gone.mp4?X-Amz-Credential=AKIDSECRET&X-Amz-Signature=deadbeefsecret"
    with pytest.raises(FetchError) as info:
        fetch(uri, tmp_path / "gone.mp4", max_bytes=10**6, timeout_s=5, retries=2)
    assert info.value.reason == "missing_file"
    assert f"{base}/videos/gone.mp4" in info.value.detail
    for text in (info.value.detail, str(info.value)):
        assert "?" not in text and "SECRET" not in text.upper() and "deadbeef" not in text
    assert not (tmp_path / "gone.mp4").exists()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but never listening: connecting is refused at once (and nothing else can take the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def test_fetch_unreachable_endpoint_fails_after_retries(closed_port: int, tmp_path: Path) -> None:
    uri = f"http://user:hunter2@127.0.0.1:{closed_port}/clip.mp4?X-Amz-Signature=deadbeefsecret"
    with pytest.raises(FetchError) as info:
        fetch(uri, tmp_path / "clip.mp4", max_bytes=10**6, timeout_s=1, retries=1)
    error = info.value
    assert error.reason == "download_failed"
    assert "2 attempts" in error.detail
    assert f"http://127.0.0.1:{closed_port}/clip.mp4" in error.detail
    for secret in ("?", "deadbeef", "hunter2", "user:"):
        assert secret not in error.detail and secret not in str(error)
    assert not (tmp_path / "clip.mp4").exists()


class _OddHandler(http.server.BaseHTTPRequestHandler):
    """Responses that a well-behaved static server never sends: no length, a lying length, a cut chunked body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.close_connection = True
        if self.path.startswith("/auth"):  # basic auth, as a password-protected file server asks for it
            expected = "Basic " + base64.b64encode(b"ann:p@ss word").decode()
            ok = self.headers.get("Authorization") == expected
            body = PAYLOAD if ok else b"who are you?"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        if self.path.startswith("/no-length"):
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path.startswith("/short"):
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
        elif self.path.startswith("/cut-chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % 4096 + PAYLOAD[:4096] + b"\r\n")  # then hang up without the last chunk


@pytest.fixture
def odd_http() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OddHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_without_content_length_counts_bytes(odd_http: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "clip.mp4"
    dest.parent.mkdir()
    assert fetch(f"{odd_http}/no-length", dest, max_bytes=len(PAYLOAD), timeout_s=5, retries=0).read_bytes() == PAYLOAD
    dest.unlink()
    with pytest.raises(FetchError) as info:
        fetch(f"{odd_http}/no-length", dest, max_bytes=len(PAYLOAD) - 1, timeout_s=5, retries=2)
    assert info.value.reason == "bytes_over_limit"
    assert list(dest.parent.iterdir()) == []  # the partial download was deleted


def test_fetch_connection_closed_early_is_download_failed(odd_http: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "clip.mp4"
    dest.parent.mkdir()
    with pytest.raises(FetchError) as info:
        fetch(f"{odd_http}/short?sig=deadbeefsecret", dest, max_bytes=10**6, timeout_s=5, retries=1)
    assert info.value.reason == "download_failed"
    assert "deadbeef" not in info.value.detail
    assert list(dest.parent.iterdir()) == []


def test_fetch_sends_user_password_as_basic_auth(odd_http: str, tmp_path: Path) -> None:
    host = odd_http.removeprefix("http://")
    dest = fetch(
        f"http://ann:p%40ss%20word@{host}/auth/clip.mp4", tmp_path / "clip.mp4", max_bytes=10**6, timeout_s=5, retries=0
    )
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(FetchError) as info:
        fetch(
            f"http://ann:wrong@{host}/auth/clip.mp4", tmp_path / "denied.mp4", max_bytes=10**6, timeout_s=5, retries=0
        )
    assert info.value.reason == "download_failed"
    assert "wrong" not in str(info.value) and "ann:" not in str(info.value)
    assert not (tmp_path / "denied.mp4").exists()


def test_fetch_cut_chunked_body_is_download_failed(odd_http: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "clip.mp4"
    dest.parent.mkdir()
    try:
        with pytest.raises(FetchError) as info:
            fetch(f"{odd_http}/cut-chunked", dest, max_bytes=10**6, timeout_s=5, retries=1)
        assert info.value.reason == "download_failed"
    finally:
        leftovers = list(dest.parent.iterdir())
    assert leftovers == []


# ---------------------------------------------------------------------------------------------------------------
# safe_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://user:pass@videos.example.com/a/b.mp4", "https://videos.example.com/a/b.mp4"),
        (
            "https://bucket.s3.amazonaws.com/k/v.mp4?X-Amz-Algorithm=AWS4&X-Amz-Signature=abc123",
            "https://bucket.s3.amazonaws.com/k/v.mp4",
        ),
        ("http://u:p@127.0.0.1:8080/v.mp4?token=t#frag", "http://127.0.0.1:8080/v.mp4"),
        ("s3://bucket/key/v.mp4?versionId=3", "s3://bucket/key/v.mp4?versionId=3"),  # an S3 key is literal
        ("s3://bucket/key/v.mp4", "s3://bucket/key/v.mp4"),
        ("/data/videos/a?b.mp4", "/data/videos/a?b.mp4"),  # local paths are left alone, '?' and all
        ("videos/user:pass@x.mp4", "videos/user:pass@x.mp4"),
    ],
)
def test_safe_uri(uri: str, expected: str) -> None:
    assert safe_uri(uri) == expected


def test_safe_uri_keeps_ipv6_brackets() -> None:
    assert safe_uri("http://user:pw@[::1]:8080/x.mp4?sig=1") == "http://[::1]:8080/x.mp4"
