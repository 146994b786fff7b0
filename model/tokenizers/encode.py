"""Encode: every clip of the lake into one token row, with registered versions of both tokenizers.

    python -m cogflow.model.tokenizers.encode [--frame-tokenizer V] [--text-tokenizer V]     (or `cogflow tokenize encode`)

The unit of work is one clip file of a finished split shard (`clips/stage=S/shard-<id>.parquet`); a finished
shard never changes, since new clips always come in new shards. Its rows go to
`tokens/v<frame version>/stage=S/shard-<id>.parquet`, then a completion record to
`token_shards/v<frame version>/stage=S/shard-<id>.parquet` that names both tokenizer versions.

- Incremental: a clip file whose record names the same text tokenizer is done; only new shards (or every shard,
  after a new text tokenizer) are encoded.
- Restartable: a killed run leaves token files without records, which nobody reads (lake.read_tokens); the next
  run redoes those shards under the same names, overwriting what was left.
- Batched: `batch_clips` clips (5 frames each) go through the frame tokenizer at once, on CUDA when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cogflow.model import tracking
from cogflow.model.progress import StepProgress
from cogflow.model.serving import registry
from cogflow.model.tokenizers import frame as frame_tokenizer
from cogflow.model.tokenizers.frame import FrameTokenizer
from cogflow.model.tokenizers.text import TextTokenizer
from cogflow.pipeline import lake
from cogflow.pipeline.contract import CLIP_FRAMES, CLIP_SIZE, FRAME_TOKENIZER_FILE, TEXT_SLOTS, TEXT_TOKENIZER_FILE
from cogflow.pipeline.settings import Settings, load_settings
from cogflow.pipeline.sources import safe_uri
from cogflow.pipeline.storage import Storage

CLIP_COLUMNS = ["clip_id", "caption_id", "video_id", "caption", "stage", "fps", "split", "frames", "shard_id"]


@dataclass(frozen=True)
class ClipFile:
    """One clip file to encode: a finished split shard's clips of one stage."""

    part: str  # clips/stage=S/shard-<id>.parquet
    stage: int
    shard_id: str


@dataclass
class EncodeResult:
    lake: str  # as shown (credentials removed)
    frame_tokenizer_version: str
    text_tokenizer_version: str
    files_done_before: int  # clip files already encoded with these versions
    files_encoded: int = 0
    clips: int = 0
    frames: int = 0
    text_truncated: int = 0
    encode_seconds: float = 0.0  # in the frame tokenizer only
    seconds: float = 0.0
    stages: dict[int, int] = field(default_factory=dict)  # stage -> clips encoded by this run

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.encode_seconds if self.encode_seconds else 0.0

    def add(self, other: EncodeResult) -> None:
        """Count in what another worker encoded (its files were disjoint from this one's)."""
        self.files_encoded += other.files_encoded
        self.clips += other.clips
        self.frames += other.frames
        self.text_truncated += other.text_truncated
        self.encode_seconds += other.encode_seconds
        for stage, clips in other.stages.items():
            self.stages[stage] = self.stages.get(stage, 0) + clips


@dataclass
class Tokenizers:
    """Both tokenizers, loaded from their registered versions."""

    text: TextTokenizer
    frames: FrameTokenizer
    text_version: str
    frame_version: str
    device: torch.device


def load_tokenizers(
    settings: Settings, frame_version: str | None = None, text_version: str | None = None, device: str | None = None
) -> Tokenizers:
    """The given (default: newest) registered versions of both tokenizers."""
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    chosen = {}
    for name, asked in ((registry.TEXT_TOKENIZER, text_version), (registry.FRAME_TOKENIZER, frame_version)):
        version = registry.get_version(name, asked) if asked else registry.latest_version(name)
        if version is None and asked:
            raise ValueError(f"{name} has no version {asked} at {safe_uri(settings.mlflow_tracking_uri)}")
        if version is None:
            raise ValueError(
                f"no version of {name} is registered at {safe_uri(settings.mlflow_tracking_uri)}: "
                f"run `cogflow tokenize text` and `cogflow tokenize frames` first"
            )
        chosen[name] = str(version.version)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory(prefix="cogflow-tokenizers-") as tmp:
        text_file = registry.download(
            registry.TEXT_TOKENIZER, chosen[registry.TEXT_TOKENIZER], TEXT_TOKENIZER_FILE, Path(tmp)
        )
        weights = registry.download(
            registry.FRAME_TOKENIZER, chosen[registry.FRAME_TOKENIZER], FRAME_TOKENIZER_FILE, Path(tmp)
        )
        return Tokenizers(
            TextTokenizer.load(text_file),
            frame_tokenizer.load(weights, target),
            chosen[registry.TEXT_TOKENIZER],
            chosen[registry.FRAME_TOKENIZER],
            target,
        )


def pending_files(store: Storage, tokenizers: Tokenizers) -> tuple[list[ClipFile], int]:
    """Clip files of finished split shards not yet encoded with these tokenizers, and how many are."""
    records = lake.token_records(store, tokenizers.frame_version).to_pylist()
    done = {(r["stage"], r["shard_id"]) for r in records if r["text_tokenizer_version"] == tokenizers.text_version}
    todo = []
    for part in lake.clip_parts(store):
        stage = int(part.split("/")[1].removeprefix("stage="))
        shard_id = Path(part).stem.removeprefix("shard-")
        if (stage, shard_id) not in done:
            todo.append(ClipFile(part, stage, shard_id))
    return todo, len(done)


@torch.inference_mode()
def encode_rows(rows: pa.Table, tokenizers: Tokenizers, text_slots: int = TEXT_SLOTS) -> tuple[pa.Table, float]:
    """Clip rows (CLIP_COLUMNS) -> token rows (lake.TOKENS), and the seconds spent in the frame tokenizer."""
    n = rows.num_rows
    blob = b"".join(rows["frames"].to_pylist())
    frames = torch.from_numpy(np.frombuffer(blob, np.uint8).reshape(n * CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3).copy())
    started = time.perf_counter()
    codes = tokenizers.frames.encode(frames.to(tokenizers.device)).to(torch.int16).cpu().numpy()  # (n*5, h, w)
    seconds = time.perf_counter() - started
    grid = codes.shape[-1]
    codes = codes.reshape(n, CLIP_FRAMES * grid * grid).astype("<i2")
    ids, mask, cut = tokenizers.text.encode_batch(rows["caption"].to_pylist(), text_slots)
    table = pa.table(
        {
            "clip_id": rows["clip_id"],
            "caption_id": rows["caption_id"],
            "video_id": rows["video_id"],
            "stage": rows["stage"],
            "fps": rows["fps"],
            "split": rows["split"],
            "text_ids": pa.array(list(ids), pa.list_(pa.int32())),
            "text_mask": pa.array(list(mask), pa.list_(pa.bool_())),
            "text_truncated": pa.array(cut),
            "fps_token_id": pa.array([tokenizers.text.fps_id(f) for f in rows["fps"].to_pylist()], pa.int32()),
            "frame_codes": pa.array([row.tobytes() for row in codes], pa.binary()),
            "code_grid": pa.array(np.full(n, grid, np.int16)),
            "text_tokenizer_version": pa.array([tokenizers.text_version] * n),
            "frame_tokenizer_version": pa.array([tokenizers.frame_version] * n),
            "shard_id": rows["shard_id"],
        },
        schema=lake.TOKENS,
    )
    return table, seconds


def encode_file(
    store: Storage, clip_file: ClipFile, tokenizers: Tokenizers, batch_clips: int = 16
) -> tuple[int, int, float]:
    """Encode one clip file, publishing its tokens then its record; returns (clips, text truncated, encode
    seconds). Nothing when another run finished it meanwhile."""
    paths = lake.token_paths(tokenizers.frame_version, clip_file.stage, clip_file.shard_id)
    lock = lake.token_lock_id(tokenizers.frame_version, clip_file.stage, clip_file.shard_id)
    with lake.shard_lock(store, lock), tempfile.TemporaryDirectory(prefix="cogflow-tokens-") as tmp:
        if store.exists(paths["record"]):
            record = lake.read_table(store, "token_shards", parts=[paths["record"]]).to_pylist()[0]
            if record["text_tokenizer_version"] == tokenizers.text_version:
                return 0, 0, 0.0
        started = time.monotonic()
        fs, path = store.arrow(clip_file.part)
        local = Path(tmp) / "tokens.parquet"
        clips = truncated = 0
        seconds = 0.0
        with fs.open_input_file(path) as f, pq.ParquetWriter(local, lake.TOKENS, compression="zstd") as writer:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_clips, columns=CLIP_COLUMNS):
                table, spent = encode_rows(pa.Table.from_batches([batch]), tokenizers)
                writer.write_table(table)
                clips, truncated, seconds = (
                    clips + table.num_rows,
                    truncated + sum(table["text_truncated"].to_pylist()),
                    seconds + spent,
                )
        store.put_file(paths["tokens"], local)
        record = pa.table(
            {
                "shard_id": [clip_file.shard_id],
                "stage": [clip_file.stage],
                "frame_tokenizer_version": [tokenizers.frame_version],
                "text_tokenizer_version": [tokenizers.text_version],
                "clips": [clips],
                "seconds": [time.monotonic() - started],
                "finished_at": [lake.now()],
            },
            schema=lake.TOKEN_SHARDS,
        )
        pq.write_table(record, Path(tmp) / "record.parquet")
        store.put_file(paths["record"], Path(tmp) / "record.parquet")  # last: the tokens count from now on
        return clips, truncated, seconds


def worker_device(slot: int) -> str:
    """Where encode worker `slot` runs, on its own machine: GPU `slot` modulo the machine's GPUs, so that workers
    spread over the GPUs (one each when there are as many workers as GPUs); the CPU on a machine without one."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{slot % gpus}" if gpus else "cpu"


def encode_clips(
    settings: Settings,
    frame_version: str | None = None,
    text_version: str | None = None,
    *,
    batch_clips: int = 16,
    device: str | None = None,
    progress: bool = True,
    on_file: Callable[[EncodeResult, int], None] | None = None,
    files: list[ClipFile] | None = None,
) -> EncodeResult:
    """Encode every clip file not yet encoded with these tokenizer versions (default: the newest registered), or
    only `files` (one worker's share: the versions must then be given). Each file is encoded under its shard lock,
    so workers sharing out the files (or two runs racing) never write one twice."""
    started = time.monotonic()
    store = Storage.at(settings.lake)
    tokenizers = load_tokenizers(settings, frame_version, text_version, device)
    todo, done_before = pending_files(store, tokenizers) if files is None else (files, 0)
    result = EncodeResult(safe_uri(settings.lake), tokenizers.frame_version, tokenizers.text_version, done_before)
    bar = StepProgress("encode clip files", len(todo), enabled=progress)
    for i, clip_file in enumerate(todo, 1):
        clips, truncated, seconds = encode_file(store, clip_file, tokenizers, batch_clips)
        result.files_encoded += bool(clips)
        result.clips += clips
        result.frames += clips * CLIP_FRAMES
        result.text_truncated += truncated
        result.encode_seconds += seconds
        result.stages[clip_file.stage] = result.stages.get(clip_file.stage, 0) + clips
        bar.update(i, f"{result.clips} clips, {result.frames_per_s:.0f} frames/s")
        if on_file is not None:
            on_file(result, len(todo))
    bar.close()
    result.seconds = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame-tokenizer", help="version of cogflow-frame-tokenizer (default: the newest)")
    parser.add_argument("--text-tokenizer", help="version of cogflow-text-tokenizer (default: the newest)")
    parser.add_argument("--lake")
    parser.add_argument("--batch-clips", type=int, default=16)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    args = parser.parse_args(argv)
    try:
        result = encode_clips(
            load_settings(lake=args.lake),
            args.frame_tokenizer,
            args.text_tokenizer,
            batch_clips=args.batch_clips,
            device=args.device,
        )
    except ValueError as exc:
        print(f"encode_clips: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({**asdict(result), "frames_per_s": result.frames_per_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
