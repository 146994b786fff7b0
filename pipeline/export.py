"""The lake's clips as WebDataset shards, so that other trainers (and people) can read them without cogflow.

`cogflow export --format webdataset -o DIR` writes tar files `DIR/shard-000000.tar`, ... of about `shard_mb` each
(whole clips: a shard closes once it has passed the size). Each clip is three members named by its clip_id:
- `KEY.mp4`: its 5 frames at 160x160, losslessly encoded (H.264 in RGB, qp 0: decoding gives back the lake's bytes),
  at the clip's frame rate;
- `KEY.txt`: the caption, UTF-8;
- `KEY.json`: everything else the lake knows of the clip and its video: stage, fps, fps token, start and frame
  times, video, caption and shard ids, split, language, the clip's motion and the scan's scores of its video.
A shard is written under a temporary name and renamed when whole, so a reader never sees half a tar; a re-run
rewrites the same shards (clips in clip_id order within each lake part, parts in order).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cogflow.pipeline import lake
from cogflow.pipeline.contract import CLIP_FRAMES, CLIP_SIZE
from cogflow.pipeline.encode import encode_lossless
from cogflow.pipeline.storage import Storage

VIDEO_SCORES = ["crop_left", "crop_top", "crop_right", "crop_bottom", "motion", "brightness", "sharpness", "shot_count"]


@dataclass
class ExportSummary:
    out: Path
    shards: list[Path]
    clips: int
    bytes: int
    seconds: float

    def text(self) -> str:
        return (
            f"exported {self.clips:,} clips into {len(self.shards)} WebDataset shards ({self.bytes / 1e6:,.1f} MB) "
            f"in {self.out} ({self.seconds:.1f} s)"
        )


class _ShardWriter:
    """Tar shards of about `limit` bytes, each written under a temporary name and renamed when closed."""

    def __init__(self, out: Path, limit: int) -> None:
        self.out, self.limit = out, limit
        self.paths: list[Path] = []
        self.tar: tarfile.TarFile | None = None
        self.size = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        if self.tar is None:
            self.tar = tarfile.open(self._tmp(), "w", format=tarfile.USTAR_FORMAT)
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # no clock: a re-run writes the same bytes
            self.tar.addfile(info, io.BytesIO(data))
            self.size += len(data) + 512
        if self.size >= self.limit:
            self.close()

    def _tmp(self) -> Path:
        return self.out / f".tmp-shard-{len(self.paths):06d}.tar"

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        final = self.out / f"shard-{len(self.paths):06d}.tar"
        os.replace(self._tmp(), final)
        self.paths.append(final)
        self.tar, self.size = None, 0


def export_webdataset(
    store: Storage, out: Path, *, stage: int | None = None, split: str | None = None, shard_mb: float = 1000.0
) -> ExportSummary:
    """Write the finished clips of the lake (of one stage and one split, when given) as WebDataset shards in `out`."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*shard-*.tar"):  # a re-run replaces what an earlier export left, whole or not
        old.unlink()
    videos = {v.pop("video_id"): v for v in lake.read_table(store, "videos", ["video_id", *VIDEO_SCORES]).to_pylist()}
    writer = _ShardWriter(out, int(shard_mb * 1e6))
    clips = 0
    for part in sorted(lake.clip_parts(store, stage)):
        table = lake.read_table(store, "clips", parts=[part]).sort_by("clip_id")
        for clip in table.to_pylist():
            if split is not None and clip["split"] != split:
                continue
            frames = np.frombuffer(clip.pop("frames"), np.uint8).reshape(CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3)
            caption = clip.pop("caption")
            meta = {**clip, "video": videos.get(clip["video_id"], {})}
            writer.add(
                clip["clip_id"],
                {
                    "mp4": encode_lossless(frames, clip["fps"]),
                    "txt": caption.encode(),
                    "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode(),
                },
            )
            clips += 1
    writer.close()
    return ExportSummary(
        out, writer.paths, clips, sum(p.stat().st_size for p in writer.paths), time.monotonic() - started
    )
