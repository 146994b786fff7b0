"""`cogflow repair` on a real lake damaged each way a failed or raced write damages it, locally and on S3."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import upload_tree
from tiny_lake import tiny_manifest, tiny_settings

from cogflow.flows.cli import main
from cogflow.pipeline import checks, lake
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.repair import repair
from cogflow.pipeline.split import pending_shards, shard_paths, split, split_shard
from cogflow.pipeline.storage import Storage


@pytest.fixture(scope="module")
def clean_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny videos ingested and split (one shard each) and a token file with its record; read-only."""
    root = tmp_path_factory.mktemp("repair")
    settings = tiny_settings(root / "home")
    ingest(str(tiny_manifest(root / "data")), settings)
    split(settings)
    store = Storage.at(settings.lake)
    shard = sorted(lake.finished_shards(store))[0]
    clips = lake.read_table(
        store,
        "clips",
        ["clip_id", "caption_id", "video_id", "stage", "fps", "split", "shard_id"],
        parts=[f"clips/stage=1/shard-{shard}.parquet"],
    )
    paths = lake.token_paths("1", 1, shard)
    _write(
        store,
        paths["tokens"],
        clips.append_column("text_tokenizer_version", pa.array(["1"] * clips.num_rows)).append_column(
            "frame_tokenizer_version", pa.array(["1"] * clips.num_rows)
        ),
        lake.TOKENS,
    )
    record = {
        "shard_id": shard,
        "stage": 1,
        "frame_tokenizer_version": "1",
        "text_tokenizer_version": "1",
        "clips": clips.num_rows,
    }
    _write(store, paths["record"], pa.Table.from_pylist([record]), lake.TOKEN_SHARDS)
    checks.check_lake(store)
    return Path(settings.lake)


def _write(store: Storage, rel: str, table: pa.Table, schema: pa.Schema) -> None:
    columns = {name: table[name] if name in table.column_names else pa.nulls(table.num_rows) for name in schema.names}
    local = Path(store.root).parent / f"w-{uuid.uuid4().hex}.parquet"
    pq.write_table(pa.table(columns).cast(schema), local)
    store.put_file(rel, local)
    local.unlink()


def _copy(clean_lake: Path, tmp_path: Path) -> Storage:
    shutil.copytree(clean_lake, tmp_path / "lake")
    return Storage.at(tmp_path / "lake")


def _contents(store: Storage) -> dict[str, list]:
    """Every table's keys, as readers see them (finished shards only), sorted."""
    plan = lake.read_table(store, "clip_plan", ["shard_id", "clip_id"])
    return {
        "videos": sorted(lake.read_table(store, "videos", ["video_id"])["video_id"].to_pylist()),
        "sources": sorted(lake.read_table(store, "sources", ["source_uri"])["source_uri"].to_pylist()),
        "captions": sorted(lake.read_table(store, "captions", ["caption_id"])["caption_id"].to_pylist()),
        "clip_plan": sorted(zip(plan["shard_id"].to_pylist(), plan["clip_id"].to_pylist())),
        "clips": sorted(lake.read_clips(store, ["clip_id"])["clip_id"].to_pylist()),
        "tokens": sorted(lake.read_tokens(store, None, ["clip_id"])["clip_id"].to_pylist()),
    }


def _files(store: Storage) -> dict[str, int]:
    root = Path(store.root)
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _shard(store: Storage) -> str:
    return sorted(lake.finished_shards(store))[0]


# Each way a write goes wrong, as it leaves the lake: returns what repair must name.


def raced_ingest(store: Storage) -> list[str]:
    """Two ingests that raced: every video row twice, a caption twice, and a sources part that is half new."""
    lake.append(store, "videos", lake.read_table(store, "videos"))
    lake.append(store, "captions", lake.read_table(store, "captions").slice(0, 1))
    sources = lake.read_table(store, "sources")
    another = sources.slice(0, 1).set_column(0, "source_uri", pa.array(["/elsewhere/the-same-bytes.mp4"]))
    lake.append(store, "sources", pa.concat_tables([sources, another]))
    with pytest.raises(checks.DataCheckError, match="videos_unique_id"):
        checks.check_lake(store)
    return ["videos/part-", "captions/part-", "sources/part-"]


def raced_split_plans(store: Storage) -> list[str]:
    """Two split plans that raced on the same captions: the same windows in the same shards, twice."""
    lake.append(store, "clip_plan", lake.read_table(store, "clip_plan"))
    return ["clip_plan/part-"]


def raced_split_plans_in_other_shards(store: Storage) -> list[str]:
    """Two plans that raced with different shard layouts: one shard's windows again under another shard, split too."""
    x, y = _shard(store), "f" * 16
    plan = lake.read_table(store, "clip_plan")
    mine = plan.filter(pc.equal(plan["shard_id"], x))
    lake.append(store, "clip_plan", mine.set_column(0, "shard_id", pa.array([y] * mine.num_rows)))
    for rel in [
        f"clips/stage=1/shard-{x}.parquet",
        f"clips/stage=2/shard-{x}.parquet",
        f"clip_rejects/shard-{x}.parquet",
        f"clip_shards/shard-{x}.parquet",
    ]:
        if store.exists(rel):
            table = pq.read_table(Path(store.root) / rel)
            column = table.column_names.index("shard_id")
            table = table.set_column(column, "shard_id", pa.array([y] * table.num_rows, pa.string()))
            pq.write_table(table, Path(store.root) / rel.replace(x, y))
    with pytest.raises(checks.DataCheckError, match="clips_unique_id"):
        checks.check_lake(store)
    return [f"clip_shards/shard-{y}", f"clips/stage=1/shard-{y}", "clip_plan/part-"]


def killed_split(store: Storage) -> list[str]:
    """A split killed before a shard's completion record: its clips and rejects are left without one."""
    x = _shard(store)
    store.delete(f"clip_shards/shard-{x}.parquet")
    return [f"clips/stage=1/shard-{x}", f"clip_rejects/shard-{x}"]


def killed_encode(store: Storage) -> list[str]:
    """An encode killed before a token file's record."""
    x = _shard(store)
    store.delete(lake.token_paths("1", 1, x)["record"])
    return [lake.token_paths("1", 1, x)["tokens"]]


def killed_renames(store: Storage) -> list[str]:
    """Local writes killed between copying and renaming: a table part's and a shard file's temporary copies."""
    (Path(store.root) / "videos" / ".tmp-0123abcd-part-20260101T000000-0123456789ab.parquet").write_bytes(b"half")
    (Path(store.root) / "clips" / "stage=1" / f".tmp-4567cdef-shard-{_shard(store)}.parquet").write_bytes(b"half")
    return ["videos/.tmp-0123abcd-part-", "clips/stage=1/.tmp-4567cdef-shard-"]


DAMAGE = [
    raced_ingest,
    raced_split_plans,
    raced_split_plans_in_other_shards,
    killed_split,
    killed_encode,
    killed_renames,
]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_repair_removes_what_each_failed_or_raced_write_left(clean_lake, tmp_path, damage):
    store = _copy(clean_lake, tmp_path)
    before = _contents(store)
    expected = damage(store)

    summary = repair(store)
    text = summary.text()
    removed = [line for line in text.splitlines() if line.startswith("removed ") and not line.startswith("repair")]
    for name in expected:
        assert any(name in line for line in removed), (name, text)
    assert summary.check_failure is None and summary.checks
    assert not store.list_temporary("")
    if damage is raced_ingest:  # the new source of the half-new part is kept
        assert _contents(store) == {**before, "sources": sorted(before["sources"] + ["/elsewhere/the-same-bytes.mp4"])}
    elif damage in (killed_split, killed_encode):  # the unfinished shard or file is simply not there yet
        assert _contents(store)["clip_plan"] == before["clip_plan"]
    else:
        assert _contents(store) == before
    again = repair(store)
    assert again.lines == [] and again.files_removed == again.rows_removed == 0


def test_a_repaired_killed_split_is_finished_by_the_next_split(clean_lake, tmp_path):
    store = _copy(clean_lake, tmp_path)
    before = _contents(store)
    killed_split(store)
    repair(store)
    settings = tiny_settings(tmp_path / "home", lake=store.root)
    assert split(settings).shards_done == 1
    assert {k: v for k, v in _contents(store).items() if k != "tokens"} == {
        k: v for k, v in before.items() if k != "tokens"
    }


def test_repair_of_a_clean_lake_removes_nothing(clean_lake, tmp_path, capsys):
    store = _copy(clean_lake, tmp_path)
    files = _files(store)
    assert main(["repair", "--lake", store.root]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"repair {store.root}: nothing to remove (") and out[1].startswith("data checks passed: ")

    def tables(found: dict[str, int]) -> dict[str, int]:  # lock files come and go
        return {k: v for k, v in found.items() if not k.startswith(".")}

    assert tables(_files(store)) == tables(files)


def test_repair_leaves_a_shard_that_is_being_written_alone(clean_lake, tmp_path):
    store = _copy(clean_lake, tmp_path)
    x = _shard(store)
    killed_split(store)  # as it looks while a splitter is writing it
    with lake.shard_lock(store, x):
        summary = repair(store)
    assert store.exists(f"clips/stage=1/shard-{x}.parquet")
    assert summary.skipped == [f"shard {x} (being written now; run repair again later)"]


def test_cogflow_repair_on_s3_takes_the_lease_and_says_what_it_removed(clean_lake, tmp_path, s3, capsys):
    local = _copy(clean_lake, tmp_path)
    expected = raced_ingest(local) + killed_split(local) + killed_renames(local)
    upload_tree(s3, s3.bucket, Path(local.root), "lake")
    root = f"s3://{s3.bucket}/lake"
    store = Storage.at(root)
    assert len(store.list_temporary("")) == 2

    def lake_keys() -> dict[str, str]:  # every object but the leases, with its ETag
        listed = s3.list_objects_v2(Bucket=s3.bucket, Prefix="lake/")["Contents"]
        return {o["Key"]: o["ETag"] for o in listed if not o["Key"].endswith(".lease")}

    started, unchanged = threading.Event(), []

    def another_writer() -> None:
        with lake.writer_lock(store):
            before = lake_keys()
            started.set()
            time.sleep(2.0)  # repair starts meanwhile (it needs well under 2 s to remove something)
            unchanged.append(lake_keys() == before)

    writer = threading.Thread(target=another_writer)
    writer.start()
    started.wait(5)
    assert main(["repair", "--lake", root]) == 0
    writer.join()
    assert unchanged == [True]  # repair removed nothing until the other writer let go of the lease
    out = capsys.readouterr().out
    for name in expected:
        assert any(line.startswith("removed ") and name in line for line in out.splitlines()), (name, out)
    assert "data checks passed" in out
    assert not store.list_temporary("") and not store.exists(".writer.lease")

    assert main(["repair", "--lake", root]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_repair_where_there_is_no_lake_is_one_line_and_creates_nothing(tmp_path, s3, capsys):
    assert main(["repair", "--lake", str(tmp_path / "typo")]) == 2
    assert capsys.readouterr().err == f"cogflow repair: no lake at {tmp_path / 'typo'}: nothing to repair\n"
    assert not (tmp_path / "typo").exists()
    # a missing bucket: refused by the settings check (2) or, without it, by the first request (1); one line either way
    assert main(["repair", "--lake", "s3://no-such-bucket-here/lake"]) in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith("cogflow repair: ") and ("no-such-bucket-here" in err or "NoSuchBucket" in err)
    assert len(err.splitlines()) == 1


def test_repair_keeps_the_plan_part_a_pending_shard_still_reads(clean_lake, tmp_path):
    store = _copy(clean_lake, tmp_path)
    x, w = sorted(lake.finished_shards(store))
    [part] = store.list_files("clip_plan", ".parquet")  # both shards' windows, in one part
    clips = _contents(store)["clips"]
    raced_split_plans_in_other_shards(store)  # x's windows again as shard y, finished
    store.delete(shard_paths(x)["record"])  # x unfinished: its windows, planned twice, go from `part`
    for rel in shard_paths(w).values():  # w planned, not split yet: a running split is about to read `part`
        store.delete(rel)
    pending = {task.shard_id: task for task in pending_shards(store)[0]}
    assert pending[w].plan_part == part

    summary = repair(store)
    assert any(f"from {part}" in line for line in summary.lines), summary.text()
    result = split_shard(tiny_settings(tmp_path / "home", lake=store.root), pending[w])  # the split carries on
    assert result.clips_written and not result.rejects
    assert _contents(store)["clips"] == clips
    checks.check_lake(store)


def test_repair_of_a_lake_it_cannot_read_is_no_usage_error(clean_lake, tmp_path, capsys):
    store = _copy(clean_lake, tmp_path)
    store.put_bytes("videos/part-20990101T000000-0123456789ab.parquet", b"not parquet")
    assert main(["repair", "--lake", store.root]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cogflow repair: ") and "part-20990101T000000-0123456789ab.parquet" in err, err
    assert "no lake" not in err and len(err.splitlines()) == 1
