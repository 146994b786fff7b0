"""Training the frame tokenizer on a real split lake: configs, MLflow tracking and registry, resume, torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from cogflow.model.config import ConfigError, named
from cogflow.model.serving import registry
from cogflow.model.tokenizers import frame as frame_tokenizer
from cogflow.model.tokenizers.train_frame import (
    FrameTokenizerRun,
    load_config,
    train_frame_tokenizer,
)
from cogflow.model.training import checkpoint_store, learning_rate
from cogflow.pipeline.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def settings_for(home: Path, lake_uri: str):
    return dataclasses.replace(load_settings(home=str(home)), lake=lake_uri)


def weights(version: str, dest: Path) -> dict[str, torch.Tensor]:
    return frame_tokenizer.load(
        registry.download(registry.FRAME_TOKENIZER, version, "frame_tokenizer.pt", dest)
    ).state_dict()


def test_named_configs_load_and_reject_unknown_keys_and_bad_values(tmp_path) -> None:
    assert {"debug", "demo", "base"} <= set(named("frame_tokenizer"))
    demo = load_config("demo")
    assert isinstance(demo, FrameTokenizerRun) and demo.model.compression == 16 and demo.model.grid() == 10
    assert load_config("base").model.grid() == 20  # the paper's 20x20 codes
    changed = load_config(
        "demo",
        ["train.steps=7", "model.fsq_levels=[8, 8, 8]", "model.codebook_size=512", "model.code_dim=3", "train.lr=3e-4"],
    )
    assert (changed.train.steps, changed.model.codebook_size, changed.train.lr) == (7, 512, 3e-4)
    assert changed.model.fsq_levels == (8, 8, 8)
    with pytest.raises(ConfigError, match="make 512 codes"):
        load_config("demo", ["model.fsq_levels=[8, 8, 8]"])
    with pytest.raises(ConfigError, match="unknown key stepz"):
        load_config("demo", ["train.stepz=7"])
    with pytest.raises(ConfigError, match="must be int"):
        load_config("demo", ["train.steps=seven"])
    with pytest.raises(ConfigError, match="multiple of the compression"):
        load_config("demo", ["train.crop=40"])
    with pytest.raises(ConfigError, match="no frame_tokenizer config named 'huge'"):
        load_config("huge")
    own = tmp_path / "mine.toml"
    own.write_text("[model]\ncompression = 8\n[train]\nsteps = 3\ncrop = 80\nbogus = 1\n")
    with pytest.raises(ConfigError, match="unknown key bogus"):
        load_config(str(own))


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    train = load_config("demo").train
    rates = [learning_rate(s, train) for s in range(train.steps)]
    assert rates[0] < rates[train.warmup_steps - 1] == pytest.approx(train.lr)
    assert rates[-1] == pytest.approx(train.lr * train.min_lr_ratio, rel=1e-3)
    assert all(a >= b for a, b in zip(rates[train.warmup_steps :], rates[train.warmup_steps + 1 :]))


def test_trains_tracks_registers_and_is_skipped_when_known(tmp_path, clip_lake) -> None:
    settings = settings_for(tmp_path / "home", clip_lake)
    run = load_config("debug")
    result = train_frame_tokenizer(settings, run, progress=False)
    assert result.trained and result.version == "1" and result.steps == run.train.steps and result.eval_split == "val"
    assert 0 < result.codebook_used <= 1 and result.perplexity >= 1 and result.thumbnail_psnr > 15

    logged = mlflow.get_run(result.run_id)
    assert logged.data.params["model.codebook_size"] == "64" and logged.data.params["world_size"] == "1"
    for key in (
        "val/psnr",
        "val/codebook_used",
        "val/perplexity",
        "val/thumbnail_psnr",
        "train/loss",
        "train/frames_per_s",
    ):
        assert key in logged.data.metrics, key
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert "before_after.png" in artifacts and "reconstructions" in artifacts
    grid = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="before_after.png", dst_path=str(tmp_path)
    )
    from PIL import Image

    assert Image.open(grid).size == (8 * 160, 3 * 160)  # originals, reconstructions, thumbnails

    version = registry.get_version(registry.FRAME_TOKENIZER, "1")
    assert version.tags["cogflow.eval_split"] == "val" and float(version.tags["cogflow.psnr"]) == pytest.approx(
        result.psnr, rel=1e-4
    )
    model = mlflow.pyfunc.load_model(f"models:/{registry.FRAME_TOKENIZER}/1")
    frames = np.random.default_rng(0).integers(0, 256, (3, 160, 160, 3), dtype=np.uint8)
    codes = model.predict(frames)
    assert codes.shape == (3, 10, 10) and codes.dtype == np.int16 and 0 <= codes.min() and codes.max() < 64

    again = train_frame_tokenizer(settings, run, progress=False)
    assert not again.trained and again.version == "1" and again.psnr == pytest.approx(result.psnr, rel=1e-4)
    other = train_frame_tokenizer(settings, load_config("debug", ["train.steps=4"]), progress=False)
    assert other.trained and other.version == "2"


def test_a_run_stopped_part_way_resumes_to_the_same_model(tmp_path, clip_lake) -> None:
    run = load_config("debug", ["train.checkpoint_every=100"])  # only the stop and the end write checkpoints
    reference = train_frame_tokenizer(settings_for(tmp_path / "a", clip_lake), run, progress=False)
    expected = weights(reference.version, tmp_path / "a-weights")

    settings = settings_for(tmp_path / "b", clip_lake)
    first = train_frame_tokenizer(settings, run, until_step=5, progress=False)
    assert first.version == "" and first.steps == 5 and "stopped at step 5" in first.note
    assert registry.latest_version(registry.FRAME_TOKENIZER) is None  # nothing registered from half a run
    assert len(checkpoint_store(settings).list_files("frame-tokenizer", ".pt")) == 1
    second = train_frame_tokenizer(settings, run, progress=False)
    assert second.trained and second.run_id == first.run_id and second.steps == run.train.steps
    got = weights(second.version, tmp_path / "b-weights")
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    losses = [m.step for m in mlflow.MlflowClient().get_metric_history(second.run_id, "train/loss")]
    assert losses == list(range(2, run.train.steps + 1, 2))  # every logged step once, across both slices


def test_two_process_torchrun_on_cpu(tmp_path, clip_lake) -> None:
    """A real `torchrun --nproc_per_node=2` (gloo): ranks share the batches and the codebook; rank 0 registers."""
    out = tmp_path / "result.json"
    env = {**os.environ, "COGFLOW_HOME": str(tmp_path / "home"), "COGFLOW_LAKE": clip_lake, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cogflow.model.tokenizers.train_frame",
        "--config",
        "debug",
        "--set",
        "train.batch_size=4",
        "--result-file",
        str(out),
        "--quiet",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["trained"] and result["version"] == "1" and result["steps"] == 12
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    assert mlflow.get_run(result["run_id"]).data.params["world_size"] == "2"
    assert len(mlflow.search_runs(experiment_names=["cogflow"])) == 1  # one run, from rank 0 only


def test_a_lake_without_clips_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="run `cogflow split` first"):
        train_frame_tokenizer(load_settings(home=str(tmp_path)), load_config("debug"), progress=False)


def test_sigterm_checkpoints_and_the_next_run_goes_on_from_there(tmp_path, clip_lake) -> None:
    """What torchrun and schedulers send before killing: the step in flight ends, a checkpoint is written."""
    env = {**os.environ, "COGFLOW_HOME": str(tmp_path / "home"), "COGFLOW_LAKE": clip_lake}
    overrides = [
        "--set",
        "train.steps=100000",
        "--set",
        "train.checkpoint_every=100000",
        "--set",
        "train.log_every=1",
        "--set",
        "train.val_every=100000",
    ]
    out = tmp_path / "result.json"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cogflow.model.tokenizers.train_frame",
            "--config",
            "debug",
            *overrides,
            "--result-file",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in child.stdout:
        if line.startswith("frame tokenizer 3/"):
            child.send_signal(signal.SIGTERM)
            break
    child.stdout.read()
    assert child.wait(timeout=120) == 0
    stopped = json.loads(out.read_text())
    assert (
        stopped["version"] == "" and stopped["steps"] >= 3 and f"stopped at step {stopped['steps']}" in stopped["note"]
    )

    settings = settings_for(tmp_path / "home", clip_lake)
    run = load_config("debug", [o for o in overrides if o != "--set"])
    resumed = train_frame_tokenizer(settings, run, until_step=stopped["steps"] + 2, progress=False)
    assert resumed.steps == stopped["steps"] + 2 and resumed.run_id == stopped["run_id"]
