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


def find_version(name: str, data_hash: str, config_hash: str) -> ModelVersion | None:
    """The newest version of `name` trained on the same data with the same config, if any."""
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    same = [v for v in versions if v.tags.get("cogflow.data_hash") == data_hash and v.tags.get("cogflow.config_hash") == config_hash]
    return max(same, key=lambda v: int(v.version)) if same else None


def register_text_tokenizer(model_file: Path, tags: dict[str, str], example: list[str]) -> ModelVersion:
    """Log the SentencePiece model as a pyfunc in the active run and register a new version with `tags`."""
    info = mlflow.pyfunc.log_model(
        name="text-tokenizer",
        python_model=str(PYFUNC_TEXT_TOKENIZER),
        artifacts={"sentencepiece": str(model_file)},
        input_example=example,
        pip_requirements=["sentencepiece==0.2.3"],
        registered_model_name=TEXT_TOKENIZER,
    )
    client = MlflowClient()
    version = client.get_model_version(TEXT_TOKENIZER, str(info.registered_model_version))
    for key, value in tags.items():
        client.set_model_version_tag(TEXT_TOKENIZER, version.version, key, value)
    return client.get_model_version(TEXT_TOKENIZER, version.version)


def download(name: str, version: str, artifact: str, dest: Path) -> Path:
    """One artifact of a registered version, as a local file."""
    uri = f"models:/{name}/{version}"
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/artifacts/{artifact}", dst_path=str(dest)))
