"""The frame tokenizer: a VQ-VAE that turns a 160x160 RGB frame into a grid of codebook ids and back.

CogVideo used icetk's pretrained hierarchical VQ-VAE (20,000 EMA codes, compression 8: 20x20 codes per
160x160 frame), which cannot be fetched here. This one is trained from the lake's
clip frames. Read top to bottom: config, building blocks, quantizer, the model.

- Compression 8 gives 20x20 codes (the paper's layout), 16 gives 10x10 (small configurations).
- Two quantizers:
  - `vq`: a learned codebook (VQ-VAE). It learns by exponential moving averages of the encoder outputs assigned
    to each code (no codebook gradient), with a commitment loss pulling the encoder towards its codes; a code
    nobody has used for a while is restarted on a random encoder output of the batch. Under DDP the quantizer
    sums its statistics over all ranks, so every rank keeps the same codebook.
  - `fsq`: finite scalar quantization (Mentzer et al. 2023). The encoder's few output channels are each bounded
    and rounded to a handful of levels; a code is the tuple of levels, so the codebook is a fixed grid of
    prod(levels) points. Nothing to collapse, restart or commit to, and an encoder output moves to another code
    only when it crosses a rounding boundary: the same content keeps the same code. A VQ codebook instead
    crowds many codes onto the most frequent content (a flat background is most of a frame), so small codec
    noise picks among several codes for the same background, and a transformer on those codes spends its
    loss on telling equivalent codes apart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cogflow.model.distributed import native_bf16
from cogflow.pipeline.contract import CLIP_SIZE


@dataclass(frozen=True)
class FrameTokenizerConfig:
    compression: int = 16  # 8: 20x20 codes per 160x160 frame (CogVideo), 16: 10x10
    channels: int = 32  # width of the full-resolution level; it doubles on the way down, up to 8x
    res_blocks: int = 1  # residual blocks per level
    # "conv": a convolutional encoder, whose codes also see the tiles around them; "tile": each code is a function of
    # its own compression x compression tile alone, so the same tile always gets the same code.
    encoder: str = "conv"
    quantizer: str = "vq"  # "vq": learned EMA codebook; "fsq": finite scalar quantization on `fsq_levels`
    codebook_size: int = 1024  # vq: codes in the book; fsq: must be prod(fsq_levels)
    code_dim: int = 64  # vq: width of a code vector; fsq: must be len(fsq_levels)
    fsq_levels: tuple[int, ...] = ()  # fsq: levels per channel, e.g. (8, 5, 5, 5): 1,000 codes
    ema_decay: float = 0.99  # vq only, like the three below
    commitment: float = 0.25
    dead_after: float = 0.01  # a code whose EMA usage falls below this many assignments per batch is restarted

    def __post_init__(self) -> None:
        if self.compression not in (4, 8, 16, 32):
            raise ValueError(f"compression must be 4, 8, 16 or 32, not {self.compression}")
        levels = tuple(int(n) for n in self.fsq_levels)
        object.__setattr__(self, "fsq_levels", levels)  # a saved config holds a list
        if self.quantizer == "fsq":
            if not levels or min(levels) < 2:
                raise ValueError(f"fsq needs fsq_levels of at least 2 per channel, not {list(levels)}")
            if self.codebook_size != math.prod(levels) or self.code_dim != len(levels):
                raise ValueError(
                    f"fsq_levels {list(levels)} make {math.prod(levels)} codes of {len(levels)} channels: "
                    f"set codebook_size = {math.prod(levels)} and code_dim = {len(levels)}"
                )
        elif self.quantizer != "vq":
            raise ValueError(f"quantizer must be vq or fsq, not {self.quantizer!r}")
        if self.encoder not in ("conv", "tile"):
            raise ValueError(f"encoder must be conv or tile, not {self.encoder!r}")

    @property
    def levels(self) -> int:
        return int(math.log2(self.compression))

    def grid(self, size: int = CLIP_SIZE) -> int:
        """Codes per side of a `size` frame."""
        return size // self.compression


# ---------------------------------------------------------------------------------------------------------------
# Building blocks


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _widths(config: FrameTokenizerConfig) -> list[int]:
    """Channels at each level, from the full-resolution one down: C, 2C, 4C, 8C, 8C, ..."""
    return [config.channels * min(2**i, 8) for i in range(config.levels + 1)]


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, code_dim, H/c, W/c)."""

    def __init__(self, config: FrameTokenizerConfig) -> None:
        super().__init__()
        widths = _widths(config)
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for i in range(config.levels):
            layers += [ResBlock(widths[i]) for _ in range(config.res_blocks)]
            layers.append(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1))  # halves H and W
        layers += [ResBlock(widths[-1]) for _ in range(config.res_blocks)]
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], config.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each position of (B, C, h, w) alone: GroupNorm would mix in statistics of the
    whole frame, and a tile's code would then depend on the rest of the frame."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TileEncoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, code_dim, H/c, W/c), each code from its own c x c tile alone: the tile's pixels
    as one vector (pixel_unshuffle), then an MLP per tile (1x1 convolutions, residual).

    Why: a convolutional encoder's code sees far past its tile, so a patch of plain background gets another code when
    the shape moves near it, or when codec noise elsewhere shifts the frame's statistics; the transformer then has to
    predict codes that change while the picture does not. Here the same tile content is the same code."""

    def __init__(self, config: FrameTokenizerConfig) -> None:
        super().__init__()
        c, width = config.compression, 2 * _widths(config)[-1]
        layers: list[nn.Module] = [nn.PixelUnshuffle(c), nn.Conv2d(3 * c * c, width, 1)]
        for _ in range(config.res_blocks + 1):
            layers.append(TileBlock(width))
        layers += [ChannelNorm(width), nn.SiLU(), nn.Conv2d(width, config.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TileBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            ChannelNorm(width),
            nn.SiLU(),
            nn.Conv2d(width, width, 1),
            ChannelNorm(width),
            nn.SiLU(),
            nn.Conv2d(width, width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Decoder(nn.Module):
    """(B, code_dim, h, w) -> (B, 3, h*c, w*c) in about [-1, 1]."""

    def __init__(self, config: FrameTokenizerConfig) -> None:
        super().__init__()
        widths = _widths(config)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(config.code_dim, widths[0], 3, padding=1)]
        layers += [ResBlock(widths[0]) for _ in range(config.res_blocks)]
        for i in range(config.levels):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i], widths[i + 1], 3, padding=1)]
            layers += [ResBlock(widths[i + 1]) for _ in range(config.res_blocks)]
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


# ---------------------------------------------------------------------------------------------------------------
# Quantizer


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class EMAQuantizer(nn.Module):
    """Nearest-code quantization with an EMA codebook and restarts of dead codes."""

    embed: torch.Tensor
    cluster_size: torch.Tensor
    embed_sum: torch.Tensor

    def __init__(self, config: FrameTokenizerConfig) -> None:
        super().__init__()
        self.decay, self.dead_after = config.ema_decay, config.dead_after
        embed = torch.randn(config.codebook_size, config.code_dim) * 0.1
        self.register_buffer("embed", embed)  # (K, D)
        # EMA of assignments per code; starting at 0, every code is restarted on an encoder output at the first
        # update, which seeds the codebook from the data
        self.register_buffer("cluster_size", torch.zeros(config.codebook_size))
        self.register_buffer("embed_sum", torch.zeros_like(embed))  # EMA of the sum of vectors assigned per code

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, h, w) ids of the nearest codes."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (N, D)
        distance = (
            flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        )  # (N, K)
        return distance.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, D, h, w) code vectors."""
        return F.embedding(codes, self.embed).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantized with a straight-through gradient, codes, commitment loss)."""
        # Distances and codebook statistics in float32 even under bf16 autocast: in bf16 the nearest code
        # would often be the wrong one.
        with torch.autocast(z.device.type, enabled=False):
            codes = self.codes(z)
            quantized = self.lookup(codes).to(z.dtype)
            if self.training:
                self._update(z.detach(), codes)
        commitment = F.mse_loss(z, quantized.detach())
        return z + (quantized - z).detach(), codes, commitment

    @torch.no_grad()
    def _update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (N, D)
        onehot = F.one_hot(codes.view(-1), self.embed.shape[0]).float()  # (N, K)
        counts = _all_sum(onehot.sum(0))  # (K,)
        sums = _all_sum(onehot.t() @ flat)  # (K, D)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps a rarely used code from dividing by ~0.
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + self.embed.shape[0] * 1e-5) * n
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        self._restart_dead(flat)

    def _restart_dead(self, flat: torch.Tensor) -> None:
        dead = self.cluster_size < self.dead_after
        if not dead.any():
            return
        # Random encoder outputs of this batch (rank 0's, broadcast, so every rank restarts alike).
        picks = flat[torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(picks, 0)
        self.embed[dead] = picks
        self.embed_sum[dead] = picks
        self.cluster_size[dead] = 1.0


class ScalarQuantizer(nn.Module):
    """Finite scalar quantization: channel i of the encoder output is squashed into (-L_i/2, L_i/2) and rounded,
    so it takes L_i values; a code is the tuple of values, numbered in mixed radix. Same interface as
    EMAQuantizer (the commitment loss is 0: there is no codebook to commit to)."""

    levels: torch.Tensor
    radix: torch.Tensor
    offset: torch.Tensor
    span: torch.Tensor

    def __init__(self, config: FrameTokenizerConfig) -> None:
        super().__init__()
        levels = torch.tensor(config.fsq_levels, dtype=torch.float32)
        self.register_buffer("levels", levels, persistent=False)  # (D,)
        self.register_buffer("radix", torch.cumprod(torch.cat([torch.ones(1), levels[:-1]]), 0), persistent=False)
        # An even number of levels has no level at 0: shift by half a step so the rounding stays symmetric.
        self.register_buffer("offset", (1 - levels % 2) * 0.5, persistent=False)
        self.register_buffer("span", (levels - 1) * (1 + 1e-3) / 2, persistent=False)

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    def _bounded(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> values in (-L/2, L/2) per channel, whose rounding takes exactly L values."""
        span, offset = self._shape(self.span), self._shape(self.offset)
        return torch.tanh(z + torch.atanh(offset / span)) * span - offset

    def _ids(self, bounded: torch.Tensor) -> torch.Tensor:
        """Bounded values (B, D, h, w) -> (B, h, w) code ids: the rounded levels 0..L-1 as mixed-radix digits."""
        digits = torch.round(bounded) + self._shape(self.levels // 2)
        return (digits * self._shape(self.radix)).sum(1).round().long()

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, h, w) code ids."""
        return self._ids(self._bounded(z.float()))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, D, h, w) quantized values, scaled to about [-1, 1]."""
        digits = (codes[:, None].float() / self._shape(self.radix)).floor() % self._shape(self.levels)
        return (digits - self._shape(self.levels // 2)) / self._shape(self.levels // 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantized with a straight-through gradient, codes, zero commitment loss)."""
        with torch.autocast(z.device.type, enabled=False):
            bounded = self._bounded(z.float())
            rounded = bounded + (torch.round(bounded) - bounded).detach()  # straight-through rounding
            quantized = rounded / self._shape(self.levels // 2)
            codes = self._ids(bounded.detach())
        return quantized.to(z.dtype), codes, z.new_zeros(())


# ---------------------------------------------------------------------------------------------------------------
# The model


class FrameTokenizer(nn.Module):
    def __init__(self, config: FrameTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TileEncoder(config) if config.encoder == "tile" else Encoder(config)
        self.quantizer = ScalarQuantizer(config) if config.quantizer == "fsq" else EMAQuantizer(config)
        self.decoder = Decoder(config)

    @staticmethod
    def to_input(frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
        return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    @staticmethod
    def to_frames(x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
        return x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> (reconstruction, codes (B, h, w), commitment loss)."""
        quantized, codes, commitment = self.quantizer(self.encoder(x))
        return self.decoder(quantized), codes, commitment

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return training_loss(x, self(x), self.config.commitment)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, h, w) int64 code ids."""
        return self.quantizer.codes(self.encoder(self.to_input(frames)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code ids -> (B, H, W, 3) uint8."""
        # channels-last activations (and weights, see `load`): the CPU's convolutions run about 1.5x faster; in
        # bf16 where the device has it natively about 2x faster again, and a pixel moves by at most 2 levels of 255
        z = self.quantizer.lookup(codes).contiguous(memory_format=torch.channels_last)
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=native_bf16(z.device)):
            return self.to_frames(self.decoder(z))


def training_loss(
    x: torch.Tensor, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], commitment_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The VQ-VAE objective from a forward pass's (reconstruction, codes, commitment): reconstruction MSE plus
    the weighted commitment loss (the codebook itself learns by EMA, not by gradient). Separate from the model
    so a DDP-wrapped forward can use it."""
    reconstruction, codes, commitment = outputs
    mse = F.mse_loss(reconstruction.float(), x.float())
    total = mse + commitment_weight * commitment
    return total, {"mse": mse.detach(), "commitment": commitment.detach(), "codes": codes}


def save(model: FrameTokenizer, path: str | Path) -> Path:
    """The model as one file: its config and weights (codebook included); read back with `load`."""
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, path)
    return Path(path)


def load(path: str | Path, device: str | torch.device = "cpu") -> FrameTokenizer:
    saved = torch.load(path, map_location=device, weights_only=True)
    model = FrameTokenizer(FrameTokenizerConfig(**saved["config"]))
    model.load_state_dict(saved["state_dict"])
    # what `decode` runs fastest with; Module.to takes memory_format, which torch's overloads leave out
    model.decoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model.to(device).eval()


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of uint8 images (any shape)."""
    mse = (reference.float() - reconstruction.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """(fraction of the codebook used, perplexity of the code distribution) over `codes`."""
    counts = torch.bincount(codes.reshape(-1), minlength=codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return float((counts > 0).float().mean()), math.exp(entropy)
