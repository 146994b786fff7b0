"""A corpus of legitimate-but-odd videos and of truly truncated ones, written at test time with PyAV.

The odd files are what real cameras and muxers write: headers whose frame count or frame rate disagrees with
the packets, dropped-frame markers, variable frame rates. Every player plays them to the end, so a probe must
accept them with the extent their packets show. The truncated files were really cut (or their end never
arrived), and a probe must say so. Where PyAV cannot write the quirk, the written file is edited byte by byte
at a documented offset, and the builder checks the edit landed.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def moving_frames(n: int, size: int = 64) -> list[np.ndarray]:
    """Frames that change over time (so the encoder emits real data for each), RGB uint8."""
    ys, xs = np.mgrid[0:size, 0:size]
    return [
        np.stack([(xs * 4 + 5 * i) % 256, (ys * 4) % 256, np.full_like(xs, (7 * i) % 256)], -1).astype(np.uint8)
        for i in range(n)
    ]


def encode_timed(
    path: Path, fmt: str, codec: str, rate: Fraction | int, times: list[int], options: dict[str, str] | None = None
) -> Path:
    """Encode one frame per entry of `times`, each at that pts in units of 1/`rate` (gaps allowed)."""
    frames = moving_frames(len(times))
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1) / Fraction(rate)
        for pts, image in zip(times, frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = pts
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---------------------------------------------------------------------------------------------------------------
# AVI (RIFF) structure


def riff_chunks(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(id, offset of the chunk header, data size) of the chunks between `start` and `end`."""
    chunks, pos = [], start
    while pos + 8 <= end:
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        chunks.append((cid, pos, size))
        pos += 8 + size + (size & 1)
    return chunks


def avi_movi_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """The frame chunks ('00dc', ...) inside the 'movi' list, in file order."""
    movi = data.find(b"LIST", 12)
    while data[movi + 8 : movi + 12] != b"movi":
        movi = data.find(b"LIST", movi + 4)
    size = struct.unpack("<I", data[movi + 4 : movi + 8])[0]
    return riff_chunks(data, movi + 12, movi + 8 + size)


def avi_idx1_sizes(data: bytes) -> list[int]:
    """The frame sizes the legacy 'idx1' index lists (16 bytes an entry: id, flags, offset, size)."""
    at = data.rfind(b"idx1")
    count = struct.unpack("<I", data[at + 4 : at + 8])[0] // 16
    return [struct.unpack("<I", data[at + 8 + 16 * k + 12 : at + 8 + 16 * k + 16])[0] for k in range(count)]


def avi_header_frames(data: bytes) -> tuple[int, int]:
    """(avih dwTotalFrames, strh dwLength): the two frame counts an AVI header states."""
    avih, strh = data.find(b"avih"), data.find(b"strh")
    return struct.unpack("<I", data[avih + 24 : avih + 28])[0], struct.unpack("<I", data[strh + 40 : strh + 44])[0]


def set_avi_header_frames(path: Path, frames: int) -> Path:
    """Overwrite both header frame counts, as a writer that pre-writes the count it planned to record does."""
    data = bytearray(path.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    assert data[strh + 8 : strh + 12] == b"vids"  # the video stream's header comes first
    data[avih + 24 : avih + 28] = struct.pack("<I", frames)  # avih data + 16: dwTotalFrames
    data[strh + 40 : strh + 44] = struct.pack("<I", frames)  # strh data + 32: dwLength
    path.write_bytes(bytes(data))
    assert avi_header_frames(bytes(data)) == (frames, frames)
    return path


def avi_with_header_count(path: Path, frames: int, header_frames: int) -> Path:
    """An MPEG-4 AVI of `frames` frames at 25 fps whose header claims `header_frames`."""
    return set_avi_header_frames(encode_timed(path, "avi", "mpeg4", 25, list(range(frames))), header_frames)


def avi_with_dropped_frame(path: Path) -> Path:
    """The scientific-camera file: VP9 in AVI at 187 fps, a header of 300 frames, 296 index entries, one of them
    empty (a dropped-frame marker: the camera skipped a frame and AVI, which has no timestamps, keeps the beat
    with a zero-size chunk). FFmpeg's AVI muxer writes that chunk itself for the gap in the pts."""
    times = [k for k in range(296) if k != 150]
    encode_timed(path, "avi", "libvpx-vp9", 187, times, {"deadline": "realtime", "cpu-used": "8"})
    set_avi_header_frames(path, 300)
    data = path.read_bytes()
    sizes = avi_idx1_sizes(data)
    assert len(sizes) == 296 and sizes.count(0) == 1, "the corpus file must hold exactly one dropped-frame marker"
    return path


# ---------------------------------------------------------------------------------------------------------------
# MP4 and WebM


def vfr_mp4(path: Path) -> tuple[Path, list[int]]:
    """A phone-style variable-rate H.264 MP4 (time base 1/1000): frames 33 or 34 ms apart (30 fps) with a
    0.5 s stall in the middle, as a phone writes in low light. Returns the path and the frame times in ms."""
    times, t = [], 0
    for k in range(60):
        times.append(t)
        t += 500 if k == 29 else (34 if k % 3 == 2 else 33)
    return encode_timed(path, "mp4", "libx264", 1000, times, {"preset": "veryfast"}), times


def webm_claiming_fps(path: Path, frames: int, fps: int, claimed_fps: int) -> Path:
    """A VP9 WebM whose Matroska DefaultDuration (the header's frame duration) claims `claimed_fps`, while
    its block timestamps hold `frames` frames at `fps`."""
    encode_timed(path, "webm", "libvpx-vp9", fps, list(range(frames)), {"deadline": "realtime", "cpu-used": "8"})
    data = bytearray(path.read_bytes())
    at = data.find(b"\x23\xe3\x83")  # EBML id of Tracks/TrackEntry/DefaultDuration (nanoseconds)
    assert at > 0
    size = data[at + 3] & 0x7F  # a one-byte size (0x8N)
    data[at + 4 : at + 4 + size] = (10**9 // claimed_fps).to_bytes(size, "big")
    path.write_bytes(bytes(data))
    return path


def faststart_mp4(path: Path, frames: int = 50, fps: int = 25) -> Path:
    """An H.264 MP4 with its moov (the frame index) before the media data, as streaming servers publish them."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for image in moving_frames(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")
    return path


def mp4_sample_offsets(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of every sample the MP4's index lists, in file order (read through FFmpeg's index)."""
    with av.open(str(path)) as container:
        return sorted((e.pos, e.size) for e in container.streams.video[0].index_entries)


def write_cut(source: Path, dest: Path, at: int) -> Path:
    """The first `at` bytes of `source`: a download that stopped there."""
    dest.write_bytes(source.read_bytes()[:at])
    return dest


def write_zero_tail(source: Path, dest: Path, keep: int) -> Path:
    """`source` with every byte from `keep` on zeroed: a download into a pre-allocated file (as download
    managers and torrent clients write) that stopped there. The size and the index are intact."""
    data = source.read_bytes()
    dest.write_bytes(data[:keep] + bytes(len(data) - keep))
    return dest
