"""Submitting a job in answer to an interaction (/imagine, /blend, Reroll, Variations), within Discord's 3 seconds.

The answer carries the queue position and an ETA, so it needs the job stored first. That normally takes
milliseconds; if the database is slow, or the job's pictures are being fetched from Discord's CDN and checked
(bot.jobs.prompt_images: seconds for a large upload), the interaction is deferred before the deadline and the
answer follows.
After the answer, the job's own channel message ("(Waiting to start)") is posted in the background: the
interaction token is never used for the job after this. Whether the job may be queued at all is decided by
`bot.jobs.admission`, the one way in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord

from bot.jobs.admission import Admission, Admitted, Refusal, Requester
from bot.jobs.job import Job, JobKind
from bot.jobs.prompt_images import Prepared
from bot.jobs.texts import queued_reply
from bot.messages import reply_privately
from generator.protocol import DreamSpec

if TYPE_CHECKING:
    from bot.jobs.progress import ProgressMessages

log = logging.getLogger(__name__)

# Discord allows 3 s for the first response; keep a margin for the response's own round trip.
ACKNOWLEDGE_WITHIN_SECONDS = 2.0


def requester_of(interaction: discord.Interaction) -> Requester:
    """Who asks, and where: the interaction's member, server and channel."""
    assert interaction.guild_id is not None and interaction.channel_id is not None
    return Requester(
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        user_id=interaction.user.id,
        user_name=interaction.user.display_name,
        role_ids=tuple(role.id for role in getattr(interaction.user, "roles", ())),
    )


def bot_can_post(interaction: discord.Interaction) -> bool:
    permissions = interaction.app_permissions
    return bool(permissions.view_channel and permissions.send_messages and permissions.attach_files
                and permissions.embed_links)


async def submit_and_answer(
    interaction: discord.Interaction,
    admission: Admission,
    progress: ProgressMessages,
    spec: DreamSpec,
    *,
    kind: JobKind = "imagine",
    parent_job_id: str | None = None,
    init_latents_path: str | None = None,
    prepare: Callable[[Requester], Awaitable[Prepared | Refusal]] | None = None,
    count: int = 1,
) -> Job | None:
    """Submit the job for the interaction's member and channel, then answer with position and ETA, or with why
    it was refused. `prepare` (the member) gives the spec to submit, with its new pictures, in place of `spec`
    (bot.jobs.prompt_images.Pictures.prepare fetches and checks them). Returns the job, or None when it was
    refused. `count` 2 to 4 queues a grid (its first job is returned)."""
    requester = requester_of(interaction)

    async def submit() -> Admitted | Refusal:
        prepared = Prepared(spec) if prepare is None else await prepare(requester)
        if isinstance(prepared, Refusal):
            return prepared
        return await admission.submit(
            requester, prepared.spec, pictures=prepared.pictures,
            kind=kind, parent_job_id=parent_job_id, init_latents_path=init_latents_path, count=count,
        )

    work = asyncio.ensure_future(submit())
    try:
        outcome = await asyncio.wait_for(asyncio.shield(work), ACKNOWLEDGE_WITHIN_SECONDS)
    except TimeoutError:
        log.warning("queueing took over %.1f s; deferring the interaction", ACKNOWLEDGE_WITHIN_SECONDS)
        await interaction.response.defer(ephemeral=True, thinking=True)
        outcome = await work
    if not isinstance(outcome, Admitted):
        await reply_privately(interaction, outcome.sentence)
        return None

    reachable = bot_can_post(interaction)
    if not reachable:
        progress.mark_unreachable(outcome.job.channel_id)
    await reply_privately(interaction, queued_reply(outcome, unreachable=not reachable))
    for job in outcome.grid or (outcome.job,):
        progress.announce(job)
    return outcome.job
