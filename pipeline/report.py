"""The dataset report: one self-contained HTML file with the distributions to look at before training.

Before spending GPU hours on a lake, people want to see what is in it: how long and how large the videos are,
what the captions look like, why rows were turned down, how much moves, how many shots and bars the scan found,
how the clips spread over stages and frame rates, and a few clips with their captions. This module reads only
the columns it needs (clips hold their frames as large blobs, so frames are read for the sampled clips of the
contact sheet alone, by pipeline/preview.py) and draws every chart as inline SVG, with the contact sheet as a
base64 PNG: the file opens anywhere, offline, and can be mailed or kept as a run's artifact.

Old lakes lack the scan's columns (motion, shots, crop box); every section says "no data" rather than failing
when its table is empty or its column all NULL.

    data = read_lake(store)            # the columns the report needs, and the contact sheet's clips
    html = build_report_html(data)     # the page, as text
    write_report(store, out)           # both, written to `out`; returns a ReportSummary
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cogflow.pipeline import lake
from cogflow.pipeline.contract import fps_token
from cogflow.pipeline.preview import contact_sheet, select_clips
from cogflow.pipeline.sources import safe_uri
from cogflow.pipeline.storage import Storage

# The columns read per table: nothing else is read (clips' frames above all).
VIDEO_COLUMNS = [
    "width",
    "height",
    "fps",
    "duration_s",
    "rotation",
    "crop_left",
    "crop_top",
    "crop_right",
    "crop_bottom",
    "motion",
    "shot_count",
]
CAPTION_COLUMNS = ["caption", "language"]
CLIP_COLUMNS = ["stage", "fps", "motion"]
SHEET_CLIPS = 8  # clips on the contact sheet: enough to spot a bad crop or caption, small enough to stay cheap
TOP = 12  # bars in a chart of labels (resolutions, frame rates, reasons): the rest are summed as "other"

# Aspect ratios people name, upright (width over height); a video within 2% of one gets its name.
ASPECT_NAMES = {
    "1:1": 1.0,
    "5:4": 5 / 4,
    "4:3": 4 / 3,
    "3:2": 3 / 2,
    "16:10": 16 / 10,
    "16:9": 16 / 9,
    "1.85:1": 1.85,
    "2.39:1": 2.39,
    "3:4": 3 / 4,
    "2:3": 2 / 3,
    "9:16": 9 / 16,
}

# Chart geometry, in SVG user units (the page scales the SVG to its column).
WIDTH = 640
BAR_H = 18
HIST_H = 160
LABEL_W = 170
PAD = 6


@dataclass
class LakeData:
    """What the report shows, read from the lake: a few columns of each table and the contact sheet's clips."""

    lake: str  # the lake's address as messages show it (no credentials)
    videos: pa.Table  # VIDEO_COLUMNS
    captions: pa.Table  # CAPTION_COLUMNS
    rejects: pa.Table  # reason
    clip_rejects: pa.Table  # reason
    clips: pa.Table  # CLIP_COLUMNS, of finished shards
    sheet: list[dict] = field(default_factory=list)  # sampled clips with their frames (preview.PREVIEW_COLUMNS)


@dataclass
class ReportSummary:
    """The report's headline numbers, for the command's output and the split flow's artifact."""

    lake: str
    out: Path | None
    videos: int
    captions: int
    clips: int
    rejects: int
    clip_rejects: int
    letterboxed: int  # videos whose crop box is not the whole frame
    sheet_clips: int
    seconds: float

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("videos", self.videos),
            ("captions", self.captions),
            ("clips", self.clips),
            ("rejected rows", self.rejects),
            ("rejected clips", self.clip_rejects),
            ("letterboxed videos", self.letterboxed),
        ]

    def text(self) -> str:
        lines = [f"report of {self.lake} ({self.seconds:.1f} s)"]
        lines += [f"  {what:<18}  {n:>9,}" for what, n in self.rows()]
        lines.append(f"wrote {self.out}" if self.out else "not written")
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"Dataset report of `{self.lake}`", "", "| what | count |", "| --- | ---: |"]
        lines += [f"| {what} | {n:,} |" for what, n in self.rows()]
        if self.out:
            lines += ["", f"The whole report (charts, contact sheet): `{self.out}`"]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Reading


def read_lake(store: Storage, seed: int = 0, sheet_clips: int = SHEET_CLIPS) -> LakeData:
    """The columns the report needs (an empty table where the lake has none), and `sheet_clips` clips drawn at
    random (seeded) from every stage and frame rate in turn, frames included."""
    # read_table gives old parts the lake's current schema, so a column they lack reads as NULL.
    return LakeData(
        lake=safe_uri(store.root),
        videos=lake.read_table(store, "videos", VIDEO_COLUMNS),
        captions=lake.read_table(store, "captions", CAPTION_COLUMNS),
        rejects=lake.read_table(store, "rejects", ["reason"]),
        clip_rejects=lake.read_table(store, "clip_rejects", ["reason"]),
        clips=lake.read_clips(store, CLIP_COLUMNS),
        sheet=select_clips(store, random_n=sheet_clips, seed=seed) if sheet_clips else [],
    )


def _values(table: pa.Table, column: str) -> list:
    """The column's non-NULL values (and no NaN)."""
    return [v for v in table[column].to_pylist() if v is not None and v == v]


def _has_bars(left: float | None, top: float | None, right: float | None, bottom: float | None) -> bool | None:
    """Whether a crop box cuts bars off (None: not scanned). NULL or (0, 0, 1, 1) is the whole frame."""
    if left is None or top is None or right is None or bottom is None:
        return None if (left, top, right, bottom) == (None, None, None, None) else False
    return max(abs(left), abs(top), abs(1 - right), abs(1 - bottom)) > 1e-6


def letterbox_counts(videos: pa.Table) -> Counter[str]:
    """Videos by crop box: 'bars cropped', 'full frame' or 'not scanned'."""
    boxes = zip(*(videos[c].to_pylist() for c in ("crop_left", "crop_top", "crop_right", "crop_bottom")))
    names = {True: "bars cropped", False: "full frame", None: "not scanned"}
    return Counter(names[_has_bars(*box)] for box in boxes)


def aspect_name(width: int, height: int, rotation: int | None) -> str:
    """The upright aspect ratio's usual name (within 2%), else its value as 'R:1'."""
    if rotation in (90, 270):  # a phone video stored on its side: shown upright
        width, height = height, width
    ratio = width / height
    name, value = min(ASPECT_NAMES.items(), key=lambda item: abs(item[1] - ratio))
    return name if abs(value - ratio) <= 0.02 * value else f"{ratio:.2f}:1"


def summarize(data: LakeData, out: Path | None = None, seconds: float = 0.0) -> ReportSummary:
    """The headline numbers of what `read_lake` read."""
    return ReportSummary(
        lake=data.lake,
        out=out,
        videos=data.videos.num_rows,
        captions=data.captions.num_rows,
        clips=data.clips.num_rows,
        rejects=data.rejects.num_rows,
        clip_rejects=data.clip_rejects.num_rows,
        letterboxed=letterbox_counts(data.videos)["bars cropped"],
        sheet_clips=len(data.sheet),
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------------------------
# Drawing: plain SVG, so the page needs nothing but a browser


def no_data(what: str = "") -> str:
    return f'<p class="none">no data{": " + html.escape(what) if what else ""}</p>'


def _top(counts: Counter, top: int = TOP) -> list[tuple[str, int]]:
    """The `top` largest counts, the rest summed as 'other'."""
    common = counts.most_common(top)
    rest = sum(counts.values()) - sum(n for _, n in common)
    return [(str(k), n) for k, n in common] + ([("other", rest)] if rest else [])


def bar_chart(rows: list[tuple[str, int]], title: str) -> str:
    """Horizontal bars, one per (label, count), in the order given; "no data" when there are none."""
    if not rows or not any(n for _, n in rows):
        return no_data(title)
    high = max(n for _, n in rows)
    total = sum(n for _, n in rows)
    span = WIDTH - LABEL_W - 90  # room for the count and share after the bar
    parts = []
    for i, (label, n) in enumerate(rows):
        y = PAD + i * (BAR_H + 4)
        w = max(1.0, span * n / high)
        tip = html.escape(f"{label}: {n:,}")
        parts.append(
            f'<text x="{LABEL_W - 6}" y="{y + BAR_H - 5}" text-anchor="end">{html.escape(_clip_label(label))}</text>'
            f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}"><title>{tip}</title></rect>'
            f'<text x="{LABEL_W + w + 6:.1f}" y="{y + BAR_H - 5}">{n:,} ({100 * n / total:.0f}%)</text>'
        )
    height = 2 * PAD + len(rows) * (BAR_H + 4)
    return _svg(title, height, "".join(parts))


def histogram(values: list[float], title: str, unit: str = "", bins: int = 24) -> str:
    """Counts of `values` in `bins` equal bins between their least and greatest, with a line of statistics."""
    if not values:
        return no_data(title)
    array = np.asarray(values, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    if high == low:  # one value: one bar around it
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(array, bins=bins, range=(low, high))
    top, plot_h, left, right = 16, HIST_H - 40, 48, WIDTH - 12
    bar_w = (right - left) / bins
    peak = int(counts.max())
    parts = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{right}" y2="{top + plot_h}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak:,}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, n in enumerate(counts):
        h = plot_h * n / peak
        tip = html.escape(f"{_number(edges[i])} to {_number(edges[i + 1])}{unit}: {n:,}")
        parts.append(
            f'<rect x="{left + i * bar_w + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
            f'height="{h:.1f}"><title>{tip}</title></rect>'
        )
    ticks = [(left, low, "start"), ((left + right) / 2, (low + high) / 2, "middle"), (right, high, "end")]
    for x, value, anchor in ticks:
        parts.append(f'<text x="{x}" y="{top + plot_h + 16}" text-anchor="{anchor}">{_number(value)}{unit}</text>')
    stats = (
        f"{array.size:,} values; min {_number(array.min())}{unit}, median {_number(float(np.median(array)))}{unit}, "
        f"mean {_number(array.mean())}{unit}, max {_number(array.max())}{unit}"
    )
    return _svg(title, HIST_H, "".join(parts)) + f'<p class="stats">{html.escape(stats)}</p>'


def _svg(title: str, height: float, body: str) -> str:
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0f}" width="{WIDTH}" '
        f'role="img" aria-label="{html.escape(title)}">{body}</svg></figure>'
    )


def _clip_label(label: str, chars: int = 26) -> str:
    return label if len(label) <= chars else label[: chars - 1] + "…"


def _number(value: float) -> str:
    """Few digits, whatever the scale (0.0031, 2.5, 1,250)."""
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _duration(seconds: float) -> str:
    """'2.5 h', '12.0 min' or '40.2 s': hours of footage on a real lake, seconds on a sample one."""
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def table_html(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="totals">{cells}</table>'


# ---------------------------------------------------------------------------------------------------------------
# Sections: each a heading and its charts, or "no data"


def _section(title: str, *parts: str, note: str = "") -> str:
    intro = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<section><h2>{html.escape(title)}</h2>{intro}{''.join(parts)}</section>"


def totals_section(data: LakeData) -> str:
    durations = _values(data.videos, "duration_s")
    stages = Counter(_values(data.clips, "stage"))
    rows = [
        ("videos", f"{data.videos.num_rows:,}"),
        ("length of video", _duration(sum(durations))),
        ("captions", f"{data.captions.num_rows:,}"),
        ("clips", f"{data.clips.num_rows:,}"),
        *[(f"  stage {s} clips", f"{n:,}") for s, n in sorted(stages.items())],
        ("rejected manifest rows", f"{data.rejects.num_rows:,}"),
        ("rejected clips", f"{data.clip_rejects.num_rows:,}"),
    ]
    return _section("Totals", table_html(rows))


def videos_section(data: LakeData) -> str:
    v = data.videos
    sizes = Counter(f"{w}x{h}" for w, h in zip(v["width"].to_pylist(), v["height"].to_pylist()) if w and h)
    aspects = Counter(
        aspect_name(w, h, r)
        for w, h, r in zip(v["width"].to_pylist(), v["height"].to_pylist(), v["rotation"].to_pylist())
        if w and h
    )
    rates = Counter(f"{round(f, 2):g}" for f in _values(v, "fps"))  # 29.97 stays 29.97, 30.0 shows as 30
    return _section(
        "Videos",
        histogram(_values(v, "duration_s"), "duration", " s"),
        bar_chart(_top(rates), "frame rate (frames per second)"),
        bar_chart(_top(sizes), "resolution (stored width x height)"),
        bar_chart(_top(aspects), "aspect ratio (upright)"),
    )


def captions_section(data: LakeData) -> str:
    lengths = pc.utf8_length(data.captions["caption"]).to_pylist() if data.captions.num_rows else []
    languages = Counter(lang or "unknown" for lang in data.captions["language"].to_pylist())
    return _section(
        "Captions",
        histogram([n for n in lengths if n is not None], "caption length", " chars"),
        bar_chart(_top(languages), "language"),
        note="Lengths in characters: Chinese has no spaces to count words by.",
    )


def rejects_section(data: LakeData) -> str:
    return _section(
        "Rejects",
        bar_chart(_top(Counter(_values(data.rejects, "reason"))), "manifest rows and sources turned down, by reason"),
        bar_chart(_top(Counter(_values(data.clip_rejects, "reason"))), "clip windows not cut, by reason"),
    )


def motion_section(data: LakeData) -> str:
    scanned = _values(data.videos, "motion")
    clip_motion = _values(data.clips, "motion")
    return _section(
        "Motion",
        histogram(scanned, f"videos: share of pixels that move in 0.25 s ({len(scanned):,} scanned)"),
        histogram(clip_motion, "clips: share of pixels that move from frame to frame"),
        note="Scores from ingest's scan and split; lakes made before them have none.",
    )


def shots_section(data: LakeData) -> str:
    shots = _values(data.videos, "shot_count")
    bars = Counter(str(n) if n < 10 else "10+" for n in shots)
    order = sorted(bars, key=lambda k: (k == "10+", int(k.rstrip("+"))))
    totals = table_html(
        [
            ("videos scanned", f"{len(shots):,} of {data.videos.num_rows:,}"),
            ("shots", f"{sum(shots):,}"),
            ("shots per video (mean)", f"{sum(shots) / len(shots):.2f}" if shots else "-"),
            ("videos of more than one shot", f"{sum(1 for n in shots if n > 1):,}"),
        ]
    )
    return _section("Shots", bar_chart([(k, bars[k]) for k in order], "videos by their number of shots"), totals)


def clips_section(data: LakeData) -> str:
    rates = Counter(zip(data.clips["stage"].to_pylist(), data.clips["fps"].to_pylist()))
    rows = [(f"stage {s} {fps_token(f)}", rates[(s, f)]) for s, f in sorted(rates)]
    return _section("Clips", bar_chart(rows, "clips per stage and frame rate"))


def letterbox_section(data: LakeData) -> str:
    counts = letterbox_counts(data.videos)
    rows = [(k, counts[k]) for k in ("bars cropped", "full frame", "not scanned") if counts[k]]
    return _section(
        "Letterbox",
        bar_chart(rows if counts["not scanned"] < data.videos.num_rows else [], "videos by crop box"),
        note="A video with black bars has a crop box smaller than its frame; split crops to it.",
    )


def sheet_section(data: LakeData) -> str:
    if not data.sheet:
        return _section("Contact sheet", no_data("no finished clips"))
    png = io.BytesIO()
    contact_sheet(data.sheet).save(png, format="PNG", optimize=False)
    uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
    return _section(
        "Contact sheet",
        f'<img class="sheet" alt="contact sheet of {len(data.sheet)} clips" src="{uri}">',
        note=f"{len(data.sheet)} clips drawn at random from every stage and frame rate in turn.",
    )


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 760px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
figure { margin: 1em 0; } figcaption { font-weight: 600; margin-bottom: .3em; }
svg { max-width: 100%; height: auto; font-size: 11px; } svg rect { fill: #4a78b0; } svg .axis { stroke: #888; }
p.stats, p.note, p.meta { color: #666; font-size: .9em; margin: .2em 0 1em; } p.none { color: #a33; }
table.totals { border-collapse: collapse; } table.totals th { text-align: left; font-weight: normal; padding: 2px 2em 2px 0; }
table.totals td { text-align: right; font-variant-numeric: tabular-nums; }
img.sheet { max-width: 100%; border: 1px solid #ddd; }
"""


def build_report_html(data: LakeData) -> str:
    """The whole report as one HTML document: inline CSS, inline SVG charts, the contact sheet as a data URI."""
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        totals_section(data),
        videos_section(data),
        captions_section(data),
        rejects_section(data),
        motion_section(data),
        shots_section(data),
        clips_section(data),
        letterbox_section(data),
        sheet_section(data),
    ]
    title = f"cogflow dataset report: {data.lake}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>Dataset report</h1><p class="meta">lake {html.escape(data.lake)}, made {made}</p>'
        + "".join(sections)
        + "</body></html>\n"
    )


def write_report(store: Storage, out: str | Path, seed: int = 0, sheet_clips: int = SHEET_CLIPS) -> ReportSummary:
    """Read the lake, draw the report and write it to `out` (folders made as needed); its summary."""
    started = time.monotonic()
    data = read_lake(store, seed=seed, sheet_clips=sheet_clips)
    page = build_report_html(data)
    out = Path(out)
    # Written beside, then renamed: a browser or a reader never sees half a report.
    tmp = out.with_name(f".tmp-{out.name}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:  # named by the path asked for, not the temporary one
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OSError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    return summarize(data, out, time.monotonic() - started)
