"""The caption tokenizer: a SentencePiece model trained on the lake's cleaned captions, Chinese and English.

CogVideo used icetk's pretrained model, which cannot be fetched here and whose training was never released
(reference/cogvideo.md §5.1, §5.3). This one is trained from the lake:
- byte fallback, so no character is ever unknown (an emoji or a rare CJK character becomes its UTF-8 bytes);
- no normalisation, so decode(encode(text)) == text exactly (SentencePiece's default NFKC would turn
  full-width punctuation, common in Chinese captions, into ASCII);
- reserved pieces with fixed ids: <pad> 0, <unk> 1, <boi> 2, <n> 3, then one per frame rate, <fps_0.25> 4
  ... <fps_8> 9 (DESIGN.md §3.3). The frame-rate token of a clip is one of these.
Texts become a fixed number of slots, left-padded as in CogVideo, with a mask that is 1 on real pieces.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

FPS_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
PAD, UNK, BOI, NEWLINE = "<pad>", "<unk>", "<boi>", "<n>"
FPS_TOKENS = tuple(f"<fps_{fps:g}>" for fps in FPS_RATES)
USER_PIECES = (BOI, NEWLINE, *FPS_TOKENS)  # ids 2.. in this order, right after <pad> and <unk>


@dataclass(frozen=True)
class TrainReport:
    vocab_size: int  # what the model has
    asked: int  # what was asked for
    sentences: int
    note: str  # why the two differ, when they do


def _trainer_options(vocab_size: int, model_type: str) -> dict[str, object]:
    return {
        "vocab_size": vocab_size,
        "model_type": model_type,
        "byte_fallback": True,
        "character_coverage": 1.0,  # every character of the corpus gets a piece; the rest fall back to bytes
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "split_digits": True,
        "pad_id": 0, "pad_piece": PAD, "unk_id": 1, "unk_piece": UNK, "bos_id": -1, "eos_id": -1,
        "user_defined_symbols": list(USER_PIECES),
        "num_threads": 1,  # one thread: the same captions give the same model
        "minloglevel": 2,
    }


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

    # ----------------------------------------------------------------------------------------------- training
    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 16000, model_type: str = "unigram"
              ) -> tuple["TextTokenizer", TrainReport]:
        """Train on `captions`. A corpus too small (or too varied) for `vocab_size` gets the size it supports,
        and the report says so, rather than failing."""
        sentences = [c for c in captions if c]
        if not sentences:
            raise ValueError("no captions to train the text tokenizer on")
        size, note = vocab_size, ""
        for _ in range(3):  # at most: too high, then fine (or too low, then fine)
            out = io.BytesIO()
            try:
                spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=out,
                                               **_trainer_options(size, model_type))
                return cls(out.getvalue()), TrainReport(size, vocab_size, len(sentences), note)
            except RuntimeError as exc:
                bound = _bound(str(exc))
                if bound is None:
                    raise
                which, size = bound
                note = (f"vocabulary size {vocab_size} clamped to {size}: the {len(sentences):,} captions support "
                        f"at {which} {size} pieces")
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
        return self.sp.encode(text)

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
        for row, pieces in enumerate(self.sp.encode(list(texts))):
            if len(pieces) > length:
                pieces, cut[row] = pieces[:length], True
            if pieces:
                ids[row, length - len(pieces):] = pieces
                mask[row, length - len(pieces):] = True
        return ids, mask, cut

    # ------------------------------------------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.model_proto)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        return cls(Path(path).read_bytes())
