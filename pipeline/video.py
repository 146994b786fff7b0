"""Reading videos: probing, the scan's small frames and clip frames. With pipeline/encode.py (writing), the only
modules in cogflow that import `av` (PyAV).

Probing trusts nothing in the header that it can check cheaply: the frame count, duration and frame rate come
from the demuxed packets' timestamps, the first frame is decoded to prove the stream is decodable at all, and
a file is called truncated only on evidence that its bytes were cut (see _cut_evidence), never because a
header's frame count disagrees with the packets.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import av.video.reformatter
import numpy as np

from cogflow.pipeline.containers import ebml_cluster_cut, riff_movi_cut
from cogflow.pipeline.contract import CLIP_SIZE

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


def _header_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise degrees (0, 90, 180, 270) that turn a decoded frame upright (phone videos).

    FFmpeg exposes the container's display matrix (MP4 `tkhd`) as side data on every decoded frame.
    """
    try:
        return int(round(frame.rotation / 90.0)) * 90 % 360
    except (AttributeError, TypeError, ValueError):  # no display matrix
        return 0


# ---------------------------------------------------------------------------------------------------------------
# Measuring the packets, and judging whether the file was cut short

MAX_TAIL_BYTES = 64 << 20  # the last group of pictures is kept for a test decode up to this size (compressed)


@dataclass
class _Packets:
    """What demuxing the video stream found (no decoding)."""

    timestamps: list[int]  # of every frame (non-empty packet), sorted, in the stream's time base
    last_duration: int  # the last packet's own duration (used only when there are no two distinct times)
    tail: list[av.Packet] | None  # the packets from the last keyframe on; None when over MAX_TAIL_BYTES
    cut: str | None  # how the demuxer met the end of the file inside data, if it did


def _demux(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _Packets:
    timestamps: list[int] = []
    tail: list[av.Packet] | None = []
    tail_bytes, last_duration, cut = 0, 0, None
    try:
        for packet in container.demux(stream):
            if packet.pts is None and packet.dts is None:
                continue  # the demuxer's final flush packet
            if packet.is_corrupt:  # FFmpeg flags a packet it read short because the file ended inside it
                cut = f"the file ends inside frame {len(timestamps) + 1}, which starts at byte {packet.pos}"
                break
            if packet.size == 0:
                continue  # empty packets (AVI dropped-frame markers, Ogg repeats) are not frames
            ts = packet.pts if packet.pts is not None else packet.dts
            assert ts is not None  # a packet with neither was skipped above
            timestamps.append(ts)
            last_duration = packet.duration or 0
            if packet.is_keyframe:
                tail, tail_bytes = [], 0
            if tail is not None:
                tail.append(packet)
                tail_bytes += packet.size
                if tail_bytes > MAX_TAIL_BYTES:
                    tail = None  # a group of pictures this long is not held in memory for the test decode
    except av.error.FFmpegError as exc:
        cut = f"demuxing stopped after {len(timestamps)} frames: {exc}"
    timestamps.sort()  # decode order is not presentation order (B-frames)
    return _Packets(timestamps, last_duration, tail, cut)


def _typical_step(timestamps: list[int]) -> float | None:
    """The typical time between frames, in time-base units, from sorted frame timestamps (None: no two differ).

    The mean of the steps near the median step: the median ignores pauses and dropped frames (a step of two
    frames or a stall of seconds is not the stream's rate), the mean of its neighbours undoes the rounding of
    coarse time bases (30 fps in Matroska's milliseconds is steps of 33 and 34)."""
    steps = [b - a for a, b in zip(timestamps, timestamps[1:]) if b > a]
    if not steps:
        return None
    median = statistics.median(steps)
    near = [step for step in steps if 0.5 * median <= step <= 1.5 * median]
    return sum(near) / len(near)


def _cut_evidence(
    path: Path, size: int, format_name: str, stream: av.video.stream.VideoStream, packets: _Packets
) -> str | None:
    """Why the file must have been cut short, or None: evidence 1-3, about the bytes on disk (the fourth, frames
    that do not decode, is _last_frames_fail's, once the first frame has decoded).

    Never a header's frame count, duration or rate: real files disagree with their packets for many reasons
    (pre-written counts, dropped-frame markers, VFR, empty packets), and every player plays them to the end.
    """
    # 1. The demuxer met the end of the file inside a packet, or could not go on.
    if packets.cut is not None:
        return packets.cut
    # 2. The demuxer's index (MP4's sample table, AVI's idx1/OpenDML index, Matroska's Cues) places frames at
    # bytes the file does not have. It is written after the frames it lists, so these frames existed once; a
    # download cut between two frames leaves no half packet for step 1 to see.
    past = [e for e in stream.index_entries if e.pos >= 0 and e.pos + max(e.size, 1) > size]
    if past:
        return (
            f"{len(past)} of {len(stream.index_entries)} index entries point past the end of the file "
            f"({size} bytes), the first at byte {past[0].pos}"
        )
    # 3. The container's own framing says the frame data runs on past the end of the file (AVI's index is
    # written last and Matroska's Cues usually are, so a cut loses step 2's evidence with them).
    if format_name == "avi":
        with open(path, "rb") as f:
            if (cut := riff_movi_cut(f, size)) is not None:
                return cut
    elif format_name.startswith("matroska"):
        with open(path, "rb") as f:
            if (cut := ebml_cluster_cut(f, size)) is not None:
                return cut
    return None


def _last_frames_fail(stream: av.video.stream.VideoStream, tail: list[av.Packet] | None) -> str | None:
    """Evidence 4 (after the first frame proved the codec can read the stream): the last frames do not decode.

    Every byte is there, but not the ones written: a download into a pre-allocated file (as download managers
    and torrent clients write) that stopped has the right size and index, and zeros at its end. Decoding from
    the last keyframe costs one group of pictures; split decodes the whole video later anyway."""
    if not tail:
        return None
    try:
        for packet in tail:
            stream.decode(packet)
        stream.decode(None)  # drain the frames the decoder still holds
    except av.error.FFmpegError as exc:
        return f"the last {len(tail)} frames do not decode: {exc}"
    return None


def probe(
    path: str | Path, *, max_width: int, max_height: int, max_pixels: int, max_aspect_ratio: float = 8.0
) -> ProbeResult:
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
            kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
            raise ProbeError("no_video_stream", f"streams present: {', '.join(kinds)}")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # an MP4 cut inside its moov can leave a track without codec parameters
            raise ProbeError("unreadable_container", "the video stream has no codec parameters")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise ProbeError("unreadable_container", f"video stream declares {width}x{height}")
        if width > max_width or height > max_height or width * height > max_pixels:
            raise ProbeError(
                "resolution_over_limit",
                f"{width}x{height} exceeds the limit ({max_width}x{max_height}, {max_pixels} pixels)",
            )
        if max(width, height) > max_aspect_ratio * min(width, height):
            # A strip of a picture: no 160x160 centre of it shows what its caption says (and scaling its short
            # side to 160 would take gigabytes).
            raise ProbeError("aspect_ratio_over_limit", f"{width}x{height} is more than {max_aspect_ratio:g}:1")
        header_duration = _header_duration(container, stream)
        time_base = stream.time_base or Fraction(1, 1000)

        # Demux (no decode) to count frames and find the real extent: headers of real files disagree with their
        # packets (pre-written counts, dropped-frame markers, VFR), so the packets are the truth, and a file is
        # called truncated only on evidence that its bytes were cut (see _cut_evidence).
        packets = _demux(container, stream)
        if (cut := _cut_evidence(path, size, container.format.name, stream, packets)) is not None:
            raise ProbeError("truncated_container", cut)
        if not packets.timestamps:
            raise ProbeError("no_frames", "the video stream holds no frames")

        rate = stream.average_rate or stream.guessed_rate
        step = _typical_step(packets.timestamps)
        if step is not None:
            frame_s = float(step * time_base)
        elif packets.last_duration > 0:  # one frame (or all at one instant): its own duration, else the header rate
            frame_s = float(packets.last_duration * time_base)
        else:
            frame_s = 1.0 / float(rate) if rate else 0.0
        if not math.isfinite(frame_s) or frame_s <= 0:
            raise ProbeError("unreadable_container", "no frame rate in the header and none derivable")
        fps = 1.0 / frame_s  # the rate the packets show: a header claiming 10,000 fps over 2 s of 25 fps is 25
        # From the first frame to the end of the last, which is shown for a typical frame time: per-packet
        # durations are no better than the header where they come from it (Matroska's DefaultDuration).
        if step is not None:
            duration = float((packets.timestamps[-1] - packets.timestamps[0]) * time_base) + frame_s
        else:
            duration = len(packets.timestamps) * frame_s
        rotation = _decode_first_frame(path)
        if (cut := _last_frames_fail(stream, packets.tail)) is not None:
            raise ProbeError("truncated_container", cut)
        return ProbeResult(
            sha256=sha256,
            bytes=size,
            container=container.format.name,
            codec=stream.codec_context.name,
            width=width,
            height=height,
            fps=round(fps, 6),
            duration_s=round(duration, 6),
            frame_count=len(packets.timestamps),
            rotation=rotation,
            header_duration_s=None if header_duration is None else round(header_duration, 6),
        )
    finally:
        container.close()


def _decode_first_frame(path: Path) -> int:
    """Decode one frame to prove the codec can read the stream (a renamed text file can still 'open').

    Returns the frame's rotation, which only a decoded frame carries."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            for frame in container.decode(video=0):
                return _rotation(frame)
    except av.error.FFmpegError as exc:
        raise ProbeError("undecodable_stream", str(exc)) from exc
    raise ProbeError("undecodable_stream", "no frame could be decoded")


def scan_frames(path: str | Path, width: int) -> Iterator[tuple[float, np.ndarray]]:
    """Every frame of the video, small, for ingest's scan (pipeline/scan.py): (seconds from the stream's start,
    (h, `width`, 3) uint8 RGB as stored, not turned upright). The loop filter is skipped: what is measured on 128
    pixels does not need it, and the decode is faster without it."""
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.options = {"skip_loop_filter": "all"}  # honoured by H.264 and HEVC, ignored by others
        time_base = stream.time_base or Fraction(1, 1000)
        resizer = av.video.reformatter.VideoReformatter()
        origin, last, frame_s = None, -math.inf, 0.0
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames, None)
            except av.error.FFmpegError:
                return  # a stream that breaks ends the scan there; split rejects the windows past the break
            if frame is None:
                return
            t = _frame_seconds(frame, time_base)
            if origin is None:
                origin = t if t is not None else 0.0
            t = last + (frame_s or 0.04) if t is None else t - origin
            if t <= last:
                continue  # repeated or backward timestamps, as split skips them
            if last > -math.inf:
                frame_s = t - last
            last = t
            height = max(2, round(frame.height * width / frame.width))
            yield t, resizer.reformat(frame, width, height, "rgb24", interpolation="AREA").to_ndarray()


# ---------------------------------------------------------------------------------------------------------------
# Sampling clip frames: one decode pass per video for all of its windows

SEEK_MARGIN_S = 1.0  # seek this far before a target, so the frame just before it is decoded too
MAX_ASPECT = 8  # wider (or taller) pictures are refused: ingest's aspect-ratio limit, checked again here


@dataclass(frozen=True)
class WindowFrames:
    """The frames of one window, upright, resized and center-cropped."""

    index: int  # position of the window in the request
    frames: np.ndarray  # (CLIP_FRAMES, size, size, 3) uint8, in time order
    times: tuple[float, ...]  # presentation time of each frame picked, in seconds from the stream's start


@dataclass(frozen=True)
class WindowFailed:
    index: int
    reason: str  # reject code recorded in the lake
    detail: str


@dataclass(frozen=True)
class DecodeStats:
    frames_decoded: int
    seeks: int
    seconds: float


def _frame_seconds(frame: av.VideoFrame, time_base: Fraction) -> float | None:
    ts = frame.pts if frame.pts is not None else frame.dts
    return None if ts is None else float(ts * time_base)


FULL = (0.0, 0.0, 1.0, 1.0)  # a crop box that keeps the whole frame


def _box(low: float, high: float, length: int, size: int) -> tuple[int, int]:
    """The pixels [a, b) of a `length`-pixel line that `low`..`high` (shares) covers, at least `size` wide."""
    a, b = round(low * length), round(high * length)
    if b - a < size:
        a = max(0, min(length - size, (a + b - size) // 2))
        b = a + size
    return a, b


class _FrameConverter:
    """Turns decoded frames into clip frames: display aspect and rotation honoured, interlacing removed."""

    def __init__(
        self, stream: av.video.stream.VideoStream, first: av.VideoFrame, size: int, crop: tuple[float, ...] = FULL
    ) -> None:
        self.stream, self.size = stream, size
        self.rotation = _rotation(first)
        sar: Fraction | float | None = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        sar = float(sar) if sar and sar > 0 else 1.0
        # Scale the stored frame so the shorter side of the displayed content (the picture inside its bars, `crop`
        # as shares of the stored frame) becomes `size`; the sample aspect ratio stretches the stored width
        # (anamorphic DVD/broadcast video), rotation only swaps the axes.
        left, top, right, bottom = crop
        width, height = first.width * sar, first.height
        scale = size / min(width * (right - left), height * (bottom - top))
        self.width = max(size, round(width * scale))
        self.height = max(size, round(height * scale))
        # the content box in the scaled frame, never narrower than a clip
        self.box = _box(left, right, self.width, size), _box(top, bottom, self.height, size)
        if max(self.width, self.height) > MAX_ASPECT * size:
            # the scaled strip would take gigabytes (a 2x7680 video): no 160x160 centre of it is worth that
            raise ValueError(f"a {first.width}x{first.height} picture is more than {MAX_ASPECT}:1")
        # One resizer for the whole video: `frame.reformat` would set FFmpeg's scaler up again for every frame.
        self.resizer = av.video.reformatter.VideoReformatter()
        self.graph: av.filter.Graph | None = None

    def _top_field(self, frame: av.VideoFrame) -> av.VideoFrame:
        """One field of an interlaced frame: combing would survive the downscale, and a field has enough lines."""
        if self.graph is None:
            self.graph = av.filter.Graph()
            source = self.graph.add_buffer(template=self.stream)
            field = self.graph.add("field", "top")
            sink = self.graph.add("buffersink")
            source.link_to(field)
            field.link_to(sink)
            self.graph.configure()
        self.graph.push(frame)
        return cast("av.VideoFrame", self.graph.pull())  # a graph fed video frames gives video frames

    def rgb(self, frame: av.VideoFrame) -> np.ndarray:
        if frame.interlaced_frame:
            frame = self._top_field(frame)
        # swscale converts and downsizes in one pass; AREA averages every source pixel (antialiased).
        image = self.resizer.reformat(frame, self.width, self.height, "rgb24", interpolation="AREA").to_ndarray()
        (x0, x1), (y0, y1) = self.box
        image = image[y0:y1, x0:x1]
        if self.rotation:
            image = np.rot90(image, self.rotation // 90)
        top = (image.shape[0] - self.size) // 2
        left = (image.shape[1] - self.size) // 2
        return np.ascontiguousarray(image[top : top + self.size, left : left + self.size])


class _Decoded:
    """A decoded frame, its time, and its RGB clip frame once a target has picked it."""

    __slots__ = ("t", "frame", "rgb")
    rgb: np.ndarray | None

    def __init__(self, t: float, frame: av.VideoFrame) -> None:
        self.t, self.frame, self.rgb = t, frame, None


def sample_windows(
    path: str | Path,
    windows: list[list[float]],
    *,
    size: int = CLIP_SIZE,
    crop: tuple[float, ...] = FULL,
    threads: int = 0,
    seek_gap_s: float = 10.0,
) -> Iterator[WindowFrames | WindowFailed | DecodeStats]:
    """Decode `path` once and yield the frames of every window as soon as the window is complete.

    `windows` holds, per window, its target instants in seconds from the stream's start (the time players
    show, whatever the container's start time). Each instant takes the decoded frame nearest to it by
    presentation time. Decoding stops at the frame after the last instant, and skips ahead by seeking when the
    next instant lies more than `seek_gap_s` past the current frame. Frames are cut to `crop` (the content box
    inside the video's bars, as shares of the stored frame) before their centre crop. Windows that cannot be completed (the
    stream ends early or breaks) come out as WindowFailed; the last item is always DecodeStats.
    """
    started = time.monotonic()
    targets = sorted((t, w, k) for w, times in enumerate(windows) for k, t in enumerate(times))
    slots: dict[int, list[np.ndarray | None]] = {}
    picked_times: dict[int, list[float]] = {}
    missing = {w: len(ts) for w, ts in enumerate(windows)}
    decoded = seeks = 0
    failure: tuple[str, str] | None = None
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        for w in range(len(windows)):
            yield WindowFailed(w, "unreadable_container", str(exc))
        yield DecodeStats(0, 0, time.monotonic() - started)
        return

    def pick(target: tuple[float, int, int], chosen: _Decoded) -> WindowFrames | WindowFailed | None:
        _, w, k = target
        if chosen.rgb is None:
            assert converter is not None  # made from the first frame, before any frame is picked
            chosen.rgb = converter.rgb(chosen.frame)
        slots.setdefault(w, [None] * len(windows[w]))[k] = chosen.rgb
        picked_times.setdefault(w, [0.0] * len(windows[w]))[k] = round(chosen.t, 6)
        missing[w] -= 1
        if missing[w]:
            return None
        # every slot of the window is filled once none is missing
        frames, times = np.stack(cast(list[np.ndarray], slots.pop(w))), tuple(picked_times.pop(w))
        # A frame farther than half a window interval from its instant (a pause in a variable-rate stream)
        # would make the clip stutter at a rate its frame-rate token does not describe.
        interval = (windows[w][-1] - windows[w][0]) / max(len(windows[w]) - 1, 1)
        worst = max(abs(picked - target) for picked, target in zip(times, windows[w]))
        if worst > interval / 2 + 1e-3:
            return WindowFailed(
                w,
                "frame_gap",
                f"no frame within {worst:.3f} s of an instant; the window needs one every {interval:.3f} s",
            )
        return WindowFrames(w, frames, times)

    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads; with `threads` 0 FFmpeg picks the count
        stream.codec_context.thread_count = threads
        time_base = stream.time_base or Fraction(1, 1000)
        origin = None if stream.start_time is None else float(stream.start_time * time_base)
        rate = stream.average_rate or stream.guessed_rate
        frame_s = 1.0 / float(rate) if rate else 0.04  # a frame's display time; refined from the pts steps
        converter: _FrameConverter | None = None
        i = 0  # the next target to fill
        prev: _Decoded | None = None  # the last frame before targets[i]
        last_t = -math.inf
        seeking = True  # turned off when a seek lands after its target (a bad index) or frames carry no time
        sought = -math.inf  # the target of the last seek: each target is sought at most once
        seek_gap_s = max(seek_gap_s, 2 * SEEK_MARGIN_S)  # a shorter gap would seek past the frame before a target

        def seek_to(t: float) -> Iterator[av.Packet]:
            nonlocal seeks, prev, sought
            assert origin is not None  # known before the first seek (first_seek), else set by the first frame
            offset = int(max(0.0, origin + t - SEEK_MARGIN_S) / time_base)
            container.seek(offset, stream=stream, backward=True, any_frame=False)
            seeks, prev, sought = seeks + 1, None, t
            return container.demux(stream)

        def restart_without_seeking() -> Iterator[av.Packet]:
            nonlocal seeking, last_t, prev
            seeking, last_t, prev = False, -math.inf, None
            container.seek(0, stream=stream, backward=True, any_frame=True)
            return container.demux(stream)

        # Without a start time the first frame sets the clock, so the first seek waits for it.
        first_seek = targets and origin is not None and targets[0][0] > seek_gap_s
        packets = seek_to(targets[0][0]) if first_seek else container.demux(stream)
        done = not targets
        while not done and failure is None:
            packet = None
            try:
                packet = next(packets, None)
                if packet is None:
                    break
                if packet.size == 0 and (packet.pts is not None or packet.dts is not None):
                    continue  # an empty packet inside the stream (Ogg/Theora repeats): decoding it would end the stream
                for frame in stream.decode(packet):
                    decoded += 1
                    t = _frame_seconds(frame, time_base)
                    if t is None and seeks and seeking:
                        packets = restart_without_seeking()  # after a seek, an untimed frame cannot be placed
                        break
                    if origin is None:
                        origin = t if t is not None else 0.0
                    t = (last_t + frame_s if last_t > -math.inf else 0.0) if t is None else t - origin
                    if t <= last_t:
                        if prev is None and seeks:
                            # The seek went back behind frames already seen: keyframes are too sparse for seeking
                            # to save anything in this video, so decode straight on from here.
                            seeking = False
                        continue  # repeated or backward timestamps (broken muxers, a seek that went back)
                    if converter is None:
                        converter = _FrameConverter(stream, frame, size, crop)
                    if prev is None and seeks and seeking and t > targets[i][0] + frame_s:
                        packets = restart_without_seeking()  # the seek landed after its target
                        break
                    current = _Decoded(t, frame)
                    while i < len(targets) and targets[i][0] <= t:
                        # nearer of the two frames around the instant, to the microsecond; a tie goes to the earlier one
                        nearer_prev = prev is not None and round(targets[i][0] - prev.t, 6) <= round(
                            t - targets[i][0], 6
                        )
                        result = pick(targets[i], prev if nearer_prev and prev is not None else current)
                        if result is not None:
                            yield result
                        i += 1
                    if i == len(targets):
                        done = True
                        break
                    if prev is not None:
                        frame_s = min(max(t - prev.t, 1e-4), 10.0)
                    prev, last_t = current, t
                    if seeking and targets[i][0] - t > seek_gap_s and targets[i][0] > sought:
                        packets = seek_to(targets[i][0])
                        break
            except av.error.FFmpegError as exc:
                failure = ("decode_error", f"the stream broke after {decoded} frames (t={max(last_t, 0):.3f} s): {exc}")
            except ValueError as exc:  # a picture no clip can be cut from (see _FrameConverter)
                failure = ("decode_error", str(exc))
        # The stream ended: its last frame stands for the instants inside its display time.
        if prev is not None and failure is None:
            while i < len(targets) and targets[i][0] <= prev.t + frame_s * 1.5:
                result = pick(targets[i], prev)
                if result is not None:
                    yield result
                i += 1
        unfilled: dict[int, float] = {}  # window -> its first instant without a frame
        for t, w, _ in targets[i:]:
            unfilled.setdefault(w, t)
        for w, t in sorted(unfilled.items()):
            reason, detail = failure or (
                "video_ended_early",
                f"the stream ended at {max(last_t, 0):.3f} s after {decoded} frames, before {t:.3f} s",
            )
            yield WindowFailed(w, reason, detail)
    finally:
        container.close()
    yield DecodeStats(decoded, seeks, time.monotonic() - started)
