"""Buttons under job messages, as one discord.py DynamicItem: they keep working after a restart because the
action and job id live in the custom_id (`bs:<action>:<job id>`), not in memory.

Reroll and variations may be pressed by anyone who sees the image; the new job belongs to whoever pressed
(their caps apply). Cancel and delete are for the job's owner and for moderators (Manage Server or Manage
Messages in that channel); Discord shows buttons to everyone, so the check happens here.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import discord

from bot.jobs.dispatcher import NotCancellable
from bot.jobs.job import Job
from bot.jobs.parsing import RANDOM_SEED_LIMIT
from bot.jobs.ports import Actor, ModeratorActions
from bot.jobs.queueing import requester_of, submit_and_answer
from bot.jobs.store import JobNotFound
from bot.messages import reply_privately
from bot.permissions import is_moderator

if TYPE_CHECKING:
    from bot.jobs.services import JobServices

log = logging.getLogger(__name__)

# "upscale": a grid's U buttons (bot.jobs.grids), which post one image of it alone.
ACTIONS = ("reroll", "vary", "cancel", "delete", "upscale")
CUSTOM_ID_PREFIX = "bs"
_TEMPLATE = re.compile(rf"{CUSTOM_ID_PREFIX}:(?P<action>{'|'.join(ACTIONS)}):(?P<job_id>[0-9a-z]{{1,32}})")

_LOOKS = {
    "reroll": ("Reroll", discord.ButtonStyle.primary, "🎲"),
    "vary": ("Variations", discord.ButtonStyle.secondary, "🌀"),
    "cancel": ("Cancel", discord.ButtonStyle.danger, None),
    "delete": ("Delete", discord.ButtonStyle.danger, "🗑️"),
    "upscale": ("U", discord.ButtonStyle.secondary, None),
}


def custom_id(action: str, job_id: str) -> str:
    return f"{CUSTOM_ID_PREFIX}:{action}:{job_id}"


class JobButton(discord.ui.DynamicItem[discord.ui.Button], template=_TEMPLATE):
    """`label` replaces the action's own (a grid's "U2", "V2"); only the custom_id matters after a restart."""

    def __init__(self, action: str, job_id: str, *, label: str | None = None, row: int | None = None) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown button action {action!r}")
        own_label, style, emoji = _LOOKS[action]
        if label is not None:
            emoji = None
        button = discord.ui.Button(
            label=label or own_label, style=style, emoji=emoji, custom_id=custom_id(action, job_id), row=row
        )
        super().__init__(button)
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /) -> JobButton:
        return cls(match["action"], match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        services: JobServices = interaction.client.job_services  # type: ignore[attr-defined]
        job = await services.store.get(self.job_id)
        if job is None:
            await reply_privately(interaction, f"Job `{self.job_id}` no longer exists.")
            return
        handler = {
            "reroll": _reroll,
            "vary": _vary,
            "cancel": _cancel,
            "delete": _delete,
            "upscale": _post_alone,
        }[self.action]
        await handler(services, interaction, job)


def job_view(job: Job, *actions: str) -> discord.ui.View:
    """A timeout-free view holding only dynamic buttons (discord.py keeps no per-message state for it)."""
    view = discord.ui.View(timeout=None)
    for action in actions:
        view.add_item(JobButton(action, job.id))
    return view


def active_view(job: Job) -> discord.ui.View:
    return job_view(job, "cancel")


# A button another feature puts under finished images (challenges: "Submit to challenge"): an item for the job,
# or None for none. The bot hands the list to whatever shows results (bot.jobs.progress).
ResultButton = Callable[[Job], "discord.ui.Item[Any] | None"]


def result_view(job: Job, extra_buttons: Sequence[ResultButton] = ()) -> discord.ui.View:
    view = job_view(job, "reroll", "vary", "delete")
    for extra in extra_buttons:
        item = extra(job)
        if item is not None:
            view.add_item(item)
    return view


# ---- who may do what --------------------------------------------------------------------------------------


def may_manage(interaction: discord.Interaction, job: Job) -> bool:
    """Owner anywhere; moderators only for jobs of their own server."""
    if interaction.user.id == job.user_id:
        return True
    return interaction.guild_id == job.guild_id and is_moderator(interaction)


async def audit_if_moderating(
    actions: ModeratorActions, interaction: discord.Interaction, job: Job, action: str, after: Any
) -> None:
    """A moderator acting on someone else's job goes into the server's audit trail (see /modlog); a cancel
    gives the member's allowance back."""
    if interaction.user.id == job.user_id:
        return
    await actions.record_job_action(job, Actor(interaction.user.id, interaction.user.display_name), action, after)


# ---- actions ----------------------------------------------------------------------------------------------


def _new_seed() -> int:
    return random.SystemRandom().randrange(RANDOM_SEED_LIMIT)


async def _reroll(services: JobServices, interaction: discord.Interaction, job: Job) -> None:
    steps = job.steps
    if job.kind == "variation" and job.parent_job_id:
        # A reroll of a variation is a fresh dream of the same prompt, at the full length of the original.
        parent = await services.store.get(job.parent_job_id)
        steps = parent.steps if parent is not None else steps
    # What the image was really made with (fewer cutouts when memory ran short), so the reroll is made like the
    # image it was pressed under. No starting latents, so no noise over them either.
    spec = job.made_with.with_changes(seed=_new_seed(), steps=steps, init_noise=0.0)
    await submit_and_answer(interaction, services.admission, services.progress, spec, kind="reroll", parent_job_id=job.id)


async def _vary(services: JobServices, interaction: discord.Interaction, job: Job) -> None:
    if job.state != "done" or not job.latents_path or not await asyncio.to_thread(services.files.exists, job.latents_path):
        await reply_privately(interaction, f"Job `{job.id}` has no finished image to vary any more.")
        return
    settings = services.variations
    spec = job.made_with.with_changes(
        seed=_new_seed(),
        steps=max(1, round(job.steps * settings.steps_fraction)),
        init_noise=settings.noise,
    )
    await submit_and_answer(
        interaction, services.admission, services.progress, spec,
        kind="variation", parent_job_id=job.id, init_latents_path=job.latents_path,
    )


async def _cancel(services: JobServices, interaction: discord.Interaction, job: Job) -> None:
    if not may_manage(interaction, job):
        await reply_privately(interaction, "Only the person who asked for this image (or a moderator) can cancel it.")
        return
    # Under a grid's message, the button cancels the whole grid.
    targets = await services.store.grid(job.grid_id) if job.grid_id else [job]
    try:
        cancelled = await cancel_jobs(services, interaction, targets)
    except NotCancellable as error:
        await reply_privately(interaction, str(error))
        return
    await reply_privately(interaction, cancelled)


async def cancel_jobs(services: JobServices, interaction: discord.Interaction, jobs: Sequence[Job]) -> str:
    """Cancel the jobs that have not ended (a grid's: those of it still waiting or running), each audited when a
    moderator cancels someone else's; returns the answer. Raises NotCancellable when none was left to cancel."""
    cancelled = []
    for job in jobs:
        try:
            await services.dispatcher.cancel(job.id)
        except (NotCancellable, JobNotFound) as error:
            if len(jobs) == 1:
                raise NotCancellable(str(error)) from None
            continue  # that image of the grid already ended
        # Audited before the answer, so whatever the moderator does next already sees it in /modlog.
        await audit_if_moderating(services.moderator_actions, interaction, job, "cancel", {"state": "cancelled"})
        cancelled.append(f"`{job.id}`")
    if not cancelled:
        raise NotCancellable(f"Every image of grid `{jobs[0].grid_id}` already ended.")
    return f"Cancelled {', '.join(cancelled)}."


async def post_result(services: JobServices, interaction: discord.Interaction, job: Job) -> None:
    """Post a finished job's image alone, with its card and buttons, in answer to the interaction (/show, and a
    grid's U buttons), under the rules of the server it is posted in (blocks, channels, banned words, spoilers)."""
    refusal = await services.admission.posting_refusal(requester_of(interaction), job.spec)
    if refusal is not None:
        await reply_privately(interaction, f"`{job.id}` can't be shown here. {refusal.sentence}")
        return
    files = services.files
    if not job.png_path or not await asyncio.to_thread(files.exists, job.png_path):
        await reply_privately(interaction, f"The image of `{job.id}` was deleted.")
        return
    # Reading and uploading the file can take a moment; the thinking state keeps the interaction alive.
    await interaction.response.defer(thinking=True)
    png = await asyncio.to_thread(files.read, job.png_path)
    render = services.progress.result_render(job, png, posted_in=interaction.guild_id)
    await services.progress.load_thumbnail(render)
    await interaction.followup.send(**render.message_kwargs(editing=False))


async def _post_alone(services: JobServices, interaction: discord.Interaction, job: Job) -> None:
    if job.state != "done":
        await reply_privately(interaction, f"Job `{job.id}` has no finished image to post.")
        return
    await post_result(services, interaction, job)


async def _delete(services: JobServices, interaction: discord.Interaction, job: Job) -> None:
    if not may_manage(interaction, job):
        await reply_privately(interaction, "Only the person who asked for this image (or a moderator) can delete it.")
        return
    await services.store.delete_result(job.id, services.files.data_dir)
    await audit_if_moderating(services.moderator_actions, interaction, job, "delete", {"image": "deleted"})
    await reply_privately(interaction, f"Deleted the image of `{job.id}`.")
    if interaction.message is not None:
        try:
            await interaction.message.delete()
        except discord.NotFound:
            pass
        except discord.HTTPException as error:
            log.warning("job %s: could not delete its message: %s", job.id, error, extra={"job_id": job.id})
