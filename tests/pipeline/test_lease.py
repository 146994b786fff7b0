"""The S3 lease (pipeline/lease.py) on moto's real S3 server: racing writers, a killed writer, a lost lease."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import botocore.exceptions
import pyarrow as pa
import pytest
from tiny_lake import tiny_manifest, tiny_settings

import cogflow.pipeline.ingest as ingest_module
from cogflow.pipeline import lake
from cogflow.pipeline import lease as lease_module
from cogflow.pipeline.ingest import finish_ingest, plan_ingest, probe_source
from cogflow.pipeline.lease import LeaseLost, S3Lease, check_held
from cogflow.pipeline.storage import Storage

REPO = Path(__file__).resolve().parents[2]


def test_moto_enforces_both_conditional_headers(s3):
    # The lease is only as good as the server's conditions: check the server the tests use enforces them.
    store = Storage.at(f"s3://{s3.bucket}/lake")
    first = store.put_bytes_if("x", b"1", None)
    assert first is not None
    assert store.put_bytes_if("x", b"2", None) is None  # If-None-Match: * on an existing key
    assert store.put_bytes_if("x", b"2", '"0123"') is None  # If-Match on another ETag
    second = store.put_bytes_if("x", b"2", first)
    assert second not in (None, first)
    assert store.read_with_etag("x") == (b"2", second)
    assert store.delete_if("x", first) is False and store.exists("x")
    assert store.delete_if("x", second) is True and not store.exists("x")
    assert store.read_with_etag("x") is None


def test_two_racing_ingests_on_one_s3_lake_write_each_row_once(tmp_path, s3):
    manifest = tiny_manifest(tmp_path / "data")
    settings = tiny_settings(tmp_path / "home", lake=f"s3://{s3.bucket}/lake")
    plans = [plan_ingest(str(manifest), settings) for _ in range(2)]  # both see an empty lake
    probes = [[probe_source(uri, fetch, settings.limits) for uri, fetch in plan.to_probe] for plan in plans]

    # Each writer re-reads the lake's keys before appending. Make the race certain: a writer that has read them
    # waits (at most a second) for the other to have read them too, so without the lease both read an empty lake.
    both_read = threading.Barrier(2)
    real_register = ingest_module._register_lake

    def register_then_meet(con, store, *args, **kwargs):
        real_register(con, store, *args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait(timeout=1.0)

    results: list[object] = [None, None]

    def finish(i: int) -> None:
        try:
            results[i] = finish_ingest(plans[i], probes[i])
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    ingest_module._register_lake = register_then_meet
    try:
        writers = [threading.Thread(target=finish, args=(i,)) for i in range(2)]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
    finally:
        ingest_module._register_lake = real_register

    assert not [r for r in results if isinstance(r, Exception)], results  # both passed the data checks
    store = Storage.at(settings.lake)
    videos = lake.read_table(store, "videos", ["video_id"])["video_id"].to_pylist()
    captions = lake.read_table(store, "captions", ["caption_id"])["caption_id"].to_pylist()
    assert sorted(videos) == sorted(set(videos)) and len(videos) == 2
    assert sorted(captions) == sorted(set(captions)) and len(captions) == 2
    assert sorted(r.new_rows["captions"] for r in results) == [0, 2]  # type: ignore[union-attr]
    assert not store.exists(lease_module.WRITER_LEASE)  # released


def test_shard_leases_keep_two_writers_of_one_shard_apart(s3):
    store = Storage.at(f"s3://{s3.bucket}/lake")
    spans: list[tuple[float, float]] = []

    def write_shard() -> None:
        with lake.shard_lock(store, "abc"):
            start = time.monotonic()
            time.sleep(0.1)
            spans.append((start, time.monotonic()))

    writers = [threading.Thread(target=write_shard) for _ in range(3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    spans.sort()
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert not store.exists(".locks/shard-abc.lease")
    with lake.try_shard_lock(store, "abc") as held:  # free again, and taken without waiting
        assert held
        with lake.try_shard_lock(Storage.at(store.root), "abc") as again:
            assert not again


HOLD_AND_DIE = """
import sys, time
from cogflow.pipeline.lease import S3Lease
from cogflow.pipeline.storage import Storage
lease = S3Lease(Storage.at(sys.argv[1]), ".writer.lease", "writer", ttl_s=float(sys.argv[2]))
assert lease.acquire(timeout_s=10)
print("held", flush=True)
time.sleep(120)
"""


def test_the_lease_of_a_killed_writer_is_taken_over_once_it_expires(s3):
    root = f"s3://{s3.bucket}/lake"
    ttl = 3.0
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_DIE, root, str(ttl)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "held"
    finally:
        writer.kill()  # SIGKILL: no release, no last words
        writer.wait()
    store = Storage.at(root)
    stale = json.loads(store.read_bytes(lease_module.WRITER_LEASE))

    if time.time() < stale["expires_at"] - 0.5:  # (a loaded machine may get here late: then only the rest counts)
        assert not S3Lease(store, lease_module.WRITER_LEASE, ttl_s=ttl).try_acquire()  # not expired: still its
    with lake.writer_lock(store):
        taken_at = time.time()
        lake.append(store, "videos", lake.VIDEOS.empty_table())  # writes are allowed under the taken-over lease
        assert json.loads(store.read_bytes(lease_module.WRITER_LEASE))["owner"] != stale["owner"]
    assert stale["expires_at"] <= taken_at < stale["expires_at"] + 2.5  # after it expired, and soon after
    assert not store.exists(lease_module.WRITER_LEASE)


def test_of_two_takers_of_a_stale_lease_only_one_wins(s3, monkeypatch):
    store = Storage.at(f"s3://{s3.bucket}/lake")
    store.put_bytes_if("stale.lease", json.dumps({"owner": "killed", "expires_at": time.time() - 5}).encode(), None)
    # Every taker reads the stale lease before any of them writes: the worst interleaving, made certain.
    all_read = threading.Barrier(4)
    real_read = type(store).read_with_etag

    def read_then_meet(self, rel):
        found = real_read(self, rel)
        with contextlib.suppress(threading.BrokenBarrierError):
            all_read.wait(timeout=2.0)
        return found

    monkeypatch.setattr(type(store), "read_with_etag", read_then_meet)
    leases = [S3Lease(Storage.at(store.root), "stale.lease", ttl_s=5.0) for _ in range(4)]
    won: list[bool] = [False] * 4

    def take(i: int) -> None:
        won[i] = leases[i].try_acquire()

    takers = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in takers:
        t.start()
    for t in takers:
        t.join()
    assert sum(won) == 1
    winner = leases[won.index(True)]
    assert json.loads(store.read_bytes("stale.lease"))["owner"] == winner.owner
    winner.release()


def _table() -> pa.Table:
    return pa.Table.from_pylist([{"video_id": "v1", "source_uri": "/x.mp4"}], schema=lake.VIDEOS)


def _wait_until_lost(root: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            check_held(root)
        except LeaseLost:
            return
        time.sleep(0.05)
    raise AssertionError("the lease was never lost")


def test_a_writer_whose_lease_was_taken_over_stops_writing(s3, monkeypatch):
    monkeypatch.setattr(lease_module, "DEFAULT_TTL_S", 2.0)  # renewed every 0.67 s
    store = Storage.at(f"s3://{s3.bucket}/lake")
    other = json.dumps({"owner": "another writer", "expires_at": time.time() + 600}).encode()
    with pytest.raises(LeaseLost, match="took it over"):
        with lake.writer_lock(store):
            lake.append(store, "videos", _table())
            # another writer takes the lease over (as one that judged it stale would): the next renewal fails
            s3.put_object(Bucket=s3.bucket, Key="lake/.writer.lease", Body=other)
            _wait_until_lost(store.root, 3.0)
            with pytest.raises(LeaseLost, match="stopped writing"):
                lake.append(store, "captions", pa.Table.from_pylist([{"caption_id": "c1"}], schema=lake.CAPTIONS))
    assert store.list_files("captions") == []  # nothing written after the loss
    assert len(store.list_files("videos")) == 1
    assert store.read_bytes(lease_module.WRITER_LEASE) == other  # the other writer's lease is left alone


def test_a_writer_whose_renewals_do_not_get_through_stops_writing(s3, monkeypatch):
    monkeypatch.setattr(lease_module, "DEFAULT_TTL_S", 0.8)

    def unreachable(self):
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3")

    monkeypatch.setattr(S3Lease, "renew", unreachable)
    store = Storage.at(f"s3://{s3.bucket}/lake")
    with pytest.raises(LeaseLost):
        with lake.writer_lock(store):
            _wait_until_lost(store.root, 2.0)  # 0.6 s: three quarters of the time to live
            with pytest.raises(LeaseLost, match="no renewal got through"):
                lake.append(store, "videos", _table())
    assert store.list_files("videos") == []


def test_a_store_without_conditional_deletes_releases_by_marking(s3, monkeypatch):
    store = Storage.at(f"s3://{s3.bucket}/lake")

    def not_implemented(self, rel, etag):
        raise botocore.exceptions.ClientError({"Error": {"Code": "NotImplemented"}}, "DeleteObject")

    monkeypatch.setattr(type(store), "delete_if", not_implemented)
    with lake.writer_lock(store):
        pass
    assert json.loads(store.read_bytes(lease_module.WRITER_LEASE))["expires_at"] == 0.0  # released, not deleted
    taker = S3Lease(store, lease_module.WRITER_LEASE)
    assert taker.try_acquire()  # at once: a released lease is free
    taker.release()


def _answer_lost_once(store: Storage, operation: str) -> list[int]:
    """Make botocore send the next `operation` request twice, as it does when the server's answer to the first
    is lost (a dropped connection, a timeout): the first one lands, the retry meets what it wrote."""
    sent: list[int] = []

    def retry_once(attempts: int, **kwargs) -> float | None:
        sent.append(attempts)
        return 0.0 if len(sent) == 1 else None  # a retry at once, then botocore's own rules

    store.client.meta.events.register(f"needs-retry.s3.{operation}", retry_once)
    return sent


@pytest.mark.parametrize("step", ["take", "renew", "release"])
def test_a_writer_whose_own_write_was_retried_keeps_its_lease(s3, step):
    store = Storage.at(f"s3://{s3.bucket}/lake")
    rel = f"{step}.lease"  # (the three share a bucket)
    lease = S3Lease(store, rel, ttl_s=30.0)
    if step == "take":
        sent = _answer_lost_once(store, "PutObject")
        assert lease.try_acquire()  # not "held by another writer": the lease it met is its own
    else:
        assert lease.try_acquire()
        if step == "renew":
            sent = _answer_lost_once(store, "PutObject")
            lease.renew()
            assert lease.lost is None
            assert lease.etag == store.read_with_etag(rel)[1]
            lease.check()
        else:
            sent = _answer_lost_once(store, "DeleteObject")
    assert json.loads(store.read_bytes(rel))["owner"] == lease.owner
    lease.release()
    assert sent[:2] == [1, 2]  # the request went twice
    assert lease.lost is None  # not taken for a takeover
    assert not store.exists(rel)


def test_a_takeover_whose_own_write_was_retried_keeps_the_lease(s3):
    store = Storage.at(f"s3://{s3.bucket}/lake")
    store.put_bytes_if("stale.lease", json.dumps({"owner": "killed", "expires_at": time.time() - 5}).encode(), None)
    lease = S3Lease(store, "stale.lease", ttl_s=30.0)
    sent: list[int] = []

    def retry_the_takeover_once(attempts: int, request_dict: dict, **kwargs) -> float | None:
        if "If-Match" not in request_dict["headers"]:
            return None
        sent.append(attempts)
        return 0.0 if len(sent) == 1 else None

    store.client.meta.events.register("needs-retry.s3.PutObject", retry_the_takeover_once)
    assert lease.try_acquire()
    assert sent[:2] == [1, 2]
    assert json.loads(store.read_bytes("stale.lease"))["owner"] == lease.owner
    lease.release()
    assert lease.lost is None and not store.exists("stale.lease")
