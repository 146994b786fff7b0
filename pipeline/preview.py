"""Contact sheets of clips: each clip's 5 frames in a row, its caption and frame-rate token beneath.

Chinese captions need a font with CJK glyphs, which a fresh server or container lacks, so cogflow ships one:
pipeline/fonts/cogflow-cjk-sc.otf, the common simplified characters of Noto Sans CJK SC (OFL; infra/make_cjk_font.py
makes it). $COGFLOW_FONT, when it names a font file, is used instead (e.g. for traditional characters).
"""

from __future__ import annotations

import os
import random
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
SHIPPED_FONT = Path(__file__).parent / "fonts" / "cogflow-cjk-sc.otf"
PREVIEW_COLUMNS = ["clip_id", "caption", "stage", "fps", "fps_token", "start_s", "frames", "shard_id"]


@cache
def find_font() -> str:
    """The font file captions are drawn with: $COGFLOW_FONT when it names a file, else the one cogflow ships."""
    chosen = os.environ.get("COGFLOW_FONT")
    if chosen and Path(chosen).is_file():
        return chosen
    return str(SHIPPED_FONT)


def font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont:
    """The caption font (find_font) at `size` pixels."""
    return ImageFont.truetype(find_font(), size)


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
    face = font()
    width = CLIP_FRAMES * CLIP_SIZE + (CLIP_FRAMES - 1) * GAP + 2 * MARGIN
    line_h = FONT_SIZE + 4
    rows = []
    for clip in clips:
        header = f"{clip['fps_token']}   stage {clip['stage']}   from {clip['start_s']:.2f} s   clip {clip['clip_id']}"
        lines = [header, *_wrap(clip["caption"], face, width - 2 * MARGIN)]
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
                (MARGIN, y + CLIP_SIZE + GAP + n * line_h), line, fill=(90, 90, 90) if n == 0 else "black", font=face
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
