"""cogflow.pipeline.video.sample_windows and pipeline.decoder: the right frame for every instant, from real files.

Every test video carries its frame index in its pixels (tests/real_world.py), so a test checks which frame
a window picked, that it came out upright, and that the crop took the centre of the displayed picture.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from real_world import (
    Footage,
    broken_mid_stream_mp4,
    cfr_mp4,
    code_frame,
    long_mp4,
    read_code,
    write_frames,
)

from cogflow.pipeline.decoder import DecodeJob, Decoder
from cogflow.pipeline.video import (
    DecodeStats,
    WindowFailed,
    WindowFrames,
    file_sha256,
    sample_windows,
)


def windows_over(footage: Footage, fps: float, count: int = 3) -> list[list[float]]:
    """`count` windows at `fps` spread over the footage, at instants that fall between source frames."""
    span = footage.times[-1]
    starts = np.linspace(0.013, span - 4 / fps - 0.013, count)
    return [[round(s + k / fps, 6) for k in range(5)] for s in starts]


def collect(
    items: Iterator[WindowFrames | WindowFailed | DecodeStats],
) -> tuple[dict[int, WindowFrames], dict[int, WindowFailed], DecodeStats]:
    ok, failed, stats = {}, {}, None
    for item in items:
        if isinstance(item, WindowFrames):
            ok[item.index] = item
        elif isinstance(item, WindowFailed):
            failed[item.index] = item
        else:
            stats = item
    assert stats is not None
    return ok, failed, stats


def sample(
    path: Path, windows: list[list[float]], **kw: object
) -> tuple[dict[int, WindowFrames], dict[int, WindowFailed], DecodeStats]:
    ok, failed, stats = collect(sample_windows(path, windows, **kw))
    assert len(ok) + len(failed) == len(windows)
    return ok, failed, stats


def assert_picked_nearest(footage: Footage, windows: list[list[float]], ok: dict[int, WindowFrames]) -> None:
    for w, result in ok.items():
        assert result.frames.shape == (5, 160, 160, 3) and result.frames.dtype == np.uint8
        codes = [read_code(frame) for frame in result.frames]
        expected = [footage.expected_index(t) for t in windows[w]]
        assert [c.index for c in codes] == expected, (footage.notes, windows[w])
        assert all(c.upright and c.edges for c in codes), (footage.notes, codes)
        assert list(result.times) == pytest.approx([footage.times[i] for i in expected], abs=1e-3)


@pytest.mark.parametrize(
    "name", ["cfr", "vfr", "mpegts", "high_fps", "phone90", "phone270", "theora", "interlaced", "liar"]
)
@pytest.mark.parametrize("fps", [1, 8])
def test_every_instant_gets_the_nearest_frame_upright_and_centred(real_world: dict, name: str, fps: int) -> None:
    footage = real_world[name]
    windows = windows_over(footage, fps) if footage.times[-1] > 4 / fps + 0.03 else windows_over(footage, 4)
    ok, failed, stats = sample(footage.path, windows)
    assert_picked_nearest(footage, windows, ok)
    assert stats.frames_decoded <= len(footage.times)
    if name in ("vfr", "theora") and fps == 8:
        # windows that fall in a pause (or between Theora's 5 real frames a second) are refused, not padded
        # with stale frames
        assert {f.reason for f in failed.values()} <= {"frame_gap"}
    else:
        assert not failed


def test_quirks_are_really_there(real_world: dict) -> None:
    """The corpus is what it claims to be, as FFmpeg reports it."""

    def opened(name: str) -> dict:
        with av.open(str(real_world[name].path)) as c:
            s = c.streams.video[0]
            frame = next(c.decode(s))
            return {
                "format": c.format.name,
                "codec": s.codec_context.name,
                "sar": s.sample_aspect_ratio,
                "start": float(s.start_time * s.time_base),
                "rate": s.average_rate,
                "interlaced": frame.interlaced_frame,
                "rotation": frame.rotation,
            }

    interlaced = opened("interlaced")
    assert interlaced["interlaced"] and interlaced["sar"] == Fraction(8, 9) and interlaced["start"] > 0
    mpegts = opened("mpegts")
    assert mpegts["format"] == "mpegts" and mpegts["start"] >= 10.0
    theora = opened("theora")
    assert theora["format"] == "ogg" and theora["codec"] == "theora" and theora["rate"] is None
    assert opened("phone90")["rotation"] == 90 and opened("phone270")["rotation"] == -90
    steps = np.diff(real_world["vfr"].times)
    assert steps.max() / steps.min() > 20
    with av.open(str(real_world["theora"].path)) as c:
        sizes = [p.size for p in c.demux(c.streams.video[0]) if p.pts is not None]
    assert sizes.count(0) == 80 and len(sizes) == 100
    # ...which is why decoding them naively fails: an empty packet reads as the end of the stream
    with av.open(str(real_world["theora"].path)) as c, pytest.raises(av.error.FFmpegError):
        for _ in c.decode(video=0):
            pass


def test_decoding_stops_after_the_last_needed_frame(real_world: dict) -> None:
    footage = real_world["cfr"]  # 100 frames at 25 fps
    ok, _, stats = sample(footage.path, [[0.1, 0.2, 0.3, 0.4, 0.5]])
    assert_picked_nearest(footage, [[0.1, 0.2, 0.3, 0.4, 0.5]], ok)
    assert stats.frames_decoded <= 14 + 8  # frames up to 0.52 s, plus what threaded decoding holds in flight


def test_a_span_deep_in_a_long_video_is_reached_by_seeking(tmp_path: Path) -> None:
    footage = long_mp4(tmp_path / "long.mp4")  # 60 s at 5 fps, a keyframe every 5 s
    windows = [[46.0, 48.0, 50.0, 52.0, 54.0], [54.5, 54.75, 55.0, 55.25, 55.5]]
    ok, failed, stats = sample(footage.path, windows)
    assert not failed
    assert_picked_nearest(footage, windows, ok)
    assert stats.seeks == 1 and stats.frames_decoded < 60  # not the 280 frames before 56 s
    # spans far apart: a second seek skips the gap between them
    windows = [[1.0, 1.2, 1.4, 1.6, 1.8], [40.0, 40.2, 40.4, 40.6, 40.8]]
    ok, _, stats = sample(footage.path, windows)
    assert_picked_nearest(footage, windows, ok)
    assert stats.seeks == 1 and stats.frames_decoded < 80
    ok, _, stats = sample(footage.path, windows, seek_gap_s=1000)
    assert_picked_nearest(footage, windows, ok)
    assert stats.seeks == 0 and stats.frames_decoded > 200


def test_a_video_that_ends_early_keeps_the_windows_it_has(real_world: dict) -> None:
    footage = real_world["cfr"]  # frames up to 3.96 s
    windows = [[3.5, 3.6, 3.7, 3.8, 3.9], [3.6, 3.7, 3.8, 3.9, 3.98], [3.7, 3.8, 3.9, 4.0, 4.1]]
    ok, failed, _ = sample(footage.path, windows)
    assert set(ok) == {0, 1}  # 3.98 lies inside the last frame's display time
    assert failed[2].reason == "video_ended_early" and "3.960 s" in failed[2].detail


def test_a_stream_that_breaks_keeps_the_windows_decoded_before(tmp_path: Path) -> None:
    footage = broken_mid_stream_mp4(tmp_path / "broken.mp4")
    windows = [[0.0, 0.2, 0.4, 0.6, 0.8], [1.0, 1.2, 1.4, 1.6, 1.8], [3.0, 3.2, 3.4, 3.6, 3.8]]
    ok, failed, _ = sample(footage.path, windows)
    assert set(ok) == {0, 1}
    assert_picked_nearest(footage, windows, ok)
    assert failed[2].reason == "decode_error" and "broke after" in failed[2].detail


def test_downscaling_is_antialiased(tmp_path: Path) -> None:
    """One-pixel stripes shrunk 4.5x average to gray (a ripple of +-15 from the odd ratio is left); point
    sampling would keep black and white stripes (a deviation near 128)."""
    stripes = np.zeros((720, 1280, 3), np.uint8)
    stripes[:, ::2] = 255
    path = write_frames(tmp_path / "stripes.mp4", [stripes] * 5, rate=5, options={"crf": "0", "preset": "ultrafast"})
    ok, _, _ = sample(path, [[0.0, 0.2, 0.4, 0.6, 0.8]])
    frame = ok[0].frames[2].astype(float)
    assert abs(frame.mean() - 127.5) < 10 and frame.std() < 20


def test_small_and_portrait_videos_fill_160x160(tmp_path: Path) -> None:
    small = cfr_mp4(tmp_path / "small.mp4", 1.0, 25, size=(112, 80))  # upscaled
    tall = cfr_mp4(tmp_path / "tall.mp4", 1.0, 25, size=(240, 640))
    for footage in (small, tall):
        windows = [[0.0, 0.2, 0.4, 0.6, 0.8]]
        ok, _, _ = sample(footage.path, windows)
        assert_picked_nearest(footage, windows, ok)


# ---------------------------------------------------------------------------------------------------------------
# The decoder process


def results(decoder: Decoder, job: DecodeJob, timeout_s: float = 30) -> tuple[dict, dict, DecodeStats]:
    return collect(decoder.run(job, timeout_s))


def test_the_decoder_process_checks_the_file_is_the_one_ingested(real_world: dict, tmp_path: Path) -> None:
    footage = real_world["cfr"]
    windows = windows_over(footage, 2)
    sha = file_sha256(footage.path)[0]
    with Decoder() as decoder:
        ok, failed, stats = results(decoder, DecodeJob(str(footage.path), windows, sha256=sha))
        assert len(ok) == 3 and not failed and stats.frames_decoded > 0
        assert_picked_nearest(footage, windows, ok)
        _, failed, _ = results(decoder, DecodeJob(str(footage.path), windows, sha256="0" * 64))
        assert {f.reason for f in failed.values()} == {"video_changed"} and len(failed) == 3
        _, failed, _ = results(decoder, DecodeJob(str(tmp_path / "gone.mp4"), windows))
        assert {f.reason for f in failed.values()} == {"missing_file"}


@pytest.fixture
def stalled_video(tmp_path: Path) -> Iterator[tuple[Footage, Path]]:
    """A FIFO that delivers the first half of a streamable MP4, then nothing: a decoder reading it blocks
    inside FFmpeg's read, as on a stalled network mount. Yields the footage and the FIFO."""
    footage = cfr_mp4(tmp_path / "streamable.mp4", container_options={"movflags": "faststart"})  # index first
    data = footage.path.read_bytes()
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    release = threading.Event()

    def writer() -> None:
        with open(fifo, "wb") as f:  # blocks until the decoder opens it
            f.write(data[: len(data) // 2])
            f.flush()
            release.wait(60)  # keep the pipe open without writing: a read that never returns

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    yield footage, fifo
    release.set()
    thread.join(5)


STALL_WINDOWS = [[0.0, 0.1, 0.2, 0.3, 0.4], [3.5, 3.6, 3.7, 3.8, 3.9]]  # before and after the stall


def test_a_decoder_that_hangs_is_stopped_and_the_windows_before_are_kept(stalled_video) -> None:
    footage, fifo = stalled_video
    with Decoder() as decoder:
        started = time.monotonic()
        ok, failed, _ = results(decoder, DecodeJob(str(fifo), STALL_WINDOWS), timeout_s=3)
        assert 3 <= time.monotonic() - started < 15
        assert set(ok) == {0}
        assert_picked_nearest(footage, STALL_WINDOWS, ok)
        assert failed[1].reason == "decode_timeout" and "stopped" in failed[1].detail
        # the next video gets a fresh decoder
        ok2, failed2, _ = results(decoder, DecodeJob(str(footage.path), STALL_WINDOWS))
        assert set(ok2) == {0, 1} and not failed2


def test_a_decoder_that_crashes_costs_only_its_video(stalled_video, real_world: dict) -> None:
    footage, fifo = stalled_video
    with Decoder() as decoder:
        seen = []
        for item in decoder.run(DecodeJob(str(fifo), STALL_WINDOWS), 30):
            seen.append(item)
            if len(seen) == 1:  # the first window is out, the decoder is blocked before the second
                os.kill(decoder._proc.pid, 9)  # a segfault inside a codec looks the same from here
        assert isinstance(seen[0], WindowFrames) and seen[0].index == 0
        assert isinstance(seen[1], WindowFailed) and seen[1].index == 1 and seen[1].reason == "decoder_crashed"
        assert "exit code -9" in seen[1].detail and isinstance(seen[2], DecodeStats) and len(seen) == 3
        other = real_world["vfr"]
        ok, failed, _ = results(decoder, DecodeJob(str(other.path), windows_over(other, 1)))
        assert len(ok) == 3 and not failed


def test_sparse_keyframes_are_not_sought_again_and_again(tmp_path: Path) -> None:
    """One keyframe in 30 s: every seek lands on it, behind frames already decoded. Seeking stops paying, so the
    sampler decodes straight on instead of going back to the start for every window."""
    footage = cfr_mp4(
        tmp_path / "one_keyframe.mp4", 30.0, 10, size=(160, 120), options={"g": "1000", "keyint_min": "1000"}
    )
    windows = [[t + 0.2 * k for k in range(5)] for t in range(3, 28, 3)]  # 9 windows, 3 s apart
    ok, failed, stats = sample(footage.path, windows, seek_gap_s=2.5)
    assert not failed
    assert_picked_nearest(footage, windows, ok)
    # one seek lands behind and teaches that seeking does not pay here: at most one pass is wasted, where
    # seeking on would go back to the start for each of the 9 windows (about 1,400 frames)
    assert stats.seeks <= 2 and stats.frames_decoded < 2 * len(footage.times)


def test_a_stream_without_a_start_time_is_timed_from_its_first_frame(tmp_path: Path) -> None:
    """A raw MPEG-2 stream has no container clock: the first frame sets it, before any seek."""
    from real_world import ffmpeg_encode

    n, fps = 500, 25
    path = ffmpeg_encode(
        tmp_path / "raw.m2v",
        [code_frame(i, 320, 240) for i in range(n)],
        str(fps),
        "-c:v",
        "mpeg2video",
        "-g",
        "25",
        "-q:v",
        "2",
        "-f",
        "mpeg2video",
    )
    with av.open(str(path)) as c:
        assert c.streams.video[0].start_time is None
    footage = Footage(path, [i / fps for i in range(n)], "raw MPEG-2")
    windows = [[1.0, 1.2, 1.4, 1.6, 1.8], [15.0, 15.2, 15.4, 15.6, 15.8]]
    ok, failed, stats = sample(path, windows)
    assert not failed and stats.seeks == 1
    assert_picked_nearest(footage, windows, ok)


def test_a_picture_thinner_than_8_to_1_is_refused_not_blown_up(tmp_path: Path) -> None:
    strip = write_frames(tmp_path / "strip.mp4", [np.full((160, 16, 3), 128, np.uint8)] * 10, rate=10)
    _, failed, _ = sample(strip, [[0.0, 0.2, 0.4, 0.6, 0.8]])
    assert failed[0].reason == "decode_error" and "more than 8:1" in failed[0].detail
    from cogflow.pipeline.video import ProbeError, probe

    with pytest.raises(ProbeError, match="aspect_ratio_over_limit"):
        probe(strip, max_width=7680, max_height=7680, max_pixels=10**8)
