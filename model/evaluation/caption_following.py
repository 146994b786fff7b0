"""Does a generated video follow its caption? Read colour, shape, motion and background back from the frames.

The sample captions (pipeline/sample_data.py) name one coloured shape on a plain background and how it moves, so a
video can be checked without a learned model: find the background from the frame's border, the shape as the
largest blob of pixels far from it, and read its colour, outline and path over time. Generated frames come through
the VQ-VAE frame tokenizer (blurry, blocky, stray blobs, missing shapes), so every step is robust rather than exact:
medians instead of means, votes over frames, motion from the medians of the first and last frames.

numpy only: scipy, OpenCV and scikit-image are no dependencies of cogflow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from cogflow.pipeline.sample_data import BACKGROUNDS, COLOURS, MOTIONS, SHAPES

FIELDS = ("colour", "shape", "motion")  # what a caption asks for and what is scored
BORDER_PX = 3  # the ring the background is read from: a shape covers at most a short stretch of it
FOREGROUND_DISTANCE = 50.0  # RGB distance from the background: under half the closest pair (purple on gray, 105)
MIN_AREA_PX = 20  # a smaller blob is codec or tokenizer noise (the smallest drawn shape, a star at 0.4x, has ~110 px)
MAX_AREA_SHARE = 0.35  # a blob over this share of the frame is no drawn shape (the largest covers ~13%) but noise
MIN_SHAPE_AREA_PX = 120  # below this an outline has too few pixels to tell a circle from a square
MIN_MOTION = 0.15  # a smaller normalised change is "not moving" (decoded sample clips: 0.54-0.68, other axes < 0.06)
SOFT_MARGIN_PX = 16  # shape colour is summed this far around the outline: one tokenizer code tile (160 / 10)
MIN_SHARE = 0.15  # a smaller share of shape colour in a pixel is background noise (codec, tokenizer)
RAYS = 64  # angles the outline is sampled at: enough for the 5 points of a star (harmonic 5) and twice over
# A shape's outline, as its radius around the centroid by angle, repeats k times per turn: harmonic k of that
# profile (relative to the mean radius) is ~0.07 for a square (k=4), ~0.13 for a triangle (k=3) and ~0.16 for a
# star (k=5), while every harmonic of a circle stays under ~0.01. Blur softens corners but keeps the symmetry
# (measured on decoded sample clips: a Gaussian blur of sigma 3 px still leaves >= 0.05 for the weakest, a square).
# k=2 is an elongated blob (a smear), which no caption names: it reads as no shape rather than as a circle.
HARMONIC_SHAPES: dict[int, str | None] = {2: None, 3: "triangle", 4: "square", 5: "star"}
MIN_HARMONIC = 0.025  # below this in every one of them the outline is round: a circle

_COLOUR_NAMES, _COLOUR_RGB = list(COLOURS), np.array([c[0] for c in COLOURS.values()], dtype=np.float32)
_BACKGROUND_NAMES, _BACKGROUND_RGB = list(BACKGROUNDS), np.array([b[0] for b in BACKGROUNDS.values()], dtype=np.float32)


@dataclass(frozen=True)
class Reading:
    """What a whole video shows, in the caption's terms."""

    colour: str | None  # one of COLOURS' names, None when no shape was found
    shape: str | None  # one of SHAPES' names
    motion: str | None  # one of MOTIONS' names
    background: str | None  # one of BACKGROUNDS' names


@dataclass(frozen=True)
class FrameReading:
    """What one frame shows. Position and size are None (and the rest too) when no shape was found."""

    background: str
    colour: str | None = None
    shape: str | None = None  # None also when the shape is too small or cut off by the frame's edge
    x: float | None = None  # centroid, pixels from the left
    y: float | None = None  # centroid, pixels from the top
    area: float | None = None  # pixels' worth of shape colour


def _nearest(rgb: np.ndarray, palette: np.ndarray, names: list[str]) -> str:
    return names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))]


def _colour_beyond(rgb: np.ndarray, background: np.ndarray) -> str:
    """The COLOURS entry nearest to the ray from the background through `rgb`, at or beyond `rgb`.

    A blurred edge or a blocky tile mixes the shape's colour with the background's, and a mix lies between the two:
    the shape's own colour is further along the same line (white on navy, averaged, looks purple; this says white)."""
    v = rgb - background
    s = np.maximum(1.0, (_COLOUR_RGB - background) @ v / max(float(v @ v), 1e-9))[:, None]
    return _COLOUR_NAMES[int(np.argmin(((background + s * v - _COLOUR_RGB) ** 2).sum(axis=1)))]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean (H, W) mask, as a mask (all False when `mask` is empty).

    Works on horizontal runs of True pixels: the runs of adjacent rows that overlap are found with numpy and joined
    with a union-find, so the Python loop is over pairs of runs (a few hundred), not over pixels."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)  # run i covers columns starts[i] .. ends[i] - 1 of row rows[i]
    ends = np.nonzero(edges == -1)[1]  # both scans go row by row, left to right: the same runs in the same order
    if len(rows) == 0:
        return np.zeros(mask.shape, dtype=bool)
    # Runs as positions on one line (row * stride + column) are sorted: the runs of the next row that overlap
    # run i are one slice, from the first that ends after i starts to the last that starts before i ends.
    stride = width + 2
    below = (rows + 1) * stride
    lo = np.searchsorted(rows * stride + ends, below + starts, side="right")
    hi = np.searchsorted(rows * stride + starts, below + ends, side="left")
    count = np.maximum(hi - lo, 0)
    first = np.repeat(np.arange(len(rows)), count)
    second = np.repeat(lo, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for i, j in zip(first.tolist(), second.tolist()):
        parent[find(i)] = find(j)
    roots = np.array([find(i) for i in range(len(rows))])
    sizes = np.bincount(roots, weights=ends - starts)
    out = np.zeros(mask.shape, dtype=bool)
    for i in np.nonzero(roots == np.argmax(sizes))[0].tolist():
        out[rows[i], starts[i] : ends[i]] = True
    return out


def outline_harmonics(mask: np.ndarray) -> dict[int, float]:
    """Harmonics 2 to 5 of the mask's radius around its centroid by angle, relative to the mean radius.

    Each of RAYS rays from the centroid takes the distance of the farthest mask pixel on it (the farthest, not
    the first gap: noise can punch holes in a blob)."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    reach = float(np.sqrt((ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2).max()) + 1.0
    angles = np.linspace(0.0, 2 * np.pi, RAYS, endpoint=False)[:, None]
    steps = np.arange(0.0, reach, 0.25)[None, :]  # quarter-pixel steps along each ray
    py, px = np.floor(cy + np.sin(angles) * steps).astype(int), np.floor(cx + np.cos(angles) * steps).astype(int)
    valid = (py >= 0) & (py < mask.shape[0]) & (px >= 0) & (px < mask.shape[1])
    inside = np.zeros(valid.shape, dtype=bool)
    inside[valid] = mask[py[valid], px[valid]]
    last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)  # index of the farthest inside sample
    radius = np.where(inside.any(axis=1), steps[0, last], 0.0)
    spectrum = np.abs(np.fft.rfft(radius)) / max(float(radius.sum()), 1e-9)
    return {k: float(spectrum[k]) for k in HARMONIC_SHAPES}


def classify_shape(mask: np.ndarray) -> str | None:
    """The shape whose symmetry dominates the outline, a circle when none does, None for an elongated blob."""
    harmonics = outline_harmonics(mask)
    k = max(harmonics, key=harmonics.__getitem__)
    return HARMONIC_SHAPES[k] if harmonics[k] >= MIN_HARMONIC else "circle"


def border_colour(rgb: np.ndarray) -> np.ndarray:
    """The background's RGB (3,) float32 of an (H, W, 3) frame: the median of its BORDER_PX ring, which ignores the
    stretch of border a cut-off shape covers."""
    b = BORDER_PX
    border = np.concatenate(
        [rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)]
    )
    return np.median(border, axis=0).astype(np.float32)


def read_frame(frame: np.ndarray) -> FrameReading:
    """Background, and the largest blob's colour, shape, centroid and area, of one (H, W, 3) uint8 frame."""
    rgb = frame.astype(np.float32)
    bg = border_colour(rgb)
    background = _nearest(bg, _BACKGROUND_RGB, _BACKGROUND_NAMES)
    distance = np.sqrt(((rgb - bg) ** 2).sum(axis=2))
    blob = largest_component(distance > FOREGROUND_DISTANCE)
    if not MIN_AREA_PX <= blob.sum() <= MAX_AREA_SHARE * blob.size:
        return FrameReading(background)
    # The blob's edge pixels are blends with the background (blur, chroma subsampling): its colour is read from
    # the median of its most distinct half.
    d = distance[blob]
    fg = np.median(rgb[blob][d >= np.median(d)], axis=0)
    colour = _colour_beyond(fg, bg)
    # Each pixel's share of shape colour (0 background .. 1 shape), along the line from the background to the
    # palette colour the caption would name (to the measured colour if that line is too short to measure on).
    v = _COLOUR_RGB[_COLOUR_NAMES.index(colour)] - bg
    v = v if float(v @ v) >= FOREGROUND_DISTANCE**2 else fg - bg
    share = (rgb - bg) @ v / float(v @ v)
    shape_mask = largest_component(blob & (share > 0.5))  # the outline: pixels more shape than background
    if shape_mask.sum() < MIN_AREA_PX:
        return FrameReading(background)
    ys, xs = np.nonzero(shape_mask)
    # A shape cut by the frame's edge (the start or end of a move) has the outline of neither itself nor another.
    touches = ys.min() == 0 or xs.min() == 0 or ys.max() == frame.shape[0] - 1 or xs.max() == frame.shape[1] - 1
    shape = None if touches or len(ys) < MIN_SHAPE_AREA_PX else classify_shape(shape_mask)
    # Size and position from the shares summed around the outline: averaging (blur, the tokenizer's coarse
    # tiles) moves shape colour between pixels but keeps its sum, so the area grows smoothly with the drawn
    # shape even where a thresholded mask jumps a whole tile at a time.
    top, left = max(ys.min() - SOFT_MARGIN_PX, 0), max(xs.min() - SOFT_MARGIN_PX, 0)
    near = share[top : ys.max() + SOFT_MARGIN_PX + 1, left : xs.max() + SOFT_MARGIN_PX + 1]
    weight = np.where(near > MIN_SHARE, np.minimum(near, 1.0), 0.0)  # below MIN_SHARE: background noise
    wy, wx = np.nonzero(weight)
    w = weight[wy, wx]
    area = float(w.sum())
    return FrameReading(
        background,
        colour,
        shape,
        left + float((w * wx).sum()) / area + 0.5,
        top + float((w * wy).sum()) / area + 0.5,
        area,
    )


def _robust_change(values: np.ndarray, times: np.ndarray) -> float:
    """Change over the whole video (time 0..1): the median of the last third of the frames minus the median of the
    first third, per unit of time between them. Medians ignore a few stray frames (another blob, a shape cut by
    the frame's edge); unlike a Theil-Sen slope this also sees a change that comes in a few steps (blocky
    frames), where most pairs of frames are equal."""
    k = max(1, -(-len(values) // 3))  # ceil(T / 3): 2 of 5 key frames, 11 of 33
    span = float(times[-k:].mean() - times[:k].mean())
    return float(np.median(values[-k:]) - np.median(values[:k])) / span if span > 0 else 0.0


def _vote(names: Sequence[str | None], weights: Sequence[float] | None = None) -> str | None:
    """The name with the most (weighted) votes; None when nobody voted."""
    totals: Counter[str] = Counter()
    for name, weight in zip(names, weights if weights is not None else [1.0] * len(names)):
        if name is not None:
            totals[name] += weight  # type: ignore[assignment]  # a Counter adds floats too; typeshed says int
    return totals.most_common(1)[0][0] if totals else None


def motion_changes(readings: Sequence[FrameReading], width: int, height: int) -> dict[str, float]:
    """Normalised change over the video of the blob's x, y and size (time 0..1, frames evenly spaced), keyed by
    the motion its sign means. Frames without a blob are skipped; fewer than 2 with one give {}."""
    found = [(k, r) for k, r in enumerate(readings) if r.area is not None]
    if len(found) < 2:
        return {}
    times = np.array([k for k, _ in found], dtype=np.float64) / (len(readings) - 1)
    dx = _robust_change(np.array([r.x for _, r in found]), times) / width
    dy = _robust_change(np.array([r.y for _, r in found]), times) / height
    # The side (sqrt of the area) grows linearly with the drawn scale, 0.4 -> 1.6: a change of 1.2 median sides.
    # Halved to ~0.6, like a move across the frame (~0.67 after the crop), so neither kind of motion dominates.
    size = np.sqrt([cast(float, r.area) for _, r in found])  # found: frames with an area
    ds = 0.5 * _robust_change(size, times) / float(np.median(size))
    return {
        "left_to_right" if dx > 0 else "right_to_left": abs(dx),
        "down" if dy > 0 else "up": abs(dy),  # image y grows downwards: "up" is y decreasing
        "growing" if ds > 0 else "shrinking": abs(ds),
    }


def read_video(frames: np.ndarray) -> Reading:
    """Colour, shape, motion and background of a (T, H, W, 3) uint8 video, T >= 2 frames evenly spaced in time."""
    return read_video_frames(frames)[0]


def read_video_frames(frames: np.ndarray) -> tuple[Reading, list[FrameReading]]:
    """`read_video`'s reading and the frame readings it was voted from (where the shape was in each frame)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    if len(frames) < 2:
        raise ValueError(f"a motion needs at least 2 frames, got {len(frames)}")
    readings = [read_frame(f) for f in frames]
    background = _vote([r.background for r in readings])
    # Votes weighted by blob area: the shape a caption names is the big thing in the video, so a small stray blob
    # (a tokenizer artefact, or the only blob left while the shape is out of frame) cannot outvote it.
    colour = _vote([r.colour for r in readings], [r.area or 0 for r in readings])
    # Follow only the blob of that colour: blobs of other colours in some frames would jerk the path around.
    tracked = [r if r.colour == colour else FrameReading(r.background) for r in readings]
    shape = _vote([r.shape for r in tracked], [r.area or 0 for r in tracked])
    changes = motion_changes(tracked, frames.shape[2], frames.shape[1])
    best = max(changes, key=changes.__getitem__, default=None)
    motion = best if best is not None and changes[best] >= MIN_MOTION else None
    return Reading(colour, shape, motion, background), readings


@dataclass(frozen=True)
class CaptionFollowing:
    n: int  # videos scored
    accuracy: dict[str, float]  # per field in FIELDS: share read back equal to the truth
    chance: dict[str, float]  # per field: 1 / number of values
    mean: float  # mean of the per-field accuracies: the one number a gate compares
    mean_chance: float
    all_correct: float  # share with every field right
    all_chance: float  # product of the chances

    def lines(self) -> list[str]:
        """A small table: one line per field, then the mean and all-correct lines."""
        rows = [(f, self.accuracy[f], self.chance[f]) for f in FIELDS]
        rows += [("mean", self.mean, self.mean_chance), ("all", self.all_correct, self.all_chance)]
        return [f"caption following over {self.n} videos"] + [
            f"{name:<7} {acc:4.0%} (chance {ch:.0%})" for name, acc, ch in rows
        ]

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for MLflow: caption_<field>_accuracy, caption_<field>_chance, caption_mean_accuracy, ..."""
        out: dict[str, float] = {"caption_n": float(self.n)}
        for f in FIELDS:
            out[f"caption_{f}_accuracy"], out[f"caption_{f}_chance"] = self.accuracy[f], self.chance[f]
        out.update(
            caption_mean_accuracy=self.mean,
            caption_mean_chance=self.mean_chance,
            caption_all_accuracy=self.all_correct,
            caption_all_chance=self.all_chance,
        )
        return out


_VALUES: dict[str, Mapping[str, object]] = {"colour": COLOURS, "shape": SHAPES, "motion": MOTIONS}


def score(readings: Sequence[Reading], truths: Sequence[Mapping[str, str]]) -> CaptionFollowing:
    """Per-field accuracy of `readings` against ground truth (e.g. manifest rows); a None reading is wrong."""
    if len(readings) != len(truths):
        raise ValueError(f"{len(readings)} readings for {len(truths)} truths")
    if not readings:
        raise ValueError("nothing to score")
    right = np.array(
        [[getattr(r, f) is not None and getattr(r, f) == t[f] for f in FIELDS] for r, t in zip(readings, truths)]
    )
    accuracy = {f: float(right[:, k].mean()) for k, f in enumerate(FIELDS)}
    chance = {f: 1.0 / len(_VALUES[f]) for f in FIELDS}
    return CaptionFollowing(
        n=len(readings),
        accuracy=accuracy,
        chance=chance,
        mean=float(np.mean(list(accuracy.values()))),
        mean_chance=float(np.mean(list(chance.values()))),
        all_correct=float(right.all(axis=1).mean()),
        all_chance=float(np.prod(list(chance.values()))),
    )


def confusion(readings: Sequence[Reading], truths: Sequence[Mapping[str, str]], field: str) -> str:
    """A markdown table of `field`: one row per asked-for value, one column per value read back ("none": nothing
    read), counts of videos. Accuracy says how often a field is right; this says what the wrong ones look like
    (every shape read as a triangle, moving objects read as shrinking: an object that fades as frames go on)."""
    names = list(_VALUES[field])
    counts = Counter((t[field], getattr(r, field)) for r, t in zip(readings, truths))
    columns = [*names, None]
    lines = [
        f"| {field}: asked, read → | " + " | ".join(c or "none" for c in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(str(counts.get((name, c), 0)) for c in columns) + " |" for name in names]
    return "\n".join(lines)


def presence(frame_readings: Sequence[Sequence[FrameReading]], truths: Sequence[Mapping[str, str]]) -> str:
    """A markdown table: per asked-for motion, the share of frames with a shape found and its mean area (pixels),
    in three equal stretches of the videos (start, middle, end). An object that fades as frames go on, or that is
    missing at the start of a move, shows here before it shows in the motion read back."""
    by_motion: dict[str, list[np.ndarray]] = {}
    for readings, truth in zip(frame_readings, truths):
        found = np.array([r.area is not None for r in readings], dtype=float)
        area = np.array([r.area or 0.0 for r in readings])
        stretches = np.array_split(np.arange(len(readings)), 3)
        by_motion.setdefault(truth["motion"], []).append(
            np.array([[found[k].mean(), area[k].mean()] for k in stretches])
        )
    names = ("start", "middle", "end")
    lines = [
        "| motion asked | videos | "
        + " | ".join(f"found, {n}" for n in names)
        + " | "
        + " | ".join(f"area, {n}" for n in names)
        + " |",
        "|---" * (2 + 2 * len(names)) + "|",
    ]
    for motion in (m for m in _VALUES["motion"] if m in by_motion):
        mean = np.mean(by_motion[motion], axis=0)  # (3, 2): (found, area) per stretch
        lines.append(
            f"| {motion} | {len(by_motion[motion])} | "
            + " | ".join(f"{v:.0%}" for v in mean[:, 0])
            + " | "
            + " | ".join(f"{v:.0f}" for v in mean[:, 1])
            + " |"
        )
    return "\n".join(lines)
