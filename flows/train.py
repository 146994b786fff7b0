"""The train flow: one CogVideo stage trained from the lake's token shards, in a child process (plain steps in
model/cogvideo/train.py).

`python -m cogflow.model.cogvideo.train` for one process on a CPU or one GPU, `torchrun --standalone --nproc_per_node=N` for more
(by default, one process per visible GPU), and the same flow run on each machine of a multi-node job (`nnodes`,
`node_rank`, `rdzv_endpoint`: torchrun's c10d rendezvous; infra/README.md shows how). The child's lines stream into the flow's log and its step lines into
a progress artifact; a non-zero exit fails the flow with the child's last lines. Returns the MLflow run id (in the
summary), which `cogflow generate` picks up as the newest trained stage.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cogflow.flows.launch import ONE_NODE, Nodes, gpu_slot, run_module
from cogflow.flows.progress import child_log
from cogflow.model.cogvideo.train import TrainResult
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.sources import safe_uri
from cogflow.pipeline.storage import Storage

STEP_LINE = re.compile(r"^(?:stage [12]|text-to-image) (\d+)/(\d+) ")


def default_nproc() -> int:
    """One process per GPU, or one on a machine without CUDA."""
    import torch

    return max(1, torch.cuda.device_count())


@task(name="train-stage", cache_policy=NO_CACHE)
def train_task(
    settings: Settings,
    stage: int,
    config: str,
    overrides: list[str],
    nproc: int,
    frame_tokenizer_version: str | None,
    restart: bool,
    resume: bool,
    nodes: Nodes = ONE_NODE,
) -> TrainResult:
    args = [
        "--stage",
        str(stage),
        "--config",
        config,
        "--lake",
        settings.lake,
        *(a for o in overrides for a in ("--set", o)),
    ]
    if frame_tokenizer_version:
        args += ["--frame-tokenizer", frame_tokenizer_version]
    args += ["--restart"] if restart else []
    args += ["--resume"] if resume else []
    # the child's periodic "stage 1 25/300 ..." lines feed a progress artifact
    log = child_log(get_run_logger().info, STEP_LINE, f"training stage {stage} (steps)", f"stage{stage}-progress")
    # a multi-node job has its machines to itself (whoever started it on each chose them): no shared GPU slot, which
    # the nodes, sharing one Prefect server, would otherwise wait on for each other
    with gpu_slot() if nodes.count == 1 else contextlib.nullcontext():
        return TrainResult(
            **run_module("cogflow.model.cogvideo.train", args, settings, nproc=nproc, log=log, nodes=nodes)
        )


@dataclass
class TrainSummary:
    lake: str  # as shown (credentials removed)
    mlflow: str
    result: TrainResult

    @property
    def run_id(self) -> str:
        """The MLflow run of the trained (or found) stage: what `cogflow generate --stage1/--stage2` takes."""
        return self.result.run_id

    def lines(self) -> list[str]:
        r = self.result
        what = "trained" if r.trained else "found: " + r.note
        out = [
            f"train stage {r.stage} on {self.lake}",
            f"  MLflow run {r.run_id} ({what}, {r.steps} steps, {r.parameters / 1e6:.2f}M parameters)",
        ]
        if r.complete:
            out.append(f"  {r.eval_split} bits per token {r.val_bits_per_token:.3f}")
        else:
            out.append(f"  {r.note}")
        if r.trained and r.tokens_per_s == r.tokens_per_s:  # not NaN
            out.append(
                f"  {r.tokens_per_s:,.0f} tokens/s, model FLOPs utilisation {r.mfu:.1%} of the measured matmul peak"
            )
        out.append(f"  MLflow: {self.mlflow}")
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


@flow(name="train")
def train_flow(
    stage: int,
    config: str = "demo",
    overrides: list[str] | None = None,
    lake: str | None = None,
    nproc: int | None = None,
    frame_tokenizer_version: str | None = None,
    restart: bool = False,
    resume: bool = False,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
) -> TrainSummary:
    """Train stage 1 (key frames) or 2 (interpolation) on the lake's token shards; returns the MLflow run. On several
    machines, run it on each with their `node_rank` and the same `nnodes` and `rdzv_endpoint`."""
    nodes = Nodes(nnodes, node_rank, rdzv_endpoint, job=f"cogflow-stage{stage}")
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, not {stage}")
    settings = load_settings(lake=lake)
    settings = settings.replace(lake=Storage.at(settings.lake).root)  # the child gets an absolute path
    result = train_task(
        settings,
        stage,
        config,
        list(overrides or []),
        nproc or default_nproc(),
        frame_tokenizer_version,
        restart,
        resume,
        nodes,
    )
    summary = TrainSummary(safe_uri(settings.lake), safe_uri(settings.mlflow_tracking_uri), result)
    logger = get_run_logger()
    for line in summary.lines():
        logger.info(line)
    create_markdown_artifact(
        key=f"train-stage{stage}-summary",
        markdown="\n".join(["```", *summary.lines(), "```"]),
        description=f"train stage {stage}",
    )
    return summary
