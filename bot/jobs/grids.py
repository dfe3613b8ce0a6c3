"""Grids: `/imagine count:2-4` makes `count` ordinary jobs with seeds seed, seed+1, ... that share a grid id
(bot.jobs.store.JobStore.create_jobs), so every rule holds per image: quotas, budgets and the waiting cap count
each one, admission takes all or none, and each job is kept and re-queued on its own.

What is grid-shaped is only how they are shown: ONE message for the grid (its id kept on every job of it), which
shows the latest previews side by side while they run, and once every image ended the 2x2 picture with a button
per image: U1-U4 post that image alone at full size with the usual buttons (bot.jobs.buttons.post_result),
V1-V4 queue variations of it. The buttons carry the job id of their image (bot.jobs.buttons.JobButton), so they
work after a restart. `GridBoard` keeps what the message shows for each grid in progress (its jobs and their
latest pictures) and is dropped once the grid's ending is shown; after a restart the dispatcher's and the bot's
start-up events (bot.app: endings not shown yet, jobs waiting again) fill it in again.
"""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import discord
from PIL import Image

from bot.jobs import texts
from bot.jobs.buttons import JobButton, job_view
from bot.jobs.job import Job
from bot.jobs.queueing import requester_of
from bot.messages import SPOILER_PREFIX, reply_privately, shorten

if TYPE_CHECKING:
    from bot.jobs.services import JobServices

# A slot whose image is not there (yet, or at all): dark grey.
_EMPTY_TILE = (47, 49, 54)
_STATE_MARKS = {"queued": "waiting", "done": "done", "failed": "failed", "cancelled": "cancelled"}


def grid_key(job: Job) -> str:
    """What identifies the message that shows the job: its grid's id, or its own."""
    return job.grid_id or job.id


def compose(pictures: Sequence[bytes | None], tile: int) -> bytes:
    """The pictures (PNG bytes; None for an empty slot) as one PNG, two per row, each `tile` pixels square.
    Blocking (decodes and encodes): call it off the event loop."""
    columns = min(2, len(pictures))
    rows = math.ceil(len(pictures) / columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), _EMPTY_TILE)
    for index, png in enumerate(pictures):
        if png is None:
            continue
        with Image.open(io.BytesIO(png)) as picture:
            tile_image = picture.convert("RGB")
        if tile_image.size != (tile, tile):
            tile_image = tile_image.resize((tile, tile), Image.Resampling.LANCZOS)
        sheet.paste(tile_image, ((index % columns) * tile, (index // columns) * tile))
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


def grid_view(jobs: Sequence[Job]) -> discord.ui.View:
    """U1-U4 (that image alone) on the first row, V1-V4 (its variations) on the second, for the images made."""
    view = discord.ui.View(timeout=None)
    for row, (action, letter) in enumerate((("upscale", "U"), ("vary", "V"))):
        for job in jobs:
            if job.state == "done":
                view.add_item(JobButton(action, job.id, label=f"{letter}{job.grid_index + 1}", row=row))
    return view


@dataclass
class _Grid:
    size: int
    jobs: dict[int, Job] = field(default_factory=dict)
    # The latest preview of each image, or its result once done.
    pictures: dict[int, bytes] = field(default_factory=dict)
    steps: dict[int, tuple[int, int]] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return len(self.jobs) == self.size and all(job.is_finished for job in self.jobs.values())


@dataclass(frozen=True)
class GridShown:
    """What a grid's message should show now (bot.jobs.progress turns it into its Render)."""

    text: str
    # The picture to compose (`compose`): its file name, the slots' PNGs and the tile size; None for none yet.
    picture: tuple[str, Sequence[bytes | None], int] | None
    view: discord.ui.View | None
    embed: discord.Embed | None
    final: bool


class GridBoard:
    """The state of every grid whose message does not show its ending yet; see the module docstring."""

    def __init__(self) -> None:
        self._grids: dict[str, _Grid] = {}

    def __len__(self) -> int:
        return len(self._grids)

    def update(
        self, job: Job, *, step: tuple[int, int] | None = None, picture: bytes | None = None, reason: str | None = None,
        spoiler: bool = False,
    ) -> GridShown:
        """Record what happened to one image of its grid, and say what the grid's message shows now."""
        assert job.grid_id is not None
        grid = self._grids.setdefault(job.grid_id, _Grid(size=job.grid_size))
        index = job.grid_index
        grid.jobs[index] = job
        if job.state == "queued":
            # Waiting (again): what it showed before is stale.
            grid.pictures.pop(index, None)
            grid.steps.pop(index, None)
        if step is not None:
            grid.steps[index] = step
        if picture is not None:
            grid.pictures[index] = picture
        elif job.state in ("failed", "cancelled"):
            grid.pictures.pop(index, None)
        if reason is not None:
            grid.reasons[index] = reason
        shown = self._shown(job.grid_id, grid, spoiler=spoiler)
        if shown.final:
            del self._grids[job.grid_id]
        return shown

    def _shown(self, grid_id: str, grid: _Grid, *, spoiler: bool) -> GridShown:
        lead = grid.jobs[min(grid.jobs)]
        jobs = [grid.jobs[index] for index in sorted(grid.jobs)]
        heading = f"{texts.job_heading(lead)} · grid `{grid_id}` of {grid.size}"
        prefix = SPOILER_PREFIX if spoiler else ""
        slots = [grid.pictures.get(index) for index in range(grid.size)]
        picture = (f"{prefix}{grid_id}.png", slots, lead.size) if any(slots) else None
        if not grid.finished:
            marks = " · ".join(f"{index + 1} {self._mark(grid, index)}" for index in range(grid.size))
            return GridShown(f"{heading}\n{marks}", picture, job_view(lead, "cancel"), None, final=False)
        made = [job for job in jobs if job.state == "done"]
        notes = [
            f"{job.grid_index + 1} (`{job.id}`) {texts.STATE_WORDS[job.state]}"
            + (f": {grid.reasons[job.grid_index]}" if job.grid_index in grid.reasons else "")
            for job in jobs if job.state != "done"
        ]
        text = heading + ("\n" + "; ".join(notes) if notes else "")
        embed = None
        if made:
            embed = grid_embed(grid_id, made, attachment_name=None if spoiler or picture is None else picture[0])
        return GridShown(text, picture, grid_view(made) if made else None, embed, final=True)

    @staticmethod
    def _mark(grid: _Grid, index: int) -> str:
        job = grid.jobs.get(index)
        if job is None:
            return "waiting"
        if job.state == "running":
            step, total = grid.steps.get(index, (0, job.steps))
            return f"{int(100 * step / total) if total else 0}%"
        return _STATE_MARKS[job.state]


def grid_embed(grid_id: str, made: Sequence[Job], *, attachment_name: str | None) -> discord.Embed:
    """The card under a grid: its settings once (seeds differ by one per image) and each image's job id."""
    first = made[0]
    embed = discord.Embed(title=shorten(texts.prompt_label(first, 256), 256), colour=discord.Colour.dark_teal())
    if first.negative:
        embed.add_field(name="Avoiding", value=shorten(first.negative, 1024), inline=False)
    embed.add_field(name="Seeds", value=", ".join(str(job.seed) for job in made))
    embed.add_field(name="Steps", value=str(first.steps))
    embed.add_field(name="Size", value=f"{first.size} px")
    embed.add_field(name="Images", value=" · ".join(f"{job.grid_index + 1} `{job.id}`" for job in made), inline=False)
    embed.add_field(name="Grid", value=f"`{grid_id}`: U posts an image alone, V makes variations of it")
    if attachment_name:
        embed.set_image(url=f"attachment://{attachment_name}")
    return embed


async def post_grid(services: JobServices, interaction: discord.Interaction, jobs: Sequence[Job]) -> None:
    """/show of a grid's id: the grid again with its U and V buttons, under the rules of the server it is posted
    in, once every image of it ended (an image's own id shows that image alone)."""
    grid_id = jobs[0].grid_id
    if not all(job.is_finished for job in jobs):
        done = sum(job.state == "done" for job in jobs)
        await reply_privately(interaction, f"Grid `{grid_id}` is still being made ({done} of {len(jobs)} done).")
        return
    refusal = await services.admission.posting_refusal(requester_of(interaction), jobs[0].spec)
    if refusal is not None:
        await reply_privately(interaction, f"`{grid_id}` can't be shown here. {refusal.sentence}")
        return
    await interaction.response.defer(thinking=True)
    files = services.files

    def read(job: Job) -> bytes | None:
        try:
            return files.read(job.png_path) if job.state == "done" and job.png_path else None
        except (FileNotFoundError, ValueError):
            return None  # deleted: shown as an empty slot, without its buttons

    pngs = [await asyncio.to_thread(read, job) for job in jobs]
    # Deleted images count as ended without a picture: the grid shows the others.
    shown = [job if png is not None or job.state != "done" else replace(job, state="cancelled") for job, png in zip(jobs, pngs)]
    board, render = GridBoard(), None
    for job, png in zip(shown, pngs):
        render = services.progress.grid_render(board, job, posted_in=interaction.guild_id or job.guild_id, picture=png)
    assert render is not None
    await services.progress.load_picture(render)
    await interaction.followup.send(**render.message_kwargs(editing=False))
