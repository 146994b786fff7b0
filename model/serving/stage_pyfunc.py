"""One CogVideo stage as an MLflow pyfunc model, logged from this file (models-from-code).

`predict` works in token space, as the stage does: a DataFrame of token rows (`text_ids` and `text_mask`, the
caption's left-padded slots; `fps_token_id`; for stage 2 also `given_codes`, the codes of times 0, 2 and 4 one
after the other) -> the codes of the 5 frames (N, 5, n) in time order. Stage 1 samples all five key frames;
stage 2 keeps the given ones and samples times 1 and 3. Sampling options come as params (seed, temperature,
top_k, top_p, guidance). `cogflow generate --stage1 models:/cogflow-stage1@champion` uses the same file.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext

from cogflow.model.cogvideo import sampling, stages
from cogflow.model.tokenizers.text import TextTokenizer


class StageModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        path = context.artifacts["stage"]
        self.stage = stages.load_stage(Path(path), None, path, device)

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        params = dict(params or {})
        seed = int(params.pop("seed", 0))
        model, lay = self.stage.model, self.stage.model.spec.layout
        config = stages.sampling_config(self.stage, {k: v for k, v in params.items() if k in sampling.OPTIONS})
        ids = torch.tensor(np.stack(model_input["text_ids"].to_numpy()), dtype=torch.long)  # (N, L)
        mask = torch.tensor(np.stack(model_input["text_mask"].to_numpy()), dtype=torch.bool)
        fps = [int(f) for f in model_input["fps_token_id"]]
        if len(set(fps)) != 1:
            raise ValueError("all rows of one call must share their fps token")
        with torch.inference_mode():
            if lay.stage == 1:
                made = sampling.generate_keyframes(
                    model, ids, mask, fps[0], TextTokenizer.boi_id, TextTokenizer.pad_id, config, seed
                )
            else:
                given = torch.tensor(np.stack(model_input["given_codes"].to_numpy()), dtype=torch.long)
                given = given.view(len(model_input), 3, lay.frame_len)  # (N, 3, n): times 0, 2, 4
                made = sampling.interpolate_round(
                    model, given, ids, mask, fps[0], TextTokenizer.boi_id, config, seed, 1
                )
        return made.codes.numpy()  # (N, 5, n)


mlflow.models.set_model(StageModel())
