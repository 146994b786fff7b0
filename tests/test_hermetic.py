"""The suite is hermetic: with a user's live MLflow, cogflow, AWS and Prefect settings in the environment, tests pass
and leave the user's files as they were (tests/conftest.py clears those settings before anything imports them)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# One test of each kind that reads these settings, chosen for speed: a tokenizer registered in MLflow (sqlite store
# under its own home), the Prefect harness running `cogflow ingest`, and a lake on moto's S3.
REPRESENTATIVE = [
    "tests/model/test_train_text_tokenizer.py::test_trained_on_the_lake_registered_skipped_when_known_and_loadable",
    "tests/flows/test_ingest_flow.py::test_cli_reports_usage_errors_without_a_traceback",
    "tests/pipeline/test_storage.py::test_lake_on_s3_round_trip",
]


def _user_setup(user: Path) -> dict[str, str]:
    """A user's folder with an MLflow store, a cogflow home, AWS files and a Prefect profile; the variables that point
    at them, as a user's shell has them."""
    for folder in ("home", "cogflow", "aws", "prefect"):
        (user / folder).mkdir(parents=True)
    with sqlite3.connect(user / "mlflow.db") as db:  # stands for the user's tracking store: it must not change
        db.execute("create table experiments (name text)")
        db.execute("insert into experiments values ('the user''s work')")
    db.close()
    (user / "aws" / "config").write_text("[profile work]\nregion = eu-west-3\n")
    (user / "aws" / "credentials").write_text(
        "[work]\naws_access_key_id = AKIAUSERUSERUSER\naws_secret_access_key = user\n"
    )
    (user / "prefect" / "profiles.toml").write_text(
        'active = "work"\n\n[profiles.work]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\nPREFECT_API_KEY = "pnu_user"\n'
    )
    return {
        "HOME": str(user / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{user / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{user / 'mlflow.db'}",
        "MLFLOW_EXPERIMENT_NAME": "users-experiment",
        "COGFLOW_HOME": str(user / "cogflow"),
        "COGFLOW_LAKE": str(user / "cogflow" / "lake"),
        "COGFLOW_ARTIFACTS": str(user / "cogflow" / "artifacts"),
        "COGFLOW_MAX_BYTES": "10",  # a limit of the user's that would reject every test video
        "AWS_ACCESS_KEY_ID": "AKIAUSERUSERUSER",
        "AWS_SECRET_ACCESS_KEY": "user-secret",
        "AWS_SESSION_TOKEN": "user-session",
        "AWS_PROFILE": "work",
        "AWS_CONFIG_FILE": str(user / "aws" / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(user / "aws" / "credentials"),
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "eu-west-3",
        "PREFECT_API_URL": "http://127.0.0.1:9/api",  # a dead port: a test that reaches it fails
        "PREFECT_HOME": str(user / "prefect"),
        "PREFECT_PROFILES_PATH": str(user / "prefect" / "profiles.toml"),
    }


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under `folder` with its size, modification time and content hash."""
    return {
        str(p.relative_to(folder)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
        )
        for p in sorted(folder.rglob("*"))
    }


def test_live_user_settings_neither_break_the_tests_nor_get_touched(tmp_path: Path) -> None:
    user = tmp_path / "user"
    live = _user_setup(user)
    before = _snapshot(user)
    env = {**os.environ, **live}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "basetemp"),
            *REPRESENTATIVE,
        ],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "3 passed" in run.stdout
    assert _snapshot(user) == before, "the tests wrote into the user's folder"
