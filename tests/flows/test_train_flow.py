"""`cogflow train` and `cogflow generate` on the Prefect test harness: from a tokenized lake to a trained pair of
stages (stage 1 under a real 2-process torchrun) to a 33-frame video, and clear errors before there is anything
to train on."""

from __future__ import annotations

from helpers import SAMPLE_VAL_PERCENT, copy_sample, write_csv

from cogflow.flows.cli import main
from cogflow.model import tracking
from cogflow.pipeline import video
from cogflow.pipeline.settings import load_settings


def test_train_both_stages_then_generate(tmp_path, capsys, monkeypatch, sample_dir):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COGFLOW_VAL_PERCENT", str(SAMPLE_VAL_PERCENT))
    monkeypatch.setenv("COGFLOW_SHARD_VIDEOS", "1")  # a token file per video: both ranks get files of their own
    assert main(["train", "--stage", "1", "--config", "debug"]) == 2
    assert "run `cogflow tokenize` first" in capsys.readouterr().err
    assert main(["generate", "a red ball", "-o", str(tmp_path / "none.mp4")]) == 2
    assert "cogflow train --stage 1" in capsys.readouterr().err

    rows = copy_sample(sample_dir, tmp_path / "data")
    manifest = write_csv(tmp_path / "data" / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    assert main(["ingest", str(manifest)]) == 0 and main(["split"]) == 0
    assert main(["tokenize", "--config", "debug", "--vocab-size", "500"]) == 0
    capsys.readouterr()
    assert main(["train", "--stage", "1", "--config", "debug", "--set", "train.batch_size=2", "--nproc", "2"]) == 0
    out = capsys.readouterr().out
    assert "train stage 1" in out and "val bits per token" in out and "tokens/s" in out
    assert main(["train", "--stage", "2", "--config", "debug", "--set", "train.stepz=1"]) == 2
    assert "unknown key stepz" in capsys.readouterr().err
    assert main(["train", "--stage", "2", "--config", "debug"]) == 0
    capsys.readouterr()

    settings = load_settings()
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    stage1 = tracking.latest_run({"cogflow.kind": "stage1", "cogflow.complete": "true"})
    assert tracking.run_tags(stage1)["cogflow.stage"] == "1"
    assert main(["status"]) == 0
    assert f"stage 1  MLflow run {stage1}  val bits per token" in capsys.readouterr().out

    out_file = tmp_path / "beach.mp4"
    assert (
        main(
            ["generate", "一个下午在海滩上奔跑的女人", "-o", str(out_file), "--frames-out", str(tmp_path / "sheet.png")]
        )
        == 0
    )
    probe = video.probe(out_file, max_width=4096, max_height=4096, max_pixels=4096 * 4096)
    assert (probe.width, probe.height) == (160, 160) and probe.frame_count == 33
    assert (tmp_path / "sheet.png").stat().st_size > 0
