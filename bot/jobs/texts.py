"""The texts and embeds of jobs: their channel messages, result cards, /queue and /history. Everything that quotes
user text is escaped and length-capped (bot.messages), and sent with `NO_MENTIONS`."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable, Sequence

import discord

from bot.jobs.admission import Admitted
from bot.jobs.fair_queue import describe_wait
from bot.jobs.job import Job
from bot.messages import SPOILER_PREFIX, describe_seconds, quoted_prompt, shorten, when
from generator.wire import WorkerHealth

# Discord's limits: message content 2000, embed title 256, field value 1024, description 4096.
_EMBED_TITLE = 256
_FIELD_VALUE = 1024

STATE_WORDS = {
    "queued": "waiting",
    "running": "generating",
    "done": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}


# Models that draw noise whatever the prompt (generator.protocol.MODEL_KINDS): every image made with them says so.
_NOISE_MODELS = {"tiny": "the tiny test models", "random": "random real-size models"}


def models_note(models_kind: str) -> str:
    """The line that ends a progress or result message made with models that draw noise; empty for real ones."""
    models = _NOISE_MODELS.get(models_kind)
    return f"\n*Made with {models}: this is noise, not your prompt.*" if models else ""


def job_heading(job: Job) -> str:
    pictures = len(job.spec.image_prompts)
    if not pictures:
        return f"**{quoted_prompt(job.prompt)}** - <@{job.user_id}>"
    shown = f"**{quoted_prompt(job.prompt)}** + {_pictures(pictures)}" if job.prompt else f"**{_pictures(pictures)}**"
    return f"{shown} - <@{job.user_id}>"


def prompt_label(job: Job, limit: int) -> str:
    """The job's prompt, quoted and capped, with the pictures it steers by ("a red fox + 1 picture"; without
    text, "a blend of 3 pictures")."""
    pictures = len(job.spec.image_prompts)
    if not pictures:
        return quoted_prompt(job.prompt, limit)
    if not job.prompt:
        return _pictures(pictures)
    steer = f" + {_pictures(pictures)}"
    return quoted_prompt(job.prompt, max(1, limit - len(steer))) + steer


def _pictures(count: int) -> str:
    return "1 picture" if count == 1 else f"a blend of {count} pictures"


def waiting_text(job: Job, note: str = "") -> str:
    return f"{job_heading(job)} (Waiting to start{note})"


def progress_text(job: Job, step: int, total: int) -> str:
    percent = int(100 * step / total) if total else 0
    return f"{job_heading(job)} ({percent}%) step {step}/{total}"


def done_text(job: Job) -> str:
    return job_heading(job)


def failed_text(job: Job, reason: str) -> str:
    return f"{job_heading(job)} (Failed: {shorten(discord.utils.escape_markdown(reason), 400)})"


def cancelled_text(job: Job) -> str:
    return f"{job_heading(job)} (Cancelled)"


def result_filename(job: Job, *, spoiler: bool = False) -> str:
    return f"{SPOILER_PREFIX if spoiler else ''}{job.id}.png"


def snapshot_filename(job: Job, *, spoiler: bool = False) -> str:
    return f"{SPOILER_PREFIX if spoiler else ''}{job.id}-progress.png"


def pictures_filename(job: Job, *, spoiler: bool = False) -> str:
    """The thumbnail strip of the job's image prompts, posted with its result."""
    return f"{SPOILER_PREFIX if spoiler else ''}{job.id}-prompts.png"


def result_embed(job: Job, *, attachment_name: str | None = None, thumbnail_name: str | None = None) -> discord.Embed:
    """The card under a finished image: what made it, so anyone can reproduce or reroll it. `thumbnail_name`: the
    attachment showing its image prompts, in the card's corner."""
    embed = discord.Embed(
        title=shorten(prompt_label(job, _EMBED_TITLE), _EMBED_TITLE),
        colour=discord.Colour.dark_teal(),
        timestamp=_utc(job.finished_at),
    )
    if job.negative:
        embed.add_field(name="Avoiding", value=shorten(job.negative, _FIELD_VALUE), inline=False)
    if job.spec.image_prompts:
        weights = ", ".join(f"{image.weight:g}" for image in job.spec.image_prompts)
        plural = "s" if len(job.spec.image_prompts) > 1 else ""
        embed.add_field(name="Pictures", value=f"{len(job.spec.image_prompts)} (weight{plural} {weights})")
    embed.add_field(name="Seed", value=str(job.seed))
    embed.add_field(name="Steps", value=str(job.steps))
    embed.add_field(name="Size", value=f"{job.size} px")
    embed.add_field(name="Cutouts", value=cutouts_text(job))
    embed.add_field(name="Time", value=describe_seconds(job.wall_seconds))
    embed.add_field(name="Asked by", value=f"<@{job.user_id}>")
    origin = f"`{job.id}`"
    if job.kind == "reroll" and job.parent_job_id:
        origin += f" (reroll of `{job.parent_job_id}`)"
    elif job.kind == "variation" and job.parent_job_id:
        origin += f" (variation of `{job.parent_job_id}`)"
    embed.add_field(name="Job", value=origin)
    if attachment_name:
        embed.set_image(url=f"attachment://{attachment_name}")
    if thumbnail_name:
        embed.set_thumbnail(url=f"attachment://{thumbnail_name}")
    return embed


def cutouts_text(job: Job) -> str:
    """The cutouts the image was made with, and what was asked for when memory ran short."""
    made, asked = job.made_with.cutouts, job.spec.cutouts
    return str(made) if made == asked else f"{made} ({asked} asked; the generator ran short of memory)"


def queued_reply(admitted: Admitted, *, unreachable: bool = False) -> str:
    """The private answer to a queued job: its place and ETA, and the server's notes (paused, allowance left)."""
    job, position, eta_seconds = admitted.job, admitted.position, admitted.eta_seconds
    place = f"position {position} in the queue" if position else "queued"
    eta = f", starting in {describe_wait(eta_seconds)}" if eta_seconds is not None else ""
    what, shown = f"`{job.id}`", job.id
    if admitted.grid:
        shown = job.grid_id or job.id
        what = f"a grid of {len(admitted.grid)} `{shown}` ({', '.join(f'`{j.id}`' for j in admitted.grid)})"
    text = f"Queued {what}: {place}{eta}. I'll show progress in this channel."
    if unreachable:
        text = (
            f"Queued {what}: {place}{eta}. I can't post in this channel, so fetch the result with "
            f"`/show job:{shown}` when it's done."
        )
    if admitted.paused:
        text += " This server's moderators have paused its queue: your job waits until they resume it."
    if admitted.allowance:
        text += f" {admitted.allowance}"
    return text


def queue_embed(
    mine: Sequence[tuple[Job, int | None, float | None]],
    *,
    total_queued: int,
    running: Sequence[Job],
    progress: dict[str, tuple[int, int]],
    workers: dict[str, WorkerHealth] | None = None,
) -> discord.Embed:
    """/queue: the caller's jobs with positions, then what the generators are doing for everyone, and on which
    worker (its id, device and machine) each running job is."""
    workers = workers or {}
    embed = discord.Embed(title="Queue", colour=discord.Colour.blurple())
    if mine:
        lines = []
        grids = by_grid(job for job, _, _ in mine)
        for job, position, eta in mine:
            if job.grid_id and grids[job.grid_id][0] is not job:
                continue  # a grid is one line, at its first job's place
            if job.state == "running":
                step, total = progress.get(job.id, (job.progress_step, job.steps))
                where = f"generating, {int(100 * step / total) if total else 0}%{running_on(workers.get(job.id))}"
            elif position is not None:
                where = f"position {position}" + (f", {describe_wait(eta)}" if eta is not None else "")
            else:
                where = STATE_WORDS.get(job.state, job.state)
            lines.append(f"{job_label(job, grids)} {where} - {prompt_label(job, 80)}")
        embed.add_field(name="Your jobs", value=shorten("\n".join(lines), _FIELD_VALUE), inline=False)
    else:
        embed.add_field(name="Your jobs", value="None. Start one with /imagine.", inline=False)
    embed.add_field(name="Waiting (everyone)", value=str(total_queued))
    embed.add_field(name="Generating (everyone)", value=str(len(running)))
    if running:
        now_lines = []
        running_grids = by_grid(running)
        for job in running:
            if job.grid_id and running_grids[job.grid_id][0] is not job:
                continue
            step, total = progress.get(job.id, (job.progress_step, job.steps))
            now_lines.append(
                f"{job_label(job, running_grids)} {int(100 * step / total) if total else 0}% for <@{job.user_id}>"
                f"{running_on(workers.get(job.id))}"
            )
        embed.add_field(name="Now", value=shorten("\n".join(now_lines), _FIELD_VALUE), inline=False)
    return embed


def running_on(worker: WorkerHealth | None) -> str:
    """' on `ray-2` (cuda:0, 10.0.0.7)': the worker a running job is on, its device and its machine."""
    if worker is None:
        return ""
    where = ", ".join(part for part in (worker.device, worker.node) if part)
    return f" on `{worker.worker_id}`" + (f" ({where})" if where else "")


def add_server_queue(
    embed: discord.Embed,
    jobs: Sequence[tuple[Job, int | None]],
    *,
    progress: dict[str, tuple[int, int]],
    paused: bool,
) -> None:
    """A moderator's /queue: every running and waiting job of their server, with whose it is."""
    lines = []
    for job, position in jobs:
        if job.state == "running":
            step, total = progress.get(job.id, (job.progress_step, job.steps))
            where = f"generating, {int(100 * step / total) if total else 0}%"
        else:
            where = f"position {position}" if position is not None else "waiting (paused)"
        lines.append(f"`{job.id}` {where} - <@{job.user_id}> - {prompt_label(job, 60)}")
    title = "This server's queue" + (" (paused)" if paused else "")
    embed.add_field(name=title, value=shorten("\n".join(lines), _FIELD_VALUE) if lines else "Empty.", inline=False)


def history_embed(jobs: Sequence[Job], limit: int | None = None) -> discord.Embed:
    """/history: one line per job, and one per grid (at most `limit` lines)."""
    embed = discord.Embed(title="Your recent jobs", colour=discord.Colour.blurple())
    if not jobs:
        embed.description = "No jobs yet. Start one with /imagine."
        return embed
    lines = []
    grids = by_grid(jobs)
    for job in jobs:
        if job.grid_id and grids[job.grid_id][0] is not job:
            continue
        if limit is not None and len(lines) == limit:
            break
        created = when(job.created_at, "R")
        link = ""
        if job.progress_message_id:
            link = f" [message](https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.progress_message_id})"
        state = "" if job.grid_id else f" {STATE_WORDS.get(job.state, job.state)}"
        lines.append(f"{job_label(job, grids)}{state} {created}{link} - {prompt_label(job, 100)}")
    embed.description = shorten("\n".join(lines), 4000)
    embed.set_footer(text="/show job:<id> posts a finished image (or a grid) again.")
    return embed


def by_grid(jobs: Iterable[Job]) -> dict[str, list[Job]]:
    """The grids among the jobs, each with its jobs in the order given."""
    grids: dict[str, list[Job]] = {}
    for job in jobs:
        if job.grid_id:
            grids.setdefault(job.grid_id, []).append(job)
    return grids


def job_label(job: Job, grids: dict[str, list[Job]]) -> str:
    """"`ab12cd34`", or for a job of a grid the grid's line: "grid `ef56gh78` (4 images: 3 done, 1 waiting)"."""
    if not job.grid_id:
        return f"`{job.id}`"
    states = Counter(STATE_WORDS.get(other.state, other.state) for other in grids[job.grid_id])
    counts = ", ".join(f"{count} {state}" for state, count in states.items())
    return f"grid `{job.grid_id}` ({len(grids[job.grid_id])} images: {counts})"


def _utc(timestamp: float | None) -> datetime.datetime | None:
    return None if timestamp is None else datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
