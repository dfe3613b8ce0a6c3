"""One image with every entry of a challenge: a grid of tiles, each labelled with its number, author and (once
known) place and votes, small enough to upload.

The grid is as square as the count allows. The sheet is encoded as JPEG; when it is over the upload limit it is
re-encoded at lower quality, then drawn again with smaller tiles, until it fits.

This module must stay free of torch and discord imports.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

PADDING = 8
MIN_TILE_PX = 32
MAX_SHEET_SIDE = 4096
JPEG_QUALITIES = (90, 80, 70, 60, 45)
_TILE_SHRINK = 0.75
_BACKGROUND = (24, 24, 28)
_LABEL_TEXT = (245, 245, 245)
_PLAIN_LABEL = (55, 55, 62)
PLACE_COLOURS = {1: (201, 162, 39), 2: (150, 150, 160), 3: (170, 105, 50)}


class SheetTooLarge(ValueError):
    """Even the smallest tiles at the lowest quality do not fit the limit."""


@dataclass(frozen=True)
class Tile:
    image: bytes | None  # the entry's image file (PNG, JPEG...); None when it is gone
    label: str
    place: int | None = None


@dataclass(frozen=True)
class Geometry:
    """Where everything goes, for `count` tiles of `tile_px` pixels."""

    count: int
    tile_px: int

    @property
    def columns(self) -> int:
        return max(1, math.ceil(math.sqrt(self.count)))

    @property
    def rows(self) -> int:
        return max(1, math.ceil(self.count / self.columns))

    @property
    def label_px(self) -> int:
        return max(12, self.tile_px // 8)

    @property
    def cell_width(self) -> int:
        return self.tile_px + PADDING

    @property
    def cell_height(self) -> int:
        return self.tile_px + self.label_px + PADDING

    @property
    def size(self) -> tuple[int, int]:
        return (self.columns * self.cell_width + PADDING, self.rows * self.cell_height + PADDING)

    def image_box(self, index: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of tile `index`'s picture."""
        row, column = divmod(index, self.columns)
        left = PADDING + column * self.cell_width
        top = PADDING + row * self.cell_height
        return (left, top, left + self.tile_px, top + self.tile_px)

    def label_box(self, index: int) -> tuple[int, int, int, int]:
        left, _, right, bottom = self.image_box(index)
        return (left, bottom, right, bottom + self.label_px)


def geometry_for(count: int, size: tuple[int, int]) -> Geometry:
    """The geometry a sheet of `count` tiles and this pixel size was drawn with (to read tiles back)."""
    columns = Geometry(count, 1).columns
    tile_px = (size[0] - PADDING) // columns - PADDING
    geometry = Geometry(count, tile_px)
    if geometry.size != tuple(size):
        raise ValueError(f"{size} is not the size of a contact sheet of {count} tiles")
    return geometry


@dataclass(frozen=True)
class Sheet:
    data: bytes
    geometry: Geometry
    quality: int

    filename = "contact-sheet.jpg"


def compose(tiles: Sequence[Tile], *, max_bytes: int, tile_px: int = 256) -> Sheet:
    """The largest, best-looking sheet of `tiles` whose JPEG is at most `max_bytes`."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one tile")
    size = min(tile_px, _largest_tile_within(len(tiles), MAX_SHEET_SIDE))
    # Tiles only get smaller from here, so each picture is kept at most tile-sized: a challenge with hundreds of
    # entries must not hold hundreds of full-size images in memory.
    pictures = [_open(tile.image, size) for tile in tiles]
    while True:
        geometry = Geometry(len(tiles), size)
        sheet = _draw(tiles, pictures, geometry)
        for quality in JPEG_QUALITIES:
            data = _jpeg(sheet, quality)
            if len(data) <= max_bytes:
                return Sheet(data, geometry, quality)
        if size == MIN_TILE_PX:
            raise SheetTooLarge(f"{len(tiles)} tiles do not fit in {max_bytes} bytes")
        size = max(MIN_TILE_PX, int(size * _TILE_SHRINK))


def _largest_tile_within(count: int, side: int) -> int:
    geometry = Geometry(count, 1)
    widest = (side - PADDING) // geometry.columns - PADDING
    # Height per row also carries the label (about an eighth of the tile).
    tallest = int(((side - PADDING) // geometry.rows - PADDING) / 1.125)
    return max(MIN_TILE_PX, min(widest, tallest))


def _open(data: bytes | None, side: int) -> Image.Image | None:
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            picture = image.convert("RGB")
    except (UnidentifiedImageError, OSError):
        return None
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    return picture


def _draw(tiles: Sequence[Tile], pictures: Sequence[Image.Image | None], geometry: Geometry) -> Image.Image:
    sheet = Image.new("RGB", geometry.size, _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(8, int(geometry.label_px * 0.7)))
    for index, (tile, picture) in enumerate(zip(tiles, pictures)):
        left, top, right, bottom = geometry.image_box(index)
        if picture is None:
            draw.rectangle((left, top, right - 1, bottom - 1), fill=(80, 80, 80))
            draw.text(((left + right) // 2, (top + bottom) // 2), "image missing", fill=_LABEL_TEXT, font=font, anchor="mm")
        else:
            # Scaled up or down to the tile: square images fill it, others are centred on it.
            fitted = ImageOps.contain(picture, (geometry.tile_px, geometry.tile_px), Image.Resampling.LANCZOS)
            if fitted.size != (geometry.tile_px, geometry.tile_px):
                fitted = _centred(fitted, geometry.tile_px)
            sheet.paste(fitted, (left, top))
        label_box = geometry.label_box(index)
        draw.rectangle((label_box[0], label_box[1], label_box[2] - 1, label_box[3] - 1),
                       fill=PLACE_COLOURS.get(tile.place or 0, _PLAIN_LABEL))
        draw.text((label_box[0] + 4, (label_box[1] + label_box[3]) // 2), _fit(draw, tile.label, font, geometry.tile_px - 8),
                  fill=_LABEL_TEXT, font=font, anchor="lm")
    return sheet


def _centred(picture: Image.Image, side: int) -> Image.Image:
    canvas = Image.new("RGB", (side, side), _BACKGROUND)
    canvas.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
    return canvas


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
