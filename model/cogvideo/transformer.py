"""The CogVideo transformer: one model file, read top to bottom (README: Train).

- One embedding table over [frame codes 0..K-1 | text pieces K..K+V-1]; logits only over frame codes, tied to
  their embeddings (CogVideo projects onto word_embeddings[:20000]).
- Positions: text slots count real pieces from the first one; frame codes add a time embedding (the frame's true
  time, so stage 2's slots [0 2 4 1 3] stay in order) to row and column embeddings.
- Every layer is pre-norm dual-channel attention then a shared MLP. The spatial channel sees text and the token's
  own frame; the temporal channel sees across frames (optionally in 3D windows, shifted on odd layers). A frame
  code mixes them as sigmoid(a) * spatial + (1 - sigmoid(a)) * temporal, with a per layer and dimension and 0 at
  the start; text uses the spatial channel alone.
- The spatial channel (with embeddings, norms and MLPs: everything but the temporal channel, the mixing and the
  time embedding) can be loaded from a 1-frame run of the same model and frozen, as CogVideo froze CogView2.
- Attention is PyTorch SDPA with the dense masks of model/cogvideo/layout.py; on CUDA, training can use FlexAttention
  with block masks made from the same rules, which skips blocks nobody attends.
- A key-value cache lets generation compute any set of slots whose inputs are known (one code at a time, or a
  wavefront of codes in several frames at once: model/cogvideo/sampling.py).
"""

from __future__ import annotations

import functools
import math
import pickle
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cogflow.model.cogvideo import layout as layouts
from cogflow.model.cogvideo.layout import IGNORE, Layout
from cogflow.pipeline.contract import CLIP_FRAMES


@dataclass(frozen=True)
class TransformerConfig:
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    # With an FSQ frame tokenizer a code is a tuple of levels (8 x 5 x 5 x 5, say), and codes that share levels
    # look alike. "levels" adds to each code's own embedding one embedding per (channel, level): what the model
    # learns about one code carries over to its neighbours on the grid, and the tied logits score each channel
    # as well as the whole code. "plain": one free embedding per code (the only choice for a VQ codebook).
    code_embedding: str = "plain"
    # Rotary positions: queries and keys of both channels turned by angles of the slot's (time, row, column), so an
    # attention score depends on the offset between two codes. A code then finds the same place in another frame
    # (where an object it must continue or interpolate is) by construction, instead of learning that from the sum
    # of absolute embeddings, which a small run spends its steps on and background codes never teach: there, any
    # background code of any place predicts the next one. The absolute embeddings stay. Text slots are not turned.
    rope: bool = False

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.rope and (self.hidden // self.heads) % 2:
            raise ValueError(f"rope needs an even head size, not {self.hidden // self.heads}")
        if self.code_embedding not in ("plain", "levels"):
            raise ValueError(f"code_embedding must be plain or levels, not {self.code_embedding!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes the model's shapes and masks; saved with its weights."""

    config: TransformerConfig
    layout: Layout
    codebook_size: int  # frame codes, from the frame tokenizer
    text_vocab: int  # text pieces, from the text tokenizer
    window: int = 0  # temporal window side in codes; 0: the temporal channel sees whole frames
    shift: int = 0  # how far odd layers move the window cuts
    code_levels: tuple[int, ...] = ()  # an FSQ tokenizer's levels per channel (code = mixed-radix digits); () for VQ

    def __post_init__(self) -> None:
        if self.window < 0 or self.window > self.layout.grid or not 0 <= self.shift < max(self.window, 1):
            raise ValueError(
                f"window must be 0..{self.layout.grid} and shift 0..window-1, not {self.window}, {self.shift}"
            )
        if self.config.code_embedding == "levels" and math.prod(self.code_levels or (0,)) != self.codebook_size:
            raise ValueError(
                f"code_embedding = levels needs an FSQ frame tokenizer: {self.codebook_size} codes, "
                f"levels {list(self.code_levels)}"
            )


# ---------------------------------------------------------------------------------------------------------------
# Attention


@dataclass
class KVCache:
    """Keys and values of every slot computed so far: per layer, per channel, (B, heads, S, head_dim)."""

    keys: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]
    filled: torch.Tensor  # (S,) bool

    @classmethod
    def empty(cls, spec: ModelSpec, batch: int, device: torch.device, dtype: torch.dtype = torch.float32) -> KVCache:
        c = spec.config
        shape = (batch, c.heads, spec.layout.length, c.hidden // c.heads)
        new = functools.partial(torch.zeros, shape, device=device, dtype=dtype)
        return cls(
            [{ch: (new(), new()) for ch in ("spatial", "temporal")} for _ in range(c.layers)],
            torch.zeros(spec.layout.length, dtype=torch.bool, device=device),
        )


class CachedMask(NamedTuple):
    """A cached decoding step's mask over only the key slots its queries see, and those slots."""

    mask: torch.Tensor  # (B, 1, P, U) bool, True: attend
    columns: torch.Tensor | None  # (U,) the key slots, ascending; None: slots 0 .. U-1, read as a view


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def rotary_angles(spec: ModelSpec, base: float = 100.0) -> torch.Tensor:
    """(S, d/2) angle of each slot for each pair of a head's channels: a quarter of the pairs turn with the frame's
    true time, the rest in two equal groups with its row and its column, at geometric frequencies 1 .. 1/base (a
    frame is at most a few dozen codes wide). Text slots and the fps token have angle 0."""
    s = layouts.slots(spec.layout)
    pairs = spec.config.hidden // spec.config.heads // 2
    spatial = pairs * 3 // 8
    groups = ((s.time, pairs - 2 * spatial), (s.row, spatial), (s.col, spatial))
    angles = [where[:, None].float() * base ** (-torch.arange(n) / max(n, 1))[None] for where, n in groups]
    return torch.cat(angles, dim=1) * (~s.is_text)[:, None]  # (S, d/2)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, h, P, d) turned pair by pair (channels 2i, 2i+1) by the (P, d/2) angles given as cos and sin."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: object, dropout: float) -> torch.Tensor:
    """(B, h, P, d) queries over (B, h, S, d) keys; `mask` is a (B, 1, P, S) bool tensor (True: attend) or a
    FlexAttention BlockMask."""
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return _compiled_flex()(q, k, v, block_mask=mask)


def attend_by_frame(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    text_slots: int,
    frame_len: int,
    dropout: float,
) -> torch.Tensor:
    """The spatial channel over a whole sequence (B, h, S, d), in pieces: text sees text, and a frame code sees the
    text and its own frame only, so each frame attends on its own over (text + frame) keys instead of all S: at the
    demo's sizes a quarter of the work of one dense (S, S) pass, with the same result. `mask` (B, 1, S, S) is the
    channel's dense mask; its blocks are cut out, so pads and causality inside a frame hold as they are."""
    b, h, s, d = q.shape
    t, n = text_slots, frame_len
    f = (s - t) // n

    def by_frame(x: torch.Tensor) -> torch.Tensor:  # (B, h, S, d) -> (B*F, h, n, d)
        return x[:, :, t:].reshape(b, h, f, n, d).transpose(1, 2).reshape(b * f, h, n, d)

    def text_for_each_frame(x: torch.Tensor) -> torch.Tensor:  # (B, h, S, d) -> (B*F, h, T, d)
        return x[:, None, :, :t].expand(b, f, h, t, d).reshape(b * f, h, t, d)

    text = attend(q[:, :, :t], k[:, :, :t], v[:, :, :t], mask[:, :, :t, :t], dropout)  # (B, h, T, d)
    keys = torch.cat([text_for_each_frame(k), by_frame(k)], dim=2)  # (B*F, h, T+n, d)
    values = torch.cat([text_for_each_frame(v), by_frame(v)], dim=2)
    rows = mask[:, 0, t:]  # (B, F*n, S)
    own = torch.stack(
        [rows[:, i * n : (i + 1) * n, t + i * n : t + (i + 1) * n] for i in range(f)], dim=1
    )  # (B, F, n, n)
    frame_mask = torch.cat([rows[..., :t].reshape(b, f, n, t), own], dim=-1).reshape(b * f, 1, n, t + n)
    frames = attend(by_frame(q), keys, values, frame_mask, dropout)  # (B*F, h, n, d)
    return torch.cat([text, frames.reshape(b, f, h, n, d).transpose(1, 2).reshape(b, h, f * n, d)], dim=2)


def prefix_blocks(mask: torch.Tensor, text_slots: int, frame_len: int) -> tuple[tuple[int, int, int], ...]:
    """(start, end, width) per block of queries (the text, then each frame slot) of a dense (B, 1, S, S) mask: the
    block's queries see no key at `width` or after. Stage 1's temporal channel is causal, so frame slot f sees
    (text + f + 1 frames) of the 5: attending block by block over those prefixes skips the 40% of the dense pass
    that is masked out."""
    seen = mask.any(0)[0]  # (S, S): a key some row of the batch lets this query see
    ends = list(range(text_slots, seen.shape[0] + 1, frame_len))
    blocks = []
    for start, end in zip([0, *ends], ends):
        keys = seen[start:end].any(0).nonzero()
        blocks.append((start, end, int(keys[-1]) + 1 if len(keys) else 1))
    return tuple(blocks)


@functools.lru_cache(maxsize=64)
def layout_prefix_blocks(layout: Layout, window: int, shift: int) -> tuple[tuple[int, int, int], ...]:
    """`prefix_blocks` of the layout's temporal rule, once per layout: a batch's mask only takes text pads away
    from the rule, so its blocks see no further, and no training pass has to look through its (B, S, S) mask."""
    rule = layouts.dense_mask(layout, "temporal", window, shift)  # (S, S)
    return prefix_blocks(rule[None, None], layout.text_slots, layout.frame_len)


def attend_by_prefix(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    blocks: tuple[tuple[int, int, int], ...],
    dropout: float,
) -> torch.Tensor:
    """`attend` over (B, h, S, d) block by block of queries, each over the keys before its width (`prefix_blocks`):
    the keys cut off are masked for every query of the block, so the result is the dense pass's."""
    parts = [attend(q[:, :, a:b], k[:, :, :w], v[:, :, :w], mask[:, :, a:b, :w], dropout) for a, b, w in blocks]
    return torch.cat(parts, dim=2)  # (B, h, S, d)


class DualAttention(nn.Module):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.heads, self.dropout = c.heads, c.dropout
        self.spatial_qkv, self.spatial_out = nn.Linear(c.hidden, 3 * c.hidden), nn.Linear(c.hidden, c.hidden)
        self.temporal_qkv, self.temporal_out = nn.Linear(c.hidden, 3 * c.hidden), nn.Linear(c.hidden, c.hidden)
        self.alpha = nn.Parameter(torch.zeros(c.hidden))  # sigmoid(0) = 0.5: both channels count equally at first

    def channel(
        self,
        name: str,
        x: torch.Tensor,
        mask: object,
        positions: torch.Tensor | None,
        cache: dict | None,
        frame_blocks: tuple[int, int] | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        blocks: tuple[tuple[int, int, int], ...] | None = None,
    ) -> torch.Tensor:
        b, p, hidden = x.shape
        qkv = self.spatial_qkv if name == "spatial" else self.temporal_qkv
        q, k, v = qkv(x).view(b, p, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)  # each (B, h, P, d)
        if rotary is not None:  # (P, d/2) cos and sin of these slots' angles; cached keys are stored turned
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        if cache is not None:  # write this step's slots, attend over the cached slots these queries see
            keys, values = cache[name]
            keys[:, :, positions], values[:, :, positions] = k.to(keys.dtype), v.to(values.dtype)
            mask, columns = cast(CachedMask, mask)
            if columns is None:
                k, v = keys[:, :, : mask.shape[-1]], values[:, :, : mask.shape[-1]]  # (B, h, U, d) views
            else:
                k, v = keys.index_select(2, columns), values.index_select(2, columns)  # (B, h, U, d)
            k, v = k.to(q.dtype), v.to(q.dtype)
        dropout = self.dropout if self.training else 0.0
        if frame_blocks is not None and isinstance(mask, torch.Tensor):
            out = attend_by_frame(q, k, v, mask, *frame_blocks, dropout)  # (B, h, P, d)
        elif blocks is not None and isinstance(mask, torch.Tensor):
            out = attend_by_prefix(q, k, v, mask, blocks, dropout)  # (B, h, P, d)
        else:
            out = attend(q, k, v, mask, dropout)  # (B, h, P, d)
        return out.transpose(1, 2).reshape(b, p, hidden)

    def forward(
        self,
        x: torch.Tensor,
        masks: dict[str, object],
        is_frame: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: dict | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # a pass over the whole sequence (training) attends frame by frame in the spatial channel
        spatial = self.spatial_out(
            self.channel(
                "spatial",
                x,
                masks["spatial"],
                positions,
                cache,
                cast("tuple[int, int] | None", masks.get("frame_blocks")),
                rotary,
            )
        )
        temporal = self.temporal_out(
            self.channel(
                "temporal",
                x,
                masks["temporal"],
                positions,
                cache,
                None,
                rotary,
                cast("tuple[tuple[int, int, int], ...] | None", masks.get("temporal_blocks")),
            )
        )
        a = torch.sigmoid(self.alpha)
        return torch.where(is_frame[:, None], a * spatial + (1 - a) * temporal, spatial)


class Block(nn.Module):
    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.hidden), nn.LayerNorm(c.hidden)
        self.attention = DualAttention(c)
        self.mlp = nn.Sequential(
            nn.Linear(c.hidden, c.mlp_ratio * c.hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(c.mlp_ratio * c.hidden, c.hidden),
        )
        self.drop = nn.Dropout(c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        masks: dict[str, object],
        is_frame: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: dict | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.drop(self.attention(self.ln1(x), masks, is_frame, positions, cache, rotary))
        return x + self.drop(self.mlp(self.ln2(x)))


# ---------------------------------------------------------------------------------------------------------------
# The model


class CogVideoTransformer(nn.Module):
    code_digits: torch.Tensor  # buffers, with code_embedding = "levels" and with rope
    rope_angles: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        c, lay = spec.config, spec.layout
        self.spec = spec
        self.embed = nn.Embedding(spec.codebook_size + spec.text_vocab, c.hidden)
        if c.code_embedding == "levels":  # code -> its digit on each channel, offset into one (sum(levels), C) table
            levels = torch.tensor(spec.code_levels)
            radix = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels[:-1]]), 0)
            digits = torch.arange(spec.codebook_size)[:, None] // radix % levels  # (K, D)
            self.register_buffer("code_digits", digits + torch.cumsum(levels, 0) - levels, persistent=False)
            self.level_embed = nn.Embedding(int(levels.sum()), c.hidden)
        self.text_position = nn.Embedding(lay.text_slots, c.hidden)
        self.row_position, self.col_position = nn.Embedding(lay.grid, c.hidden), nn.Embedding(lay.grid, c.hidden)
        self.time_position = nn.Embedding(CLIP_FRAMES, c.hidden)
        if c.rope:
            self.register_buffer("rope_angles", rotary_angles(spec), persistent=False)  # (S, d/2)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.hidden)
        self.activation_checkpointing = False
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled down with depth
            if name.endswith(("_out.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    # ------------------------------------------------------------------------------------------------ inputs
    def position_embedding(self, text_valid: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, P, C) for the slots at `positions`: text slots count real pieces from the first (pads get 0, the
        fps token L); frame codes add their frame's true time to their row and column."""
        lay = self.spec.layout
        s = layouts.slots(lay, str(text_valid.device))
        text = (text_valid[:, : lay.text_len].long().cumsum(1) - 1).clamp(min=0)  # (B, L)
        text = torch.cat([text, text.new_full((text.shape[0], 1), lay.text_len)], dim=1)  # (B, L+1)
        text = self.text_position(text[:, positions.clamp(max=lay.text_slots - 1)])  # (B, P, C)
        frames = (
            self.time_position(s.time[positions])
            + self.row_position(s.row[positions])
            + self.col_position(s.col[positions])
        )
        return torch.where((positions >= lay.text_slots)[:, None], frames, text)  # (B, P, C)

    def masks(
        self, text_valid: torch.Tensor, positions: torch.Tensor, filled: torch.Tensor | None = None
    ) -> list[dict[str, object]]:
        """Per layer, the (B, 1, P, S) masks of both channels for the queries at `positions`: the layout's rules,
        minus text pads (a slot always sees itself); with a cache (`filled`: the slots computed so far) each a
        `CachedMask` over only the slots these queries see, all of which must be computed."""
        spec, device = self.spec, str(text_valid.device)
        visible = layouts.key_visible(text_valid, spec.layout.length)  # (B, S)
        itself = positions[:, None] == torch.arange(spec.layout.length, device=positions.device)  # (P, S)

        def batch(rule: torch.Tensor) -> torch.Tensor | CachedMask:
            allowed = rule[positions]  # (P, S)
            if filled is None:
                return (allowed[None] & (visible[:, None, :] | itself[None]))[:, None]  # (B, 1, P, S)
            if bool((allowed & ~filled).any()):
                raise RuntimeError(
                    "a slot would attend to a slot not computed yet: the decoding order breaks the masks"
                )
            # With a cache, only the keys some of these queries see are gathered: a decoding step's codes lie in
            # one or two frames, which see the text and their own frame (spatial) or their window of earlier
            # frames (temporal), a quarter to a third of the sequence; attending over all of it, masked, made
            # attention 53% of the time of a demo video (issue #13). Masked keys add nothing to a softmax.
            # Gathering copies the keys, so where they are most of the prefix up to the last one seen, that prefix
            # is attended to (a view) instead: stage 1's whole-frame temporal channel sees every earlier frame.
            columns = allowed.any(0).nonzero().squeeze(1)  # (U,) ascending
            width = int(columns[-1]) + 1
            if 2 * len(columns) > width:
                keep = allowed[:, :width][None] & (visible[:, None, :width] | itself[None, :, :width])
                return CachedMask(keep[:, None], None)  # (B, 1, P, width)
            keep = allowed[:, columns][None] & (visible[:, None, columns] | itself[None, :, columns])
            return CachedMask(keep[:, None], columns)  # (B, 1, P, U)

        per_layer = self._per_layer(
            batch(layouts.dense_mask(spec.layout, "spatial", device=device)),
            lambda shift: batch(layouts.dense_mask(spec.layout, "temporal", spec.window, shift, device)),
        )
        if filled is None and torch.equal(
            positions, torch.arange(spec.layout.length, device=positions.device)
        ):  # frame by frame in the spatial channel, by prefixes in the temporal one
            for i, layer in enumerate(per_layer):
                layer["frame_blocks"] = (spec.layout.text_slots, spec.layout.frame_len)
                layer["temporal_blocks"] = layout_prefix_blocks(
                    spec.layout, spec.window, layouts.layer_shift(i, spec.shift)
                )
        return per_layer

    def block_masks(self, text_valid: torch.Tensor) -> list[dict[str, object]]:
        """The same masks as FlexAttention BlockMasks over the whole sequence (training on CUDA)."""
        from torch.nn.attention.flex_attention import create_block_mask

        spec, device = self.spec, text_valid.device
        s = layouts.slots(spec.layout, str(device))
        b, n = text_valid.shape[0], spec.layout.length

        def block(rule) -> object:
            mod = layouts.with_text_mask(rule, text_valid, spec.layout.text_slots)
            return create_block_mask(mod, b, None, n, n, device=str(device))

        return self._per_layer(
            block(layouts.spatial_rule(s)), lambda shift: block(layouts.temporal_rule(s, spec.window, shift))
        )

    def _per_layer(self, spatial: object, temporal: Callable[[int], object]) -> list[dict[str, object]]:
        """Each layer's masks: the one spatial mask, and the temporal mask of the layer's window shift (built once
        per distinct shift)."""
        shifts = [layouts.layer_shift(i, self.spec.shift) for i in range(self.spec.config.layers)]
        by_shift = {shift: temporal(shift) for shift in set(shifts)}
        return [{"spatial": spatial, "temporal": by_shift[shift]} for shift in shifts]

    # ----------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        tokens: torch.Tensor,
        text_valid: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        flex: bool = False,
    ) -> torch.Tensor:
        """Hidden states (B, P, C) of the slots at `positions` (default: every slot, tokens (B, S)).

        With a cache, the slots' keys and values are stored and every filled slot is attended to: a full pass,
        a pass per code, or a pass per wavefront of codes give the same states."""
        lay = self.spec.layout
        if positions is None:
            positions = torch.arange(lay.length, device=tokens.device)
        filled = None
        if cache is not None:  # this call's slots count as computed for its own masks; marked in the cache after
            filled = cache.filled.clone()
            filled[positions] = True
        is_frame = positions >= lay.text_slots  # (P,)
        x = self.embed_tokens(tokens) + self.position_embedding(text_valid, positions)  # (B, P, C)
        if flex:
            masks = self.block_masks(text_valid)
        else:
            masks = self.masks(text_valid, positions, filled)
        rotary = None
        if self.spec.config.rope:
            angles = self.rope_angles[positions].to(x.dtype)  # (P, d/2)
            rotary = angles.cos(), angles.sin()
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache.keys[i]
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, masks[i], is_frame, positions, layer_cache, rotary, use_reentrant=False)
            else:
                x = block(x, masks[i], is_frame, positions, layer_cache, rotary)
        if cache is not None:
            cache.filled[positions] = True
        return self.norm(x)

    def code_table(self) -> torch.Tensor:
        """(K, C): every frame code's embedding (its own, plus its levels' with code_embedding = levels)."""
        table = self.embed.weight[: self.spec.codebook_size]
        if self.spec.config.code_embedding == "levels":
            table = table + self.level_embed(self.code_digits).sum(1)  # (K, D, C) -> (K, C)
        return table

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, P) ids -> (B, P, C): frame codes through `code_table`, text pieces through their own rows."""
        x = self.embed(tokens)
        if self.spec.config.code_embedding == "levels":
            is_code = tokens < self.spec.codebook_size
            levels = self.level_embed(self.code_digits[tokens.clamp(max=self.spec.codebook_size - 1)]).sum(-2)
            x = x + levels * is_code[..., None]
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., K): scores of the frame codes only, through their embeddings."""
        return hidden @ self.code_table().T

    def loss(
        self, tokens: torch.Tensor, targets: torch.Tensor, text_valid: torch.Tensor, flex: bool = False
    ) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy (nats) over the predicted codes, and how many codes that was."""
        return self.code_loss(self(tokens, text_valid, flex=flex), targets)

    def code_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """`loss` from hidden states (B, S, C) already computed (by a DDP or FSDP wrapper's forward, say)."""
        predicted = targets != IGNORE
        logits = self.logits(hidden[predicted])  # (N, K): only where something is predicted
        return F.cross_entropy(logits.float(), targets[predicted]), int(predicted.sum())

    # ------------------------------------------------------------------------------ the text-to-image channel
    SPATIAL = (
        ".embed.",
        ".level_embed.",
        ".text_position.",
        ".row_position.",
        ".col_position.",
        ".norm.",
        ".ln1.",
        ".ln2.",
        ".mlp.",
        ".spatial_qkv.",
        ".spatial_out.",
    )

    def spatial_names(self) -> list[str]:
        """The parameters a 1-frame (text-to-image) run of this model trains that a video model can reuse."""
        return [n for n, _ in self.named_parameters() if any(part in f".{n}" for part in self.SPATIAL)]

    def load_spatial(self, state: dict[str, torch.Tensor], freeze: bool = True) -> list[str]:
        """Take the spatial channel from a text-to-image model's state dict (shapes must agree), copy its attention
        into the temporal channel as a starting point (as CogVideo copied CogView2's QKV), optionally freeze it.
        Returns the names loaded."""
        names = self.spatial_names()
        own = self.state_dict()
        missing = [n for n in names if n not in state or state[n].shape != own[n].shape]
        if missing:
            raise ValueError(f"the text-to-image checkpoint does not fit this model: {', '.join(missing[:5])}")
        with torch.no_grad():
            params = dict(self.named_parameters())
            for n in names:
                params[n].copy_(state[n])
                if ".spatial_qkv." in n:
                    params[n.replace(".spatial_qkv.", ".temporal_qkv.")].copy_(state[n])
                params[n].requires_grad_(not freeze)
        return names

    # ------------------------------------------------------------------------------------------------ sizes
    def parameter_count(self, embeddings: bool = False) -> int:
        return sum(
            p.numel()
            for n, p in self.named_parameters()
            if embeddings or "position" not in n and not n.startswith(("embed.", "level_embed."))
        )


def flops_per_token(spec: ModelSpec, parameters: int) -> float:
    """Model FLOPs of one training token (forward + backward): 6 per weight (PaLM's count, every weight as if
    trained), plus both channels' attention scores and values over the whole sequence (SDPA computes masked
    scores too; the block-sparse kernel skips some, and that saving is not counted as work done)."""
    c = spec.config
    return 6 * parameters + 2 * 12 * c.layers * c.hidden * spec.layout.length


def spec_to_dict(spec: ModelSpec) -> dict:
    """The spec as plain values (what a model file holds, so it loads with weights_only and wherever the code moves)."""
    return asdict(spec)


def spec_from_dict(values: dict) -> ModelSpec:
    return ModelSpec(
        **{
            **values,
            "config": TransformerConfig(**values["config"]),
            "layout": Layout(**values["layout"]),
            "code_levels": tuple(values.get("code_levels", ())),
        }
    )


# Model files written before cogflow 0.2 pickled the spec's classes under their module paths of the time.
_MOVED = {
    old: "cogflow.model.cogvideo." + old.rsplit(".", 1)[1]
    for old in ("model.transformer", "model.layout", "cogflow.model.transformer", "cogflow.model.layout")
}


class _MovedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(_MOVED.get(module, module), name)


_old_pickle = types.ModuleType("cogflow_old_pickle")  # torch.load's pickle_module: Unpickler and load
_old_pickle.Unpickler = _MovedUnpickler  # type: ignore[attr-defined]
_old_pickle.load = pickle.load  # type: ignore[attr-defined]


def save(model: CogVideoTransformer, path: str, extra: dict | None = None) -> str:
    """Weights and spec in one file (what generation and a 1-frame model's heirs load): tensors and plain values only."""
    torch.save({"spec": spec_to_dict(model.spec), "state": model.state_dict(), **(extra or {})}, path)
    return path


def read(path: str) -> dict:
    """A model file's contents on the CPU, its spec a ModelSpec. Files of cogflow 0.2 on load without unpickling any
    class (weights_only); older ones, which pickled the spec, through a reader that knows where its classes moved."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        saved = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_old_pickle)
    spec = saved["spec"]
    return {**saved, "spec": spec if isinstance(spec, ModelSpec) else spec_from_dict(spec)}


def load(path: str, device: str | torch.device = "cpu") -> tuple[CogVideoTransformer, dict]:
    saved = read(path)
    model = CogVideoTransformer(saved["spec"])
    model.load_state_dict(saved["state"])
    return model.to(device).eval(), saved
