"""The token rows of the lake as training batches: text re-padded to a run's slots, codes as (B, 5, g*g) tensors,
an endless stream of train rows dealt over ranks and workers without overlap (and resumable at a position), and a
fixed set of val rows."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from cogflow.model.cogvideo.layout import Layout
from cogflow.pipeline import lake
from cogflow.pipeline.contract import CLIP_FRAMES
from cogflow.pipeline.storage import Storage

COLUMNS = ["clip_id", "split", "text_ids", "text_mask", "fps_token_id", "frame_codes"]


def fit_text(ids: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded text rows (B, L) as `length` slots, still left-padded: a model may take fewer text slots than the
    lake's rows hold (short captions need no 64). A caption with more pieces than `length` keeps its beginning, as
    `TextTokenizer.encode_batch` cuts a prompt at generation."""
    width = ids.shape[1]
    if length >= width:  # more slots: more pads on the left
        return F.pad(ids, (length - width, 0)), F.pad(mask, (length - width, 0))
    pieces = mask.sum(1)  # (B,)
    start = width - pieces.clamp(min=length)  # (B,) the first slot kept: the caption's first piece when it is cut
    window = start[:, None] + torch.arange(length)  # (B, length)
    return ids.gather(1, window), mask.gather(1, window)


def to_batch(rows: dict[str, list], layout: Layout) -> dict[str, Any]:
    """Token rows (columns of COLUMNS as lists) -> tensors: text_ids, text_mask (B, layout.text_len), fps (B,), codes
    (B, 5, g*g); and the clip ids, to tell which rows a batch holds."""
    grid = layout.grid
    codes = np.frombuffer(b"".join(rows["frame_codes"]), "<i2").reshape(
        len(rows["frame_codes"]), CLIP_FRAMES, grid * grid
    )
    text_ids, text_mask = fit_text(
        torch.tensor(rows["text_ids"], dtype=torch.long),
        torch.tensor(rows["text_mask"], dtype=torch.bool),
        layout.text_len,
    )
    return {
        "text_ids": text_ids,
        "text_mask": text_mask,
        "fps": torch.tensor(rows["fps_token_id"], dtype=torch.long),
        "codes": torch.from_numpy(codes.astype(np.int64)),
        "clip_id": list(rows["clip_id"]),
    }


class TokenStream(IterableDataset):
    """Endless batches of `train` token rows, each with the data position after it.

    Consumer c of C (= ranks x workers) reads files c, c+C, ... when there are at least C files, else every C-th
    row of every file: no two consumers ever see the same row. Each epoch visits the consumer's files in a seeded
    order and each file's rows in a seeded order; a position (epoch, file, row) says where the next batch starts,
    so a resumed run starts there without reading what came before."""

    def __init__(
        self,
        lake_uri: str,
        parts: list[str],
        layout: Layout,
        batch_size: int,
        seed: int,
        rank: int,
        world: int,
        start: list[tuple[int, int, int]] | None = None,
        worker_offset: int = 0,
    ) -> None:
        self.lake_uri, self.parts, self.layout, self.batch_size, self.seed = lake_uri, parts, layout, batch_size, seed
        self.rank, self.world, self.start, self.worker_offset = rank, world, start, worker_offset

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # A data loader takes batches from its workers in turn, starting with worker 0. A resumed run's next batch
        # may be due from another worker, so worker ids are rotated to keep every worker's files and position.
        worker = (worker + self.worker_offset) % workers
        consumer, consumers = self.rank * workers + worker, self.world * workers
        whole_files = len(self.parts) >= consumers
        mine = self.parts[consumer::consumers] if whole_files else self.parts
        store = Storage.at(self.lake_uri)
        epoch, file_at, row_at = self.start[worker] if self.start else (0, 0, 0)
        batch: dict[str, list] = {c: [] for c in COLUMNS}
        while True:
            order = random.Random(f"files {self.seed} {epoch} {consumer}").sample(range(len(mine)), len(mine))
            seen = 0
            for k in range(file_at, len(order)):
                fs, path = store.arrow(mine[order[k]])
                with fs.open_input_file(path) as f:
                    table = pq.read_table(f, columns=COLUMNS)
                columns = {c: table[c].to_pylist() for c in COLUMNS}
                rows = [
                    i
                    for i, split in enumerate(columns["split"])
                    if split == "train" and (whole_files or i % consumers == consumer)
                ]
                random.Random(f"rows {self.seed} {epoch} {mine[order[k]]}").shuffle(rows)
                seen += len(rows)
                for r in range(row_at, len(rows)):
                    for c in COLUMNS:
                        batch[c].append(columns[c][rows[r]])
                    if len(batch["split"]) == self.batch_size:
                        position = (epoch, k, r + 1) if r + 1 < len(rows) else (epoch, k + 1, 0)
                        yield to_batch(batch, self.layout), position
                        batch = {c: [] for c in COLUMNS}
                row_at = 0
            if seen == 0 and file_at == 0:
                raise ValueError(
                    f"data-loader consumer {consumer} of {consumers} has no train rows: too few token files "
                    f"or rows for {self.world} processes x {workers} workers"
                )
            epoch, file_at = epoch + 1, 0


def eval_rows(store: Storage, parts: list[str], count: int) -> tuple[dict[str, list], str]:
    """Up to `count` rows of the val split (of train when the lake has none), in a fixed order."""
    table = lake.read_table(store, "tokens", COLUMNS, parts=parts).sort_by("clip_id")
    for split in ("val", "train"):
        chosen = table.filter(table["split"].to_numpy(zero_copy_only=False) == split).slice(0, count)
        if chosen.num_rows:
            return {c: chosen[c].to_pylist() for c in COLUMNS}, split
    raise ValueError("the token files hold no rows")
