"""cogflow.model.tokenizers.text: SentencePiece trained on captions; words kept apart, exact round trips, reserved ids,
left padding, and tokenizers trained before words were kept apart still encoding as they did."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2

from cogflow.model.tokenizers.text import (
    FPS_RATES,
    FPS_TOKENS,
    WORDS_DELIMITER,
    TextTokenizer,
    segments,
)
from cogflow.pipeline.sample_data import caption_for, plan_videos

CAPTIONS = [caption_for(spec) for spec in plan_videos(120, seed=5)] + [
    "一个下午在海滩上奔跑的女人",
    "A woman running on the beach in the afternoon.",
    "全角标点：“你好”，（测试）！",
    "Tom & Jerry run fast",
]


NASTY = CAPTIONS[-4:] + [
    "ünïcödé 😀 テスト  two  spaces",  # characters never seen in training come back through byte fallback
    "unic\u0301ode de\u0301compose\u0301",  # accents as combining marks
    "稀有的字：龘靐齉",
    "扩展B区𠀀𪚥与兼容表意字豈更",  # extension B and a compatibility ideograph
    "红色的circle从左到右 moves，然后 grows！",
    "A red circle  moves   from left to right.",
    " leading and trailing ",
    "  ",
    " ",
    "\t",
    "\n",
    "tabs\tand\nnew\r\nlines\n",
    "全角　空格　和「引号」『书名』【括号】……——",
    "emoji 👩‍👩‍👧 🇨🇳 👍🏽 ok",
    "Привет мир, αβγ δ, 2024年12月31日 23:59",
    "control \x1f delimiter \x00 null",  # the training delimiter itself, and a NUL
    "<boi> <n> <fps_1> written out",
    "",
]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    tok, report = TextTokenizer.train(CAPTIONS, vocab_size=400)
    assert report.vocab_size == tok.vocab_size
    return tok


@pytest.fixture(scope="module")
def old_tokenizer() -> TextTokenizer:
    """Trained as the first tokenizers were: whole captions, nothing in the file about segments."""
    return TextTokenizer.train(CAPTIONS, vocab_size=400, words=False)[0]


@pytest.mark.parametrize("text", NASTY)
def test_chinese_and_english_round_trip_exactly(tokenizer: TextTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == text


def test_texts_are_cut_where_words_part() -> None:
    assert segments("一个红色的圆形 moves left.") == ["一", "个", "红", "色", "的", "圆", "形", " moves", " left", "."]
    assert segments("  two  spaces ") == ["  two", "  spaces", " "]
    assert segments("A 12，“好”\t𠀀豈") == ["A", " 1", "2", "，", "“", "好", "”", "\t", "𠀀", "豈"]
    assert segments("") == []
    for text in NASTY:
        assert "".join(segments(text)) == text


def _check_pieces_stay_within_words(tok: TextTokenizer, text: str) -> list[str]:
    """The pieces of `text`, checked: every boundary between two segments is a boundary between two pieces (a
    byte-fallback character's bytes count as one piece)."""
    pieces, offset, cuts, pending = [], 0, {0}, b""
    for i in tok.encode(text):
        if tok.sp.is_byte(i):
            pending += bytes([int(tok.sp.id_to_piece(i)[1:-1], 16)])
            try:
                piece = pending.decode("utf-8")
            except UnicodeDecodeError:
                continue
            pending = b""
        else:
            piece = tok.sp.id_to_piece(i).replace("\u2581", " ")
        pieces.append(piece)
        offset += len(piece)
        cuts.add(offset)
    bounds = {0}
    for segment in segments(text):
        bounds.add(max(bounds) + len(segment))
    assert "".join(pieces) == text and bounds <= cuts, (text, pieces)
    return pieces


def test_pieces_never_span_two_words(tokenizer: TextTokenizer) -> None:
    captions = [caption_for(spec) for spec in plan_videos(40, seed=11)]
    for text in captions + NASTY:
        for piece in _check_pieces_stay_within_words(tokenizer, text):
            assert len(re.findall(r"[\u4e00-\u9fff]", piece)) <= 1, (text, piece)  # 红色 is 红 + 色, never 色的
            # spaces, then a piece of one word or one character
            assert re.fullmatch(r"(?s) *(?:(?:[^\W\d_]|[\u0300-\u036f])+|.)?", piece), (text, piece)
    assert tokenizer.boi_id not in tokenizer.encode("<boi>")  # text cannot make a reserved piece any more


def test_chinese_characters_and_frequent_english_words_are_one_piece_each(tokenizer: TextTokenizer) -> None:
    def pieces(text: str) -> list[str]:
        return [tokenizer.sp.id_to_piece(i) for i in tokenizer.encode(text)]

    chinese = [c for c in CAPTIONS[:-4] if not c.isascii()]
    assert chinese and all(pieces(c) == list(c) for c in chinese)  # 红色 is 红 + 色, 圆形 is 圆 + 形
    english = [c for c in CAPTIONS if c.isascii()]
    counts = Counter(w for c in english for w in re.findall(r"(?<= )[a-z]+", c))
    frequent = [w for w, n in counts.items() if n >= 3]
    assert {"red", "circle", "background", "left", "right"} <= set(frequent)
    for word in frequent:
        assert pieces(" " + word) == ["\u2581" + word]
    assert pieces("A red circle moves from left to right on a black background.") == [
        "A",
        "▁red",
        "▁circle",
        "▁moves",
        "▁from",
        "▁left",
        "▁to",
        "▁right",
        "▁on",
        "▁a",
        "▁black",
        "▁background",
        ".",
    ]


def test_a_tokenizer_trained_without_segments_encodes_as_before(
    tokenizer: TextTokenizer, old_tokenizer: TextTokenizer, tmp_path
) -> None:
    def spec(tok: TextTokenizer) -> tuple[str, bool]:
        model = sentencepiece_model_pb2.ModelProto.FromString(tok.model_proto)
        return model.trainer_spec.pretokenization_delimiter, model.normalizer_spec.add_dummy_prefix

    assert (tokenizer.words, spec(tokenizer)) == (True, (WORDS_DELIMITER, False))
    assert (old_tokenizer.words, spec(old_tokenizer)) == (False, ("", True))  # what the first tokenizers' files hold
    old = TextTokenizer.load(old_tokenizer.save(tmp_path / "old.model"))
    assert not old.words
    for text in CAPTIONS + NASTY:  # whole texts through SentencePiece, as the first tokenizers encoded them
        assert old.encode(text) == old.sp.encode(text) and old.decode(old.encode(text)) == text
    ids, _, _ = old.encode_batch(CAPTIONS, 96)
    assert [list(row[row != old.pad_id]) for row in ids] == old.sp.encode(CAPTIONS)
    # and its pieces do span words, which is why the new ones are cut: 一个 and more in one piece
    assert any(len(re.findall(r"[\u4e00-\u9fff]", p)) >= 2 for p in old.sp.encode(CAPTIONS[0], out_type=str))


def test_every_training_caption_round_trips(tokenizer: TextTokenizer) -> None:
    ids, mask, cut = tokenizer.encode_batch(CAPTIONS, 96)
    assert not cut.any()
    assert [tokenizer.decode(row) for row in ids] == CAPTIONS
    ids, mask, cut = tokenizer.encode_batch(NASTY, 128)  # the batch takes the same path as encode
    assert not cut.any()
    assert [list(row[m]) for row, m in zip(ids, mask)] == [tokenizer.encode(t) for t in NASTY]
    assert [tokenizer.decode(row) for row in ids] == NASTY


def test_reserved_pieces_have_fixed_ids(tokenizer: TextTokenizer) -> None:
    assert [tokenizer.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<boi>", "<n>"]
    assert [tokenizer.sp.id_to_piece(tokenizer.fps_id(f)) for f in FPS_RATES] == list(FPS_TOKENS)
    assert tokenizer.fps_id(1) == tokenizer.sp.piece_to_id("<fps_1>")


def test_batches_are_left_padded_with_a_mask(tokenizer: TextTokenizer) -> None:
    texts = ["一只猫在跑", "A red circle moves from left to right on a white background."]
    ids, mask, cut = tokenizer.encode_batch(texts, 64)
    assert ids.shape == mask.shape == (2, 64) and ids.dtype == np.int32 and not cut.any()
    short = tokenizer.encode(texts[0])
    assert list(ids[0, -len(short) :]) == short and (ids[0, : 64 - len(short)] == tokenizer.pad_id).all()
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
    assert again.words and again.encode(CAPTIONS[0]) == tokenizer.encode(CAPTIONS[0])
    with pytest.raises(ValueError, match="not a cogflow text tokenizer"):
        import io

        import sentencepiece as spm

        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CAPTIONS), model_writer=out, vocab_size=100, minloglevel=2
        )
        TextTokenizer(out.getvalue())


def test_a_tokenizer_trained_without_spaces_still_decodes_spaces() -> None:
    """A lake whose train captions are all Chinese: English and spaces fall back to bytes but come back exactly."""
    tokenizer, _ = TextTokenizer.train(
        ["一个红色的圆形在黑色背景上向上移动。", "一个黄色的三角形在深蓝色背景上向下移动。"], 400
    )
    for text in ("A woman running on the beach in the afternoon.", "  two  spaces ", "红色 circle"):
        ids, _, _ = tokenizer.encode_batch([text], 64)
        assert tokenizer.decode(ids[0]) == text == tokenizer.decode(tokenizer.encode(text))
