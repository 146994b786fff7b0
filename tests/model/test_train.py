"""Training both stages from a real lake's token shards: MLflow logging, the finished model, exact resume after a
kill, the same gradient from one process and from a real 2-process torchrun (DDP and FSDP), and a video model
started from a text-to-image run's spatial channel."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import pytest
import torch
from helpers import lake_settings, tokenized_home, upload_tree
from mlflow.tracking import MlflowClient

from cogflow.flows.launch import Nodes, run_module
from cogflow.model import tracking
from cogflow.model.cogvideo.data import TokenStream, fit_text
from cogflow.model.cogvideo.layout import Layout
from cogflow.model.cogvideo.train import load_config, train_stage
from cogflow.model.cogvideo.transformer import load as load_model
from cogflow.pipeline import lake
from cogflow.pipeline.storage import Storage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokens_home(tmp_path_factory, sample_dir) -> Path:
    """A home whose lake holds token shards of both stages (text tokenizer v1, debug frame tokenizer v1)."""
    return tokenized_home(tmp_path_factory.mktemp("train"), sample_dir, encode=True)


@pytest.fixture
def home(tokens_home: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tokens_home, tmp_path / "home"))


def metric_steps(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def test_both_stages_train_log_and_leave_a_model(home: Path, tmp_path: Path) -> None:
    settings = lake_settings(home)
    run = load_config("debug", ["train.sample_every=4", "train.text_len=24"])  # fewer text slots than the lake's 64
    for stage in (1, 2):
        result = train_stage(settings, stage, run, progress=False)
        assert result.trained and result.complete and result.steps == 8 and result.eval_split == "val"
        assert 0 < result.val_bits_per_token < 10 and result.tokens_per_s > 0 and 0 < result.mfu < 1

        tracking.use(settings.mlflow_tracking_uri, settings.home)
        client = MlflowClient()
        info = client.get_run(result.run_id)
        assert info.data.tags["cogflow.kind"] == f"stage{stage}" and info.data.tags["cogflow.complete"] == "true"
        assert info.data.params["model.layers"] == "2" and info.data.params["stage"] == str(stage)
        (data,) = info.inputs.dataset_inputs  # lineage: the lake's token files of the stage, by their digest
        assert data.dataset.digest == info.data.tags["cogflow.data_hash"]
        assert data.dataset.name == f"tokens v{info.data.tags['cogflow.frame_tokenizer_version']} stage {stage}"
        assert "/tokens/v" in data.dataset.source and {t.key for t in data.tags} >= {
            "token_files",
            "mlflow.data.context",
        }
        for key in (
            "train/loss",
            "train/lr",
            "train/tokens_per_s",
            "train/mfu",
            "train/memory_gb",
            "val/bits_per_token",
        ):
            assert key in info.data.metrics, key
        assert [s for s, _ in metric_steps(result.run_id, "train/loss")] == [2, 4, 6, 8]
        lrs = [v for _, v in metric_steps(result.run_id, "train/lr")]
        assert lrs[0] > lrs[-1]  # warmed up, then decaying
        artifacts = {a.path for a in client.list_artifacts(result.run_id, "samples")}
        assert {"samples/step-0000004.gif", "samples/step-0000008.gif"} <= artifacts

        path = tracking.download(f"runs:/{result.run_id}/model/stage{stage}.pt", tmp_path / f"s{stage}")
        model, saved = load_model(str(path))
        assert (
            saved["stage"] == stage
            and saved["frame_tokenizer_version"] == "1"
            and saved["text_tokenizer_version"] == "1"
        )
        assert model.spec.layout.stage == stage and model.spec.window == (0 if stage == 1 else 5)
        assert model.spec.layout.text_len == 24 and model.spec.layout.length == 24 + 1 + 5 * 100

        again = train_stage(settings, stage, run, progress=False)
        assert not again.trained and again.run_id == result.run_id  # the same training is not done twice


def test_no_tokens_is_a_clear_error(tmp_path: Path) -> None:
    settings = lake_settings(tmp_path / "empty")
    with pytest.raises(ValueError, match="cogflow tokenize"):
        train_stage(settings, 1, load_config("debug"), progress=False)


def test_streams_deal_one_global_order_over_ranks_and_resume_at_a_step(tokens_home: Path) -> None:
    settings = lake_settings(tokens_home)
    store = Storage.at(settings.lake)
    parts = lake.token_parts(store, "1", 2)
    assert len(parts) >= 2
    train_rows = lake.read_tokens(store, "1", ["split"], 2)["split"].to_pylist().count("train")

    def clips(batch_size: int, rank: int = 0, world: int = 1, start: int = 0, accum: int = 1, n: int = 12) -> list:
        stream = TokenStream(settings.lake, parts, Layout(grid=10), batch_size, 0, rank, world, start, accum)
        out = []
        for batch, first in stream:
            out += [(first + i, clip) for i, clip in enumerate(batch["clip_id"])]
            if len(out) == n:
                return out

    # one process taking 2 rows a step, two taking 1 each, one taking 1 twice (accumulation): the same rows a step
    steps = train_rows  # an epoch and a half of 2-row steps
    whole = [c for _, c in clips(2, n=2 * steps)]
    ranks = [clips(1, rank, 2, n=steps) for rank in (0, 1)]
    assert all(first == rank for rank in (0, 1) for first, _ in ranks[rank])  # each rank's place in the batch
    assert [c for pair in zip(*ranks, strict=True) for _, c in pair] == whole
    assert [c for _, c in clips(1, accum=2, n=2 * steps)] == whole
    assert len(set(whole[:train_rows])) == train_rows  # an epoch visits every train row once
    # starting at a step gives what came from that step on
    assert [c for _, c in clips(2, start=5, n=14)] == whole[10:24]
    assert [c for _, c in clips(1, 1, 2, start=5, n=7)] == [c for _, c in ranks[1][5:12]]


def test_kill_and_resume_reproduces_the_loss_sequence(home: Path, tmp_path: Path) -> None:
    """A training SIGKILLed mid-way, then started again, logs the same loss at every step as one never killed, and
    ends with the same weights (two data-loader workers, so their turns must survive the resume too)."""
    overrides = [
        "train.steps=12",
        "train.log_every=1",
        "train.checkpoint_every=3",
        "train.val_every=100",
        "train.loader_workers=2",
    ]
    reference_home = Path(shutil.copytree(home, tmp_path / "reference"))
    reference = train_stage(lake_settings(reference_home), 1, load_config("debug", overrides), progress=False)
    tracking.use(lake_settings(reference_home).mlflow_tracking_uri, str(reference_home))
    expected = metric_steps(reference.run_id, "train/loss")
    expected_state = load_model(str(tracking.download(f"runs:/{reference.run_id}/model/stage1.pt", tmp_path / "a")))[
        0
    ].state_dict()

    command = [
        sys.executable,
        "-m",
        "cogflow.model.cogvideo.train",
        "--stage",
        "1",
        "--config",
        "debug",
        *(a for o in overrides for a in ("--set", o)),
    ]
    env = {**os.environ, "COGFLOW_HOME": str(home), "COGFLOW_LAKE": str(home / "lake"), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in child.stdout:  # kill it once step 7 is done: after the checkpoint of step 6, before that of step 9
        if line.startswith("stage 1 7/12"):
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    settings = lake_settings(home)
    resumed = train_stage(settings, 1, load_config("debug", overrides), resume=True, progress=False)
    assert resumed.complete
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    logged = metric_steps(resumed.run_id, "train/loss")
    assert sorted({s for s, _ in logged}) == list(range(1, 13))
    assert [s for s, _ in logged].count(7) == 2  # step 7 was logged before the kill, and again after the resume
    assert dict(logged) == dict(expected) and all(v == dict(expected)[s] for s, v in logged)
    state = load_model(str(tracking.download(f"runs:/{resumed.run_id}/model/stage1.pt", tmp_path / "b")))[
        0
    ].state_dict()
    assert all(torch.equal(state[k], expected_state[k]) for k in state)


def test_resume_without_a_checkpoint_is_an_error(home: Path) -> None:
    with pytest.raises(ValueError, match="no checkpoint"):
        train_stage(lake_settings(home), 1, load_config("debug"), resume=True, progress=False)


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_process_torchrun_step_matches_one_process(tmp_path: Path, sharding: str) -> None:
    flags = ["--fsdp"] if sharding == "fsdp" else []
    script = str(ROOT / "tests" / "model" / "one_step.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, script, str(tmp_path / "one.pt")], check=True, cwd=ROOT, env=env, timeout=120)
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            script,
            str(tmp_path / "two.pt"),
            *flags,
        ],
        cwd=ROOT,
        env=env,
        timeout=180,
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, (two.stdout + two.stderr)[-4000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["gradient"].keys() == two["gradient"].keys()
    for name, gradient in one["gradient"].items():
        assert gradient.abs().max() > 0, name
        torch.testing.assert_close(two["gradient"][name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    assert abs(one["loss"] - two["loss"]) < 0.5  # each rank reports its half's loss; the step above is the test


def test_two_nodes_train_stage_1_together_into_one_mlflow_run(home: Path) -> None:
    """Two "machines" on 127.0.0.1, one process each (gloo), meeting by torchrun's c10d rendezvous, as
    `cogflow train --nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT` starts them; each launcher gets the result."""
    settings = lake_settings(home)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    args = ["--stage", "1", "--config", "debug", "--lake", settings.lake, "--quiet"]
    results: dict[int, object] = {}

    def node(rank: int) -> None:
        try:
            nodes = Nodes(2, rank, endpoint, job="two-node-test")
            results[rank] = run_module("cogflow.model.cogvideo.train", args, settings, log=lambda _: None, nodes=nodes)
        except Exception as exc:  # reported below, with the other node's outcome
            results[rank] = exc

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(isinstance(r, dict) for r in results.values()) and len(results) == 2, results
    assert results[0] == results[1] and results[0]["trained"] and results[0]["complete"]
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    runs = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name(tracking.EXPERIMENT).experiment_id], "tags.`cogflow.kind` = 'stage1'"
    )
    assert [r.info.run_id for r in runs] == [results[0]["run_id"]]  # one run for the job, not one per node
    assert runs[0].data.params["world_size"] == "2"


def test_video_model_from_a_text_to_image_run(home: Path) -> None:
    settings = lake_settings(home)
    image = train_stage(settings, 1, load_config("debug", ["train.frames=1"]), progress=False)
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    assert MlflowClient().get_run(image.run_id).data.tags["cogflow.kind"] == "t2i"
    video = train_stage(settings, 1, load_config("debug", [f'train.spatial_from="{image.run_id}"']), progress=False)
    with_image = load_model(str(tracking.download(f"runs:/{image.run_id}/model/t2i.pt", home / "i")))[0]
    with_video = load_model(str(tracking.download(f"runs:/{video.run_id}/model/stage1.pt", home / "v")))[0]
    names = with_video.spatial_names()
    image_state, video_state = with_image.state_dict(), with_video.state_dict()
    assert all(torch.equal(video_state[n], image_state[n]) for n in names)  # frozen through training
    assert not torch.equal(
        video_state["blocks.0.attention.temporal_qkv.weight"], image_state["blocks.0.attention.spatial_qkv.weight"]
    )


def test_t2i_steps_trains_a_text_to_image_run_first_and_starts_stage1_from_it(home: Path) -> None:
    settings = lake_settings(home)
    overrides = ["train.t2i_steps=3", "train.freeze_spatial=false"]
    video = train_stage(settings, 1, load_config("debug", overrides), progress=False)
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    image_run = MlflowClient().get_run(video.run_id).data.params["train.spatial_from"]
    image = MlflowClient().get_run(image_run).data
    assert image.tags["cogflow.kind"] == "t2i" and image.params["train.steps"] == "3"
    assert image.params["train.frames"] == "1" and image.tags["cogflow.complete"] == "true"
    again = train_stage(settings, 1, load_config("debug", overrides), progress=False)  # both complete: nothing trains
    assert not again.trained and again.run_id == video.run_id


def test_stage2_starts_from_a_stage1_run(home: Path, monkeypatch) -> None:
    """train.init_from: stage 2's step 0 holds stage 1's trained weights (the pipeline's default for stage 2)."""
    settings = lake_settings(home)
    first = train_stage(settings, 1, load_config("debug"), progress=False)
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    stage1 = load_model(str(tracking.download(f"runs:/{first.run_id}/model/stage1.pt", home / "s1")))[0].state_dict()
    started = {}

    def steps(model, *args, **kwargs):  # the weights the first optimizer step sees
        started.setdefault("state", {k: v.clone() for k, v in model.state_dict().items()})
        return optimizer_step(model, *args, **kwargs)

    from cogflow.model.cogvideo import train as train_module
    from cogflow.model.cogvideo.steps import optimizer_step

    monkeypatch.setattr(train_module, "optimizer_step", steps)
    second = train_stage(settings, 2, load_config("debug", [f'train.init_from="{first.run_id}"']), progress=False)
    assert second.trained and second.complete
    assert all(torch.equal(started["state"][k], stage1[k]) for k in stage1)
    with pytest.raises(ValueError, match="does not fit this model"):
        train_stage(
            settings, 2, load_config("debug", [f'train.init_from="{first.run_id}"', "model.hidden=48"]), progress=False
        )


def test_sigterm_checkpoints_and_exits_cleanly_then_resumes(home: Path) -> None:
    overrides = ["train.steps=12", "train.log_every=1", "train.checkpoint_every=100", "train.val_every=100"]
    command = [
        sys.executable,
        "-m",
        "cogflow.model.cogvideo.train",
        "--stage",
        "2",
        "--config",
        "debug",
        *(a for o in overrides for a in ("--set", o)),
    ]
    env = {**os.environ, "COGFLOW_HOME": str(home), "COGFLOW_LAKE": str(home / "lake"), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in child.stdout:
        lines.append(line)
        if line.startswith("stage 2 3/12"):
            child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 0, "".join(lines)
    stopped = json.loads(lines[-1])
    assert not stopped["complete"] and 3 <= stopped["steps"] < 12 and "run again to resume" in stopped["note"]

    resumed = train_stage(lake_settings(home), 2, load_config("debug", overrides), resume=True, progress=False)
    assert resumed.complete and resumed.run_id == stopped["run_id"] and resumed.steps == 12
    tracking.use(lake_settings(home).mlflow_tracking_uri, str(home))
    assert [s for s, _ in metric_steps(resumed.run_id, "train/loss")] == list(
        range(1, 13)
    )  # nothing lost, nothing twice


def test_lake_and_checkpoints_on_s3(tokens_home: Path, tmp_path: Path, s3, monkeypatch) -> None:
    """Token shards read from S3, checkpoints written there, resumed from there; nothing lands in the home."""
    upload_tree(s3, s3.bucket, tokens_home / "lake", "lake")
    home = Path(shutil.copytree(tokens_home, tmp_path / "home", ignore=shutil.ignore_patterns("lake", "checkpoints")))
    monkeypatch.setenv("COGFLOW_CHECKPOINTS", f"s3://{s3.bucket}/checkpoints")
    settings = lake_settings(home).replace(lake=f"s3://{s3.bucket}/lake")
    first = train_stage(settings, 1, load_config("debug"), until_step=4, progress=False)
    assert not first.complete
    saved = s3.list_objects_v2(Bucket=s3.bucket, Prefix="checkpoints/stage1/")["Contents"]
    assert sorted(o["Key"].split("/", 3)[-1] for o in saved) == [
        "latest",
        "step-000000004/.metadata",  # DCP's index of the shards
        "step-000000004/__0_0.distcp",  # rank 0's shards
        "step-000000004/state.pt",
    ]
    done = train_stage(settings, 1, load_config("debug"), resume=True, progress=False)
    assert done.complete and done.run_id == first.run_id
    assert not (home / "checkpoints").exists() and not (home / "lake").exists()


def test_sharded_checkpoints_resume_on_another_number_of_ranks_with_the_same_losses(home: Path, tmp_path: Path) -> None:
    """Global batch 4 throughout: 2 FSDP ranks of 2 rows train to step 4 and write their own shards (DCP, in the
    background); one process of 4 rows resumes (the shards resharded into a plain model) and finishes. The loss at
    every step is the uninterrupted one-process run's. (The whole model gathered from FSDP shards at the end:
    test_two_process_torchrun_step_matches_one_process[fsdp].)"""
    overrides = ["train.log_every=1", "train.checkpoint_every=2"]
    reference_home = Path(shutil.copytree(home, tmp_path / "reference"))
    reference = train_stage(lake_settings(reference_home), 1, load_config("debug", overrides), progress=False)
    tracking.use(lake_settings(reference_home).mlflow_tracking_uri, str(reference_home))
    expected = dict(metric_steps(reference.run_id, "train/loss"))

    command = [
        *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "cogflow.model.cogvideo.train", "--stage", "1", "--config", "debug", "--quiet"),
        # asynchronous checkpoints too: how a training is spread and saved does not change what it is
        *(
            a
            for o in [*overrides, "train.fsdp=true", "train.batch_size=2", "train.async_checkpoint=true"]
            for a in ("--set", o)
        ),
    ]
    env = {**os.environ, "COGFLOW_HOME": str(home), "COGFLOW_LAKE": str(home / "lake")}
    env.pop("MLFLOW_TRACKING_URI", None)

    subprocess.run(  # 2 ranks to step 4, then stop
        [sys.executable, *command, "--until-step", "4", "--result-file", str(tmp_path / "a.json")],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = json.loads((tmp_path / "a.json").read_text())
    settings = lake_settings(home)
    shards = Storage.at(home / "checkpoints").list_files("stage1", ".distcp")
    assert [s.rsplit("/", 2)[-2:] for s in shards] == [["step-000000004", f"__{r}_0.distcp"] for r in (0, 1)]
    done = train_stage(settings, 1, load_config("debug", overrides), resume=True, progress=False)
    assert (first["steps"], first["complete"], done.steps, done.complete) == (4, False, 8, True)
    assert first["run_id"] == done.run_id

    tracking.use(settings.mlflow_tracking_uri, str(home))
    logged = metric_steps(done.run_id, "train/loss")
    assert sorted({s for s, _ in logged}) == list(range(1, 9))
    for s, value in logged:
        assert value == pytest.approx(expected[s], rel=1e-4), (s, value, expected[s])


@pytest.mark.parametrize("length", [1, 4, 9, 12, 15])
def test_fit_text_gives_the_rows_generation_would_encode(length: int) -> None:
    # Rows left-padded to the lake's width, fitted to a model's text slots, equal the same captions encoded at that
    # length directly (TextTokenizer.encode_batch): pads on the left, a long caption keeps its beginning.
    width, pad = 12, 0

    def encode(captions: list[list[int]], slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = torch.full((len(captions), slots), pad), torch.zeros(len(captions), slots, dtype=torch.bool)
        for row, pieces in enumerate(captions):
            pieces = pieces[:slots]
            if pieces:
                ids[row, slots - len(pieces) :], mask[row, slots - len(pieces) :] = torch.tensor(pieces), True
        return ids, mask

    captions = [list(range(10, 10 + n)) for n in range(width + 1)]
    fitted = fit_text(*encode(captions, width), length)
    expected = encode(captions, length)
    assert torch.equal(fitted[0], expected[0]) and torch.equal(fitted[1], expected[1])
