"""`cogflow tokenize text` on the Prefect test harness: trains, registers, and says so; a re-run finds it."""

from __future__ import annotations

from helpers import copy_sample, write_csv

from flows.cli import main


def test_cli_tokenize_text_registers_once(tmp_path, capsys, monkeypatch, sample_dir):
    monkeypatch.setenv("COGFLOW_HOME", str(tmp_path / "home"))
    assert main(["tokenize", "text", "--lake", str(tmp_path / "empty-lake")]) == 2
    assert "no train captions" in capsys.readouterr().err

    rows = copy_sample(sample_dir, tmp_path / "data")
    manifest = write_csv(tmp_path / "data" / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    assert main(["ingest", str(manifest)]) == 0
    assert main(["tokenize", "text", "--vocab-size", "3000"]) == 0
    out = capsys.readouterr().out
    assert "cogflow-text-tokenizer v1: trained and registered" in out and "clamped" in out
    assert main(["tokenize", "text", "--vocab-size", "3000"]) == 0
    assert "v1: already registered" in capsys.readouterr().out
