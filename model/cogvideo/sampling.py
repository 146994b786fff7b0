"""Sampling codes from the two stages: the key frames of stage 1 and the interpolation rounds of stage 2.

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
6. A sample GIF of a stage during training.

Whole videos from captions (both stages and the tokenizers) are cogflow.model.serving.text_to_video's.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cogflow.model.cogvideo.layout import Layout, build_inputs, dense_mask, layer_shift, slots
from cogflow.model.cogvideo.transformer import CogVideoTransformer, KVCache, ModelSpec
from cogflow.model.media import to_pixels, write_video
from cogflow.model.progress import StepProgress
from cogflow.model.tokenizers.encode import Tokenizers
from cogflow.pipeline.contract import CLIP_FRAMES, FPS_RATES, INTERPOLATION_ROUNDS

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


def gumbel_noise(
    seed: int, stream: int, rows: torch.Tensor, positions: torch.Tensor, codes: int | torch.Tensor
) -> torch.Tensor:
    """Float64 Gumbel noise, a pure function of (seed, stream, row, slot, code): the same on any device, in any
    batch and whatever else is decoded in the same call. `codes`: K, for every code (B, P, K); or the codes (B, P, C)
    to draw for, each getting the value it would have among all K."""
    device = rows.device
    key = torch.tensor(seed & MASK32, dtype=torch.long, device=device)
    for part in ((seed >> 32) & MASK32, stream & MASK32):
        key = _hash32(key ^ part)
    key = _hash32(key ^ rows.long()[:, None, None])  # (B, 1, 1)
    key = _hash32(key ^ positions.long()[None, :, None])  # (B, P, 1)
    code_ids = torch.arange(codes, device=device)[None, None, :] if isinstance(codes, int) else codes.long()
    key = _hash32(key ^ code_ids)  # (B, P, K) or (B, P, C)
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


def sample_codes(
    logits: torch.Tensor, config: GenerateConfig, seed: int, stream: int, rows: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """logits (B, P, K) of the slots `positions` (P,) for batch rows `rows` (B,) -> codes (B, P).

    Gumbel-max: argmax(filtered logits + Gumbel noise) is a draw from softmax(filtered logits), and the noise is
    fixed by the code's key, not by the order in which codes are drawn."""
    if 0 < config.top_k < logits.shape[-1]:  # only the top k can be drawn: noise for them alone, not all K
        top, candidates = logits.double().topk(config.top_k, dim=-1)  # (B, P, k) each
        noise = gumbel_noise(seed, stream, rows, positions, candidates)
        kept = filter_logits(top, replace(config, top_k=0))  # the temperature, and top-p among the k
        return candidates.gather(-1, (kept + noise).argmax(dim=-1, keepdim=True)).squeeze(-1)
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
def decode(
    model: CogVideoTransformer,
    tokens: torch.Tensor,
    text_valid: torch.Tensor,
    steps: Sequence[torch.Tensor],
    choose: Chooser,
    bar: StepProgress | None = None,
) -> torch.Tensor:
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


def generate_keyframes(
    model: CogVideoTransformer,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    fps_id: int,
    boi_id: int,
    pad_id: int,
    config: GenerateConfig,
    seed: int = 0,
    progress: bool = False,
) -> Decoded:
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


def interpolate_round(
    model: CogVideoTransformer,
    frames: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    fps_id: int,
    boi_id: int,
    config: GenerateConfig,
    seed: int,
    stream: int,
    progress: bool = False,
) -> Decoded:
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


def interpolate(
    model: CogVideoTransformer,
    keyframes: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    keyframe_fps: float,
    boi_id: int,
    fps_id: Callable[[float], int],
    config: GenerateConfig,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Decoded, list[Decoded]]:
    """keyframes (V, 5, n) at `keyframe_fps` -> (V, 33, n) at 8x that rate, in INTERPOLATION_ROUNDS rounds that
    double the rate (the fps token of round r is keyframe_fps * 2**r). Returns the whole result and each round's."""
    rounds, frames = [], keyframes
    for r in range(1, INTERPOLATION_ROUNDS + 1):
        done = interpolate_round(
            model,
            frames,
            text_ids,
            text_mask,
            fps_id(keyframe_fps * 2**r),
            boi_id,
            config,
            seed,
            stream=r,
            progress=progress,
        )
        rounds.append(done)
        frames = done.codes
    total = Decoded(frames, sum(d.steps for d in rounds), sum(d.tokens for d in rounds), sum(d.seconds for d in rounds))
    return total, rounds


# ---------------------------------------------------------------------------------------------------------------
# 6. A sample during training


def sample_for_training(
    model: CogVideoTransformer,
    layout: Layout,
    tokenizers: Tokenizers,
    rows: dict[str, list],
    path: Path,
    options: GenerateConfig,
    seed: int = 0,
) -> Path:
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
