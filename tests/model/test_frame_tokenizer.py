"""cogflow.model.tokenizers.frame: shapes and layouts, the EMA codebook and its restarts, and learning on real frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cogflow.model.tokenizers.frame import (
    FrameTokenizer,
    FrameTokenizerConfig,
    codebook_usage,
    psnr,
)

TINY = FrameTokenizerConfig(compression=16, channels=8, res_blocks=1, codebook_size=64, code_dim=16)


@pytest.mark.parametrize("compression, grid", [(8, 20), (16, 10)])
def test_a_160_frame_becomes_the_code_grid_of_its_compression_and_back(compression: int, grid: int) -> None:
    model = FrameTokenizer(
        FrameTokenizerConfig(compression=compression, channels=8, codebook_size=32, code_dim=8)
    ).eval()
    frames = torch.randint(0, 256, (2, 160, 160, 3), dtype=torch.uint8)
    codes = model.encode(frames)
    assert codes.shape == (2, grid, grid) and codes.dtype == torch.int64 and int(codes.max()) < 32
    decoded = model.decode(codes)
    assert decoded.shape == (2, 160, 160, 3) and decoded.dtype == torch.uint8
    assert model.config.grid() == grid


def test_bad_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="compression"):
        FrameTokenizerConfig(compression=12)


def test_the_first_update_seeds_every_code_from_the_data_and_ema_follows_it() -> None:
    torch.manual_seed(0)
    model = FrameTokenizer(TINY)
    quantizer = model.quantizer
    z = torch.randn(4, TINY.code_dim, 10, 10) * 3 + 7  # far from the random initial codes
    quantizer(z)
    # a code that got vectors is now their mean, every other one sits on an encoder output: all of the
    # codebook is among the data (mean 7), none where the random initial codes were (mean 0)
    assert float((quantizer.embed.mean(1) - 7).abs().max()) < 2.5
    # codes then move towards the mean of what they are assigned (by EMA), and used ones are not restarted
    before = quantizer.embed.clone()
    for _ in range(20):
        quantizer(z)
    used = quantizer.cluster_size > TINY.dead_after
    assert used.any() and not torch.equal(before[used], quantizer.embed[used])


def test_a_code_nobody_uses_is_restarted() -> None:
    torch.manual_seed(0)
    quantizer = FrameTokenizer(TINY).quantizer
    z = torch.randn(2, TINY.code_dim, 4, 4)
    quantizer(z)
    quantizer.embed[5] = 1e6  # far from everything: never chosen again
    quantizer.cluster_size[5] = 0.0
    quantizer(z)
    assert float(quantizer.embed[5].abs().max()) < 100 and quantizer.cluster_size[5] == 1.0


def test_straight_through_gradients_reach_the_encoder() -> None:
    model = FrameTokenizer(TINY)
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    loss, info = model.loss(model.to_input(frames))
    loss.backward()
    assert model.encoder.net[0].weight.grad is not None and float(model.encoder.net[0].weight.grad.abs().sum()) > 0
    assert set(info) == {"mse", "commitment", "codes"}


def test_psnr_and_codebook_usage() -> None:
    a = torch.full((4, 4, 3), 100, dtype=torch.uint8)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 1) == pytest.approx(10 * np.log10(255**2 / 1), rel=1e-6)
    used, perplexity = codebook_usage(torch.tensor([0, 1, 2, 3]), 8)
    assert used == 0.5 and perplexity == pytest.approx(4.0)


FSQ = FrameTokenizerConfig(
    compression=16, channels=8, res_blocks=1, quantizer="fsq", fsq_levels=(8, 5, 3), codebook_size=120, code_dim=3
)


def test_fsq_levels_must_make_the_codebook() -> None:
    with pytest.raises(ValueError, match="codebook_size = 120 and code_dim = 3"):
        FrameTokenizerConfig(quantizer="fsq", fsq_levels=(8, 5, 3), codebook_size=1024, code_dim=3)
    with pytest.raises(ValueError, match="fsq_levels"):
        FrameTokenizerConfig(quantizer="fsq", fsq_levels=(), codebook_size=1, code_dim=0)
    with pytest.raises(ValueError, match="vq or fsq"):
        FrameTokenizerConfig(quantizer="lfq")


def test_fsq_reaches_every_code_once_and_lookup_inverts_codes() -> None:
    quantizer = FrameTokenizer(FSQ).quantizer
    # One point per level combination, at the level values themselves (in bounded units): every id 0..119 once.
    grid = torch.cartesian_prod(*(torch.arange(n, dtype=torch.float32) - n // 2 for n in FSQ.fsq_levels))  # (120, 3)
    span, offset = quantizer.span, quantizer.offset
    z = torch.atanh((grid + offset) / span) - torch.atanh(offset / span)  # the encoder outputs that bound to them
    z = z.T.reshape(1, 3, 1, 120)  # (B, D, h, w)
    quantized, codes, commitment = quantizer(z)
    assert sorted(codes.flatten().tolist()) == list(range(120)) and float(commitment) == 0.0
    assert torch.allclose(quantizer.lookup(codes), quantized, atol=1e-6)
    assert torch.equal(quantizer.codes(z), codes)
    assert float(quantized.abs().max()) <= 1.0


def test_fsq_codes_do_not_move_with_small_noise_and_gradients_pass() -> None:
    model = FrameTokenizer(FSQ)
    z = torch.randn(4, 3, 10, 10)
    codes = model.quantizer.codes(z)
    nudged = model.quantizer.codes(z + 1e-4 * torch.randn_like(z))
    assert (codes == nudged).float().mean() > 0.99  # a code changes only where a value sits on a rounding edge
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    loss, info = model.loss(model.to_input(frames))
    loss.backward()
    assert float(model.encoder.net[0].weight.grad.abs().sum()) > 0 and float(info["commitment"]) == 0.0


def test_an_fsq_tokenizer_saves_and_loads(tmp_path) -> None:
    from cogflow.model.tokenizers.frame import load, save

    model = FrameTokenizer(FSQ).eval()
    frames = torch.randint(0, 256, (2, 160, 160, 3), dtype=torch.uint8)
    again = load(save(model, tmp_path / "fsq.pt"))
    assert again.config == FSQ and torch.equal(again.encode(frames), model.encode(frames))
    assert torch.equal(again.decode(model.encode(frames)), model.decode(model.encode(frames)))


def test_a_tile_encoders_code_depends_on_its_own_tile_alone() -> None:
    config = FrameTokenizerConfig(
        compression=16, channels=8, encoder="tile", quantizer="fsq", fsq_levels=(8, 5, 3), codebook_size=120, code_dim=3
    )
    model = FrameTokenizer(config).eval()
    frames = torch.randint(0, 256, (1, 160, 160, 3), dtype=torch.uint8)
    changed = frames.clone()
    changed[:, 32:48, 64:80] = 255 - changed[:, 32:48, 64:80]  # one tile: row 2, column 4
    before, after = model.encoder(model.to_input(frames)), model.encoder(model.to_input(changed))
    moved = (before - after).abs().amax(dim=1)[0] > 0  # (10, 10): which codes' encoder outputs changed
    assert moved[2, 4] and int(moved.sum()) == 1
    # and the same tile content anywhere is the same code
    flat = torch.zeros(1, 160, 160, 3, dtype=torch.uint8) + torch.tensor([235, 225, 200], dtype=torch.uint8)
    assert model.encode(flat).unique().numel() == 1
    with pytest.raises(ValueError, match="conv or tile"):
        FrameTokenizerConfig(encoder="vit")


def test_decoding_in_bf16_moves_pixels_by_a_few_levels_at_most(monkeypatch) -> None:
    """Where the device has native bf16, decode runs its convolutions in it: forced here on any CPU (an emulated
    bf16 is slower, not different), the frames stay within a few levels of float32's (this untrained model's
    largest move is 9 levels of 255; the demo's trained tokenizer's, 2)."""
    import cogflow.model.tokenizers.frame as frame

    torch.manual_seed(0)
    model = FrameTokenizer(FSQ).eval()
    codes = model.encode(torch.randint(0, 256, (4, 160, 160, 3), dtype=torch.uint8))
    monkeypatch.setattr(frame, "native_bf16", lambda device: False)
    exact = model.decode(codes).int()
    monkeypatch.setattr(frame, "native_bf16", lambda device: True)
    fast = model.decode(codes).int()
    assert fast.shape == exact.shape and fast.dtype == exact.dtype
    difference = (fast - exact).abs()
    assert 0 < difference.float().mean() < 1 and difference.max() <= 16
