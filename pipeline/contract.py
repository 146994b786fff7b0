"""The facts every step of cogflow agrees on, in one place.

Split writes clips by them, the tokenizers and both stages read clips by them, the registry names files by them and
the SQL receives the rates as parameters. Change one here and every step follows; a lake or a model made under other
values is refused where it is read (the layout and the lake schema record what they were made with).

- A clip is `CLIP_FRAMES` frames of `CLIP_SIZE` x `CLIP_SIZE` RGB, sampled at one of `FPS_RATES` frames per second
  and tagged with that rate's token, `fps_token(rate)`: '<fps_0.25>' ... '<fps_8>'. Stage 1 generates key frames at
  the lowest rate a caption's span allows; stage 2 interpolates at `STAGE2_RATES`, one round per doubling.
- A caption takes `TEXT_SLOTS` text positions (left-padded), as in CogVideo.
- A generated video is stage 1's `CLIP_FRAMES` key frames after `INTERPOLATION_ROUNDS` rounds of stage 2, each of
  which puts one frame between every two and doubles the rate: (5 - 1) x 2^3 + 1 = 33 frames, at 8 fps from key
  frames at 1 fps.
"""

from __future__ import annotations

import hashlib
import json

CLIP_FRAMES = 5
CLIP_SIZE = 160
CLIP_STAGES = (1, 2)
FPS_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # frames per second a clip may be sampled at, each with its token
STAGE2_RATES = (2.0, 4.0, 8.0)  # the rates of the three interpolation rounds
INTERPOLATION_ROUNDS = len(STAGE2_RATES)
VIDEO_FRAMES = (CLIP_FRAMES - 1) * 2**INTERPOLATION_ROUNDS + 1
TEXT_SLOTS = 64


def fps_token(fps: float) -> str:
    """The text token of a frame rate: 0.25 -> '<fps_0.25>', 1.0 -> '<fps_1>' (the SQL takes them from SQL_PARAMS)."""
    return f"<fps_{fps:g}>"


FPS_TOKENS = tuple(fps_token(fps) for fps in FPS_RATES)

# What the SQL in sql/ receives as parameters ($rates, ...), so no .sql file spells a rate or a token itself.
SQL_PARAMS: dict[str, list[float] | list[str] | list[int]] = {
    "rates": list(FPS_RATES),
    "stage2_rates": list(STAGE2_RATES),
    "fps_tokens": list(FPS_TOKENS),  # the token of $rates[i] is $fps_tokens[i]
    "clip_stages": list(CLIP_STAGES),
}

# The files a registered model version or a training run carries, by what they hold. A training run logs its
# finished model as runs:/<run id>/model/<file>; a registered version keeps its files under artifacts/.
RUN_MODEL_DIR = "model"
TEXT_TOKENIZER_FILE = "text.model"  # SentencePiece
FRAME_TOKENIZER_FILE = "frame_tokenizer.pt"  # the frame tokenizer's config and weights
TEXT_TO_IMAGE_FILE = "t2i.pt"  # a one-frame run of the stage-1 model, whose spatial channel seeds stage 1
INFO_FILE = "info.json"  # what a text-to-video version was made from


def stage_file(stage: int) -> str:
    """The file of a trained stage: 'stage1.pt', 'stage2.pt'."""
    return f"stage{stage}.pt"


def run_model(file: str) -> str:
    """A training run's artifact path of its finished model: 'model/stage1.pt'."""
    return f"{RUN_MODEL_DIR}/{file}"


def naming_hash(value: object) -> str:
    """16 hex digits naming a JSON-able value (a config, a list of clip ids, a data digest): equal values give equal
    names on every machine. Non-ASCII text is hashed as UTF-8; values JSON cannot write are hashed as their str()."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
