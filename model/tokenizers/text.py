"""The caption tokenizer: a SentencePiece model trained on the lake's cleaned captions, Chinese and English.

CogVideo used icetk's pretrained model, which cannot be fetched here and whose training was never released
(the paper never says how it was trained). This one is trained from the lake:
- byte fallback, so no character is ever unknown (an emoji or a rare CJK character becomes its UTF-8 bytes);
- no normalisation, so decode(encode(text)) == text exactly (SentencePiece's default NFKC would turn
  full-width punctuation, common in Chinese captions, into ASCII);
- reserved pieces with fixed ids: <pad> 0, <unk> 1, <boi> 2, <n> 3, then one per frame rate, <fps_0.25> 4
  ... <fps_8> 9 (README, Split: the rate set). The frame-rate token of a clip is one of these;
- words kept apart: text is first cut into segments (`segments`: one Han character, one run of letters with the
  spaces before it, one digit, one other character) and no piece ever spans two of them, in training and in
  encoding alike. Trained on whole captions, SentencePiece made pieces like "三角形在黑色背景上" (shape and
  background in one piece) that a model cannot take apart to compose "red" + "circle" + "left to right".
  A model trained this way says so in its file (trainer_spec.pretokenization_delimiter, see WORDS_DELIMITER);
  one trained without it (the first tokenizers) encodes whole texts, as it always did.
Texts become a fixed number of slots, left-padded as in CogVideo, with a mask that is 1 on real pieces.
"""

from __future__ import annotations

import io
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from cogflow.pipeline.contract import FPS_RATES, FPS_TOKENS

PAD, UNK, BOI, NEWLINE = "<pad>", "<unk>", "<boi>", "<n>"
USER_PIECES = (BOI, NEWLINE, *FPS_TOKENS)  # ids 2.. in this order, right after <pad> and <unk>

# Han ideographs: 々〆〇, extension A, the unified block, compatibility ideographs, and planes 2 and 3 (extensions B
# onward and the compatibility supplement). Each is a segment of its own.
_HAN = "\u3005-\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
_MARKS = "\u0300-\u036f"  # combining accents: Python's \w leaves them out, but "é" written e + ◌́ is one word
# A segment is the spaces before it (SentencePiece writes them ▁) and then: one Han character, or a run of letters
# of any other script (Latin, Cyrillic, Greek, ...), or any single other character (a digit, full-width or ASCII
# punctuation, an emoji, a tab, a newline, an ideographic space). Spaces at the very end are a segment of their own.
_SEGMENT = re.compile(rf" *(?:[{_HAN}]|(?:[^\W\d_{_HAN}]|[{_MARKS}])+|.)| +", re.DOTALL)
# Joins a caption's segments in training: SentencePiece's trainer never makes a piece across it, and keeps it in
# the model file's trainer_spec, which is how a tokenizer knows to cut texts into segments before encoding. A
# caption that contains it (a control character) is only cut there once more in training.
WORDS_DELIMITER = "\x1f"
MAX_PIECE = 16  # SentencePiece's max_sentencepiece_length


def segments(text: str) -> list[str]:
    """`text` cut where words part: "一个红色的圆形 moves left." -> 一|个|红|色|的|圆|形| moves| left|."""
    return _SEGMENT.findall(text)


@dataclass(frozen=True)
class TrainReport:
    vocab_size: int  # what the model has
    asked: int  # what was asked for
    sentences: int
    note: str  # why the two differ, when they do


def _trainer_options(vocab_size: int, model_type: str, words: bool) -> dict[str, Any]:
    # Segments are encoded one by one, so no dummy space may be put before each (" red" must stay "▁red", "red" at
    # the start of a text "red"): spaces are part of the segments themselves.
    # "▁" (a space) must be a piece even when no training caption has a space (all Chinese): a byte-fallback "▁"
    # would decode to itself instead of to a space. Whole-text training always saw it, in the dummy prefix.
    words_options = (
        {"pretokenization_delimiter": WORDS_DELIMITER, "add_dummy_prefix": False, "required_chars": "\u2581"}
        if words
        else {}
    )
    return {
        "vocab_size": vocab_size,
        "model_type": model_type,
        "byte_fallback": True,
        "character_coverage": 1.0,  # every character of the corpus gets a piece; the rest fall back to bytes
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "split_digits": True,
        "pad_id": 0,
        "pad_piece": PAD,
        "unk_id": 1,
        "unk_piece": UNK,
        "bos_id": -1,
        "eos_id": -1,
        "user_defined_symbols": list(USER_PIECES),
        "num_threads": 1,  # one thread: the same captions give the same model
        "minloglevel": 2,
        **words_options,
    }


def _seed_pieces(parts: Iterable[str]) -> list[tuple[str, int]]:
    """Every substring of 2 to MAX_PIECE characters of the segments (spaces written ▁) that occurs at least twice,
    with its count, highest count × length first, as SentencePiece would rank them.

    Why: the unigram trainer seeds its vocabulary with the substrings that its suffix array finds followed by two
    different characters. A word that is a segment of its own is always followed by the segment's end, so "▁red"
    or "▁circle" would never be a seed (and never a piece) unless a longer word happened to start with it."""
    counts: Counter[str] = Counter()
    for segment, n in Counter(s.replace(" ", "\u2581") for s in parts).items():
        for start in range(len(segment)):
            for end in range(start + 2, min(len(segment), start + MAX_PIECE) + 1):
                counts[segment[start:end]] += n
    ranked = sorted(((p, n) for p, n in counts.items() if n >= 2), key=lambda pn: (-pn[1] * len(pn[0]), pn[0]))
    return ranked[:1_000_000]  # SentencePiece's seed_sentencepiece_size


def _bound(message: str) -> tuple[str, int] | None:
    """The vocabulary size SentencePiece says a corpus supports, from its error message."""
    if match := re.search(r"Please set it to a value <= (\d+)", message):
        return "most", int(match.group(1))
    if match := re.search(r"smaller than required_chars\. \d+ vs (\d+)", message):
        return "least", int(match.group(1))
    return None


class TextTokenizer:
    """A trained SentencePiece model with cogflow's reserved pieces."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        for i, piece in enumerate((PAD, UNK, *USER_PIECES)):
            if self.sp.piece_to_id(piece) != i:
                raise ValueError(f"not a cogflow text tokenizer: {piece} is not id {i}")
        # the generated protobuf module has no stubs: mypy cannot see ModelProto
        model = sentencepiece_model_pb2.ModelProto.FromString(model_proto)  # type: ignore[attr-defined]
        delimiter = model.trainer_spec.pretokenization_delimiter
        if delimiter not in ("", WORDS_DELIMITER):
            raise ValueError(f"not a cogflow text tokenizer: unknown pretokenization delimiter {delimiter!r}")
        # True: trained on segments, so texts are cut into segments before encoding. False: a tokenizer from before
        # segments (no delimiter in its file), which encodes whole texts so that its ids stay what they were.
        self.words = delimiter == WORDS_DELIMITER

    # ----------------------------------------------------------------------------------------------- training
    @classmethod
    def train(
        cls, captions: Iterable[str], vocab_size: int = 16000, model_type: str = "unigram", words: bool = True
    ) -> tuple[TextTokenizer, TrainReport]:
        """Train on `captions`. A corpus too small (or too varied) for `vocab_size` gets the size it supports,
        and the report says so, rather than failing. `words=False` trains as the first tokenizers did, on whole
        captions (pieces may span words)."""
        sentences = [c for c in captions if c]
        if not sentences:
            raise ValueError("no captions to train the text tokenizer on")
        with tempfile.TemporaryDirectory(prefix="cogflow-text-") as tmp:
            options: dict[str, Any] = {}
            if words:
                cut = [segments(c) for c in sentences]
                sentences = [WORDS_DELIMITER.join(c) for c in cut]
                if model_type == "unigram":
                    seeds = Path(tmp) / "seeds.tsv"
                    seeds.write_text(
                        "".join(f"{p}\t{n}\n" for p, n in _seed_pieces(s for c in cut for s in c)), encoding="utf-8"
                    )
                    options["seed_sentencepieces_file"] = str(seeds)
            size, note = vocab_size, ""
            for _ in range(3):  # at most: too high, then fine (or too low, then fine)
                out = io.BytesIO()
                try:
                    spm.SentencePieceTrainer.train(
                        sentence_iterator=iter(sentences),
                        model_writer=out,
                        **_trainer_options(size, model_type, words),
                        **options,
                    )
                    return cls(out.getvalue()), TrainReport(size, vocab_size, len(sentences), note)
                except RuntimeError as exc:
                    bound = _bound(str(exc))
                    if bound is None:
                        raise
                    which, size = bound
                    note = (
                        f"vocabulary size {vocab_size} clamped to {size}: the {len(sentences):,} captions "
                        f"support at {which} {size} pieces"
                    )
        raise RuntimeError(f"SentencePiece did not settle on a vocabulary size near {vocab_size}")

    # ------------------------------------------------------------------------------------------------- ids
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    pad_id, unk_id, boi_id, newline_id = 0, 1, 2, 3

    @staticmethod
    def fps_id(fps: float) -> int:
        """The id of a frame rate's token (<fps_1> for 1.0)."""
        return len((PAD, UNK, BOI, NEWLINE)) + FPS_RATES.index(float(fps))

    # ----------------------------------------------------------------------------------------- encode, decode
    def encode(self, text: str) -> list[int]:
        return self._encode([text])[0]

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not self.words:
            return self.sp.encode(list(texts))
        cut = [segments(t) for t in texts]
        flat = iter(self.sp.encode([s for c in cut for s in c]))  # one call for all segments of all texts
        return [[i for ids in islice(flat, len(c)) for i in ids] for c in cut]

    def decode(self, ids: Sequence[int]) -> str:
        """Text back from ids; pads (and anything masked as pad) are dropped."""
        return self.sp.decode([int(i) for i in ids if int(i) != self.pad_id])

    def encode_batch(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Texts as `length` slots each, left-padded as CogVideo does: (ids, mask, cut).

        ids (B, length) int32, pads first; mask (B, length) bool, True on real pieces; cut (B,) bool, True for a
        text with more pieces than slots, which keeps its beginning (CogVideo keeps at most 64 text tokens)."""
        ids = np.full((len(texts), length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), length), bool)
        cut = np.zeros(len(texts), bool)
        for row, pieces in enumerate(self._encode(texts)):
            if len(pieces) > length:
                pieces, cut[row] = pieces[:length], True
            if pieces:
                ids[row, length - len(pieces) :] = pieces
                mask[row, length - len(pieces) :] = True
        return ids, mask, cut

    # ------------------------------------------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.model_proto)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        return cls(Path(path).read_bytes())
