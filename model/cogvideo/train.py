"""Train a CogVideo stage on the lake's token shards, track it in MLflow.

    python -m cogflow.model.cogvideo.train --stage 1 --config demo [--set train.steps=600]          (or `cogflow train --stage 1`)
    torchrun --nproc_per_node=8 -m cogflow.model.cogvideo.train --stage 2 --config base

Read top to bottom in execution order: config, data, checkpoints, evaluation, one optimizer step, the training
loop (the schedule, the random state and the SIGTERM flag are model/training.py's, checkpoint files
model/checkpoint.py's).

- Token rows stream from the finished token files of one frame tokenizer version (`tokens/v<V>/stage=S`) in one
  seeded global order, cut into global batches (batch size x accumulation x ranks) that ranks and data-loader
  workers share without overlap (model/cogvideo/data.py).
- AdamW, warmup + cosine, gradient accumulation and clipping, bf16 autocast on CUDA; DDP, or FSDP
  (`train.fsdp`) for models that do not fit one GPU; optional activation checkpointing; FlexAttention's block
  masks on CUDA (`train.flex`).
- A checkpoint (every rank's shards of the model and optimizer, the step, every rank's RNG, the MLflow run) is
  written through torch.distributed.checkpoint every `checkpoint_every` steps, on SIGTERM and at the end
  (`train.async_checkpoint`: in the background). The same training started again resumes from it, on any number
  of ranks that keeps the global batch, and logs the loss sequence an uninterrupted run would have: the loss
  logged is the global batch's, and what a step draws depends on the step, not on the ranks.
- Rank 0 alone talks to MLflow: the resolved config, loss, val bits per token, learning rate, tokens/s, model FLOPs
  utilisation against a matmul peak measured at start, memory, and a sample video every `sample_every` steps.
  The finished model is the run's artifact `model/stage<N>.pt`, and the run is tagged `cogflow.complete`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cogflow.model import config as configs
from cogflow.model import distributed, tracking
from cogflow.model.checkpoint import Checkpointer, whole_model_state
from cogflow.model.cogvideo import sampling, stages
from cogflow.model.cogvideo import transformer as transformers
from cogflow.model.cogvideo.data import TokenStream, eval_rows
from cogflow.model.cogvideo.layout import Layout
from cogflow.model.cogvideo.sampling import GenerateConfig
from cogflow.model.cogvideo.steps import (
    bits_per_token,
    matmul_peak,
    memory_gb,
    micro_batches,
    optimizer_step,
)
from cogflow.model.cogvideo.transformer import CogVideoTransformer, ModelSpec, TransformerConfig
from cogflow.model.progress import StepProgress
from cogflow.model.serving import registry
from cogflow.model.tokenizers.encode import Tokenizers, load_tokenizers
from cogflow.model.training import (
    StopSignal,
    checkpoint_store,
    learning_rate,
    restore_rng,
    rng_state,
    run_entry_point,
    stop_vote,
)
from cogflow.pipeline import lake
from cogflow.pipeline.contract import (
    CLIP_FRAMES,
    RUN_MODEL_DIR,
    TEXT_SLOTS,
    TEXT_TO_IMAGE_FILE,
    naming_hash,
    run_model,
    stage_file,
)
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.sources import safe_uri
from cogflow.pipeline.storage import Storage

KIND = "cogvideo"  # configs in model/configs/cogvideo/

# ---------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class StageConfig:
    window: int = 0  # temporal window side in codes (0: whole frames, as CogVideo's stage 1)
    shift: int = 0  # odd layers move the window cuts by this much


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # samples per process and micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95  # CogVideo's
    grad_clip: float = 1.0
    caption_dropout: float = 0.1  # share of samples trained without their caption (classifier-free guidance)
    val_every: int = 200
    val_batches: int = 4
    log_every: int = 10
    checkpoint_every: int = 200
    sample_every: int = 0  # steps between sample videos logged to MLflow (0: only at the end)
    loader_workers: int = 0  # data-loader processes per training process
    seed: int = 0
    frames: int = CLIP_FRAMES  # 1: a text-to-image run whose spatial channel a video model can start from
    # Text slots of a sample (captions are left-padded to it; a longer one keeps its beginning). CogVideo's 64 is the
    # lake's row width (TEXT_SLOTS); a run of shorter captions may take fewer: each slot is attended to by every
    # code of the sample, so the sample world's captions (at most 22 pieces) waste a tenth of a video sample's
    # attention, and two fifths of a text-to-image one's, on 64. The model records it in its layout.
    text_len: int = TEXT_SLOTS
    spatial_from: str = ""  # a text-to-image run id or .pt file: load its spatial channel
    freeze_spatial: bool = True  # ... and keep it fixed, as CogVideo kept CogView2
    # Stage 1 starts from the spatial channel of a text-to-image run of this many steps (on single frames of the same
    # clips), trained first unless a complete one exists: CogVideo's recipe (CogView2 first), and cheap, since a
    # 1-frame sample is 165 slots where a video is 565, so it spends its steps on the hard part of a key frame, what
    # the caption asks for, rather than on copying one frame into the next. 0: no such run.
    t2i_steps: int = 0
    # A stage-1 run id (or runs:/, models:/, a .pt file) whose whole model this training starts from. Stage 2 starts
    # from the pipeline's stage 1: same shapes, and it has learnt the codes, the text and, through the temporal
    # channel, that most codes of a frame are the codes of the frame before (what stage 2 must learn first).
    init_from: str = ""
    activation_checkpointing: bool = False
    # Write checkpoints in the background (copied to host memory first, then written while training goes on).
    async_checkpoint: bool = False
    fsdp: bool = False  # shard parameters, gradients and optimizer state over the processes (FSDP2)
    flex: bool = True  # FlexAttention block masks on CUDA (ignored on the CPU, where SDPA takes dense masks)


@dataclass(frozen=True)
class CogVideoRun:
    model: TransformerConfig = field(default_factory=TransformerConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(window=5, shift=2))
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def stage_config(self, stage: int) -> StageConfig:
        return self.stage1 if stage == 1 else self.stage2


def load_config(name: str = "demo", overrides: list[str] | tuple[str, ...] = ()) -> CogVideoRun:
    return configs.load(CogVideoRun, KIND, name, overrides)


@dataclass(frozen=True)
class TrainResult:
    stage: int
    run_id: str
    trained: bool  # False when a complete run of this training existed already
    steps: int
    complete: bool  # False when it stopped early (SIGTERM, until_step): run again to resume
    eval_split: str  # the split bits per token were measured on ("train" for a lake without val clips)
    val_bits_per_token: float
    tokens_per_s: float
    mfu: float  # model FLOPs utilisation against the matmul peak measured at start
    parameters: int
    note: str = ""


# How a training is spread over processes, not what it trains: a checkpoint of one spread resumes under another.
EXECUTION_ONLY = (
    "batch_size",
    "grad_accum",
    "fsdp",
    "loader_workers",
    "activation_checkpointing",
    "flex",
    "async_checkpoint",
)


def training_identity(run: CogVideoRun, stage: int, world: int) -> dict:
    """What names a training (its checkpoint folder, its "done before" tag): the config without how it is spread
    over processes, and the global batch (batch size x accumulation x processes), which is what it trains on."""
    config = configs.as_dict(run)
    train = {k: v for k, v in config["train"].items() if k not in EXECUTION_ONLY}
    global_batch = run.train.batch_size * run.train.grad_accum * world
    return {**config, "train": train, "stage": stage, "global_batch": global_batch}


def kind(stage: int, frames: int) -> str:
    """The MLflow run kind: stage1, stage2, or t2i for a 1-frame run (its model file is <kind>.pt)."""
    return TEXT_TO_IMAGE_FILE.removesuffix(".pt") if frames == 1 else stage_file(stage).removesuffix(".pt")


# ---------------------------------------------------------------------------------------------------------------
# Training


def token_inputs(settings: Settings, stage: int, frame_version: str | None) -> tuple[str, list[str], str]:
    """(frame tokenizer version, its finished token files of `stage`, the text tokenizer version they used).
    MLflow must be in use (tracking.use) when `frame_version` is None: the newest registered one is taken."""
    store = Storage.at(settings.lake)
    if frame_version is None:
        latest = registry.latest_version(registry.FRAME_TOKENIZER)
        if latest is None:
            raise ValueError(
                f"no frame tokenizer is registered at {safe_uri(settings.mlflow_tracking_uri)}: run `cogflow tokenize` first"
            )
        frame_version = str(latest.version)
    records = [r for r in lake.token_records(store, frame_version).to_pylist() if r["stage"] == stage]
    if not records:
        raise ValueError(
            f"the lake at {safe_uri(settings.lake)} has no stage-{stage} tokens of frame tokenizer "
            f"v{frame_version}: run `cogflow tokenize` first"
        )
    text_versions = sorted({r["text_tokenizer_version"] for r in records})
    if len(text_versions) > 1:
        raise ValueError(
            f"stage-{stage} tokens of v{frame_version} mix text tokenizer versions {text_versions}: "
            f"run `cogflow tokenize encode` to finish re-encoding"
        )
    parts = sorted(lake.token_paths(frame_version, stage, r["shard_id"])["tokens"] for r in records)
    return frame_version, parts, text_versions[0]


def resolve_spatial(settings: Settings, ref: str, dest: Path) -> Path:
    """A text-to-image model file: a local .pt, or the model of a t2i run (its id, `runs:/<id>[/path]`, `models:/...`)."""
    source, _ = stages.model_source(ref, run_model(TEXT_TO_IMAGE_FILE), "train.spatial_from")
    return stages.fetch_model(settings, source, dest)


def load_init(settings: Settings, ref: str, model: CogVideoTransformer) -> None:
    """Start `model` from the weights of the stage model `ref` (train.init_from); its shapes must be the same."""
    source, _ = stages.model_source(ref, run_model(stage_file(1)), "train.init_from")
    with tempfile.TemporaryDirectory(prefix="cogflow-init-") as tmp:
        saved = transformers.read(str(stages.fetch_model(settings, source, Path(tmp))))
    own = model.state_dict()
    misfits = [n for n, t in saved["state"].items() if n not in own or own[n].shape != t.shape]
    if misfits or set(own) - set(saved["state"]):
        raise ValueError(
            f"train.init_from {ref} does not fit this model (another size, codebook or text vocabulary): "
            f"{', '.join((misfits or sorted(set(own) - set(saved['state'])))[:5])}"
        )
    model.load_state_dict(saved["state"])


def train_stage(
    settings: Settings,
    stage: int,
    run: CogVideoRun,
    *,
    frame_version: str | None = None,
    restart: bool = False,
    resume: bool = False,
    until_step: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume, or find already done) one stage of `run` on the lake's token shards.

    `resume` insists on a checkpoint; `restart` ignores one; `until_step` checkpoints and stops at that step."""
    env = distributed.setup()
    cfg = run.train
    if stage == 1 and cfg.frames > 1 and cfg.t2i_steps > 0 and not cfg.spatial_from:
        image = train_stage(
            settings,
            1,
            replace(run, train=replace(cfg, frames=1, steps=cfg.t2i_steps, t2i_steps=0)),
            frame_version=frame_version,
            restart=restart,
            progress=progress,
        )
        if not image.complete:
            return image  # stopped (SIGTERM): the same command resumes it, then goes on to stage 1
        cfg = replace(cfg, spatial_from=image.run_id)
        run = replace(run, train=cfg)
    torch.manual_seed(cfg.seed)
    store = Storage.at(settings.lake)
    if env.main:
        tracking.use(settings.mlflow_tracking_uri, settings.home)
    frame_version, parts, text_version = distributed.from_main(
        token_inputs(settings, stage, frame_version) if env.main else None
    )
    tokenizers: Tokenizers = load_tokenizers(settings, frame_version, text_version, device="cpu")
    grid = tokenizers.frames.config.grid()
    layout = Layout(text_len=cfg.text_len, grid=grid, stage=stage, frames=cfg.frames)
    stage_cfg = run.stage_config(stage)
    frames_config = tokenizers.frames.config
    spec = ModelSpec(
        run.model,
        layout,
        frames_config.codebook_size,
        tokenizers.text.vocab_size,
        stage_cfg.window,
        stage_cfg.shift,
        frames_config.fsq_levels if frames_config.quantizer == "fsq" else (),
    )
    boi = tokenizers.text.boi_id
    name = kind(stage, cfg.frames)
    data_hash = naming_hash([parts, frame_version, text_version])
    config_hash = naming_hash(training_identity(run, stage, env.world))
    tags = {
        "cogflow.data_hash": data_hash,
        "cogflow.config_hash": config_hash,
        "cogflow.stage": str(stage),
        "cogflow.frame_tokenizer_version": frame_version,
        "cogflow.text_tokenizer_version": text_version,
    }

    # Done before? Rank 0 asks MLflow; everyone follows.
    def complete_run() -> tuple[str, dict[str, str]] | None:
        found = tracking.latest_run({"cogflow.kind": name, "cogflow.complete": "true", **tags})
        return None if found is None else (found, tracking.run_tags(found))

    done = None if restart else distributed.ask_main(complete_run, env)
    if done is not None:
        done_id, known = done
        return TrainResult(
            stage,
            done_id,
            False,
            cfg.steps,
            True,
            known.get("cogflow.eval_split", ""),
            float(known.get("cogflow.val_bits_per_token", "nan")),
            float("nan"),
            float("nan"),
            int(known.get("cogflow.parameters", "0")),
            "a complete run of this training exists: same tokens, same config",
        )

    # The model (from a text-to-image run's spatial channel, if asked), the optimizer, where a killed run left off.
    model = CogVideoTransformer(spec)
    if cfg.init_from:  # a checkpoint of this training, loaded below, replaces these weights
        load_init(settings, cfg.init_from, model)
    if cfg.spatial_from:
        with tempfile.TemporaryDirectory(prefix="cogflow-t2i-") as tmp:
            saved = transformers.read(str(resolve_spatial(settings, cfg.spatial_from, Path(tmp))))
        model.load_spatial(saved["state"], freeze=cfg.freeze_spatial)
    model.activation_checkpointing = cfg.activation_checkpointing
    parameters = model.parameter_count()  # before FSDP shards them
    model.to(env.device)
    ddp = distributed.parallelize(model, env, shard=model.blocks if cfg.fsdp else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )
    # Sharded checkpoints (model/checkpoint.py): saved by N ranks, resumed by any number with the same global batch.
    checkpoints = Checkpointer(
        checkpoint_store(settings), f"{name}/{naming_hash([data_hash, config_hash])}", cfg.async_checkpoint
    )
    state = None if restart else checkpoints.load(model, optimizer)
    if resume and state is None:
        raise ValueError(
            f"--resume: no checkpoint of this training at {safe_uri(checkpoints.store.uri(checkpoints.prefix))}"
        )
    step, run_id = 0, None
    if state is not None:
        step, run_id = state["step"], state["run_id"]
        if env.rank < len(state["rng"]):  # a rank the saving run did not have draws afresh (dropout only)
            restore_rng(state["rng"][env.rank], env.device)
    flex = cfg.flex and env.device.type == "cuda"
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=env.device.type == "cuda")

    stream = TokenStream(
        settings.lake,
        parts,
        layout,
        cfg.batch_size,
        cfg.seed,
        env.rank,
        env.world,
        start_step=step,
        grad_accum=cfg.grad_accum,
    )
    loader = DataLoader(
        stream, batch_size=None, num_workers=cfg.loader_workers, persistent_workers=cfg.loader_workers > 0
    )
    val, eval_split = eval_rows(store, parts, cfg.val_batches * cfg.batch_size)
    flops_token = transformers.flops_per_token(spec, parameters)
    peak = matmul_peak(env.device)
    params = {
        **configs.as_dict(run),
        "stage": stage,
        "world_size": env.world,
        "device": env.device.type,
        "eval_split": eval_split,
        "parameters": parameters,
        "layout": asdict(layout),
        "codebook_size": spec.codebook_size,
        "text_vocab": spec.text_vocab,
        "matmul_peak_tflops": peak / 1e12,
    }

    def checkpoint(at: int) -> None:
        rngs = distributed.gather(rng_state(env.device))
        checkpoints.save(
            at, model, optimizer, {"step": at, "run_id": run_id, "rng": rngs, "config": configs.as_dict(run)}
        )

    def evaluate() -> float:
        # the bare model (no DDP hooks to sync); under FSDP it is the sharded model, whose forward every rank runs
        return bits_per_token(model, layout, val, boi, spec.codebook_size, cfg.batch_size, env.device, autocast)

    tokens_per_step = cfg.batch_size * cfg.grad_accum * env.world * layout.length
    bar = StepProgress(
        f"stage {stage}" if cfg.frames > 1 else "text-to-image",
        cfg.steps,
        step,
        enabled=progress and env.main,
        every=cfg.log_every,
    )
    loop_steps = 0  # steps this call trained (a resumed run counts from where it resumed)

    def run_rates() -> tuple[float, float]:
        # The result's tokens/s and MFU: the whole loop's, validation and checkpoints included. The last log window
        # alone said 10,219 tokens/s for a demo stage 1 whose 60 windows averaged 7,829 on a busy machine.
        if not loop_steps:  # a finished run found again: nothing was timed
            return float("nan"), float("nan")
        per_s = loop_steps * tokens_per_step / max(time.monotonic() - loop_started, 1e-9)
        return per_s, per_s * flops_token / (peak * env.world)

    with (
        tracking.run(name, params, tags, run_id=run_id) if env.main else contextlib.nullcontext() as active,
        tempfile.TemporaryDirectory(prefix="cogflow-train-") as tmp,
        StopSignal.installed(),
    ):
        run_id = distributed.from_main(active.info.run_id if active is not None else None)
        if env.main and step == 0:  # lineage: the token files this run reads (a resumed run logged them already)
            tracking.log_input(
                f"{safe_uri(settings.lake).rstrip('/')}/tokens/v{frame_version}/stage={stage}",
                f"tokens v{frame_version} stage {stage}",
                data_hash,
                {"token_files": str(len(parts)), "text_tokenizer_version": text_version},
            )
        bar.log(
            f"{name}: {parameters / 1e6:.2f}M parameters, {layout.length} tokens a sample, "
            f"{len(parts)} token files, evaluating on {eval_split}; MLflow run {run_id}"
        )
        window_started, window_steps = time.monotonic(), 0
        loop_started = window_started  # run_rates' clock
        batches = iter(loader)
        while step < cfg.steps:
            micro = []
            for _ in range(cfg.grad_accum):
                batch, first = next(batches)
                # which captions drop (and which frame a text-to-image row shows) depends on (seed, step) and the
                # row's place in the global batch alone: a resumed run, on any number of processes, draws the same
                # (a tuple of ints hashes the same in every process)
                draws = torch.Generator().manual_seed(hash((cfg.seed, step)) % 2**63)
                micro.append(
                    micro_batches(
                        batch,
                        layout,
                        spec.codebook_size,
                        boi,
                        cfg.caption_dropout,
                        (draws, first, stream.global_batch),
                        env.device,
                    )
                )
            loss = optimizer_step(ddp, optimizer, micro, learning_rate(step, cfg), cfg.grad_clip, autocast, flex)
            loss = distributed.mean(loss, env.device)  # the global batch's loss, the same on any number of ranks
            step += 1
            window_steps += 1
            loop_steps += 1

            if env.main and (step % cfg.log_every == 0 or step == cfg.steps):
                seconds = time.monotonic() - window_started
                tokens_per_s = window_steps * tokens_per_step / max(seconds, 1e-9)
                mfu = tokens_per_s * flops_token / (peak * env.world)
                tracking.log_metrics(
                    {
                        "train/loss": loss,
                        "train/bits_per_token": loss / math.log(2),
                        "train/lr": learning_rate(step - 1, cfg),
                        "train/tokens_per_s": tokens_per_s,
                        "train/mfu": mfu,
                        "train/memory_gb": memory_gb(env.device),
                    },
                    step=step,
                )
                window_started, window_steps = time.monotonic(), 0
            if step % cfg.val_every == 0 or step == cfg.steps:
                bits = evaluate()
                if env.main:
                    tracking.log_metrics({f"{eval_split}/bits_per_token": bits}, step=step)
                    bar.log(
                        f"step {step}: {eval_split} bits per token {bits:.3f} (train loss {loss / math.log(2):.3f} bits)"
                    )
            if env.main and cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps and not cfg.fsdp:
                _log_sample(model, layout, tokenizers, val, Path(tmp), step, run.generate)
            bar.update(step, f"loss {loss:.4f}")
            stop = stop_vote(step, until_step, env.device)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
                checkpoint(step)
            if stop and step < cfg.steps:
                checkpoints.wait()
                bar.close()
                return TrainResult(
                    stage,
                    run_id,
                    True,
                    step,
                    False,
                    eval_split,
                    float("nan"),
                    *run_rates(),
                    parameters,
                    f"stopped at step {step}; run again to resume",
                )
        checkpoints.wait()
        bar.close()
        tokens_per_s, mfu = run_rates()

        # The finished model: the run's artifact, and the tags that say it is complete.
        bits = evaluate()
        model_state = whole_model_state(model)
        if env.main:
            if not cfg.fsdp:
                _log_sample(model, layout, tokenizers, val, Path(tmp), step, run.generate)
            out = Path(tmp) / f"{name}.pt"
            final = CogVideoTransformer(spec)
            final.load_state_dict(model_state)
            transformers.save(
                final,
                str(out),
                {
                    "stage": stage,
                    "text_tokenizer_version": text_version,
                    "frame_tokenizer_version": frame_version,
                    "run_config": configs.as_dict(run),
                },
            )
            tracking.log_artifact(out, RUN_MODEL_DIR)
            tracking.set_tags(
                {
                    "cogflow.complete": "true",
                    "cogflow.val_bits_per_token": f"{bits:.6g}",
                    "cogflow.eval_split": eval_split,
                    "cogflow.parameters": str(parameters),
                }
            )
        distributed.barrier()
    return TrainResult(stage, run_id, True, step, True, eval_split, bits, tokens_per_s, mfu, parameters)


def _log_sample(
    model: CogVideoTransformer,
    layout: Layout,
    tokenizers: Tokenizers,
    val: dict[str, list],
    tmp: Path,
    step: int,
    options: GenerateConfig,
) -> None:
    """A sample video of the model as it is: stage 1 draws key frames for the first val caption; stage 2 fills
    frames 1 and 3 of the first val clip from its frames 0, 2, 4. Logged as `samples/step-N.gif`."""
    path = sampling.sample_for_training(model, layout, tokenizers, val, tmp / f"step-{step:07d}.gif", options)
    tracking.log_artifact(path, "samples")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument(
        "--config", default="demo", help=f"a named config ({', '.join(configs.named(KIND))}) or a .toml file"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=600"
    )
    parser.add_argument("--lake", help="the lake to read token shards from (default: $COGFLOW_LAKE)")
    parser.add_argument(
        "--frame-tokenizer", help="the frame tokenizer version whose tokens to train on (default: newest)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from this training's checkpoint (an error when there is none)"
    )
    parser.add_argument("--restart", action="store_true", help="ignore a checkpoint of this training and start over")
    parser.add_argument(
        "--until-step", type=int, help="checkpoint and stop at this step (train in slices; run again to go on)"
    )
    parser.add_argument("--result-file", help="also write the result as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    if args.resume and args.restart:
        parser.error("--resume and --restart contradict each other")
    return run_entry_point(
        "train",
        lambda: train_stage(
            load_settings(lake=args.lake),
            args.stage,
            load_config(args.config, args.set),
            frame_version=args.frame_tokenizer,
            restart=args.restart,
            resume=args.resume,
            until_step=args.until_step,
            progress=not args.quiet,
        ),
        args.result_file,
    )


if __name__ == "__main__":
    sys.exit(main())
