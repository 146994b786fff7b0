"""Frames out of codes, and into files people look at: MP4 (H.264) or GIF, contact sheets, an optional upscale."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cogflow.model.tokenizers.encode import Tokenizers
from cogflow.pipeline.encode import encode_video
from cogflow.pipeline.preview import font as caption_font


def to_pixels(tokenizers: Tokenizers, codes: torch.Tensor, batch: int = 64) -> np.ndarray:
    """codes (..., n) -> frames (..., 160, 160, 3) uint8, through the frame tokenizer's decoder."""
    g = int(round(codes.shape[-1] ** 0.5))
    grids = codes.reshape(-1, g, g).to(tokenizers.device)
    with torch.inference_mode():
        frames = torch.cat([tokenizers.frames.decode(chunk).cpu() for chunk in grids.split(batch)]).numpy()
    return frames.reshape(*codes.shape[:-1], *frames.shape[1:])


def upscaled(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) -> (N, size, size, 3), bicubic (CogVideo's super-resolution stage is not reproduced)."""
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames])


def write_video(path: Path, frames: np.ndarray, fps: float) -> Path:
    """MP4 (H.264) or GIF, by the suffix. GIF goes through Pillow (a palette per frame); note that Pillow merges
    a frame identical to the one before into it (longer delay), so a still stretch has fewer GIF frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return path
    return encode_video(path, frames, fps, "mp4")


def contact_sheet(frames: np.ndarray, caption: str, note: str, keyframe_every: int, columns: int = 11) -> Image.Image:
    """Every frame in rows of `columns`, key frames (stage 1's) framed in red, the prompt and `note` above."""
    gap, margin, size = 4, 8, frames.shape[1]
    font = caption_font(15)
    rows = -(-len(frames) // columns)
    width = columns * size + (columns - 1) * gap + 2 * margin
    top = margin + 2 * 20
    sheet = Image.new("RGB", (width, top + rows * (size + gap) + margin), "white")
    draw = ImageDraw.Draw(sheet)
    # one line, control characters (a pasted "\r", a tab) shown as spaces: the text shaper refuses some of them
    caption = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in caption)
    draw.text((margin, margin), caption, fill="black", font=font)
    draw.text((margin, margin + 20), note, fill=(90, 90, 90), font=font)
    for i, frame in enumerate(frames):
        x, y = margin + (i % columns) * (size + gap), top + (i // columns) * (size + gap)
        sheet.paste(Image.fromarray(frame), (x, y))
        if i % keyframe_every == 0:
            draw.rectangle((x, y, x + size - 1, y + size - 1), outline=(220, 30, 30), width=2)
    return sheet
