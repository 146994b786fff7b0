"""All of cogflow's settings in one place, validated when a command starts.

Order of precedence: built-in default < environment variable < explicit override (command-line option).
Every setting is a typed field with its environment variable, its command-line spelling and what it accepts
(`FIELDS`); `load_settings` parses each one and refuses a value it does not accept with `SettingError`, whose
message is one line naming the setting and what it accepts. Sizes take units (`2GB`, `500MB`, `1.5GiB`, plain
bytes; GB is 10^9 bytes and GiB 2^30) and durations too (`90s`, `5m`, `2h`, `1h30m`, plain seconds).
Credentials are never settings: they come from the environment or the AWS chain and are never stored here,
so printing a Settings object (or putting it into a Prefect artifact) cannot leak them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SettingError(ValueError):
    """A setting holds a value it does not accept. The message is one line per bad setting: its name(s) and what
    it accepts."""


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
    probe_timeout_s: float = 600.0  # a probe that takes longer on one file is stopped: `probe_timeout`
    scan: int = 1  # 1: decode each new video once more, small, for its shots, motion, bars and fingerprint (scan.py)
    # a video whose fingerprint (320 bits) differs from an accepted one's in at most this many is a near-duplicate; 0: off
    near_duplicate_bits: int = 19


@dataclass(frozen=True)
class SplitOptions:
    """How `split` plans windows, sizes shards and decodes (README: Split)."""

    stage1_windows: int = 4  # most stage-1 windows per caption span (spread evenly over a long span)
    stage2_windows: int = 4  # most stage-2 windows per caption span and frame rate
    window_step: int = 5  # frame intervals between the starts of a span's windows; 5: none share a frame
    shard_mb: float = 256.0  # target shard size (a clip of real footage is about 250 kB once compressed)
    shard_videos: int = 64  # videos per shard, on average: about what a killed run may have to redo per worker
    workers: int = max(1, os.cpu_count() or 1)  # shards split at once, each by its own decoder process
    decode_threads: int = 0  # FFmpeg threads per decoder; 0: the cores shared out among the workers
    video_timeout_s: float = 600.0  # a decoder that takes longer on one video is stopped
    seek_gap_s: float = 10.0  # skip ahead by seeking when the next frame needed is this far ahead
    # a clip whose frames move fewer pixels than this share is `static` (0 keeps them all). A still scores 0; the
    # slowest sample-world clips (a square shrinking, at 8 fps) 0.0028, so the bar leaves them room
    min_motion: float = 0.001


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

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# ---------------------------------------------------------------------------------------------------------------
# Values as people write them

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"


def parse_size(text: str) -> int:
    """'2GB' -> 2_000_000_000, '1.5GiB' -> 1_610_612_736, '500 MB', '1e9' and '4096' (bytes). GB is 10^9, GiB 2^30."""
    match = re.fullmatch(rf"\s*({_NUMBER})\s*([a-z]*)\s*", text, re.IGNORECASE)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(text)
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value != round(value):
        raise ValueError(text)
    return int(value)


def parse_duration(text: str) -> float:
    """'90s' -> 90, '5m' -> 300, '2h' -> 7200, '1h30m' -> 5400, '250ms' -> 0.25, '1.5' -> 1.5 (seconds)."""
    text = text.strip().lower()
    try:
        value = float(text)  # plain seconds
    except ValueError:
        parts = re.findall(rf"({_NUMBER})\s*([a-z]+)\s*", text)
        if not parts or "".join(re.findall(rf"{_NUMBER}\s*[a-z]+\s*", text)) != text:
            raise ValueError(text) from None
        if any(unit not in _DURATION_UNITS for _, unit in parts):
            raise ValueError(text) from None
        value = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def parse_whole(text: str) -> int:
    """A whole number: '4', ' 4 ', '1e3' (a whole value written as a float is accepted, '2.5' is not)."""
    value = float(text)  # raises ValueError on 'abc'
    if not math.isfinite(value) or value != int(value):
        raise ValueError(text)
    return int(value)


def parse_number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def parse_megabytes(text: str) -> float:
    """COGFLOW_SHARD_MB: a plain number is megabytes; a size with a unit ('1GB', '512MiB') is converted."""
    try:
        return parse_number(text)
    except ValueError:
        return parse_size(text) / 10**6


def parse_rate(text: str) -> int:
    """Bytes per second: a size, with '/s' or without ('10KB', '10KB/s' -> 10_000; '10240')."""
    return parse_size(re.sub(r"/\s*s\s*$", "", text.strip(), flags=re.IGNORECASE))


@dataclass(frozen=True)
class Kind:
    parse: Callable[[str], Any]
    accepts: str  # what the user may write, for the error message


SIZE = Kind(parse_size, "a size such as 2GB, 500MB, 1.5GiB or a number of bytes")
DURATION = Kind(parse_duration, "a duration such as 90s, 5m, 2h or a number of seconds")
WHOLE = Kind(parse_whole, "a whole number")
NUMBER = Kind(parse_number, "a number")
MEGABYTES = Kind(parse_megabytes, "a number of megabytes or a size such as 256MB")


@dataclass(frozen=True)
class Field:
    """One setting: where it sits in Settings, its environment variable, its command-line spelling and its range."""

    path: str  # "probe_workers", "limits.max_bytes", "split.workers"
    env: str
    kind: Kind
    minimum: float | None = None
    above: bool = False  # the minimum itself is not allowed
    maximum: float | None = None
    option: str | None = None  # command-line spelling, when there is one

    @property
    def names(self) -> str:
        return f"{self.env} ({self.option})" if self.option else self.env

    def accepts(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            bound = f" ({self.minimum:g} to {self.maximum:g})"
        elif self.minimum is not None:
            bound = f" (more than {self.minimum:g})" if self.above else f" (at least {self.minimum:g})"
        else:
            bound = ""
        return self.kind.accepts + bound

    def parse(self, text: str) -> Any:
        """The value of `text`; SettingError naming this setting and what it accepts when it is not one."""
        try:
            value = self.kind.parse(str(text))
        except ValueError:
            value = None
        if value is None or not self._in_range(value):
            raise SettingError(f"{self.names}: expected {self.accepts()}, not {str(text)!r}")
        return value

    def _in_range(self, value: float) -> bool:
        if self.minimum is not None and (value < self.minimum or (self.above and value == self.minimum)):
            return False
        return self.maximum is None or value <= self.maximum


def _limit(name: str, kind: Kind, minimum: float, above: bool = False) -> Field:
    return Field(f"limits.{name}", f"COGFLOW_{name.upper()}", kind, minimum, above, option=f"--limit {name}")


# Every number cogflow reads from its environment or command line, with the range it must fall in.
FIELDS: tuple[Field, ...] = (
    Field("probe_workers", "COGFLOW_PROBE_WORKERS", WHOLE, 1, option="cogflow ingest --workers"),
    Field("val_percent", "COGFLOW_VAL_PERCENT", WHOLE, 0, maximum=100),
    _limit("max_bytes", SIZE, 0, above=True),
    _limit("max_width", WHOLE, 1),
    _limit("max_height", WHOLE, 1),
    _limit("max_pixels", WHOLE, 1),
    _limit("max_aspect_ratio", NUMBER, 1),
    _limit("max_duration_s", DURATION, 0, above=True),
    _limit("min_duration_s", DURATION, 0),
    _limit("min_caption_chars", WHOLE, 0),
    _limit("max_caption_chars", WHOLE, 1),
    _limit("span_tolerance_s", DURATION, 0),
    _limit("download_timeout_s", DURATION, 0, above=True),
    _limit("download_retries", WHOLE, 0),
    _limit("probe_timeout_s", DURATION, 0, above=True),
    Field("limits.scan", "COGFLOW_SCAN", WHOLE, 0, maximum=1, option="--limit scan"),
    _limit("near_duplicate_bits", WHOLE, 0),
    Field("split.stage1_windows", "COGFLOW_STAGE1_WINDOWS", WHOLE, 1),
    Field("split.stage2_windows", "COGFLOW_STAGE2_WINDOWS", WHOLE, 1),
    Field("split.window_step", "COGFLOW_WINDOW_STEP", WHOLE, 1),
    Field("split.shard_mb", "COGFLOW_SHARD_MB", MEGABYTES, 0, above=True),
    Field("split.shard_videos", "COGFLOW_SHARD_VIDEOS", WHOLE, 1),
    Field("split.workers", "COGFLOW_SPLIT_WORKERS", WHOLE, 1, option="cogflow split --workers"),
    Field("split.decode_threads", "COGFLOW_DECODE_THREADS", WHOLE, 0),
    Field("split.video_timeout_s", "COGFLOW_VIDEO_TIMEOUT_S", DURATION, 0, above=True),
    Field("split.seek_gap_s", "COGFLOW_SEEK_GAP_S", DURATION, 0),
    Field("split.min_motion", "COGFLOW_MIN_MOTION", NUMBER, 0, maximum=1),
    # Read where they are used (flows/launch.py; pipeline/storage.py's download_policy, through these fields, on
    # every fetch), checked here too so that a bad value stops a command before it starts.
    Field("", "COGFLOW_GPU_SLOTS", WHOLE, 1),
    Field("", "COGFLOW_DOWNLOAD_DEADLINE_S", DURATION, 0, above=True),
    Field(
        "", "COGFLOW_DOWNLOAD_MIN_RATE", Kind(parse_rate, "a rate in bytes per second such as 10KB, 10KB/s or 10240"), 0
    ),
)
FIELD_BY_PATH = {f.path: f for f in FIELDS if f.path}
ENV_LIMITS = {f.path.removeprefix("limits."): f.env for f in FIELDS if f.path.startswith("limits.")}
ENV_SPLIT = {f.path.removeprefix("split."): f.env for f in FIELDS if f.path.startswith("split.")}
# pairs that must be in order: (smaller, larger)
_ORDERED: tuple[tuple[str, str], ...] = (
    ("limits.min_duration_s", "limits.max_duration_s"),
    ("limits.min_caption_chars", "limits.max_caption_chars"),
)


def _default(path: str) -> Any:
    section, _, name = path.rpartition(".")
    return getattr({"": Settings(), "limits": Limits(), "split": SplitOptions()}[section], name)


def limit_field(name: str) -> Field:
    """The Field of an ingest limit by its short name (`--limit NAME=VALUE`); KeyError when there is none."""
    return FIELD_BY_PATH[f"limits.{name}"]


# ---------------------------------------------------------------------------------------------------------------
# Places


def lake_problem(uri: str) -> str | None:
    """Why `uri` cannot be a lake, without touching the network (None when it can): a lake is a folder (or a path
    where one can be made) or s3://bucket[/prefix]."""
    if uri.startswith("s3://"):
        bucket = uri[5:].split("/", 1)[0]
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket) or ".." in bucket:
            return f"{uri} does not name an S3 bucket (s3://bucket/prefix, bucket names are 3-63 lower-case letters, digits, '.' or '-')"
        return None
    if "://" in uri and not uri.startswith("file://"):
        return f"{uri} is neither a folder nor s3://bucket/prefix"
    return folder_problem(uri.removeprefix("file://"))


def folder_problem(path: str) -> str | None:
    """Why the local `path` cannot be a folder (it, or a folder it would be made in, is a file); None when it can."""
    target = Path(path).expanduser()
    for place in (target, *target.parents):
        if place.exists():
            if not place.is_dir():
                return f"{path} is a file" if place == target else f"{path} cannot be made: {place} is a file"
            return None
    return None


def check_lake_reachable(uri: str, timeout_s: float = 10.0) -> str | None:
    """For an s3:// lake, whether its bucket exists and can be reached with the credentials at hand; the reason in
    one line when not (None when it can, and for local lakes)."""
    if not uri.startswith("s3://"):
        return None
    import boto3
    import botocore.config
    import botocore.exceptions

    bucket = uri[5:].split("/", 1)[0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    where = f" at {endpoint}" if endpoint else ""
    config = botocore.config.Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2})
    try:
        boto3.client("s3", endpoint_url=endpoint, config=config).head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return f"the S3 bucket {bucket!r} of {uri} does not exist{where}"
        if code in ("403", "AccessDenied", "Forbidden"):
            return f"access to the S3 bucket {bucket!r} of {uri} is denied{where} (check the AWS credentials)"
        return f"the S3 bucket {bucket!r} of {uri} cannot be used{where}: {code or exc}"
    except botocore.exceptions.NoCredentialsError:
        return f"no AWS credentials found for {uri} (AWS_ACCESS_KEY_ID / AWS_PROFILE / the AWS chain)"
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:  # unreachable endpoint, bad endpoint URL, ...
        return f"S3{where} cannot be reached for {uri}: {str(exc).splitlines()[0]}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Loading


def read_settings(**overrides: Any) -> tuple[Settings, dict[str, str]]:
    """Defaults, then the environment, then `overrides` (None means "not given"); and the problems found, one line
    each by the setting's env name. A setting with a problem keeps its default, so `cogflow status` can still show
    what it can."""
    env = os.environ
    problems: dict[str, str] = {}
    values: dict[str, Any] = {}
    for f in FIELDS:
        text = env.get(f.env, "").strip()
        if not text:
            continue
        try:
            value = f.parse(text)
        except SettingError as exc:
            problems[f.env] = str(exc)
            continue
        if f.path:
            values[f.path] = value
    for smaller, larger in _ORDERED:  # against the default when only one of the pair is set
        low, high = FIELD_BY_PATH[smaller], FIELD_BY_PATH[larger]
        low_value, high_value = (values.get(f.path, _default(f.path)) for f in (low, high))
        if low_value > high_value:
            problems[low.env] = f"{low.names}: expected at most {high.env} ({high_value:g}), not {low_value:g}"
            values.pop(smaller, None)
            values.pop(larger, None)

    home = overrides.pop("home", None) or env.get("COGFLOW_HOME") or ".cogflow"
    lake = overrides.pop("lake", None) or env.get("COGFLOW_LAKE") or str(Path(home) / "lake")
    if (why := folder_problem(home)) is not None:
        problems["COGFLOW_HOME"] = f"COGFLOW_HOME (--home): expected a folder, but {why}"
    if (why := lake_problem(lake)) is not None:
        problems["COGFLOW_LAKE"] = f"COGFLOW_LAKE (--lake): expected a folder or s3://bucket/prefix, but {why}"
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    if endpoint and not re.match(r"https?://[^/\s]+", endpoint):
        name = "AWS_ENDPOINT_URL_S3" if env.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
        problems[name] = f"{name} (--s3-endpoint): expected an http:// or https:// URL, not {endpoint!r}"
        endpoint = None

    def section(defaults: Any, prefix: str) -> Any:
        chosen = {p.removeprefix(prefix): v for p, v in values.items() if p.startswith(prefix)}
        return dataclasses.replace(defaults, **chosen)

    settings = Settings(
        home=home,
        lake=lake,
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(home) / 'mlflow.db'}",
        s3_endpoint=endpoint,
        allowed_roots=tuple(p for p in env.get("COGFLOW_ALLOWED_ROOTS", "").split(os.pathsep) if p),
        probe_workers=values.get("probe_workers", Settings.probe_workers),
        val_percent=values.get("val_percent", Settings.val_percent),
        limits=section(Limits(), "limits."),
        split=section(SplitOptions(), "split."),
    )
    return settings.replace(**overrides), problems


def load_settings(**overrides: Any) -> Settings:
    """Defaults, then the environment, then `overrides` (None means "not given"). SettingError, one line per bad
    setting, when a setting holds a value it does not accept."""
    settings, problems = read_settings(**overrides)
    if problems:
        raise SettingError("\n".join(problems.values()))
    return settings
