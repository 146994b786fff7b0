"""cogflow: an open data-to-model pipeline for CogVideo-style text-to-video models.

The repository's folders install as one namespace: `cogflow.pipeline` (data: manifests, ingest, split, the lake),
`cogflow.model` (tokenizers, the two CogVideo stages, evaluation, serving), `cogflow.flows` (Prefect flows and the
`cogflow` command) and `cogflow.sql` (the DuckDB models and checks). This module is the public Python API, what a
notebook calls; every name is imported on first use, so `import cogflow` does not load torch, Prefect or MLflow.

    import cogflow
    settings = cogflow.load_settings(lake="data/lake")   # defaults < COGFLOW_* variables < these
    cogflow.ingest("manifest.parquet", settings)
    cogflow.split(settings)
    cogflow.encode_clips(settings)            # after the tokenizers are trained (cogflow tokenize)
    cogflow.train_stage(settings, 1, cogflow.load_config("demo"))
    cogflow.generate_video(settings, "一个红色的圆形在米色背景上从左向右移动。", "circle.mp4")
    t2v = cogflow.TextToVideo.from_registry(settings, "models:/cogflow-t2v@champion")
    made, frames = t2v.generate("a red circle moves from left to right on a beige background")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# name -> module it lives in (relative to this package)
_API = {
    "Settings": ".pipeline.settings",
    "load_settings": ".pipeline.settings",
    "ingest": ".pipeline.ingest",
    "split": ".pipeline.split",
    "train_text_tokenizer": ".model.tokenizers.train_text",
    "train_frame_tokenizer": ".model.tokenizers.train_frame",
    "encode_clips": ".model.tokenizers.encode",
    "load_config": ".model.cogvideo.train",
    "train_stage": ".model.cogvideo.train",
    "generate_video": ".model.serving.generate",
    "TextToVideo": ".model.serving.text_to_video",
}

if TYPE_CHECKING:  # what the lazy names are, for readers and type checkers (re-exported through __all__)
    from .model.cogvideo.train import load_config as load_config
    from .model.cogvideo.train import train_stage as train_stage
    from .model.serving.generate import generate_video as generate_video
    from .model.serving.text_to_video import TextToVideo as TextToVideo
    from .model.tokenizers.encode import encode_clips as encode_clips
    from .model.tokenizers.train_frame import train_frame_tokenizer as train_frame_tokenizer
    from .model.tokenizers.train_text import train_text_tokenizer as train_text_tokenizer
    from .pipeline.ingest import ingest as ingest
    from .pipeline.settings import Settings as Settings
    from .pipeline.settings import load_settings as load_settings
    from .pipeline.split import split as split

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'cogflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
