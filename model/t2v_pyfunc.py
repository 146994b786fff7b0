"""cogflow's text-to-video model as one MLflow pyfunc, logged from this file (models-from-code).

Its artifacts are everything a video needs: both stages (`stage1`, `stage2`: .pt files), both tokenizers
(`text_tokenizer`: the SentencePiece model, `frame_tokenizer`: the VQ-VAE's config and weights) and `info` (JSON:
the runs and tokenizer versions they came from, each stage's sampling defaults). So loading
`models:/cogflow-t2v@champion` on another machine needs cogflow installed and the artifact store reachable; no
lake, no tracking of its own.

`predict` takes a DataFrame with a `caption` column (Chinese or English) and returns the videos as uint8 frames
(N, 33, 160, 160, 3) at 8 fps. Sampling options are params: seed, temperature, top_k, top_p, guidance. A row is
generated on its own with the given seed, so a caption and a seed give the video `cogflow generate` gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from cogflow.model import frame_tokenizer, generate
from cogflow.model.encode_clips import Tokenizers
from cogflow.model.text_tokenizer import TextTokenizer
from mlflow.pyfunc import PythonModel, PythonModelContext


class TextToVideoModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        files = context.artifacts
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.info = json.loads(Path(files["info"]).read_text())
        self.first = generate.load_stage(Path(files["stage1"]), 1, self.info["stage1_run"], device)
        self.second = generate.load_stage(Path(files["stage2"]), 2, self.info["stage2_run"], device)
        text_version, frame_version = generate.pair_versions(self.first, self.second)
        tokenizers = Tokenizers(TextTokenizer.load(files["text_tokenizer"]), frame_tokenizer.load(files["frame_tokenizer"], device),
                                text_version, frame_version, device)
        self.tokenizers = generate.check_tokenizers(tokenizers, self.first, self.second)

    def generate(self, caption: str, seed: int = 0, options: dict | None = None,
                 progress: bool = False) -> tuple[generate.Videos, np.ndarray]:
        """One caption -> (its codes and timings, frames (33, 160, 160, 3) uint8)."""
        if not caption.strip():
            raise ValueError("the caption is empty")
        with torch.inference_mode():
            made = generate.text_to_video(self.first, self.second, self.tokenizers, [caption], options or {}, seed,
                                          progress=progress)
            return made, generate.to_pixels(self.tokenizers, made.codes[0])

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        params = dict(params or {})
        seed = int(params.pop("seed", 0))
        options = {k: v for k, v in params.items() if k in generate.OPTIONS}
        captions = model_input["caption"] if isinstance(model_input, pd.DataFrame) else pd.Series(model_input)
        return np.stack([self.generate(str(c), seed, options)[1] for c in captions])  # (N, 33, 160, 160, 3)


mlflow.models.set_model(TextToVideoModel())
