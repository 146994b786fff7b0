"""The tokenize flow: tokenizers trained from the lake, tracked and registered in MLflow (model/).

For now it trains the text tokenizer; the frame tokenizer and the encoding of clips into token shards join
it in this order (issue #4). A training the registry already holds (same data, same config) is skipped.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from model.train_text_tokenizer import TextTokenizerConfig, TextTokenizerResult, train_text_tokenizer
from pipeline.settings import load_settings
from pipeline.storage import safe_uri

text_task = task(train_text_tokenizer, name="train-text-tokenizer", cache_policy=NO_CACHE)


@flow(name="tokenize")
def tokenize_flow(lake: str | None = None, vocab_size: int = TextTokenizerConfig.vocab_size) -> TextTokenizerResult:
    """Train (or find, when already registered) the text tokenizer of the lake's captions."""
    settings = load_settings(lake=lake)
    logger = get_run_logger()
    text = text_task(settings, TextTokenizerConfig(vocab_size=vocab_size))
    what = "trained and registered" if text.trained else "already registered"
    logger.info("text tokenizer %s as cogflow-text-tokenizer v%s (%d pieces, %d captions)", what, text.version,
                text.vocab_size, text.captions)
    if text.note:
        logger.info(text.note)
    create_markdown_artifact(
        key="tokenize-summary",
        markdown=f"**cogflow-text-tokenizer v{text.version}** ({what}): {text.vocab_size} pieces from "
                 f"{text.captions} train captions of `{safe_uri(settings.lake)}`; MLflow run `{text.run_id}`. {text.note}",
    )
    return text
