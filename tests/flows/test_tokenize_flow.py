"""`cogflow tokenize` on the Prefect test harness: both tokenizers trained and registered, every clip encoded,
a re-run that finds everything done, and clear errors."""

from __future__ import annotations

import mlflow
from helpers import copy_sample, write_csv

from flows.cli import main
from pipeline import lake
from pipeline.storage import Storage


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
    monkeypatch.setenv("COGFLOW_VAL_PERCENT", "60")
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
    assert "cogflow-text-tokenizer v1 (trained)" in out and "cogflow-frame-tokenizer v1 (trained, 12 steps): val PSNR" in out
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


def test_frames_with_two_processes_through_the_flow(tmp_path, capsys, monkeypatch, sample_dir):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
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
