"""Pictures for the image-prompt tests: good ones in every accepted format, and every kind of bad one."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def picture(width: int = 40, height: int = 30, colour=(200, 60, 30), *, mode: str = "RGB", format: str = "PNG",
            **save) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, format=format, **save)
    return buffer.getvalue()


def rotated_jpeg(width: int = 40, height: int = 20) -> bytes:
    """A wide JPEG whose EXIF says to show it turned a quarter (orientation 6): upright, it is tall."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return picture(width, height, format="JPEG", exif=exif)


def two_frame_gif(first=(255, 0, 0), second=(0, 0, 255)) -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (first, second)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height pixels (a decompression bomb's shape): only the
    header is real."""
    data = picture(1, 1)
    header = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    return data[:16] + header + crc + data[33:]


def truncated_png() -> bytes:
    """A real PNG cut off halfway through its pixels."""
    whole = picture(64, 64, (10, 200, 90), mode="RGB")
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    whole = buffer.getvalue()
    return whole[: len(whole) // 2]


def pixel(png: bytes, at=(0, 0)):
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB").getpixel(at)


def size_of(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        return image.size
