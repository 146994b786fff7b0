"""Frames of the lake's clips, streamed for the frame tokenizer: one Parquet row group at a time, never the lake.

The units of work are the row groups of finished clip shards (pipeline.lake.clip_parts), dealt round-robin
over every (rank, data-loader worker) pair, so no two readers see the same clip (a lake with fewer row groups
than readers deals frames instead). Within a reader, frames go
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

from cogflow.pipeline import lake
from cogflow.pipeline.contract import CLIP_FRAMES, CLIP_SIZE
from cogflow.pipeline.storage import Storage


def row_groups(store: Storage, stage: int | None = None) -> list[tuple[str, int]]:
    """(clip file, row group) of every finished shard, in a stable order."""
    fs, _ = store.arrow("")
    units = []
    for rel in lake.clip_parts(store, stage):
        with fs.open_input_file(store.arrow(rel)[1]) as f:
            units += [(rel, g) for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
    return units


def reader_slot() -> tuple[int, int]:
    """(this reader's index, how many readers) over ranks x data-loader workers."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


class ClipFrames(IterableDataset):
    """(H, W, 3) uint8 frames of one split of the lake's clips, each frame of a clip on its own."""

    def __init__(
        self,
        lake_uri: str,
        split: str = "train",
        stage: int | None = None,
        *,
        shuffle_buffer: int = 512,
        seed: int = 0,
        repeat: bool = False,
    ) -> None:
        self.lake_uri, self.split, self.stage = lake_uri, split, stage
        self.shuffle_buffer, self.seed, self.repeat = shuffle_buffer, seed, repeat
        self.epoch = 0

    def _frames(
        self, units: list[tuple[str, int]], store: Storage, every: int = 1, first: int = 0
    ) -> Iterator[torch.Tensor]:
        """The frames of `units`, in order; with `every` > 1 only frames first, first + every, ..."""
        fs, _ = store.arrow("")
        n = 0
        for rel, group in units:
            with fs.open_input_file(store.arrow(rel)[1]) as f:
                table = pq.ParquetFile(f).read_row_group(group, columns=["frames", "split"])
            for blob, split in zip(table["frames"].to_pylist(), table["split"].to_pylist()):
                if split == self.split:
                    clip = np.frombuffer(blob, np.uint8).reshape(CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3)
                    for frame in torch.from_numpy(clip.copy()):
                        if n % every == first:
                            yield frame
                        n += 1

    def __iter__(self) -> Iterator[torch.Tensor]:
        store = Storage.at(self.lake_uri)
        slot, readers = reader_slot()
        while True:
            units = row_groups(store, self.stage)
            random.Random(self.seed + self.epoch).shuffle(units)  # the same order on every rank
            if len(units) >= readers:
                mine, frames = units[slot::readers], self._frames(units[slot::readers], store)
            else:  # a lake too small to give every reader a row group: all read all, each keeps its share of frames
                mine, frames = units, self._frames(units, store, every=readers, first=slot)
            rng = random.Random(self.seed * 1000 + self.epoch * 100 + slot)
            buffer: list[torch.Tensor] = []
            for frame in frames:
                buffer.append(frame)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
            rng.shuffle(buffer)
            yield from buffer
            self.epoch += 1
            if not self.repeat or not mine:
                return


def sample_frames(lake_uri: str, split: str, n: int, seed: int = 0, max_units: int = 64) -> torch.Tensor:
    """Up to `n` frames of `split` as (N, H, W, 3) uint8, the same on every call and every rank, drawn at random
    from the frames of up to `max_units` row groups (in a seeded random order): frames of many clips rather
    than all frames of a few, without reading a large lake whole. Only the chosen rows' frames are decoded."""
    store = Storage.at(lake_uri)
    units = row_groups(store)
    rng = random.Random(seed)
    rng.shuffle(units)
    fs, _ = store.arrow("")

    def read(unit: tuple[str, int], columns: list[str]):
        with fs.open_input_file(store.arrow(unit[0])[1]) as f:
            return pq.ParquetFile(f).read_row_group(unit[1], columns=columns)

    candidates = [
        (u, row, k)
        for u, unit in enumerate(units[:max_units])
        for row, s in enumerate(read(unit, ["split"])["split"].to_pylist())
        if s == split
        for k in range(CLIP_FRAMES)
    ]
    chosen = sorted(rng.sample(candidates, min(n, len(candidates))))
    frames: list[np.ndarray] = []
    for u in sorted({c[0] for c in chosen}):
        blobs = read(units[u], ["frames"])["frames"]
        for _, row, k in (c for c in chosen if c[0] == u):
            frames.append(np.frombuffer(blobs[row].as_py(), np.uint8).reshape(CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3)[k])
    if not frames:
        return torch.empty(0, CLIP_SIZE, CLIP_SIZE, 3, dtype=torch.uint8)
    return torch.from_numpy(np.stack(frames))
