"""Manifests are decoded strictly: the encoding is detected (UTF-8 with or without a byte order mark, UTF-16 by its
mark) or given (--encoding), and a file that does not decode is refused with one line naming the file, the line and
the encoding tried. Also: the reasons for local paths that cannot be probed, and rejects that a corrected re-run
clears."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import copy_sample, write_csv

from cogflow.flows.cli import main
from cogflow.pipeline import db, lake, manifest
from cogflow.pipeline.ingest import ingest, probe_source
from cogflow.pipeline.manifest import ManifestError, check_manifest, load_manifest
from cogflow.pipeline.settings import Limits, load_settings
from cogflow.pipeline.storage import Storage

CAPTIONS = ["一只红色的圆在黑色背景上向右移动", "绿色三角形，缓慢旋转", "a blue square 和 一只猫"]


def _csv_text(videos: list[str] | None = None) -> str:
    videos = videos or ["a.mp4", "b.mp4", "c.mp4"]
    return "video,caption\n" + "".join(f'{v},"{c}"\n' for v, c in zip(videos, CAPTIONS))


def _jsonl_text() -> str:
    rows = [{"video": f"{i}.mp4", "caption": caption} for i, caption in enumerate(CAPTIONS)]
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _captions(path: Path, **kwargs) -> list[str]:
    con = db.connect()
    load_manifest(con, str(path), workdir=path.parent, **kwargs)
    rows = con.execute("SELECT raw, load_reason FROM raw_rows ORDER BY row_number").fetchall()
    assert [reason for _raw, reason in rows] == [None] * len(rows)
    return [json.loads(raw)["caption"] for raw, _reason in rows]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_gb18030_is_refused_unless_named_and_then_read_exactly(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    path.write_bytes((_csv_text() if suffix == ".csv" else _jsonl_text()).encode("gb18030"))
    with pytest.raises(ManifestError) as refused:
        _captions(path)
    message = str(refused.value)
    first_chinese_line = 2 if suffix == ".csv" else 1  # after the CSV header
    assert "\n" not in message and str(path) in message and f"line {first_chinese_line} " in message
    assert "is not utf-8 text" in message
    assert "--encoding" in message
    assert _captions(path, encoding="gb18030") == CAPTIONS
    assert _captions(path, encoding="GB18030") == CAPTIONS  # any spelling Python knows


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (b"\xef\xbb\xbf" + _csv_text().encode("utf-8"), None),  # UTF-8 with a byte order mark
        (_csv_text().encode("utf-16"), None),  # UTF-16 with its mark, in this machine's byte order
        (b"\xfe\xff" + _csv_text().encode("utf-16-be"), None),
        (b"\xff\xfe" + _csv_text().encode("utf-16-le"), None),
        (_csv_text().encode("utf-16-le"), "utf-16-le"),  # no mark: only when told
        (b"\xef\xbb\xbf" + _csv_text().encode("utf-8"), "utf-8"),  # told UTF-8, the mark is still not a column
        (_csv_text().encode("utf-8"), "utf_8"),
    ],
)
def test_byte_order_marks_are_read_and_named_encodings_are_used(tmp_path, data, encoding):
    path = tmp_path / "m.csv"
    path.write_bytes(data)
    assert _captions(path, encoding=encoding) == CAPTIONS
    check_manifest(str(path), encoding=encoding)


def test_utf16_without_a_mark_unknown_and_non_text_encodings_are_one_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(_csv_text().encode("utf-16-le"))
    for encoding, expected in [
        (None, "UTF-16 without a byte order mark"),
        ("klingon", "unknown encoding 'klingon'"),
        ("base64", "not a text encoding"),
    ]:
        with pytest.raises(ManifestError, match=expected) as refused:
            check_manifest(str(path), encoding=encoding)
        assert "\n" not in str(refused.value)
        with pytest.raises(ManifestError, match=expected):
            _captions(path, encoding=encoding)


def test_the_line_named_is_the_line_of_the_bad_byte_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "_CHUNK", 5)  # multibyte characters split across reads
    text = _csv_text()
    lines = text.encode("gb18030").split(b"\n")
    lines[3] = lines[3][:8] + b"\x81\x20" + lines[3][8:]  # 0x81 must start a 2- or 4-byte sequence: 0x20 cannot follow
    path = tmp_path / "m.csv"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ManifestError, match=r"line 4 is not gb18030 text .*81") as refused:
        _captions(path, encoding="gb18030")
    assert "is 'gb18030' the file's encoding?" in str(refused.value)
    path.write_bytes("video,caption\na.mp4,a cat\nb.mp4,一只猫".encode()[:-1])  # cut inside the last character
    with pytest.raises(ManifestError, match="line 3 is not utf-8 text"):
        _captions(path)
    path.write_bytes(text.encode("utf-16"))
    assert _captions(path) == CAPTIONS


def test_header_and_decoding_are_checked_before_any_flow_starts(tmp_path, capsys):
    """`cogflow ingest` gives one line and exit code 2, with no Prefect run (so no traceback) before it."""
    bad = tmp_path / "gb.csv"
    bad.write_bytes(_csv_text().encode("gb18030"))
    headers = tmp_path / "headers.jsonl"
    headers.write_text(json.dumps({"path": "a.mp4", "text": "a caption"}) + "\n")
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(_csv_text().encode("utf-16-le"))
    chinese_header = tmp_path / "header.csv"
    chinese_header.write_bytes("视频,说明\na.mp4,一只猫\n".encode("gb18030"))
    lake_dir = tmp_path / "lake"
    for argv, expected in [
        ([str(bad)], f"{bad}: line 2 is not utf-8 text"),
        ([str(bad), "--encoding", "klingon"], "unknown encoding 'klingon'"),
        ([str(headers)], "has a 'video' column"),
        ([str(headers), "--video-col", "path"], "has a 'caption' column"),
        ([str(utf16)], "UTF-16 without a byte order mark"),
        ([str(chinese_header), "--encoding", "gb18030"], "'视频'"),  # decoded as asked, then refused for its columns
        ([str(tmp_path / "absent.csv")], "no such file"),
    ]:
        assert main(["ingest", *argv, "--lake", str(lake_dir)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("cogflow ingest: "), err
        assert expected in err
    assert not lake_dir.exists()


def test_gb18030_csv_and_jsonl_ingest_into_the_lake(tmp_path, sample_dir):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)[:3]
    settings = load_settings(home=str(tmp_path / "home"))
    (data / "m.csv").write_bytes(_csv_text([r["video"] for r in rows]).encode("gb18030"))
    lines = [json.dumps({"video": r["video"], "caption": c + "。"}, ensure_ascii=False) for r, c in zip(rows, CAPTIONS)]
    (data / "m.jsonl").write_bytes("\n".join(lines).encode("gb18030"))
    for name in ("m.csv", "m.jsonl"):
        summary = ingest(str(data / name), settings, encoding="gb18030")
        assert summary.accepted_rows == 3 and summary.rejected_rows == 0
    captions = lake.read_table(Storage.at(settings.lake), "captions").to_pylist()
    assert sorted(c["caption"] for c in captions) == sorted(CAPTIONS + [c + "。" for c in CAPTIONS])
    assert {c["language"] for c in captions if c["caption"].startswith("一只红色")} == {"zh"}


# --- captions with NUL, paths that cannot be probed ---------------------------------------------------------------


def test_a_nul_in_a_caption_separates_words(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"video,caption\na.mp4,red\x00circle on\x00\x00black\n")  # a raw NUL byte, as some exporters write
    con = db.connect()
    load_manifest(con, str(path), workdir=tmp_path)
    cleaned = con.execute("SELECT clean_caption(raw ->> 'caption') FROM raw_rows").fetchall()
    assert cleaned == [("red circle on black",)]


def test_folders_fifos_and_paths_too_long_get_their_own_reasons(tmp_path):
    (tmp_path / "folder.mp4").mkdir()
    os.mkfifo(tmp_path / "fifo.mp4")
    long_name = tmp_path / ("x" * 300 + ".mp4")  # a name longer than any file system allows (255 bytes)
    deep = tmp_path / "/".join(["d" * 200] * 30) / "v.mp4"  # a path longer than PATH_MAX (4096)
    paths = [tmp_path / "folder.mp4", tmp_path / "fifo.mp4", long_name, deep, tmp_path / "gone.mp4"]
    outcomes = [probe_source(str(p), str(p), Limits()) for p in paths]
    assert [o["reason"] for o in outcomes] == [
        "not_a_file",
        "not_a_file",
        "path_too_long",
        "path_too_long",
        "missing_file",
    ]
    assert "a folder" in outcomes[0]["detail"] and "a FIFO" in outcomes[1]["detail"]


def test_a_path_too_long_is_recorded_once_and_not_probed_again(tmp_path, sample_dir):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    (data / "folder.mp4").mkdir()
    manifest_rows = [
        {"video": rows[0]["video"], "caption": "a good video"},
        {"video": "x" * 300 + ".mp4", "caption": "a name too long"},
        {"video": "folder.mp4", "caption": "a folder named like a video"},
    ]
    path = write_csv(data / "m.csv", manifest_rows)
    settings = load_settings(home=str(tmp_path / "home"))
    first = ingest(str(path), settings)
    assert first.outcomes == {"accepted": 1, "path_too_long": 1, "not_a_file": 1}
    again = ingest(str(path), settings)
    assert again.sources_probed == 1  # only the folder, which may have become a file; the long name cannot
    assert again.outcomes == first.outcomes and again.new_rows["rejects"] == 0


# --- rejects follow the latest run of their manifest ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_corrected_rerun_clears_the_rows_earlier_rejects(tmp_path, sample_dir, where, request):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    v0, v1 = rows[0]["video"], rows[1]["video"]
    path = data / "m.csv"
    path.write_text(f'video,caption\n{v0},"a red circle"\n{v1},a green,triangle,extra\nlater.mp4,"arrives later"\n')
    lake_uri = f"s3://{request.getfixturevalue('s3').bucket}/lake" if where == "s3" else None
    settings = load_settings(home=str(tmp_path / "home"), lake=lake_uri)
    store = Storage.at(settings.lake)
    first = ingest(str(path), settings)
    assert first.outcomes == {"accepted": 1, "malformed_row": 1, "missing_file": 1}

    (data / "later.mp4").write_bytes((data / v1).read_bytes())  # the missing file arrives
    path.write_text(f'video,caption\n{v0},"a red circle"\n{v1},"a green triangle"\nlater.mp4,"arrives later"\n')
    second = ingest(str(path), settings)
    assert second.outcomes == {"accepted": 3}
    assert lake.read_table(store, "rejects").num_rows == 0  # neither old reject still says the row was refused
    assert second.cleared_rejects == 2
    assert lake.row_counts(store)["captions"] == 3

    # another manifest's rejects are its own: a run of this one leaves them alone
    other = write_csv(data / "other.csv", [{"video": "nowhere.mp4", "caption": "never there"}])
    ingest(str(other), settings)
    path.write_text(f'video,caption\n{v0},"a red circle"\n{v1},"a green triangle"\nlater.mp4,x\n')
    third = ingest(str(path), settings)
    rejects = lake.read_table(store, "rejects").to_pylist()
    assert sorted(r["reason"] for r in rejects) == ["caption_too_short", "missing_file"]
    assert third.cleared_rejects == 0
    again = ingest(str(path), settings)
    assert again.new_rows["rejects"] == 0 and again.cleared_rejects == 0
    assert lake.read_table(store, "rejects").num_rows == 2
