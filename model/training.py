"""What both training entry points (model/tokenizers/train_frame.py, model/cogvideo/train.py) share: the learning-rate
schedule, atomic checkpoints in the artifact store with the random state, a stop flag set by SIGTERM and the vote
that stops every rank after the same step, and how an entry point ends (exit codes, the result file). Process
groups, "asked once, answered to all" and `parallelize()` are model/distributed.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from cogflow.pipeline.settings import Settings
from cogflow.pipeline.storage import Storage


class Schedule(Protocol):
    """What the learning-rate schedule reads of a (frozen) training config."""

    @property
    def steps(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def min_lr_ratio(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...


def learning_rate(step: int, train: Schedule) -> float:
    """Linear warmup to `lr`, then a cosine down to lr * min_lr_ratio at the last step."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
    floor = train.lr * train.min_lr_ratio
    return floor + (train.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def checkpoint_store(settings: Settings) -> Storage:
    """Where checkpoints go: $COGFLOW_CHECKPOINTS (a folder or s3://...), else $COGFLOW_HOME/checkpoints."""
    return Storage.at(os.environ.get("COGFLOW_CHECKPOINTS") or str(Path(settings.home) / "checkpoints"))


def save_checkpoint(store: Storage, rel: str, state: dict) -> None:
    """All or nothing: a reader finds the previous checkpoint or this one, never half of one."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    store.put_bytes(rel, buffer.getvalue())


def load_checkpoint(store: Storage, rel: str) -> dict | None:
    if not store.exists(rel):
        return None
    return torch.load(io.BytesIO(store.read_bytes(rel)), map_location="cpu", weights_only=False)


def rng_state(device: torch.device) -> dict:
    """This process's random state (and its GPU's), for a checkpoint: a resumed run draws what the killed one would
    have drawn."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng(saved: dict, device: torch.device) -> None:
    torch.set_rng_state(saved["torch"])
    if device.type == "cuda" and saved.get("cuda") is not None:
        torch.cuda.set_rng_state(saved["cuda"], device)


class StopSignal:
    """Set by SIGTERM (what torchrun and schedulers send before killing): the loop checkpoints and leaves."""

    requested = False

    @classmethod
    @contextlib.contextmanager
    def installed(cls):
        cls.requested = False
        if threading.current_thread() is not threading.main_thread():  # signals can only be set from there
            yield
            return
        before = signal.signal(signal.SIGTERM, lambda *_: setattr(cls, "requested", True))
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, before)


def stop_vote(step: int, until_step: int | None, device: torch.device) -> bool:
    """Whether to checkpoint and leave after `step`: SIGTERM reached this process or `until_step` is reached. Every
    rank votes and all stop after the same step, even when the signal reached them at different moments."""
    from cogflow.model import distributed

    return distributed.any_rank(StopSignal.requested or (until_step is not None and step >= until_step), device)


def run_entry_point(name: str, work: Callable[[], Any], result_file: str | None) -> int:
    """The end of a training entry point's main(): run `work`; a ValueError (a usage error: bad config, nothing
    to train on) is one line on stderr and exit 2; the process group is left either way; rank 0 prints the
    result (a dataclass) as JSON, and the first process of every node writes rank 0's result to `result_file`,
    which is how flows/launch.py reads it back on each machine of a multi-node job."""
    from cogflow.model import distributed

    main_rank = int(os.environ.get("RANK", "0")) == 0
    node_main = int(os.environ.get("LOCAL_RANK", "0")) == 0  # each node's launcher reads the file on its machine
    try:
        result = distributed.from_main(work())  # rank 0's result (its timing, its run) is every node's
        distributed.barrier()  # leave together: a rank tearing the group down while another still works can abort it
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()
    text = json.dumps(dataclasses.asdict(result))
    if main_rank:
        print(text)
    if node_main and result_file:
        Path(result_file).write_text(text)
    return 0
