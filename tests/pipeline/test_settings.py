"""Settings: defaults, then environment variables, then explicit overrides (the command line); every value checked,
with units, and every bad one a line naming it."""

from __future__ import annotations

import pytest

from cogflow.flows.cli import apply_options, build_parser, main
from cogflow.pipeline.settings import (
    Limits,
    SettingError,
    load_settings,
    parse_duration,
    parse_size,
)


def test_defaults_derive_from_home(monkeypatch):
    for name in ("COGFLOW_HOME", "COGFLOW_LAKE", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.home, s.lake, s.mlflow_tracking_uri, s.s3_endpoint) == (
        ".cogflow",
        ".cogflow/lake",
        "sqlite:///.cogflow/mlflow.db",
        None,
    )
    monkeypatch.setenv("COGFLOW_HOME", "/srv/cf")
    s = load_settings()
    assert (s.lake, s.mlflow_tracking_uri) == ("/srv/cf/lake", "sqlite:////srv/cf/mlflow.db")
    assert s.limits == Limits()


def test_environment_then_overrides(monkeypatch):
    monkeypatch.setenv("COGFLOW_LAKE", "s3://bucket/lake")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://fallback:9000")
    monkeypatch.setenv("COGFLOW_MAX_BYTES", "1e6")
    monkeypatch.setenv("COGFLOW_SPAN_TOLERANCE_S", "0.5")
    monkeypatch.setenv("COGFLOW_ALLOWED_ROOTS", "/data/a:/data/b")
    s = load_settings()
    assert s.lake == "s3://bucket/lake" and s.s3_endpoint == "http://fallback:9000"
    assert s.limits.max_bytes == 1_000_000 and s.limits.span_tolerance_s == 0.5
    assert s.allowed_roots == ("/data/a", "/data/b")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:9000")
    assert load_settings().s3_endpoint == "http://s3-only:9000"  # the S3-specific variable wins
    assert load_settings(lake="/tmp/other", probe_workers=None).lake == "/tmp/other"


def test_command_line_options_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("COGFLOW_LAKE", "/from/env")
    monkeypatch.setenv("COGFLOW_MAX_PIXELS", "100")
    args = build_parser().parse_args(
        [
            "--home",
            "/h",
            "--s3-endpoint",
            "http://127.0.0.1:5055",
            "--limit",
            "max_pixels=2000000",
            "--limit",
            "max_bytes=5e8",
            "ingest",
            "m.csv",
            "--lake",
            "/from/cli",
            "--workers",
            "2",
        ]
    )
    apply_options(args)
    s = load_settings()
    assert (s.home, s.lake, s.probe_workers, s.s3_endpoint) == ("/h", "/from/cli", 2, "http://127.0.0.1:5055")
    assert (s.limits.max_pixels, s.limits.max_bytes) == (2_000_000, 500_000_000)


def test_unknown_limit_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--limit", "max_speed=3", "status"])
    assert "max_bytes" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Validation: units, ranges, and one line per user error (exit code 2, no traceback)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2GB", 2_000_000_000),
        ("500MB", 500_000_000),
        ("1.5GiB", 1_610_612_736),
        ("4096", 4096),
        ("1e9", 10**9),
        ("500 mb", 500_000_000),
        ("64KiB", 65_536),
        ("3B", 3),
    ],
)
def test_sizes_take_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1.5", 1.5),
        ("45", 45.0),
    ],
)
def test_durations_take_units(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "env, value",
    [
        ("COGFLOW_PROBE_WORKERS", "abc"),
        ("COGFLOW_PROBE_WORKERS", "0"),
        ("COGFLOW_PROBE_WORKERS", "2.5"),
        ("COGFLOW_MAX_BYTES", "-5"),
        ("COGFLOW_MAX_BYTES", "2 gigs"),
        ("COGFLOW_MAX_BYTES", "0"),
        ("COGFLOW_VIDEO_TIMEOUT_S", "0s"),
        ("COGFLOW_DOWNLOAD_TIMEOUT_S", "soon"),
        ("COGFLOW_VAL_PERCENT", "101"),
        ("COGFLOW_SPLIT_WORKERS", "0"),
        ("COGFLOW_SHARD_MB", "-1"),
        ("COGFLOW_GPU_SLOTS", "none"),
        ("COGFLOW_MIN_DURATION_S", "5h"),  # above the default longest duration (4 h)
    ],
)
def test_a_bad_environment_value_is_one_line_naming_it(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(env) and "expected" in message and "\n" not in message


def test_environment_values_with_units(monkeypatch):
    monkeypatch.setenv("COGFLOW_MAX_BYTES", "1.5GiB")
    monkeypatch.setenv("COGFLOW_MAX_DURATION_S", "2h")
    monkeypatch.setenv("COGFLOW_VIDEO_TIMEOUT_S", "5m")
    monkeypatch.setenv("COGFLOW_SHARD_MB", "1GB")
    s = load_settings()
    assert (s.limits.max_bytes, s.limits.max_duration_s, s.split.video_timeout_s, s.split.shard_mb) == (
        1_610_612_736,
        7200.0,
        300.0,
        1000.0,
    )


def _one_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_cli_usage_errors_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,caption\nv.mp4,a caption\n")
    cases = {
        ("--limit", "max_bytes=-5", "ingest", str(manifest)): "max_bytes: expected a size",
        ("--limit", "max_bytes=lots", "ingest", str(manifest)): "max_bytes: expected a size",
        ("ingest", str(manifest), "--workers", "0"): "--workers: expected a whole number (at least 1), not '0'",
        (
            "ingest",
            str(manifest),
            "--lake",
            str(manifest),
        ): f"--lake: expected a folder or s3://bucket/prefix, but {manifest} is a file",
        ("split", "--workers", "none"): "--workers: expected a whole number",
    }
    for argv, expected in cases.items():
        with pytest.raises(SystemExit) as raised:
            main(list(argv))
        assert raised.value.code == 2 and expected in _one_line(capsys.readouterr().err), argv
    monkeypatch.setenv("COGFLOW_PROBE_WORKERS", "abc")
    assert main(["ingest", str(manifest)]) == 2
    assert _one_line(capsys.readouterr().err) == (
        "cogflow ingest: COGFLOW_PROBE_WORKERS (cogflow ingest --workers): "
        "expected a whole number (at least 1), not 'abc'\n"
    )
    assert not (tmp_path / "home").exists()  # refused before any work


def test_limit_with_units_is_accepted(monkeypatch):
    args = build_parser().parse_args(["--limit", "max_bytes=2GB", "--limit", "download_timeout_s=90s", "status"])
    apply_options(args)
    limits = load_settings().limits
    assert (limits.max_bytes, limits.download_timeout_s) == (2_000_000_000, 90.0)  # GB: 10^9 bytes (GiB: 2^30)


def test_status_reports_a_bad_setting_in_one_line_and_still_shows_the_lake(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COGFLOW_PROBE_WORKERS", "abc")
    assert main(["status"]) == 2
    out, err = capsys.readouterr()
    assert "videos" in out and "captions" in out
    assert "COGFLOW_PROBE_WORKERS" in _one_line(err)


def test_a_lake_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a lake")
    monkeypatch.setenv("COGFLOW_LAKE", str(tmp_path / "file" / "lake"))
    assert main(["status"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"{tmp_path / 'file'} is a file" in _one_line(err)


def test_an_s3_lake_whose_bucket_does_not_exist_is_one_line(s3, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COGFLOW_LAKE", "s3://nobucket")
    assert main(["status"]) == 2
    assert "the S3 bucket 'nobucket' of s3://nobucket does not exist" in _one_line(capsys.readouterr().err)
    assert main(["split", "--lake", "s3://nobucket/lake"]) == 2
    assert _one_line(capsys.readouterr().err).startswith("cogflow split: --lake: the S3 bucket 'nobucket'")
    monkeypatch.setenv("COGFLOW_LAKE", f"s3://{s3.bucket}/lake")
    assert main(["status"]) == 0
    assert f"lake s3://{s3.bucket}/lake" in capsys.readouterr().out
