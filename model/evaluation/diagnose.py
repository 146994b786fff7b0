"""Why a trained pair of stages does or does not follow its captions: `cogflow diagnose`, rerunnable measurements.

Each part is a plain function that can be called alone (from an experiment script, say) and returns `Measure`s,
rows of one table:
1. `caption_following`: a video for each of N prompts (half val captions of the lake, half sample-world captions no
   video of it has), read back (model/evaluation/caption_following.py) per field against the truth, with 95% Wilson intervals
   next to chance, on stage 1's 5 key frames and on the whole 33-frame video: which stage loses what.
2. The same for several sampling variants (`variants`; key frames only unless asked): is it the sampling?
3. `tokenizer_ceiling`: real clips read back before and after a round trip through the frame tokenizer, its PSNR,
   and how stable a plain background's codes are: what the transformer could show at best.
4. `neighbour_baseline`: each stage's teacher-forced argmax accuracy against copying the code at the same position
   of the previous frame.
5. `retrieval_baseline`: the nearest training clip by caption, read back against the prompt's truth: does stage 1
   beat looking up the most similar training caption?
6. `background_bits`: val bits per token of codes on pure-background tiles and of the rest.
7. `layout_check`: the training loss equals the cross entropy of cached decoding (generate's schedule) fed the true
   codes: training and generation see one layout, the same positions and masks.

`diagnose` runs them on a loaded pair; `run_diagnosis` loads the pair, runs them, writes diagnosis.json,
diagnosis.md and sheet.png under $COGFLOW_HOME/diagnoses/<stage1 run>-<stage2 run>/ and logs an MLflow run
(`cogflow.kind=diagnosis`).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from cogflow.model.cogvideo import sampling
from cogflow.model.cogvideo import stages
from cogflow.model import media
from cogflow.model.serving.text_to_video import TextToVideo
from cogflow.model.cogvideo import train
from cogflow.model.evaluation.caption_following import FIELDS, Reading, border_colour, read_video
from cogflow.model.tokenizers.encode import Tokenizers
from cogflow.model.evaluation.evaluate import (
    Prompt,
    _truth,
    batch_seed,
    eval_prompts,
    evaluation_sheet,
    val_rows,
)
from cogflow.model.tokenizers.frame import psnr
from cogflow.model.cogvideo.sampling import ROUNDS, GenerateConfig
from cogflow.model.cogvideo.stages import Stage
from cogflow.model.cogvideo.layout import IGNORE, build_inputs, slots
from cogflow.model.tokenizers.text import TextTokenizer
from cogflow.model.cogvideo.transformer import CogVideoTransformer
from cogflow.pipeline import lake
from cogflow.pipeline.contract import CLIP_FRAMES, CLIP_SIZE, naming_hash
from cogflow.pipeline.sample_data import BACKGROUNDS, COLOURS, MOTIONS, SHAPES
from cogflow.pipeline.settings import Settings
from cogflow.pipeline.storage import Storage

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals
VALUES = {"colour": COLOURS, "shape": SHAPES, "motion": MOTIONS, "background": BACKGROUNDS}  # read back; chance 1/len
READ = (*FIELDS, "background")
DEFAULT_VARIANTS = ("default", "guidance=3", "temperature=0.3")  # the demo samples without guidance
PARTS = ("following", "tokenizer", "neighbour", "retrieval", "bits", "layout")
# A tile is pure background when every pixel is this close (RGB distance) to the frame's border colour: codec noise
# on a flat colour stays well under it, the edge of a drawn shape (>= 105 from any background) does not.
BACKGROUND_DISTANCE = 24.0
LAYOUT_TOLERANCE = 1e-4  # relative difference allowed between the training loss and cached decoding's
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------
# Measures and intervals


@dataclass(frozen=True)
class Measure:
    """One row of the table: a value, its 95% interval where it is a share of independent trials, and what to
    compare it with."""

    section: str  # the heading it is listed under
    name: str
    key: str  # the MLflow metric name
    value: float
    lo: float | None = None
    hi: float | None = None
    n: int | None = None  # prompts, clips, frames or codes it was measured on
    reference: float | None = None  # chance, a baseline, the number it must equal
    reference_name: str = ""
    unit: str = "share"  # share (shown in %), bits, nats, dB, count, ratio


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of the proportion successes / n (95% by default). Unlike p ± z·se it stays inside
    [0, 1] and is not empty at 0 or n successes, which matters for a few dozen prompts."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, not {successes} of {n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at 0 or n successes one bound is exactly 0 or 1 (rounding would leave 1e-17 or 1 - 1e-16)
    return 0.0 if successes == 0 else centre - half, 1.0 if successes == n else centre + half


def proportion(section: str, name: str, key: str, successes: int, n: int, reference: float | None = None,
               reference_name: str = "") -> Measure:
    lo, hi = wilson(successes, n)
    return Measure(section, name, key, successes / n, lo, hi, n, reference, reference_name)


def _slug(text: str) -> str:
    """A metric name's part: letters, digits, '.', '_' only."""
    return re.sub(r"[^0-9A-Za-z._]+", "_", text).strip("_")


def _format(value: float, unit: str) -> str:
    return {"share": f"{value:.1%}", "bits": f"{value:.3f} bits", "nats": f"{value:.6f} nats", "dB": f"{value:.2f} dB",
            "count": f"{value:.2f}", "ratio": f"{value:.2e}"}[unit]


def reading_measures(section: str, key: str, label: str, prompts: Sequence[Prompt], readings: Sequence[Reading],
                     references: Sequence[Reading] | None = None, reference_name: str = "chance") -> list[Measure]:
    """Per field of READ, for the val prompts, the held-out ones and all (those with truth): the share read back
    right, next to chance, or next to the share `references` (other readings of the same prompts) got right."""
    out = []
    for subset in ("val", "held-out", "all"):  # a prompt's source is "val" or "held-out"
        chosen = [i for i, p in enumerate(prompts) if p.truth is not None and subset in ("all", p.source)]
        if not chosen:
            continue
        shares = []
        for f in READ:
            right = sum(getattr(readings[i], f) == prompts[i].truth[f] for i in chosen)
            reference = 1 / len(VALUES[f])
            if references is not None:
                reference = sum(getattr(references[i], f) == prompts[i].truth[f] for i in chosen) / len(chosen)
            out.append(proportion(section, f"{label} {subset} {f}", f"{key}/{_slug(subset)}/{f}", right, len(chosen),
                                  reference, reference_name))
            shares.append((right / len(chosen), reference))
        # the gate's number: the mean over colour, shape and motion (not a proportion of trials: no interval)
        mean, mean_reference = np.mean(shares[: len(FIELDS)], axis=0)
        out.append(Measure(section, f"{label} {subset} mean of {'+'.join(FIELDS)}", f"{key}/{_slug(subset)}/mean",
                           float(mean), n=len(chosen), reference=float(mean_reference), reference_name=reference_name))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Frames of the lake


def clip_frames(store: Storage, stage: int, clip_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The (5, 160, 160, 3) uint8 frames of the clips `clip_ids` of `stage`, reading one clip file at a time (a
    lake's frames do not fit in memory at once)."""
    wanted, out = pa.array(sorted(set(clip_ids)), pa.string()), {}
    for part in lake.clip_parts(store, stage):
        ids = lake.read_table(store, "clips", ["clip_id"], parts=[part])["clip_id"]
        if not pc.any(pc.is_in(ids, wanted)).as_py():
            continue
        table = lake.read_table(store, "clips", ["clip_id", "frames"], parts=[part])
        table = table.filter(pc.is_in(table["clip_id"], wanted))
        for clip_id, blob in zip(table["clip_id"].to_pylist(), table["frames"].to_pylist()):
            out[clip_id] = np.frombuffer(blob, np.uint8).reshape(CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3)
    return out


def caption_truths(store: Storage) -> dict[str, dict[str, str] | None]:
    """caption_id -> the sample generator's ground truth kept in the caption's metadata (None without it)."""
    table = lake.read_table(store, "captions", ["caption_id", "metadata"])
    return {c: _truth(m) for c, m in zip(table["caption_id"].to_pylist(), table["metadata"].to_pylist())}


def background_tiles(frame: np.ndarray, grid: int, distance: float = BACKGROUND_DISTANCE) -> np.ndarray:
    """(g, g) bool: the tiles of an (H, W, 3) uint8 frame, one per code (H/g x W/g pixels), whose every pixel lies
    within `distance` (RGB) of the frame's border colour: pure background."""
    rgb = frame.astype(np.float32)
    far = np.sqrt(((rgb - border_colour(rgb)) ** 2).sum(axis=-1)) > distance  # (H, W)
    h, w = far.shape
    return ~far.reshape(grid, h // grid, grid, w // grid).any(axis=(1, 3))


# ---------------------------------------------------------------------------------------------------------------
# 1-2. Caption following, for several sampling variants


@dataclass(frozen=True)
class Variant:
    """A way to sample: `options` override the stages' [generate] tables (GenerateConfig fields)."""

    name: str  # as written: "default", "guidance=1", "temperature=0.3+top_k=0"
    options: dict[str, object]


def parse_variant(text: str) -> Variant:
    """'default' (the stages' own tables) or KEY=VALUE[+KEY=VALUE...] over GenerateConfig's sampling fields."""
    text = text.strip()
    if text == "default":
        return Variant(text, {})
    types = {f.name: f.type for f in fields(GenerateConfig) if f.name != "parallel"}
    options: dict[str, object] = {}
    for item in text.split("+"):
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise ValueError(f"a sampling variant is 'default' or KEY=VALUE[+KEY=VALUE] with KEY one of "
                             f"{', '.join(types)}; not {text!r}")
        options[name] = int(value) if types[name] in ("int", int) else float(value)
    GenerateConfig(**options)  # out-of-range values fail here, before any video is made
    return Variant(text, options)


def describe(config: GenerateConfig) -> str:
    return (f"temperature {config.temperature:g}, top-k {config.top_k or 'off'}, top-p {config.top_p:g}, "
            f"guidance {config.guidance:g}")


def diagnosis_prompts(settings: Settings, count: int, seed: int = 0) -> list[Prompt]:
    """`count` prompts: up to half of them val captions of the lake (with their truth where the lake has it), the
    rest sample-world captions no video of the lake has (sample data only)."""
    return eval_prompts(settings, count, seed, max_val=count // 2)


@dataclass
class Following:
    """What parts 1-2 made: for each (variant, "key frames" | "video"), one reading per prompt."""

    prompts: list[Prompt]
    readings: dict[tuple[str, str], list[Reading]]
    measures: list[Measure]
    sheet: list[np.ndarray]  # per prompt, the first variant's video, every 4th frame (its 5 key frames when only those)
    sheet_readings: list[Reading]
    seconds: dict[str, float]  # per variant


def caption_following(t2v: TextToVideo, prompts: Sequence[Prompt],
                      variants: Sequence[Variant] = tuple(map(parse_variant, DEFAULT_VARIANTS)), *, seed: int = 0,
                      batch: int = 8, full: Sequence[str] | None = None,
                      log: Callable[[str], None] = lambda line: None) -> Following:
    """Videos for `prompts` with each sampling variant, in batches with evaluate_pair's seeds (the default variant
    makes the evaluation's videos), read back on stage 1's key frames and, for the variants named in `full`
    (default: the first), on the whole 33-frame video after stage 2."""
    full = [variants[0].name] if full is None else list(full)
    first, tokenizers = t2v.first, t2v.tokenizers
    readings: dict[tuple[str, str], list[Reading]] = {}
    sheet: list[np.ndarray] = []
    sheet_readings: list[Reading] = []
    measures: list[Measure] = []
    seconds: dict[str, float] = {}
    for v, variant in enumerate(variants):
        started = time.monotonic()
        whole = variant.name in full
        keys, videos = [], []
        for b, start in enumerate(range(0, len(prompts), batch)):
            captions, batch_seeded = [p.caption for p in prompts[start:start + batch]], batch_seed(seed, b)
            if whole:  # its key frames are stage 1's, exactly: stage 2 keeps every given frame
                codes = t2v.codes(captions, variant.options, batch_seeded).codes
            else:
                codes = t2v.keyframes(captions, variant.options, batch_seeded)[0].codes
            pixels = media.to_pixels(tokenizers, codes)  # (B, 33 or 5, 160, 160, 3)
            for frames in pixels:
                keys.append(read_video(frames[:: 2**ROUNDS] if whole else frames))
                if whole:
                    videos.append(read_video(frames))
                if v == 0:
                    sheet.append(frames[::4] if whole else frames)
                    sheet_readings.append(videos[-1] if whole else keys[-1])
            log(f"  {variant.name}: {len(keys)}/{len(prompts)} {'videos' if whole else 'key frames'} "
                f"({time.monotonic() - started:.0f} s)")
        seconds[variant.name] = time.monotonic() - started
        config = stages.sampling_config(first, variant.options)
        section = f"caption following, sampling {variant.name} ({describe(config)})"
        key = f"following/{_slug(variant.name)}"
        readings[variant.name, "key frames"] = keys
        measures += reading_measures(section, f"{key}/keys", "key frames", prompts, keys)
        if whole:
            readings[variant.name, "video"] = videos
            measures += reading_measures(section, f"{key}/video", "video", prompts, videos)
    return Following(list(prompts), readings, measures, sheet, sheet_readings, seconds)


# ---------------------------------------------------------------------------------------------------------------
# 3. The frame tokenizer's ceiling


def tokenizer_ceiling(settings: Settings, tokenizers: Tokenizers, clips: int = 48, batch: int = 16) -> list[Measure]:
    """`clips` real stage-1 clips (val first, then train) read back before and after a round trip through the frame
    tokenizer (encode -> decode), with intervals, where their captions carry ground truth; the round trip's PSNR;
    and per frame how stable the background's codes are: the share of the frame's codes equal to its most frequent
    code, and the number of distinct codes among its pure-background tiles (ideally 1: a flat colour, one code)."""
    section = f"frame tokenizer ceiling (v{tokenizers.frame_version}) on real stage-1 clips"
    store = Storage.at(settings.lake)
    table = lake.read_clips(store, ["clip_id", "caption_id", "split"], stage=1)
    rows = sorted(table.to_pylist(), key=lambda r: (r["split"] != "val", r["clip_id"]))[:clips]
    if not rows:
        raise ValueError("the lake has no stage-1 clips: run `cogflow split` first")
    frames = clip_frames(store, 1, [r["clip_id"] for r in rows])
    real = np.stack([frames[r["clip_id"]] for r in rows])  # (M, 5, 160, 160, 3)
    flat = torch.from_numpy(real.reshape(-1, CLIP_SIZE, CLIP_SIZE, 3))
    codes = torch.cat([tokenizers.frames.encode(chunk.to(tokenizers.device)).cpu() for chunk in flat.split(batch)])
    grid = codes.shape[-1]  # codes (M*5, g, g)
    decoded = media.to_pixels(tokenizers, codes.reshape(len(rows), CLIP_FRAMES, grid * grid))  # (M, 5, 160, 160, 3)

    out = []
    truths = caption_truths(store)
    scored = [(i, truths.get(r["caption_id"])) for i, r in enumerate(rows) if truths.get(r["caption_id"])]
    for label, video in (("real frames", real), ("after the round trip", decoded)):
        readings = [read_video(video[i]) for i, _ in scored]
        for f in READ if scored else ():
            right = sum(getattr(r, f) == truth[f] for r, (_, truth) in zip(readings, scored))
            out.append(proportion(section, f"{label}: {f} read back", f"tokenizer/{_slug(label)}/{f}", right,
                                  len(scored), 1 / len(VALUES[f]), "chance"))
    out.append(Measure(section, "PSNR of the round trip", "tokenizer/psnr",
                       psnr(flat, torch.from_numpy(decoded).view(flat.shape)), n=len(flat), unit="dB"))

    top_share, distinct, pure = [], [], []
    for frame, frame_codes in zip(real.reshape(-1, CLIP_SIZE, CLIP_SIZE, 3), codes.numpy()):
        tiles = background_tiles(frame, grid)  # (g, g)
        top_share.append(np.bincount(frame_codes.ravel()).max() / frame_codes.size)
        pure.append(int(tiles.sum()))
        if tiles.any():
            distinct.append(len(np.unique(frame_codes[tiles])))
    out.append(Measure(section, "share of a frame's codes equal to its most frequent code", "tokenizer/top_code_share",
                       float(np.mean(top_share)), n=len(top_share)))
    out.append(Measure(section, "pure-background tiles per frame", "tokenizer/background_tiles", float(np.mean(pure)),
                       n=len(pure), unit="count"))
    if distinct:
        out.append(Measure(section, "distinct codes among a frame's pure-background tiles",
                           "tokenizer/background_codes", float(np.mean(distinct)), n=len(distinct), reference=1.0,
                           reference_name="ideal", unit="count"))
    return out


# ---------------------------------------------------------------------------------------------------------------
# 4 and 6. Teacher forcing: each stage against copying the previous frame, its loss on background and objects


@dataclass(frozen=True)
class CodePredictions:
    """Every predicted code of some token rows of one stage under teacher forcing (one forward pass over the true
    codes, as in training): flat (N,) arrays, and the rows' own codes."""

    stage: int
    split: str  # of the token rows: "val", or "train" for a lake without val clips
    clip_ids: list[str]  # the token rows' clips
    codes: np.ndarray  # (R, 5, n) the rows' true codes, in time order
    row: np.ndarray  # (N,) the code's token row
    time: np.ndarray  # the code's frame time, 0..4
    index: np.ndarray  # its position in the frame, raster order
    target: np.ndarray  # the true code
    argmax: np.ndarray  # the model's likeliest code
    nll: np.ndarray  # cross entropy of the true code, nats


@torch.no_grad()
def teacher_forced(model: CogVideoTransformer, rows: dict[str, list], boi: int = TextTokenizer.boi_id,
                   batch: int = 16) -> CodePredictions:
    """The stage's predictions for token rows (train.COLUMNS as lists): inputs are the true codes (build_inputs,
    captions kept), each predicted slot's argmax and cross entropy against its target."""
    lay, device = model.spec.layout, next(model.parameters()).device
    s = slots(lay)
    got: dict[str, list[torch.Tensor]] = {k: [] for k in ("row", "time", "index", "target", "argmax", "nll", "codes")}
    for start in range(0, len(rows["clip_id"]), batch):
        part = train.to_batch({c: v[start:start + batch] for c, v in rows.items()}, lay)
        tokens, targets, valid = build_inputs(lay, part["text_ids"], part["text_mask"], part["fps"], part["codes"],
                                              model.spec.codebook_size, boi)
        hidden = model(tokens.to(device), valid.to(device))  # (B, S, C)
        predicted = targets != IGNORE  # (B, S)
        logits = model.logits(hidden[predicted.to(device)]).float().cpu()  # (N, K)
        row, slot = predicted.nonzero(as_tuple=True)  # (N,) each, in the same order as hidden[predicted]
        got["row"].append(row + start)
        got["time"].append(s.time[slot])
        got["index"].append(s.index[slot])
        got["target"].append(targets[predicted])
        got["argmax"].append(logits.argmax(-1))
        got["nll"].append(F.cross_entropy(logits, targets[predicted], reduction="none"))
        got["codes"].append(part["codes"])
    flat = {k: torch.cat(v).numpy() for k, v in got.items()}
    split = "+".join(sorted(set(rows["split"])))
    return CodePredictions(lay.stage, split, list(rows["clip_id"]), flat.pop("codes"), **flat)


def copy_previous(codes: np.ndarray, times: Sequence[int]) -> dict[int, tuple[int, int]]:
    """The copy-the-neighbour baseline: per frame time t (>= 1) of rows' codes (R, 5, n), (codes equal to the code at
    the same position of frame t - 1, codes of frame t)."""
    return {t: (int((codes[:, t] == codes[:, t - 1]).sum()), int(codes[:, t].size)) for t in times}


def neighbour_baseline(predictions: CodePredictions) -> list[Measure]:
    """Per predicted frame time, the teacher-forced argmax accuracy against copying the previous frame's code at the
    same position (stage 2: frame 0 for frame 1, frame 2 for frame 3; stage 1: frame t - 1), and over all of them."""
    p, stage = predictions, predictions.stage
    section = (f"teacher-forced code accuracy on {p.split} rows against copying the previous frame (codes are not "
               f"independent: the intervals are optimistic)")
    right = p.argmax == p.target
    times = sorted(set(p.time.tolist()))
    copy = copy_previous(p.codes, [t for t in times if t > 0])
    out = []
    for t in times:
        at = p.time == t
        reference, name = (copy[t][0] / copy[t][1], f"copy of frame {t - 1}") if t > 0 else (None, "")
        out.append(proportion(section, f"stage {stage} frame {t}: model", f"neighbour/stage{stage}/frame{t}/model",
                              int(right[at].sum()), int(at.sum()), reference, name))
        if t > 0:
            out.append(proportion(section, f"stage {stage} frame {t}: copy of frame {t - 1}",
                                  f"neighbour/stage{stage}/frame{t}/copy", *copy[t]))
    later = p.time > 0
    copied = sum(c for c, _ in copy.values()), sum(n for _, n in copy.values())
    frames = ", ".join(str(t) for t in times if t > 0)
    out.append(proportion(section, f"stage {stage} frames {frames}: model", f"neighbour/stage{stage}/model",
                          int(right[later].sum()), int(later.sum()), copied[0] / copied[1], "copy"))
    out.append(proportion(section, f"stage {stage} frames {frames}: copy", f"neighbour/stage{stage}/copy", *copied))
    return out


def code_backgrounds(settings: Settings, predictions: CodePredictions, tokenizers: Tokenizers) -> np.ndarray:
    """(N,) bool: whether each predicted code's tile of its real frame is pure background (`background_tiles`), from
    the clip's own pixels (from its codes through the frame tokenizer when the clip is no longer in the lake)."""
    p = predictions
    grid = int(round(p.codes.shape[-1] ** 0.5))
    frames = clip_frames(Storage.at(settings.lake), p.stage, p.clip_ids)
    tiles = np.zeros((len(p.clip_ids), CLIP_FRAMES, grid, grid), dtype=bool)  # (R, 5, g, g)
    for r, clip_id in enumerate(p.clip_ids):
        missing = clip_id not in frames
        clip = media.to_pixels(tokenizers, torch.from_numpy(p.codes[r : r + 1]))[0] if missing else frames[clip_id]
        tiles[r] = [background_tiles(frame, grid) for frame in clip]
    return tiles[p.row, p.time, p.index // grid, p.index % grid]


def background_bits(predictions: CodePredictions, background: np.ndarray) -> list[Measure]:
    """Bits per token of the codes on pure-background tiles and of the rest (`background` (N,) bool), and the
    shares of codes and of the total loss each holds."""
    p, stage = predictions, predictions.stage
    section = f"{p.split} bits per token, codes on pure-background tiles against the rest (object and edge tiles)"
    bits = p.nll / math.log(2)
    out = [Measure(section, f"stage {stage} all codes", f"bits/stage{stage}/all", float(bits.mean()), n=len(bits),
                   unit="bits")]
    for label, chosen in (("background", background), ("object", ~background)):
        if chosen.any():
            out.append(Measure(section, f"stage {stage} {label} codes", f"bits/stage{stage}/{label}",
                               float(bits[chosen].mean()), n=int(chosen.sum()), unit="bits"))
    out.append(proportion(section, f"stage {stage} share of codes on background",
                          f"bits/stage{stage}/background_code_share", int(background.sum()), len(background)))
    out.append(Measure(section, f"stage {stage} share of the loss on background",
                       f"bits/stage{stage}/background_loss_share", float(bits[background].sum() / bits.sum()),
                       n=len(bits)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# 5. Stage 1 against retrieval


def _pieces(tokenizer: TextTokenizer, text: str) -> set[int]:
    return set(tokenizer.encode(text))


def nearest_captions(tokenizer: TextTokenizer, queries: Sequence[str],
                     captions: Sequence[str]) -> list[tuple[int, float]]:
    """Per query, (index of the most similar of `captions`, its similarity): the Jaccard overlap of the sets of the
    text tokenizer's pieces, ties to the earliest caption."""
    pieces = [_pieces(tokenizer, c) for c in captions]
    out = []
    for query in queries:
        q = _pieces(tokenizer, query)
        scores = [len(q & c) / max(len(q | c), 1) for c in pieces]
        best = int(np.argmax(scores))
        out.append((best, scores[best]))
    return out


def retrieval_baseline(settings: Settings, tokenizers: Tokenizers, prompts: Sequence[Prompt],
                       keyframe_readings: Sequence[Reading] | None = None) -> list[Measure]:
    """For each prompt with truth, the training stage-1 clip whose caption is the most similar (`nearest_captions`),
    its real frames read back and scored against the prompt's truth: what looking up the training set gets,
    next to what stage 1's key frames got for the same prompts (`keyframe_readings`), when given."""
    section = ("stage 1 against retrieval: the nearest training clip by caption, read back (reference: stage 1's key "
               "frames)")
    store = Storage.at(settings.lake)
    table = lake.read_clips(store, ["clip_id", "caption", "split"], stage=1)
    first_clip: dict[str, str] = {}  # caption -> its first training clip
    for row in sorted(table.to_pylist(), key=lambda r: r["clip_id"]):
        if row["split"] == "train":
            first_clip.setdefault(row["caption"], row["clip_id"])
    if not first_clip:
        raise ValueError("the lake has no training stage-1 clips to retrieve")
    scored = [i for i, p in enumerate(prompts) if p.truth is not None]
    if not scored:
        return []
    captions = list(first_clip)
    nearest = nearest_captions(tokenizers.text, [prompts[i].caption for i in scored], captions)
    clip_ids = [first_clip[captions[j]] for j, _ in nearest]
    frames = clip_frames(store, 1, clip_ids)
    chosen = [prompts[i] for i in scored]
    readings = [read_video(frames[c]) for c in clip_ids]
    references = None if keyframe_readings is None else [keyframe_readings[i] for i in scored]
    out = reading_measures(section, "retrieval", "retrieved", chosen, readings, references,
                           "stage 1" if references is not None else "chance")
    out.append(Measure(section, "caption similarity of the nearest (Jaccard of pieces)", "retrieval/similarity",
                       float(np.mean([s for _, s in nearest])), n=len(nearest), unit="count"))
    same = sum(captions[j] == p.caption for (j, _), p in zip(nearest, chosen))
    out.append(proportion(section, "prompts whose caption a training clip has", "retrieval/identical_caption", same,
                          len(chosen)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# 7. The layout check


@torch.no_grad()
def layout_check(model: CogVideoTransformer, rows: dict[str, list], boi: int = TextTokenizer.boi_id,
                 parallel: bool = True) -> tuple[float, float]:
    """(the training loss `model.loss` over the whole sequence of `rows`, the mean cross entropy of cached decoding
    along generate's schedule that is fed the true codes), both in nats. Decoding starts as generation does, with the
    predicted frames unknown, and its loop puts each code chosen (here the true one) into the next slot: the two
    numbers agree only if training and generation share the layout, the positions and the masks."""
    lay, device = model.spec.layout, next(model.parameters()).device
    batch = train.to_batch(rows, lay)
    codes = batch["codes"]  # (B, 5, n)
    inputs = (lay, batch["text_ids"], batch["text_mask"], batch["fps"])
    tokens, targets, valid = (t.to(device) for t in build_inputs(*inputs, codes, model.spec.codebook_size, boi))
    full, count = model.loss(tokens, targets, valid)
    unknown = codes.clone()
    unknown[:, [t for t, given in zip(lay.slot_times, lay.given_slots) if not given]] = 0  # as generation starts
    start, _, _ = build_inputs(*inputs, unknown, model.spec.codebook_size, boi)
    total = 0.0

    def choose(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        nonlocal total
        truth = targets[:, positions]  # (B, P): the true codes of these slots
        total += F.cross_entropy(logits.flatten(0, 1).double(), truth.flatten(), reduction="sum").item()
        return truth

    sampling.decode(model, start.to(device), valid, sampling.schedule(model.spec, parallel), choose)
    return float(full), total / count


def layout_measures(stage: int, full: float, cached: float) -> list[Measure]:
    section = (f"layout check: training loss against cached decoding fed the true codes (equal within "
               f"{LAYOUT_TOLERANCE:g} relative)")
    difference = abs(full - cached) / max(abs(full), 1e-12)
    verdict = "ok" if difference <= LAYOUT_TOLERANCE else "MISMATCH"
    return [Measure(section, f"stage {stage} training loss (model.loss)", f"layout/stage{stage}/full", full, unit="nats"),
            Measure(section, f"stage {stage} cached decoding of the true codes", f"layout/stage{stage}/cached", cached,
                    reference=full, reference_name="training loss", unit="nats"),
            Measure(section, f"stage {stage} relative difference: {verdict}",
                    f"layout/stage{stage}/relative_difference", difference, reference=LAYOUT_TOLERANCE,
                    reference_name="at most", unit="ratio")]


# ---------------------------------------------------------------------------------------------------------------
# The whole diagnosis


@dataclass(frozen=True)
class DiagnoseConfig:
    prompts: int = 96  # half val captions, half unseen sample-world captions
    clips: int = 48  # real stage-1 clips for the tokenizer ceiling
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # sampling variants (parse_variant); the first is the reference
    full_sweep: bool = False  # every variant to 33-frame videos (default: the first only, key frames for the rest)
    seed: int = 0
    batch: int = 8  # prompts generated at once
    val_rows: int = 64  # token rows of each stage for the teacher-forced parts (4, 6)
    layout_rows: int = 4  # token rows of each stage for the layout check (7)
    parts: tuple[str, ...] = PARTS  # which parts to run

    def __post_init__(self) -> None:
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {', '.join(sorted(unknown))}: choose among {', '.join(PARTS)}")
        if not self.variants:
            raise ValueError("give at least one sampling variant (e.g. default)")
        for text in self.variants:
            parse_variant(text)


@dataclass
class Diagnosis:
    stage_runs: tuple[str, str]  # the stages' run ids (or the references they were loaded from)
    tokenizer_versions: tuple[str, str]  # text, frames
    config: DiagnoseConfig
    measures: list[Measure]
    seconds: dict[str, float]  # per part
    prompts: list[Prompt] = field(default_factory=list)
    out_dir: str | None = None
    mlflow_run: str | None = None

    def lines(self) -> list[str]:
        """The table: one row per measure (value, 95% interval, n, what to compare with), under its section."""
        c = self.config
        sources = {s: sum(p.source == s for p in self.prompts) for s in ("val", "held-out")}
        out = [f"diagnosis of stage 1 {self.stage_runs[0]} and stage 2 {self.stage_runs[1]} (text tokenizer "
               f"v{self.tokenizer_versions[0]}, frame tokenizer v{self.tokenizer_versions[1]}), seed {c.seed}",
               f"{len(self.prompts)} prompts ({sources['val']} val, {sources['held-out']} held-out), {c.clips} clips, "
               f"{c.val_rows} val rows per stage, variants {', '.join(c.variants)}"]
        width = max((len(m.name) for m in self.measures), default=0)
        section = None
        for m in self.measures:
            if m.section != section:
                section = m.section
                out += ["", section]
            interval = f"[{_format(m.lo, m.unit)}, {_format(m.hi, m.unit)}]" if m.lo is not None else ""
            n = f"n={m.n}" if m.n is not None else ""
            reference = f"{m.reference_name} {_format(m.reference, m.unit)}".strip() if m.reference is not None else ""
            value = _format(m.value, m.unit)
            out.append(f"  {m.name:<{width}}  {value:>14}  {interval:<16}  {n:<8}  {reference}".rstrip())
        out += ["", "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in self.seconds.items())]
        if self.out_dir:
            out.append(f"written to {self.out_dir}" + (f"; MLflow run {self.mlflow_run}" if self.mlflow_run else ""))
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def metrics(self) -> dict[str, float]:
        """Flat floats for MLflow: each measure's key, and key_lo / key_hi for its interval; seconds per part."""
        out: dict[str, float] = {}
        for m in self.measures:
            out[m.key] = m.value
            if m.lo is not None:
                out[f"{m.key}_lo"], out[f"{m.key}_hi"] = m.lo, m.hi
        out.update({f"seconds/{_slug(k)}": v for k, v in self.seconds.items()})
        return out


def diagnose(settings: Settings, t2v: TextToVideo, config: DiagnoseConfig = DiagnoseConfig(),
             log: Callable[[str], None] = lambda line: None) -> tuple[Diagnosis, Following | None]:
    """Run the parts of `config` on a loaded pair, saying what each does and how long it took; the diagnosis, and
    what caption following made (its videos, for the sheet)."""
    first, second, tokenizers = t2v.first, t2v.second, t2v.tokenizers
    measures: list[Measure] = []
    seconds: dict[str, float] = {}
    variants = [parse_variant(v) for v in config.variants]
    wanted = [p for p in PARTS if p in config.parts]

    def timed(name: str, what: str, run: Callable[[], T]) -> T:
        log(f"[{wanted.index(name) + 1}/{len(wanted)}] {what}")
        started = time.monotonic()
        result = run()
        seconds[name] = time.monotonic() - started
        log(f"    {name}: {seconds[name]:.1f} s")
        return result

    predictions: dict[int, CodePredictions] = {}

    def predicted(stage: Stage) -> CodePredictions:
        """Parts 4 and 6 share one teacher-forced pass over the val rows per stage."""
        s = stage.model.spec.layout.stage
        if s not in predictions:
            rows, _ = val_rows(settings, stage, config.val_rows)
            predictions[s] = teacher_forced(stage.model, rows, tokenizers.text.boi_id)
        return predictions[s]

    def layout(stage: Stage) -> list[Measure]:
        rows = val_rows(settings, stage, config.layout_rows)[0]
        return layout_measures(stage.model.spec.layout.stage, *layout_check(stage.model, rows, tokenizers.text.boi_id))

    prompts = diagnosis_prompts(settings, config.prompts, config.seed) if {"following", "retrieval"} & set(wanted) else []
    following = None
    if "following" in wanted:
        full = [v.name for v in variants] if config.full_sweep else None
        following = timed("following", f"caption following: {len(prompts)} prompts, sampling "
                                       f"{', '.join(config.variants)}",
                          lambda: caption_following(t2v, prompts, variants, seed=config.seed,
                                                    batch=config.batch, full=full, log=log))
        measures += following.measures
        seconds.update({f"following {name}": spent for name, spent in following.seconds.items()})
    if "tokenizer" in wanted:
        measures += timed("tokenizer", f"frame tokenizer ceiling on {config.clips} real clips",
                          lambda: tokenizer_ceiling(settings, tokenizers, config.clips))
    if "neighbour" in wanted:
        measures += timed("neighbour", f"teacher-forced accuracy against copying the previous frame ({config.val_rows} "
                                       f"val rows per stage)",
                          lambda: [m for stage in (first, second) for m in neighbour_baseline(predicted(stage))])
    if "retrieval" in wanted:
        keys = None if following is None else following.readings[variants[0].name, "key frames"]
        measures += timed("retrieval", "stage 1 against retrieving the nearest training caption",
                          lambda: retrieval_baseline(settings, tokenizers, prompts, keys))
    if "bits" in wanted:
        measures += timed("bits", "val bits per token on background and object codes",
                          lambda: [m for stage in (first, second) for m in background_bits(
                              predicted(stage), code_backgrounds(settings, predicted(stage), tokenizers))])
    if "layout" in wanted:
        measures += timed("layout", f"layout check on {config.layout_rows} val rows per stage",
                          lambda: layout(first) + layout(second))
    diagnosis = Diagnosis((first.source, second.source), (tokenizers.text_version, tokenizers.frame_version), config,
                          measures, seconds, prompts)
    return diagnosis, following


def _short(source: str) -> str:
    """A stage's name in a folder: its run id's first 8 digits, else a hash of the reference it came from."""
    return source[:8] if stages.RUN_ID.match(source) else naming_hash(source)[:8]


def save(diagnosis: Diagnosis, following: Following | None, out_dir: Path) -> list[Path]:
    """diagnosis.json, diagnosis.md (the table) and, when videos were made, sheet.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    diagnosis.out_dir = str(out_dir)
    files = [out_dir / "diagnosis.json", out_dir / "diagnosis.md"]
    files[0].write_text(json.dumps({**asdict(diagnosis), "metrics": diagnosis.metrics()}, ensure_ascii=False, indent=1))
    files[1].write_text("# cogflow diagnose\n\n```\n" + diagnosis.text() + "\n```\n")
    if following is not None and following.sheet:
        files.append(out_dir / "sheet.png")
        evaluation_sheet(following.sheet, following.prompts, following.sheet_readings).save(files[-1])
    return files


def run_diagnosis(settings: Settings, stage1: str | None = None, stage2: str | None = None,
                  config: DiagnoseConfig = DiagnoseConfig(), device: str | None = None,
                  log: Callable[[str], None] = lambda line: None) -> Diagnosis:
    """Load a trained pair (references as for `cogflow generate`; default: the newest complete run of each stage),
    diagnose it, write the files under $COGFLOW_HOME/diagnoses/<stage1 run>-<stage2 run>/ and log an MLflow run
    tagged cogflow.kind=diagnosis with the stages' runs, the metrics and the files."""
    from cogflow.model import tracking

    started = time.monotonic()
    t2v = TextToVideo.from_runs(settings, stage1, stage2, device)
    first, second, tokenizers = t2v.first, t2v.second, t2v.tokenizers
    log(f"stages {first.source} (1) and {second.source} (2) on {t2v.device}, loaded in {time.monotonic() - started:.1f} s")
    diagnosis, following = diagnose(settings, t2v, config, log)
    out_dir = Path(settings.home).absolute() / "diagnoses" / f"{_short(first.source)}-{_short(second.source)}"
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    tags = {"cogflow.stage1_run": first.source, "cogflow.stage2_run": second.source,
            "cogflow.text_tokenizer_version": tokenizers.text_version,
            "cogflow.frame_tokenizer_version": tokenizers.frame_version}
    with tracking.run("diagnosis", {"diagnosis": asdict(config)}, tags) as active:
        diagnosis.mlflow_run = active.info.run_id
        files = save(diagnosis, following, out_dir)
        tracking.log_metrics(diagnosis.metrics())
        for path in files:
            tracking.log_artifact(path)
    return diagnosis
