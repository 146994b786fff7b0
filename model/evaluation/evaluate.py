"""Evaluate a trained pair of stages: what the registry's gate decides on (flows/register.py).

- Bits per token of each stage on the lake's val split (of its own frame tokenizer's token files; the train split
  when the lake has no val videos), the same rows for any model on those tokens, so two models compare fairly.
- Videos for held-out prompts: the val split's captions, and on the generated sample data, captions of the sample
  world that no training clip had (the generator's ground truth comes with both). All prompts go through both
  stages in batches, as `cogflow generate` would make them one by one.
- Caption following: on prompts with ground truth, colour, shape and motion are read back from the generated frames
  (model/evaluation/caption_following.py) and scored against the truth, next to chance.

Everything a person would look at lands in `out_dir`: one MP4 per prompt, a sheet of all of them with what was read
back, and prompts.json.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cogflow.model import media
from cogflow.model.cogvideo import data, steps, train
from cogflow.model.cogvideo.stages import Stage
from cogflow.model.evaluation.caption_following import (
    FIELDS,
    CaptionFollowing,
    Reading,
    confusion,
    presence,
    read_video_frames,
    score,
)
from cogflow.model.serving.text_to_video import KEYFRAME_FPS, TextToVideo
from cogflow.model.tokenizers.text import TextTokenizer
from cogflow.pipeline import lake, sample_data
from cogflow.pipeline.contract import INTERPOLATION_ROUNDS
from cogflow.pipeline.preview import font as caption_font
from cogflow.pipeline.settings import Settings
from cogflow.pipeline.storage import Storage


@dataclass(frozen=True)
class EvalConfig:
    prompts: int = 24  # held-out prompts to generate a video for
    seed: int = 0
    batch: int = 32  # prompts generated at once: fewer, larger decoding steps (the demo's 96 videos: 4 batches)
    val_rows: int = 256  # val rows for bits per token (fewer when the split is smaller)
    temperature: float | None = None  # sampling options; None: each stage's [generate] table
    top_k: int | None = None
    top_p: float | None = None
    guidance: float | None = None

    def options(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "guidance": self.guidance}


@dataclass(frozen=True)
class Prompt:
    caption: str
    source: str  # "val": a val-split caption of the lake; "held-out": a sample-world caption no video of the lake has
    truth: dict[str, str] | None  # the sample generator's colour, shape, motion, background; None for real captions


@dataclass
class Evaluation:
    bits: dict[int, float]  # stage -> val bits per token
    eval_split: str  # "val", or "train" for a lake without val videos
    val_rows: dict[int, int]  # stage -> rows evaluated
    prompts: list[Prompt]
    readings: list[Reading]
    following: CaptionFollowing | None  # None: no prompt with ground truth
    videos: list[str]  # one MP4 per prompt, in order
    sheet: str  # every prompt's video in a row, with what was read back
    seconds: float
    codes_per_s: float

    def metrics(self) -> dict[str, float]:
        out = {f"stage{s}_{self.eval_split}_bits_per_token": b for s, b in self.bits.items()}
        out["generation_codes_per_s"] = self.codes_per_s
        if self.following is not None:
            out.update(self.following.as_dict())
        return out

    def lines(self) -> list[str]:
        out = [
            f"stage {s} {self.eval_split} bits per token {b:.3f} ({self.val_rows[s]} clips)"
            for s, b in self.bits.items()
        ]
        sources = {s: sum(p.source == s for p in self.prompts) for s in ("val", "held-out")}
        out.append(
            f"{len(self.prompts)} videos for held-out prompts ({sources['val']} val captions, "
            f"{sources['held-out']} unseen sample-world captions) in {self.seconds:.0f} s: {self.sheet}"
        )
        if self.following is not None:
            out.append(f"caption following on {self.following.n} videos (read back from the frames):")
            out += ["  " + line for line in self.following.lines()]
        return out


def val_rows(settings: Settings, stage: Stage, rows: int) -> tuple[dict[str, list], str]:
    """(the first `rows` val token rows of `stage`'s own frame tokenizer's tokens, their split): the rows every model
    on those tokens is measured on (train rows when the lake has no val videos)."""
    version = str(stage.info.get("frame_tokenizer_version"))
    _, parts, _ = train.token_inputs(settings, stage.model.spec.layout.stage, version)
    return data.eval_rows(Storage.at(settings.lake), parts, rows)


def val_bits(settings: Settings, stage: Stage, rows: int, batch: int = 16) -> tuple[float, str, int]:
    """(bits per token, split, rows) of `stage` on the first `rows` val rows of its own frame tokenizer's tokens."""
    spec = stage.model.spec
    chosen, split = val_rows(settings, stage, rows)
    device = next(stage.model.parameters()).device
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    bits = steps.bits_per_token(
        stage.model, spec.layout, chosen, TextTokenizer.boi_id, spec.codebook_size, batch, device, autocast
    )
    return bits, split, len(chosen["split"])


def eval_prompts(settings: Settings, count: int, seed: int = 0, max_val: int | None = None) -> list[Prompt]:
    """Up to `count` prompts no training clip had: the val split's captions first (at most `max_val` of them; None:
    up to `count`), then (when the lake holds the generated sample data, whose captions carry their ground truth)
    unseen captions of the sample world."""
    val_limit = count if max_val is None else min(count, max_val)
    table = lake.read_table(Storage.at(settings.lake), "captions", ["caption_id", "caption", "split", "metadata"])
    rows = sorted(table.to_pylist(), key=lambda r: r["caption_id"])
    truths = [_truth(r["metadata"]) for r in rows]
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for row, truth in zip(rows, truths):
        if row["split"] == "val" and row["caption"] not in seen and len(prompts) < val_limit:
            prompts.append(Prompt(row["caption"], "val", truth))
            seen.add(row["caption"])
    if len(prompts) < count and any(truths):
        known = {r["caption"] for r in rows}
        for spec in sample_data.held_out_specs(count - len(prompts), exclude=known, seed=seed):
            prompts.append(Prompt(spec.caption, "held-out", {f: getattr(spec, f) for f in (*FIELDS, "background")}))
    return prompts


def batch_seed(seed: int, batch: int) -> int:
    """The sampling seed of the `batch`-th batch of evaluation prompts: one per batch, since a row draws its noise by
    its index within the batch (sampling.gumbel_noise), and the same videos for the same prompts, batch and seed."""
    return seed * 7919 + batch


def _truth(metadata: str | None) -> dict[str, str] | None:
    """The sample generator's ground truth in a caption's metadata (the manifest's extra columns), if it is there."""
    meta = json.loads(metadata) if metadata else {}
    wanted = (*FIELDS, "background")
    return {f: str(meta[f]) for f in wanted} if all(meta.get(f) for f in wanted) else None


def evaluate_pair(
    settings: Settings,
    t2v: TextToVideo,
    config: EvalConfig,
    out_dir: Path,
    on_batch: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Val bits per token of both stages, a video per held-out prompt, caption following where there is truth."""
    started = time.monotonic()
    bits, rows, split = {}, {}, "val"
    for stage in (t2v.first, t2v.second):
        s = stage.model.spec.layout.stage
        bits[s], split, rows[s] = val_bits(settings, stage, config.val_rows)

    prompts = eval_prompts(settings, config.prompts, config.seed)
    if not prompts:
        raise ValueError(
            "the lake has no val captions to evaluate on (and is not sample data): "
            "raise COGFLOW_VAL_PERCENT or add videos"
        )
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    videos, readings, frame_readings, pixels_all, codes, seconds = [], [], [], [], 0, 0.0
    for b, start in enumerate(range(0, len(prompts), config.batch)):
        batch = prompts[start : start + config.batch]
        with torch.inference_mode():
            made = t2v.codes([p.caption for p in batch], config.options(), seed=batch_seed(config.seed, b))
            pixels = t2v.pixels(made.codes)  # (B, 33, 160, 160, 3)
        codes, seconds = codes + made.tokens, seconds + made.seconds
        for i, frames in enumerate(pixels):
            path = out_dir / "videos" / f"{start + i:03d}.mp4"
            media.write_video(path, frames, KEYFRAME_FPS * 2**INTERPOLATION_ROUNDS)
            videos.append(str(path))
            reading, per_frame = read_video_frames(frames)
            readings.append(reading)
            frame_readings.append(per_frame)
            pixels_all.append(frames[::4])  # 9 of the 33 frames, key frames among them
        if on_batch is not None:
            on_batch(min(start + config.batch, len(prompts)), len(prompts))

    scored = [(r, p.truth) for r, p in zip(readings, prompts) if p.truth is not None]
    scored_frames = [f for f, p in zip(frame_readings, prompts) if p.truth is not None]
    following = score([r for r, _ in scored], [t for _, t in scored]) if scored else None
    sheet = out_dir / "sheet.png"
    evaluation_sheet(pixels_all, prompts, readings).save(sheet)
    if scored:  # what the wrong readings are, per field, and where in the videos the shape was found
        truths = [t for _, t in scored]
        tables = [confusion([r for r, _ in scored], truths, f) for f in FIELDS] + [presence(scored_frames, truths)]
        (out_dir / "confusion.md").write_text("\n\n".join(tables) + "\n", encoding="utf-8")
    (out_dir / "prompts.json").write_text(
        json.dumps(
            [{**asdict(p), "read_back": asdict(r), "video": v} for p, r, v in zip(prompts, readings, videos)],
            ensure_ascii=False,
            indent=1,
        )
    )
    return Evaluation(
        bits,
        split,
        rows,
        prompts,
        readings,
        following,
        videos,
        str(sheet),
        time.monotonic() - started,
        codes / seconds if seconds else 0.0,
    )


# Marks the bundled caption font draws: it has no ✓ or ✗ (they came out as empty boxes on every sheet).
RIGHT, WRONG = "√", "×"


def evaluation_sheet(rows: list[np.ndarray], prompts: list[Prompt], readings: list[Reading]) -> Image.Image:
    """One row per prompt: every 4th frame, the caption, and what was read back (RIGHT/WRONG against the truth)."""
    gap, margin, text_h = 3, 8, 22
    size = rows[0].shape[1] // 2  # half size keeps a 24-prompt sheet a few MB
    columns = rows[0].shape[0]
    font = caption_font(14)
    width = 2 * margin + columns * (size + gap)
    sheet = Image.new("RGB", (width, margin + len(rows) * (text_h + size + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (frames, prompt, reading) in enumerate(zip(rows, prompts, readings)):
        y = margin + i * (text_h + size + gap)
        read = " ".join(
            f"{f}={getattr(reading, f)}"
            + ("" if prompt.truth is None else f" {RIGHT if getattr(reading, f) == prompt.truth[f] else WRONG}")
            for f in FIELDS
        )
        draw.text((margin, y), f"{prompt.caption}   [{prompt.source}]   read back: {read}", fill="black", font=font)
        for j, frame in enumerate(frames):
            sheet.paste(Image.fromarray(frame).resize((size, size)), (margin + j * (size + gap), y + text_h))
    return sheet


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)  # one line per criterion, passed or not

    def tags(self) -> dict[str, str]:
        return {"cogflow.gate": "passed" if self.promote else "failed", "cogflow.gate.reasons": "; ".join(self.reasons)}


def gate(
    candidate: Evaluation, champion_bits: dict[int, float] | None, min_caption_accuracy: float, tolerance: float = 0.0
) -> Decision:
    """Whether the candidate becomes champion: no stage worse on val bits per token than the champion's (measured
    on the same rows, `tolerance` bits allowed), and, where ground truth exists, caption following above
    `min_caption_accuracy` (the mean over colour, shape and motion)."""
    ok, reasons = True, []
    if champion_bits is None:
        reasons.append("no champion yet")
    for s, bits in candidate.bits.items():
        if champion_bits is None or s not in champion_bits:
            continue
        better = bits <= champion_bits[s] + tolerance
        ok &= better
        reasons.append(
            f"stage {s} {candidate.eval_split} bits {bits:.3f} {'<=' if better else '>'} champion's "
            f"{champion_bits[s]:.3f}" + (f" + {tolerance:g}" if tolerance else "")
        )
    following = candidate.following
    if following is None:
        reasons.append("no ground truth for caption following: not gated on it")
    else:
        above = following.mean >= min_caption_accuracy
        ok &= above
        reasons.append(
            f"caption following {following.mean:.1%} {'>=' if above else '<'} required "
            f"{min_caption_accuracy:.1%} (chance {following.mean_chance:.1%})"
        )
    return Decision(ok, reasons)
