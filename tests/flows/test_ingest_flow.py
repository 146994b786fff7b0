"""The ingest flow and the `cogflow` command, on the Prefect test harness."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from helpers import copy_sample, make_bad_corpus, write_csv
from prefect.client.orchestration import get_client

from cogflow.flows.cli import main
from cogflow.flows.ingest import probe_batches, run_ingest
from cogflow.pipeline import lake
from cogflow.pipeline.settings import load_settings
from cogflow.pipeline.storage import Storage


def _artifact(key: str):
    """The newest artifact under `key` (other flow tests on the same server publish under the same keys)."""
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
        from prefect.client.schemas.sorting import ArtifactSort

        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    return found[0] if found else None


def test_flow_probes_in_parallel_and_publishes_its_summary(tmp_path, sample_dir):
    rows, expected = make_bad_corpus(tmp_path / "data", sample_dir)
    manifest = write_csv(tmp_path / "data" / "manifest.csv", rows)
    settings = load_settings(home=str(tmp_path / "home")).replace(probe_workers=3)

    summary = run_ingest(settings, manifest=str(manifest), lake=settings.lake)
    assert summary.outcomes == expected
    artifact = _artifact("ingest-summary")
    assert artifact is not None and artifact.type == "table"
    assert "resolution_over_limit" in str(artifact.data)

    again = run_ingest(settings, manifest=str(manifest), lake=settings.lake)
    assert again.new_rows == {"videos": 0, "shots": 0, "sources": 0, "captions": 0, "rejects": 0}


def test_cli_sample_data_ingest_and_status(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    assert main(["sample-data", str(tmp_path / "sample"), "--videos", "3", "--seed", "3"]) == 0
    manifest = tmp_path / "sample" / "manifest.csv"
    assert manifest.exists() and len(list((tmp_path / "sample" / "videos").iterdir())) == 3

    assert main(["ingest", str(manifest), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "new videos" in out and "data checks passed" in out

    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "videos" in status and "captions" in status
    lake = tmp_path / "home" / "lake"
    assert sum(pq.read_metadata(p).num_rows for p in (lake / "captions").glob("*.parquet")) == 3

    other = tmp_path / "other-lake"
    assert main(["ingest", str(manifest), "--lake", str(other)]) == 0
    assert main(["status", "--lake", str(other)]) == 0
    status = capsys.readouterr().out.split(f"lake {other}")[1]
    assert [line.split() for line in status.strip().splitlines()] == [
        ["videos", "3", "rows"],
        ["shots", "3", "rows"],  # one each: the sample world has no cuts
        ["sources", "3", "rows"],
        ["captions", "3", "rows"],
        ["rejects", "0", "rows"],
        ["clip_plan", "0", "rows"],
        ["clips", "0", "rows"],
        ["clip_rejects", "0", "rows"],
        ["clip_shards", "0", "rows"],
        ["tokens", "0", "rows"],
        ["token_shards", "0", "rows"],
    ]


def test_cli_reports_usage_errors_without_a_traceback(tmp_path, capsys, sample_dir):
    copy_sample(sample_dir, tmp_path)
    manifest = write_csv(tmp_path / "m.csv", [{"path": "videos/sample_0000.mp4", "text": "a caption"}])
    assert main(["ingest", str(manifest), "--lake", str(tmp_path / "lake")]) == 2
    assert "--video-col" in capsys.readouterr().err
    assert (
        main(
            ["ingest", str(manifest), "--lake", str(tmp_path / "lake"), "--video-col", "path", "--caption-col", "text"]
        )
        == 0
    )
    assert not Path(tmp_path / "lake" / "rejects").exists()


def test_probes_are_batched_so_task_runs_grow_with_the_data_over_the_batch_size():
    sources = [(f"s3://b/{i}.mp4", f"s3://b/{i}.mp4") for i in range(300)]
    batches = probe_batches(sources, workers=4)
    assert [len(b) for b in batches] == [75] * 4 and sum(batches, []) == sources  # enough to keep 4 workers busy
    assert len(probe_batches(sources * 100, workers=4)) == 118  # 30,000 sources: batches of at most 256
    assert [len(b) for b in probe_batches(sources[:3], workers=8)] == [1, 1, 1]
    assert probe_batches([], workers=4) == []


def test_the_flow_on_a_local_dask_cluster_writes_the_lake_a_plain_ingest_writes(tmp_path, sample_dir):
    """The probes (in batches) on a local Dask cluster's worker processes; the lake equals a plain run's, row for row."""
    rows, _ = make_bad_corpus(tmp_path / "data", sample_dir)
    manifest = write_csv(tmp_path / "data" / "manifest.csv", rows)
    tables = {}
    for runner in ("dask", "threads"):
        settings = load_settings(home=str(tmp_path / runner)).replace(probe_workers=2)
        run_ingest(settings, task_runner=runner, manifest=str(manifest), lake=settings.lake)
        store = Storage.at(settings.lake)
        tables[runner] = {
            name: _rows(lake.read_table(store, name)) for name in ("videos", "shots", "sources", "captions", "rejects")
        }
    assert tables["dask"] == tables["threads"] and tables["dask"]["videos"]


def _rows(table) -> list[str]:
    """A table's rows without the times they were written, in a stable order."""
    return sorted(map(repr, table.drop_columns([c for c in table.column_names if c.endswith("_at")]).to_pylist()))
