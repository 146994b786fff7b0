"""MLflow for cogflow: where runs go, and the one place (with model/serving/registry.py) that imports mlflow.

The embedded default needs no server: runs in `sqlite:///$COGFLOW_HOME/mlflow.db`, artifacts under
`$COGFLOW_HOME/mlartifacts`. Any other tracking URI (an `http://` server, which stores artifacts where it
is told) or artifact root (`s3://bucket/prefix`, with the endpoint from `AWS_ENDPOINT_URL_S3`) comes from
configuration alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

EXPERIMENT = "cogflow"

# No telemetry from machines without internet, unless the user decided otherwise.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def artifact_root(tracking_uri: str, home: str) -> str | None:
    """Where a new experiment keeps its artifacts: $COGFLOW_ARTIFACTS, else beside a local database; a
    tracking server decides for itself (None)."""
    chosen = os.environ.get("COGFLOW_ARTIFACTS")
    if chosen:
        return chosen
    if tracking_uri.startswith("sqlite:"):
        return (Path(home).absolute() / "mlartifacts").as_uri()
    return None


def use(tracking_uri: str, home: str, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at `tracking_uri` and make sure the experiment exists; returns its id."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    # MLflow 3 also writes the URI into os.environ, where cogflow's settings would read it back as if the user
    # had set it: a later load_settings(home=...) in this process would then ignore its home's database.
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        mlflow.set_experiment(experiment)
        return found.experiment_id
    experiment_id = client.create_experiment(experiment, artifact_location=artifact_root(tracking_uri, home))
    mlflow.set_experiment(experiment)
    return experiment_id


@contextlib.contextmanager
def run(
    name: str, params: dict[str, object], tags: dict[str, str] | None = None, run_id: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run with the resolved config as params (flattened with dots) and cogflow's tags; with `run_id`,
    that run again (a training resumed from its checkpoint carries on in the same run)."""
    if run_id is not None and _exists(run_id):
        with mlflow.start_run(run_id=run_id) as active:
            yield active
        return
    with mlflow.start_run(run_name=name, tags={"cogflow.kind": name, **(tags or {})}) as active:
        mlflow.log_params(_flatten(params))
        yield active


def _exists(run_id: str) -> bool:
    try:
        MlflowClient().get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def log_input(uri: str, name: str, digest: str, tags: dict[str, str], context: str = "training") -> None:
    """Which data made the active run, for MLflow's dataset view (lineage): where it lives (a folder or s3://), a
    name, the digest cogflow already keys the run on, and sizes as tags. Only the description is logged, not data."""
    import mlflow.data.sources
    from mlflow.data.meta_dataset import MetaDataset

    # MLflow makes its artifact-store source classes at import time, so they are looked up by name
    kind = "S3ArtifactDatasetSource" if uri.startswith("s3://") else "LocalArtifactDatasetSource"
    source = getattr(mlflow.data.sources, kind)(uri)
    # MetaDataset implements `profile` (as None); its base class only declares it abstract
    dataset = MetaDataset(source, name=name, digest=digest)  # type: ignore[abstract]
    mlflow.log_input(dataset, context=context, tags=tags)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, folder: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=folder)


def log_text(text: str, name: str) -> None:
    mlflow.log_text(text, name)


def _flatten(params: dict[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_tags(tags: dict[str, str]) -> None:
    """Tags on the active run."""
    mlflow.set_tags(tags)


def latest_run(tags: dict[str, str]) -> str | None:
    """The id of the newest run of cogflow's experiment carrying all of `tags`, if any."""
    experiment = MlflowClient().get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = MlflowClient().search_runs(
        [experiment.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


def run_tags(run_id: str) -> dict[str, str]:
    return dict(MlflowClient().get_run(run_id).data.tags)


def download(uri: str, dest: str | Path) -> Path:
    """An artifact (`runs:/<id>/<path>` or `models:/<name>/<version>/<path>`) as a local file or folder."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
