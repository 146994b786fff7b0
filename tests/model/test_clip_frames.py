"""cogflow.model.tokenizers.clip_frames: frames streamed from a real split lake, dealt over readers without overlap."""

from __future__ import annotations

import hashlib

import torch

from cogflow.model.tokenizers.clip_frames import ClipFrames, row_groups
from cogflow.pipeline import lake
from cogflow.pipeline.storage import Storage


def digest(frame: torch.Tensor) -> str:
    return hashlib.sha256(frame.numpy().tobytes()).hexdigest()


def test_every_frame_of_a_split_comes_once_in_uint8(clip_lake: str) -> None:
    clips = lake.read_clips(Storage.at(clip_lake), ["split"]).to_pylist()
    frames = {name: list(ClipFrames(clip_lake, name, shuffle_buffer=8)) for name in ("train", "val")}
    for name, got in frames.items():
        assert len(got) == 5 * sum(c["split"] == name for c in clips)
    assert frames["train"] and all(f.shape == (160, 160, 3) and f.dtype == torch.uint8 for f in frames["train"])
    assert len({digest(f) for f in frames["train"]}) > len(frames["train"]) // 2  # shuffled frames, not one repeated


def test_readers_split_the_work_without_overlap(clip_lake: str, monkeypatch) -> None:
    import cogflow.model.tokenizers.clip_frames as module

    assert len(row_groups(Storage.at(clip_lake))) >= 2
    everything = sorted(digest(f) for f in ClipFrames(clip_lake, "train"))
    seen = []
    for slot in range(2):
        monkeypatch.setattr(module, "reader_slot", lambda slot=slot: (slot, 2))
        seen.append([digest(f) for f in ClipFrames(clip_lake, "train")])
    assert seen[0] and seen[1] and sorted(seen[0] + seen[1]) == everything


def test_a_data_loader_with_workers_and_repeat(clip_lake: str) -> None:
    loader = torch.utils.data.DataLoader(ClipFrames(clip_lake, "train", repeat=True), batch_size=16, num_workers=2)
    batches = [b for _, b in zip(range(3), loader)]
    assert all(b.shape == (16, 160, 160, 3) for b in batches)


def test_more_readers_than_row_groups_still_share_every_frame_once(clip_lake: str, monkeypatch) -> None:
    import cogflow.model.tokenizers.clip_frames as module

    readers = len(row_groups(Storage.at(clip_lake))) + 3
    everything = sorted(digest(f) for f in ClipFrames(clip_lake, "train"))
    seen = []
    for slot in range(readers):
        monkeypatch.setattr(module, "reader_slot", lambda slot=slot: (slot, readers))
        seen += [digest(f) for f in ClipFrames(clip_lake, "train")]
    assert sorted(seen) == everything
