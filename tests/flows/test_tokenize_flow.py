"""`cogflow tokenize` on the Prefect test harness: both tokenizers trained and registered, every clip encoded,
a re-run that finds everything done, and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
from helpers import SAMPLE_VAL_PERCENT, copy_sample, upload_tree, write_csv

from cogflow.flows.cli import main
from cogflow.model.serving import registry
from cogflow.pipeline import lake
from cogflow.pipeline.storage import Storage


def test_cli_tokenize_text_registers_once(tmp_path, capsys, monkeypatch, sample_dir):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    assert main(["tokenize", "text", "--lake", str(tmp_path / "empty-lake")]) == 2
    assert "no train captions" in capsys.readouterr().err

    rows = copy_sample(sample_dir, tmp_path / "data")
    manifest = write_csv(tmp_path / "data" / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    assert main(["ingest", str(manifest)]) == 0
    assert main(["tokenize", "text", "--vocab-size", "3000"]) == 0
    out = capsys.readouterr().out
    assert "cogflow-text-tokenizer v1 (trained)" in out and "clamped" in out
    assert main(["tokenize", "text", "--vocab-size", "3000"]) == 0
    assert "v1 (already registered" in capsys.readouterr().out


def test_cli_tokenize_all_trains_encodes_then_finds_everything_done(tmp_path, capsys, monkeypatch, sample_dir):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COGFLOW_VAL_PERCENT", str(SAMPLE_VAL_PERCENT))  # two of the four sample videos
    rows = copy_sample(sample_dir, tmp_path / "data")
    manifest = write_csv(tmp_path / "data" / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    assert main(["tokenize", "frames", "--config", "debug"]) == 2  # nothing split yet: the child says why
    assert "run `cogflow split` first" in capsys.readouterr().err
    assert main(["ingest", str(manifest)]) == 0 and main(["split"]) == 0
    capsys.readouterr()
    assert main(["tokenize", "frames", "--config", "debug", "--set", "train.stepz=3"]) == 2
    assert "unknown key stepz" in capsys.readouterr().err
    assert main(["tokenize", "text,pictures"]) == 2

    assert main(["tokenize", "--config", "debug", "--vocab-size", "500"]) == 0
    out = capsys.readouterr().out
    assert (
        "cogflow-text-tokenizer v1 (trained)" in out
        and "cogflow-frame-tokenizer v1 (trained, 12 steps): val PSNR" in out
    )
    store = Storage.at(str(tmp_path / "home" / "lake"))
    clips = lake.read_clips(store, ["clip_id"]).num_rows
    assert f"encoded          {clips} clips" in out and "data checks passed" in out
    assert lake.read_tokens(store, "1", ["clip_id"]).num_rows == clips
    assert main(["status"]) == 0
    assert "tokens/v1  stage 2  (text tokenizer v1)" in capsys.readouterr().out

    assert main(["tokenize", "--config", "debug", "--vocab-size", "500"]) == 0
    out = capsys.readouterr().out
    assert "v1 (already registered: same captions" in out and "v1 (already registered: same clips" in out
    assert "encoded          0 clips" in out

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    kinds = sorted(r["tags.cogflow.kind"] for _, r in mlflow.search_runs(experiment_names=["cogflow"]).iterrows())
    assert kinds == ["frame-tokenizer", "text-tokenizer"]  # the re-run trained nothing

    # The same clips encoded again, shared out among two worker processes of a local Dask cluster
    # (`--encode-workers 2 --task-runner dask`, each file under its shard lock): the token rows of one encoder.
    shared = Path(shutil.copytree(tmp_path / "home", tmp_path / "shared"))
    for folder in ("tokens", "token_shards"):
        shutil.rmtree(shared / "lake" / folder)
    monkeypatch.setenv("COGFLOW_HOME", str(shared))
    assert main(["tokenize", "encode", "--encode-workers", "2", "--task-runner", "dask"]) == 0
    assert f"encoded          {clips} clips" in capsys.readouterr().out
    columns = ["clip_id", "stage", "text_ids", "fps_token_id", "frame_codes", "shard_id"]
    by_dask, alone = (
        lake.read_tokens(Storage.at(str(h / "lake")), "1", columns).sort_by("clip_id")
        for h in (shared, tmp_path / "home")
    )
    assert by_dask.num_rows == clips and by_dask.equals(alone)


def test_frames_with_two_processes_through_the_flow(tmp_path, capsys, monkeypatch, sample_dir):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COGFLOW_VAL_PERCENT", "0")
    rows = copy_sample(sample_dir, tmp_path / "data")
    manifest = write_csv(tmp_path / "data" / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    assert main(["ingest", str(manifest)]) == 0 and main(["split"]) == 0
    capsys.readouterr()
    assert main(["tokenize", "frames", "--config", "debug", "--set", "train.batch_size=4", "--nproc", "2"]) == 0
    out = capsys.readouterr().out
    assert "cogflow-frame-tokenizer v1 (trained, 12 steps): train PSNR" in out  # no val videos: measured on train
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cogflow"])
    assert list(runs["params.world_size"]) == ["2"]


def test_tokenize_against_a_tracking_server_with_lake_artifacts_and_checkpoints_on_s3(
    tmp_path, capsys, monkeypatch, sample_dir, s3, mlflow_server
):
    """Configuration alone moves everything off the machine: nothing lands in COGFLOW_HOME."""
    home = tmp_path / "home"
    monkeypatch.setenv("COGFLOW_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("COGFLOW_LAKE", f"s3://{s3.bucket}/lake")
    monkeypatch.setenv("COGFLOW_CHECKPOINTS", f"s3://{s3.bucket}/checkpoints")
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    write_csv(data / "manifest.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    upload_tree(s3, s3.bucket, data, "corpus")
    assert main(["ingest", f"s3://{s3.bucket}/corpus/manifest.csv"]) == 0 and main(["split"]) == 0
    capsys.readouterr()
    assert main(["tokenize", "--config", "debug", "--vocab-size", "400"]) == 0
    out = capsys.readouterr().out
    assert "cogflow-frame-tokenizer v1 (trained" in out and f"MLflow: {mlflow_server}" in out

    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
        for o in page.get("Contents", [])
    ]
    assert any(k.startswith("lake/tokens/v1/stage=") for k in keys) and any(
        k.startswith("lake/token_shards/v1/") for k in keys
    )
    assert any(k.startswith("checkpoints/frame-tokenizer/") and k.endswith("checkpoint.pt") for k in keys)
    assert any(k.startswith("mlartifacts/") and k.endswith("frame_tokenizer.pt") for k in keys)
    assert any(k.startswith("mlartifacts/") and k.endswith("text.model") for k in keys)
    assert not (home / "mlflow.db").exists() and not (home / "mlartifacts").exists() and not (home / "lake").exists()

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{registry.FRAME_TOKENIZER}/1")
    assert model.predict(np.zeros((1, 160, 160, 3), np.uint8)).shape == (1, 10, 10)
