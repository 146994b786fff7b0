"""All of cogflow's settings in one place.

Order of precedence: built-in default < environment variable < explicit override (command-line option).
Credentials are never settings: they come from the environment or the AWS chain and are never stored here,
so printing a Settings object (or putting it into a Prefect artifact) cannot leak them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Guards applied at ingest. Sizes and durations over these are rejected before any decoding."""

    max_bytes: int = 2 * 1024**3  # 2 GiB per video file
    max_width: int = 7680
    max_height: int = 7680
    max_pixels: int = 3840 * 2160  # a guard against decompression bombs (huge frames in a tiny file)
    max_aspect_ratio: float = 8.0  # longer side over shorter side (stored pixels); split crops the centre square
    max_duration_s: float = 4 * 3600.0
    min_duration_s: float = 0.5
    min_caption_chars: int = 2  # counted in characters: Chinese has no spaces
    max_caption_chars: int = 1000
    span_tolerance_s: float = 0.25  # a span may end this much past the probed duration (rounding in manifests)
    download_timeout_s: float = 60.0
    download_retries: int = 3


ENV_LIMITS = {
    "max_bytes": "COGFLOW_MAX_BYTES",
    "max_width": "COGFLOW_MAX_WIDTH",
    "max_height": "COGFLOW_MAX_HEIGHT",
    "max_pixels": "COGFLOW_MAX_PIXELS",
    "max_aspect_ratio": "COGFLOW_MAX_ASPECT_RATIO",
    "max_duration_s": "COGFLOW_MAX_DURATION_S",
    "min_duration_s": "COGFLOW_MIN_DURATION_S",
    "min_caption_chars": "COGFLOW_MIN_CAPTION_CHARS",
    "max_caption_chars": "COGFLOW_MAX_CAPTION_CHARS",
    "span_tolerance_s": "COGFLOW_SPAN_TOLERANCE_S",
    "download_timeout_s": "COGFLOW_DOWNLOAD_TIMEOUT_S",
    "download_retries": "COGFLOW_DOWNLOAD_RETRIES",
}


@dataclass(frozen=True)
class SplitOptions:
    """How `split` plans windows, sizes shards and decodes (README: Split)."""

    stage1_windows: int = 4  # most stage-1 windows per caption span (spread evenly over a long span)
    stage2_windows: int = 4  # most stage-2 windows per caption span and frame rate
    shard_mb: float = 256.0  # target shard size (a clip of real footage is about 250 kB once compressed)
    shard_videos: int = 64  # videos per shard, on average: about what a killed run may have to redo per worker
    workers: int = max(1, os.cpu_count() or 1)  # shards split at once, each by its own decoder process
    decode_threads: int = 0  # FFmpeg threads per decoder; 0: the cores shared out among the workers
    video_timeout_s: float = 600.0  # a decoder that takes longer on one video is stopped
    seek_gap_s: float = 10.0  # skip ahead by seeking when the next frame needed is this far ahead


ENV_SPLIT = {
    "stage1_windows": "COGFLOW_STAGE1_WINDOWS",
    "stage2_windows": "COGFLOW_STAGE2_WINDOWS",
    "shard_mb": "COGFLOW_SHARD_MB",
    "shard_videos": "COGFLOW_SHARD_VIDEOS",
    "workers": "COGFLOW_SPLIT_WORKERS",
    "decode_threads": "COGFLOW_DECODE_THREADS",
    "video_timeout_s": "COGFLOW_VIDEO_TIMEOUT_S",
    "seek_gap_s": "COGFLOW_SEEK_GAP_S",
}


@dataclass(frozen=True)
class Settings:
    home: str = ".cogflow"
    lake: str = ".cogflow/lake"
    mlflow_tracking_uri: str = "sqlite:///.cogflow/mlflow.db"
    s3_endpoint: str | None = None  # AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; for S3-compatible stores
    allowed_roots: tuple[str, ...] = ()  # local folders a manifest may point into besides its own folder
    probe_workers: int = 4
    val_percent: int = 5  # share of videos in the `val` split, by a stable hash of video_id
    limits: Limits = field(default_factory=Limits)
    split: SplitOptions = field(default_factory=SplitOptions)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _cast(value: str, like: Any) -> Any:
    return type(like)(float(value)) if isinstance(like, int) else type(like)(value)


def load_settings(**overrides: Any) -> Settings:
    """Defaults, then the environment, then `overrides` (None means "not given")."""
    env = os.environ
    home = overrides.pop("home", None) or env.get("COGFLOW_HOME") or ".cogflow"
    roots = tuple(p for p in env.get("COGFLOW_ALLOWED_ROOTS", "").split(os.pathsep) if p)
    settings = Settings(
        home=home,
        lake=env.get("COGFLOW_LAKE") or str(Path(home) / "lake"),
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(home) / 'mlflow.db'}",
        s3_endpoint=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        allowed_roots=roots,
        probe_workers=int(env.get("COGFLOW_PROBE_WORKERS", 4)),
        val_percent=int(env.get("COGFLOW_VAL_PERCENT", 5)),
        limits=_from_env(Limits(), ENV_LIMITS),
        split=_from_env(SplitOptions(), ENV_SPLIT),
    )
    return settings.replace(**overrides)


def _from_env(defaults: Any, names: dict[str, str]) -> Any:
    env = os.environ
    return dataclasses.replace(defaults, **{k: _cast(env[v], getattr(defaults, k)) for k, v in names.items() if env.get(v)})
