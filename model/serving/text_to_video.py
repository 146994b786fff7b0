"""Captions to videos: `TextToVideo` holds both stages and the tokenizers they were trained with, checked to fit
each other, and turns captions into codes and pixels. The command line, the evaluation, the registration and the
registered pyfunc all load one and call it, from training runs (`from_runs`), from a registered version
(`from_registry`) or from a version's files (`from_files`, what the pyfunc gets from MLflow).

    t2v = TextToVideo.from_registry(settings, "models:/cogflow-t2v@champion")
    made, frames = t2v.generate("一个红色的圆形在米色背景上从左向右移动。", seed=0)   # frames (33, 160, 160, 3) uint8
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cogflow.model import tracking
from cogflow.model.cogvideo.sampling import Decoded, GenerateConfig, generate_keyframes, interpolate
from cogflow.model.cogvideo.stages import (
    Stage,
    check_tokenizers,
    fetch_model,
    load_stage,
    pair_versions,
    sampling_config,
    stage_source,
    stage_tokenizers,
)
from cogflow.model.media import to_pixels
from cogflow.model.serving import registry
from cogflow.model.tokenizers import frame as frame_tokenizer
from cogflow.model.tokenizers.encode import Tokenizers
from cogflow.model.tokenizers.text import TextTokenizer
from cogflow.pipeline.contract import (
    FPS_RATES,
    FRAME_TOKENIZER_FILE,
    INFO_FILE,
    INTERPOLATION_ROUNDS,
    TEXT_TOKENIZER_FILE,
    stage_file,
)
from cogflow.pipeline.settings import Settings

KEYFRAME_FPS = 1.0  # stage 1 samples at 1 fps: 5 key frames over 4 s (CogVideo's "4.0秒")


def check_keyframe_fps(keyframe_fps: float) -> None:
    if any(keyframe_fps * 2**r not in FPS_RATES for r in range(INTERPOLATION_ROUNDS + 1)):
        raise ValueError(
            f"key frames at {keyframe_fps:g} fps need fps tokens up to {keyframe_fps * 2**INTERPOLATION_ROUNDS:g}; "
            f"the text tokenizer has {', '.join(f'{f:g}' for f in FPS_RATES)}"
        )


@dataclass(frozen=True)
class Videos:
    codes: torch.Tensor  # (B, 33, n): every frame's codes, in time order
    keyframes: Decoded  # stage 1
    interpolation: Decoded  # the three stage-2 rounds together
    truncated: list[bool]  # per prompt: more text pieces than slots (the beginning was kept)
    configs: tuple[GenerateConfig, GenerateConfig]  # as sampled by stage 1, stage 2

    @property
    def seconds(self) -> float:
        return self.keyframes.seconds + self.interpolation.seconds

    @property
    def tokens(self) -> int:
        return self.keyframes.tokens + self.interpolation.tokens


def text_to_keyframes(
    first: Stage,
    tokenizers: Tokenizers,
    prompts: Sequence[str],
    options: dict,
    seed: int = 0,
    keyframe_fps: float = KEYFRAME_FPS,
    progress: bool = False,
) -> tuple[Decoded, list[bool]]:
    """prompts (B) -> stage 1 alone: the 5 key frames' codes (B, 5, n) at `keyframe_fps`, exactly those
    `TextToVideo.codes` starts from for the same arguments; and per prompt whether its text was cut."""
    check_keyframe_fps(keyframe_fps)
    text = tokenizers.text
    ids, mask, cut = text.encode_batch(list(prompts), first.model.spec.layout.text_len)
    keys = generate_keyframes(
        first.model,
        torch.from_numpy(ids),
        torch.from_numpy(mask),
        text.fps_id(keyframe_fps),
        text.boi_id,
        text.pad_id,
        sampling_config(first, options),
        seed,
        progress,
    )
    return keys, [bool(c) for c in cut]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# The files of a registered text-to-video version, by artifact name (registry.register_text_to_video logs them).
VERSION_FILES = {
    "stage1": stage_file(1),
    "stage2": stage_file(2),
    "text_tokenizer": TEXT_TOKENIZER_FILE,
    "frame_tokenizer": FRAME_TOKENIZER_FILE,
    "info": INFO_FILE,
}


@dataclass
class TextToVideo:
    """Both stages and the tokenizers they were trained with (checked to agree on codes, text pieces and grid)."""

    first: Stage
    second: Stage
    tokenizers: Tokenizers

    def __post_init__(self) -> None:
        check_tokenizers(self.tokenizers, self.first, self.second)

    @classmethod
    def from_runs(
        cls,
        settings: Settings,
        stage1: str | None = None,
        stage2: str | None = None,
        device: str | torch.device | None = None,
    ) -> TextToVideo:
        """Both stages from training runs (references as in `stage_source`: None is the newest complete run) and
        the registered tokenizer versions they were trained with."""
        target = torch.device(device) if device else default_device()
        loaded = []
        with tempfile.TemporaryDirectory(prefix="cogflow-generate-") as tmp:  # downloads live only until loaded
            for stage, ref in ((1, stage1), (2, stage2)):
                source, run_id = stage_source(settings, stage, ref)  # resolved once: the run named is the run loaded
                path = fetch_model(settings, source, Path(tmp) / f"stage{stage}")
                loaded.append(load_stage(path, stage, run_id or source, target))
        first, second = loaded
        return cls(first, second, stage_tokenizers(settings, first, second, target))

    @classmethod
    def from_files(cls, files: Mapping[str, str | Path], device: str | torch.device | None = None) -> TextToVideo:
        """A registered version's files (keys as VERSION_FILES: both stages, both tokenizers and `info`, what the
        version was made from)."""
        target = torch.device(device) if device else default_device()
        info = json.loads(Path(files["info"]).read_text(encoding="utf-8"))
        first = load_stage(Path(files["stage1"]), 1, info["stage1_run"], target)
        second = load_stage(Path(files["stage2"]), 2, info["stage2_run"], target)
        text_version, frame_version = pair_versions(first, second)
        tokenizers = Tokenizers(
            TextTokenizer.load(files["text_tokenizer"]),
            frame_tokenizer.load(files["frame_tokenizer"], target),
            text_version,
            frame_version,
            target,
        )
        return cls(first, second, tokenizers)

    @classmethod
    def from_registry(cls, settings: Settings, uri: str, device: str | torch.device | None = None) -> TextToVideo:
        """A registered text-to-video version (`models:/cogflow-t2v@champion`, `models:/cogflow-t2v/3`), read from
        its files: no pickled code is loaded, so versions registered by older cogflow releases load too."""
        tracking.use(settings.mlflow_tracking_uri, settings.home)
        try:
            name, version = registry.resolve(uri)
        except Exception as exc:  # MLflow's errors (unreachable store): one line
            raise ValueError(f"cannot load {uri}: {str(exc).splitlines()[0]}") from exc
        with tempfile.TemporaryDirectory(prefix="cogflow-t2v-") as tmp:
            try:
                files = {
                    key: registry.download(name, version, file, Path(tmp) / key) for key, file in VERSION_FILES.items()
                }
            except Exception as exc:  # a version that is not a text-to-video model, a store that went away
                raise ValueError(f"cannot load {uri} (version {version}): {str(exc).splitlines()[0]}") from exc
            return cls.from_files(files, device)

    @property
    def device(self) -> torch.device:
        return self.tokenizers.device

    def keyframes(
        self,
        prompts: Sequence[str],
        options: dict | None = None,
        seed: int = 0,
        keyframe_fps: float = KEYFRAME_FPS,
        progress: bool = False,
    ) -> tuple[Decoded, list[bool]]:
        """Stage 1 alone: the key frames `codes` starts from for the same arguments."""
        return text_to_keyframes(self.first, self.tokenizers, prompts, options or {}, seed, keyframe_fps, progress)

    def codes(
        self,
        prompts: Sequence[str],
        options: dict | None = None,
        seed: int = 0,
        keyframe_fps: float = KEYFRAME_FPS,
        progress: bool = False,
    ) -> Videos:
        """prompts (B) -> codes of B 33-frame videos, all in one batch: stage 1's 5 key frames at `keyframe_fps`,
        then three stage-2 rounds. `options` (GenerateConfig fields, None: the stage's default) override each
        stage's `[generate]` table; guidance is stage 1's alone. Row i of a batch draws its noise as row i (see
        `gumbel_noise`), so a prompt and a seed give the same video in any batch position with its batch seed."""
        options = options or {}
        keys, cut = self.keyframes(prompts, options, seed, keyframe_fps, progress)
        config1, config2 = (
            sampling_config(self.first, options),
            sampling_config(self.second, {**options, "guidance": None}),
        )
        text = self.tokenizers.text
        ids2, mask2, cut2 = text.encode_batch(list(prompts), self.second.model.spec.layout.text_len)
        video, _ = interpolate(
            self.second.model,
            keys.codes,
            torch.from_numpy(ids2),
            torch.from_numpy(mask2),
            keyframe_fps,
            text.boi_id,
            text.fps_id,
            config2,
            seed,
            progress,
        )
        return Videos(video.codes, keys, video, [bool(a or b) for a, b in zip(cut, cut2)], (config1, config2))

    def pixels(self, codes: torch.Tensor) -> np.ndarray:
        """codes (..., n) -> frames (..., 160, 160, 3) uint8."""
        return to_pixels(self.tokenizers, codes)

    def generate(
        self, caption: str, seed: int = 0, options: dict | None = None, progress: bool = False
    ) -> tuple[Videos, np.ndarray]:
        """One caption -> (its codes and timings, frames (33, 160, 160, 3) uint8)."""
        if not caption.strip():
            raise ValueError("the caption is empty")
        with torch.inference_mode():
            made = self.codes([caption], options, seed, progress=progress)
            return made, self.pixels(made.codes[0])
