"""Training throughput benchmark: tokens/s and model FLOPs utilisation of a CogVideo stage on this machine,
against the matmul peak measured in the same run.

    .venv/bin/python tests/bench/bench_train.py [--config demo] [--steps 20] [--set model.layers=8]

For each stage of the config (its window settings), one training step (model/cogvideo/train.py's `optimizer_step`: forward,
backward, clipping, AdamW) runs repeatedly on a random batch of the config's batch size at the demo tokenizer's
shapes (10x10 codes, 1,000 FSQ codes for the levels embedding or 1,024 VQ ones, a 3,000-piece text vocabulary; `--grid 20 --codebook 8192` for the base layout).
Reported: tokens/s (every slot of every sample), model FLOPs per token (model/cogvideo/transformer.py::flops_per_token), MFU
= achieved model FLOP/s / measured peak FLOP/s (float32 matmuls on the CPU, bf16 on CUDA, where FlexAttention's
block masks are used as in training), and peak memory. Nothing is asserted; exit 0 when it ran.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cogflow.model.cogvideo import transformer
from cogflow.model.cogvideo.layout import Layout, build_inputs  # noqa: E402
from cogflow.model.cogvideo.steps import matmul_peak, memory_gb, optimizer_step
from cogflow.model.cogvideo.train import load_config
from cogflow.model.cogvideo.transformer import CogVideoTransformer, ModelSpec  # noqa: E402


def measure(spec: ModelSpec, batch: int, steps: int, device: torch.device, flex: bool, checkpointing: bool) -> dict:
    torch.manual_seed(0)
    model = CogVideoTransformer(spec).to(device)
    model.activation_checkpointing = checkpointing
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    lay = spec.layout
    ids = torch.randint(10, spec.text_vocab, (batch, lay.text_len))
    mask = torch.arange(lay.text_len).expand(batch, -1) >= lay.text_len // 2  # half-length captions
    codes = torch.randint(0, spec.codebook_size, (batch, 5, lay.frame_len))
    tokens, targets, valid = (
        t.to(device) for t in build_inputs(lay, ids, mask, torch.full((batch,), 6), codes, spec.codebook_size, 2)
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):  # warm up (and compile FlexAttention on CUDA)
        optimizer_step(model, optimizer, [(tokens, targets, valid)], 1e-4, 1.0, autocast, flex)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer_step(model, optimizer, [(tokens, targets, valid)], 1e-4, 1.0, autocast, flex)
    sync()
    seconds = time.perf_counter() - started
    params = model.parameter_count()
    tokens_per_s = steps * batch * lay.length / seconds
    return {
        "params": params,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": transformer.flops_per_token(spec, params),
        "step_s": seconds / steps,
        "memory_gb": memory_gb(device),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--grid", type=int, default=10)
    parser.add_argument("--codebook", type=int, default=1024, help="VQ codebook size (configs with plain embeddings)")
    parser.add_argument("--levels", default="8,5,5,5", help="FSQ levels (configs with the levels embedding)")
    parser.add_argument("--text-vocab", type=int, default=3000)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on")
    args = parser.parse_args()
    run = load_config(args.config, args.set)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = matmul_peak(device, seconds=2.0)
    flex = run.train.flex and device.type == "cuda"
    print(f"{args.config} config on {device.type} ({torch.get_num_threads()} threads): {run.model}")
    print(f"matmul peak measured: {peak / 1e9:,.1f} GFLOP/s ({'bf16' if device.type == 'cuda' else 'float32'})")
    print(
        f"{'stage':<8}{'window':>8}{'params':>10}{'tokens/s':>12}{'GFLOP/token':>13}{'step s':>9}{'MFU':>8}{'memory GB':>11}"
    )
    for stage in (1, 2):
        sc = run.stage_config(stage)
        levels = tuple(int(v) for v in args.levels.split(",")) if run.model.code_embedding == "levels" else ()
        codebook = math.prod(levels) if levels else args.codebook
        lay = Layout(run.train.text_len, args.grid, stage)
        spec = ModelSpec(run.model, lay, codebook, args.text_vocab, sc.window, sc.shift, levels)
        r = measure(
            spec,
            run.train.batch_size,
            args.steps,
            device,
            flex,
            args.checkpointing or run.train.activation_checkpointing,
        )
        mfu = r["tokens_per_s"] * r["flops_per_token"] / peak
        print(
            f"{stage:<8}{sc.window:>8}{r['params'] / 1e6:>9.2f}M{r['tokens_per_s']:>12,.0f}{r['flops_per_token'] / 1e9:>13.4f}"
            f"{r['step_s']:>9.3f}{mfu:>8.1%}{r['memory_gb']:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
