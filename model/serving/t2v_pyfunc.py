"""cogflow's text-to-video model as one MLflow pyfunc, logged from this file (models-from-code).

Its artifacts are everything a video needs: both stages (`stage1`, `stage2`: .pt files), both tokenizers
(`text_tokenizer`: the SentencePiece model, `frame_tokenizer`: the frame tokenizer's config and weights) and `info`
(JSON: the runs and tokenizer versions they came from). cogflow's own code travels with the version (its `code/`
folder) and its requirements are pinned, so `models:/cogflow-t2v@champion` loads in any Python environment built
from the version's requirements.txt, with the artifact store reachable: no checkout, no lake, no tracking of its own.

`predict` takes a DataFrame with a `caption` column (Chinese or English) and returns the videos as uint8 frames
(N, 33, 160, 160, 3) at 8 fps. Sampling options are params: seed, temperature, top_k, top_p, guidance. A row is
generated on its own with the given seed, so a caption and a seed give the video `cogflow generate` gives.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from cogflow.model.cogvideo.sampling import OPTIONS
from cogflow.model.serving.text_to_video import TextToVideo


class TextToVideoModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self.t2v = TextToVideo.from_files(context.artifacts)

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        params = dict(params or {})
        seed = int(params.pop("seed", 0))
        options = {k: v for k, v in params.items() if k in OPTIONS}
        captions = model_input["caption"] if isinstance(model_input, pd.DataFrame) else pd.Series(model_input)
        return np.stack([self.t2v.generate(str(c), seed, options)[1] for c in captions])  # (N, 33, 160, 160, 3)


mlflow.models.set_model(TextToVideoModel())
