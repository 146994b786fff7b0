"""Video probing, decoding and encoding: the only module in cogflow that imports `av` (PyAV).

Probing trusts nothing in the header that it can check cheaply: the frame count and duration come from the
demuxed packets (no decoding), and the first frame is decoded to prove the stream is decodable at all.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

HASH_CHUNK = 1 << 20


class ProbeError(Exception):
    """A video that cannot be accepted; `reason` is the reject code recorded in the lake."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ProbeResult:
    sha256: str
    bytes: int
    container: str
    codec: str
    width: int
    height: int
    fps: float
    duration_s: float
    frame_count: int
    rotation: int  # degrees from the display matrix (phone videos); frames must be turned upright on decode
    header_duration_s: float | None  # what the container claimed, kept to spot liars

    def as_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: str | Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _header_duration(container: "av.container.InputContainer", stream: "av.video.stream.VideoStream") -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _rotation(stream: "av.video.stream.VideoStream") -> int:
    # PyAV exposes the display matrix through side data on newer builds and through metadata on older files.
    rotate = stream.metadata.get("rotate")
    if rotate is not None:
        try:
            return int(float(rotate)) % 360
        except ValueError:
            return 0
    try:
        for side in stream.side_data or []:
            if "DISPLAYMATRIX" in str(getattr(side, "type", "")).upper():
                return int(round(-side.to_dict().get("rotation", 0))) % 360  # pragma: no cover - build dependent
    except Exception:  # side data API differs across PyAV builds; rotation is advisory at probe time
        pass
    return 0


def probe(path: str | Path, *, max_width: int, max_height: int, max_pixels: int) -> ProbeResult:
    """Open, check and measure one local video file. Raises ProbeError with a reject reason.

    Resolution limits are checked from the header before a single frame is decoded, so a decompression bomb
    (a tiny file that declares enormous frames) never allocates its frames.
    """
    path = Path(path)
    sha256, size = file_sha256(path)
    if size == 0:
        raise ProbeError("empty_file", "the file has 0 bytes")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise ProbeError("unreadable_container", str(exc)) from exc
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise ProbeError("no_video_stream", f"streams present: {', '.join(kinds)}")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise ProbeError("unreadable_container", f"video stream declares {width}x{height}")
        if width > max_width or height > max_height or width * height > max_pixels:
            raise ProbeError(
                "resolution_over_limit",
                f"{width}x{height} exceeds the limit ({max_width}x{max_height}, {max_pixels} pixels)",
            )
        header_duration = _header_duration(container, stream)
        time_base = stream.time_base or Fraction(1, 1000)

        # Demux (no decode) to count frames and find the real extent: headers of truncated or re-muxed files lie.
        frame_count, indexed, first_pts, end_pts = 0, 0, None, None
        try:
            for packet in container.demux(stream):
                if packet.pts is None and packet.dts is None:
                    continue  # the demuxer's final flush packet
                indexed += 1
                if packet.is_corrupt:  # FFmpeg flags a packet the file ends inside of
                    raise ProbeError("truncated_container", f"the file ends inside frame {indexed} of {stream.frames or '?'}")
                if packet.size == 0:
                    continue  # empty packets (AVI dummy frames, Ogg) are not frames
                ts = packet.pts if packet.pts is not None else packet.dts
                first_pts = ts if first_pts is None else min(first_pts, ts)
                end = ts + (packet.duration or 0)
                end_pts = end if end_pts is None else max(end_pts, end)
                frame_count += 1
        except av.error.FFmpegError as exc:
            raise ProbeError("truncated_container", f"demuxing stopped after {frame_count} frames: {exc}") from exc
        if frame_count == 0:
            raise ProbeError("no_frames", "the video stream holds no frames")
        # MP4 and AVI index every frame up front: frames the index lists but the file no longer holds mean
        # the file was cut short (an interrupted download), even though the demuxer stopped without an error.
        if stream.frames and indexed < stream.frames:
            raise ProbeError("truncated_container", f"the index lists {stream.frames} frames, the file holds {indexed}")

        rate = stream.average_rate or stream.guessed_rate
        demuxed_duration = float((end_pts - first_pts) * time_base) if end_pts is not None else 0.0
        if demuxed_duration <= 0 and rate:
            demuxed_duration = frame_count / float(rate)
        fps = float(rate) if rate else (frame_count / demuxed_duration if demuxed_duration > 0 else 0.0)
        if not math.isfinite(fps) or fps <= 0:
            raise ProbeError("unreadable_container", "no frame rate in the header and none derivable")
        if demuxed_duration <= 0 and frame_count == 1:
            demuxed_duration = 1.0 / fps
        duration = demuxed_duration  # the packets are the truth: headers of re-muxed files lie
        _decode_first_frame(path)
        return ProbeResult(
            sha256=sha256,
            bytes=size,
            container=container.format.name,
            codec=stream.codec_context.name,
            width=width,
            height=height,
            fps=round(fps, 6),
            duration_s=round(duration, 6),
            frame_count=frame_count,
            rotation=_rotation(stream),
            header_duration_s=None if header_duration is None else round(header_duration, 6),
        )
    finally:
        container.close()


def _decode_first_frame(path: Path) -> None:
    """Decode one frame to prove the codec can read the stream (a renamed text file can still 'open')."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            for _frame in container.decode(video=0):
                return
    except av.error.FFmpegError as exc:
        raise ProbeError("undecodable_stream", str(exc)) from exc
    raise ProbeError("undecodable_stream", "no frame could be decoded")


# ---------------------------------------------------------------------------------------------------------------
# Encoding (sample data, generated videos)

# container format -> (codec, file suffix, encoder options)
ENCODERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "mp4": ("libx264", ".mp4", {"preset": "veryfast", "crf": "23"}),
    "webm": ("libvpx-vp9", ".webm", {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"}),
    "avi": ("mpeg4", ".avi", {"qscale": "4"}),
}


def encode_video(path: str | Path, frames: Iterable[np.ndarray], fps: Fraction | int | float, fmt: str = "mp4") -> Path:
    """Encode RGB uint8 frames (H, W, 3) into `path` with the container/codec pair named by `fmt`.

    Width and height must be even (yuv420p). The caller decides the file name; the suffix is not checked.
    """
    codec, _suffix, options = ENCODERS[fmt]
    rate = Fraction(fps).limit_denominator(1001)
    path = Path(path)
    with av.open(str(path), "w", format=fmt) as container:
        stream = None
        for frame in frames:
            if stream is None:
                height, width = frame.shape[:2]
                stream = container.add_stream(codec, rate=rate, options=dict(options))
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError("encode_video needs at least one frame")
        for packet in stream.encode():
            container.mux(packet)
    return path


def encode_audio_only(path: str | Path, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """A file with an audio stream and no video stream (a common bad input: a podcast in a video manifest)."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        n = int(seconds * sample_rate)
        t = np.arange(n, dtype=np.float32) / sample_rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, n, frame_size):
            chunk = samples[:, start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
