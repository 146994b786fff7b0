"""The masks and layouts of both stages, as pure functions: who sees whom, where every code sits."""

from __future__ import annotations

import pytest
import torch

from cogflow.model.cogvideo import layout as L
from cogflow.model.cogvideo.layout import IGNORE, Layout, build_inputs, dense_mask, slots


def frame_block(mask: torch.Tensor, lay: Layout, a: int, b: int) -> torch.Tensor:
    """The (n, n) part of a mask where slot-frame a's codes look at slot-frame b's."""
    sa, sb = lay.frame_start(a), lay.frame_start(b)
    return mask[sa : sa + lay.frame_len, sb : sb + lay.frame_len]


def test_stage1_spatial_sees_text_and_own_frame_causally() -> None:
    lay = Layout(text_len=6, grid=4, stage=1)
    m = dense_mask(lay, "spatial")
    t = lay.text_slots
    assert m[:t, :t].all() and not m[:t, t:].any()  # text sees all text, no frame
    assert m[t:, :t].all()  # every code sees every text slot (pads are hidden per sample, later)
    causal = torch.ones(lay.frame_len, lay.frame_len, dtype=torch.bool).tril()
    for a in range(5):
        for b in range(5):
            assert torch.equal(frame_block(m, lay, a, b), causal if a == b else torch.zeros_like(causal))


def test_stage1_temporal_is_causal_over_frames_in_time_order() -> None:
    lay = Layout(text_len=6, grid=4, stage=1)
    m = dense_mask(lay, "temporal")
    t = lay.text_slots
    frames = m[t:, t:]
    assert torch.equal(frames, torch.ones_like(frames).tril())
    assert m[t:, :t].all() and not m[:t, t:].any()
    assert lay.slot_times == (0, 1, 2, 3, 4) and not any(lay.given_slots)


def test_stage2_given_frames_bidirectional_and_frame1_never_sees_frame3() -> None:
    lay = Layout(text_len=6, grid=4, stage=2)
    assert lay.slot_times == (0, 2, 4, 1, 3) and lay.given_slots == (True, True, True, False, False)
    full, none = torch.ones(16, 16, dtype=torch.bool), torch.zeros(16, 16, dtype=torch.bool)
    causal = full.tril()
    spatial, temporal = dense_mask(lay, "spatial"), dense_mask(lay, "temporal")
    slot_of = {time: slot for slot, time in enumerate(lay.slot_times)}
    for channel in (spatial, temporal):
        assert torch.equal(frame_block(channel, lay, slot_of[1], slot_of[3]), none)  # frame 1 never sees frame 3
        for g in (0, 2, 4):  # given frames never see the predicted ones
            for p in (1, 3):
                assert torch.equal(frame_block(channel, lay, slot_of[g], slot_of[p]), none)
    for g in (0, 2, 4):
        for h in (0, 2, 4):  # given frames see each other wholly in the temporal channel
            assert torch.equal(frame_block(temporal, lay, slot_of[g], slot_of[h]), full)
        assert torch.equal(frame_block(spatial, lay, slot_of[g], slot_of[g]), full)  # ... and themselves
    for p in (1, 3):
        assert torch.equal(frame_block(spatial, lay, slot_of[p], slot_of[p]), causal)
        assert torch.equal(frame_block(temporal, lay, slot_of[p], slot_of[p]), causal)
        for g in (0, 2, 4):
            assert torch.equal(frame_block(temporal, lay, slot_of[p], slot_of[g]), full)
    assert torch.equal(frame_block(temporal, lay, slot_of[3], slot_of[1]), full)  # frame 3 sees all of frame 1


def test_swin_windows_and_shift_on_alternate_layers() -> None:
    lay = Layout(text_len=2, grid=10, stage=2)
    s = slots(lay)
    frame = slice(lay.text_slots, lay.text_slots + 100)
    rows, cols = L.window_ids(s, 5, 0)
    plain = (rows[frame] * 100 + cols[frame]).unique(return_counts=True)[1]
    assert sorted(plain.tolist()) == [25, 25, 25, 25]  # four 5x5 windows
    rows, cols = L.window_ids(s, 5, 2)
    shifted = sorted((rows[frame] * 100 + cols[frame]).unique(return_counts=True)[1].tolist())
    assert shifted == sorted([a * b for a in (3, 5, 2) for b in (3, 5, 2)])  # cuts at 3 and 8: pieces of 3, 5, 2
    assert [L.layer_shift(i, 2) for i in range(4)] == [0, 2, 0, 2]

    even, odd = dense_mask(lay, "temporal", 5, 0), dense_mask(lay, "temporal", 5, 2)
    whole = dense_mask(lay, "temporal")
    assert not torch.equal(even, odd)
    assert (even <= whole).all() and (odd <= whole).all()  # windows only take away
    # code (0, 4) and code (0, 5) share no window unshifted, and share one shifted (cut at 3 and 8)
    q, k = lay.frame_start(3) + 4, lay.frame_start(0) + 5
    assert not even[q, k] and odd[q, k]
    # every code still sees all text and itself
    t = lay.text_slots
    assert even[t:, :t].all() and odd[t:, :t].all() and even.diagonal().all() and odd.diagonal().all()


def test_windowed_stage1_is_causal_within_windows_across_frames() -> None:
    lay = Layout(text_len=2, grid=10, stage=1)
    m = dense_mask(lay, "temporal", 5, 0)
    q = lay.frame_start(2) + 0  # frame 2, code (0, 0)
    seen_frame1 = m[q, lay.frame_start(1) : lay.frame_start(2)].view(10, 10)
    assert seen_frame1[:5, :5].all() and seen_frame1.sum() == 25  # its whole window of the earlier frame, nothing else
    assert not m[q, lay.frame_start(3) :].any()  # no later frame


def test_flex_mask_mod_is_the_dense_mask_with_pads_hidden() -> None:
    lay = Layout(text_len=6, grid=4, stage=2)
    s = slots(lay)
    valid = torch.ones(2, lay.text_slots, dtype=torch.bool)
    valid[0, :4] = False  # sample 0: four pads
    q = torch.arange(lay.length)
    for rule, dense in (
        (L.spatial_rule(s), dense_mask(lay, "spatial")),
        (L.temporal_rule(s, 2, 1), dense_mask(lay, "temporal", 2, 1)),
    ):
        mod = L.with_text_mask(rule, valid, lay.text_slots)
        for b in range(2):
            got = mod(torch.tensor(b), torch.tensor(0), q[:, None], q[None, :])
            visible = L.key_visible(valid, lay.length)[b]
            assert torch.equal(got, dense & (visible[None, :] | torch.eye(lay.length, dtype=torch.bool)))


def test_build_inputs_shifts_predicted_frames_and_keeps_given_ones() -> None:
    lay, k, boi = Layout(text_len=3, grid=2, stage=2), 50, 2
    codes = torch.arange(20).view(1, 5, 4)  # frame t holds 4t .. 4t+3
    tokens, targets, valid = build_inputs(
        lay, torch.tensor([[0, 7, 8]]), torch.tensor([[False, True, True]]), torch.tensor([6]), codes, k, boi
    )
    assert tokens[0, :4].tolist() == [k + 0, k + 7, k + 8, k + 6] and (targets[0, :4] == IGNORE).all()
    assert valid.tolist() == [[False, True, True, True]]
    frames = tokens[0, 4:].view(5, 4).tolist()
    assert frames[:3] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]  # given: times 0, 2, 4 as they are
    assert frames[3:] == [[k + boi, 4, 5, 6], [k + boi, 12, 13, 14]]  # predicted: <boi> then the codes, shifted
    assert targets[0, 4:].view(5, 4)[3:].tolist() == [[4, 5, 6, 7], [12, 13, 14, 15]]
    assert (targets[0, 4:].view(5, 4)[:3] == IGNORE).all()


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ValueError):
        Layout(stage=3)
    with pytest.raises(ValueError):
        Layout(stage=2, frames=1)
