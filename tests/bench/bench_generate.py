"""Generation benchmark: how fast codes come out of random-weight stages at the `demo` shapes, on this machine,
without a key-value cache, with the cache one code per forward call (CogVideo's way), and with the cache along
the parallel (wavefront) schedule.

    .venv/bin/python tests/bench/bench_generate.py [--no-cache-tokens 16] [--repeats 3] [--threads N] [--device cpu|cuda]

Shapes: 4 layers, hidden 128, 4 heads, 1,024 frame codes, 3,000 text pieces, 64 text slots, 10x10 codes a frame
(565 slots). Cases: stage 1 with whole-frame temporal attention (window 0, as CogVideo's stage 1) and with 5x5
windows shifted by 2; stage 2 with 5x5 windows shifted by 2, at its last round (8 windows in one batch); and a whole
video (stage 1 + the three stage-2 rounds) for both stage-1 variants.

- Stage 1 runs with classifier-free guidance (a second, caption-less stream: batch 2 per video); tokens counted
  are the codes of the video, not the guiding stream's.
- Without the cache every code needs a forward pass over the whole sequence (the model's masks are fixed-length,
  so that is what it computes); that is slow, so it is timed over the first --no-cache-tokens codes and
  extrapolated linearly to all of them. A decoder that recomputed only the prefix would do up to about half the
  work on average; the table says what was measured.
- Times are wall clock of the decoding loop (forward calls, sampling, bookkeeping), best of --repeats.
Nothing is asserted: the ratios are the result. Exit status 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cogflow.model.cogvideo.layout import Layout, build_inputs, slots  # noqa: E402
from cogflow.model.cogvideo.sampling import (
    GenerateConfig,
    generate_keyframes,
    interpolate,
    interpolate_round,
    sample_codes,
)
from cogflow.model.cogvideo.sampling import guided as guided_logits
from cogflow.model.cogvideo.transformer import CogVideoTransformer, ModelSpec, TransformerConfig  # noqa: E402
from cogflow.model.tokenizers.text import TextTokenizer  # noqa: E402

DEMO = TransformerConfig(layers=4, hidden=128, heads=4)
CODEBOOK, TEXT_VOCAB, TEXT_LEN, GRID = 1024, 3000, 64, 10
BOI, PAD = TextTokenizer.boi_id, TextTokenizer.pad_id
LAST_ROUND_WINDOWS = 8  # stage 2's third round: 17 -> 33 frames


def fps_id(fps: float) -> int:
    return TextTokenizer.fps_id(fps)


def build(stage: int, window: int, shift: int, device: torch.device) -> CogVideoTransformer:
    torch.manual_seed(stage * 100 + window)
    spec = ModelSpec(DEMO, Layout(text_len=TEXT_LEN, grid=GRID, stage=stage), CODEBOOK, TEXT_VOCAB, window, shift)
    return CogVideoTransformer(spec).to(device).eval()


def prompt(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A 20-piece caption, left-padded."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.zeros(batch, TEXT_LEN, dtype=torch.long)
    ids[:, -20:] = torch.randint(10, TEXT_VOCAB, (1, 20), generator=gen)
    return ids.to(device), (ids > 0).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Row:
    case: str
    tokens: int  # codes a full decode samples
    steps_sequential: int
    steps_parallel: int
    no_cache_s: float  # extrapolated to all codes
    measured_no_cache: int  # codes actually decoded without the cache
    cached_s: float
    parallel_s: float
    identical: bool


@torch.inference_mode()
def no_cache_seconds(
    model: CogVideoTransformer,
    tokens: torch.Tensor,
    text_valid: torch.Tensor,
    guided: int,
    count: int,
    device: torch.device,
) -> float:
    """Seconds per code without the cache: a forward pass over the whole sequence, the logits of the next slot,
    a draw; over the first `count` predicted slots (batch as in the cached decode)."""
    lay = model.spec.layout
    s = slots(lay)
    predicted = torch.nonzero((s.frame >= 0) & ~s.given).squeeze(1)[:count].to(device)
    config, b = GenerateConfig(), tokens.shape[0] // guided
    rows = torch.arange(b, device=device)
    tokens = tokens.clone()
    model(tokens, text_valid)  # warm up
    sync(device)
    started = time.perf_counter()
    for p in predicted:
        logits = model.logits(model(tokens, text_valid)[:, p, None])  # (B, 1, K): everything recomputed for one code
        if guided > 1:
            logits = guided_logits(logits[:b], logits[b:], 3.0)
        codes = sample_codes(logits, config, 0, 0, rows, p[None])  # (B', 1)
        if s.index[p] < lay.frame_len - 1:
            tokens[:, p + 1] = codes[:, 0].repeat(guided)
    sync(device)
    return (time.perf_counter() - started) / len(predicted)


def best_of(repeats: int, run) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def stage1_row(name: str, window: int, shift: int, args: argparse.Namespace, device: torch.device) -> Row:
    model = build(1, window, shift, device)
    ids, mask = prompt(1, device)
    config = GenerateConfig(guidance=3.0)

    def run(parallel: bool):
        return generate_keyframes(model, ids, mask, fps_id(1), BOI, PAD, replace(config, parallel=parallel), seed=0)

    run(True)  # warm up (schedules are computed once per model shape)
    cached_s, cached = best_of(args.repeats, lambda: run(False))
    parallel_s, parallel = best_of(args.repeats, lambda: run(True))
    both_ids, both_mask = torch.cat([ids, torch.zeros_like(ids)]), torch.cat([mask, torch.zeros_like(mask)])
    blank = torch.zeros(2, 5, GRID * GRID, dtype=torch.long, device=device)
    tokens, _, text_valid = build_inputs(
        model.spec.layout, both_ids, both_mask, torch.full((2,), fps_id(1), device=device), blank, CODEBOOK, BOI
    )
    per_code = no_cache_seconds(model, tokens, text_valid, 2, args.no_cache_tokens, device)
    return Row(
        name,
        cached.tokens,
        cached.steps,
        parallel.steps,
        per_code * cached.tokens,
        args.no_cache_tokens,
        cached_s,
        parallel_s,
        torch.equal(cached.codes, parallel.codes),
    )


def stage2_row(name: str, window: int, shift: int, args: argparse.Namespace, device: torch.device) -> Row:
    model = build(2, window, shift, device)
    ids, mask = prompt(1, device)
    frames = torch.randint(
        0, CODEBOOK, (1, 2 * LAST_ROUND_WINDOWS + 1, GRID * GRID), generator=torch.Generator().manual_seed(1)
    )

    def run(parallel: bool):
        return interpolate_round(model, frames, ids, mask, fps_id(8), BOI, GenerateConfig(parallel=parallel), 0, 3)

    run(True)
    cached_s, cached = best_of(args.repeats, lambda: run(False))
    parallel_s, parallel = best_of(args.repeats, lambda: run(True))
    w = LAST_ROUND_WINDOWS
    codes = torch.zeros(w, 5, GRID * GRID, dtype=torch.long)
    codes[:, 0::2] = frames[0].unfold(0, 3, 2).permute(0, 2, 1)
    tokens, _, text_valid = build_inputs(
        model.spec.layout,
        ids.repeat(w, 1),
        mask.repeat(w, 1),
        torch.full((w,), fps_id(8), device=device),
        codes.to(device),
        CODEBOOK,
        BOI,
    )
    count = max(2, args.no_cache_tokens // 2)  # a batch of 8 windows: each forward is 4x stage 1's
    per_forward = no_cache_seconds(model, tokens, text_valid, 1, count, device)  # one code per window each
    return Row(
        name,
        cached.tokens,
        cached.steps,
        parallel.steps,
        per_forward * (cached.tokens // w),
        count,
        cached_s,
        parallel_s,
        torch.equal(cached.codes, parallel.codes),
    )


def video_row(
    name: str, window1: int, shift1: int, args: argparse.Namespace, device: torch.device, rows: dict[str, Row]
) -> Row:
    """Stage 1 + the three stage-2 rounds for one prompt; no-cache time summed from the per-code figures."""
    first, second = build(1, window1, shift1, device), build(2, 5, 2, device)
    ids, mask = prompt(1, device)

    def run(parallel: bool):
        config = GenerateConfig(parallel=parallel)
        keys = generate_keyframes(first, ids, mask, fps_id(1), BOI, PAD, config, seed=0)
        video, _ = interpolate(second, keys.codes, ids, mask, 1.0, BOI, fps_id, config, seed=0)
        return keys, video

    cached_s, (keys_c, video_c) = best_of(args.repeats, lambda: run(False))
    parallel_s, (keys_p, video_p) = best_of(args.repeats, lambda: run(True))
    stage1 = rows["s1w5" if window1 else "s1w0"]
    stage2 = rows["s2"]
    # stage 2 without the cache: one forward per code slot of a window, at batch 2, 4 and 8 windows; the batch-8
    # per-forward time (measured) stands in for all three rounds (an overestimate for the smaller batches)
    per_forward2 = stage2.no_cache_s / (stage2.tokens // LAST_ROUND_WINDOWS)
    no_cache = stage1.no_cache_s + 3 * (stage2.tokens // LAST_ROUND_WINDOWS) * per_forward2
    return Row(
        name,
        keys_c.tokens + video_c.tokens,
        keys_c.steps + video_c.steps,
        keys_p.steps + video_p.steps,
        no_cache,
        0,
        cached_s,
        parallel_s,
        torch.equal(video_c.codes, video_p.codes),
    )


def table(rows: list[Row]) -> str:
    head = (
        f"{'case':<52} {'codes':>6} {'calls seq/par':>14} {'no cache tok/s':>15} {'cache tok/s':>12} "
        f"{'parallel tok/s':>15} {'cache vs none':>14} {'par vs cache':>13} {'same codes':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.case:<52} {r.tokens:>6} {f'{r.steps_sequential}/{r.steps_parallel}':>14} "
            f"{r.tokens / r.no_cache_s:>15.1f} {r.tokens / r.cached_s:>12.1f} {r.tokens / r.parallel_s:>15.1f} "
            f"{r.no_cache_s / r.cached_s:>13.1f}x {r.cached_s / r.parallel_s:>12.2f}x {'yes' if r.identical else 'NO':>11}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-cache-tokens", type=int, default=16, help="codes decoded without the cache (then extrapolated)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs of each cached decode")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.monotonic()
    rows = {
        "s1w0": stage1_row("stage 1, whole-frame attention (window 0), CFG", 0, 0, args, device),
        "s1w5": stage1_row("stage 1, 5x5 windows shift 2, CFG", 5, 2, args, device),
        "s2": stage2_row(f"stage 2 round 3 ({LAST_ROUND_WINDOWS} windows), 5x5 windows shift 2", 5, 2, args, device),
    }
    rows["v0"] = video_row("whole video: stage 1 window 0 + stage 2 (3 rounds)", 0, 0, args, device, rows)
    rows["v5"] = video_row("whole video: stage 1 window 5 + stage 2 (3 rounds)", 5, 2, args, device, rows)
    print(
        f"device {device}, {torch.get_num_threads()} torch threads; model {DEMO.layers} layers x {DEMO.hidden} hidden x "
        f"{DEMO.heads} heads, {CODEBOOK} codes, {TEXT_VOCAB} text pieces, {TEXT_LEN} text slots, {GRID}x{GRID} codes "
        f"a frame, random weights, float32"
    )
    print(table(list(rows.values())))
    print()
    print(
        f"no cache: timed over the first {args.no_cache_tokens} codes of stage 1 and the first "
        f"{rows['s2'].measured_no_cache} code slots of stage 2 (each forward recomputes all 565 slots), "
        f"extrapolated linearly; whole-video rows add those figures up (stage 2's three rounds at the batch-8 time)."
    )
    print("calls: forward calls of the decode (the first computes the text, the fps token and any given frames).")
    print(f"total benchmark time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
