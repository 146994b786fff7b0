"""Manifest reading, path resolution, subtitle parsing and the caption-cleaning SQL."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import write_csv

from cogflow.pipeline import db
from cogflow.pipeline.manifest import (
    ManifestError,
    json_key,
    load_manifest,
    manifest_base,
    resolve_source,
)
from cogflow.pipeline.subtitles import SubtitleError, parse_subtitles

# --- resolving video paths -------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path):
    base = manifest_base(str(tmp_path / "m" / "manifest.csv"))
    assert resolve_source("videos/a.mp4", base).source_uri == str(tmp_path.resolve() / "m" / "videos" / "a.mp4")
    assert resolve_source("./videos/../videos/a.mp4", base).reason is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("../../etc/passwd", "path_outside_roots"),
        ("/etc/passwd", "path_outside_roots"),
        ("file:///etc/passwd", "path_outside_roots"),
        ("~/secrets.mp4", "path_outside_roots"),
        ("ftp://host/a.mp4", "unsupported_uri"),
        ("videos/a.mp4\x00.txt", "unsupported_uri"),
        ("s3:/bucket-without-slashes/a.mp4", "malformed_uri"),
        ("http:relative.mp4", "malformed_uri"),
        ("javascript:alert(1)", "unsupported_uri"),
        ("", "missing_video"),
        ("   ", "missing_video"),
        (None, "missing_video"),
    ],
)
def test_paths_that_cannot_be_used(tmp_path, value, reason):
    assert resolve_source(value, str(tmp_path)).reason == reason


def test_symlinks_cannot_escape_and_allowed_roots_widen_the_fence(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "v.mp4").write_bytes(b"x")
    folder = tmp_path / "manifests"
    folder.mkdir()
    os.symlink(outside / "v.mp4", folder / "link.mp4")
    assert resolve_source("link.mp4", str(folder)).reason == "path_outside_roots"
    assert resolve_source(str(outside / "v.mp4"), str(folder), [str(outside)]).source_uri == str(outside / "v.mp4")
    assert resolve_source("link.mp4", str(folder), [str(outside)]).reason is None


def test_remote_manifests_resolve_below_their_prefix_only():
    base = manifest_base("s3://bucket/data/2026/manifest.csv")
    assert base == "s3://bucket/data/2026/"
    assert resolve_source("videos/a.mp4", base).source_uri == "s3://bucket/data/2026/videos/a.mp4"
    assert resolve_source("../other/a.mp4", base).reason == "path_outside_roots"
    assert resolve_source("/etc/passwd", base).reason == "path_outside_roots"
    assert resolve_source("file:///etc/passwd", base).reason == "path_outside_roots"
    http = manifest_base("https://host/x/manifest.jsonl?sig=1")
    assert resolve_source("v.mp4", http).source_uri == "https://host/x/v.mp4"


def test_urls_keep_their_credentials_only_for_fetching():
    resolved = resolve_source("https://user:pw@host/v.mp4?X-Amz-Signature=abc", "/data")
    assert resolved.source_uri == "https://host/v.mp4"
    assert resolved.fetch_uri == "https://user:pw@host/v.mp4?X-Amz-Signature=abc"
    upper = resolve_source("HTTP://user:pw@host/v.mp4?sig=1", "/data")
    assert (upper.source_uri, upper.fetch_uri) == ("http://host/v.mp4", "http://user:pw@host/v.mp4?sig=1")
    # relative paths under a manifest fetched with credentials inherit them for fetching, never for the lake
    base = manifest_base("https://user:pw@host/data/m.csv?sig=1")
    relative = resolve_source("videos/a.mp4?part=2", base)
    assert relative.source_uri == "https://host/data/videos/a.mp4?part=2"  # the query selects; only credentials go
    assert relative.fetch_uri == "https://user:pw@host/data/videos/a.mp4?part=2"
    assert resolve_source("%2e%2e/secret.mp4", base).reason == "path_outside_roots"


# --- reading manifests -----------------------------------------------------------------------------------------


def _load(path: Path, **kwargs) -> list[tuple]:
    con = db.connect()
    load_manifest(con, str(path), workdir=path.parent, **kwargs)
    return con.table("raw_rows").order("row_number").fetchall()


def test_malformed_csv_lines_are_kept_as_rejects(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        'video,caption\na.mp4,"fine, with a comma"\nb.mp4,too,many,fields\nc.mp4,"multi\nline"\n', encoding="utf-8"
    )
    rows = _load(path)
    assert [r[2] for r in rows] == [None, None, "malformed_row"]
    assert "line 3" in rows[2][3] and "TOO MANY COLUMNS" in rows[2][3]


def test_one_stray_quote_does_not_change_how_other_rows_are_read(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('video,caption\nv1,"a cat, a dog"\nv1,"He said ""hi"""\nv0,"unterminated start\nv1,plain\n')
    rows = _load(path)
    assert [json.loads(r[1]).get("caption") for r in rows[:2]] == ["a cat, a dog", 'He said "hi"']
    assert rows[2][2] == "malformed_row" and "unterminated start" in rows[2][1]


def test_semicolon_csv_tsv_and_awkward_column_names(tmp_path):
    (tmp_path / "m.csv").write_text("video;caption\nv.mp4;un chat\n", encoding="utf-8-sig")
    assert json.loads(_load(tmp_path / "m.csv")[0][1]) == {"video": "v.mp4", "caption": "un chat"}
    (tmp_path / "m.tsv").write_text("video\tcaption\tcaption\nv.mp4\tx y\tsecond\n")
    assert json.loads(_load(tmp_path / "m.tsv")[0][1]) == {"video": "v.mp4", "caption": "x y", "caption_1": "second"}
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"$video": "odd.mp4", "video": "plain.mp4", "a.b": "dotted caption"}) + "\n")
    con = db.connect()
    load_manifest(con, str(jsonl), video_col="$video", caption_col="a.b", workdir=tmp_path)
    assert con.table("resolved").select("video_value").fetchall() == [("odd.mp4",)]


def test_missing_columns_and_unknown_formats_are_usage_errors(tmp_path):
    path = write_csv(tmp_path / "m.csv", [{"path": "a.mp4", "caption": "x y"}])
    with pytest.raises(ManifestError, match="--video-col"):
        _load(path)
    assert len(_load(path, video_col="path")) == 1
    (tmp_path / "m.xml").write_text("<xml/>")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        _load(tmp_path / "m.xml")
    with pytest.raises(ManifestError, match="cannot read"):
        _load(tmp_path / "absent.csv")


def test_a_subtitle_manifest_needs_its_video(tmp_path):
    (tmp_path / "clip.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhi there\n")
    with pytest.raises(ManifestError, match="no video named clip"):
        _load(tmp_path / "clip.srt")
    (tmp_path / "clip.webm").write_bytes(b"...")
    assert len(_load(tmp_path / "clip.srt")) == 1


# --- subtitles ---------------------------------------------------------------------------------------------------


def test_srt_with_bom_crlf_and_multiline_cues():
    data = "\ufeff1\r\n00:00:01,500 --> 00:00:03,000\r\nline one\r\nline two\r\n\r\n2\r\n01:00:00,000 --> 01:00:02,250\r\n第二\r\n"
    cues = parse_subtitles(data.encode("utf-8"), ".srt")
    assert [(c.start, c.end, c.text) for c in cues] == [(1.5, 3.0, "line one\nline two"), (3600.0, 3602.25, "第二")]


def test_webvtt_skips_header_notes_and_cue_settings_and_keeps_bad_timings_raw():
    data = "WEBVTT - title\n\nNOTE\nsome note\n\nSTYLE\n::cue {}\n\nid-1\n00:01.000 --> 00:02.500 align:start line:0\n<v Bob>hi</v>\n\n00:99.000 --> 00:03.000\nbad\n"
    cues = parse_subtitles(data.encode(), ".vtt")
    assert (cues[0].start, cues[0].end, cues[0].text) == (1.0, 2.5, "<v Bob>hi</v>")
    assert cues[1].start == "00:99.000" and cues[1].end == 3.0  # the SQL rejects this one cue as malformed_span


def test_gb18030_and_utf16_subtitles_decode():
    srt = "1\n00:00:00,000 --> 00:00:01,000\n一个红色的圆形\n"
    assert parse_subtitles(srt.encode("gb18030"), ".srt")[0].text == "一个红色的圆形"
    assert parse_subtitles(srt.encode("utf-16"), ".srt")[0].text == "一个红色的圆形"


@pytest.mark.parametrize(("data", "suffix"), [(b"just text\n", ".srt"), (b"1\n00:00 --> 00:01\nx", ".vtt")])
def test_files_without_cues_are_bad_subtitles(data, suffix):
    with pytest.raises(SubtitleError):
        parse_subtitles(data, suffix)


# --- cleaning and tagging captions in SQL -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def con():
    return db.connect()


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("<b>Tom</b> &amp; <i>Jerry</i>", "Tom & Jerry"),
        ("a&nbsp;b&#20013;&#x6587;", "a b中文"),
        ("tabs\tand\nnew\r\nlines", "tabs and new lines"),
        ("bell\x07null\x00del\x7f", "bellnull del"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("\u3000全角\u3000空格\u00a0 ", "全角 空格"),
        ("   ", ""),
        ("<br/><p></p>", ""),
        ("a < b and c > d", "a < b and c > d"),
        ("&lt;i&gt;escaped twice&lt;/i&gt;", "escaped twice"),
        ("\u200e\u200f\xad", ""),
        ("em\u2003\u2003space, line\u2028separator", "em space, line separator"),
        ("&#x202E;override", "override"),
    ],
)
def test_clean_caption(con, raw, clean):
    assert con.execute("SELECT clean_caption($s)", {"s": raw}).fetchall()[0][0] == clean


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("一个红色的圆形从左向右移动", "zh"),
        ("A red circle moves from left to right.", "en"),
        ("一个红色的圆形 moves to the right", "mixed"),
        ("Красный круг", "other"),
        ("12345 !!", "other"),
        ("一个红色的圆形从左向右移动 ok", "zh"),
    ],
)
def test_language_tag_by_script(con, text, language):
    assert con.execute("SELECT language_tag($s)", {"s": text}).fetchall()[0][0] == language


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12.5", 12.5),
        ("00:01:02.5", 62.5),
        ("1:05", 65.0),
        ("75:30", 4530.0),
        ("00:00:01,250", 1.25),
        ("", None),
        ("soon", None),
        ("0:75", None),
        ("1:99:99", None),
    ],
)
def test_span_seconds(con, text, seconds):
    assert con.execute("SELECT span_seconds($s)", {"s": text}).fetchall()[0][0] == seconds


def test_length_bounds_count_characters_not_bytes(tmp_path, con):
    path = write_csv(tmp_path / "m.csv", [{"video": "v.mp4", "caption": "猫跑"}, {"video": "v.mp4", "caption": "猫"}])
    load_manifest(con, str(path), workdir=tmp_path)
    params = dict(manifest_uri="m", video_col="video", caption_col="caption", min_caption_chars=2, max_caption_chars=5)
    params.update(video_key=json_key("video"), caption_key=json_key("caption"))
    db.materialize(con, "staging/stg_manifest", **params)
    assert con.table("stg_manifest").order("row_number").select("reason").fetchall() == [
        (None,),
        ("caption_too_short",),
    ]
