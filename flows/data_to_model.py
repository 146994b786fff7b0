"""The whole pipeline as one flow: captioned videos in, a registered text-to-video model out.

    ingest -> split -> tokenize -> train stage 1 -> train stage 2 -> evaluate + register

Each step is the flow of its own (a subflow here, a deployment of its own in prefect.yaml) and each skips work
already done: ingest writes nothing for rows it holds, split only cuts captions not cut yet, tokenize finds
registered tokenizers made from the same data, training finds a complete run on the same tokens with the same
config, registration finds a version made from the same two runs. So a scheduled run on unchanged data only
looks, and a run killed anywhere is finished by the next one.

The GPU steps (the frame tokenizer, both stages, the evaluation) each take a slot of Prefect's global concurrency
limit `cogflow-gpu` (flows/launch.py), so two pipelines or a pipeline and a lone training never share a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from cogflow.flows.ingest import ingest_flow
from cogflow.flows.register import EvaluationParams, RegisterSummary, register_flow
from cogflow.flows.runners import on_runner
from cogflow.flows.split import split_flow
from cogflow.flows.tokenize import TokenizeSummary, tokenize_flow
from cogflow.flows.train import TrainSummary, train_flow
from cogflow.pipeline.ingest import IngestSummary
from cogflow.pipeline.settings import load_settings
from cogflow.pipeline.sources import safe_uri
from cogflow.pipeline.split import SplitSummary
from cogflow.pipeline.storage import Storage


class IngestParams(BaseModel):
    """Which manifest to ingest first; none: work on what the lake holds."""

    manifest: str | None = Field(
        default=None, description="CSV, JSONL, Parquet, SRT or WebVTT; a path, s3:// or http(s)://"
    )
    video_col: str = "video"
    caption_col: str = "caption"
    retry_rejects: bool = False


class TokenizerParams(BaseModel):
    config: str = Field(default="demo", description="frame tokenizer config: debug, demo, base or a .toml file")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE overrides of the frame tokenizer config")
    vocab_size: int = Field(default=16000, ge=64, description="text pieces wanted (a small corpus gets fewer)")


class TrainingParams(BaseModel):
    config: str = Field(
        default="demo", description="CogVideo config for both stages: debug, demo, base, paper or a .toml file"
    )
    stage1: list[str] = Field(default_factory=list, description="KEY=VALUE overrides for stage 1, e.g. train.steps=600")
    stage2: list[str] = Field(default_factory=list, description="KEY=VALUE overrides for stage 2")
    nproc: int | None = Field(
        default=None, ge=1, description="training processes (torchrun when more than 1; default one per GPU)"
    )
    stage2_from_stage1: bool = Field(
        default=True,
        description="stage 2 starts from the weights of the stage 1 just "
        "trained (train.init_from), not from random ones",
    )


@dataclass
class PipelineSummary:
    lake: str
    ingest: IngestSummary | None = None
    split: SplitSummary | None = None
    tokenize: TokenizeSummary | None = None
    stages: list[TrainSummary] = field(default_factory=list)
    register: RegisterSummary | None = None

    def lines(self) -> list[str]:
        out = [f"data to model on {self.lake}"]
        if self.ingest is not None:
            i = self.ingest
            out.append(
                f"  ingest    {i.accepted_rows} of {i.manifest_rows} rows accepted ({i.new_rows['captions']} new captions), "
                f"{i.rejected_rows} rejected"
            )
        if self.split is not None:
            s = self.split
            out.append(
                f"  split     {s.clips_written} clips written from {s.videos} videos, {sum(s.rejects.values())} rejected"
            )
        if self.tokenize is not None:
            out += ["  " + line for line in self.tokenize.lines()[1:-1]]
        for summary in self.stages:
            out += ["  " + line for line in summary.lines()[:-1]]
        if self.register is not None:
            out += ["  " + line for line in self.register.lines()]
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


@flow(name="data-to-model")
def data_to_model_flow(
    lake: str | None = None,
    ingest: IngestParams = IngestParams(),  # noqa: B008 (pydantic parameters, never mutated)
    tokenizer: TokenizerParams = TokenizerParams(),  # noqa: B008 (pydantic parameters, never mutated)
    training: TrainingParams = TrainingParams(),  # noqa: B008 (pydantic parameters, never mutated)
    evaluation: EvaluationParams = EvaluationParams(),  # noqa: B008 (pydantic parameters, never mutated)
    task_runner: str = "threads",
) -> PipelineSummary:
    """Ingest (when given a manifest), split, tokenize, train both stages, evaluate and register: every step
    skips what is done already. The new model version gets the `candidate` alias, and `champion` when it passes
    the gate (`evaluation`). `task_runner` (threads, processes, dask[://HOST:PORT], ray[://HOST:PORT]) is what
    ingest's probes and split's shards fan out on."""
    settings = load_settings(lake=lake)
    root = Storage.at(settings.lake).root  # every subflow (and child process) gets the same absolute lake
    logger = get_run_logger()
    summary = PipelineSummary(safe_uri(root))
    if ingest.manifest:
        summary.ingest = on_runner(ingest_flow, task_runner, settings.probe_workers)(
            manifest=ingest.manifest,
            lake=root,
            video_col=ingest.video_col,
            caption_col=ingest.caption_col,
            retry_rejects=ingest.retry_rejects,
        )
    summary.split = on_runner(split_flow, task_runner, settings.split.workers)(lake=root)
    summary.tokenize = tokenize_flow(
        lake=root,
        vocab_size=tokenizer.vocab_size,
        frame_config=tokenizer.config,
        frame_overrides=tokenizer.overrides,
        nproc=training.nproc or 1,
    )
    frame_version = summary.tokenize.frame_tokenizer.version if summary.tokenize.frame_tokenizer else None
    runs: list[str] = []
    for stage, overrides in ((1, training.stage1), (2, training.stage2)):
        if stage == 2 and training.stage2_from_stage1:
            overrides = [f'train.init_from="{runs[0]}"', *overrides]  # quoted: a run id can read as a number
        trained = train_flow(
            stage=stage,
            config=training.config,
            overrides=overrides,
            lake=root,
            nproc=training.nproc,
            frame_tokenizer_version=frame_version,
        )
        summary.stages.append(trained)
        runs.append(trained.run_id)
    summary.register = register_flow(stage1=runs[0], stage2=runs[1], lake=root, evaluation=evaluation)
    for line in summary.lines():
        logger.info(line)
    create_markdown_artifact(
        key="data-to-model-summary",
        markdown="\n".join(["```", *summary.lines(), "```"]),
        description=f"data to model on {summary.lake}",
    )
    return summary
