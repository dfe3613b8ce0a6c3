"""Tensors to pictures and files."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image


def to_pil(image: torch.Tensor) -> Image.Image:
    """An RGB picture from a (3, H, W) tensor in [0, 1]."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy(), mode="RGB")


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def timelapse_gif(frames: Sequence[Image.Image], seconds_per_frame: float = 0.25, hold_last_seconds: float = 2.0) -> bytes:
    """An animated, looping GIF of the snapshots; the finished picture stays up a little longer."""
    if not frames:
        raise ValueError("a timelapse needs at least one snapshot")
    frame_ms = max(20, int(seconds_per_frame * 1000))
    durations = [frame_ms] * (len(frames) - 1) + [max(frame_ms, int(hold_last_seconds * 1000))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=list(frames[1:]), duration=durations, loop=0)
    return buffer.getvalue()


def read_picture(data: bytes) -> Image.Image:
    """An RGB picture from encoded bytes (PNG, JPEG, WebP...); ValueError when they are not a picture PIL reads."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            return picture.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"not a readable picture ({error})") from error
