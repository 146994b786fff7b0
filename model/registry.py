"""Registered model versions of cogflow's tokenizers and stages, in the MLflow registry.

Every version carries tags saying what made it (`cogflow.data_hash`, `cogflow.config_hash`), so a flow can
tell whether training again would make the same thing.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

TEXT_TOKENIZER = "cogflow-text-tokenizer"
FRAME_TOKENIZER = "cogflow-frame-tokenizer"
PYFUNC_TEXT_TOKENIZER = Path(__file__).with_name("text_tokenizer_pyfunc.py")
PYFUNC_FRAME_TOKENIZER = Path(__file__).with_name("frame_tokenizer_pyfunc.py")


def _versions(name: str) -> list[ModelVersion]:
    """Every registered version of `name` (none when the model is not registered at all)."""
    try:
        return MlflowClient().search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return []


def find_version(name: str, data_hash: str, config_hash: str) -> ModelVersion | None:
    """The newest version of `name` trained on the same data with the same config, if any."""
    same = [v for v in _versions(name) if v.tags.get("cogflow.data_hash") == data_hash and v.tags.get("cogflow.config_hash") == config_hash]
    return max(same, key=lambda v: int(v.version)) if same else None


def latest_version(name: str) -> ModelVersion | None:
    """The newest registered version of `name`, if any."""
    versions = _versions(name)
    return max(versions, key=lambda v: int(v.version)) if versions else None


def get_version(name: str, version: str) -> ModelVersion | None:
    """Version `version` of `name`, or None when the registry has no such version."""
    try:
        return MlflowClient().get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        return None


def _register(name: str, code: Path, artifacts: dict[str, str], example: object, requirements: list[str],
              tags: dict[str, str]) -> ModelVersion:
    """Log a models-from-code pyfunc (`code`) in the active run, register it as a new version of `name`, tag it."""
    info = mlflow.pyfunc.log_model(
        name=name.removeprefix("cogflow-"),
        python_model=str(code),
        artifacts=artifacts,
        input_example=example,
        pip_requirements=requirements,
        registered_model_name=name,
    )
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return client.get_model_version(name, version)


def register_text_tokenizer(model_file: Path, tags: dict[str, str], example: list[str]) -> ModelVersion:
    """The SentencePiece model (`artifacts/text.model`), predicting piece ids of captions."""
    return _register(TEXT_TOKENIZER, PYFUNC_TEXT_TOKENIZER, {"sentencepiece": str(model_file)}, example,
                     ["sentencepiece==0.2.3"], tags)


def register_frame_tokenizer(weights_file: Path, tags: dict[str, str], example: object) -> ModelVersion:
    """The VQ-VAE (`artifacts/frame_tokenizer.pt`: config and weights), predicting codes of uint8 frames."""
    return _register(FRAME_TOKENIZER, PYFUNC_FRAME_TOKENIZER, {"weights": str(weights_file)}, example,
                     [f"torch=={torch_version()}"], tags)


def torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def download(name: str, version: str, artifact: str, dest: Path) -> Path:
    """One artifact of a registered version, as a local file."""
    uri = f"models:/{name}/{version}"
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/artifacts/{artifact}", dst_path=str(dest)))
