"""The frame tokenizer as an MLflow pyfunc model, logged from this file (models-from-code).

`predict` takes uint8 frames (N, 160, 160, 3) and returns their codes (N, h, w) as int16; `load_context` reads
the config and weights saved by `cogflow.model.tokenizers.frame.save`. Loading
`models:/cogflow-frame-tokenizer/<version>` needs only the version's own requirements (cogflow's code travels with it).
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext

from cogflow.model.tokenizers import frame as frame_tokenizer


class FrameTokenizerModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self.model = frame_tokenizer.load(context.artifacts["weights"])

    def predict(self, context: PythonModelContext, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        frames = torch.from_numpy(np.array(model_input, dtype=np.uint8))  # (N, H, W, 3), a writable copy
        return self.model.encode(frames).to(torch.int16).numpy()  # (N, h, w)


mlflow.models.set_model(FrameTokenizerModel())
