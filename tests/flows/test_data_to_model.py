"""The whole data-to-model flow on a tiny config under the Prefect test harness, against a real MLflow tracking
server whose artifacts go to a moto S3 server: sample videos in, three registered models with `champion` out; a
re-run that finds everything done; the champion gate both ways; the bundled model loaded from the registry in a
fresh process and by `cogflow generate --model`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import SAMPLE_VAL_PERCENT, copy_sample, write_csv
from prefect.exceptions import ParameterTypeError

from cogflow.flows.cli import main
from cogflow.flows.data_to_model import data_to_model_flow
from cogflow.model import tracking
from cogflow.model.serving import registry
from cogflow.pipeline import video
from cogflow.pipeline.settings import load_settings

TINY = ["--config", "debug", "--tokenizer-config", "debug", "--vocab-size", "400", "--prompts", "3"]
# The champion trains longer than the debug config's 8 steps, so that a 2-step stage is clearly worse on val.
CHAMPION = ["--stage1-set", "train.steps=24", "--stage2-set", "train.steps=24"]


def _versions(name: str) -> dict[str, dict[str, str]]:
    from mlflow.tracking import MlflowClient

    return {v.version: v.tags for v in MlflowClient().search_model_versions(f"name = '{name}'")}


def _alias(name: str, alias: str) -> str:
    version = registry.alias_version(name, alias)
    return None if version is None else str(version.version)


def test_parameters_are_validated_before_anything_runs():
    with pytest.raises(ParameterTypeError, match="nproc"):
        data_to_model_flow(training={"nproc": 0})
    with pytest.raises(ParameterTypeError, match="min_caption_accuracy"):
        data_to_model_flow(evaluation={"min_caption_accuracy": 2})


def test_data_to_model_registers_a_champion_and_gates_worse_models(
    tmp_path, capsys, monkeypatch, sample_dir, s3, mlflow_server
):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("COGFLOW_VAL_PERCENT", str(SAMPLE_VAL_PERCENT))  # two of the four sample videos are val
    rows = copy_sample(sample_dir, tmp_path / "data")
    manifest = write_csv(tmp_path / "data" / "manifest.csv", rows)  # with the generator's ground truth columns

    assert main(["pipeline", str(manifest), *TINY, *CHAMPION, "--min-caption-accuracy", "0"]) == 0
    out = capsys.readouterr().out
    assert "cogflow-t2v v1 registered" in out and "gate passed: champion" in out and "no champion yet" in out
    assert "caption following on 3 videos" in out and "chance 17%" in out  # colour: 1 of 6
    settings = load_settings()
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    for name in (*registry.STAGES.values(), registry.TEXT_TO_VIDEO):
        assert _alias(name, "candidate") == _alias(name, "champion") == "1"
    tags = _versions(registry.TEXT_TO_VIDEO)["1"]
    assert tags["cogflow.gate"] == "passed" and float(tags["cogflow.caption_mean_chance"]) == pytest.approx(
        0.1944, abs=1e-3
    )
    runs = tags["cogflow.stage1_run"], tags["cogflow.stage2_run"]
    evaluation = next((tmp_path / "home" / "evaluations").iterdir())
    prompts = json.loads((evaluation / "prompts.json").read_text())
    assert (
        len(prompts) == 3 and all(p["truth"] for p in prompts) and {p["source"] for p in prompts} <= {"val", "held-out"}
    )
    assert (evaluation / "sheet.png").stat().st_size > 0 and len(list((evaluation / "videos").glob("*.mp4"))) == 3
    tables = (evaluation / "confusion.md").read_text(encoding="utf-8").splitlines()  # asked x read, per field
    assert "| shape: asked, read → | circle | square | triangle | star | none |" in tables
    assert sum(line.startswith("| circle |") for line in tables) == 1 and tables[-1].startswith("| ")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
        for o in page.get("Contents", [])
    ]
    for artifact in (
        "stage1.pt",
        "stage2.pt",
        "text.model",
        "frame_tokenizer.pt",
        "info.json",
        "sheet.png",
        "confusion.md",
    ):
        assert any(k.endswith(artifact) for k in keys), artifact

    # The same pipeline again: every step finds its work done, nothing new is registered.
    assert main(["pipeline", str(manifest), *TINY, *CHAMPION, "--min-caption-accuracy", "0"]) == 0
    out = capsys.readouterr().out
    assert "0 new captions" in out and "(found: " in out and "cogflow-t2v v1 found" in out
    assert list(_versions(registry.TEXT_TO_VIDEO)) == ["1"]

    # A worse stage 1 (2 steps) against the champion: candidate, not champion, and the tags say why.
    assert (
        main(["train", "--stage", "1", "--config", "debug", "--set", "train.steps=2", "--set", "train.warmup_steps=1"])
        == 0
    )
    worse = tracking.latest_run({"cogflow.kind": "stage1", "cogflow.complete": "true"})
    assert worse != runs[0]
    capsys.readouterr()
    assert (
        main(["register", "--stage1", worse, "--stage2", runs[1], "--prompts", "3", "--min-caption-accuracy", "0"]) == 0
    )
    out = capsys.readouterr().out
    assert "gate failed: stays candidate" in out and "champion: cogflow-t2v v1" in out
    for name in (*registry.STAGES.values(), registry.TEXT_TO_VIDEO):
        assert (_alias(name, "candidate"), _alias(name, "champion")) == ("2", "1")
    tags = _versions(registry.TEXT_TO_VIDEO)["2"]
    assert tags["cogflow.gate"] == "failed" and "stage 1 val bits" in tags["cogflow.gate.reasons"]
    assert " > champion's " in tags["cogflow.gate.reasons"] and tags["cogflow.gate.champion_before"] == "1"

    # (The gate's caption-following criterion, each way: tests/model/test_gate.py.)

    # The champion, from the registry, in a fresh process that has the tracking server and nothing else of ours:
    # `python -S` reads no .pth file, so the editable cogflow install is not importable (the libraries are: their
    # folder is put on the path by hand); the version's own code is.
    script = (
        "import importlib.util, sys\n"
        f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
        "assert importlib.util.find_spec('cogflow') is None, 'cogflow is importable without the model'\n"
        "import mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model('models:/cogflow-t2v@champion')\n"
        "frames = model.predict(pd.DataFrame({'caption': ['一个红色的圆形在米色背景上从左向右移动。']}), params={'seed': 3})\n"
        "import cogflow\n"
        "print(frames.shape, frames.dtype, cogflow.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGFLOW_")}
    env.update(MLFLOW_TRACKING_URI=mlflow_server, HOME=str(tmp_path / "elsewhere"))
    done = subprocess.run(
        [sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "/code/cogflow/__init__.py" in done.stdout, done.stdout
    champion_files = Path(
        mlflow.artifacts.download_artifacts("models:/cogflow-t2v@champion", dst_path=str(tmp_path / "t2v"))
    )
    pinned = (champion_files / "requirements.txt").read_text().split()
    assert pinned == registry.requirements() and all("==" in line for line in pinned) and "prefect" not in str(pinned)
    assert "(1, 33, 160, 160, 3) uint8" in done.stdout

    # Each registered stage samples codes from its own input example (a real val token row); stage 2 keeps the
    # given frames (times 0, 2, 4) and fills times 1 and 3.
    from mlflow.models import Model

    for stage in (1, 2):
        folder = mlflow.artifacts.download_artifacts(
            f"models:/cogflow-stage{stage}@champion", dst_path=str(tmp_path / f"s{stage}")
        )
        example = Model.load(folder).load_input_example(folder)
        codes = mlflow.pyfunc.load_model(folder).predict(example, params={"seed": 1})
        assert codes.shape == (1, 5, 100) and codes.min() >= 0 and codes.max() < 64
        if stage == 2:
            given = np.array(example["given_codes"][0]).reshape(3, 100)
            assert (codes[0, 0::2] == given).all()

    out_file = tmp_path / "champion.mp4"
    assert (
        main(
            [
                "generate",
                "一个红色的圆形在米色背景上从左向右移动。",
                "-o",
                str(out_file),
                "--model",
                "models:/cogflow-t2v@champion",
            ]
        )
        == 0
    )
    probe = video.probe(out_file, max_width=4096, max_height=4096, max_pixels=4096 * 4096)
    assert (probe.width, probe.height, probe.frame_count) == (160, 160, 33)
    assert main(["generate", "x", "-o", str(out_file), "--model", "models:/cogflow-t2v@nobody"]) == 2
    assert "cannot load models:/cogflow-t2v@nobody" in capsys.readouterr().err
