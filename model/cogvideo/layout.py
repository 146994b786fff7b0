"""Where every token of a CogVideo sample sits, and who may attend to whom: pure functions, no parameters.

A sample is one sequence of S = L + 1 + F * g * g slots (CogVideo's layout, README: Train):

    [ text, left-padded to L | fps token | frame slot 0 | ... | frame slot F-1 ]     each frame slot g*g codes

Frame slots hold frames in the order they are generated:
- stage 1 (key frames): time order, 0 1 2 3 4, every frame predicted;
- stage 2 (interpolation): frames 0 2 4 first, given, then 1 and 3, predicted. Position ids keep the true time.

A predicted frame's slot is fed `[<boi>, c0, ..., c(n-2)]` and predicts `[c0, ..., c(n-1)]`: every slot belongs
to exactly one frame, the first slot of each predicted frame holds <boi> (CogVideo's own trick), and the slot of
code i carries the position (row, column) of code i. A given frame's slot is fed its own codes and predicts
nothing.

The masks are rules over per-slot attributes (`Slots`), written with tensor operations only, so that the same
function gives the dense (S, S) masks for PyTorch SDPA on any device and the `mask_mod` of a FlexAttention block
mask on CUDA, which skips the blocks a rule rules out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cogflow.pipeline.contract import CLIP_FRAMES, TEXT_SLOTS

STAGE_SLOT_TIMES = {1: (0, 1, 2, 3, 4), 2: (0, 2, 4, 1, 3)}  # the true time of the frame in each slot
IGNORE = -100  # the target of a slot that predicts nothing (cross_entropy's ignore_index)


@dataclass(frozen=True)
class Layout:
    text_len: int = TEXT_SLOTS  # text slots (the lake's token rows have TEXT_SLOTS; a run may take fewer)
    grid: int = 10  # a frame is grid x grid codes
    stage: int = 1
    frames: int = CLIP_FRAMES  # 1: a text-to-image run of the same model (its spatial channel can seed a video model)

    def __post_init__(self) -> None:
        if self.stage not in STAGE_SLOT_TIMES:
            raise ValueError(f"stage must be 1 or 2, not {self.stage}")
        if self.stage == 2 and self.frames != CLIP_FRAMES:
            raise ValueError("stage 2 interpolates 5-frame windows: frames must be 5")
        if self.text_len < 1:
            raise ValueError(f"text_len must be at least 1, not {self.text_len}")
        if not 1 <= self.frames <= CLIP_FRAMES:
            raise ValueError(f"frames must be 1..{CLIP_FRAMES}, not {self.frames}")

    @property
    def frame_len(self) -> int:
        return self.grid * self.grid

    @property
    def text_slots(self) -> int:  # text + the fps token
        return self.text_len + 1

    @property
    def length(self) -> int:
        return self.text_slots + self.frames * self.frame_len

    @property
    def slot_times(self) -> tuple[int, ...]:
        return STAGE_SLOT_TIMES[self.stage][: self.frames]

    @property
    def given_slots(self) -> tuple[bool, ...]:
        return tuple(self.stage == 2 and t % 2 == 0 for t in self.slot_times)

    def frame_start(self, slot: int) -> int:
        return self.text_slots + slot * self.frame_len


@dataclass(frozen=True)
class Slots:
    """Per-slot attributes, each (S,): what the mask rules and the position embeddings look at."""

    frame: torch.Tensor  # long: the frame slot, -1 for text and the fps token
    time: torch.Tensor  # long: the true time index of the frame (0..4), 0 for text
    index: torch.Tensor  # long: the code index within the frame (raster order), the slot index for text
    row: torch.Tensor  # long
    col: torch.Tensor  # long
    given: torch.Tensor  # bool: a frame the model is given (stage 2's frames 0, 2, 4)

    @property
    def is_text(self) -> torch.Tensor:
        return self.frame < 0


@functools.lru_cache(maxsize=32)
def slots(layout: Layout, device: str = "cpu") -> Slots:
    n, t = layout.frame_len, layout.text_slots
    code = torch.arange(n).repeat(layout.frames)  # (F*n,)
    frame = torch.cat([torch.full((t,), -1), torch.arange(layout.frames).repeat_interleave(n)])
    time = torch.cat([torch.zeros(t, dtype=torch.long), torch.tensor(layout.slot_times).repeat_interleave(n)])
    index = torch.cat([torch.arange(t), code])
    row = torch.cat([torch.zeros(t, dtype=torch.long), code // layout.grid])
    col = torch.cat([torch.zeros(t, dtype=torch.long), code % layout.grid])
    given = torch.cat([torch.zeros(t, dtype=torch.bool), torch.tensor(layout.given_slots).repeat_interleave(n)])
    return Slots(*(x.to(device) for x in (frame, time, index, row, col, given)))


# ---------------------------------------------------------------------------------------------------------------
# Mask rules: rule(q, k) -> bool, for slot indices q and k (broadcastable tensors). True = q may attend to k.


def spatial_rule(s: Slots) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The spatial channel (CogView2's, in CogVideo): text sees text; a frame code sees all text and its own frame,
    causally in a predicted frame, wholly in a given one."""

    def rule(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        same_frame = (s.frame[q] == s.frame[k]) & ~s.is_text[q]
        return s.is_text[k] | (same_frame & (s.given[q] | (s.index[k] <= s.index[q])))

    return rule


def window_ids(s: Slots, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (row, column) window of every slot on a grid cut into window x window squares, the cuts moved by
    `shift` codes (Swin's shifted windows, without the cyclic roll: the roll plus its region mask cut the grid
    into exactly these pieces)."""
    return (s.row + window - shift) // window, (s.col + window - shift) // window


def temporal_rule(s: Slots, window: int = 0, shift: int = 0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The temporal channel: a frame code sees all text and, across frames,
    - given frames: every given frame, nothing else (stage 2's 0, 2, 4, bidirectionally);
    - predicted frames: every given frame, every earlier predicted frame wholly, its own frame causally
      (stage 1: causal over all frames in time order; stage 2: frame 1 never sees frame 3);
    - with `window` > 0, only codes of the same window (3D window attention; `shift` moves the cuts).
    Text slots see text only (the channel's output is not used there)."""
    if window > 0:
        window_row, window_col = window_ids(s, window, shift)

    def rule(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        frames = ~s.is_text[q] & ~s.is_text[k]
        order = (
            s.given[k]
            | (~s.given[q] & (s.frame[k] < s.frame[q]))
            | ((s.frame[k] == s.frame[q]) & (s.index[k] <= s.index[q]))
        )
        if window > 0:
            order = order & (window_row[q] == window_row[k]) & (window_col[q] == window_col[k])
        return s.is_text[k] | (frames & order)

    return rule


def layer_shift(layer: int, shift: int) -> int:
    """Windows are shifted on odd layers (CogVideo: layer_id % 2 == 1)."""
    return shift if layer % 2 == 1 else 0


@functools.lru_cache(maxsize=64)
def dense_mask(layout: Layout, channel: str, window: int = 0, shift: int = 0, device: str = "cpu") -> torch.Tensor:
    """(S, S) bool: the rule of `channel` ('spatial' or 'temporal') for every pair of slots."""
    s = slots(layout, device)
    rule = spatial_rule(s) if channel == "spatial" else temporal_rule(s, window, shift)
    q = torch.arange(layout.length, device=device)
    return rule(q[:, None], q[None, :])


def with_text_mask(rule: Callable, text_valid: torch.Tensor, text_slots: int) -> Callable:
    """A FlexAttention mask_mod: `rule` with pads of the text (text_valid (B, L+1) False) hidden, per sample.
    A slot may always see itself, so a pad's row is never empty."""

    def mask_mod(b, h, q, k):
        visible = torch.where(k < text_slots, text_valid[b, k.clamp(max=text_slots - 1)], True)
        return rule(q, k) & (visible | (q == k))

    return mask_mod


def key_visible(text_valid: torch.Tensor, length: int) -> torch.Tensor:
    """(B, S) bool: which slots are real (pads of the text are not)."""
    b, t = text_valid.shape
    return torch.cat([text_valid, text_valid.new_ones(b, length - t)], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Building a sample


def build_inputs(
    layout: Layout,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    fps_ids: torch.Tensor,
    codes: torch.Tensor,
    codebook_size: int,
    boi_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch as the model sees it.

    text_ids, text_mask (B, L); fps_ids (B,); codes (B, F, g*g) in time order (a frame not known yet may hold
    anything: stage 2's frames 1 and 3 at generation). Ids: frame codes are 0..K-1, text pieces K + piece id.
    Returns tokens (B, S), targets (B, S) (IGNORE where nothing is predicted) and text_valid (B, L+1)."""
    b, n = text_ids.shape[0], layout.frame_len
    text = torch.cat([text_ids, fps_ids[:, None]], dim=1).long() + codebook_size  # (B, L+1)
    text_valid = torch.cat([text_mask.bool(), text_mask.new_ones(b, 1, dtype=torch.bool)], dim=1)
    inputs, targets = [text], [torch.full_like(text, IGNORE)]
    boi = torch.full((b, 1), codebook_size + boi_id, dtype=torch.long, device=codes.device)
    for time, given in zip(layout.slot_times, layout.given_slots):
        frame = codes[:, time].long()  # (B, n)
        if given:
            inputs.append(frame)
            targets.append(torch.full_like(frame, IGNORE))
        else:
            inputs.append(torch.cat([boi, frame[:, : n - 1]], dim=1))
            targets.append(frame)
    return torch.cat(inputs, dim=1), torch.cat(targets, dim=1), text_valid
