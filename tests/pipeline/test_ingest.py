"""Ingest end to end (without Prefect): real videos, real DuckDB, a real S3 server and a real HTTP server."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import copy_sample, make_bad_corpus, upload_tree, write_csv

from cogflow.pipeline import lake
from cogflow.pipeline.ingest import (
    DataCheckError,
    finish_ingest,
    ingest,
    plan_ingest,
    probe_source,
)
from cogflow.pipeline.settings import load_settings
from cogflow.pipeline.storage import Storage


def lake_files(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def corpus(tmp_path: Path, sample_dir: Path) -> tuple[Path, dict[str, int]]:
    rows, expected = make_bad_corpus(tmp_path / "data", sample_dir)
    return write_csv(tmp_path / "data" / "manifest.csv", rows), expected


def test_every_bad_input_is_rejected_with_its_reason_and_nothing_is_lost(tmp_path, corpus):
    manifest, expected = corpus
    settings = load_settings(home=str(tmp_path / "home"))
    summary = ingest(str(manifest), settings)

    assert summary.outcomes == expected
    assert summary.manifest_rows == sum(expected.values())
    store = Storage.at(settings.lake)
    captions = lake.read_table(store, "captions").to_pylist()
    rejects = lake.read_table(store, "rejects").to_pylist()
    # every row is a caption row, a merged duplicate of one, or a reject: nothing vanishes
    assert len(captions) + summary.duplicate_rows + len(rejects) == summary.manifest_rows
    assert summary.duplicate_rows == 3

    by_caption = {c["caption"]: c for c in captions}
    assert "Tom & Jerry run fast" in by_caption  # tags, entities, control chars, U+3000 and extra spaces gone
    assert by_caption["一只 猫 在跑"]["language"] == "zh"
    assert by_caption["first second"]["start_s"] == 0.5 and by_caption["first second"]["end_s"] == 1.5
    assert all(c["split"] in ("train", "val") for c in captions)

    reasons = {r["raw"] and json.loads(r["raw"]).get("caption"): r["reason"] for r in rejects}
    assert reasons["escape attempt"] == "path_outside_roots"
    assert reasons["decompression bomb"] == "resolution_over_limit"
    assert reasons["truncated faststart"] == "truncated_container"
    assert reasons["beyond the end"] == "malformed_span"
    assert all(r["detail"] for r in rejects)
    passwd = next(r for r in rejects if r["reason"] == "path_outside_roots" and "passwd" in r["source_uri"])
    assert "outside" in passwd["detail"]

    # identical bytes under two paths: one video, two known sources
    videos = lake.read_table(store, "videos").to_pylist()
    sources = lake.read_table(store, "sources").to_pylist()
    assert len(videos) == 4 and len(sources) == 5
    assert len({v["video_id"] for v in videos}) == 4
    assert all(v["video_id"] == v["sha256"][:16] for v in videos)


def test_reingest_is_a_noop_and_a_grown_manifest_probes_only_new_videos(tmp_path, sample_dir):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    manifest = write_csv(data / "manifest.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows[:2]])
    settings = load_settings(home=str(tmp_path / "home"))

    first = ingest(str(manifest), settings)
    assert first.sources_probed == 2 and first.new_rows["captions"] == 2
    before = lake_files(Path(settings.lake))

    again = ingest(str(manifest), settings)
    assert again.sources_probed == 0
    assert again.new_rows == {"videos": 0, "shots": 0, "sources": 0, "captions": 0, "rejects": 0}
    assert lake_files(Path(settings.lake)) == before  # not a byte written

    write_csv(manifest, [{"video": r["video"], "caption": r["caption"]} for r in rows])
    grown = ingest(str(manifest), settings)
    assert grown.sources_probed == len(rows) - 2
    assert grown.sources_known == 2
    assert grown.new_rows["captions"] == len(rows) - 2
    assert lake.row_counts(Storage.at(settings.lake))["captions"] == len(rows)


def test_reingest_of_bad_inputs_retries_only_transient_failures(tmp_path, corpus):
    manifest, _expected = corpus
    settings = load_settings(home=str(tmp_path / "home"))
    ingest(str(manifest), settings)
    again = ingest(str(manifest), settings)
    assert again.sources_probed == 1  # the missing file, which may have arrived since; broken files are remembered
    # --retry-rejects probes the 7 broken files again (e.g. after a limit was raised), recording nothing twice
    assert again.new_rows["rejects"] == 0
    retried = ingest(str(manifest), settings, retry_rejects=True)
    assert retried.sources_probed == 8 and retried.new_rows["rejects"] == 0


def test_the_same_manifest_by_another_path_is_the_same_manifest(tmp_path, corpus):
    manifest, _expected = corpus
    settings = load_settings(home=str(tmp_path / "home"))
    first = ingest(str(manifest), settings)
    (tmp_path / "link").symlink_to(manifest.parent)
    for other in (
        f"{manifest.parent}/bad/../manifest.csv",
        f"file://{manifest}",
        str(tmp_path / "link" / "manifest.csv"),
    ):
        again = ingest(other, settings)
        assert again.manifest_uri == first.manifest_uri
        assert again.new_rows["rejects"] == 0 and again.new_rows["captions"] == 0


def test_runs_that_planned_at_the_same_time_write_each_row_once(tmp_path, sample_dir):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    manifest = write_csv(data / "manifest.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    settings = load_settings(home=str(tmp_path / "home"))
    plans = [plan_ingest(str(manifest), settings) for _ in range(2)]  # both see an empty lake
    probes = [[probe_source(uri, fetch, settings.limits) for uri, fetch in plan.to_probe] for plan in plans]
    first, second = (finish_ingest(plan, found) for plan, found in zip(plans, probes))
    assert first.new_rows["captions"] == len(rows)
    assert second.new_rows == {
        "videos": 0,
        "shots": 0,
        "sources": 0,
        "captions": 0,
        "rejects": 0,
    }  # re-read under the lock


def test_a_crash_between_appends_is_finished_by_the_next_run(tmp_path, sample_dir, monkeypatch):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    manifest = write_csv(data / "manifest.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    settings = load_settings(home=str(tmp_path / "home"))
    real_append = lake.append

    def crash_on_captions(store, name, table):
        if name == "captions":
            raise OSError("disk full")
        return real_append(store, name, table)

    monkeypatch.setattr(lake, "append", crash_on_captions)
    with pytest.raises(OSError):
        ingest(str(manifest), settings)
    monkeypatch.setattr(lake, "append", real_append)

    summary = ingest(str(manifest), settings)
    assert summary.sources_probed == 0  # videos and sources were written before the crash
    assert summary.new_rows["captions"] == len(rows)
    counts = lake.row_counts(Storage.at(settings.lake))
    assert counts["videos"] == counts["captions"] == len(rows)


def test_data_checks_fail_loudly(tmp_path, sample_dir):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    manifest = write_csv(data / "manifest.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows[:1]])
    settings = load_settings(home=str(tmp_path / "home"))
    ingest(str(manifest), settings)
    store = Storage.at(settings.lake)
    lake.append(store, "videos", lake.read_table(store, "videos"))  # a second copy of every video row

    with pytest.raises(DataCheckError, match="videos_unique_id"):
        ingest(str(manifest), settings)


def test_manifest_videos_and_lake_all_on_s3(tmp_path, sample_dir, s3):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    bad = [
        {"video": "../outside.mp4", "caption": "leaves the prefix"},
        {"video": "videos/none.mp4", "caption": "missing"},
    ]
    write_csv(data / "manifest.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows] + bad)
    upload_tree(s3, s3.bucket, data, "incoming")
    lake_uri = f"s3://{s3.bucket}/lake"
    settings = load_settings(home=str(tmp_path / "home"), lake=lake_uri)

    summary = ingest(f"s3://{s3.bucket}/incoming/manifest.csv", settings)
    assert summary.outcomes == {"accepted": len(rows), "path_outside_roots": 1, "missing_file": 1}
    store = Storage.at(lake_uri)
    videos = lake.read_table(store, "videos").to_pylist()
    assert {v["source_uri"] for v in videos} == {f"s3://{s3.bucket}/incoming/{r['video']}" for r in rows}
    assert {v["codec"] for v in videos} >= {"h264", "vp9", "mpeg4"}
    assert lake.row_counts(store)["captions"] == len(rows)

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3.bucket, Prefix="lake/")["Contents"]}
    again = ingest(f"s3://{s3.bucket}/incoming/manifest.csv", settings)
    assert again.sources_probed == 1 and again.new_rows["captions"] == 0  # only the missing key is retried
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=s3.bucket, Prefix="lake/")["Contents"]} == keys


def test_http_sources_with_size_limit_and_missing_urls(tmp_path, sample_dir, http_root):
    base, www = http_root
    rows = copy_sample(sample_dir, www)
    big = max(rows, key=lambda r: (www / r["video"]).stat().st_size)
    limit = (www / big["video"]).stat().st_size - 1
    manifest_rows = [{"video": f"{base}/{r['video']}", "caption": r["caption"]} for r in rows]
    manifest_rows.append({"video": f"{base}/videos/nope.mp4", "caption": "a 404"})
    manifest = write_csv(tmp_path / "manifest.csv", manifest_rows)
    settings = load_settings(home=str(tmp_path / "home"))
    settings = settings.replace(limits=dataclasses.replace(settings.limits, max_bytes=limit))

    summary = ingest(str(manifest), settings)
    assert summary.outcomes == {"accepted": len(rows) - 1, "bytes_over_limit": 1, "missing_file": 1}
    rejects = lake.read_table(Storage.at(settings.lake), "rejects").to_pylist()
    assert {r["source_uri"] for r in rejects if r["reason"] == "bytes_over_limit"} == {f"{base}/{big['video']}"}


def test_credentials_in_urls_never_reach_the_lake(tmp_path, sample_dir, http_root):
    base, www = http_root
    rows = copy_sample(sample_dir, www)
    secret = "X-Amz-Signature=deadbeefsecret"
    host = base.replace("http://", "http://user:hunter2@")
    manifest_rows = [{"video": f"{host}/{r['video']}?{secret}", "caption": r["caption"]} for r in rows]
    manifest_rows.append({"video": f"{host}/videos/nope.mp4?{secret}", "caption": "a 404 with a signature"})
    manifest_rows.append({"video": f"HTTP://user:hunter2@127.0.0.1:1/x.mp4?{secret}", "caption": "upper-case scheme"})
    manifest = write_csv(tmp_path / "manifest.csv", manifest_rows)
    # and a remote manifest, fetched with credentials, whose rows use relative paths
    write_csv(www / "remote.csv", [{"video": f"{r['video']}?{secret}", "caption": r["caption"]} for r in rows])
    settings = load_settings(home=str(tmp_path / "home"))
    settings = settings.replace(limits=dataclasses.replace(settings.limits, download_retries=0))

    summary = ingest(str(manifest), settings)
    assert summary.outcomes["accepted"] == len(rows)
    remote = ingest(f"{host}/remote.csv?{secret}", settings)
    assert remote.outcomes == {"accepted": len(rows)}
    for part in Path(settings.lake).rglob("*.parquet"):
        text = json.dumps(pq.read_table(part).to_pylist(), default=str)
        assert "deadbeefsecret" not in text and "hunter2" not in text, part
    assert "deadbeefsecret" not in summary.text()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_manifests_give_the_same_lake_as_csv(tmp_path, sample_dir, fmt):
    import pyarrow as pa

    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    table = [{"video": r["video"], "caption": r["caption"], "start_s": 0.25, "fps_hint": int(r["fps"])} for r in rows]
    csv_settings = load_settings(home=str(tmp_path / "csv"))
    ingest(str(write_csv(data / "manifest.csv", table)), csv_settings)
    other = data / f"manifest.{fmt}"
    if fmt == "jsonl":
        other.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table) + "\n{not json}\n", encoding="utf-8"
        )
    else:
        pq.write_table(pa.Table.from_pylist(table), other)
    settings = load_settings(home=str(tmp_path / fmt))
    summary = ingest(str(other), settings)

    def captions(s):
        return sorted(
            (c["caption_id"], c["start_s"], c["end_s"])
            for c in lake.read_table(Storage.at(s.lake), "captions").to_pylist()
        )

    assert captions(settings) == captions(csv_settings)
    assert summary.outcomes.get("malformed_row", 0) == (1 if fmt == "jsonl" else 0)
    metadata = json.loads(lake.read_table(Storage.at(settings.lake), "captions").to_pylist()[0]["metadata"])
    assert "fps_hint" in metadata and "video" not in metadata


def test_mapped_columns_and_source_video_id(tmp_path, sample_dir):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    manifest = write_csv(
        data / "manifest.csv",
        [{"path": r["video"], "text": r["caption"], "video_id": f"yt-{i}"} for i, r in enumerate(rows)],
    )
    settings = load_settings(home=str(tmp_path / "home"))
    summary = ingest(str(manifest), settings, video_col="path", caption_col="text")
    assert summary.outcomes == {"accepted": len(rows)}
    captions = lake.read_table(Storage.at(settings.lake), "captions").to_pylist()
    assert sorted(c["source_video_id"] for c in captions) == [f"yt-{i}" for i in range(len(rows))]


def test_subtitle_files_as_timed_captions(tmp_path, sample_dir):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    video = data / rows[0]["video"]
    srt = video.with_suffix(".srt")
    srt.write_text(
        "1\n00:00:00,000 --> 00:00:01,000\n<i>一个圆形</i>\n\n2\n00:00:01,000 --> 00:00:02,000\nmoves right\n",
        encoding="utf-8",
    )
    vtt = data / "captions.vtt"
    vtt.write_text(
        "WEBVTT\n\nNOTE a comment\n\n00:00.500 --> 00:01.500 align:start\nHello there\n\nbroken --> 00:02.000\nbad cue\n"
    )
    manifest = write_csv(
        data / "manifest.csv",
        [
            {"video": rows[1]["video"], "subtitles": "captions.vtt"},
            {"video": rows[1]["video"], "subtitles": "missing.vtt"},
        ],
    )
    settings = load_settings(home=str(tmp_path / "home"))

    from_srt = ingest(str(srt), settings)
    assert from_srt.outcomes == {"accepted": 2}
    from_column = ingest(str(manifest), settings)
    assert from_column.outcomes == {"accepted": 1, "malformed_span": 1, "bad_subtitles": 1}
    captions = {c["caption"]: c for c in lake.read_table(Storage.at(settings.lake), "captions").to_pylist()}
    assert (captions["一个圆形"]["start_s"], captions["一个圆形"]["end_s"]) == (0.0, 1.0)
    assert (captions["Hello there"]["start_s"], captions["Hello there"]["end_s"]) == (0.5, 1.5)
