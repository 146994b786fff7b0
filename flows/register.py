"""The register flow: evaluate a trained pair of stages, register them, and move `champion` only past a gate
(plain steps in model/evaluation/evaluate.py and model/serving/registry.py).

1. The two training runs (default: the newest complete run of each stage). A cogflow-t2v version made from the
   same runs with the same evaluation settings means the work is done: nothing is evaluated or registered again.
2. Evaluate (a GPU step): val bits per token of both stages, a video per held-out prompt, caption following on
   the sample data's ground truth. The videos, a sheet of them and prompts.json stay in
   `$COGFLOW_HOME/evaluations/<runs>/` and go to an MLflow run (`cogflow.kind=evaluation`) with the metrics.
3. The current champion's stages are measured on the same val rows (not trusted from their own evaluation, which
   saw another lake).
4. Register cogflow-stage1, cogflow-stage2 and the bundled cogflow-t2v, all `candidate`. The gate (no stage worse
   than the champion's on val bits per token; caption following at least `min_caption_accuracy` where there is
   ground truth) decides whether all three become `champion`; the decision and its reasons are version tags.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from cogflow.flows.launch import gpu_slot
from cogflow.flows.progress import Progress
from cogflow.model import tracking
from cogflow.model.cogvideo import stages
from cogflow.model.cogvideo.sampling import GenerateConfig
from cogflow.model.evaluation.evaluate import (
    Decision,
    EvalConfig,
    Evaluation,
    evaluate_pair,
    gate,
    val_bits,
)
from cogflow.model.serving import registry
from cogflow.model.serving.text_to_video import TextToVideo
from cogflow.pipeline.contract import (
    CLIP_SIZE,
    FRAME_TOKENIZER_FILE,
    INFO_FILE,
    TEXT_TOKENIZER_FILE,
    VIDEO_FRAMES,
    naming_hash,
    run_model,
    stage_file,
)
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.sources import safe_uri
from cogflow.pipeline.storage import Storage


class EvaluationParams(BaseModel):
    """How a trained pair is evaluated, and the gate it must pass to become champion."""

    prompts: int = Field(default=24, ge=1, le=1000, description="held-out prompts to generate a video for")
    seed: int = Field(default=0, ge=0)
    temperature: float | None = Field(default=None, gt=0, description="default: each stage's [generate] table")
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    guidance: float | None = Field(default=None, ge=0)
    val_rows: int = Field(default=256, ge=1, description="val clips for bits per token")
    min_caption_accuracy: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="gate: mean caption-following accuracy "
        "over colour, shape and motion, where the lake has ground truth "
        "(chance is 19%)",
    )
    bits_tolerance: float = Field(
        default=0.0, ge=0, description="gate: bits per token a stage may lose against the champion"
    )

    def config(self) -> EvalConfig:
        return EvalConfig(
            prompts=self.prompts,
            seed=self.seed,
            val_rows=self.val_rows,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            guidance=self.guidance,
        )


@dataclass(frozen=True)
class Pair:
    """What registering a candidate pair needs to know of its stages."""

    text_tokenizer_version: str
    frame_tokenizer_version: str
    frame_len: int  # codes per frame
    generate: dict[int, dict]  # stage -> its sampling defaults (the config's [generate] table)


@dataclass(frozen=True)
class Champion:
    """The cogflow-t2v version that is champion before this registration, if any, and its stages' val bits per
    token on the candidate's val rows (what the gate compares)."""

    version: str | None = None
    bits: dict[int, float] | None = None


@dataclass
class RegisterSummary:
    mlflow: str
    stage_runs: tuple[str, str]
    versions: dict[str, str]  # registered model -> version
    registered: bool  # False: found, made from the same runs and settings before
    promoted: bool
    reasons: list[str]
    champion: str | None  # the cogflow-t2v version that is champion now
    evaluation: Evaluation | None = None
    evaluation_dir: str | None = None
    recorded: dict[str, str] | None = None  # a found version's metric tags (cogflow.caption_mean_accuracy, ...)

    def caption_following(self) -> tuple[float, float] | None:
        """(mean accuracy, mean chance) of this evaluation or of the one recorded on the found version."""
        if self.evaluation is not None and self.evaluation.following is not None:
            return self.evaluation.following.mean, self.evaluation.following.mean_chance
        tags = self.recorded or {}
        if "cogflow.caption_mean_accuracy" in tags:
            return float(tags["cogflow.caption_mean_accuracy"]), float(tags["cogflow.caption_mean_chance"])
        return None

    def lines(self) -> list[str]:
        t2v = self.versions.get(registry.TEXT_TO_VIDEO)
        what = "registered" if self.registered else "found (same runs, same evaluation)"
        out = [
            f"register stage runs {self.stage_runs[0]} (1) and {self.stage_runs[1]} (2): {registry.TEXT_TO_VIDEO} v{t2v} {what}"
        ]
        if self.evaluation is not None:
            out += ["  " + line for line in self.evaluation.lines()]
        elif (following := self.caption_following()) is not None:
            out.append(
                f"  caption following {following[0]:.1%} (chance {following[1]:.1%}), as recorded on the version"
            )
        verdict = "passed: champion" if self.promoted else "failed: stays candidate"
        out.append(f"  gate {verdict} ({'; '.join(self.reasons)})")
        out.append(f"  champion: {registry.TEXT_TO_VIDEO} v{self.champion}" if self.champion else "  no champion yet")
        out.append(f"  MLflow: {self.mlflow}")
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


def _run_ids(settings: Settings, stage1: str | None, stage2: str | None) -> tuple[str, str]:
    runs = []
    for stage, ref in ((1, stage1), (2, stage2)):
        _, run_id = stages.stage_source(settings, stage, ref)
        if run_id is None:
            raise ValueError(f"register takes the MLflow run of stage {stage} (its id or runs:/<id>), not {ref!r}")
        runs.append(run_id)
    return runs[0], runs[1]


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    settings: Settings, files: dict[str, Path], params: EvaluationParams, out_dir: Path
) -> tuple[Evaluation, Champion, Pair]:
    """The candidate's evaluation; the champion (its version and its stages' val bits per token on the same rows,
    None without one); what registering the pair needs to know of it (tokenizer versions, sampling defaults)."""
    progress: Progress | None = None

    def on_batch(done: int, total: int) -> None:
        nonlocal progress
        progress = progress or Progress(total, "generating evaluation videos", key="evaluate-progress")
        progress.advance(done - progress.done)

    with gpu_slot():
        t2v = TextToVideo.from_runs(settings, str(files["stage1"]), str(files["stage2"]))
        first, second, device = t2v.first, t2v.second, t2v.device
        evaluation = evaluate_pair(settings, t2v, params.config(), out_dir, on_batch)
        champion = registry.alias_version(registry.TEXT_TO_VIDEO, registry.CHAMPION)
        champion_bits: dict[int, float] | None = None
        if champion is not None:
            champion_bits = {}
            with tempfile.TemporaryDirectory(prefix="cogflow-champion-") as tmp:
                for s in (1, 2):
                    path = stages.fetch_model(
                        settings,
                        f"models:/{registry.TEXT_TO_VIDEO}/{champion.version}/artifacts/{stage_file(s)}",
                        Path(tmp) / str(s),
                    )
                    stage = stages.load_stage(path, s, f"{registry.TEXT_TO_VIDEO} v{champion.version}", device)
                    champion_bits[s] = val_bits(settings, stage, params.val_rows)[0]
    text_version, frame_version = stages.pair_versions(first, second)
    pair = Pair(text_version, frame_version, first.model.spec.layout.frame_len, {1: first.defaults, 2: second.defaults})
    return evaluation, Champion(None if champion is None else str(champion.version), champion_bits), pair


@task(name="register-models", cache_policy=NO_CACHE)
def register_task(
    settings: Settings,
    runs: tuple[str, str],
    files: dict[str, Path],
    pair: Pair,
    params: EvaluationParams,
    evaluation: Evaluation,
    champion: Champion,
    out_dir: Path,
    eval_hash: str,
) -> RegisterSummary:
    decision: Decision = gate(evaluation, champion.bits, params.min_caption_accuracy, params.bits_tolerance)
    made_from = {
        "cogflow.stage1_run": runs[0],
        "cogflow.stage2_run": runs[1],
        "cogflow.eval_hash": eval_hash,
        "cogflow.format": registry.FORMAT,
    }
    text_version, frame_version = pair.text_tokenizer_version, pair.frame_tokenizer_version
    versions: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory(prefix="cogflow-register-") as tmp,
        tracking.run("evaluation", {"evaluation": params.model_dump()}, made_from),
    ):
        tmp_dir = Path(tmp)
        tracking.log_metrics(evaluation.metrics())
        for path in (Path(evaluation.sheet), out_dir / "prompts.json", out_dir / "confusion.md"):
            if path.exists():  # no confusion table without prompts that have a truth
                tracking.log_artifact(path)
        tracking.log_artifact(out_dir / "videos")
        bundle = {
            "stage1": files["stage1"],
            "stage2": files["stage2"],
            "text_tokenizer": registry.download(
                registry.TEXT_TOKENIZER, text_version, TEXT_TOKENIZER_FILE, tmp_dir / "text"
            ),
            "frame_tokenizer": registry.download(
                registry.FRAME_TOKENIZER, frame_version, FRAME_TOKENIZER_FILE, tmp_dir / "frames"
            ),
            "info": tmp_dir / INFO_FILE,
        }
        bundle["info"].write_text(
            json.dumps(
                {
                    "stage1_run": runs[0],
                    "stage2_run": runs[1],
                    "text_tokenizer_version": text_version,
                    "frame_tokenizer_version": frame_version,
                    "generate": {f"stage{s}": d for s, d in pair.generate.items()},
                },
                indent=1,
            )
        )

        common = {
            **made_from,
            "cogflow.text_tokenizer_version": text_version,
            "cogflow.frame_tokenizer_version": frame_version,
            "cogflow.eval_split": evaluation.eval_split,
            **decision.tags(),
        }
        metrics = {f"cogflow.{k}": f"{v:.4f}" for k, v in evaluation.metrics().items()}
        for s in (1, 2):
            example, output = stage_example(settings, s, frame_version, pair.frame_len)
            version = registry.register_stage(
                s,
                files[f"stage{s}"],
                example,
                output,
                sampling_params(pair.generate[s]),
                {**common, "cogflow.val_bits_per_token": f"{evaluation.bits[s]:.4f}"},
            )
            versions[registry.STAGES[s]] = str(version.version)
        example, output = text_to_video_example()
        version = registry.register_text_to_video(
            bundle, example, output, sampling_params(pair.generate[1]), {**common, **metrics}
        )
        versions[registry.TEXT_TO_VIDEO] = str(version.version)

    before = champion.version
    for name, number in versions.items():
        registry.set_alias(name, registry.CANDIDATE, number)
        if decision.promote:
            registry.set_alias(name, registry.CHAMPION, number)
        registry.tag_version(name, number, {"cogflow.gate.champion_before": before or "none"})
    now = versions[registry.TEXT_TO_VIDEO] if decision.promote else before
    return RegisterSummary(
        safe_uri(settings.mlflow_tracking_uri),
        runs,
        versions,
        True,
        decision.promote,
        decision.reasons,
        now,
        evaluation,
        str(out_dir),
    )


def sampling_params(defaults: dict) -> dict[str, object]:
    """The params a registered model's predict takes, with a stage's own sampling defaults (its [generate] table)."""
    config = GenerateConfig(**defaults)
    return {
        "seed": 0,
        "temperature": float(config.temperature),
        "top_k": int(config.top_k),
        "top_p": float(config.top_p),
        "guidance": float(config.guidance),
    }


def stage_example(settings: Settings, stage: int, frame_version: str, frame_len: int) -> tuple[object, object]:
    """A real val token row as the stage pyfunc's input example, and an output of the shape predict returns."""
    import numpy as np
    import pandas as pd

    from cogflow.model.cogvideo import data, train

    _, parts, _ = train.token_inputs(settings, stage, frame_version)
    rows, _ = data.eval_rows(Storage.at(settings.lake), parts, 1)
    codes = np.frombuffer(rows["frame_codes"][0], "<i2").astype(np.int64).reshape(5, frame_len)
    example = pd.DataFrame(
        {
            "text_ids": [list(map(int, rows["text_ids"][0]))],
            "text_mask": [list(map(int, rows["text_mask"][0]))],
            "fps_token_id": [int(rows["fps_token_id"][0])],
        }
    )
    if stage == 2:
        example["given_codes"] = [codes[0::2].reshape(-1).tolist()]
    return example, np.zeros((1, 5, frame_len), dtype=np.int64)


def text_to_video_example() -> tuple[object, object]:
    """A caption as the text-to-video pyfunc's input example, and an output of the shape predict returns."""
    import numpy as np
    import pandas as pd

    return (
        pd.DataFrame({"caption": ["一个红色的圆形在米色背景上从左向右移动。"]}),
        np.zeros((1, VIDEO_FRAMES, CLIP_SIZE, CLIP_SIZE, 3), dtype=np.uint8),
    )


@flow(name="register")
def register_flow(
    stage1: str | None = None,
    stage2: str | None = None,
    lake: str | None = None,
    evaluation: EvaluationParams = EvaluationParams(),  # noqa: B008 (pydantic parameters, never mutated)
) -> RegisterSummary:
    """Evaluate a pair of trained stages (default: the newest complete runs), register cogflow-stage1,
    cogflow-stage2 and cogflow-t2v as `candidate`, and make them `champion` if they pass the gate."""
    settings = load_settings(lake=lake)
    settings = settings.replace(lake=Storage.at(settings.lake).root)
    logger = get_run_logger()
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    runs = _run_ids(settings, stage1, stage2)
    eval_hash = naming_hash(evaluation.model_dump())
    found = registry.find_made_from(
        registry.TEXT_TO_VIDEO,
        {
            "cogflow.stage1_run": runs[0],
            "cogflow.stage2_run": runs[1],
            "cogflow.eval_hash": eval_hash,
            "cogflow.format": registry.FORMAT,
        },
    )
    if found is not None:
        champion = registry.alias_version(registry.TEXT_TO_VIDEO, registry.CHAMPION)
        versions = {registry.TEXT_TO_VIDEO: str(found.version)}
        summary = RegisterSummary(
            safe_uri(settings.mlflow_tracking_uri),
            runs,
            versions,
            False,
            found.tags.get("cogflow.gate") == "passed",
            found.tags.get("cogflow.gate.reasons", "").split("; "),
            None if champion is None else str(champion.version),
            recorded=dict(found.tags),
        )
    else:
        out_dir = Path(settings.home).absolute() / "evaluations" / f"{runs[0][:8]}-{runs[1][:8]}-{eval_hash}"
        with tempfile.TemporaryDirectory(prefix="cogflow-stages-") as tmp:  # each stage downloaded once, used twice
            files = {
                f"stage{s}": stages.fetch_model(
                    settings, f"runs:/{run_id}/{run_model(stage_file(s))}", Path(tmp) / str(s)
                )
                for s, run_id in zip((1, 2), runs)
            }
            result, champion_info, pair = evaluate_task(settings, files, evaluation, out_dir)
            summary = register_task(settings, runs, files, pair, evaluation, result, champion_info, out_dir, eval_hash)
    for line in summary.lines():
        logger.info(line)
    create_markdown_artifact(
        key="register-summary",
        markdown="\n".join(["```", *summary.lines(), "```"]),
        description="evaluate and register",
    )
    return summary
