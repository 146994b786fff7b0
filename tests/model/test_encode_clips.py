"""Encoding every clip of a real lake into token rows with registered tokenizers: complete, exact, incremental,
restartable after a kill at any moment."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import lake_settings, tokenized_home

from cogflow.model.serving import registry
from cogflow.model.tokenizers.encode import encode_clips, load_tokenizers, worker_device
from cogflow.model.tokenizers.text import TextTokenizer
from cogflow.model.tokenizers.train_text import TextTokenizerConfig, train_text_tokenizer
from cogflow.pipeline import checks, lake
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.sample_data import generate_sample_data
from cogflow.pipeline.settings import load_settings
from cogflow.pipeline.split import split
from cogflow.pipeline.storage import Storage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, sample_dir) -> Path:
    """A home whose lake is split and whose MLflow registry holds both tokenizers (version 1 of each)."""
    return tokenized_home(tmp_path_factory.mktemp("encode"), sample_dir)


@pytest.fixture
def home(tokenized: Path, tmp_path: Path) -> Path:
    """A copy of the tokenized home for one test (the artifacts stay where the registry says they are)."""
    return Path(shutil.copytree(tokenized, tmp_path / "home"))


def fingerprint(settings) -> pa.Table:
    return lake.read_tokens(Storage.at(settings.lake), "1").sort_by("clip_id")


def run_checks(settings) -> list[str]:
    return checks.check_lake(Storage.at(settings.lake))


def test_every_clip_becomes_one_exact_token_row(home: Path) -> None:
    settings = lake_settings(home)
    store = Storage.at(settings.lake)
    result = encode_clips(settings, progress=False)
    clips = lake.read_clips(store).sort_by("clip_id")
    assert (result.frame_tokenizer_version, result.text_tokenizer_version) == ("1", "1")
    assert result.clips == clips.num_rows and result.files_encoded == len(lake.clip_parts(store)) >= 4
    assert result.stages == {s: sum(1 for x in clips["stage"].to_pylist() if x == s) for s in (1, 2)}

    tokens = fingerprint(settings)
    assert tokens["clip_id"].to_pylist() == clips["clip_id"].to_pylist()
    tokenizers = load_tokenizers(settings)
    frames_model = mlflow.pyfunc.load_model(f"models:/{registry.FRAME_TOKENIZER}/1")
    for clip, row in zip(clips.to_pylist()[:6], tokens.to_pylist()[:6]):
        ids, mask = np.array(row["text_ids"]), np.array(row["text_mask"])
        assert len(ids) == len(mask) == 64 and not mask[: 64 - mask.sum()].any() and (ids[~mask] == 0).all()
        assert tokenizers.text.decode(ids) == clip["caption"]  # left-padded pieces decode to the exact caption
        assert tokenizers.text.sp.id_to_piece(row["fps_token_id"]) == clip["fps_token"]
        codes = np.frombuffer(row["frame_codes"], "<i2").reshape(5, row["code_grid"], row["code_grid"])
        frames = np.frombuffer(clip["frames"], np.uint8).reshape(5, 160, 160, 3)
        assert row["code_grid"] == 10 and np.array_equal(codes, frames_model.predict(frames))
        assert (row["stage"], row["fps"], row["split"], row["caption_id"]) == (
            clip["stage"],
            clip["fps"],
            clip["split"],
            clip["caption_id"],
        )
    assert "checks/token_shards_account_for_clips" in run_checks(settings)

    again = encode_clips(settings, progress=False)
    assert again.files_encoded == 0 and again.files_done_before == result.files_encoded


def test_only_new_clips_are_encoded_and_a_new_text_tokenizer_redoes_all(home: Path, tmp_path: Path) -> None:
    settings = lake_settings(home)
    store = Storage.at(settings.lake)
    first = encode_clips(settings, progress=False)
    before = {p: (Path(settings.lake) / p).stat().st_mtime_ns for p in lake.token_parts(store, "1")}

    more = tmp_path / "more"
    generate_sample_data(more, 2, seed=99, min_duration_s=2.0, max_duration_s=3.0)
    ingest(str(more / "manifest.csv"), settings)
    split(settings)
    grown = encode_clips(settings, progress=False)
    assert grown.files_done_before == first.files_encoded and 0 < grown.files_encoded
    assert grown.clips == lake.read_clips(store).num_rows - first.clips
    assert all((Path(settings.lake) / p).stat().st_mtime_ns == t for p, t in before.items())  # old files untouched

    train_text_tokenizer(settings, TextTokenizerConfig(vocab_size=300))  # version 2, on the grown captions
    redone = encode_clips(settings, progress=False)
    assert redone.text_tokenizer_version == "2" and redone.files_done_before == 0
    assert redone.clips == lake.read_clips(store).num_rows
    assert set(fingerprint(settings)["text_tokenizer_version"].to_pylist()) == {"2"}
    run_checks(settings)


def test_half_written_files_are_ignored_then_redone_and_checks_catch_a_bad_record(home: Path) -> None:
    settings = lake_settings(home)
    store = Storage.at(settings.lake)
    encode_clips(settings, progress=False)
    expected = fingerprint(settings)
    record = store.list_files("token_shards/v1", ".parquet")[0]
    tokens = record.replace("token_shards/", "tokens/", 1)
    (Path(settings.lake) / record).unlink()  # as if killed between the token file and its record
    (Path(settings.lake) / tokens).write_bytes(b"not parquet")  # ... or in the middle of the token file
    assert lake.read_tokens(store, "1").num_rows < expected.num_rows  # not read without its record
    assert encode_clips(settings, progress=False).files_encoded == 1
    assert fingerprint(settings).equals(expected)

    rows = pq.read_table(Path(settings.lake) / record).to_pylist()
    rows[0]["clips"] += 1
    pq.write_table(pa.Table.from_pylist(rows, schema=lake.TOKEN_SHARDS), Path(settings.lake) / record)
    with pytest.raises(checks.DataCheckError, match="token rows differ from the clips"):
        run_checks(settings)


KILL_MOMENTS = ["after 1.5", "a token file", "a record", "after 3.0", "two records"]


def _run_and_kill(home: Path, when: str) -> int:
    env = {**os.environ, "COGFLOW_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cogflow.model.tokenizers.encode", "--batch-clips", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lake_dir, started = home / "lake", time.monotonic()
    conditions = {
        "a token file": lambda: any(lake_dir.glob("tokens/v1/stage=*/shard-*.parquet")),
        "a record": lambda: any(lake_dir.glob("token_shards/v1/stage=*/*.parquet")),
        "two records": lambda: len(list(lake_dir.glob("token_shards/v1/stage=*/*.parquet"))) >= 2,
    }
    while proc.poll() is None:
        if (
            when.startswith("after ")
            and time.monotonic() - started > float(when.split()[1])
            or when in conditions
            and conditions[when]()
        ):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    return proc.wait()


def test_an_encode_killed_at_any_moment_ends_like_an_uninterrupted_one(home: Path, tokenized: Path) -> None:
    settings = lake_settings(home)
    reference = encode_clips(lake_settings(Path(shutil.copytree(tokenized, home.parent / "reference"))), progress=False)
    expected = lake.read_tokens(Storage.at(str(home.parent / "reference" / "lake")), "1").sort_by("clip_id")
    codes = [_run_and_kill(home, when) for when in KILL_MOMENTS]
    assert codes.count(-signal.SIGKILL) >= 3, codes  # most runs were really killed part way
    assert _run_and_kill(home, "never") == 0
    assert fingerprint(settings).equals(expected) and expected.num_rows == reference.clips
    run_checks(settings)
    print("exit codes of the killed runs:", codes)


def test_unknown_versions_and_an_empty_registry_are_clear_errors(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no version 7"):
        encode_clips(lake_settings(home), frame_version="7", progress=False)
    with pytest.raises(ValueError, match="no version of cogflow-text-tokenizer is registered"):
        encode_clips(load_settings(home=str(tmp_path / "empty")), progress=False)


def test_text_ids_decode_for_chinese_and_english(home: Path) -> None:
    tokenizer = load_tokenizers(lake_settings(home)).text
    assert isinstance(tokenizer, TextTokenizer)
    for text in ("一个下午在海滩上奔跑的女人", "A woman running on the beach in the afternoon."):
        ids, mask, _ = tokenizer.encode_batch([text], 64)
        assert tokenizer.decode(ids[0]) == text


def test_encode_workers_spread_over_the_gpus_of_their_machine(monkeypatch) -> None:
    import torch

    assert [worker_device(slot) for slot in range(3)] == (
        [f"cuda:{s % torch.cuda.device_count()}" for s in range(3)] if torch.cuda.is_available() else ["cpu"] * 3
    )
    # a machine with 4 GPUs (what CUDA would report there): workers 0-3 one GPU each, worker 5 shares GPU 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [worker_device(slot) for slot in (0, 1, 2, 3, 5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:1"]
