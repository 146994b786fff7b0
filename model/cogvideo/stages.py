"""Finding and loading trained stages: from MLflow runs, registry URIs or local files, checked against the
tokenizers they were trained with."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from cogflow.model import tracking
from cogflow.model.cogvideo.sampling import GenerateConfig
from cogflow.model.cogvideo.transformer import CogVideoTransformer
from cogflow.model.cogvideo.transformer import load as load_transformer
from cogflow.model.tokenizers.encode import Tokenizers, load_tokenizers
from cogflow.pipeline.contract import run_model, stage_file
from cogflow.pipeline.settings import Settings
from cogflow.pipeline.sources import safe_uri

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _artifact(stage: int) -> str:
    return run_model(stage_file(stage))


def stage_source(settings: Settings, stage: int, ref: str | None) -> tuple[str, str | None]:
    """Where a stage's weights are: (a runs:/ or models:/ URI or a local path, the run id when known).

    ref: None (the newest complete run of the stage), or anything `model_source` takes."""
    if ref is None:
        tracking.use(settings.mlflow_tracking_uri, settings.home)
        run_id = tracking.latest_run({"cogflow.kind": f"stage{stage}", "cogflow.complete": "true"})
        if run_id is None:
            raise ValueError(
                f"no complete stage-{stage} run at {safe_uri(settings.mlflow_tracking_uri)}: "
                f"run `cogflow train --stage {stage}` first (or pass --stage{stage})"
            )
        return f"runs:/{run_id}/{_artifact(stage)}", run_id
    return model_source(ref, _artifact(stage), f"--stage{stage}")


def model_source(ref: str, artifact: str, option: str) -> tuple[str, str | None]:
    """(a runs:/ or models:/ URI or a local path, the run id when known) of the model file `ref` names: a 32-hex
    run id or `runs:/<id>` (its `artifact`), `runs:/<id>/<path>`, `models:/...`, or a local .pt file. `option` is
    what the user set, for the error message."""
    if RUN_ID.match(ref):
        return f"runs:/{ref}/{artifact}", ref
    if ref.startswith("runs:/"):
        run_id, _, path = ref.removeprefix("runs:/").partition("/")
        return f"runs:/{run_id}/{path or artifact}", run_id
    if ref.startswith("models:/"):
        return ref, None
    if Path(ref).suffix == ".pt":
        if not Path(ref).is_file():
            raise ValueError(f"{option}: no file {ref}")
        return ref, None
    raise ValueError(
        f"{option} takes a run id, runs:/<id>[/path], models:/<name>/<version>, or a .pt file; not {ref!r}"
    )


def fetch_model(settings: Settings, source: str, dest: Path | None = None) -> Path:
    """The local path of the .pt file at `source` (from `stage_source` or `model_source`), downloaded into `dest`
    (default: a new temporary folder the caller owns) when it is an MLflow artifact."""
    if not source.startswith(("runs:/", "models:/")):
        return Path(source)
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    dest = Path(dest or tempfile.mkdtemp(prefix="cogflow-model-"))
    try:
        got = tracking.download(source, dest / "download")
    except Exception as exc:  # MLflow's own errors (no such run, artifact or model): one clear line instead
        raise ValueError(f"cannot fetch {source}: {str(exc).splitlines()[0]}") from exc
    if got.is_dir():  # a registered model or a run folder: the one .pt inside
        found = sorted(got.rglob("*.pt"))
        if len(found) != 1:
            raise ValueError(f"{source} holds {len(found)} .pt files, not one model file")
        got = found[0]
    return got


def find_stage(settings: Settings, stage: int, ref: str | None, dest: Path | None = None) -> Path:
    """The local path of a stage's .pt file, `ref` as in `stage_source`."""
    return fetch_model(settings, stage_source(settings, stage, ref)[0], dest)


@dataclass
class Stage:
    model: CogVideoTransformer
    info: dict  # what the file holds besides the weights: stage, tokenizer versions, run_config
    source: str  # the run id, else the reference it came from

    @property
    def defaults(self) -> dict:
        """The run's `[generate]` table (fields of GenerateConfig; unknown keys from other versions skipped)."""
        table = (self.info.get("run_config") or {}).get("generate") or {}
        names = {f.name for f in fields(GenerateConfig)}
        return {k: v for k, v in table.items() if k in names}


def load_stage(path: Path, stage: int | None, source: str, device: str | torch.device) -> Stage:
    """A stage file as a model on `device`, checked to be the stage asked for (None: either stage)."""
    model, saved = load_transformer(str(path), device)
    info = {k: v for k, v in saved.items() if k != "state"}
    held = info.get("stage", model.spec.layout.stage)
    if stage is not None and (held != stage or model.spec.layout.stage != stage):
        raise ValueError(f"{source} holds a stage-{held} model where stage {stage} was asked for")
    return Stage(model, info, source)


def pair_versions(first: Stage, second: Stage) -> tuple[str, str]:
    """(text, frame) tokenizer versions both stages were trained with; they must agree."""
    versions = [(s.info.get("text_tokenizer_version"), s.info.get("frame_tokenizer_version")) for s in (first, second)]
    if versions[0] != versions[1]:
        raise ValueError(
            f"stage 1 ({first.source}) was trained with text/frame tokenizer versions "
            f"{versions[0][0]}/{versions[0][1]} and stage 2 ({second.source}) with "
            f"{versions[1][0]}/{versions[1][1]}: pick stages trained on the same tokens"
        )
    return str(versions[0][0]), str(versions[0][1])


def check_tokenizers(tokenizers: Tokenizers, *stages: Stage) -> Tokenizers:
    """`tokenizers`, once checked to fit every stage's codebook, text vocabulary and grid."""
    for s in stages:
        spec = s.model.spec
        have = (tokenizers.frames.config.codebook_size, tokenizers.text.vocab_size, tokenizers.frames.config.grid())
        if (spec.codebook_size, spec.text_vocab, spec.layout.grid) != have:
            raise ValueError(
                f"stage {spec.layout.stage} ({s.source}) has {spec.codebook_size} codes, {spec.text_vocab} "
                f"text pieces and a {spec.layout.grid}x{spec.layout.grid} grid; its tokenizers have "
                f"{have[0]}, {have[1]} and {have[2]}x{have[2]}"
            )
    return tokenizers


def stage_tokenizers(settings: Settings, first: Stage, second: Stage, device: str | torch.device) -> Tokenizers:
    """The registered tokenizer versions both stages were trained with, checked against the models."""
    text_version, frame_version = pair_versions(first, second)
    return check_tokenizers(load_tokenizers(settings, frame_version, text_version, str(device)), first, second)


def sampling_config(stage: Stage, overrides: dict) -> GenerateConfig:
    """The stage's `[generate]` table with `overrides` (GenerateConfig fields; None: keep the table's)."""
    return GenerateConfig(**{**stage.defaults, **{k: v for k, v in overrides.items() if v is not None}})
