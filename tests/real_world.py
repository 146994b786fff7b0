"""Real encoded videos with the quirks of real-world footage, whose every frame says which frame it is.

Each frame carries a code that survives encoding, resizing and cropping: inside the central square of the
displayed picture, a red band on top and a blue one at the bottom (which way is up), a green stripe at each
side (where the square's edges are), and 10 black or white bars between them, the frame's index in binary.
`read_code` reads a 160x160 clip frame back, so a test can tell which source frame a window picked.

PyAV writes most files; the ffmpeg binary of imageio-ffmpeg writes what PyAV's encoders cannot (Theora,
interlaced MPEG-2).
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 10
GRAY = 128


def code_frame(index: int, width: int, height: int) -> np.ndarray:
    """An upright RGB frame of the displayed size carrying `index` (< 1024) in its central square."""
    frame = np.full((height, width, 3), 40, np.uint8)  # outside the square: dark, cropped away anyway
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.full((side, side, 3), GRAY, np.uint8)
    band = side // 5
    square[:band] = (230, 30, 30)
    square[-band:] = (30, 30, 230)
    stripe = max(2, side // 25)
    square[band:-band, :stripe] = (30, 200, 30)
    square[band:-band, -stripe:] = (30, 200, 30)
    for bit in range(BITS):
        x0 = int(side * (0.1 + 0.08 * bit))
        x1 = int(side * (0.1 + 0.08 * (bit + 1)))
        on = (index >> (BITS - 1 - bit)) & 1
        square[band + 2 : -band - 2, x0 + 1 : x1 - 1] = 235 if on else 20
    frame[top : top + side, left : left + side] = square
    return frame


@dataclass(frozen=True)
class Code:
    index: int
    upright: bool  # red band on top, blue at the bottom
    edges: bool  # green stripes at the left and right edges: the square was cropped where it should be


def read_code(frame: np.ndarray) -> Code:
    """Read a 160x160 clip frame made from a `code_frame`."""
    size = frame.shape[0]
    f = frame.astype(int)
    top, bottom = f[2 : size // 10].mean(axis=(0, 1)), f[-size // 10 : -2].mean(axis=(0, 1))
    upright = top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]
    middle = f[size // 3 : 2 * size // 3]
    left, right = middle[:, 1:3].mean(axis=(0, 1)), middle[:, -3:-1].mean(axis=(0, 1))
    edges = all(c[1] > 120 and c[0] < 100 and c[2] < 100 for c in (left, right))
    index = 0
    for bit in range(BITS):
        x = int(size * (0.1 + 0.08 * (bit + 0.5)))
        index = index * 2 + int(middle[:, x - 2 : x + 3].mean() > GRAY)
    return Code(index, bool(upright), bool(edges))


# ---------------------------------------------------------------------------------------------------------------
# Writers


def write_frames(
    path: Path,
    frames: list[np.ndarray],
    *,
    rate: int | Fraction = 25,
    fmt: str | None = None,
    codec: str = "libx264",
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB frames with PyAV: explicit `pts` (in `time_base`) make a variable frame rate."""
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options={"preset": "veryfast", "crf": "16", **(options or {})})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


def ffmpeg_encode(path: Path, frames: list[np.ndarray], rate: str, *args: str) -> Path:
    """Pipe raw RGB frames into the ffmpeg binary; `args` are its output options."""
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-v",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        rate,
        "-i",
        "-",
        *args,
        str(path),
    ]
    subprocess.run(command, input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames), check=True)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The corpus: each builder returns the file and, per source frame, its presentation time (from the start)


@dataclass
class Footage:
    path: Path
    times: list[float]  # presentation time of each source frame, seconds from the video's start
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def expected_index(self, t: float) -> int:
        """The source frame nearest to instant t (ties go to the earlier frame)."""
        distance = np.round(np.abs(np.asarray(self.times) - t), 6)  # to the microsecond, as the sampler compares
        return int(np.argmin(distance))  # the first of equals: the earlier frame


def cfr_mp4(
    path: Path, seconds: float = 4.0, fps: int = 25, size: tuple[int, int] = (320, 240), **kw: object
) -> Footage:
    n = round(seconds * fps)
    write_frames(path, [code_frame(i, *size) for i in range(n)], rate=fps, **kw)  # type: ignore[arg-type]
    return Footage(path, [i / fps for i in range(n)], f"H.264 MP4 {fps} fps")


def long_mp4(path: Path, seconds: float = 60.0, fps: int = 5) -> Footage:
    """A minute at 5 fps with a keyframe every 5 s, for seeking."""
    return cfr_mp4(path, seconds, fps, options={"g": str(5 * fps), "keyint_min": str(5 * fps)})


def vfr_mkv(path: Path) -> Footage:
    """Variable frame rate in Matroska (1 ms timestamps): bursts and pauses, as screen and phone recorders write."""
    steps_ms = [40, 40, 40, 200, 33, 33, 33, 500, 16, 16, 16, 16, 100, 40, 300, 40, 40, 40, 40, 250] * 3
    pts = list(np.cumsum([0] + steps_ms))
    write_frames(
        path,
        [code_frame(i, 320, 240) for i in range(len(pts))],
        rate=25,
        fmt="matroska",
        pts=[int(p) for p in pts],
        time_base=Fraction(1, 1000),
    )
    return Footage(path, [p / 1000 for p in pts], "VFR Matroska")


def mpegts_offset(path: Path, offset_s: float = 10.0) -> Footage:
    """MPEG-TS cut from a broadcast: its clock starts at 10 s, and instants count from the stream's start."""
    n, fps = 75, 25
    ticks = [round((offset_s + i / fps) * 90000) for i in range(n)]
    write_frames(
        path,
        [code_frame(i, 320, 240) for i in range(n)],
        rate=fps,
        fmt="mpegts",
        pts=ticks,
        time_base=Fraction(1, 90000),
    )
    return Footage(path, [i / fps for i in range(n)], "MPEG-TS, start time 10 s")


def high_fps_mp4(path: Path) -> Footage:
    footage = cfr_mp4(path, 2.0, 240, size=(256, 192))
    footage.notes = "240 fps"
    return footage


def rotated_phone_mp4(path: Path, rotation: int) -> Footage:
    """A portrait picture stored landscape with a display matrix, as phones record: `rotation` degrees CCW."""
    n, fps = 50, 25
    upright = [code_frame(i, 240, 320) for i in range(n)]
    stored = [np.rot90(u, -rotation // 90) for u in upright]  # turning it by `rotation` CCW makes it upright
    write_frames(path, stored, rate=fps, rotation=rotation)
    return Footage(path, [i / fps for i in range(n)], f"phone video rotated {rotation}")


def theora_with_empty_packets(path: Path, tmp: Path) -> Footage:
    """Ogg/Theora at 25 fps whose repeated frames are empty packets (4 of every 5): real frames at 5 fps."""
    repeated = [code_frame(k // 5, 320, 240) for k in range(100)]
    # every frame a keyframe, so emptying the repeats leaves no frame predicted from a missing one
    source = ffmpeg_encode(tmp / "theora25.ogv", repeated, "25", "-c:v", "libtheora", "-q:v", "8", "-g", "1")
    with av.open(str(source)) as src, av.open(str(path), "w", format="ogg") as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream, opaque=True)
        for packet in src.demux(stream):
            if packet.pts is None:
                continue
            if packet.pts % 5:
                empty = av.Packet(0)
                empty.pts, empty.dts, empty.time_base = packet.pts, packet.dts, packet.time_base
                packet = empty
            packet.stream = copy
            out.mux(packet)
    return Footage(path, [i / 5 for i in range(20)], "Ogg/Theora, empty packets, no average rate")


def interlaced_mpeg2(path: Path) -> Footage:
    """Interlaced anamorphic MPEG-2 in a program stream (DVD style, 720x480 shown as 640x480, top field first).

    The top field carries the code; the bottom field carries the code with every bit flipped, so weaving the
    fields (no deinterlacing) averages every bar to the same gray.
    """
    columns = np.arange(720) * 640 // 720  # 720 stored columns, shown 8/9 as wide
    frames = []
    for i in range(30):
        woven = code_frame(i, 640, 480)[:, columns]
        woven[1::2] = code_frame(i ^ (2**BITS - 1), 640, 480)[1::2, columns]
        frames.append(woven)
    ffmpeg_encode(
        path,
        frames,
        "25",
        "-vf",
        "setsar=8/9,setfield=tff",
        "-c:v",
        "mpeg2video",
        "-flags",
        "+ilme+ildct",
        "-b:v",
        "8M",
        "-f",
        "vob",
    )
    return Footage(path, [i / 25 for i in range(30)], "interlaced MPEG-2, SAR 8:9, start time not 0")


def lying_webm(path: Path) -> Footage:
    """A WebM whose header claims a quarter of its real length."""
    footage = cfr_mp4(
        path,
        3.0,
        25,
        fmt="webm",
        codec="libvpx-vp9",
        options={"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"},
    )
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89")  # EBML Segment/Info/Duration
    size = data[at + 2] & 0x7F
    fmt = ">d" if size == 8 else ">f"
    (claimed,) = struct.unpack(fmt, data[at + 3 : at + 3 + size])
    data[at + 3 : at + 3 + size] = struct.pack(fmt, claimed / 4)
    path.write_bytes(bytes(data))
    footage.notes = "VP9 WebM, header duration lies"
    return footage


def broken_mid_stream_mp4(path: Path) -> Footage:
    """An MP4 whose media data is zeroed from 60% on: it opens and its index is whole, but decoding breaks."""
    footage = cfr_mp4(path, 4.0, 25, options={"g": "10"})
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat") + 4
    end = data.find(b"moov") if data.find(b"moov") > start else len(data)
    cut = start + int((end - start) * 0.6)
    data[cut:end] = bytes(end - cut)
    path.write_bytes(bytes(data))
    footage.notes = "breaks mid-stream"
    return footage


def real_world_corpus(folder: Path) -> dict[str, Footage]:
    """Every quirk above, one file each, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".work"
    tmp.mkdir(exist_ok=True)
    return {
        "cfr": cfr_mp4(folder / "cfr.mp4"),
        "vfr": vfr_mkv(folder / "vfr.mkv"),
        "mpegts": mpegts_offset(folder / "offset.ts"),
        "high_fps": high_fps_mp4(folder / "fast.mp4"),
        "phone90": rotated_phone_mp4(folder / "phone90.mp4", 90),
        "phone270": rotated_phone_mp4(folder / "phone270.mp4", 270),
        "theora": theora_with_empty_packets(folder / "theora.ogv", tmp),
        "interlaced": interlaced_mpeg2(folder / "interlaced.vob"),
        "liar": lying_webm(folder / "liar.webm"),
    }
