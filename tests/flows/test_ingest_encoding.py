"""`cogflow ingest --encoding` reaches the flow: a GB18030 manifest's Chinese captions land in the lake as written."""

from __future__ import annotations

import re

from helpers import copy_sample

from cogflow.flows.cli import main
from cogflow.pipeline import lake
from cogflow.pipeline.storage import Storage

CAPTIONS = ["一只红色的圆在黑色背景上向右移动", "绿色三角形，缓慢旋转"]


def test_cli_ingests_a_gb18030_manifest_when_told_its_encoding(tmp_path, capsys, sample_dir):
    rows = copy_sample(sample_dir, tmp_path)
    manifest = tmp_path / "gb.csv"
    manifest.write_bytes(
        ("video,caption\n" + "".join(f"{r['video']},{c}\n" for r, c in zip(rows, CAPTIONS))).encode("gb18030")
    )
    assert main(["ingest", str(manifest), "--lake", str(tmp_path / "lake")]) == 2  # refused, not mojibake
    assert main(["ingest", str(manifest), "--lake", str(tmp_path / "lake"), "--encoding", "gb18030"]) == 0
    assert re.search(r"accepted rows +2\n", capsys.readouterr().out)
    captions = lake.read_table(Storage.at(str(tmp_path / "lake")), "captions").to_pylist()
    assert sorted(c["caption"] for c in captions) == sorted(CAPTIONS)
