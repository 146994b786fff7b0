"""Train the text tokenizer on the lake's captions (train split), track it in MLflow and register it.

    python -m cogflow.model.tokenizers.train_text [--vocab-size N]      (or `cogflow tokenize text`)

A training that the registry already holds (same captions, same config) is skipped: its version is returned.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cogflow.model import tracking
from cogflow.model.serving import registry
from cogflow.model.tokenizers.text import TextTokenizer
from cogflow.pipeline import lake
from cogflow.pipeline.contract import TEXT_SLOTS, TEXT_TOKENIZER_FILE, naming_hash
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.storage import Storage


@dataclass(frozen=True)
class TextTokenizerConfig:
    vocab_size: int = 16000
    model_type: str = "unigram"
    text_slots: int = TEXT_SLOTS
    # Pieces never span two words (model/tokenizers/text.py). Part of the config hash, so a lake whose registered
    # tokenizer predates it trains a new one rather than skipping.
    words: bool = True


@dataclass(frozen=True)
class TextTokenizerResult:
    version: str  # registered version of cogflow-text-tokenizer
    run_id: str
    trained: bool  # False when an identical training was registered already
    vocab_size: int
    captions: int
    note: str


def _byte_share(tokenizer: TextTokenizer, ids: list[list[int]]) -> float:
    flat = [i for row in ids for i in row]
    return sum(tokenizer.sp.is_byte(i) for i in flat) / max(len(flat), 1)


def measure(tokenizer: TextTokenizer, captions: list[dict], slots: int) -> dict[str, float]:
    """What the tokenizer does to captions: pieces per caption (per language), truncation, byte fallback,
    and whether every caption comes back exactly."""
    texts = [c["caption"] for c in captions]
    ids = [tokenizer.encode(t) for t in texts]
    lengths = np.array([len(i) for i in ids])
    metrics = {
        "captions": len(texts),
        "pieces_per_caption": float(lengths.mean()) if len(lengths) else 0.0,
        "truncated_share": float((lengths > slots).mean()) if len(lengths) else 0.0,
        "byte_fallback_share": _byte_share(tokenizer, ids),
        "round_trip_exact": float(np.mean([tokenizer.decode(i) == t for i, t in zip(ids, texts)])) if texts else 1.0,
    }
    for language in ("zh", "en"):
        chosen = [n for n, c in zip(lengths, captions) if c["language"] == language]
        if chosen:
            metrics[f"pieces_per_caption_{language}"] = float(np.mean(chosen))
    return metrics


def train_text_tokenizer(
    settings: Settings, config: TextTokenizerConfig = TextTokenizerConfig()
) -> TextTokenizerResult:
    captions = lake.read_table(
        Storage.at(settings.lake), "captions", ["caption_id", "caption", "language", "split"]
    ).to_pylist()
    train = sorted((c for c in captions if c["split"] == "train"), key=lambda c: c["caption_id"])
    val = [c for c in captions if c["split"] == "val"]
    if not train:
        raise ValueError(f"the lake at {settings.lake} has no train captions: ingest a manifest first")
    data_hash = naming_hash([c["caption_id"] for c in train])
    config_hash = naming_hash(asdict(config))
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    known = registry.find_version(registry.TEXT_TOKENIZER, data_hash, config_hash)
    if known is not None:
        assert known.run_id is not None  # cogflow registers every version from inside a run
        return TextTokenizerResult(
            str(known.version),
            known.run_id,
            False,
            int(known.tags.get("cogflow.vocab_size", 0)),
            len(train),
            "the registry holds a tokenizer trained on these captions with this config",
        )
    tokenizer, report = TextTokenizer.train(
        (c["caption"] for c in train), config.vocab_size, config.model_type, config.words
    )
    tags = {
        "cogflow.data_hash": data_hash,
        "cogflow.config_hash": config_hash,
        "cogflow.vocab_size": str(tokenizer.vocab_size),
    }
    with (
        tracking.run("text-tokenizer", {**asdict(config), "train_captions": len(train)}, tags) as active,
        tempfile.TemporaryDirectory(prefix="cogflow-text-") as tmp,
    ):
        tracking.log_metrics({"vocab_size": tokenizer.vocab_size})
        tracking.log_metrics({f"train/{k}": v for k, v in measure(tokenizer, train, config.text_slots).items()})
        if val:
            tracking.log_metrics({f"val/{k}": v for k, v in measure(tokenizer, val, config.text_slots).items()})
        if report.note:
            tracking.log_text(report.note, "clamped_vocabulary.txt")
        examples = [c["caption"] for c in (val or train)[:8]]
        pieces = [[tokenizer.sp.id_to_piece(i) for i in tokenizer.encode(t)] for t in examples]
        tracking.log_text("\n".join(f"{t}\n  {p}" for t, p in zip(examples, pieces)), "examples.txt")
        model_file = tokenizer.save(Path(tmp) / TEXT_TOKENIZER_FILE)
        version = registry.register_text_tokenizer(model_file, tags, examples[:2])
        run_id = active.info.run_id
    return TextTokenizerResult(str(version.version), run_id, True, tokenizer.vocab_size, len(train), report.note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=TextTokenizerConfig.vocab_size)
    parser.add_argument("--model-type", default=TextTokenizerConfig.model_type, choices=["unigram", "bpe"])
    args = parser.parse_args(argv)
    result = train_text_tokenizer(load_settings(), TextTokenizerConfig(args.vocab_size, args.model_type))
    print(json.dumps(asdict(result), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
