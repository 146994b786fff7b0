"""Synthetic sample data for `cogflow sample-data OUT_DIR --videos N`.

Real footage is big, licensed and hard to check, so the demo and the tests run on tiny generated clips instead:
one coloured shape moving (or growing/shrinking) over a plain background, with a caption in Chinese or English
that says exactly what happens. Because every clip is drawn from a `VideoSpec`, the spec doubles as ground truth:
later steps can decode a clip and check that the shape really is red and really moves left to right.

Outputs, all under OUT_DIR:
    videos/sample_NNNN.{mp4,webm,avi}   one clip per spec, in rotating containers/codecs
    manifest.csv                        what ingest reads: video, caption, span and the spec's fields
    ground_truth.jsonl                  every VideoSpec field, one JSON object per clip

Everything is deterministic for a seed, and every file is written under a temporary name and renamed into
place, so a crash never leaves a half-written file under its final name and re-running is always safe.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from cogflow.pipeline.contract import CLIP_SIZE
from cogflow.pipeline.encode import encode_video

# name -> (RGB, Chinese, English). Saturated colours, far apart, so a colour mask finds the shape after encoding.
COLOURS: dict[str, tuple[tuple[int, int, int], str, str]] = {
    "red": ((220, 40, 40), "红色", "red"),
    "green": ((40, 180, 70), "绿色", "green"),
    "blue": ((50, 90, 230), "蓝色", "blue"),
    "yellow": ((240, 210, 40), "黄色", "yellow"),
    "purple": ((150, 60, 190), "紫色", "purple"),
    "white": ((245, 245, 245), "白色", "white"),
}
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], str, str]] = {
    "black": ((0, 0, 0), "黑色", "black"),
    "gray": ((160, 160, 160), "灰色", "gray"),
    "navy": ((20, 30, 80), "深蓝色", "navy"),
    "beige": ((235, 225, 200), "米色", "beige"),
}
SHAPES: dict[str, tuple[str, str]] = {
    "circle": ("圆形", "circle"),
    "square": ("正方形", "square"),
    "triangle": ("三角形", "triangle"),
    "star": ("五角星", "star"),
}
MOTIONS: dict[str, tuple[str, str]] = {
    "left_to_right": ("从左向右移动", "moves from left to right"),
    "right_to_left": ("从右向左移动", "moves from right to left"),
    "up": ("向上移动", "moves up"),
    "down": ("向下移动", "moves down"),
    "growing": ("变大", "grows"),
    "shrinking": ("变小", "shrinks"),
}
# Ordered so that consecutive clips alternate orientation out of step with the zh/en alternation (L P P L L S):
# even two clips give both orientations, and each language gets both. All even (yuv420p) and small (fast).
SIZES: list[tuple[int, int]] = [(320, 240), (240, 320), (144, 256), (256, 144), (320, 180), (192, 192)]
FORMATS = ("mp4", "webm", "avi")
CODECS = {"mp4": "h264", "webm": "vp9", "avi": "mpeg4"}  # the decoder name `probe` reports for each format
FPS_CHOICES = (24, 25, 30)
LANGUAGES = ("zh", "en")
MIN_LUMA_CONTRAST = 40.0  # yellow on beige or white on beige would be hard to see (and to detect)

MANIFEST_COLUMNS = [
    "video",
    "caption",
    "start_s",
    "end_s",
    "shape",
    "colour",
    "motion",
    "background",
    "language",
    "fps",
    "width",
    "height",
    "codec",
]


@dataclass(frozen=True)
class VideoSpec:
    name: str
    shape: str
    colour: str
    motion: str
    background: str
    fps: int
    width: int
    height: int
    duration_s: float  # exactly frame_count / fps (to the millisecond), so it matches what a probe measures
    fmt: str
    language: str
    caption: str

    @property
    def frame_count(self) -> int:
        return max(1, round(self.duration_s * self.fps))

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.fmt}"


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def caption_for(spec: VideoSpec) -> str:
    """The caption that describes `spec` exactly, in the spec's language."""
    colour, bg = COLOURS[spec.colour], BACKGROUNDS[spec.background]
    shape, motion = SHAPES[spec.shape], MOTIONS[spec.motion]
    if spec.language == "zh":
        return f"一个{colour[1]}的{shape[0]}在{bg[1]}背景上{motion[0]}。"
    article = "An" if colour[2][0] in "aeiou" else "A"
    return f"{article} {colour[2]} {shape[1]} {motion[1]} on a {bg[2]} background."


def plan_videos(n: int, seed: int = 0, *, min_duration_s: float = 2.0, max_duration_s: float = 12.0) -> list[VideoSpec]:
    """Plan `n` clips deterministically for `seed`.

    Format, language and size cycle (so a handful of clips covers all formats, both languages and both
    orientations). Colour, shape and motion are what a caption asks for, so they are drawn independently of each
    other and balanced: clips take the (colour, shape, motion) combinations in seeded shuffles of the whole product,
    one shuffle after another, so every combination comes once before any comes twice and no factor predicts
    another (a model cannot learn "triangles move up"). Background, fps and duration are drawn per clip.
    """
    if min_duration_s <= 0 or max_duration_s < min_duration_s:
        raise ValueError(f"bad duration range {min_duration_s}..{max_duration_s}")
    rng = np.random.default_rng(seed)
    product = [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS]
    combos: list[tuple[str, str, str]] = []
    while len(combos) < n:
        combos += [product[k] for k in rng.permutation(len(product))]
    specs = []
    for i, (colour, shape, motion) in enumerate(combos[:n]):
        backgrounds = [
            b
            for b, (rgb, _, _) in BACKGROUNDS.items()
            if abs(_luma(rgb) - _luma(COLOURS[colour][0])) >= MIN_LUMA_CONTRAST
        ]
        fps = int(rng.choice(FPS_CHOICES))
        width, height = SIZES[i % len(SIZES)]
        # Snap the duration to whole frames so the file's real duration is the one written in the manifest.
        frames = max(1, round(float(rng.uniform(min_duration_s, max_duration_s)) * fps))
        spec = VideoSpec(
            name=f"sample_{i:04d}",
            shape=shape,
            colour=colour,
            motion=motion,
            background=str(rng.choice(backgrounds)),
            fps=fps,
            width=width,
            height=height,
            duration_s=round(frames / fps, 3),
            fmt=FORMATS[i % len(FORMATS)],
            language=LANGUAGES[i % 2],
            caption="",
        )
        specs.append(replace(spec, caption=caption_for(spec)))
    return specs


def held_out_specs(count: int, exclude: set[str], seed: int = 0) -> list[VideoSpec]:
    """Up to `count` videos of the sample world (seeded shuffle of every colour, shape, motion, background and
    language) whose captions are not in `exclude`: prompts with ground truth that no video of a lake had."""
    combos = [
        (c, s, m, b, lang)
        for c in COLOURS
        for s in SHAPES
        for m in MOTIONS
        for b in BACKGROUNDS
        for lang in LANGUAGES
        if abs(_luma(BACKGROUNDS[b][0]) - _luma(COLOURS[c][0])) >= MIN_LUMA_CONTRAST
    ]
    order = np.random.default_rng(seed).permutation(len(combos))
    specs: list[VideoSpec] = []
    for i in order:
        colour, shape, motion, background, language = combos[i]
        spec = VideoSpec(
            name=f"held_out_{len(specs):04d}",
            shape=shape,
            colour=colour,
            motion=motion,
            background=background,
            fps=24,
            width=CLIP_SIZE,
            height=CLIP_SIZE,
            duration_s=4.0,
            fmt="mp4",
            language=language,
            caption="",
        )
        spec = replace(spec, caption=caption_for(spec))
        if spec.caption not in exclude:
            specs.append(spec)
        if len(specs) == count:
            break
    return specs


@lru_cache(maxsize=16)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as a column (H, 1) and a row (1, W): broadcasting makes the (H, W) masks."""
    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    return ys, xs


def _polygon_mask(ys: np.ndarray, xs: np.ndarray, vertices: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule, vectorised over pixels: a pixel is inside if a ray to its right crosses an odd number of edges."""
    inside = np.zeros((ys.shape[0], xs.shape[1]), dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
        if y0 == y1:
            continue  # a horizontal edge is never crossed by a horizontal ray
        spans = (y0 > ys) != (y1 > ys)  # (H, 1): rows whose ray meets this edge
        x_cross = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= spans & (xs < x_cross)
    return inside


def _star_or_polygon(cx: float, cy: float, radii: list[float]) -> list[tuple[float, float]]:
    """Vertices at equal angles starting straight up; alternating radii make a star."""
    angles = -np.pi / 2 + 2 * np.pi * np.arange(len(radii)) / len(radii)
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)]


def shape_geometry(spec: VideoSpec, t: float) -> tuple[float, float, float]:
    """Centre (x, y) and half-size of the shape at time `t`: the motion is a straight line in progress 0..1.

    The path lies inside the frame's centred square, the part split keeps (its 160x160 clips are centre crops), so
    that every clip shows what its caption says. A path across the whole width of a 16:9 frame left a third of its
    frames with most of the shape outside the crop: the training clips of "moves from left to right" showed an
    object entering and leaving, and a model learnt to draw empty first and last frames."""
    p = min(max(t / spec.duration_s, 0.0), 1.0)
    w, h = spec.width, spec.height
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2  # the centred square
    r = side / 8  # half-size: the shape spans about a quarter of the shorter side
    margin = 1.3 * r  # the star's points reach 1.2 r; keep the whole shape in the square at both ends

    def lerp(a: float, b: float) -> float:
        return a + (b - a) * p

    cx, cy, scale = w / 2, h / 2, 1.0
    if spec.motion == "left_to_right":
        cx = lerp(left + margin, left + side - margin)
    elif spec.motion == "right_to_left":
        cx = lerp(left + side - margin, left + margin)
    elif spec.motion == "up":
        cy = lerp(top + side - margin, top + margin)  # image y grows downwards
    elif spec.motion == "down":
        cy = lerp(top + margin, top + side - margin)
    elif spec.motion == "growing":
        scale = lerp(0.4, 1.6)
    elif spec.motion == "shrinking":
        scale = lerp(1.6, 0.4)
    return cx, cy, r * scale


def render_frame(spec: VideoSpec, t: float) -> np.ndarray:
    """The (H, W, 3) uint8 RGB frame of `spec` at `t` seconds."""
    ys, xs = _grid(spec.height, spec.width)
    cx, cy, r = shape_geometry(spec, t)
    if spec.shape == "circle":
        mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    elif spec.shape == "square":
        mask = (np.abs(xs - cx) <= 0.9 * r) & (np.abs(ys - cy) <= 0.9 * r)
    elif spec.shape == "triangle":
        # Circumradius 1.3 r gives about a circle's area; shifting the circumcentre down by R/4 centres the box.
        mask = _polygon_mask(ys, xs, _star_or_polygon(cx, cy + 0.325 * r, [1.3 * r] * 3))
    elif spec.shape == "star":
        mask = _polygon_mask(ys, xs, _star_or_polygon(cx, cy, [1.2 * r, 0.5 * r] * 5))
    else:
        raise ValueError(f"unknown shape {spec.shape!r}")
    frame = np.empty((spec.height, spec.width, 3), dtype=np.uint8)
    frame[:] = BACKGROUNDS[spec.background][0]
    frame[mask] = COLOURS[spec.colour][0]
    return frame


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:  # newline="": the csv module picks its own line ends
        f.write(text)
    os.replace(tmp, path)


def write_video(spec: VideoSpec, video_dir: Path) -> Path:
    """Render and encode one clip to video_dir/spec.filename, through a temporary name renamed into place."""
    final = video_dir / spec.filename
    tmp = video_dir / f".{spec.filename}.tmp"  # same folder, so os.replace is an atomic rename
    frames = (render_frame(spec, k / spec.fps) for k in range(spec.frame_count))
    try:
        encode_video(tmp, frames, spec.fps, spec.fmt)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)  # only still there if encoding failed
    return final


def _write_videos(specs: list[VideoSpec], video_dir: Path, workers: int) -> Iterator[Path]:
    """Write every spec's video, yielding each path as it is done. Encoding is most of the time (vp9 above all) and
    each video is independent: `workers` processes, spawned, not forked, since a caller may hold threads (a Prefect
    server, a data loader). An encoding error stops the run, as in one process."""
    if workers == 1:
        yield from (write_video(spec, video_dir) for spec in specs)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in as_completed([pool.submit(write_video, spec, video_dir) for spec in specs]):
            yield done.result()


def generate_sample_data(
    out_dir: str | Path,
    videos: int,
    seed: int = 0,
    *,
    min_duration_s: float = 2.0,
    max_duration_s: float = 12.0,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> Path:
    """Write `videos` clips, manifest.csv and ground_truth.jsonl under `out_dir`; return the manifest's path.
    `workers`: encoding processes (default one per core)."""
    out_dir = Path(out_dir)
    video_dir = out_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    specs = plan_videos(videos, seed, min_duration_s=min_duration_s, max_duration_s=max_duration_s)

    workers = max(1, min(workers or os.cpu_count() or 1, len(specs)))
    for i, _ in enumerate(_write_videos(specs, video_dir, workers), 1):
        if progress is not None:
            progress(i, len(specs))

    manifest = io.StringIO()
    writer = csv.writer(manifest)
    writer.writerow(MANIFEST_COLUMNS)
    for spec in specs:
        writer.writerow(
            [
                f"videos/{spec.filename}",
                spec.caption,
                0,
                f"{spec.duration_s:g}",
                spec.shape,
                spec.colour,
                spec.motion,
                spec.background,
                spec.language,
                spec.fps,
                spec.width,
                spec.height,
                CODECS[spec.fmt],
            ]
        )
    truth = "".join(
        json.dumps({"video": f"videos/{spec.filename}", **asdict(spec)}, ensure_ascii=False) + "\n" for spec in specs
    )
    # Ground truth first, manifest last: a manifest on disk means everything it points at is complete.
    _write_atomic(out_dir / "ground_truth.jsonl", truth)
    manifest_path = out_dir / "manifest.csv"
    _write_atomic(manifest_path, manifest.getvalue())
    return manifest_path
