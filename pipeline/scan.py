"""What a video's pictures hold, measured once at ingest before any clip is cut.

Ingest's probe decodes every frame of an accepted video once more, small (`video.scan_frames`: SCAN_WIDTH pixels
wide, the loop filter skipped), and this module measures on those frames, with numpy only:

- **shots**: hard cuts, where the colour histogram of a frame differs from the one before it by far more than the
  differences around it (an adaptive threshold, as PySceneDetect's adaptive detector) and its pixels change too,
  and fades through black (a run of black frames between pictures). Split plans clip windows inside one shot only.
- **motion**: per shot, the share of pixels whose brightness changes by more than a tenth of the picture's
  contrast between frames MOTION_GAP_S apart (0 for a still picture, whatever the codec's noise; a slow pan moves
  most of its pixels; a dark scene as much as a bright one).
- **bars**: rows and columns at the picture's edges that stay one flat colour in every frame, on both sides (a
  letterbox, a pillarbox, or a landscape clip inside a portrait phone frame), with a picture just inside them in
  most frames and shaped as films are. Their inside is the content box that split crops to before its centre crop;
  a dark scene is not flat and still enough to look like bars, nor a plain wall that something crosses.
- **brightness and sharpness**: the mean luma and the variance of the Laplacian over the content, kept as scores.
- **fingerprint**: a 64-bit DCT hash of the content's luma at FINGERPRINT_POINTS instants of the video, and its
  colour layout there (the mean colour of 4x4 cells), so a copy at another resolution, bitrate or container is
  found as a near-duplicate (pipeline/dedup.py): the hash finds candidates fast, the colours confirm them (two
  videos of one kind of scene, the same motion on another background or in another colour, hash alike).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

SCAN_WIDTH = 128  # the frames measured are this wide (their height keeps the stored aspect)
HIST_BINS = 16  # per RGB channel
CUT_MIN = 0.3  # a cut differs from the frame before by at least this much (half the L1 distance of histograms)
CUT_RATIO = 3.0  # ... and by this many times the mean difference of the frames around it
CUT_CONTEXT = 4  # frames on each side that make that mean
CUT_PIXELS = 12.0  # ... and its pixels change by this much on average (0-255): a fade or flicker of flat colour shifts
# whole histogram bins while every pixel moves a few levels only
BLACK_LUMA = 12.0  # a frame darker than this on average is black (a fade's bottom)
MOTION_LEVELS = 12  # a pixel moved when its luma changes by more than this (0-255) ...
MIN_MOTION_LEVELS = 3  # ... or less in a picture of low contrast, but never this little: a codec's noise
MOTION_GAP_S = 0.25  # motion compares frames this far apart, so a score does not depend on the frame rate
BAR_FLAT = 3.0  # a bar's rows vary less than this across the row, and its mean less than this over time (luma)
BAR_MIN = 0.02  # a bar is at least this share of the picture's height (or width) ...
BAR_MAX = 0.4  # ... and at most this: the content keeps a fifth of the picture at least
BAR_EDGE = 0.5  # the lines inside a bar's edge are not flat in at least this share of the frames
CONTENT_ASPECT = (0.5, 2.5)  # a picture inside bars is shaped as films and phone videos are (9:16 to 2.39:1)
FINGERPRINT_POINTS = (0.1, 0.3, 0.5, 0.7, 0.9)  # instants of the video (shares of its duration) that are hashed
HASH_SIZE = 32  # the content is scaled to 32x32 for its DCT; the 8x8 lowest frequencies make the 64-bit hash
FLAT_DCT = 8.0  # a picture none of whose low frequencies reaches this (orthonormal DCT of 0-255 luma) is flat
LAYOUT_CELLS = 4  # the colour layout: mean colours of 4x4 cells of the content


@dataclass(frozen=True)
class Shot:
    start_s: float
    end_s: float
    detector: str  # what ended the shot before it: 'start' for the first shot, 'cut' or 'fade'
    score: float  # how sure: the histogram difference at the cut (1 for a fade, 0 for the first shot)
    motion: float  # share of pixels that move (see the module docstring)


@dataclass(frozen=True)
class Scan:
    """The scores of one video: the `videos/` columns (`columns()`) and its shots (`shots/`)."""

    shots: list[Shot]
    crop: tuple[float, float, float, float]  # content box (left, top, right, bottom) as shares of the stored frame
    motion: float  # shot motions weighted by their length
    brightness: float  # mean luma, 0-255
    sharpness: float  # mean variance of the Laplacian of the luma (at SCAN_WIDTH)
    # one signed 64-bit hash per FINGERPRINT_POINTS instant; empty when one of them is flat (no near-duplicate search)
    fingerprint: list[int] = field(default_factory=list)
    colour_layout: bytes | None = (
        None  # (points, LAYOUT_CELLS, LAYOUT_CELLS, 3) uint8 mean colours; None without a fingerprint
    )
    frames: int = 0  # frames measured

    def columns(self) -> dict[str, object]:
        left, top, right, bottom = self.crop
        return {
            "crop_left": left,
            "crop_top": top,
            "crop_right": right,
            "crop_bottom": bottom,
            "motion": self.motion,
            "brightness": self.brightness,
            "sharpness": self.sharpness,
            "shot_count": len(self.shots),
            "fingerprint": self.fingerprint,
            "colour_layout": self.colour_layout,
        }


def luma(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) float32 luma (BT.601 weights)."""
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def histogram(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (3 * HIST_BINS,) float32, each channel's histogram summing to 1."""
    bins = (rgb.reshape(-1, 3) // (256 // HIST_BINS)).astype(np.int64) + np.arange(3) * HIST_BINS
    return np.bincount(bins.ravel(), minlength=3 * HIST_BINS).astype(np.float32) / (rgb.shape[0] * rgb.shape[1])


def moved_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels whose luma differs by more than a tenth of the picture's contrast (its 5th to 95th
    percentile; at least MIN_MOTION_LEVELS, at most MOTION_LEVELS) between two (h, w) luma frames. Relative to the
    contrast, so that a dark or hazy scene moves as much as a bright one; the floor stays above a codec's noise."""
    low, high = np.percentile(a, (5, 95))
    levels = min(max(0.1 * float(high - low), MIN_MOTION_LEVELS), MOTION_LEVELS)
    return float(np.mean(np.abs(a - b) > levels))


def laplacian_variance(y: np.ndarray) -> float:
    lap = y[1:-1, :-2] + y[1:-1, 2:] + y[:-2, 1:-1] + y[2:, 1:-1] - 4 * y[1:-1, 1:-1]
    return float(lap.var()) if lap.size else 0.0


def cuts(distances: np.ndarray, pixels: np.ndarray) -> list[int]:
    """Frame indices that start a new shot by a hard cut; distances[i] (histograms) and pixels[i] (mean absolute
    difference) compare frame i with frame i - 1."""
    found = []
    for i in range(1, len(distances)):
        d = distances[i]
        if d < CUT_MIN or pixels[i] < CUT_PIXELS:
            continue
        around = np.concatenate([distances[max(1, i - CUT_CONTEXT) : i], distances[i + 1 : i + 1 + CUT_CONTEXT]])
        if d >= CUT_RATIO * (float(around.mean()) if around.size else 0.0):
            found.append(i)
    return found


def fades(brightness: np.ndarray) -> list[int]:
    """Frame indices in the middle of each run of black frames that has pictures on both sides."""
    black = brightness < BLACK_LUMA
    found, i = [], 0
    while i < len(black):
        if not black[i]:
            i += 1
            continue
        j = i
        while j < len(black) and black[j]:
            j += 1
        if i > 0 and j < len(black):
            found.append((i + j) // 2)
        i = j
    return found


def _bars(flat: np.ndarray, busy: np.ndarray, size: int) -> tuple[int, int]:
    """Rows (or columns) at the two edges that are bars, from `flat` (one bool per line) and `busy` (the share of
    frames in which each line is not flat); (0, 0) if none."""
    lead = int(np.argmin(flat)) if not flat.all() else size
    trail = int(np.argmin(flat[::-1])) if not flat.all() else size
    low, high = BAR_MIN * size, BAR_MAX * size
    if not (low <= lead <= high and low <= trail <= high):
        return 0, 0
    # The picture begins where the bar ends: the lines just inside hold a picture in most frames. A flat background
    # that an object crosses now and then (a still camera on a plain wall) has no such edge.
    if busy[lead : lead + 3].max() < BAR_EDGE or busy[size - trail - 3 : size - trail].max() < BAR_EDGE:
        return 0, 0
    # Letterboxing is centred: bars of very different sizes are a picture's own dark or flat edge.
    if abs(lead - trail) > max(2, 0.25 * max(lead, trail)):
        return 0, 0
    return lead + 1, trail + 1  # one line more: the edge line at this scale mixes bar and picture


class _BarStats:
    """Per row and per column of the small frames: how flat each is within a frame, and how steady over time."""

    def __init__(self, height: int, width: int) -> None:
        self.n = 0
        self.spread = (np.zeros(height, np.float32), np.zeros(width, np.float32))  # max within-line std
        self.busy = (np.zeros(height, np.int64), np.zeros(width, np.int64))  # frames in which a line is not flat
        self.sums = (np.zeros(height, np.float64), np.zeros(width, np.float64))
        self.squares = (np.zeros(height, np.float64), np.zeros(width, np.float64))

    def add(self, y: np.ndarray) -> None:
        self.n += 1
        for axis, (spread, busy, sums, squares) in enumerate(zip(self.spread, self.busy, self.sums, self.squares)):
            line = 1 - axis  # rows reduce over columns (axis 1), columns over rows (axis 0)
            std = y.std(axis=line)
            np.maximum(spread, std, out=spread)
            busy += std >= BAR_FLAT
            mean = y.mean(axis=line)
            sums += mean
            squares += mean.astype(np.float64) ** 2

    def flat(self, axis: int) -> np.ndarray:
        mean = self.sums[axis] / max(self.n, 1)
        steady = np.sqrt(np.maximum(self.squares[axis] / max(self.n, 1) - mean**2, 0))
        return (self.spread[axis] < BAR_FLAT) & (steady < BAR_FLAT)

    def crop(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the content in small-frame pixels."""
        height, width = len(self.sums[0]), len(self.sums[1])
        top, bottom = _bars(self.flat(0), self.busy[0] / max(self.n, 1), height) if self.n else (0, 0)
        left, right = _bars(self.flat(1), self.busy[1] / max(self.n, 1), width) if self.n else (0, 0)
        box = left, top, width - right, height - bottom
        # A strip where something moves on a plain background (a ball bouncing up and down) is no film
        if not CONTENT_ASPECT[0] <= (box[2] - box[0]) / (box[3] - box[1]) <= CONTENT_ASPECT[1]:
            return 0, 0, width, height
        return box


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m.astype(np.float32)


_DCT = _dct_matrix(HASH_SIZE)


def dct_hash(y: np.ndarray) -> int | None:
    """A 64-bit perceptual hash of a luma picture (any size): the signs of its 8x8 lowest DCT frequencies against
    their median, as a signed int64. Scaling, re-encoding and small colour shifts leave most bits alone. None for a
    flat picture (a black frame), whose bits would be noise that every flat picture shares."""
    rows = np.linspace(0, y.shape[0], HASH_SIZE + 1).astype(int)
    cols = np.linspace(0, y.shape[1], HASH_SIZE + 1).astype(int)
    # area average into 32x32 cells (a picture smaller than 32 repeats its lines)
    small = np.array(
        [
            [y[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)].mean() for c0, c1 in zip(cols, cols[1:])]
            for r0, r1 in zip(rows, rows[1:])
        ],
        np.float32,
    )
    low = (_DCT @ small @ _DCT.T)[:8, :8].ravel()
    if np.abs(low[1:]).max() < FLAT_DCT:
        return None
    bits = low > np.median(low[1:])  # the DC term (overall brightness) stays out of the median
    value = int(sum(1 << i for i, b in enumerate(bits) if b))
    return value - (1 << 64) if value >= 1 << 63 else value


def colour_layout(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (LAYOUT_CELLS, LAYOUT_CELLS, 3) uint8: the mean colour of each cell."""
    rows = np.linspace(0, rgb.shape[0], LAYOUT_CELLS + 1).astype(int)
    cols = np.linspace(0, rgb.shape[1], LAYOUT_CELLS + 1).astype(int)
    return (
        np.array(
            [
                [rgb[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)].mean(axis=(0, 1)) for c0, c1 in zip(cols, cols[1:])]
                for r0, r1 in zip(rows, rows[1:])
            ]
        )
        .round()
        .astype(np.uint8)
    )


def _fingerprint(pictures: list[np.ndarray]) -> list[int]:
    hashes = [dct_hash(y) for y in pictures]
    return [h for h in hashes if h is not None] if len(hashes) == len(FINGERPRINT_POINTS) and None not in hashes else []


def scan(frames: Iterable[tuple[float, np.ndarray]], duration_s: float) -> Scan:
    """Measure a video from its small frames: (seconds from its start, (h, w, 3) uint8 RGB), in time order."""
    times: list[float] = []
    distances: list[float] = []
    pixels: list[float] = []
    bright: list[float] = []
    moved: list[tuple[float, float, float]] = []  # (earlier time, later time, share moved between the two)
    sharp: list[float] = []
    keep = [p * duration_s for p in FINGERPRINT_POINTS]  # instants whose nearest frame is hashed
    kept: list[tuple[float, np.ndarray, np.ndarray] | None] = [None] * len(keep)  # (time, luma, rgb)
    bars: _BarStats | None = None
    previous_hist: np.ndarray | None = None
    previous: np.ndarray | None = None
    reference: tuple[float, np.ndarray] | None = None  # the frame motion compares with
    for t, rgb in frames:
        y = luma(rgb)
        if bars is None:
            bars = _BarStats(*y.shape)
        hist = histogram(rgb)
        distances.append(0.0 if previous_hist is None else 0.5 * float(np.abs(hist - previous_hist).sum()))
        previous_hist = hist
        small = rgb.astype(np.int16)
        pixels.append(
            0.0 if previous is None or previous.shape != small.shape else float(np.abs(small - previous).mean())
        )
        previous = small
        times.append(t)
        bright.append(float(y.mean()))
        bars.add(y)
        if reference is None:
            reference = (t, y)
        elif t - reference[0] >= MOTION_GAP_S - 1e-6:
            moved.append((reference[0], t, moved_share(y, reference[1])))
            reference = (t, y)
            sharp.append(laplacian_variance(y))
        for k, target in enumerate(keep):
            slot = kept[k]
            if slot is None or abs(t - target) < abs(slot[0] - target):
                kept[k] = (t, y, rgb)
    if not times or bars is None:
        return Scan([], (0.0, 0.0, 1.0, 1.0), 0.0, 0.0, 0.0)

    height, width = len(bars.sums[0]), len(bars.sums[1])
    left, top, right, bottom = bars.crop()
    crop = (left / width, top / height, right / width, bottom / height)

    hard = cuts(np.array(distances), np.array(pixels))
    faded = fades(np.array(bright))
    starts = sorted({0, *hard, *faded})
    kinds = {i: "fade" for i in faded} | {i: "cut" for i in hard}
    shots = []
    for n, first in enumerate(starts):
        start = 0.0 if n == 0 else times[first]
        end = duration_s if n + 1 == len(starts) else times[starts[n + 1]]
        inside = [m for t0, t1, m in moved if start <= t0 and t1 < end]  # a pair across a cut is no motion
        kind = "start" if n == 0 else kinds[first]
        score = 0.0 if n == 0 else (1.0 if kind == "fade" else distances[first])
        shots.append(
            Shot(round(start, 6), round(end, 6), kind, round(score, 4), float(np.mean(inside)) if inside else 0.0)
        )
    total = sum(s.end_s - s.start_s for s in shots) or 1.0
    content = (slice(top, bottom), slice(left, right))
    return Scan(
        shots=shots,
        crop=crop,
        motion=round(sum(s.motion * (s.end_s - s.start_s) for s in shots) / total, 6),
        brightness=round(float(np.mean(bright)), 3),
        sharpness=round(float(np.mean(sharp)) if sharp else 0.0, 3),
        fingerprint=(fingerprint := _fingerprint([y[content] for _, y, _ in (k for k in kept if k is not None)])),
        colour_layout=np.stack(
            [colour_layout(rgb[content]) for _, _, rgb in (k for k in kept if k is not None)]
        ).tobytes()
        if fingerprint
        else None,
        frames=len(times),
    )
