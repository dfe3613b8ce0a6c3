"""Queueing a job in answer to an interaction (/imagine, Reroll, Variations), within Discord's 3 seconds.

The answer carries the queue position and an ETA, so it needs the job stored first. That normally takes
milliseconds; if the database is slow, the interaction is deferred before the deadline and the answer follows.
After the answer, the job's own channel message ("(Waiting to start)") is posted in the background: the
interaction token is never used for the job after this.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord

from bot.jobs.dispatcher import QueueFull
from bot.jobs.store import Job, JobKind
from bot.jobs.texts import queued_reply
from bot.messages import reply_privately
from bot.moderation.service import Refused
from generator.protocol import DreamSpec

if TYPE_CHECKING:
    from bot.app import BigSleepBot

log = logging.getLogger(__name__)

# Discord allows 3 s for the first response; keep a margin for the response's own round trip.
ACKNOWLEDGE_WITHIN_SECONDS = 2.0


def bot_can_post(interaction: discord.Interaction) -> bool:
    permissions = interaction.app_permissions
    return bool(permissions.view_channel and permissions.send_messages and permissions.attach_files
                and permissions.embed_links)


async def queue_from_interaction(
    interaction: discord.Interaction,
    spec: DreamSpec,
    *,
    kind: JobKind = "imagine",
    parent_job_id: str | None = None,
    init_latents_path: str | None = None,
) -> Job | None:
    """Store and queue a job for the interaction's user and channel, then answer with position and ETA.
    Returns the job, or None when the server's rules or the user's queue refused it (they were told why)."""
    bot: BigSleepBot = interaction.client  # type: ignore[assignment]
    assert interaction.guild_id is not None and interaction.channel_id is not None

    role_ids = [role.id for role in getattr(interaction.user, "roles", ())]

    async def store_and_queue() -> tuple[Job, int | None, float | None, str | None]:
        # Every new job passes the server's rules here (blocks, channels, words, limits, quotas), and the
        # check and the enqueue happen under one lock so two commands cannot both take a last allowance.
        async with bot.moderation.admission_lock(interaction.guild_id):
            refused = await bot.moderation.refusal(
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=interaction.user.id,
                role_ids=role_ids,
                spec=spec,
            )
            if refused:
                raise Refused(refused)
            job = await bot.dispatcher.enqueue(
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=interaction.user.id,
                user_name=interaction.user.display_name,
                spec=spec,
                kind=kind,
                parent_job_id=parent_job_id,
                init_latents_path=init_latents_path,
            )
        position = bot.dispatcher.position(job.id)
        eta = bot.dispatcher.estimate_wait(position) if position is not None else None
        allowance = await bot.moderation.allowance_note(job.guild_id, job.user_id, role_ids)
        return job, position, eta, allowance

    work = asyncio.ensure_future(store_and_queue())
    try:
        try:
            job, position, eta, allowance = await asyncio.wait_for(asyncio.shield(work), ACKNOWLEDGE_WITHIN_SECONDS)
        except TimeoutError:
            log.warning("queueing took over %.1f s; deferring the interaction", ACKNOWLEDGE_WITHIN_SECONDS)
            await interaction.response.defer(ephemeral=True, thinking=True)
            job, position, eta, allowance = await work
    except (QueueFull, Refused) as full:
        await reply_privately(interaction, str(full))
        return None

    reachable = bot_can_post(interaction)
    if not reachable:
        bot.progress.mark_unreachable(job.channel_id)
    reply = queued_reply(job, position, eta, unreachable=not reachable)
    if bot.moderation.settings(job.guild_id).paused:
        reply += " This server's moderators have paused its queue: your job waits until they resume it."
    if allowance:
        reply += f" {allowance}"
    await reply_privately(interaction, reply)
    bot.progress.announce(job)
    return job


#END
