"""`cogflow export --format webdataset`: a real lake's clips as tar shards, read back with plain tarfile and with the
webdataset library, frame for frame."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds
from helpers import copy_sample, write_csv

from cogflow.flows.cli import main
from cogflow.pipeline import lake
from cogflow.pipeline.export import export_webdataset
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.manifest import ManifestError
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.split import split
from cogflow.pipeline.storage import Storage


@pytest.fixture(scope="module")
def split_lake(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Settings:
    root = tmp_path_factory.mktemp("export")
    rows = [{"video": r["video"], "caption": r["caption"]} for r in copy_sample(sample_dir, root / "data")]
    settings = load_settings(home=str(root / "home"))
    settings = dataclasses.replace(settings, split=dataclasses.replace(settings.split, workers=1))
    ingest(str(write_csv(root / "data" / "manifest.csv", rows)), settings)
    split(settings)
    return settings


def decoded(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_every_clip_comes_back_from_the_tars_frame_for_frame(split_lake: Settings, tmp_path: Path) -> None:
    store = Storage.at(split_lake.lake)
    clips = {c["clip_id"]: c for c in lake.read_clips(store).to_pylist()}
    summary = export_webdataset(store, tmp_path / "wds", shard_mb=0.2)
    assert summary.clips == len(clips) and len(summary.shards) > 1  # small shards: several
    assert sorted(p.name for p in (tmp_path / "wds").iterdir()) == [
        f"shard-{i:06d}.tar" for i in range(len(summary.shards))
    ]

    seen = {}
    for shard in summary.shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                seen.setdefault(key, {})[ext] = tar.extractfile(member).read()
    assert set(seen) == set(clips)
    for key, members in seen.items():
        clip = clips[key]
        assert set(members) == {"mp4", "txt", "json"}
        frames = np.frombuffer(clip["frames"], np.uint8).reshape(5, 160, 160, 3)
        assert np.array_equal(decoded(members["mp4"]), frames)  # lossless
        assert members["txt"].decode() == clip["caption"]
        meta = json.loads(members["json"])
        assert (meta["fps"], meta["fps_token"], meta["stage"], meta["split"]) == (
            clip["fps"],
            clip["fps_token"],
            clip["stage"],
            clip["split"],
        )
        assert meta["frame_times"] == clip["frame_times"] and meta["video_id"] == clip["video_id"]
        assert meta["video"]["shot_count"] == 1 and "motion" in meta and "brightness" in meta["video"]

    # the webdataset library reads the same samples
    samples = list(wds.WebDataset([str(p) for p in summary.shards], shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(clips)
    assert all(set(s) >= {"mp4", "txt", "json"} for s in samples)

    # the same lake exports the same bytes; a stage and split filter keeps only theirs
    again = export_webdataset(store, tmp_path / "again", shard_mb=0.2)
    assert [p.read_bytes() for p in again.shards] == [p.read_bytes() for p in summary.shards]
    only = export_webdataset(store, tmp_path / "stage1", stage=1, split="train")
    expected = {k for k, c in clips.items() if c["stage"] == 1 and c["split"] == "train"}
    assert only.clips == len(expected) and len(only.shards) == (1 if expected else 0)


def test_the_command_writes_shards_and_a_missing_lake_is_one_line(split_lake: Settings, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["export", "--lake", split_lake.lake, "--format", "webdataset", "-o", str(out), "--stage", "2"]) == 0
    assert "WebDataset shards" in capsys.readouterr().out and list(out.glob("shard-*.tar"))
    assert main(["export", "--lake", str(tmp_path / "nowhere"), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith("cogflow export: no lake at")


def add_to_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tars_ingest_in_place_as_a_manifest_from_a_folder_and_from_s3(
    split_lake: Settings, sample_dir: Path, tmp_path: Path, s3
) -> None:
    """The round trip: exported stage-1 clips come back as videos read out of their tars (frame for frame), with
    their captions; a video2dataset-style sample (caption in its JSON) joins them; a sample with no caption is a
    reject. The same tars under an S3 prefix give the same rows."""
    store = Storage.at(split_lake.lake)
    clips = {c["clip_id"]: c for c in lake.read_clips(store, stage=1).to_pylist()}
    folder = tmp_path / "wds"
    export_webdataset(store, folder, stage=1, shard_mb=0.2)
    video = next((sample_dir / "videos").glob("*.mp4")).read_bytes()
    add_to_tar(
        folder / "v2d-000000.tar",
        {
            "00000000.mp4": video,
            "00000000.json": json.dumps(
                {"caption": "一只猫在窗台上打盹。", "url": "https://x/1.mp4", "clips": [[0, 2]]}
            ).encode(),
            "00000001.mp4": video[:-10] + b"0123456789",  # another video (not the same bytes), no caption
            "00000001.json": b'{"status": "success"}',
        },
    )
    expected = {k: c["caption"] for k, c in clips.items()} | {"00000000": "一只猫在窗台上打盹。"}

    def ingested(manifest: str, home: Path, then_split: bool = False) -> dict[str, dict]:
        settings = load_settings(home=str(home))
        settings = dataclasses.replace(settings, split=dataclasses.replace(settings.split, workers=1))
        summary = ingest(manifest, settings)
        assert summary.outcomes == {"accepted": len(expected), "empty_caption": 1}
        if then_split:  # split reads the videos out of the tars too
            split(settings)
            made = lake.read_clips(Storage.at(settings.lake), ["video_id"])
            assert len(set(made["video_id"].to_pylist())) == len(expected)
        captions = lake.read_table(Storage.at(settings.lake), "captions").to_pylist()
        return {json.loads(c["metadata"])["wds_key"]: c for c in captions}

    local = ingested(str(folder), tmp_path / "home")
    assert {k: c["caption"] for k, c in local.items()} == expected
    some = next(iter(clips))
    row = local[some]
    assert row["source_uri"].startswith(f"{folder.resolve()}/shard-") and "#member=" in row["source_uri"]
    assert (row["start_s"], json.loads(row["metadata"])["wds_json"]["clip_id"]) == (0.0, some)  # the whole member
    assert json.loads(local["00000000"]["metadata"])["wds_json"]["clips"] == [[0, 2]]
    with tarfile.open(next(folder.glob("shard-*.tar"))) as tar:  # read in place: the tar's own bytes, no copy
        member = tar.getmember(row["source_uri"].split("#member=")[1].split("&")[0])
        assert row["source_uri"].endswith(f"&offset={member.offset_data}&size={member.size}")
    frames = np.frombuffer(clips[some]["frames"], np.uint8).reshape(5, 160, 160, 3)
    with tarfile.open(row["source_uri"].split("#")[0]) as tar:
        assert np.array_equal(decoded(tar.extractfile(member).read()), frames)

    for tar in sorted(folder.glob("*.tar")):
        s3.upload_file(str(tar), s3.bucket, f"downloads/{tar.name}")
    remote = ingested(f"s3://{s3.bucket}/downloads/", tmp_path / "s3-home", then_split=True)
    assert {k: c["caption"] for k, c in remote.items()} == expected
    assert remote[some]["source_uri"].startswith(f"s3://{s3.bucket}/downloads/shard-")
    with pytest.raises(ManifestError, match="from a local folder or S3, not https://example.com/a.tar"):
        ingest("https://example.com/a.tar", load_settings(home=str(tmp_path / "http-home")))
