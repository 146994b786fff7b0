"""A real split lake shared by the model tests (read only: tests that write use homes of their own)."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import SAMPLE_VAL_PERCENT, copy_sample, write_csv

from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.settings import load_settings
from cogflow.pipeline.split import split


@pytest.fixture(scope="session")
def clip_lake(tmp_path_factory, sample_dir) -> str:
    """The sample videos ingested (two of the four in `val`: their video ids hash to 4, 8, 26 and 98 of 100) and
    split into clips; the lake's URI."""
    root = tmp_path_factory.mktemp("frames")
    rows = copy_sample(sample_dir, root / "data")
    manifest = write_csv(root / "data" / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    settings = load_settings(home=str(root / "home"))
    settings = dataclasses.replace(
        settings, val_percent=SAMPLE_VAL_PERCENT, split=dataclasses.replace(settings.split, workers=2)
    )
    ingest(str(manifest), settings)
    split(settings)
    return settings.lake
