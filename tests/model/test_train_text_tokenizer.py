"""Training the text tokenizer from a real lake into a real MLflow sqlite store, and loading it back."""

from __future__ import annotations

import dataclasses

import mlflow
from helpers import copy_sample, write_csv

from cogflow.model.serving import registry
from cogflow.model.tokenizers.text import TextTokenizer
from cogflow.model.tokenizers.train_text import TextTokenizerConfig, train_text_tokenizer
from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.settings import load_settings


def test_trained_on_the_lake_registered_skipped_when_known_and_loadable(tmp_path, sample_dir, monkeypatch):
    data = tmp_path / "data"
    rows = copy_sample(sample_dir, data)
    extra = [{"video": rows[0]["video"], "caption": "全角标点：“你好”，（测试）！", "start_s": 0, "end_s": 1}]
    manifest = write_csv(data / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows] + extra)
    settings = dataclasses.replace(load_settings(home=str(tmp_path / "home")), val_percent=0)
    ingest(str(manifest), settings)

    first = train_text_tokenizer(settings, TextTokenizerConfig(vocab_size=5000))
    assert first.trained and first.version == "1" and first.captions == 5
    assert "clamped" in first.note and first.vocab_size < 5000
    run = mlflow.get_run(first.run_id)
    assert run.data.params["vocab_size"] == "5000" and run.data.metrics["train/round_trip_exact"] == 1.0
    assert run.data.metrics["vocab_size"] == first.vocab_size
    assert (tmp_path / "home" / "mlflow.db").exists() and (tmp_path / "home" / "mlartifacts").is_dir()

    again = train_text_tokenizer(settings, TextTokenizerConfig(vocab_size=5000))
    assert not again.trained and again.version == "1"
    other = train_text_tokenizer(settings, TextTokenizerConfig(vocab_size=4000))
    assert other.trained and other.version == "2"

    model = mlflow.pyfunc.load_model(f"models:/{registry.TEXT_TOKENIZER}/1")
    file = registry.download(registry.TEXT_TOKENIZER, "1", "text.model", tmp_path / "dl")
    tokenizer = TextTokenizer.load(file)
    text = "全角标点：“你好”，（测试）！"
    assert model.predict([text]) == [tokenizer.encode(text)]
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_artifacts_go_to_s3_by_configuration_alone(tmp_path, sample_dir, s3, monkeypatch):
    """COGFLOW_ARTIFACTS=s3://… (endpoint from AWS_ENDPOINT_URL_S3, as everywhere in cogflow): the model lands on S3."""
    monkeypatch.setenv("COGFLOW_ARTIFACTS", f"s3://{s3.bucket}/mlartifacts")
    rows = copy_sample(sample_dir, tmp_path / "data")
    manifest = write_csv(tmp_path / "data" / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    settings = dataclasses.replace(load_settings(home=str(tmp_path / "home")), val_percent=0)
    ingest(str(manifest), settings)
    result = train_text_tokenizer(settings, TextTokenizerConfig(vocab_size=3000))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3.bucket, Prefix="mlartifacts/")["Contents"]]
    assert any(k.endswith("/artifacts/text.model") for k in keys)
    assert not (tmp_path / "home" / "mlartifacts").exists()
    model = mlflow.pyfunc.load_model(f"models:/{registry.TEXT_TOKENIZER}/{result.version}")
    assert model.predict(["a cat"])[0]
