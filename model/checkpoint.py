"""Sharded training checkpoints through torch.distributed.checkpoint (DCP), the one module that imports it.

A checkpoint is a folder `<training>/step-NNNNNNNNN/` in the checkpoint store: every rank writes its own shards of
the model and optimizer state (`__<rank>_0.distcp`; under FSDP the rank's DTensor shards, never gathered whole),
rank 0 DCP's `.metadata` and `state.pt` (the step, the MLflow run, every rank's random state: small things). A
reader trusts a folder only once `<training>/latest` names it: that one-line file is written after every rank's
shards are complete (a put is atomic in both stores), so a crash mid-save leaves the previous checkpoint in force,
and the folders it no longer names are deleted after it moves.

DCP reshards on load: a run saved by N ranks resumes on M (each rank reads the pieces of the saved shards that its
own shards cover). In a local folder DCP reads and writes the files in place (several machines need a shared
file system, as for the lake). On S3 each rank writes into a local temporary folder and uploads its own files;
a resume downloads the checkpoint's files (every rank all of them) and loads from there.

Optional asynchronous saving (`async_save=True`): the state is copied to host memory, training goes on, and the
files are written (and `latest` moved) in the background; the next save, and the end of training, wait for it.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from cogflow.model import distributed
from cogflow.pipeline.storage import LocalStorage, Storage

POINTER = "latest"  # the file naming the newest complete checkpoint folder
EXTRA = "state.pt"  # rank 0's small, non-tensor state


# DCP warns on each call without a process group that it assumes one process, which is meant here; an asynchronous
# save warns from its own thread, after any `catch_warnings` block would have ended, so the filter is for the process.
warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)


def _folder(step: int) -> str:
    return f"step-{step:09d}"


@dataclass
class Checkpointer:
    """Save and load one training's checkpoints under `prefix` of `store` (local folder or s3://)."""

    store: Storage
    prefix: str
    async_save: bool = False
    _pending: tuple[Future, tempfile.TemporaryDirectory | None, int] | None = field(default=None, repr=False)

    def _local(self, rel: str) -> Path | None:
        return Path(self.store.uri(rel)) if isinstance(self.store, LocalStorage) else None

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict) -> None:
        """Collective: every rank calls it with its own model and optimizer; `extra` is taken from rank 0."""
        self.wait()
        folder = f"{self.prefix}/{_folder(step)}"
        model_state, optimizer_state = get_state_dict(model, optimizer)  # sharded as the model is: no gather
        local = self._local(folder)
        scratch = None if local is not None else tempfile.TemporaryDirectory(prefix="cogflow-dcp-")
        path = local if local is not None else Path(scratch.name)  # type: ignore[union-attr]
        if local is not None and distributed.rank() == 0:
            shutil.rmtree(local, ignore_errors=True)  # what a save of this step killed earlier left
        distributed.barrier()
        path.mkdir(parents=True, exist_ok=True)
        if distributed.rank() == 0:
            torch.save(extra, path / EXTRA)
        state = {"model": model_state, "optimizer": optimizer_state}
        if self.async_save:
            group = distributed.side_group()
            response = dcp.async_save(state, checkpoint_id=str(path), process_group=group, no_dist=group is None)
            # a Future, or (with some stagers) a response holding one
            future = cast(Future, getattr(response, "upload_completion", response))
            self._pending = (future, scratch, step)
        else:
            dcp.save(state, checkpoint_id=str(path), no_dist=not distributed.active())
            self._publish(step, scratch)

    def wait(self) -> None:
        """Finish an asynchronous save still being written (collective)."""
        if self._pending is not None:
            future, scratch, step = self._pending
            self._pending = None
            future.result()
            self._publish(step, scratch)

    def _publish(self, step: int, scratch: tempfile.TemporaryDirectory | None) -> None:
        """Each rank's files uploaded (S3), then `latest` moved by rank 0, then older folders deleted."""
        folder = f"{self.prefix}/{_folder(step)}"
        if scratch is not None:
            with scratch:
                for file in sorted(Path(scratch.name).iterdir()):
                    self.store.put_file(f"{folder}/{file.name}", file)
        distributed.barrier()  # every rank's shards are in place
        if distributed.rank() == 0:
            self.store.put_bytes(f"{self.prefix}/{POINTER}", _folder(step).encode())
            for stale in self._folders() - {_folder(step)}:
                self._delete(f"{self.prefix}/{stale}")
        distributed.barrier()

    def _folders(self) -> set[str]:
        names = {rel[len(self.prefix) + 1 :].split("/", 1)[0] for rel in self.store.list_files(self.prefix)}
        return {n for n in names if n.startswith("step-")}

    def _delete(self, folder: str) -> None:
        local = self._local(folder)
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)
            return
        for rel in self.store.list_files(folder):
            self.store.delete(rel)

    def latest(self) -> str | None:
        rel = f"{self.prefix}/{POINTER}"
        return self.store.read_bytes(rel).decode().strip() if self.store.exists(rel) else None

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
        """Collective: the newest complete checkpoint into `model` and `optimizer` (resharded to this run's ranks);
        rank 0's `extra` as saved, or None when there is no checkpoint."""
        name = distributed.from_main(self.latest() if distributed.rank() == 0 else None)
        if name is None:
            return None
        folder = f"{self.prefix}/{name}"
        local = self._local(folder)
        with tempfile.TemporaryDirectory(prefix="cogflow-dcp-") as scratch:
            path = local if local is not None else Path(scratch)
            if local is None:
                for rel in self.store.list_files(folder):
                    (path / rel.rsplit("/", 1)[-1]).write_bytes(self.store.read_bytes(rel))
            model_state, optimizer_state = get_state_dict(model, optimizer)  # the shapes and shards to fill
            dcp.load(
                {"model": model_state, "optimizer": optimizer_state},
                checkpoint_id=str(path),
                no_dist=not distributed.active(),
            )  # fills the tensors in place
            set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
            return torch.load(path / EXTRA, map_location="cpu", weights_only=False)


def whole_model_state(model: torch.nn.Module) -> dict:
    """The model's whole (unsharded) state dict on every rank, the same for a plain or an FSDP model: what the one
    consolidated model file of a finished training is made from (collective under FSDP)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
