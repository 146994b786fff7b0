"""Registered model versions of cogflow's tokenizers and stages, in the MLflow registry.

Every version carries tags saying what made it (`cogflow.data_hash`, `cogflow.config_hash`; for the stages and the
bundled text-to-video model, the training runs), so a flow can tell whether training again would make the same
thing. Aliases, not stages: every new stage and text-to-video version is `candidate`; `champion` moves only past
the gate (flows/register.py), and each decision is written on the version as tags.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

TEXT_TOKENIZER = "cogflow-text-tokenizer"
FRAME_TOKENIZER = "cogflow-frame-tokenizer"
PYFUNC_TEXT_TOKENIZER = Path(__file__).with_name("text_tokenizer_pyfunc.py")
PYFUNC_FRAME_TOKENIZER = Path(__file__).with_name("frame_tokenizer_pyfunc.py")
STAGES = {1: "cogflow-stage1", 2: "cogflow-stage2"}
TEXT_TO_VIDEO = "cogflow-t2v"
PYFUNC_STAGE = Path(__file__).with_name("stage_pyfunc.py")
PYFUNC_TEXT_TO_VIDEO = Path(__file__).with_name("t2v_pyfunc.py")
CANDIDATE, CHAMPION = "candidate", "champion"
# How a version is packaged, as the tag cogflow.format: 2 since its pyfunc carries cogflow's code and pinned
# requirements (cogflow 0.2). A flow that finds a version made from the same runs registers them again when the
# version's format is older, so `cogflow register` brings an old version up to date.
FORMAT = "2"


def _versions(name: str) -> list[ModelVersion]:
    """Every registered version of `name` (none when the model is not registered at all)."""
    try:
        return MlflowClient().search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return []


def find_version(name: str, data_hash: str, config_hash: str) -> ModelVersion | None:
    """The newest version of `name` trained on the same data with the same config, if any."""
    same = [
        v
        for v in _versions(name)
        if v.tags.get("cogflow.data_hash") == data_hash and v.tags.get("cogflow.config_hash") == config_hash
    ]
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


def find_made_from(name: str, tags: dict[str, str]) -> ModelVersion | None:
    """The newest version of `name` carrying all of `tags` (say, made from the same two training runs)."""
    same = [v for v in _versions(name) if all(v.tags.get(k) == val for k, val in tags.items())]
    return max(same, key=lambda v: int(v.version)) if same else None


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The version of `name` that `alias` points at, if any."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


# What a registered pyfunc imports, by distribution: cogflow's model code, the data layer under it (PyAV, Arrow,
# DuckDB, boto3 for storage), rich (progress bars) and MLflow. Prefect is the one dependency serving never imports;
# tests/bench/serve_anywhere.py proves the list in a virtualenv built from it alone.
SERVING_DEPENDENCIES = (
    "torch",
    "numpy",
    "sentencepiece",
    "pillow",
    "av",
    "pyarrow",
    "duckdb",
    "boto3",
    "rich",
    "mlflow",
)


def requirements() -> list[str]:
    """cogflow's own pins (pyproject.toml, as installed) of SERVING_DEPENDENCIES: a registered version's
    requirements.txt, complete and pinned."""
    pins = {}
    for spec in importlib.metadata.requires("cogflow") or []:
        if ";" in spec:  # extras (test, cluster)
            continue
        match = re.match(r"([A-Za-z0-9_.-]+)", spec)
        if match:
            pins[match.group(1).lower()] = spec.strip()
    missing = [d for d in SERVING_DEPENDENCIES if d not in pins]
    if missing:
        raise RuntimeError(f"cogflow's installed metadata has no pin for {missing}")
    return [pins[d] for d in SERVING_DEPENDENCIES]


def package_code(dest: Path) -> Path:
    """A copy of cogflow's own code at `dest/cogflow` (the package's .py, .sql and .toml files, as installed), for a
    pyfunc's code_paths: MLflow puts it on the path of whoever loads the version, so the version needs no cogflow
    installed."""
    import cogflow

    root, out = Path(cogflow.__file__).parent, dest / "cogflow"
    out.mkdir(parents=True)
    shutil.copy2(root / "__init__.py", out / "__init__.py")
    for folder in ("flows", "pipeline", "model", "sql"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".py", ".sql", ".toml") and "__pycache__" not in path.parts:
                target = out / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return out


def _register(
    name: str,
    code: Path,
    artifacts: dict[str, str],
    example: object,
    tags: dict[str, str],
    signature: object | None = None,
) -> ModelVersion:
    """Log a models-from-code pyfunc (`code`) with cogflow's code and pinned requirements in the active run,
    register it as a new version of `name`, tag it."""
    with tempfile.TemporaryDirectory(prefix="cogflow-code-") as tmp:
        info = mlflow.pyfunc.log_model(
            name=name.removeprefix("cogflow-"),
            python_model=str(code),
            artifacts=artifacts,
            input_example=example,
            signature=signature,
            pip_requirements=requirements(),
            code_paths=[str(package_code(Path(tmp)))],
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    tag_version(name, version, tags)
    return MlflowClient().get_model_version(name, version)


def register_text_tokenizer(model_file: Path, tags: dict[str, str], example: list[str]) -> ModelVersion:
    """The SentencePiece model (`artifacts/text.model`), predicting piece ids of captions."""
    return _register(TEXT_TOKENIZER, PYFUNC_TEXT_TOKENIZER, {"sentencepiece": str(model_file)}, example, tags)


def register_frame_tokenizer(weights_file: Path, tags: dict[str, str], example: object) -> ModelVersion:
    """The VQ-VAE (`artifacts/frame_tokenizer.pt`: config and weights), predicting codes of uint8 frames."""
    return _register(FRAME_TOKENIZER, PYFUNC_FRAME_TOKENIZER, {"weights": str(weights_file)}, example, tags)


def register_stage(
    stage: int, model_file: Path, example: object, output: object, params: dict[str, object], tags: dict[str, str]
) -> ModelVersion:
    """A trained stage (`artifacts/stage<N>.pt`) as a version of cogflow-stage<N>: its pyfunc samples frame codes
    from token rows (model/serving/stage_pyfunc.py), and `cogflow generate --stage<N> models:/...` takes it."""
    from mlflow.models import infer_signature

    signature = infer_signature(example, output, params=params)
    return _register(STAGES[stage], PYFUNC_STAGE, {"stage": str(model_file)}, example, tags, signature)


def register_text_to_video(
    files: dict[str, Path], example: object, output: object, params: dict[str, object], tags: dict[str, str]
) -> ModelVersion:
    """Both stages, both tokenizers and what they were made from (`files`: stage1, stage2, text_tokenizer,
    frame_tokenizer, info) as a version of cogflow-t2v, whose pyfunc turns captions into videos
    (model/serving/t2v_pyfunc.py). Loading it needs its own requirements and the artifact store, nothing else."""
    from mlflow.models import infer_signature

    signature = infer_signature(example, output, params=params)
    return _register(
        TEXT_TO_VIDEO, PYFUNC_TEXT_TO_VIDEO, {k: str(v) for k, v in files.items()}, example, tags, signature
    )


def resolve(uri: str) -> tuple[str, str]:
    """`models:/<name>@<alias>` or `models:/<name>/<version>` -> (name, version); ValueError when there is none."""
    ref = uri.removeprefix("models:/")
    name, at, alias = ref.partition("@")
    if at:
        version = alias_version(name, alias)
    else:
        name, _, number = ref.partition("/")
        version = get_version(name, number) if number.isdigit() else None
    if not uri.startswith("models:/") or version is None:
        raise ValueError(f"no registered model version {uri!r} (models:/<name>@<alias> or models:/<name>/<version>)")
    return name, str(version.version)


def download(name: str, version: str, artifact: str, dest: Path) -> Path:
    """One artifact of a registered version, as a local file."""
    uri = f"models:/{name}/{version}"
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/artifacts/{artifact}", dst_path=str(dest)))
