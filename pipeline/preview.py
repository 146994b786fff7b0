"""Contact sheets of clips: each clip's 5 frames in a row, its caption and frame-rate token beneath.

Chinese captions need a font with CJK glyphs. The first found of $COGFLOW_FONT, a CJK font known to
fontconfig, and a few usual paths is used; without one, Chinese characters show as boxes (install
fonts-wqy-microhei or fonts-noto-cjk, or point COGFLOW_FONT at any CJK .ttf/.ttc/.otf).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from cogflow.pipeline import lake
from cogflow.pipeline.contract import CLIP_FRAMES, CLIP_SIZE
from cogflow.pipeline.storage import Storage

GAP = 4
MARGIN = 8
FONT_SIZE = 15
FONT_PATHS = [
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # no CJK, but better than the bitmap default
]
PREVIEW_COLUMNS = ["clip_id", "caption", "stage", "fps", "fps_token", "start_s", "frames", "shard_id"]


@cache
def find_font() -> str | None:
    """A font file that can draw Chinese, if this machine has one (else the best other one)."""
    chosen = os.environ.get("COGFLOW_FONT")
    if chosen and Path(chosen).is_file():
        return chosen
    if shutil.which("fc-list"):
        try:
            listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10).stdout
            files = sorted(line.split(":")[0].strip() for line in listed.splitlines() if line.strip())
            if files:
                return files[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return next((p for p in FONT_PATHS if Path(p).is_file()), None)


def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = find_font()
    return ImageFont.truetype(path, FONT_SIZE) if path else ImageFont.load_default(FONT_SIZE)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy wrapping by drawn width: at spaces for Latin text, anywhere between Chinese characters."""
    lines, line = [], ""
    for token in _tokens(text):
        if line and font.getlength(line + token) > width:
            lines.append(line.rstrip())
            line = token.lstrip()
        else:
            line += token
    if line.strip():
        lines.append(line.rstrip())
    return lines or [""]


def _tokens(text: str) -> list[str]:
    tokens, word = [], ""
    for ch in text:
        if ch.isspace() or ord(ch) > 0x2E7F:  # a space, or a CJK character: a place a line may break
            if word:
                tokens.append(word)
                word = ""
            tokens.append(ch)
        else:
            word += ch
    if word:
        tokens.append(word)
    return tokens


def contact_sheet(clips: list[dict]) -> Image.Image:
    """One row per clip (keys of PREVIEW_COLUMNS): 5 frames, then token, stage, start and caption."""
    font = _font()
    width = CLIP_FRAMES * CLIP_SIZE + (CLIP_FRAMES - 1) * GAP + 2 * MARGIN
    line_h = FONT_SIZE + 4
    rows = []
    for clip in clips:
        header = f"{clip['fps_token']}   stage {clip['stage']}   from {clip['start_s']:.2f} s   clip {clip['clip_id']}"
        lines = [header, *_wrap(clip["caption"], font, width - 2 * MARGIN)]
        rows.append((clip, lines, CLIP_SIZE + GAP + len(lines) * line_h + MARGIN))
    sheet = Image.new("RGB", (width, MARGIN + sum(h for _, _, h in rows)), "white")
    draw = ImageDraw.Draw(sheet)
    y = MARGIN
    for clip, lines, height in rows:
        frames = np.frombuffer(clip["frames"], np.uint8).reshape(CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3)
        for k, frame in enumerate(frames):
            sheet.paste(Image.fromarray(frame), (MARGIN + k * (CLIP_SIZE + GAP), y))
        for n, line in enumerate(lines):
            draw.text(
                (MARGIN, y + CLIP_SIZE + GAP + n * line_h), line, fill=(90, 90, 90) if n == 0 else "black", font=font
            )
        y += height
    return sheet


def select_clips(
    store: Storage,
    clip_ids: list[str] | None = None,
    random_n: int | None = None,
    stage: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Clips by id, or `random_n` drawn at random (seeded); frames are read only for the clips chosen."""
    index = lake.read_clips(store, ["clip_id", "shard_id", "stage", "fps"], stage=stage)
    if clip_ids:
        wanted = [c for c in clip_ids if c in set(index["clip_id"].to_pylist())]
        missing = sorted(set(clip_ids) - set(wanted))
        if missing:
            raise KeyError(f"no finished clip with id {', '.join(missing)}")
    else:
        wanted = _spread_sample(index, 8 if random_n is None else random_n, seed)
    if not wanted:
        return []
    chosen = index.filter(pc.is_in(index["clip_id"], pa.array(wanted, pa.string())))
    rows: dict[str, dict] = {}
    for shard_id, shard_stage in {
        (s, st) for s, st in zip(chosen["shard_id"].to_pylist(), chosen["stage"].to_pylist())
    }:
        fs, path = store.arrow(f"clips/stage={shard_stage}/shard-{shard_id}.parquet")
        table = pq.read_table(
            path, filesystem=fs, columns=PREVIEW_COLUMNS, filters=[("clip_id", "in", wanted)], partitioning=None
        )
        rows.update({row["clip_id"]: row for row in table.to_pylist()})
    return [rows[c] for c in wanted]


def _spread_sample(index: pa.Table, n: int, seed: int) -> list[str]:
    """`n` clip ids drawn at random, taking from every (stage, frame rate) in turn: stage 2 has many more
    clips than stage 1, and a uniform draw would hardly ever show a key-frame clip."""
    rng = random.Random(seed)
    groups: dict[tuple[int, float], list[str]] = {}
    for clip_id, stage, fps in zip(*(index[c].to_pylist() for c in ("clip_id", "stage", "fps"))):
        groups.setdefault((stage, fps), []).append(clip_id)
    pools = [rng.sample(sorted(ids), len(ids)) for _, ids in sorted(groups.items())]
    wanted: list[str] = []
    while len(wanted) < n and any(pools):
        wanted += [pool.pop() for pool in pools if pool][: n - len(wanted)]
    return wanted


def write_preview(store: Storage, out: str | Path, **selection: object) -> tuple[Path, list[dict]]:
    """Select clips and write their contact sheet to `out` (PNG or JPEG, by suffix)."""
    clips = select_clips(store, **selection)  # type: ignore[arg-type]
    if not clips:
        stage = selection.get("stage")
        which = f"no finished stage-{stage} clips" if stage else "no finished clips"
        raise LookupError(f"the lake at {store.root} has {which} yet: run `cogflow split` first")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(clips).save(out)
    return out, clips
