"""Settings: defaults, then environment variables, then explicit overrides (the command line)."""

from __future__ import annotations

import pytest

from flows.cli import apply_options, build_parser
from pipeline.settings import Limits, load_settings


def test_defaults_derive_from_home(monkeypatch):
    for name in ("COGFLOW_HOME", "COGFLOW_LAKE", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.home, s.lake, s.mlflow_tracking_uri, s.s3_endpoint) == (".cogflow", ".cogflow/lake", "sqlite:///.cogflow/mlflow.db", None)
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
        ["--home", "/h", "--s3-endpoint", "http://127.0.0.1:5055", "--limit", "max_pixels=2000000", "--limit", "max_bytes=5e8",
         "ingest", "m.csv", "--lake", "/from/cli", "--workers", "2"]
    )
    apply_options(args)
    s = load_settings()
    assert (s.home, s.lake, s.probe_workers, s.s3_endpoint) == ("/h", "/from/cli", 2, "http://127.0.0.1:5055")
    assert (s.limits.max_pixels, s.limits.max_bytes) == (2_000_000, 500_000_000)


def test_unknown_limit_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--limit", "max_speed=3", "status"])
    assert "max_bytes" in capsys.readouterr().err
