"""Frames of the lake's clips, streamed for the frame tokenizer: one Parquet row group at a time, never the lake.

The units of work are the row groups of finished clip shards (pipeline.lake.clip_parts), dealt round-robin
over every (rank, data-loader worker) pair, so no two readers see the same clip. Within a reader, frames go
through a shuffle buffer of bounded size.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from pipeline import lake
from pipeline.storage import Storage
from pipeline.video import CLIP_FRAMES, CLIP_SIZE


def row_groups(store: Storage, stage: int | None = None) -> list[tuple[str, int]]:
    """(clip file, row group) of every finished shard, in a stable order."""
    fs, _ = store.arrow("")
    units = []
    for rel in lake.clip_parts(store, stage):
        with fs.open_input_file(store.arrow(rel)[1]) as f:
            units += [(rel, g) for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
    return units


def _reader_slot() -> tuple[int, int]:
    """(this reader's index, how many readers) over ranks x data-loader workers."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


class ClipFrames(IterableDataset):
    """(H, W, 3) uint8 frames of one split of the lake's clips, each frame of a clip on its own."""

    def __init__(self, lake_uri: str, split: str = "train", stage: int | None = None, *, shuffle_buffer: int = 512,
                 seed: int = 0, repeat: bool = False) -> None:
        self.lake_uri, self.split, self.stage = lake_uri, split, stage
        self.shuffle_buffer, self.seed, self.repeat = shuffle_buffer, seed, repeat
        self.epoch = 0

    def _frames(self, units: list[tuple[str, int]], store: Storage) -> Iterator[torch.Tensor]:
        fs, _ = store.arrow("")
        for rel, group in units:
            with fs.open_input_file(store.arrow(rel)[1]) as f:
                table = pq.ParquetFile(f).read_row_group(group, columns=["frames", "split"])
            for blob, split in zip(table["frames"].to_pylist(), table["split"].to_pylist()):
                if split == self.split:
                    clip = np.frombuffer(blob, np.uint8).reshape(CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3)
                    yield from torch.from_numpy(clip.copy())

    def __iter__(self) -> Iterator[torch.Tensor]:
        store = Storage.at(self.lake_uri)
        slot, readers = _reader_slot()
        while True:
            units = row_groups(store, self.stage)
            random.Random(self.seed + self.epoch).shuffle(units)  # the same order on every rank
            mine = units[slot::readers]
            rng = random.Random(self.seed * 1000 + self.epoch * 100 + slot)
            buffer: list[torch.Tensor] = []
            for frame in self._frames(mine, store):
                buffer.append(frame)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
            rng.shuffle(buffer)
            yield from buffer
            self.epoch += 1
            if not self.repeat or not mine:
                return
