from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from bot.challenges.contact_sheet import (
    Geometry,
    SheetTooLarge,
    Tile,
    compose,
    geometry_for,
)


def solid(rgb, size=128) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def noisy(size=256, seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 210, 20), (200, 40, 200)]


def tile_colours(data: bytes, count: int):
    image = Image.open(io.BytesIO(data))
    geometry = geometry_for(count, image.size)
    rgb = image.convert("RGB")
    colours = []
    for index in range(count):
        left, top, right, bottom = geometry.image_box(index)
        colours.append(rgb.getpixel(((left + right) // 2, (top + bottom) // 2)))
    return colours


def close(a, b, tolerance=12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_one_tile_per_entry_in_order(count):
    tiles = [Tile(solid(colour), f"#{n + 1}", place=n + 1) for n, colour in enumerate(COLOURS[:count])]

    sheet = compose(tiles, max_bytes=10 * 1024 * 1024, tile_px=96)

    assert Image.open(io.BytesIO(sheet.data)).format == "JPEG"
    found = tile_colours(sheet.data, count)
    assert all(close(got, want) for got, want in zip(found, COLOURS)), found
    assert sheet.geometry == Geometry(count, 96)


def test_grid_is_as_square_as_the_count_allows():
    assert (Geometry(5, 10).columns, Geometry(5, 10).rows) == (3, 2)
    assert (Geometry(9, 10).columns, Geometry(9, 10).rows) == (3, 3)
    assert (Geometry(10, 10).columns, Geometry(10, 10).rows) == (4, 3)
    assert (Geometry(1, 10).columns, Geometry(1, 10).rows) == (1, 1)


def test_sheet_shrinks_until_it_fits_the_limit():
    tiles = [Tile(noisy(seed=n), f"#{n + 1} · someone with a long name") for n in range(6)]
    roomy = compose(tiles, max_bytes=50 * 1024 * 1024, tile_px=256)
    limit = len(roomy.data) // 4

    small = compose(tiles, max_bytes=limit, tile_px=256)

    assert len(small.data) <= limit
    assert small.geometry.tile_px < 256 or small.quality < roomy.quality
    assert Image.open(io.BytesIO(small.data)).size == small.geometry.size


def test_a_limit_nothing_fits_is_an_error():
    with pytest.raises(SheetTooLarge):
        compose([Tile(noisy(), "#1")], max_bytes=100)


def test_missing_or_broken_images_still_get_their_tile():
    tiles = [Tile(None, "#1"), Tile(b"not an image", "#2"), Tile(solid(COLOURS[2]), "#3")]

    sheet = compose(tiles, max_bytes=1024 * 1024, tile_px=64)

    found = tile_colours(sheet.data, 3)
    assert close(found[2], COLOURS[2]) and not close(found[0], COLOURS[2])


def test_non_square_images_are_centred_in_their_tile():
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), COLOURS[0]).save(buffer, format="PNG")

    sheet = compose([Tile(buffer.getvalue(), "#1")], max_bytes=1024 * 1024, tile_px=100)

    image = Image.open(io.BytesIO(sheet.data)).convert("RGB")
    left, top, right, bottom = sheet.geometry.image_box(0)
    assert close(image.getpixel(((left + right) // 2, (top + bottom) // 2)), COLOURS[0])
    assert not close(image.getpixel(((left + right) // 2, top + 5)), COLOURS[0])


def test_many_entries_stay_within_the_largest_side():
    tiles = [Tile(solid(COLOURS[n % 5], 16), f"#{n}") for n in range(400)]
    sheet = compose(tiles, max_bytes=10 * 1024 * 1024, tile_px=256)
    assert max(sheet.geometry.size) <= 4096
    assert len(tile_colours(sheet.data, 400)) == 400


def test_small_square_images_fill_their_tile():
    # The bot makes 128-pixel images too; on 256-pixel tiles they are scaled up, not left as a stamp in the middle.
    sheet = compose([Tile(solid(COLOURS[1], 64), "#1")], max_bytes=1024 * 1024, tile_px=256)

    image = Image.open(io.BytesIO(sheet.data)).convert("RGB")
    left, top, right, bottom = sheet.geometry.image_box(0)
    assert close(image.getpixel((left + 3, top + 3)), COLOURS[1]) and close(image.getpixel((right - 4, bottom - 4)), COLOURS[1])
