"""Train the frame tokenizer (VQ-VAE) on the lake's clip frames, track it in MLflow and register it.

    python -m cogflow.model.tokenizers.train_frame --config demo [--set train.steps=600]     (or `cogflow tokenize frames`)
    torchrun --nproc_per_node=2 -m cogflow.model.tokenizers.train_frame --config demo

Read top to bottom in execution order: config, data, evaluation, the training loop (the schedule, checkpoints and
the SIGTERM flag are model/training.py's).

- Frames stream from the finished clip shards (model/tokenizers/clip_frames.py), dealt over ranks and data-loader
  workers. Training sees random crops aligned to the code grid; evaluation sees whole frames of the `val`
  split (of `train` when the lake has no val clips, and the metrics say so).
- A checkpoint (model, optimizer, step, RNG state, MLflow run) is written atomically every `checkpoint_every`
  steps, on SIGTERM and at the end. A later run with the same frames, config and number of processes picks it
  up and ends exactly where an uninterrupted run would have.
- Rank 0 alone talks to MLflow. A training the registry already holds (same frames, same config) is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cogflow.model import config as configs
from cogflow.model import distributed, tracking
from cogflow.model.progress import StepProgress
from cogflow.model.serving import registry
from cogflow.model.tokenizers.clip_frames import ClipFrames, reader_slot, sample_frames
from cogflow.model.tokenizers.frame import (
    FrameTokenizer,
    FrameTokenizerConfig,
    codebook_usage,
    psnr,
    save,
    training_loss,
)
from cogflow.model.training import (
    StopSignal,
    checkpoint_store,
    learning_rate,
    load_checkpoint,
    restore_rng,
    rng_state,
    run_entry_point,
    save_checkpoint,
    stop_vote,
)
from cogflow.pipeline import lake
from cogflow.pipeline.contract import CLIP_SIZE, FRAME_TOKENIZER_FILE, naming_hash
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.sources import safe_uri
from cogflow.pipeline.storage import Storage

KIND = "frame_tokenizer"  # configs in model/configs/frame_tokenizer/

# ---------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class FrameTrainConfig:
    steps: int = 1200
    batch_size: int = 32  # frames per process and step
    crop: int = 64  # side of the random training crops, a multiple of the compression; 160: whole frames
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    val_every: int = 300
    val_frames: int = 256
    log_every: int = 25
    checkpoint_every: int = 300
    shuffle_buffer: int = 512
    loader_workers: int = 0  # data-loader processes per training process
    seed: int = 0


@dataclass(frozen=True)
class FrameTokenizerRun:
    model: FrameTokenizerConfig = field(default_factory=FrameTokenizerConfig)
    train: FrameTrainConfig = field(default_factory=FrameTrainConfig)

    def __post_init__(self) -> None:
        crop, c = self.train.crop, self.model.compression
        if crop % c or not 0 < crop <= CLIP_SIZE:
            raise ValueError(f"train.crop must be a multiple of the compression ({c}) up to {CLIP_SIZE}, not {crop}")


def load_config(name: str = "demo", overrides: list[str] | tuple[str, ...] = ()) -> FrameTokenizerRun:
    return configs.load(FrameTokenizerRun, KIND, name, overrides)


@dataclass(frozen=True)
class FrameTokenizerResult:
    version: str  # registered version of cogflow-frame-tokenizer; "" when the run stopped early (until_step)
    run_id: str
    trained: bool  # False when an identical training was registered already
    steps: int
    eval_split: str  # the split the metrics below were measured on: "val", or "train" for a lake without val clips
    psnr: float
    thumbnail_psnr: float  # a bicubic thumbnail with as many pixels as the frame has codes, upscaled back
    codebook_used: float
    perplexity: float
    note: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Data


class TrainCrops(IterableDataset):
    """Endless (B, crop, crop, 3) uint8 batches of random crops of train frames, aligned to the code grid.

    The first `skip_steps` steps' batches are drawn and dropped, so a resumed run sees exactly the batches an
    uninterrupted one would have: a data loader takes batches from its workers in turn."""

    def __init__(self, lake_uri: str, train: FrameTrainConfig, align: int, skip_steps: int = 0) -> None:
        self.lake_uri, self.train, self.align, self.skip_steps = lake_uri, train, align, skip_steps

    def __iter__(self):
        cfg = self.train
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip = len(range(worker, self.skip_steps, workers))  # batches this worker made before the checkpoint
        slot, _ = reader_slot()
        rng = random.Random(f"crops {cfg.seed} {slot}")
        offsets = range(0, CLIP_SIZE - cfg.crop + 1, self.align)
        frames = ClipFrames(self.lake_uri, "train", shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, repeat=True)
        batch: list[torch.Tensor] = []
        made = 0
        for frame in frames:  # (160, 160, 3)
            top, left = rng.choice(offsets), rng.choice(offsets)
            batch.append(frame[top : top + cfg.crop, left : left + cfg.crop])
            if len(batch) == cfg.batch_size:
                if made >= skip:
                    yield torch.stack(batch)  # (B, crop, crop, 3)
                made += 1
                batch = []


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: FrameTokenizer, frames: torch.Tensor, device: torch.device, batch: int = 16
) -> tuple[dict[str, float], torch.Tensor]:
    """PSNR of whole frames through the tokenizer and codebook usage; returns (metrics, reconstructions)."""
    was_training = model.training
    model.eval()
    codes, reconstructions = [], []
    for chunk in frames.split(batch):
        c = model.encode(chunk.to(device))  # (b, h, w)
        codes.append(c.cpu())
        reconstructions.append(model.decode(c).cpu())  # (b, 160, 160, 3) uint8
    model.train(was_training)
    codes_all, rec = torch.cat(codes), torch.cat(reconstructions)
    used, perplexity = codebook_usage(codes_all, model.config.codebook_size)
    return {"psnr": psnr(frames, rec), "codebook_used": used, "perplexity": perplexity}, rec


def thumbnail(frames: torch.Tensor, side: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> the same frames through a side x side bicubic thumbnail and back (the baseline a
    tokenizer with side x side codes should beat... or at least approach)."""
    x = frames.permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    small = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    back = F.interpolate(small, size=frames.shape[1:3], mode="bicubic", align_corners=False)
    return back.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def comparison_grid(
    frames: torch.Tensor, reconstructions: torch.Tensor, baseline: torch.Tensor, path: Path, n: int = 8
) -> Path:
    """A PNG with n frames per row, spread over the set: originals, tokenizer reconstructions, bicubic thumbnails."""
    pick = torch.linspace(0, len(frames) - 1, min(n, len(frames))).round().long()
    rows = [torch.cat(list(t[pick]), dim=1) for t in (frames, reconstructions, baseline)]  # each (H, n*W, 3)
    Image.fromarray(torch.cat(rows, dim=0).numpy()).save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Training


def _train_frames(store: Storage) -> int:
    clips = lake.read_clips(store, ["split"])
    return 5 * sum(1 for s in clips["split"].to_pylist() if s == "train")


def train_frame_tokenizer(
    settings: Settings,
    run: FrameTokenizerRun,
    *,
    restart: bool = False,
    until_step: int | None = None,
    progress: bool = True,
) -> FrameTokenizerResult:
    """Train (or resume, or find already registered) the frame tokenizer of `run` on the lake's clip frames.

    `until_step` stops early after checkpointing that step, without registering (training in slices)."""
    env = distributed.setup()
    torch.manual_seed(run.train.seed)
    store = Storage.at(settings.lake)
    parts = lake.clip_parts(store)
    if not parts or _train_frames(store) < run.train.batch_size * env.world:
        raise ValueError(f"the lake at {settings.lake} has too few train clips for a batch: run `cogflow split` first")
    data_hash = naming_hash(parts)
    config_hash = naming_hash({**configs.as_dict(run), "world_size": env.world})
    tags = {"cogflow.data_hash": data_hash, "cogflow.config_hash": config_hash}

    # Already registered? Rank 0 asks MLflow; everyone follows.
    def registered() -> tuple[str, str | None, dict[str, str]] | None:
        tracking.use(settings.mlflow_tracking_uri, settings.home)
        found = registry.find_version(registry.FRAME_TOKENIZER, data_hash, config_hash)
        return None if found is None else (str(found.version), found.run_id, dict(found.tags))

    known = distributed.ask_main(registered, env)
    if known is not None:
        version, run_id, vtags = known
        assert run_id is not None  # cogflow registers every version from inside a run
        return FrameTokenizerResult(
            version,
            run_id,
            False,
            run.train.steps,
            vtags.get("cogflow.eval_split", ""),
            float(vtags.get("cogflow.psnr", "nan")),
            float(vtags.get("cogflow.thumbnail_psnr", "nan")),
            float(vtags.get("cogflow.codebook_used", "nan")),
            float(vtags.get("cogflow.perplexity", "nan")),
            "the registry holds a frame tokenizer trained on these clips with this config",
        )

    # The model, the optimizer, and where a killed run of the same training left off.
    model = FrameTokenizer(run.model).to(env.device)
    ddp = distributed.parallelize(model, env)  # the quantizer syncs its own statistics
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.train.lr, weight_decay=run.train.weight_decay)
    ckpt_store, ckpt_rel = (
        checkpoint_store(settings),
        f"frame-tokenizer/{naming_hash([data_hash, config_hash])}/checkpoint.pt",
    )
    state = None if restart else load_checkpoint(ckpt_store, ckpt_rel)
    step, run_id = 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, run_id = state["step"], state["run_id"]
        restore_rng(state["rng"], env.device)

    loader = DataLoader(
        TrainCrops(settings.lake, run.train, run.model.compression, skip_steps=step),
        batch_size=None,
        num_workers=run.train.loader_workers,
        persistent_workers=run.train.loader_workers > 0,
    )
    eval_frames, eval_split = sample_frames(settings.lake, "val", run.train.val_frames), "val"
    if len(eval_frames) == 0:
        eval_frames, eval_split = sample_frames(settings.lake, "train", run.train.val_frames), "train"
    side = run.model.grid()
    baseline = thumbnail(eval_frames, side)
    thumbnail_psnr = psnr(eval_frames, baseline)
    params = {**configs.as_dict(run), "world_size": env.world, "device": env.device.type, "eval_split": eval_split}
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=env.device.type == "cuda")

    def checkpoint(at: int) -> None:
        if env.main:
            save_checkpoint(
                ckpt_store,
                ckpt_rel,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": at,
                    "run_id": run_id,
                    "rng": rng_state(env.device),
                    "config": configs.as_dict(run),
                },
            )
        distributed.barrier()

    bar = StepProgress(
        "frame tokenizer", run.train.steps, step, enabled=progress and env.main, every=run.train.log_every
    )
    with (
        (
            tracking.run("frame-tokenizer", params, tags, run_id=run_id) if env.main else contextlib.nullcontext()
        ) as active,
        tempfile.TemporaryDirectory(prefix="cogflow-frames-") as tmp,
        StopSignal.installed(),
    ):
        run_id = distributed.from_main(active.info.run_id if active is not None else None)  # None off rank 0
        if env.main and step == 0:
            tracking.log_metrics({f"{eval_split}/thumbnail_psnr": thumbnail_psnr}, step=0)
            # lineage: the clip files this run reads
            tracking.log_input(
                f"{safe_uri(settings.lake).rstrip('/')}/clips", "clips", data_hash, {"clip_files": str(len(parts))}
            )
        window_started, window_frames = time.monotonic(), 0
        batches = iter(loader)
        while step < run.train.steps:
            batch = next(batches).to(env.device, non_blocking=True)  # (B, crop, crop, 3) uint8
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, run.train)
            x = FrameTokenizer.to_input(batch)  # (B, 3, crop, crop) in [-1, 1]
            with autocast:
                loss, terms = training_loss(x, ddp(x), run.model.commitment)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
            optimizer.step()
            step += 1
            window_frames += batch.shape[0] * env.world

            if env.main and (step % run.train.log_every == 0 or step == run.train.steps):
                seconds = time.monotonic() - window_started
                used, perplexity = codebook_usage(terms["codes"], run.model.codebook_size)
                logged = {
                    "loss": loss.item(),
                    "mse": terms["mse"].item(),
                    "commitment": terms["commitment"].item(),
                    "lr": learning_rate(step - 1, run.train),
                    "frames_per_s": window_frames / max(seconds, 1e-9),
                    "batch_codebook_used": used,
                    "batch_perplexity": perplexity,
                }
                if env.device.type == "cuda":
                    logged["memory_gb"] = torch.cuda.max_memory_allocated(env.device) / 1e9
                tracking.log_metrics({f"train/{k}": v for k, v in logged.items()}, step=step)
                window_started, window_frames = time.monotonic(), 0
            if env.main and (step % run.train.val_every == 0 or step == run.train.steps):
                metrics, rec = evaluate(model, eval_frames, env.device)
                tracking.log_metrics({f"{eval_split}/{k}": v for k, v in metrics.items()}, step=step)
                grid = comparison_grid(eval_frames, rec, baseline, Path(tmp) / f"step-{step:07d}.png")
                tracking.log_artifact(grid, "reconstructions")
                bar.log(
                    f"step {step}: {eval_split} PSNR {metrics['psnr']:.2f} dB (thumbnail {thumbnail_psnr:.2f} dB), "
                    f"codebook used {metrics['codebook_used']:.0%}, perplexity {metrics['perplexity']:.1f}"
                )
            bar.update(step, f"loss {loss.item():.4f}")
            stop = stop_vote(step, until_step, env.device)
            if step % run.train.checkpoint_every == 0 or step == run.train.steps or stop:
                checkpoint(step)
            if stop and step < run.train.steps:
                bar.close()
                return FrameTokenizerResult(
                    "",
                    run_id,
                    True,
                    step,
                    eval_split,
                    float("nan"),
                    thumbnail_psnr,
                    float("nan"),
                    float("nan"),
                    f"stopped at step {step}; run again to resume",
                )
        bar.close()

        # Register the trained tokenizer (rank 0), and tell every rank which version it became.
        metrics, rec = evaluate(model, eval_frames, env.device)
        version = ""
        if env.main:
            tags.update({f"cogflow.{k}": f"{v:.6g}" for k, v in metrics.items()})
            tags.update({"cogflow.thumbnail_psnr": f"{thumbnail_psnr:.6g}", "cogflow.eval_split": eval_split})
            comparison_grid(eval_frames, rec, baseline, Path(tmp) / "before_after.png")
            tracking.log_artifact(Path(tmp) / "before_after.png")
            weights = save(model, Path(tmp) / FRAME_TOKENIZER_FILE)
            version = str(registry.register_frame_tokenizer(weights, tags, eval_frames[:1].numpy()).version)
        version = distributed.from_main(version)
    return FrameTokenizerResult(
        version,
        run_id,
        True,
        step,
        eval_split,
        metrics["psnr"],
        thumbnail_psnr,
        metrics["codebook_used"],
        metrics["perplexity"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default="demo", help=f"a named config ({', '.join(configs.named(KIND))}) or a .toml file"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=600"
    )
    parser.add_argument("--lake", help="the lake to read clips from (default: $COGFLOW_LAKE)")
    parser.add_argument("--restart", action="store_true", help="ignore a checkpoint of this training and start over")
    parser.add_argument(
        "--until-step", type=int, help="checkpoint and stop at this step (train in slices; run again to go on)"
    )
    parser.add_argument("--result-file", help="also write the result as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    return run_entry_point(
        "train_frame_tokenizer",
        lambda: train_frame_tokenizer(
            load_settings(lake=args.lake),
            load_config(args.config, args.set),
            restart=args.restart,
            until_step=args.until_step,
            progress=not args.quiet,
        ),
        args.result_file,
    )


if __name__ == "__main__":
    sys.exit(main())
