"""Checking pictures for image prompts (bot.jobs.uploads.prompt_png) and the refusals made before any download,
without Discord. The downloads themselves are tested end to end against the fake Discord's CDN
(test_image_prompts_e2e.py)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from pictures import picture, pixel, png_claiming, rotated_jpeg, size_of, truncated_png, two_frame_gif
from PIL import Image, ImageFile

from bot.jobs.prompt_images import THUMBNAIL_TILE, thumbnail_strip
from bot.jobs.uploads import UploadLimits, UploadRefused, fetch_checked, prompt_png

NAME = "“x.png”"


@pytest.mark.parametrize("data, fmt", [
    (picture(40, 30), "PNG"),
    (picture(40, 30, format="JPEG"), "JPEG"),
    (picture(40, 30, format="WEBP", lossless=True), "WEBP"),
    (picture(40, 30, mode="P", format="GIF"), "GIF"),
])
def test_every_accepted_format_becomes_an_rgb_png_of_the_same_size(data, fmt):
    assert Image.open(io.BytesIO(data)).format == fmt

    png = prompt_png(data, NAME)

    with Image.open(io.BytesIO(png)) as made:
        assert (made.format, made.mode, made.size) == ("PNG", "RGB", (40, 30))


def test_a_large_picture_is_shrunk_to_the_longer_side_cap_and_a_jpeg_is_decoded_small():
    assert size_of(prompt_png(picture(2000, 1000), NAME)) == (512, 256)
    assert size_of(prompt_png(picture(4000, 3000, format="JPEG"), NAME, UploadLimits(max_side=100))) == (100, 75)


def test_exif_orientation_is_applied():
    assert size_of(rotated_jpeg(40, 20)) == (40, 20)

    assert size_of(prompt_png(rotated_jpeg(40, 20), NAME)) == (20, 40)


def test_transparency_becomes_white_and_a_gif_gives_its_first_frame():
    assert pixel(prompt_png(picture(8, 8, (0, 0, 0, 0), mode="RGBA"), NAME)) == (255, 255, 255)
    assert pixel(prompt_png(two_frame_gif(first=(255, 0, 0)), NAME)) == (255, 0, 0)


@pytest.mark.parametrize("data, says", [
    (b"%PDF-1.7 not a picture at all", "is not a PNG, JPEG, WebP or GIF picture I can read"),
    (picture(8, 8, format="BMP"), "is not a PNG, JPEG, WebP or GIF picture I can read"),
    (picture(8, 8, format="TIFF"), "is not a PNG, JPEG, WebP or GIF picture I can read"),
    (truncated_png(), "is damaged"),
    (png_claiming(9000, 9000), "is 9,000×9,000 pixels; an image prompt may have at most 50 megapixels"),
    # Beyond twice Pillow's own cap, Pillow refuses it by itself; the member reads the same kind of sentence.
    (png_claiming(30000, 30000), "has too many pixels; an image prompt may have at most 50 megapixels"),
])
def test_bad_pictures_are_refused_with_a_sentence(data, says):
    with pytest.raises(UploadRefused) as refused:
        prompt_png(data, NAME)

    assert str(refused.value).startswith(NAME) and says in str(refused.value)


def test_the_pixel_cap_is_checked_before_any_pixel_is_decoded(monkeypatch):
    bomb = png_claiming(9000, 9000)
    good = picture(8, 8)
    decoded = []
    load = ImageFile.ImageFile.load

    def noted_load(image):
        decoded.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", noted_load)
    with pytest.raises(UploadRefused, match="megapixels"):
        prompt_png(bomb, NAME)
    assert decoded == []
    prompt_png(good, NAME)
    assert decoded[0] == (8, 8)  # what passes is decoded


def upload(filename="cat.png", *, size=1000, content_type="image/png", url="http://127.0.0.1:9/never"):
    return SimpleNamespace(filename=filename, size=size, content_type=content_type, url=url)


@pytest.mark.parametrize("attachment, says", [
    (upload("notes.txt", content_type="text/plain; charset=utf-8"), "“notes.txt” is a text/plain file"),
    (upload("scan.bmp", content_type="image/bmp"), "“scan.bmp” is a image/bmp file"),
    (upload("huge.png", size=11 * 1024 * 1024), "“huge.png” is 11.0 MB; an image prompt may be at most 10.0 MB"),
    (upload("**bold** @everyone.png", content_type="text/html"), "“\\*\\*bold\\*\\* @\u200beveryone.png”"),
])
async def test_what_discord_says_of_a_file_refuses_it_before_any_download(attachment, says):
    # The URL leads nowhere: a download would fail with another sentence.
    with pytest.raises(UploadRefused) as refused:
        await fetch_checked(attachment)

    assert says in str(refused.value)


def test_the_thumbnail_strip_puts_the_pictures_side_by_side():
    strip = thumbnail_strip([picture(300, 300, (255, 0, 0)), picture(100, 200, (0, 0, 255)), picture(50, 50)])

    width, height = size_of(strip)
    assert height == THUMBNAIL_TILE and width == 128 + 64 + 128 + 2 * 4
    assert pixel(strip, (10, 64)) == (255, 0, 0) and pixel(strip, (140, 64)) == (0, 0, 255)
