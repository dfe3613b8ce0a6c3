"""Where a job's image prompts come from, and how results show them.

A picture is an upload (an attachment option, fetched and checked by bot.jobs.uploads) or, with `like:<job id>`,
one of the member's own finished images from this server, checked the same way. `Pictures` turns the options of
/imagine and /blend into the spec to submit and the PNGs admission keeps with the job (bot.jobs.admission);
`thumbnail_strip` is the small picture of them a result shows.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageOps

from bot.jobs.admission import Admission, Refusal, Requester
from bot.jobs.files import ResultFiles
from bot.jobs.parsing import with_pictures
from bot.jobs.store import JobStore
from bot.jobs.uploads import AttachmentLike, UploadLimits, UploadRefused, fetch_checked, prompt_png
from bot.messages import shorten
from generator.protocol import DreamSpec

# Each picture's tile in the strip shown with a result (Discord shows an embed's thumbnail at up to 80 px).
THUMBNAIL_TILE = 128
_TILE_GAP = 4
_STRIP_BACKGROUND = (32, 34, 37)


@dataclass(frozen=True)
class Prepared:
    """A spec whose image prompts are named, and the pictures new with it (for Admission.submit)."""

    spec: DreamSpec
    pictures: tuple[bytes, ...] = field(default=(), repr=False)


class Pictures:
    def __init__(self, store: JobStore, files: ResultFiles, limits: UploadLimits = UploadLimits()) -> None:
        self.store = store
        self.files = files
        self.limits = limits

    async def prepare(
        self,
        admission: Admission,
        requester: Requester,
        spec: DreamSpec,
        uploads: Sequence[AttachmentLike] = (),
        like: str | None = None,
    ) -> Prepared | Refusal:
        """The spec (from parse_imagine, with one image prompt per upload and one for `like`) with its pictures
        fetched and checked; or why not. Nothing is fetched for a member who may not steer by pictures here."""
        if not spec.image_prompts:
            return Prepared(spec)
        refusal = await admission.image_prompt_refusal(requester)
        if refusal is not None:
            return refusal
        fetches = [asyncio.ensure_future(fetch_checked(upload, self.limits)) for upload in uploads]
        try:
            pictures = list(await asyncio.gather(*fetches))
            if like is not None:
                pictures.append(await self.of_earlier_job(requester, like))
        except UploadRefused as refused:
            return Refusal(str(refused), "image_prompts")
        finally:
            for fetch in fetches:  # one picture refused: the others' downloads are of no use
                fetch.cancel()
        keys = [self.files.prompt_image_key(png) for png in pictures]
        return Prepared(with_pictures(spec, keys), tuple(pictures))

    async def of_earlier_job(self, requester: Requester, job_id: str) -> bytes:
        """`like:`: the member's own finished image from this server, as an image prompt's PNG."""
        job = await self.store.get(job_id)
        shown = f"`{shorten(job_id.strip(), 40)}`"
        if job is None or (job.user_id != requester.user_id and job.guild_id != requester.guild_id):
            raise UploadRefused(f"There is no job {shown} here.")
        if job.user_id != requester.user_id:
            raise UploadRefused(f"`{job.id}` is another member's image; `like` takes one of your own from this server.")
        if job.guild_id != requester.guild_id:
            raise UploadRefused(f"`{job.id}` was made in another server; `like` takes one of your images from this one.")
        if job.state != "done":
            raise UploadRefused(f"`{job.id}` has no finished image to steer by (it is {job.state}).")
        try:
            png = await asyncio.to_thread(self.files.read, job.png_path or "")
        except (FileNotFoundError, IsADirectoryError, ValueError):
            raise UploadRefused(f"The image of `{job.id}` was deleted.") from None
        return await asyncio.to_thread(prompt_png, png, f"the image of `{job.id}`", self.limits)


def thumbnail_strip(pngs: Sequence[bytes]) -> bytes:
    """The image prompts side by side, each fitted into a THUMBNAIL_TILE square (blocking: run it in a thread)."""
    tiles = []
    for png in pngs:
        with Image.open(io.BytesIO(png)) as picture:
            tiles.append(ImageOps.contain(picture.convert("RGB"), (THUMBNAIL_TILE, THUMBNAIL_TILE)))
    width = sum(tile.width for tile in tiles) + _TILE_GAP * (len(tiles) - 1)
    strip = Image.new("RGB", (width, THUMBNAIL_TILE), _STRIP_BACKGROUND)
    left = 0
    for tile in tiles:
        strip.paste(tile, (left, (THUMBNAIL_TILE - tile.height) // 2))
        left += tile.width + _TILE_GAP
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()
