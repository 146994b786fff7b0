"""Text to video with the two trained stages (README: Generate).

    python -m cogflow.model.generate "一个下午在海滩上奔跑的女人" -o beach.mp4 [--stage1 REF] [--stage2 REF] [--seed 0]
        [--temperature T] [--top-k K] [--top-p P] [--guidance G] [--sequential] [--frames-out sheet.png] [--upscale 480]

Read top to bottom:
1. Sampling. Every code at (stream, batch row, slot) draws its own Gumbel noise from a counter-based hash of
   (seed, stream, row, slot, code), so a code depends only on its logits and that key: decoding one code at a time
   or a wavefront of codes at once gives the same video for one seed.
2. Decoding schedules: which slots each forward call computes. `sequential` is CogVideo's (one code per call);
   `parallel` computes, per call, every slot whose receptive field has known inputs, so with windowed temporal
   attention several frames advance at once as a wavefront (the paper's parallel decoding, unreleased there).
3. The decoding loop over a schedule, with the key-value cache.
4. Stage 1: the prompt -> 5 key frames at 1 fps, with classifier-free guidance.
5. Stage 2: three rounds of interpolation at 2, 4, 8 fps: 5 -> 9 -> 17 -> 33 frames.
6. Pixels and files: MP4 (H.264) or GIF, an optional contact sheet, an optional upscale.
7. Finding the stages (MLflow runs, registry URIs or local files) and their tokenizers.
8. `generate_video`, the command line.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from cogflow.model import tracking
from cogflow.model.encode_clips import Tokenizers, load_tokenizers
from cogflow.model.layout import Layout, build_inputs, dense_mask, layer_shift, slots
from cogflow.model.progress import StepProgress
from cogflow.model.transformer import CogVideoTransformer, KVCache, ModelSpec
from cogflow.model.transformer import load as load_transformer
from cogflow.pipeline.contract import CLIP_FRAMES, FPS_RATES, INTERPOLATION_ROUNDS, run_model, stage_file
from cogflow.pipeline.preview import find_font
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.storage import safe_uri
from cogflow.pipeline.video import encode_video
from PIL import Image, ImageDraw, ImageFont

ROUNDS = INTERPOLATION_ROUNDS  # stage-2 rounds: 5 -> 9 -> 17 -> 33 frames
KEYFRAME_FPS = 1.0  # stage 1 samples at 1 fps: 5 key frames over 4 s (CogVideo's "4.0秒")
SUFFIXES = (".mp4", ".gif")
OPTIONS = ("temperature", "top_k", "top_p", "guidance", "parallel")  # GenerateConfig's fields, as options


@dataclass(frozen=True)
class GenerateConfig:
    """How codes are sampled; also the `[generate]` table of a training config (its defaults for this stage)."""

    temperature: float = 1.0
    top_k: int = 0  # keep the k likeliest codes; 0: all
    top_p: float = 1.0  # keep the fewest likeliest codes holding this much probability; 1.0: all
    guidance: float = 3.0  # stage-1 classifier-free guidance scale (CogVideo's 3.0); 1.0: off
    parallel: bool = True  # wavefront decoding (same codes as one code per call, fewer forward calls)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, not {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1: off), not {self.top_p}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0 (1: off), not {self.guidance}")


# ---------------------------------------------------------------------------------------------------------------
# 1. Sampling

MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32), in halves so that no int64 product overflows."""
    low, high = x & 0xFFFF, x >> 16
    return (low * c + (((high * c) & 0xFFFF) << 16)) & MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (Wellons' lowbias32), elementwise on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def gumbel_noise(seed: int, stream: int, rows: torch.Tensor, positions: torch.Tensor, codes: int) -> torch.Tensor:
    """(B, P, K) float64 Gumbel noise, a pure function of (seed, stream, row, slot, code): the same on any device,
    in any batch and whatever else is decoded in the same call."""
    device = rows.device
    key = torch.tensor(seed & MASK32, dtype=torch.long, device=device)
    for part in ((seed >> 32) & MASK32, stream & MASK32):
        key = _hash32(key ^ part)
    key = _hash32(key ^ rows.long()[:, None, None])  # (B, 1, 1)
    key = _hash32(key ^ positions.long()[None, :, None])  # (B, P, 1)
    key = _hash32(key ^ torch.arange(codes, device=device)[None, None, :])  # (B, P, K)
    uniform = (key.double() + 0.5) / 2**32  # in (0, 1), never 0 or 1
    return -torch.log(-torch.log(uniform))


def filter_logits(logits: torch.Tensor, config: GenerateConfig) -> torch.Tensor:
    """(..., K) -> (..., K) float64: divided by the temperature, codes outside top-k / top-p set to -inf."""
    logits = logits.double() / config.temperature
    if 0 < config.top_k < logits.shape[-1]:
        kth = logits.topk(config.top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if config.top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the likelier codes
        drop = before >= config.top_p  # the likeliest code always stays (its `before` is 0)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
    return logits


def sample_codes(logits: torch.Tensor, config: GenerateConfig, seed: int, stream: int, rows: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
    """logits (B, P, K) of the slots `positions` (P,) for batch rows `rows` (B,) -> codes (B, P).

    Gumbel-max: argmax(filtered logits + Gumbel noise) is a draw from softmax(filtered logits), and the noise is
    fixed by the code's key, not by the order in which codes are drawn."""
    noise = gumbel_noise(seed, stream, rows, positions, logits.shape[-1])
    return (filter_logits(logits, config) + noise).argmax(dim=-1)


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on log-probabilities: uncond + scale * (cond - uncond), each (B, P, K).

    CogVideo mixes raw logits; log-probabilities differ from them by a constant per row, which leaves the mixed
    distribution unchanged, and keep the two streams on one scale."""
    cond, uncond = cond.double().log_softmax(-1), uncond.double().log_softmax(-1)
    return uncond + scale * (cond - uncond)


# ---------------------------------------------------------------------------------------------------------------
# 2. Decoding schedules
#
# A schedule is a list of steps, each a LongTensor of slots that one forward call computes with the cache. A slot
# can be computed once its input token is known (text, the fps token, a given frame's codes, a predicted frame's
# <boi>; code i of a frame, the input of its slot i+1, once slot i has been computed and sampled) and once every
# slot it attends to, in any layer and either channel, is computed before or in the same call.


def attention_graph(spec: ModelSpec) -> torch.Tensor:
    """(S, S) bool: slot q attends to slot k in some layer, in the spatial or the temporal channel (the temporal
    windows shifted on odd layers)."""
    lay, layers = spec.layout, spec.config.layers
    graph = dense_mask(lay, "spatial")
    for shift in sorted({layer_shift(i, spec.shift) for i in range(layers)}):
        graph = graph | dense_mask(lay, "temporal", spec.window, shift)  # not |=: dense_mask's result is cached
    return graph


@functools.lru_cache(maxsize=16)
def receptive_fields(spec: ModelSpec) -> torch.Tensor:
    """(S, S) bool: computing slot q needs the input of slot k (q itself included).

    The cache computes a slot through all its layers in one call, so a slot attended to in any layer must be
    complete, and so must everything it attends to: the field is the transitive closure of the union of the
    layers' masks (a superset of the layered receptive field of the top layer alone). Found by squaring the
    reachability matrix until it stops growing (log2 S products)."""
    graph = attention_graph(spec)
    reach = graph | torch.eye(len(graph), dtype=torch.bool)
    while True:
        wider = (reach.float() @ reach.float()) > 0  # paths up to twice as long; exact: counts <= S < 2**24
        if torch.equal(wider, reach):
            return reach
        reach = wider


def _predicted(lay: Layout) -> torch.Tensor:
    s = slots(lay)
    return (s.frame >= 0) & ~s.given  # (S,)


def sequential_schedule(lay: Layout) -> list[torch.Tensor]:
    """CogVideo's decoding: text, fps token and given frames in one call, then one predicted code per call."""
    predicted = _predicted(lay)
    return [torch.nonzero(~predicted).squeeze(1), *torch.nonzero(predicted).squeeze(1).split(1)]


@functools.lru_cache(maxsize=16)
def _parallel(spec: ModelSpec) -> tuple[torch.Tensor, ...]:
    lay, n = spec.layout, spec.layout.frame_len
    s, predicted, field = slots(lay), _predicted(lay), receptive_fields(spec)
    known = ~predicted | (s.index == 0)  # text, the fps token, given frames and every predicted frame's <boi>
    computed = torch.zeros(lay.length, dtype=torch.bool)
    steps = []
    while not bool(computed.all()):
        candidates = torch.nonzero(known & ~computed).squeeze(1)
        step = candidates[~(field[candidates] & ~known).any(dim=1)]  # whole receptive field known
        if step.numel() == 0:
            raise RuntimeError("no slot can be computed: the masks make decoding impossible")
        steps.append(step)
        computed[step] = True
        feeding = step[predicted[step] & (s.index[step] < n - 1)]  # their codes are the inputs of the next slots
        known[feeding + 1] = True
    return tuple(steps)


def parallel_schedule(spec: ModelSpec) -> list[torch.Tensor]:
    """Greedy wavefront: each call computes every slot not computed yet whose whole receptive field has known
    inputs. Within a frame codes still come one per call; with windowed temporal attention a frame starts as
    soon as the windows it sees in earlier frames are done, so frames overlap. With whole-frame temporal
    attention the only overlap left is a frame's <boi> slot joining its predecessor's last code (CogVideo's
    <boi> trick: the last code of a frame is never an input)."""
    return list(_parallel(spec))


def schedule(spec: ModelSpec, parallel: bool) -> list[torch.Tensor]:
    return parallel_schedule(spec) if parallel else sequential_schedule(spec.layout)


# ---------------------------------------------------------------------------------------------------------------
# 3. The decoding loop

# choose(logits (B, P, K), positions (P,)) -> codes (B, P): how the codes of one call's predicted slots are drawn
Chooser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.inference_mode()
def decode(model: CogVideoTransformer, tokens: torch.Tensor, text_valid: torch.Tensor, steps: Sequence[torch.Tensor],
           choose: Chooser, bar: StepProgress | None = None) -> torch.Tensor:
    """Run `steps` with the key-value cache; returns the sampled code of every predicted slot, (B, S) long (-1
    elsewhere). tokens (B, S) hold the known inputs; a predicted slot's placeholders are filled as codes come."""
    lay, device = model.spec.layout, tokens.device
    s = slots(lay, str(device))
    predicted = (s.frame >= 0) & ~s.given  # (S,)
    feeds_next = predicted & (s.index < lay.frame_len - 1)  # its code is the input of the next slot
    tokens = tokens.clone()
    sampled = torch.full_like(tokens, -1)
    dtype = next(model.parameters()).dtype
    cache = KVCache.empty(model.spec, tokens.shape[0], device, dtype)
    for i, step in enumerate([step.to(device) for step in steps], 1):
        hidden = model(tokens[:, step], text_valid, step, cache)  # (B, P, C)
        out = predicted[step]  # (P,)
        if bool(out.any()):
            positions = step[out]  # (P',)
            codes = choose(model.logits(hidden[:, out]), positions)  # (B, P')
            sampled[:, positions] = codes
            feeding = feeds_next[positions]
            tokens[:, positions[feeding] + 1] = codes[:, feeding]
        if bar is not None:
            bar.update(i)
    return sampled


def place_codes(lay: Layout, sampled: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Write the predicted frames of `sampled` (B, S) into codes (B, 5, n), which is in time order."""
    codes, n = codes.clone(), lay.frame_len
    for slot, (t, given) in enumerate(zip(lay.slot_times, lay.given_slots)):
        if not given:
            start = lay.frame_start(slot)
            codes[:, t] = sampled[:, start : start + n]
    return codes


def _bar(description: str, total: int, progress: bool) -> StepProgress:
    return StepProgress(description, total, enabled=progress, every=max(1, total // 10))


# ---------------------------------------------------------------------------------------------------------------
# 4. Stage 1: key frames


@dataclass(frozen=True)
class Decoded:
    codes: torch.Tensor  # (B, frames, n) in time order
    steps: int  # forward calls
    tokens: int  # codes sampled (the unconditional stream's are shared, not counted twice)
    seconds: float


def generate_keyframes(model: CogVideoTransformer, text_ids: torch.Tensor, text_mask: torch.Tensor, fps_id: int,
                       boi_id: int, pad_id: int, config: GenerateConfig, seed: int = 0, progress: bool = False) -> Decoded:
    """text_ids, text_mask (B, L) -> the 5 key frames' codes (B, 5, n), sampled at the fps token `fps_id`.

    With guidance (scale != 1) the batch holds a second stream per prompt, the caption dropped (pads only, the
    same fps token), that shares the sampled codes."""
    lay, device = model.spec.layout, next(model.parameters()).device
    if lay.stage != 1:
        raise ValueError(f"key frames need a stage-1 model, not stage {lay.stage}")
    b, n = text_ids.shape[0], lay.frame_len
    text_ids, text_mask = text_ids.to(device), text_mask.to(device).bool()
    guide = config.guidance != 1.0
    if guide:  # rows [conditional B | unconditional B]
        text_ids = torch.cat([text_ids, torch.full_like(text_ids, pad_id)])
        text_mask = torch.cat([text_mask, torch.zeros_like(text_mask)])
    fps = torch.full((text_ids.shape[0],), fps_id, device=device)
    blank = torch.zeros(text_ids.shape[0], lay.frames, n, dtype=torch.long, device=device)
    tokens, _, text_valid = build_inputs(lay, text_ids, text_mask, fps, blank, model.spec.codebook_size, boi_id)
    rows = torch.arange(b, device=device)

    def choose(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if guide:
            logits = guided(logits[:b], logits[b:], config.guidance)
        codes = sample_codes(logits, config, seed, 0, rows, positions)  # (B, P)
        return torch.cat([codes, codes]) if guide else codes

    steps = schedule(model.spec, config.parallel)
    bar = _bar("stage 1: key frames", len(steps), progress)
    started = time.perf_counter()
    sampled = decode(model, tokens, text_valid, steps, choose, bar)[:b]
    codes = place_codes(lay, sampled, blank[:b]).cpu()
    seconds = time.perf_counter() - started
    bar.close()
    return Decoded(codes, len(steps), b * lay.frames * n, seconds)


# ---------------------------------------------------------------------------------------------------------------
# 5. Stage 2: interpolation


def interpolate_round(model: CogVideoTransformer, frames: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                      fps_id: int, boi_id: int, config: GenerateConfig, seed: int, stream: int,
                      progress: bool = False) -> Decoded:
    """frames (V, T, n), T odd -> (V, 2T-1, n): every window of three consecutive frames (2i, 2i+1, 2i+2) becomes
    the given times 0, 2, 4 of a stage-2 sample whose times 1 and 3 are generated; all windows in one batch.
    text_ids, text_mask (V, L): each video's caption. No guidance in stage 2 (CogVideo's default)."""
    lay, device = model.spec.layout, next(model.parameters()).device
    if lay.stage != 2:
        raise ValueError(f"interpolation needs a stage-2 model, not stage {lay.stage}")
    v, t, n = frames.shape
    if t < 3 or t % 2 == 0:
        raise ValueError(f"interpolation takes an odd number of frames (3 or more), not {t}")
    w = (t - 1) // 2
    windows = frames.to(device).unfold(1, 3, 2).permute(0, 1, 3, 2).reshape(v * w, 3, n)  # (V*W, 3, n)
    codes = torch.zeros(v * w, CLIP_FRAMES, n, dtype=torch.long, device=device)
    codes[:, 0::2] = windows  # given times 0, 2, 4; times 1, 3 are placeholders
    text_ids = text_ids.to(device).repeat_interleave(w, dim=0)  # (V*W, L)
    text_mask = text_mask.to(device).bool().repeat_interleave(w, dim=0)
    fps = torch.full((v * w,), fps_id, device=device)
    tokens, _, text_valid = build_inputs(lay, text_ids, text_mask, fps, codes, model.spec.codebook_size, boi_id)
    rows = torch.arange(v * w, device=device)

    def choose(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return sample_codes(logits, config, seed, stream, rows, positions)

    steps = schedule(model.spec, config.parallel)
    bar = _bar(f"stage 2: round {stream}, {w} windows", len(steps), progress)
    started = time.perf_counter()
    sampled = decode(model, tokens, text_valid, steps, choose, bar)
    filled = place_codes(lay, sampled, codes).view(v, w, CLIP_FRAMES, n)
    # each window contributes its times 0..3; the last frame closes the sequence
    out = torch.cat([filled[:, :, :4].reshape(v, 4 * w, n), frames[:, -1:].to(device)], dim=1).cpu()
    seconds = time.perf_counter() - started
    bar.close()
    return Decoded(out, len(steps), v * w * 2 * n, seconds)


def interpolate(model: CogVideoTransformer, keyframes: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                keyframe_fps: float, boi_id: int, fps_id: Callable[[float], int], config: GenerateConfig, seed: int = 0,
                progress: bool = False) -> tuple[Decoded, list[Decoded]]:
    """keyframes (V, 5, n) at `keyframe_fps` -> (V, 33, n) at 8x that rate, in ROUNDS rounds that double the rate
    (the fps token of round r is keyframe_fps * 2**r). Returns the whole result and each round's."""
    rounds, frames = [], keyframes
    for r in range(1, ROUNDS + 1):
        done = interpolate_round(model, frames, text_ids, text_mask, fps_id(keyframe_fps * 2**r), boi_id, config,
                                 seed, stream=r, progress=progress)
        rounds.append(done)
        frames = done.codes
    total = Decoded(frames, sum(d.steps for d in rounds), sum(d.tokens for d in rounds), sum(d.seconds for d in rounds))
    return total, rounds


# ---------------------------------------------------------------------------------------------------------------
# 6. Pixels and files


def to_pixels(tokenizers: Tokenizers, codes: torch.Tensor, batch: int = 64) -> np.ndarray:
    """codes (N, n) -> frames (N, 160, 160, 3) uint8, through the frame tokenizer's decoder."""
    g = int(round(codes.shape[-1] ** 0.5))
    grids = codes.reshape(-1, g, g).to(tokenizers.device)
    with torch.inference_mode():
        return torch.cat([tokenizers.frames.decode(chunk).cpu() for chunk in grids.split(batch)]).numpy()


def upscaled(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) -> (N, size, size, 3), bicubic (CogVideo's super-resolution stage is not reproduced)."""
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames])


def write_video(path: Path, frames: np.ndarray, fps: float) -> Path:
    """MP4 (H.264) or GIF, by the suffix. GIF goes through Pillow (a palette per frame); note that Pillow merges
    a frame identical to the one before into it (longer delay), so a still stretch has fewer GIF frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return path
    return encode_video(path, frames, fps, "mp4")


def contact_sheet(frames: np.ndarray, caption: str, note: str, keyframe_every: int, columns: int = 11) -> Image.Image:
    """Every frame in rows of `columns`, key frames (stage 1's) framed in red, the prompt and `note` above."""
    gap, margin, size = 4, 8, frames.shape[1]
    path = find_font()
    font = ImageFont.truetype(path, 15) if path else ImageFont.load_default(15)
    rows = -(-len(frames) // columns)
    width = columns * size + (columns - 1) * gap + 2 * margin
    top = margin + 2 * 20
    sheet = Image.new("RGB", (width, top + rows * (size + gap) + margin), "white")
    draw = ImageDraw.Draw(sheet)
    # one line, control characters (a pasted "\r", a tab) shown as spaces: the text shaper refuses some of them
    caption = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in caption)
    draw.text((margin, margin), caption, fill="black", font=font)
    draw.text((margin, margin + 20), note, fill=(90, 90, 90), font=font)
    for i, frame in enumerate(frames):
        x, y = margin + (i % columns) * (size + gap), top + (i // columns) * (size + gap)
        sheet.paste(Image.fromarray(frame), (x, y))
        if i % keyframe_every == 0:
            draw.rectangle((x, y, x + size - 1, y + size - 1), outline=(220, 30, 30), width=2)
    return sheet


def sample_for_training(model: CogVideoTransformer, layout: Layout, tokenizers: Tokenizers, rows: dict[str, list],
                        path: Path, options: GenerateConfig, seed: int = 0) -> Path:
    """A GIF of what a stage makes of the first of `rows` (token rows: text_ids, text_mask, fps_token_id,
    frame_codes), next to that clip's own frames: stage 1 draws 5 frames (1 for a text-to-image run) for its caption
    at its fps token; stage 2 fills frames 1 and 3 from its frames 0, 2, 4. Played at the clip's frame rate. For samples during training:
    the model is put back in the mode it was in."""
    n = layout.frame_len
    text_ids = torch.tensor(rows["text_ids"][:1], dtype=torch.long)  # (1, L)
    text_mask = torch.tensor(rows["text_mask"][:1], dtype=torch.bool)
    fps_id = int(rows["fps_token_id"][0])
    truth = torch.from_numpy(np.frombuffer(rows["frame_codes"][0], "<i2").astype(np.int64)).view(1, CLIP_FRAMES, n)
    text = tokenizers.text
    was_training = model.training
    model.eval()
    try:
        if layout.stage == 1:
            made = generate_keyframes(model, text_ids, text_mask, fps_id, text.boi_id, text.pad_id, options, seed)
        else:
            made = interpolate_round(model, truth[:, 0::2], text_ids, text_mask, fps_id, text.boi_id, options, seed, 1)
    finally:
        model.train(was_training)
    k = made.codes.shape[1]  # 5, or 1 for a text-to-image run (layout.frames 1), which shows frame 0
    pixels = to_pixels(tokenizers, torch.cat([made.codes[0], truth[0, :k]]))  # (2k, H, W, 3): made, then the clip's
    side_by_side = np.concatenate([pixels[:k], pixels[k:]], axis=2)  # (k, H, 2W, 3)
    fps = FPS_RATES[fps_id - text.fps_id(FPS_RATES[0])]
    return write_video(Path(path), side_by_side, fps)


# ---------------------------------------------------------------------------------------------------------------
# 7. Finding the stages

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _artifact(stage: int) -> str:
    return run_model(stage_file(stage))


def stage_source(settings: Settings, stage: int, ref: str | None) -> tuple[str, str | None]:
    """Where a stage's weights are: (a runs:/ or models:/ URI or a local path, the run id when known).

    ref: None (the newest complete run of the stage), or anything `model_source` takes."""
    if ref is None:
        tracking.use(settings.mlflow_tracking_uri, settings.home)
        run_id = tracking.latest_run({"cogflow.kind": f"stage{stage}", "cogflow.complete": "true"})
        if run_id is None:
            raise ValueError(f"no complete stage-{stage} run at {safe_uri(settings.mlflow_tracking_uri)}: "
                             f"run `cogflow train --stage {stage}` first (or pass --stage{stage})")
        return f"runs:/{run_id}/{_artifact(stage)}", run_id
    return model_source(ref, _artifact(stage), f"--stage{stage}")


def model_source(ref: str, artifact: str, option: str) -> tuple[str, str | None]:
    """(a runs:/ or models:/ URI or a local path, the run id when known) of the model file `ref` names: a 32-hex
    run id or `runs:/<id>` (its `artifact`), `runs:/<id>/<path>`, `models:/...`, or a local .pt file. `option` is
    what the user set, for the error message."""
    if RUN_ID.match(ref):
        return f"runs:/{ref}/{artifact}", ref
    if ref.startswith("runs:/"):
        run_id, _, path = ref.removeprefix("runs:/").partition("/")
        return f"runs:/{run_id}/{path or artifact}", run_id
    if ref.startswith("models:/"):
        return ref, None
    if Path(ref).suffix == ".pt":
        if not Path(ref).is_file():
            raise ValueError(f"{option}: no file {ref}")
        return ref, None
    raise ValueError(f"{option} takes a run id, runs:/<id>[/path], models:/<name>/<version>, or a .pt file; not {ref!r}")


def fetch_model(settings: Settings, source: str, dest: Path | None = None) -> Path:
    """The local path of the .pt file at `source` (from `stage_source` or `model_source`), downloaded into `dest`
    (default: a new temporary folder the caller owns) when it is an MLflow artifact."""
    if not source.startswith(("runs:/", "models:/")):
        return Path(source)
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    dest = Path(dest or tempfile.mkdtemp(prefix="cogflow-model-"))
    try:
        got = tracking.download(source, dest / "download")
    except Exception as exc:  # MLflow's own errors (no such run, artifact or model): one clear line instead
        raise ValueError(f"cannot fetch {source}: {str(exc).splitlines()[0]}") from exc
    if got.is_dir():  # a registered model or a run folder: the one .pt inside
        found = sorted(got.rglob("*.pt"))
        if len(found) != 1:
            raise ValueError(f"{source} holds {len(found)} .pt files, not one model file")
        got = found[0]
    return got


def find_stage(settings: Settings, stage: int, ref: str | None, dest: Path | None = None) -> Path:
    """The local path of a stage's .pt file, `ref` as in `stage_source`."""
    return fetch_model(settings, stage_source(settings, stage, ref)[0], dest)


@dataclass
class Stage:
    model: CogVideoTransformer
    info: dict  # what the file holds besides the weights: stage, tokenizer versions, run_config
    source: str  # the run id, else the reference it came from

    @property
    def defaults(self) -> dict:
        """The run's `[generate]` table (fields of GenerateConfig; unknown keys from other versions skipped)."""
        table = (self.info.get("run_config") or {}).get("generate") or {}
        names = {f.name for f in fields(GenerateConfig)}
        return {k: v for k, v in table.items() if k in names}


def load_stage(path: Path, stage: int, source: str, device: str | torch.device) -> Stage:
    """A stage file as a model on `device`, checked to be the stage asked for."""
    model, saved = load_transformer(str(path), device)
    info = {k: v for k, v in saved.items() if k != "state"}
    held = info.get("stage", model.spec.layout.stage)
    if held != stage or model.spec.layout.stage != stage:
        raise ValueError(f"{source} holds a stage-{held} model where stage {stage} was asked for")
    return Stage(model, info, source)


def pair_versions(first: Stage, second: Stage) -> tuple[str, str]:
    """(text, frame) tokenizer versions both stages were trained with; they must agree."""
    versions = [(s.info.get("text_tokenizer_version"), s.info.get("frame_tokenizer_version")) for s in (first, second)]
    if versions[0] != versions[1]:
        raise ValueError(f"stage 1 ({first.source}) was trained with text/frame tokenizer versions "
                         f"{versions[0][0]}/{versions[0][1]} and stage 2 ({second.source}) with "
                         f"{versions[1][0]}/{versions[1][1]}: pick stages trained on the same tokens")
    return str(versions[0][0]), str(versions[0][1])


def check_tokenizers(tokenizers: Tokenizers, *stages: Stage) -> Tokenizers:
    """`tokenizers`, once checked to fit every stage's codebook, text vocabulary and grid."""
    for s in stages:
        spec = s.model.spec
        have = (tokenizers.frames.config.codebook_size, tokenizers.text.vocab_size, tokenizers.frames.config.grid())
        if (spec.codebook_size, spec.text_vocab, spec.layout.grid) != have:
            raise ValueError(f"stage {spec.layout.stage} ({s.source}) has {spec.codebook_size} codes, {spec.text_vocab} "
                             f"text pieces and a {spec.layout.grid}x{spec.layout.grid} grid; its tokenizers have "
                             f"{have[0]}, {have[1]} and {have[2]}x{have[2]}")
    return tokenizers


def stage_tokenizers(settings: Settings, first: Stage, second: Stage, device: str | torch.device) -> Tokenizers:
    """The registered tokenizer versions both stages were trained with, checked against the models."""
    text_version, frame_version = pair_versions(first, second)
    return check_tokenizers(load_tokenizers(settings, frame_version, text_version, str(device)), first, second)


# ---------------------------------------------------------------------------------------------------------------
# 8. Text to video


@dataclass
class GenerateResult:
    path: str
    frames: int  # 33
    size: int  # pixels per side as written
    fps: float  # of the written video
    seconds: float  # wall time, loading included
    stage1_steps: int  # forward calls of stage 1
    stage2_steps: int  # of the three stage-2 rounds together
    tokens: int  # codes sampled
    sampling_seconds: float  # in the two stages' decoding loops
    tokens_per_s: float
    stage1_run: str  # the run id used (or the reference given)
    stage2_run: str
    seed: int
    parallel: bool
    device: str
    prompt_truncated: bool  # more text pieces than slots: the beginning was kept
    frames_out: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def sampling_config(stage: Stage, overrides: dict) -> GenerateConfig:
    """The stage's `[generate]` table with `overrides` (GenerateConfig fields; None: keep the table's)."""
    return GenerateConfig(**{**stage.defaults, **{k: v for k, v in overrides.items() if v is not None}})


def check_keyframe_fps(keyframe_fps: float) -> None:
    if any(keyframe_fps * 2**r not in FPS_RATES for r in range(ROUNDS + 1)):
        raise ValueError(f"key frames at {keyframe_fps:g} fps need fps tokens up to {keyframe_fps * 2**ROUNDS:g}; "
                         f"the text tokenizer has {', '.join(f'{f:g}' for f in FPS_RATES)}")


@dataclass(frozen=True)
class Videos:
    codes: torch.Tensor  # (B, 33, n): every frame's codes, in time order
    keyframes: Decoded  # stage 1
    interpolation: Decoded  # the three stage-2 rounds together
    truncated: list[bool]  # per prompt: more text pieces than slots (the beginning was kept)
    configs: tuple[GenerateConfig, GenerateConfig]  # as sampled by stage 1, stage 2

    @property
    def seconds(self) -> float:
        return self.keyframes.seconds + self.interpolation.seconds

    @property
    def tokens(self) -> int:
        return self.keyframes.tokens + self.interpolation.tokens


def text_to_keyframes(first: Stage, tokenizers: Tokenizers, prompts: Sequence[str], options: dict, seed: int = 0,
                      keyframe_fps: float = KEYFRAME_FPS, progress: bool = False) -> tuple[Decoded, list[bool]]:
    """prompts (B) -> stage 1 alone: the 5 key frames' codes (B, 5, n) at `keyframe_fps`, exactly those
    `text_to_video` starts from for the same arguments; and per prompt whether its text was cut."""
    check_keyframe_fps(keyframe_fps)
    text = tokenizers.text
    ids, mask, cut = text.encode_batch(list(prompts), first.model.spec.layout.text_len)
    keys = generate_keyframes(first.model, torch.from_numpy(ids), torch.from_numpy(mask), text.fps_id(keyframe_fps),
                              text.boi_id, text.pad_id, sampling_config(first, options), seed, progress)
    return keys, [bool(c) for c in cut]


def text_to_video(first: Stage, second: Stage, tokenizers: Tokenizers, prompts: Sequence[str], options: dict,
                  seed: int = 0, keyframe_fps: float = KEYFRAME_FPS, progress: bool = False) -> Videos:
    """prompts (B) -> codes of B 33-frame videos, all in one batch: stage 1's 5 key frames at `keyframe_fps`, then
    three stage-2 rounds. `options` (GenerateConfig fields, None: the stage's default) override each stage's
    `[generate]` table; guidance is stage 1's alone. Row i of a batch draws its noise as row i (see `gumbel_noise`)."""
    keys, cut = text_to_keyframes(first, tokenizers, prompts, options, seed, keyframe_fps, progress)
    config1, config2 = sampling_config(first, options), sampling_config(second, {**options, "guidance": None})
    text = tokenizers.text
    ids2, mask2, cut2 = text.encode_batch(list(prompts), second.model.spec.layout.text_len)
    video, _ = interpolate(second.model, keys.codes, torch.from_numpy(ids2), torch.from_numpy(mask2), keyframe_fps,
                           text.boi_id, text.fps_id, config2, seed, progress)
    return Videos(video.codes, keys, video, [bool(a or b) for a, b in zip(cut, cut2)], (config1, config2))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pair(settings: Settings, stage1: str | None, stage2: str | None, device: torch.device) -> tuple[Stage, Stage, Tokenizers]:
    """Both stages (references as in `stage_source`) and the tokenizers they were trained with, on `device`."""
    loaded = []
    with tempfile.TemporaryDirectory(prefix="cogflow-generate-") as tmp:  # downloads live only until loaded
        for stage, ref in ((1, stage1), (2, stage2)):
            source, run_id = stage_source(settings, stage, ref)  # resolved once: the run named is the run loaded
            loaded.append(load_stage(fetch_model(settings, source, Path(tmp) / f"stage{stage}"), stage, run_id or source, device))
    first, second = loaded
    return first, second, stage_tokenizers(settings, first, second, device)


def write_outputs(pixels: np.ndarray, out: Path, prompt: str, note: str, fps: float, frames_out: str | Path | None,
                  upscale: int | None) -> np.ndarray:
    """One video's frames (33, 160, 160, 3) to `out` (upscaled when asked) and its contact sheet to `frames_out`."""
    frames = upscaled(pixels, upscale) if upscale else pixels
    write_video(out, frames, fps)
    if frames_out is not None:
        Path(frames_out).parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(pixels, prompt, note, 2**ROUNDS).save(frames_out)
    return frames


def check_output(out: Path, upscale: int | None) -> None:
    if out.suffix.lower() not in SUFFIXES:
        raise ValueError(f"the output must be .mp4 or .gif, not {out.name}")
    if upscale is not None and (upscale < 16 or (out.suffix.lower() == ".mp4" and upscale % 2)):
        raise ValueError(f"--upscale must be at least 16 (and even for MP4), not {upscale}")


def generate_video(settings: Settings, prompt: str, out_path: str | Path, *, stage1: str | None = None,
                   stage2: str | None = None, seed: int = 0, temperature: float | None = None, top_k: int | None = None,
                   top_p: float | None = None, guidance: float | None = None, keyframe_fps: float = KEYFRAME_FPS,
                   frames_out: str | Path | None = None, upscale: int | None = None, parallel: bool | None = None,
                   device: str | None = None, progress: bool = True) -> GenerateResult:
    """`prompt` -> a 33-frame video at `out_path` (.mp4 or .gif). Sampling options left None come from each
    stage's `[generate]` table, else GenerateConfig's defaults; stage references as in `stage_source`."""
    started = time.monotonic()
    out = Path(out_path)
    check_output(out, upscale)
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    check_keyframe_fps(keyframe_fps)
    final_fps = keyframe_fps * 2**ROUNDS  # the last round's fps token, and the video's rate
    target = torch.device(device) if device else default_device()
    options = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "guidance": guidance, "parallel": parallel}

    first, second, tokenizers = load_pair(settings, stage1, stage2, target)
    made = text_to_video(first, second, tokenizers, [prompt], options, seed, keyframe_fps, progress)
    pixels = to_pixels(tokenizers, made.codes[0])  # (33, 160, 160, 3)
    note = (f"seed {seed}   {len(pixels)} frames at {final_fps:g} fps   stage 1 {first.source}   "
            f"stage 2 {second.source}   key frames framed in red")
    frames = write_outputs(pixels, out, prompt, note, final_fps, frames_out, upscale)
    return GenerateResult(
        path=str(out), frames=len(frames), size=int(frames.shape[1]), fps=final_fps,
        seconds=time.monotonic() - started, stage1_steps=made.keyframes.steps, stage2_steps=made.interpolation.steps,
        tokens=made.tokens, sampling_seconds=made.seconds, tokens_per_s=made.tokens / made.seconds if made.seconds else 0.0,
        stage1_run=first.source, stage2_run=second.source, seed=seed, parallel=made.configs[0].parallel, device=str(target),
        prompt_truncated=made.truncated[0], frames_out=None if frames_out is None else str(frames_out))


# ---------------------------------------------------------------------------------------------------------------
# The command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """generate's options (shared with `cogflow generate`)."""
    parser.add_argument("prompt", help="what the video shows (Chinese or English, as the captions were)")
    parser.add_argument("-o", "--out", required=True, help="the video to write: .mp4 (H.264) or .gif")
    parser.add_argument("--stage1", help="run id, runs:/<id>[/path], models:/<name>/<version> or a .pt file "
                                         "(default: the newest complete stage-1 run)")
    parser.add_argument("--stage2", help="the same for stage 2")
    parser.add_argument("--model", help="a registered text-to-video model instead of two stages, e.g. "
                                        "models:/cogflow-t2v@champion (or /<version>, @candidate)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same video")
    parser.add_argument("--temperature", type=float, help="default: the stage's [generate] table, else 1.0")
    parser.add_argument("--top-k", type=int, help="keep the k likeliest codes (0: off; default: as for temperature)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (1.0: off; default: as for temperature)")
    parser.add_argument("--guidance", type=float, help="stage-1 classifier-free guidance scale (1.0: off; default 3.0)")
    parser.add_argument("--sequential", action="store_true", help="one code per forward call, as CogVideo "
                                                                  "(same video, slower with windowed attention)")
    parser.add_argument("--frames-out", help="also write every frame as a contact sheet (PNG)")
    parser.add_argument("--upscale", type=int, help="resize the written video to this many pixels a side (bicubic)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    return parser


def generate_from_args(settings: Settings, args: argparse.Namespace, progress: bool = True) -> GenerateResult:
    options = dict(seed=args.seed, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   guidance=args.guidance, frames_out=args.frames_out, upscale=args.upscale,
                   parallel=False if args.sequential else None, progress=progress)
    if args.model:
        if args.stage1 or args.stage2:
            raise ValueError("--model is both stages: give it or --stage1/--stage2, not both")
        if args.device:
            raise ValueError("--model runs where the registered model loads (cuda when there is one); drop --device")
        return generate_from_model(settings, args.model, args.prompt, args.out, **options)
    return generate_video(settings, args.prompt, args.out, stage1=args.stage1, stage2=args.stage2, device=args.device, **options)


def generate_from_model(settings: Settings, uri: str, prompt: str, out_path: str | Path, *, seed: int = 0,
                        frames_out: str | Path | None = None, upscale: int | None = None, progress: bool = True,
                        **options: object) -> GenerateResult:
    """`prompt` -> a video with a registered cogflow-t2v model (model/t2v_pyfunc.py), loaded as any MLflow user
    would load it; sampling options as in `generate_video`."""
    from cogflow.model import registry

    started = time.monotonic()
    out = Path(out_path)
    check_output(out, upscale)
    if not uri.startswith("models:/"):
        raise ValueError(f"--model takes models:/<name>@<alias> or models:/<name>/<version>, not {uri!r}")
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    try:
        bundle = registry.load_pyfunc(uri).unwrap_python_model()
    except Exception as exc:  # MLflow's errors (no such model or alias, unreachable store): one clear line
        raise ValueError(f"cannot load {uri}: {str(exc).splitlines()[0]}") from exc
    made, pixels = bundle.generate(prompt, seed, {k: v for k, v in options.items() if k in OPTIONS}, progress)
    fps = KEYFRAME_FPS * 2**ROUNDS
    note = f"seed {seed}   {len(pixels)} frames at {fps:g} fps   {uri}   key frames framed in red"
    frames = write_outputs(pixels, out, prompt, note, fps, frames_out, upscale)
    return GenerateResult(
        path=str(out), frames=len(frames), size=int(frames.shape[1]), fps=fps, seconds=time.monotonic() - started,
        stage1_steps=made.keyframes.steps, stage2_steps=made.interpolation.steps, tokens=made.tokens,
        sampling_seconds=made.seconds, tokens_per_s=made.tokens / made.seconds if made.seconds else 0.0,
        stage1_run=bundle.first.source, stage2_run=bundle.second.source, seed=seed, parallel=made.configs[0].parallel,
        device=str(next(bundle.first.model.parameters()).device), prompt_truncated=made.truncated[0],
        frames_out=None if frames_out is None else str(frames_out))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        result = generate_from_args(load_settings(), args)
    except ValueError as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    r = result
    print(f"wrote {r.path}: {r.frames} frames of {r.size}x{r.size} at {r.fps:g} fps, seed {r.seed}, in {r.seconds:.1f} s "
          f"({r.tokens} codes at {r.tokens_per_s:,.0f} codes/s, {r.stage1_steps} + {r.stage2_steps} forward calls, "
          f"{'wavefront' if r.parallel else 'one code per call'} decoding on {r.device})")
    print(f"stages: MLflow runs {r.stage1_run} (1) and {r.stage2_run} (2)" + (f"; contact sheet {r.frames_out}" if r.frames_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
