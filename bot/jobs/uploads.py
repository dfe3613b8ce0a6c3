"""Pictures members give as image prompts: fetched from Discord's CDN by the bot itself and checked with Pillow,
then made into what the worker gets (generator.protocol.ImagePrompt: an RGB PNG of bounded size).

Every step refuses bad input with `UploadRefused`, one sentence for the member, before anything is queued:
- before the download: a file Discord says is no PNG, JPEG, WebP or GIF, or is larger than `max_bytes`;
- while downloading (aiohttp, `timeout_seconds` in all): a link that expired (403 or 404 from the CDN), a
  Content-Length over `max_bytes` (refused before reading the body), and a body that grows past `max_bytes`
  however long the CDN said it was (the bytes are counted as they arrive, so a lying or missing Content-Length,
  or a compressed body that unpacks to gigabytes, never fills the memory);
- with Pillow: bytes that are no picture it may read (only PNG, JPEG, WebP and GIF are opened at all), more
  than `max_pixels` pixels (read from the header, before any pixel is decoded: a small file can claim a
  gigapixel), and a damaged file (it cannot be decoded to the end).
What passes is turned upright (EXIF orientation), flattened onto white where it is transparent, converted to
RGB, shrunk so its longer side is at most `max_side` and saved as PNG. A GIF gives its first frame.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import discord
from PIL import Image, ImageOps

from generator.protocol import SpecError

# Pillow's format names, and the types Discord reports for them.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
ACCEPTED_CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"})
_KINDS = "a PNG, JPEG, WebP or GIF picture"
_CHUNK_BYTES = 64 * 1024
_NAME_SHOWN = 60


@dataclass(frozen=True)
class UploadLimits:
    # Discord lets anyone upload 10 MiB; a bigger file is a photo far beyond what CLIP looks at (224 px).
    max_bytes: int = 10 * 1024 * 1024
    # A 48-megapixel phone photo passes; a decompression bomb (a tiny file claiming a gigapixel) does not.
    max_pixels: int = 50_000_000
    # The kept copy's longer side: twice what CLIP's preprocessing keeps, and small on disk (a few hundred KB).
    max_side: int = 512
    timeout_seconds: float = 20.0


class UploadRefused(SpecError):
    """A picture that cannot be an image prompt; the message is one sentence for the member."""


class AttachmentLike(Protocol):
    """What is read of a `discord.Attachment`."""

    filename: str
    url: str
    size: int
    content_type: str | None


def shown_name(filename: str) -> str:
    """A member's file name, safe to quote in a private answer."""
    name = filename if len(filename) <= _NAME_SHOWN else filename[: _NAME_SHOWN - 1] + "…"
    return f"“{discord.utils.escape_markdown(discord.utils.escape_mentions(name))}”"


def _megabytes(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MB"


def _too_big(name: str, size: int | None, limits: UploadLimits) -> UploadRefused:
    how_big = f"is {_megabytes(size)}" if size is not None else f"is over {_megabytes(limits.max_bytes)}"
    return UploadRefused(f"{name} {how_big}; an image prompt may be at most {_megabytes(limits.max_bytes)}.")


async def fetch_checked(attachment: AttachmentLike, limits: UploadLimits = UploadLimits()) -> bytes:
    """The attachment as an image prompt's PNG, or UploadRefused saying why not."""
    name = shown_name(attachment.filename)
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type and content_type not in ACCEPTED_CONTENT_TYPES:
        raise UploadRefused(f"{name} is a {content_type} file; an image prompt must be {_KINDS}.")
    if attachment.size > limits.max_bytes:
        raise _too_big(name, attachment.size, limits)
    data = await download(attachment.url, name, limits)
    return await asyncio.to_thread(prompt_png, data, name, limits)


async def download(url: str, name: str, limits: UploadLimits) -> bytes:
    """The body at `url`, never more than `limits.max_bytes` of it read."""
    timeout = aiohttp.ClientTimeout(total=limits.timeout_seconds)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            if response.status in (403, 404, 410):
                raise UploadRefused(
                    f"I can't download {name} from Discord any more (its link has expired); attach it again."
                )
            if response.status != 200:
                raise UploadRefused(
                    f"Discord would not give me {name} (HTTP {response.status}); try again in a moment."
                )
            if response.content_length is not None and response.content_length > limits.max_bytes:
                raise _too_big(name, response.content_length, limits)
            body = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                body += chunk
                if len(body) > limits.max_bytes:
                    raise _too_big(name, None, limits)
            return bytes(body)
    except TimeoutError:
        raise UploadRefused(
            f"Downloading {name} from Discord took over {limits.timeout_seconds:g} s; try again in a moment."
        ) from None
    except aiohttp.ClientError:
        raise UploadRefused(f"The download of {name} from Discord broke off; try again in a moment.") from None


def prompt_png(data: bytes, name: str, limits: UploadLimits = UploadLimits()) -> bytes:
    """Check a picture's bytes and make them an image prompt's PNG (see the module docstring); blocking: run it
    in a thread."""
    try:
        # Reads the header only: no pixel is decoded yet. Pillow refuses twice its own pixel cap by itself (and
        # warns above it); ours is lower.
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:
        raise _too_many_pixels(name, None, limits) from None
    except Exception:  # Pillow raises many kinds for malformed headers (UnidentifiedImageError, struct.error, ...)
        raise UploadRefused(f"{name} is not {_KINDS} I can read; send one of those.") from None
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise _too_many_pixels(name, (width, height), limits)
        # A JPEG can be decoded at 1/2, 1/4 or 1/8 scale straight away: a big photo costs a fraction.
        image.draft("RGB", (limits.max_side, limits.max_side))
        try:
            image.load()
            picture = _upright_rgb(image)
        except Exception:  # likewise for malformed pixel data and EXIF (OSError "truncated", ValueError, ...)
            raise UploadRefused(
                f"{name} is damaged: the picture in it can't be read to the end. Save it again and retry."
            ) from None
    picture.thumbnail((limits.max_side, limits.max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _too_many_pixels(name: str, size: tuple[int, int] | None, limits: UploadLimits) -> UploadRefused:
    what = f"is {size[0]:,}×{size[1]:,} pixels" if size else "has too many pixels"
    return UploadRefused(
        f"{name} {what}; an image prompt may have at most {limits.max_pixels / 1_000_000:g} megapixels. "
        "Scale it down and retry."
    )


def _upright_rgb(image: Image.Image) -> Image.Image:
    """The first frame, turned as its EXIF says, in RGB; transparent parts on white."""
    upright = ImageOps.exif_transpose(image)
    if upright.mode in ("RGBA", "LA", "PA") or (upright.mode == "P" and "transparency" in upright.info):
        rgba = upright.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return upright.convert("RGB")
