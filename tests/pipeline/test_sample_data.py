"""The synthetic sample data: files that probe as planned, captions that say what is drawn, deterministic output."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import numpy as np
import pytest

from cogflow.pipeline.sample_data import (
    COLOURS,
    MANIFEST_COLUMNS,
    SHAPES,
    VideoSpec,
    generate_sample_data,
    plan_videos,
    render_frame,
)
from cogflow.pipeline.video import probe

SHORT = {"min_duration_s": 2.0, "max_duration_s": 3.0}
EXPECTED_CODEC = {"mp4": "h264", "webm": "vp9", "avi": "mpeg4"}
HAN = re.compile(r"[\u4e00-\u9fff]")


def read_manifest(path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    calls = []
    manifest = generate_sample_data(out, 6, seed=0, progress=lambda i, n: calls.append((i, n)), **SHORT)
    return out, manifest, calls


def test_generates_videos_and_manifest(generated):
    out, manifest, calls = generated
    assert manifest == out / "manifest.csv"
    assert calls == [(i, 6) for i in range(1, 7)]
    with open(manifest, encoding="utf-8", newline="") as f:
        assert next(csv.reader(f)) == MANIFEST_COLUMNS
    rows = read_manifest(manifest)
    assert len(rows) == 6
    assert len(list((out / "videos").iterdir())) == 6

    truth = [json.loads(line) for line in (out / "ground_truth.jsonl").read_text(encoding="utf-8").splitlines()]
    specs = [VideoSpec(**{k: v for k, v in t.items() if k != "video"}) for t in truth]
    assert specs == plan_videos(6, seed=0, **SHORT)

    for row, spec in zip(rows, specs):
        assert row["video"] == f"videos/{spec.name}.{spec.fmt}"
        assert float(row["start_s"]) == 0 and float(row["end_s"]) == pytest.approx(spec.duration_s)
        assert row["caption"] == spec.caption
        result = probe(out / row["video"], max_width=10_000, max_height=10_000, max_pixels=10**8)
        assert (result.width, result.height) == (spec.width, spec.height) == (int(row["width"]), int(row["height"]))
        assert result.fps == pytest.approx(spec.fps, abs=0.01)
        assert int(row["fps"]) == spec.fps
        assert result.duration_s == pytest.approx(spec.duration_s, abs=0.1)
        assert result.codec == EXPECTED_CODEC[spec.fmt] == row["codec"]
        assert 2.0 - 0.05 <= spec.duration_s <= 3.0 + 0.05

    assert {s.fmt for s in specs} == {"mp4", "webm", "avi"}
    assert any(s.height > s.width for s in specs) and any(s.width > s.height for s in specs)
    assert {s.language for s in specs} == {"zh", "en"}


def test_captions_name_colour_and_shape(generated):
    _, manifest, _ = generated
    for row in read_manifest(manifest):
        if row["language"] == "zh":
            assert HAN.search(row["caption"])
            assert COLOURS[row["colour"]][1] in row["caption"]
            assert SHAPES[row["shape"]][0] in row["caption"]
        else:
            assert not HAN.search(row["caption"])
            assert f"{row['colour']} {row['shape']}" in row["caption"]
            assert f"{row['background']} background" in row["caption"]


def test_same_seed_same_bytes(tmp_path):
    a = generate_sample_data(tmp_path / "a", 3, seed=7, workers=2, **SHORT)  # encoded by two processes
    b = generate_sample_data(tmp_path / "b", 3, seed=7, workers=1, **SHORT)  # ... and by this one
    assert a.read_bytes() == b.read_bytes()
    videos = sorted(p.name for p in (a.parent / "videos").iterdir())
    assert {v.rsplit(".", 1)[1] for v in videos} == {"mp4", "webm", "avi"}
    # WebM and AVI bytes too (muxed bitexact: no dates, no random segment ids), so their video_ids and val split
    # are the same from run to run. x264's output was seen to differ in size after some other tests had run in
    # the same process, so MP4 is left out here.
    for name in (v for v in videos if not v.endswith(".mp4")):
        assert (a.parent / "videos" / name).read_bytes() == (b.parent / "videos" / name).read_bytes(), name
    assert (a.parent / "ground_truth.jsonl").read_bytes() == (b.parent / "ground_truth.jsonl").read_bytes()
    assert plan_videos(12, seed=7) == plan_videos(12, seed=7)
    assert plan_videos(12, seed=7) != plan_videos(12, seed=8)


def test_rerun_replaces_files_and_leaves_no_temporaries(tmp_path):
    first = generate_sample_data(tmp_path, 3, seed=1, **SHORT).read_bytes()
    second = generate_sample_data(tmp_path, 3, seed=1, **SHORT).read_bytes()
    assert first == second
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["ground_truth.jsonl", "manifest.csv", "sample_0000.mp4", "sample_0001.webm", "sample_0002.avi"]


def test_failed_encode_leaves_old_video_and_no_temporary(tmp_path, monkeypatch):
    generate_sample_data(tmp_path, 1, seed=2, **SHORT)
    video = tmp_path / "videos" / "sample_0000.mp4"
    before = video.read_bytes()

    def crash(path, frames, fps, fmt):
        with open(path, "wb") as f:
            f.write(b"half a video")
        raise RuntimeError("encoder died")

    monkeypatch.setattr("cogflow.pipeline.sample_data.encode_video", crash)
    with pytest.raises(RuntimeError):
        generate_sample_data(tmp_path, 1, seed=2, **SHORT)
    assert video.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["sample_0000.mp4"]


def _spec(shape: str, motion: str) -> VideoSpec:
    return VideoSpec(
        name="t",
        shape=shape,
        colour="red",
        motion=motion,
        background="black",
        fps=25,
        width=320,
        height=240,
        duration_s=4.0,
        fmt="mp4",
        language="en",
        caption="",
    )


def _mask(frame: np.ndarray, colour: str) -> np.ndarray:
    return np.abs(frame.astype(int) - COLOURS[colour][0]).max(axis=-1) <= 10


def _centroid(frame: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(_mask(frame, "red"))
    return float(xs.mean()), float(ys.mean())


def _area(spec: VideoSpec, t: float) -> int:
    return int(_mask(render_frame(spec, t), "red").sum())


@pytest.mark.parametrize("shape", list(SHAPES))
def test_render_frame_motion(shape):
    right = _spec(shape, "left_to_right")
    start, end = render_frame(right, 0.0), render_frame(right, right.duration_s)
    assert start.shape == (240, 320, 3) and start.dtype == np.uint8
    assert _mask(start, "red").sum() > 0.02 * 240 * 320  # clearly visible, not a speck
    assert _centroid(end)[0] > _centroid(start)[0] + 100

    up = _spec(shape, "up")
    assert _centroid(render_frame(up, up.duration_s))[1] < _centroid(render_frame(up, 0.0))[1] - 50

    grow = _spec(shape, "growing")
    assert _area(grow, grow.duration_s) > 2 * _area(grow, 0.0)
    shrink = dataclasses.replace(grow, motion="shrinking")
    assert _area(shrink, 0.0) > 2 * _area(shrink, shrink.duration_s)

    # Every pixel is either background or shape colour: nothing else leaks into the ground truth.
    frame = render_frame(right, 1.0)
    assert (_mask(frame, "red") | (frame.max(axis=-1) == 0)).all()
