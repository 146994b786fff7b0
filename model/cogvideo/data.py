"""The token rows of the lake as training batches: text re-padded to a run's slots, codes as (B, 5, g*g) tensors,
an endless stream of train rows in one global order dealt over ranks and workers without overlap (and resumable at
any step, on any number of processes), and a fixed set of val rows."""

from __future__ import annotations

import bisect
import itertools
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
    """Endless micro-batches of `train` token rows, the same global order whatever the number of processes.

    One seeded order of all train rows per epoch (the files in a seeded order, each file's rows in a seeded order),
    the epochs one after another, is cut into global batches of batch_size x grad_accum x world rows, one per
    optimizer step. Process r of the step's batch takes its own grad_accum micro-batches of batch_size rows from it
    (r x grad_accum x batch_size rows in), so no two processes see the same row, and the rows a step trains on
    depend only on the step and the global batch: a run resumed on another number of processes (the same global
    batch) trains on the same rows. Data-loader workers take the micro-batches in turns, as the loader asks for
    them. Each item is (batch, first): `first` is where this micro-batch starts inside its global batch.

    Every process reads every token file it needs (token rows are small: about 1 KB a clip at 10x10 codes) and
    counts each file's train rows once at the start."""

    def __init__(
        self,
        lake_uri: str,
        parts: list[str],
        layout: Layout,
        batch_size: int,
        seed: int,
        rank: int,
        world: int,
        start_step: int = 0,
        grad_accum: int = 1,
    ) -> None:
        self.lake_uri, self.parts, self.layout, self.batch_size, self.seed = lake_uri, parts, layout, batch_size, seed
        self.rank, self.world, self.start_step, self.grad_accum = rank, world, start_step, grad_accum

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        store = Storage.at(self.lake_uri)
        counts = [_train_rows(store, part) for part in self.parts]
        total = sum(counts)
        if total == 0:
            raise ValueError("the token files hold no train rows")
        cache: dict[tuple[int, int], tuple[dict[str, list], list[int]]] = {}

        orders: dict[int, tuple[list[int], list[int]]] = {}

        def row(g: int) -> tuple[dict[str, list], int]:
            """The columns of the file holding global row `g` of the endless order, and its index there."""
            epoch, at = divmod(g, total)
            if epoch not in orders:
                orders.clear()
                files = random.Random(f"files {self.seed} {epoch}").sample(range(len(self.parts)), len(self.parts))
                orders[epoch] = (files, list(itertools.accumulate(counts[k] for k in files)))
            files, ends = orders[epoch]
            n = bisect.bisect_right(ends, at)  # the n-th file of the epoch holds it
            k, at = files[n], at - (ends[n - 1] if n else 0)
            if (epoch, k) not in cache:
                cache.clear()  # rows are taken in order: one file at a time is enough
                fs, path = store.arrow(self.parts[k])
                with fs.open_input_file(path) as f:
                    table = pq.read_table(f, columns=COLUMNS)
                columns = {c: table[c].to_pylist() for c in COLUMNS}
                rows = [i for i, split in enumerate(columns["split"]) if split == "train"]
                random.Random(f"rows {self.seed} {epoch} {self.parts[k]}").shuffle(rows)
                cache[(epoch, k)] = (columns, rows)
            columns, rows = cache[(epoch, k)]
            return columns, rows[at]

        micro = self.start_step * self.grad_accum + worker  # this process's micro-batches, counted from step 0
        while True:
            step, m = divmod(micro, self.grad_accum)
            first = (self.rank * self.grad_accum + m) * self.batch_size
            batch: dict[str, list] = {c: [] for c in COLUMNS}
            for g in range(step * self.global_batch + first, step * self.global_batch + first + self.batch_size):
                columns, i = row(g)
                for c in COLUMNS:
                    batch[c].append(columns[c][i])
            yield to_batch(batch, self.layout), first
            micro += workers


def _train_rows(store: Storage, part: str) -> int:
    fs, path = store.arrow(part)
    with fs.open_input_file(path) as f:
        split = pq.read_table(f, columns=["split"])["split"].to_pylist()
    return split.count("train")


def eval_rows(store: Storage, parts: list[str], count: int) -> tuple[dict[str, list], str]:
    """Up to `count` rows of the val split (of train when the lake has none), in a fixed order."""
    table = lake.read_table(store, "tokens", COLUMNS, parts=parts).sort_by("clip_id")
    for split in ("val", "train"):
        chosen = table.filter(table["split"].to_numpy(zero_copy_only=False) == split).slice(0, count)
        if chosen.num_rows:
            return {c: chosen[c].to_pylist() for c in COLUMNS}, split
    raise ValueError("the token files hold no rows")
