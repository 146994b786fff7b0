"""The transformer: cached passes equal the full one, a tiny model overfits a batch, FlexAttention's block masks
give SDPA's answer, the spatial channel loads from a text-to-image model and stays frozen."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from cogflow.model.cogvideo.layout import Layout, build_inputs
from cogflow.model.cogvideo.transformer import (
    CogVideoTransformer,
    KVCache,
    ModelSpec,
    TransformerConfig,
    attend,
    attend_by_prefix,
    layout_prefix_blocks,
    load,
    prefix_blocks,
    rotary_angles,
    rotate,
    save,
)

K, V = 40, 30  # frame codes, text pieces


def batch(lay: Layout, seed: int = 0, b: int = 2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, V, (b, lay.text_len), generator=g)
    mask = torch.zeros(b, lay.text_len, dtype=torch.bool)
    mask[0, 2:], mask[1, lay.text_len - 2 :] = True, True  # left-padded captions of different lengths
    codes = torch.randint(0, K, (b, 5, lay.frame_len), generator=g)
    return build_inputs(lay, ids, mask, torch.tensor([4, 6])[:b], codes, K, 2)


@pytest.mark.parametrize(
    "stage,window,shift,rope",
    [(1, 0, 0, False), (1, 2, 1, False), (2, 2, 1, False), (2, 0, 0, False), (1, 0, 0, True), (2, 2, 1, True)],
)
def test_cached_one_slot_at_a_time_equals_the_full_pass(stage: int, window: int, shift: int, rope: bool) -> None:
    torch.manual_seed(0)
    lay = Layout(text_len=5, grid=4, stage=stage)
    spec = ModelSpec(TransformerConfig(layers=3, hidden=32, heads=4, rope=rope), lay, K, V, window, shift)
    model = CogVideoTransformer(spec).double().eval()
    tokens, _, valid = batch(lay)
    with torch.no_grad():
        full = model.logits(model(tokens, valid))  # (B, S, K)
        cache = KVCache.empty(spec, 2, torch.device("cpu"), torch.float64)
        first = lay.text_slots + sum(lay.given_slots) * lay.frame_len  # text and given frames: known, in one pass
        parts = [model(tokens[:, :first], valid, torch.arange(first), cache)]
        parts += [model(tokens[:, p : p + 1], valid, torch.tensor([p]), cache) for p in range(first, lay.length)]
        stepped = model.logits(torch.cat(parts, dim=1))
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("stage,window,shift", [(1, 0, 0), (2, 2, 1)])
def test_temporal_attention_by_prefixes_gives_the_dense_values_and_gradients(
    stage: int, window: int, shift: int
) -> None:
    torch.manual_seed(0)
    lay = Layout(text_len=5, grid=4, stage=stage)
    spec = ModelSpec(TransformerConfig(layers=2, hidden=32, heads=4), lay, K, V, window, shift)
    model = CogVideoTransformer(spec).double()
    _, _, valid = batch(lay)
    mask = model.masks(valid, torch.arange(lay.length))[1]["temporal"]
    assert isinstance(mask, torch.Tensor)
    blocks = layout_prefix_blocks(lay, window, shift)  # layer 1's shift: what the training pass uses
    seen = prefix_blocks(mask, lay.text_slots, lay.frame_len)  # this batch's own: pads only take keys away
    assert [a[:2] for a in seen] == [a[:2] for a in blocks] and all(s[2] <= b[2] for s, b in zip(seen, blocks))
    if stage == 1:  # causal: frame slot f sees the text and frames 0..f, nothing later
        assert [w for _, _, w in blocks] == [lay.text_slots + f * lay.frame_len for f in range(6)]
    assert sum((b - a) * w for a, b, w in blocks) < lay.length**2  # less work than the dense pass
    q, k, v = (torch.randn(2, 4, lay.length, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    dense = attend(q, k, v, mask, 0.0)
    grads = torch.autograd.grad(dense.square().sum(), (q, k, v))
    pieces = attend_by_prefix(q, k, v, mask, blocks, 0.0)
    torch.testing.assert_close(pieces, dense, rtol=0, atol=1e-12)
    for got, want in zip(torch.autograd.grad(pieces.square().sum(), (q, k, v)), grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_rotary_scores_depend_on_the_offset_between_codes_and_leave_text_alone() -> None:
    """rope: one query and key vector placed at two pairs of frame slots with the same (time, row, column) offset
    score the same; at another offset, differently; text slots are not turned."""
    lay = Layout(text_len=5, grid=4, stage=1)
    spec = ModelSpec(TransformerConfig(layers=1, hidden=32, heads=4, rope=True), lay, K, V)
    angles = rotary_angles(spec)  # (S, 4)
    assert angles.shape == (lay.length, 4) and not angles[: lay.text_slots].any()

    def slot(time: int, row: int, col: int) -> int:
        return lay.text_slots + time * lay.frame_len + row * lay.grid + col

    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(a: int, b: int) -> float:
        turn = [(angles[[s]].double().cos(), angles[[s]].double().sin()) for s in (a, b)]
        return float((rotate(q, *turn[0]) * rotate(k, *turn[1])).sum())

    same = score(slot(1, 2, 1), slot(0, 1, 0)), score(slot(4, 3, 3), slot(3, 2, 2))  # offset (1, 1, 1) both
    assert same[0] == pytest.approx(same[1], abs=1e-6)  # angles are float32
    assert score(slot(1, 2, 1), slot(0, 1, 1)) != pytest.approx(same[0], abs=1e-3)


def test_computing_a_slot_before_what_it_sees_is_refused() -> None:
    lay = Layout(text_len=5, grid=4, stage=1)
    spec = ModelSpec(TransformerConfig(layers=1, hidden=16, heads=2), lay, K, V)
    model = CogVideoTransformer(spec).eval()
    tokens, _, valid = batch(lay)
    cache = KVCache.empty(spec, 2, torch.device("cpu"))
    with torch.no_grad(), pytest.raises(RuntimeError, match="not computed yet"):
        model(tokens[:, -1:], valid, torch.tensor([lay.length - 1]), cache)


def test_a_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    lay = Layout(text_len=5, grid=4, stage=1)
    model = CogVideoTransformer(ModelSpec(TransformerConfig(layers=2, hidden=64, heads=4), lay, K, V))
    tokens, targets, valid = batch(lay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, n = model.loss(tokens, targets, valid)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert n == 2 * 5 * 16  # every code of every frame is predicted in stage 1
    assert first > 3.0 and loss.item() < 0.1, (first, loss.item())  # from ln(40) = 3.7 nats to memorised


def test_mixing_starts_even_and_text_uses_the_spatial_channel_alone() -> None:
    lay = Layout(text_len=5, grid=4, stage=1)
    model = CogVideoTransformer(ModelSpec(TransformerConfig(layers=2, hidden=16, heads=2), lay, K, V)).eval()
    assert all(torch.equal(b.attention.alpha, torch.zeros(16)) for b in model.blocks)
    tokens, _, valid = batch(lay)
    with torch.no_grad():
        before = model(tokens, valid)
        for b in model.blocks:  # scrambling the temporal channel changes frames, never text
            torch.nn.init.normal_(b.attention.temporal_out.weight)
        after = model(tokens, valid)
    t = lay.text_slots
    assert torch.equal(before[:, :t], after[:, :t]) and not torch.allclose(before[:, t:], after[:, t:])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_block_masks_match_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.attention.flex_attention as fa

    from cogflow.model.cogvideo import transformer

    # eager FlexAttention on the CPU (slow but exact); the compiled kernel is for CUDA
    monkeypatch.setattr(transformer, "_compiled_flex", lambda: fa.flex_attention)
    torch.manual_seed(0)
    lay = Layout(text_len=5, grid=4, stage=2)
    spec = ModelSpec(TransformerConfig(layers=2, hidden=32, heads=2), lay, K, V, 2, 1)
    model = CogVideoTransformer(spec).eval()
    tokens, _, valid = batch(lay)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, valid, flex=True), model(tokens, valid), rtol=1e-4, atol=1e-5)


def test_spatial_channel_from_a_text_to_image_model_is_loaded_and_frozen() -> None:
    torch.manual_seed(0)
    config = TransformerConfig(layers=2, hidden=32, heads=2)
    image = CogVideoTransformer(ModelSpec(config, Layout(text_len=5, grid=4, stage=1, frames=1), K, V))
    video = CogVideoTransformer(ModelSpec(config, Layout(text_len=5, grid=4, stage=1), K, V))
    names = video.load_spatial(image.state_dict(), freeze=True)
    state = video.state_dict()
    assert "blocks.0.attention.spatial_qkv.weight" in names and "blocks.0.attention.temporal_qkv.weight" not in names
    assert all(torch.equal(state[n], image.state_dict()[n]) for n in names)
    assert torch.equal(state["blocks.1.attention.temporal_qkv.weight"], state["blocks.1.attention.spatial_qkv.weight"])
    trainable = {n for n, p in video.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in video.named_parameters()} - set(names)
    assert {n.split(".")[-2] for n in trainable if n.startswith("blocks.")} == {"temporal_qkv", "temporal_out"} | {
        "attention"
    }


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    lay = Layout(text_len=5, grid=4, stage=2)
    model = CogVideoTransformer(ModelSpec(TransformerConfig(layers=2, hidden=32, heads=2), lay, K, V, 2, 1)).double()
    tokens, targets, valid = batch(lay)
    grads = []
    for recompute in (False, True):
        model.zero_grad()
        model.activation_checkpointing = recompute
        loss, _ = model.loss(tokens, targets, valid)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=1e-12, msg=name)


def test_levels_embedding_shares_what_codes_on_one_level_have_in_common() -> None:
    """code_embedding = levels: an FSQ code's embedding is its own row plus one row per (channel, level), in the
    tokenizer's mixed-radix order; cached decoding still equals the full pass."""
    torch.manual_seed(0)
    lay = Layout(text_len=5, grid=4, stage=1)
    levels = (2, 4, 5)  # 40 codes, K
    spec = ModelSpec(
        TransformerConfig(layers=2, hidden=32, heads=4, code_embedding="levels"), lay, K, V, code_levels=levels
    )
    model = CogVideoTransformer(spec).double().eval()
    digits = model.code_digits - torch.tensor([0, 2, 6])  # back to 0-based digits per channel
    assert digits[1].tolist() == [1, 0, 0] and digits[2].tolist() == [0, 1, 0] and digits[8].tolist() == [0, 0, 1]
    table = model.code_table()
    own = model.embed.weight[:K]
    # codes 0 and 1 differ only on channel 0: their level parts differ by exactly that channel's two rows
    assert torch.allclose(
        (table[1] - own[1]) - (table[0] - own[0]), model.level_embed.weight[1] - model.level_embed.weight[0]
    )
    tokens, _, valid = batch(lay)
    with torch.no_grad():
        full = model.logits(model(tokens, valid))
        cache = KVCache.empty(spec, 2, torch.device("cpu"), torch.float64)
        parts = [model(tokens[:, : lay.text_slots], valid, torch.arange(lay.text_slots), cache)]
        parts += [
            model(tokens[:, p : p + 1], valid, torch.tensor([p]), cache) for p in range(lay.text_slots, lay.length)
        ]
    torch.testing.assert_close(model.logits(torch.cat(parts, dim=1)), full, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="needs an FSQ frame tokenizer"):
        ModelSpec(TransformerConfig(code_embedding="levels"), lay, K, V)


def test_model_files_hold_plain_values_and_older_files_still_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model file loads without unpickling any class (so it survives moves of the code); files of cogflow before
    0.2 pickled the spec's classes as model.transformer.* and model.layout.*, and load through a renaming reader."""
    from cogflow.model.cogvideo import layout as layout_module
    from cogflow.model.cogvideo import transformer as transformer_module

    spec = ModelSpec(TransformerConfig(layers=1, hidden=16, heads=2), Layout(text_len=4, grid=2, stage=2), K, V, 2, 1)
    model = CogVideoTransformer(spec)
    new = save(model, str(tmp_path / "new.pt"), {"stage": 2})
    assert isinstance(torch.load(new, weights_only=True)["spec"], dict)
    loaded, saved = load(new)
    assert loaded.spec == spec and saved["stage"] == 2

    # an old file: the same classes, pickled under the module paths of the time
    for cls, old in (
        (ModelSpec, "model.transformer"),
        (TransformerConfig, "model.transformer"),
        (Layout, "model.layout"),
    ):
        monkeypatch.setattr(cls, "__module__", old)
    monkeypatch.setitem(sys.modules, "model.transformer", transformer_module)
    monkeypatch.setitem(sys.modules, "model.layout", layout_module)
    torch.save({"spec": spec, "state": model.state_dict(), "stage": 2}, tmp_path / "old.pt")
    monkeypatch.undo()
    assert "model.transformer" not in sys.modules
    loaded, saved = load(str(tmp_path / "old.pt"))
    assert loaded.spec == spec and saved["stage"] == 2
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
