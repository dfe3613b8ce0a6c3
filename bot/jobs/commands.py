"""`/queue`, `/cancel [job]`, `/show <job>` and `/history`: a member's view of their jobs."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs import texts
from bot.jobs.admission import MAX_GRID_COUNT
from bot.jobs.buttons import cancel_jobs, may_manage, post_result
from bot.jobs.dispatcher import NotCancellable
from bot.jobs.grids import post_grid
from bot.jobs.job import Job
from bot.jobs.services import JobServices
from bot.messages import NO_MENTIONS, reply_privately, shorten
from bot.permissions import is_moderator

HISTORY_LENGTH = 10
_AUTOCOMPLETE_CHOICES = 25


class JobsCog(commands.Cog):
    def __init__(self, services: JobServices) -> None:
        self.services = services
        self.store = services.store
        self.dispatcher = services.dispatcher

    # -- /queue --

    @app_commands.command(name="queue", description="Your jobs with their places in the queue, and what is running")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction) -> None:
        dispatcher = self.dispatcher
        mine = []
        for job in await self.store.active_jobs(interaction.user.id):
            position = dispatcher.position(job.id) if job.state == "queued" else None
            eta = dispatcher.estimate_wait(position) if position is not None else None
            mine.append((job, position, eta))
        running = await self.store.list_running()
        embed = texts.queue_embed(
            mine,
            total_queued=len(dispatcher.queue),
            running=running,
            progress=dispatcher.in_flight_progress(),
            workers=dispatcher.in_flight_workers(),
        )
        if is_moderator(interaction) and interaction.guild_id is not None:
            # A moderator sees the whole server's queue, so they can find and cancel anyone's job.
            server_jobs = await self.store.guild_active_jobs(interaction.guild_id)
            texts.add_server_queue(
                embed,
                [(j, dispatcher.position(j.id) if j.state == "queued" else None) for j in server_jobs],
                progress=dispatcher.in_flight_progress(),
                paused=dispatcher.queue.is_paused(interaction.guild_id),
            )
        if not dispatcher.backend_ready:
            embed.set_footer(text="No generator takes jobs right now (starting, or out of reach); jobs wait until one does.")
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    # -- /cancel --

    @app_commands.command(name="cancel", description="Cancel one of your waiting or running jobs (moderators: anyone's)")
    @app_commands.guild_only()
    @app_commands.describe(job="The job id (leave empty if you have only one job)")
    async def cancel(self, interaction: discord.Interaction, job: str | None = None) -> None:
        """A job id cancels that job; a grid's id (bot.jobs.grids) every image of it not ended yet."""
        targets: list[Job]
        if job is None:
            active = await self.store.active_jobs(interaction.user.id)
            if not active:
                await reply_privately(interaction, "You have no waiting or running jobs.")
                return
            ids = list(dict.fromkeys(j.grid_id or j.id for j in active))
            if len(ids) > 1:
                shown = ", ".join(f"`{i}`" for i in ids[:10])
                await reply_privately(interaction, f"You have {len(ids)} jobs or grids ({shown}); say which: `/cancel job:<id>`.")
                return
            targets = active
        else:
            found = await self.store.get(job)
            targets = [found] if found is not None else await self.store.grid(job)
            if not targets or not may_manage(interaction, targets[0]):
                # Someone else's job looks the same as no job, unless you moderate its server.
                await reply_privately(interaction, f"You have no job `{shorten(job, 40)}`.")
                return
        try:
            answer = await cancel_jobs(self.services, interaction, targets)
        except NotCancellable as problem:
            await reply_privately(interaction, str(problem))
            return
        await reply_privately(interaction, answer)

    @cancel.autocomplete("job")
    async def _cancel_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        active = await self.store.active_jobs(interaction.user.id)
        if is_moderator(interaction) and interaction.guild_id is not None:
            mine = {job.id for job in active}
            active += [j for j in await self.store.guild_active_jobs(interaction.guild_id) if j.id not in mine]
        return self._choices(active, current)

    # -- /show --

    @app_commands.command(name="show", description="Post a finished job's image again, with fresh buttons")
    @app_commands.guild_only()
    @app_commands.describe(job="The job id (see /history)")
    async def show(self, interaction: discord.Interaction, job: str) -> None:
        """Your own jobs from any server, or anyone's from this one; posted under this server's rules (its
        blocks, allowed channels, banned words and spoiler setting), wherever the job was made."""
        found = await self.store.get(job)
        grid = [] if found is not None else await self.store.grid(job)
        first = found or (grid[0] if grid else None)
        if first is None or (first.user_id != interaction.user.id and first.guild_id != interaction.guild_id):
            await reply_privately(interaction, f"There is no job `{shorten(job, 40)}` here.")
            return
        if grid:
            await post_grid(self.services, interaction, grid)
            return
        assert found is not None
        if found.state != "done":
            await reply_privately(interaction, self._status_sentence(found))
            return
        await post_result(self.services, interaction, found)

    @show.autocomplete("job")
    async def _show_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        recent = await self.store.recent_jobs(interaction.user.id, limit=_AUTOCOMPLETE_CHOICES)
        return self._choices([j for j in recent if j.state == "done"], current)

    def _status_sentence(self, job: Job) -> str:
        if job.state == "queued":
            position = self.dispatcher.position(job.id)
            where = f" at position {position}" if position else ""
            return f"Job `{job.id}` is still waiting{where}."
        if job.state == "running":
            step, total = self.dispatcher.in_flight_progress().get(job.id, (job.progress_step, job.steps))
            return f"Job `{job.id}` is generating ({int(100 * step / total) if total else 0}%)."
        if job.state == "failed":
            return f"Job `{job.id}` failed: {job.error or 'no reason recorded'}"
        return f"Job `{job.id}` was cancelled."

    # -- /history --

    @app_commands.command(name="history", description="Your recent jobs")
    @app_commands.guild_only()
    async def history(self, interaction: discord.Interaction) -> None:
        # A grid is one entry: enough jobs for HISTORY_LENGTH grids of the most images.
        jobs = await self.store.recent_jobs(interaction.user.id, limit=HISTORY_LENGTH * MAX_GRID_COUNT)
        await interaction.response.send_message(
            embed=texts.history_embed(jobs, limit=HISTORY_LENGTH), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    # -- helpers --

    @staticmethod
    def _choices(jobs: list[Job], current: str) -> list[app_commands.Choice[str]]:
        typed = current.strip().lstrip("#").lower()
        choices = []
        for job in jobs:
            if typed and typed not in job.id:
                continue
            label = shorten(f"{job.id} · {job.state} · {job.prompt}", 100)
            choices.append(app_commands.Choice(name=label, value=job.id))
            if len(choices) == _AUTOCOMPLETE_CHOICES:
                break
        return choices
