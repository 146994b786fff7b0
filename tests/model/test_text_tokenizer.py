"""model.text_tokenizer: SentencePiece trained on captions; exact round trips, reserved ids, left padding."""

from __future__ import annotations

import numpy as np
import pytest

from model.text_tokenizer import FPS_RATES, FPS_TOKENS, TextTokenizer
from pipeline.sample_data import caption_for, plan_videos

CAPTIONS = [caption_for(spec) for spec in plan_videos(60, seed=5)] + [
    "一个下午在海滩上奔跑的女人",
    "A woman running on the beach in the afternoon.",
    "全角标点：“你好”，（测试）！",
    "Tom & Jerry run fast",
]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    tok, report = TextTokenizer.train(CAPTIONS, vocab_size=400)
    assert report.vocab_size == tok.vocab_size
    return tok


@pytest.mark.parametrize("text", CAPTIONS[-4:] + [
    "ünïcödé 😀 テスト  two  spaces",  # characters never seen in training come back through byte fallback
    "稀有的字：龘靐齉",
    " leading and trailing ",
    "",
])
def test_chinese_and_english_round_trip_exactly(tokenizer: TextTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == text


def test_every_training_caption_round_trips(tokenizer: TextTokenizer) -> None:
    ids, mask, cut = tokenizer.encode_batch(CAPTIONS, 96)
    assert not cut.any()
    assert [tokenizer.decode(row) for row in ids] == CAPTIONS


def test_reserved_pieces_have_fixed_ids(tokenizer: TextTokenizer) -> None:
    assert [tokenizer.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<boi>", "<n>"]
    assert [tokenizer.sp.id_to_piece(tokenizer.fps_id(f)) for f in FPS_RATES] == list(FPS_TOKENS)
    assert tokenizer.fps_id(1) == tokenizer.sp.piece_to_id("<fps_1>")


def test_batches_are_left_padded_with_a_mask(tokenizer: TextTokenizer) -> None:
    texts = ["一只猫在跑", "A red circle moves from left to right on a white background."]
    ids, mask, cut = tokenizer.encode_batch(texts, 64)
    assert ids.shape == mask.shape == (2, 64) and ids.dtype == np.int32 and not cut.any()
    short = tokenizer.encode(texts[0])
    assert list(ids[0, -len(short):]) == short and (ids[0, : 64 - len(short)] == tokenizer.pad_id).all()
    assert mask[0].sum() == len(short) and not mask[0, : 64 - len(short)].any()
    # a text longer than the slots keeps its beginning
    ids, mask, cut = tokenizer.encode_batch([texts[1]], 5)
    assert cut.tolist() == [True] and mask.all() and list(ids[0]) == tokenizer.encode(texts[1])[:5]


def test_a_small_corpus_gets_the_vocabulary_it_supports() -> None:
    tok, report = TextTokenizer.train(["一只猫在跑", "a cat runs"], vocab_size=32000)
    assert report.asked == 32000 and report.vocab_size == tok.vocab_size < 32000
    assert "clamped" in report.note
    assert tok.decode(tok.encode("一只狗在跑")) == "一只狗在跑"  # 狗 was never seen: bytes
    tok, report = TextTokenizer.train(["一只猫在跑", "a cat runs"], vocab_size=10)
    assert report.vocab_size > 10 and "at least" in report.note


def test_save_and_load(tokenizer: TextTokenizer, tmp_path) -> None:
    path = tokenizer.save(tmp_path / "text.model")
    again = TextTokenizer.load(path)
    assert again.encode(CAPTIONS[0]) == tokenizer.encode(CAPTIONS[0])
    with pytest.raises(ValueError, match="not a cogflow text tokenizer"):
        import io

        import sentencepiece as spm

        out = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(CAPTIONS), model_writer=out, vocab_size=100, minloglevel=2)
        TextTokenizer(out.getvalue())
