"""A tiny real lake for the lease and repair tests: two 2-second 64x64 videos, ingested and split in about a second."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cogflow.pipeline.encode import encode_video
from cogflow.pipeline.settings import Settings, load_settings


def tiny_manifest(folder: Path, videos: int = 2) -> Path:
    """`videos` distinct 2 s videos (12 fps, 64x64 H.264) and a manifest.csv captioning each once."""
    (folder / "v").mkdir(parents=True, exist_ok=True)
    lines = ["video,caption"]
    for i in range(videos):
        frames = [np.full((64, 64, 3), (i * 80 + k * 5) % 255, np.uint8) for k in range(24)]
        encode_video(folder / "v" / f"{i}.mp4", frames, 12, "mp4")
        lines.append(f"v/{i}.mp4,tiny video number {i}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def tiny_settings(home: Path, lake: str | None = None) -> Settings:
    """Settings of a test home (one video per split shard, one worker), optionally on another lake."""
    settings = load_settings(home=str(home), **({"lake": lake} if lake else {}))
    return dataclasses.replace(settings, split=dataclasses.replace(settings.split, workers=1, shard_videos=1))
