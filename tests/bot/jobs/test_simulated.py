"""The simulated worker's pictures: real PNGs (made with Pillow) of the size asked, coloured by prompt and seed."""

from __future__ import annotations

import io

from PIL import Image

from bot.jobs import simulated
from bot.jobs.simulated import SimulatedGenerationClient, colour_for, solid_png
from generator.protocol import DreamSpec, JobProgress, JobRequest, JobResult


def decoded(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        image.load()
        return image


def test_a_solid_png_decodes_to_its_size_and_colour_everywhere():
    image = decoded(solid_png(24, 16, (10, 200, 30)))
    assert (image.size, image.mode) == ((24, 16), "RGB")
    assert image.getcolors() == [(24 * 16, (10, 200, 30))]


def test_pngs_come_from_pillow_not_from_hand_written_chunks():
    assert not {"zlib", "struct"} & set(vars(simulated)), "the simulated worker must encode PNGs with Pillow"


async def test_the_result_and_snapshots_decode_to_the_size_asked_and_the_prompts_colour():
    client = SimulatedGenerationClient(0.01, progress_events=2, image_size=32)
    await client.start()
    request = JobRequest("job-1", DreamSpec(prompt="a red kite", seed=7, steps=4, size=128))
    events = [event async for event in client.submit(request)]

    snapshots = [decoded(event.snapshot_png) for event in events if isinstance(event, JobProgress)]
    assert [image.size for image in snapshots] == [(32, 32), (32, 32)]
    (result,) = [event for event in events if isinstance(event, JobResult)]
    image = decoded(result.png)
    assert image.size == (32, 32)
    assert image.getcolors() == [(32 * 32, colour_for("a red kite", 7))]
