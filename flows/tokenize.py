"""The tokenize flow: both tokenizers trained from the lake and registered in MLflow, then every clip encoded
into token rows (plain steps in model/).

In order: the text tokenizer (SentencePiece, in this process), the frame tokenizer (a VQ-VAE, in a child process:
`python -m cogflow.model.tokenizers.train_frame`, or torchrun for `nproc` > 1), then the encoding of every clip file not
yet encoded with those two versions, and the lake's data checks. A training the registry already holds (same
data, same config) is skipped, so a scheduled run on an unchanged lake only looks.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cogflow.flows.launch import ONE_NODE, Nodes, gpu_slot, run_module
from cogflow.flows.progress import Progress, child_log
from cogflow.model.tokenizers.encode import (
    ClipFile,
    EncodeResult,
    encode_clips,
    load_tokenizers,
    pending_files,
    worker_device,
)
from cogflow.model.tokenizers.train_frame import FrameTokenizerResult
from cogflow.model.tokenizers.train_text import (
    TextTokenizerConfig,
    TextTokenizerResult,
    train_text_tokenizer,
)
from cogflow.pipeline import checks
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.sources import safe_uri
from cogflow.pipeline.storage import Storage

STEPS = ("text", "frames", "encode")
STEP_LINE = re.compile(r"^frame tokenizer (\d+)/(\d+) ")

text_task = task(name="train-text-tokenizer", cache_policy=NO_CACHE)(train_text_tokenizer)


@task(name="train-frame-tokenizer", cache_policy=NO_CACHE)
def frames_task(
    settings: Settings, config: str, overrides: list[str], nproc: int, restart: bool, nodes: Nodes = ONE_NODE
) -> FrameTokenizerResult:
    args = ["--config", config, "--lake", settings.lake, *(a for o in overrides for a in ("--set", o))]
    if restart:
        args.append("--restart")
    # the child's periodic "frame tokenizer 25/1200 ..." lines feed a progress artifact
    log = child_log(
        get_run_logger().info, STEP_LINE, "training the frame tokenizer (steps)", "frame-tokenizer-progress"
    )
    # a multi-node job has its machines to itself: no shared GPU slot (see flows/train.py)
    with gpu_slot() if nodes.count == 1 else contextlib.nullcontext():
        result = run_module("cogflow.model.tokenizers.train_frame", args, settings, nproc=nproc, log=log, nodes=nodes)
    return FrameTokenizerResult(**result)


@task(name="encode-clips", cache_policy=NO_CACHE)
def encode_task(
    settings: Settings, frame_version: str | None, text_version: str | None, batch_clips: int
) -> EncodeResult:
    progress: Progress | None = None

    def on_file(result: EncodeResult, total: int) -> None:
        nonlocal progress
        progress = progress or Progress(total, "encoding clip files", key="encode-progress")
        progress.advance()

    return encode_clips(settings, frame_version, text_version, batch_clips=batch_clips, progress=False, on_file=on_file)


@task(name="encode-files", cache_policy=NO_CACHE, task_run_name="encode {count} clip files (worker {slot})")
def encode_files_task(
    settings: Settings,
    frame_version: str,
    text_version: str,
    batch_clips: int,
    files: list[ClipFile],
    count: int,
    slot: int,
) -> EncodeResult:
    """One worker's share of the clip files (`count` only names the task run), on GPU `slot` of its machine's GPUs
    (modulo their number; the CPU without one)."""
    return encode_clips(
        settings,
        frame_version,
        text_version,
        batch_clips=batch_clips,
        device=worker_device(slot),
        progress=False,
        files=files,
    )


def _encode_shared(
    settings: Settings, frame_version: str | None, text_version: str | None, batch_clips: int, workers: int
) -> EncodeResult:
    """The clip files not yet encoded, shared out among `workers` tasks on the flow's task runner (threads, or the
    processes of a Dask or Ray cluster), two batches a worker so that they finish close together."""
    tokenizers = load_tokenizers(settings, frame_version, text_version, "cpu")
    todo, done_before = pending_files(Storage.at(settings.lake), tokenizers)
    result = EncodeResult(safe_uri(settings.lake), tokenizers.frame_version, tokenizers.text_version, done_before)
    started = time.monotonic()
    batches = [todo[i :: 2 * workers] for i in range(min(len(todo), 2 * workers))]
    progress = Progress(len(todo), "encoding clip files", key="encode-progress") if todo else None
    futures = [
        encode_files_task.submit(
            settings, tokenizers.frame_version, tokenizers.text_version, batch_clips, batch, len(batch), slot % workers
        )
        for slot, batch in enumerate(batches)
    ]
    for future, batch in zip(futures, batches):
        result.add(future.result())
        if progress is not None:
            progress.advance(len(batch))
    result.seconds = time.monotonic() - started
    return result


@task(name="check-tokens", cache_policy=NO_CACHE)
def checks_task(settings: Settings) -> list[str]:
    return checks.check_lake(Storage.at(settings.lake))


@dataclass
class TokenizeSummary:
    lake: str  # as shown (credentials removed)
    mlflow: str
    text_tokenizer: TextTokenizerResult | None = None
    frame_tokenizer: FrameTokenizerResult | None = None
    encoding: EncodeResult | None = None
    checks: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"tokenize {self.lake}"]
        if (t := self.text_tokenizer) is not None:
            what = "trained" if t.trained else "already registered: same captions, same config"
            out.append(
                f"  text tokenizer   cogflow-text-tokenizer v{t.version} ({what}): {t.vocab_size} pieces from {t.captions} captions"
            )
            if t.note:
                out.append(f"                   {t.note}")
        if (f := self.frame_tokenizer) is not None:
            what = "trained" if f.trained else "already registered: same clips, same config"
            name = f"v{f.version}" if f.version else "(not registered yet)"
            out.append(
                f"  frame tokenizer  cogflow-frame-tokenizer {name} ({what}, {f.steps} steps): {f.eval_split} PSNR "
                f"{f.psnr:.2f} dB against {f.thumbnail_psnr:.2f} dB for a bicubic thumbnail of as many pixels as codes; "
                f"codebook {f.codebook_used:.0%} used, perplexity {f.perplexity:.1f}"
            )
            if f.note:
                out.append(f"                   {f.note}")
        if (e := self.encoding) is not None:
            stages = ", ".join(f"stage {s}: {n}" for s, n in sorted(e.stages.items())) or "nothing new"
            out.append(
                f"  encoded          {e.clips} clips from {e.files_encoded} clip files ({stages}) at {e.frames_per_s:.0f} frames/s "
                f"into tokens/v{e.frame_tokenizer_version}; {e.files_done_before} files were encoded already"
            )
        if self.checks:
            out.append(f"  data checks passed: {len(self.checks)}")
        out.append(f"  MLflow: {self.mlflow}")
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


def parse_steps(steps: str) -> tuple[str, ...]:
    chosen = STEPS if steps == "all" else tuple(s.strip() for s in steps.split(","))
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown tokenize step {', '.join(unknown)}: use all or any of {', '.join(STEPS)}")
    return chosen


@flow(name="tokenize")
def tokenize_flow(
    lake: str | None = None,
    steps: str = "all",
    vocab_size: int = TextTokenizerConfig.vocab_size,
    frame_config: str = "demo",
    frame_overrides: list[str] | None = None,
    nproc: int = 1,
    restart: bool = False,
    frame_tokenizer_version: str | None = None,
    text_tokenizer_version: str | None = None,
    batch_clips: int = 16,
    encode_workers: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
) -> TokenizeSummary:
    """Train (or find) the text and frame tokenizers of the lake, then encode every clip not encoded with them.

    `steps` is `all` or a comma-separated choice of text, frames, encode. Encoding uses the versions this run
    trained or found, else the given or newest registered ones."""
    chosen = parse_steps(steps)
    settings = load_settings(lake=lake)
    settings = settings.replace(lake=Storage.at(settings.lake).root)  # the child gets an absolute path
    logger = get_run_logger()
    summary = TokenizeSummary(safe_uri(settings.lake), safe_uri(settings.mlflow_tracking_uri))
    if "text" in chosen:
        summary.text_tokenizer = text_task(settings, TextTokenizerConfig(vocab_size=vocab_size))
        text_tokenizer_version = summary.text_tokenizer.version
    if "frames" in chosen:
        nodes = Nodes(nnodes, node_rank, rdzv_endpoint, job="cogflow-frame-tokenizer")
        summary.frame_tokenizer = frames_task(
            settings, frame_config, list(frame_overrides or []), nproc, restart, nodes
        )
        frame_tokenizer_version = summary.frame_tokenizer.version or None
    if "encode" in chosen:
        if encode_workers > 1:
            summary.encoding = _encode_shared(
                settings, frame_tokenizer_version, text_tokenizer_version, batch_clips, encode_workers
            )
        else:
            summary.encoding = encode_task(settings, frame_tokenizer_version, text_tokenizer_version, batch_clips)
        summary.checks = checks_task(settings)
    for line in summary.lines():
        logger.info(line)
    create_markdown_artifact(
        key="tokenize-summary",
        markdown="\n".join(["```", *summary.lines(), "```"]),
        description=f"tokenize {summary.lake}",
    )
    return summary
