"""Writing videos with PyAV: the sample world's files and generated videos (pipeline/video.py reads them).

The two are the only modules that import PyAV: reading (probe, scan, clip frames) there, writing here.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np

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
    # bitexact: no muxer dates or random segment ids, so the same frames give the same bytes (and the same video_id)
    with av.open(str(path), "w", format=fmt, options={"fflags": "+bitexact"}) as container:
        stream = None
        for frame in frames:
            if stream is None:
                height, width = frame.shape[:2]
                # every codec of ENCODERS is a video codec
                stream = cast(
                    "av.video.stream.VideoStream", container.add_stream(codec, rate=rate, options=dict(options))
                )
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError("encode_video needs at least one frame")
        for packet in stream.encode():
            container.mux(packet)
    return path


def encode_lossless(frames: np.ndarray, fps: float) -> bytes:
    """(T, H, W, 3) uint8 RGB -> MP4 bytes that decode to exactly these frames: H.264 in RGB (libx264rgb) at qp 0,
    at `fps` (a clip's 0.25 to 8). For exported clips (pipeline/export.py)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = cast(
            "av.video.stream.VideoStream",
            container.add_stream(
                "libx264rgb", rate=Fraction(fps).limit_denominator(1000), options={"qp": "0", "preset": "veryfast"}
            ),
        )
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


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
