"""The dataset report (`cogflow report`): one self-contained HTML file drawn from a real lake (sample videos ingested
and split with the real functions), an empty lake, a lake written before the scan's columns, and the command."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import copy_sample, write_csv

from cogflow.flows.cli import main
from cogflow.pipeline import lake
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.report import build_report_html, read_lake, write_report
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.split import split
from cogflow.pipeline.storage import Storage

CHART_SECTIONS = ["Videos", "Captions", "Rejects", "Motion", "Shots", "Clips", "Letterbox"]


@pytest.fixture(scope="module")
def report_lake(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Settings:
    """The four sample videos ingested and split, with two rows ingest turns down (a missing file, no caption)."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    rows: list[dict[str, object]] = [
        {"video": r["video"], "caption": r["caption"]} for r in copy_sample(sample_dir, data)
    ]
    rows += [
        {"video": "videos/gone.mp4", "caption": "a file that is not there"},
        {"video": rows[0]["video"], "caption": ""},
    ]
    settings = load_settings(home=str(root / "home"))
    settings = dataclasses.replace(settings, split=dataclasses.replace(settings.split, workers=1))
    ingest(str(write_csv(data / "manifest.csv", rows)), settings)
    split(settings)
    return settings


def sections(page: str) -> dict[str, str]:
    """Each section's HTML by its heading."""
    found = re.findall(r"<section><h2>(.*?)</h2>(.*?)</section>", page, flags=re.S)
    return dict(found)


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.count("<html") == 1 and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page


def test_the_report_of_a_split_lake_is_one_self_contained_page_with_every_chart(report_lake, tmp_path) -> None:
    store = Storage.at(report_lake.lake)
    summary = write_report(store, tmp_path / "out" / "report.html", seed=1)
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    found = sections(page)
    for name in CHART_SECTIONS:
        assert "<svg" in found[name], name
    videos = lake.read_table(store, "videos", ["video_id"]).num_rows
    clips = lake.read_clips(store, ["clip_id"]).num_rows
    assert (summary.videos, summary.clips) == (videos, clips) and videos == 4 and clips > 0
    # the reasons of both reject tables, each on its bar
    reasons = lake.read_table(store, "rejects", ["reason"])["reason"].to_pylist()
    clip_reasons = lake.read_table(store, "clip_rejects", ["reason"])["reason"].to_pylist()
    assert {"missing_file", "empty_caption"} <= set(reasons)
    for reason in {*reasons, *clip_reasons}:
        assert f">{reason}</text>" in found["Rejects"], reason
    assert summary.rejects == len(reasons) and summary.clip_rejects == len(clip_reasons)
    # the contact sheet: a PNG inline, of the clips preview draws
    sheet = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', found["Contact sheet"])
    assert sheet and len(sheet.group(1)) > 1000 and summary.sheet_clips == min(8, clips)
    # both languages of the sample captions and the clips' frame-rate tokens are named
    assert ">zh</text>" in found["Captions"] and ">en</text>" in found["Captions"]
    assert "&lt;fps_" in found["Clips"]
    assert "no data" not in found["Videos"] + found["Captions"] + found["Clips"]


def test_an_empty_lake_reports_no_data_in_every_section(tmp_path) -> None:
    page = build_report_html(read_lake(Storage.at(tmp_path / "empty")))
    assert_self_contained(page)
    found = sections(page)
    for name in [*CHART_SECTIONS, "Contact sheet"]:
        assert "no data" in found[name] and "<svg" not in found[name], name
    assert not (tmp_path / "empty").exists()  # reading made nothing


def test_a_lake_from_before_the_scan_says_no_data_where_its_columns_are_missing(report_lake, tmp_path) -> None:
    """Parts written without the scan's columns (videos) and clip motion read as NULL: those charts say "no data",
    the others draw."""
    old, store = Storage.at(tmp_path / "old"), Storage.at(report_lake.lake)
    scan = {"motion", "shot_count", "crop_left", "crop_top", "crop_right", "crop_bottom", "fingerprint"}
    for rel in [*store.list_files("videos", ".parquet"), *lake.clip_parts(store)]:
        table = pq.read_table(store.arrow(rel)[1], partitioning=None)
        sink = pa.BufferOutputStream()
        pq.write_table(table.select([c for c in table.column_names if c not in scan]), sink)
        old.put_bytes(rel, sink.getvalue().to_pybytes())
    for rel in store.list_files("clip_shards", ".parquet"):
        old.put_bytes(rel, store.read_bytes(rel))
    found = sections(build_report_html(read_lake(old)))
    assert "<svg" in found["Videos"] and "<svg" in found["Clips"] and "base64" in found["Contact sheet"]
    assert "<svg" not in found["Motion"] + found["Shots"] + found["Letterbox"]
    assert "no data" in found["Motion"] and "no data" in found["Shots"] and "no data" in found["Letterbox"]


def test_cogflow_report_writes_the_page_and_refuses_a_missing_lake_in_one_line(report_lake, tmp_path, capsys) -> None:
    out = tmp_path / "report.html"
    assert main(["--home", str(tmp_path / "home"), "report", "--lake", report_lake.lake, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "videos" in printed and str(out) in printed
    assert_self_contained(out.read_text(encoding="utf-8"))

    missing, home = tmp_path / "typo", str(tmp_path / "home")
    assert main(["--home", home, "report", "--lake", str(missing), "-o", str(tmp_path / "x.html")]) == 2
    assert capsys.readouterr().err == f"cogflow report: no lake at {missing}: nothing to report\n"
    assert not missing.exists() and not (tmp_path / "x.html").exists()
