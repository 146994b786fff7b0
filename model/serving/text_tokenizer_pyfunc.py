"""The text tokenizer as an MLflow pyfunc model, logged from this file (models-from-code).

`predict` takes captions and returns their piece ids; `load_context` finds the SentencePiece model among the
artifacts. Loading `models:/cogflow-text-tokenizer/<version>` needs only the version's own requirements (cogflow's code travels with it).
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel, PythonModelContext

from cogflow.model.tokenizers.text import TextTokenizer


class TextTokenizerModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self.tokenizer = TextTokenizer.load(context.artifacts["sentencepiece"])

    def predict(
        self, context: PythonModelContext, model_input: list[str], params: dict | None = None
    ) -> list[list[int]]:
        return [self.tokenizer.encode(text) for text in model_input]


mlflow.models.set_model(TextTokenizerModel())
