"""The pieces of a training step that the stage trainer, the gradient test and the benchmark share: val bits per
token, the matmul peak and memory measured for MFU, micro-batches and one optimizer step."""

from __future__ import annotations

import contextlib
import math
import resource
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from cogflow.model.cogvideo.data import to_batch
from cogflow.model.cogvideo.layout import Layout, build_inputs
from cogflow.model.cogvideo.transformer import CogVideoTransformer

# ---------------------------------------------------------------------------------------------------------------
# Evaluation and sizes


@torch.no_grad()
def bits_per_token(
    model: torch.nn.Module,
    layout: Layout,
    rows: dict[str, list],
    boi: int,
    codebook: int,
    batch_size: int,
    device: torch.device,
    autocast,
) -> float:
    """Mean cross-entropy of the predicted codes of `rows`, in bits."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows["split"]), batch_size):
        part = to_batch({c: v[start : start + batch_size] for c, v in rows.items()}, layout)
        tokens, targets, valid = build_inputs(
            layout, part["text_ids"], part["text_mask"], part["fps"], part["codes"], codebook, boi
        )
        with autocast:
            loss, n = _loss(model, tokens.to(device), targets.to(device), valid.to(device))
        total, count = total + loss.item() * n, count + n
    model.train(was_training)
    return total / count / math.log(2)


def _loss(model: torch.nn.Module, tokens, targets, valid, flex: bool = False) -> tuple[torch.Tensor, int]:
    """The loss through `model`'s own forward, so that DDP's and FSDP's hooks run."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    assert isinstance(inner, CogVideoTransformer)
    return inner.code_loss(model(tokens, valid, flex=flex), targets)


def matmul_peak(device: torch.device, seconds: float = 1.0) -> float:
    """FLOP/s of large square matmuls on this device (bf16 on CUDA, float32 on the CPU): MFU's denominator."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started, runs = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
        sync()
    return 2 * n**3 * runs / (time.perf_counter() - started)


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # peak RSS; Linux counts in kB


# ---------------------------------------------------------------------------------------------------------------
# One optimizer step (also what the 2-process gradient test runs)


def micro_batches(
    batch: dict[str, torch.Tensor],
    layout: Layout,
    codebook: int,
    boi: int,
    caption_dropout: float,
    draws: tuple[torch.Generator, int, int],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of rows as model inputs, with some captions dropped (pads only) for classifier-free guidance.

    A run of fewer frames than a row holds (a 1-frame text-to-image run) takes a random stretch of each row, so
    that every frame of the lake, not only the first, is an image for its caption. `draws` is (the step's
    generator, where these rows start in the global batch, its size): the draws are made for the whole global
    batch and these rows take theirs, so a row's draw does not depend on how the batch is split over processes."""
    generator, at, total = draws
    rows = slice(at, at + len(batch["text_ids"]))
    text_ids, text_mask = batch["text_ids"].clone(), batch["text_mask"].clone()
    drop = (torch.rand(total, generator=generator) < caption_dropout)[rows]  # (B,)
    text_ids[drop], text_mask[drop] = 0, False
    codes = batch["codes"]  # (B, 5, n)
    if layout.frames < codes.shape[1]:
        first = torch.randint(0, codes.shape[1] - layout.frames + 1, (total,), generator=generator)[rows]  # (B,)
        codes = codes[torch.arange(len(codes))[:, None], first[:, None] + torch.arange(layout.frames)]  # (B, frames, n)
    tokens, targets, valid = build_inputs(layout, text_ids, text_mask, batch["fps"], codes, codebook, boi)
    return tokens.to(device), targets.to(device), valid.to(device)


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro: list[tuple],
    lr: float,
    grad_clip: float,
    autocast,
    flex: bool = False,
) -> float:
    """Accumulate gradients over the micro-batches (DDP syncs on the last only), clip, step; the mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for i, (tokens, targets, valid) in enumerate(micro):
        last = i == len(micro) - 1
        sync = contextlib.nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()
        with sync:
            with autocast:
                loss, _ = _loss(model, tokens, targets, valid, flex)
            (loss / len(micro)).backward()
        total += loss.item() / len(micro)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    return total
