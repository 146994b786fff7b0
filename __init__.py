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
    "train_text_tokenizer": ".model.train_text_tokenizer",
    "train_frame_tokenizer": ".model.train_frame_tokenizer",
    "encode_clips": ".model.encode_clips",
    "load_config": ".model.train",
    "train_stage": ".model.train",
    "generate_video": ".model.generate",
}

if TYPE_CHECKING:  # what the lazy names are, for readers and type checkers (re-exported through __all__)
    from .model.encode_clips import encode_clips
    from .model.generate import generate_video
    from .model.train import load_config, train_stage
    from .model.train_frame_tokenizer import train_frame_tokenizer
    from .model.train_text_tokenizer import train_text_tokenizer
    from .pipeline.ingest import ingest
    from .pipeline.settings import Settings, load_settings
    from .pipeline.split import split

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'cogflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
