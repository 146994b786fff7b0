"""Clearing a manifest's stale reject records rewrites their parts in place: a reader that listed the parts just
before (readers take no lock) still finds every one of them."""

from __future__ import annotations

import shutil

from tiny_lake import tiny_manifest, tiny_settings

from cogflow.pipeline import lake
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.storage import Storage


def test_clearing_stale_rejects_keeps_every_part_a_reader_listed(tmp_path):
    manifest = tiny_manifest(tmp_path / "data")
    manifest.write_text(manifest.read_text() + "later.mp4,arrives later\nnever.mp4,not there yet\n")
    settings = tiny_settings(tmp_path / "home")
    store = Storage.at(settings.lake)
    assert ingest(str(manifest), settings).outcomes == {"accepted": 2, "missing_file": 2}
    listed = store.list_files("rejects", ".parquet")  # as a concurrent reader lists them, before it reads them
    assert len(listed) == 1

    shutil.copyfile(tmp_path / "data" / "v" / "1.mp4", tmp_path / "data" / "later.mp4")  # one file arrives
    second = ingest(str(manifest), settings)
    assert second.cleared_rejects == 1
    kept = lake.read_table(store, "rejects", ["source_uri", "reason"], parts=listed).to_pylist()
    assert [(r["source_uri"].rsplit("/", 1)[-1], r["reason"]) for r in kept] == [("never.mp4", "missing_file")]
    assert store.list_files("rejects", ".parquet") == listed  # the same part, rewritten without the stale record

    shutil.copyfile(tmp_path / "data" / "v" / "0.mp4", tmp_path / "data" / "never.mp4")  # the other one too
    third = ingest(str(manifest), settings)
    assert third.cleared_rejects == 1 and third.new_rows["rejects"] == 0
    assert lake.read_table(store, "rejects", parts=listed).num_rows == 0  # left empty, never removed
    assert lake.read_table(store, "rejects").num_rows == 0
