"""`/challenge ...`: community prompt challenges. A moderator starts one (theme, duration); members enter finished
images and vote with buttons; at the deadline the results are posted with a contact sheet of every entry (the
running of it all is bot.challenges.service's; these are the slash commands).

Moderator subcommands (start, end, cancel) check Manage Server here: Discord's default_member_permissions is per
top-level command, and every member must see /challenge for submit, withdraw, list, show and leaderboard.
Taking out someone else's entry is content moderation, so it takes what deleting someone's image takes
(`bot.permissions.is_moderator`) and goes into the audit trail. One challenge runs per server at a time.
"""

from __future__ import annotations

import io
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.challenges import texts
from bot.challenges.durations import DurationError, describe_duration, parse_duration
from bot.challenges.service import ChallengeService, shown_in_embed
from bot.challenges.store import Challenge, ChallengeRefused, Entry
from bot.jobs.admission import banned_text_refusal
from bot.jobs.ports import Actor
from bot.messages import NO_MENTIONS, reply_privately, shorten, when
from bot.permissions import is_moderator, manages_server

log = logging.getLogger(__name__)

MAX_THEME_CHARS = 200
_AUTOCOMPLETE_CHOICES = 25


class ChallengesCog(commands.Cog):
    challenge = app_commands.Group(
        name="challenge", description="Prompt challenges: a theme, a deadline, entries and votes", guild_only=True
    )

    def __init__(self, challenges: ChallengeService) -> None:
        self.challenges = challenges
        self.client = challenges.client
        self.store = challenges.store
        self.settings = challenges.settings
        self.clock = challenges.clock

    # ---- moderators -------------------------------------------------------------------------------------

    @challenge.command(name="start", description="Start a challenge (needs Manage Server)")
    @app_commands.describe(
        theme="What the images should show",
        duration="How long entries and votes stay open, e.g. 2d, 36h, 1d12h, 90m",
        channel="Where to announce it and post the entries (default: here)",
        max_entries_per_member="How many images each member may enter",
        hide_votes="Hide vote counts until the end (default: the server's setting)",
    )
    async def start(
        self,
        interaction: discord.Interaction,
        theme: app_commands.Range[str, 1, MAX_THEME_CHARS],
        duration: str,
        channel: discord.TextChannel | None = None,
        max_entries_per_member: app_commands.Range[int, 1, 25] | None = None,
        hide_votes: bool | None = None,
    ) -> None:
        if not manages_server(interaction):
            await reply_privately(interaction, "Starting a challenge needs the Manage Server permission.")
            return
        assert interaction.guild_id is not None
        theme = " ".join(theme.split())
        if not theme:
            await reply_privately(interaction, "The theme is empty; say what the images should show.")
            return
        banned = banned_text_refusal(self.challenges.rules, interaction.guild_id, [("theme", theme)])
        if banned:
            await reply_privately(interaction, banned.sentence)
            return
        try:
            seconds = parse_duration(
                duration,
                minimum_seconds=self.settings.min_duration_minutes * 60,
                maximum_seconds=self.settings.max_duration_days * 86400,
            )
        except DurationError as problem:
            await reply_privately(interaction, str(problem))
            return
        if await self.store.running(interaction.guild_id) is not None:
            await reply_privately(interaction, "This server already has a challenge running; end or cancel it first.")
            return
        channel_id = channel.id if channel is not None else interaction.channel_id
        assert channel_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            created = await self.store.create(
                guild_id=interaction.guild_id,
                channel_id=channel_id,
                theme=theme,
                created_by=interaction.user.id,
                deadline=self.clock() + seconds,
                max_entries_per_member=max_entries_per_member or self.settings.default_max_entries_per_member,
                counts_hidden=self.settings.hide_counts_until_end if hide_votes is None else hide_votes,
                upload_limit=interaction.filesize_limit,
            )
        except ChallengeRefused as problem:
            await reply_privately(interaction, str(problem))
            return
        target = self.client.get_partial_messageable(channel_id, guild_id=interaction.guild_id)
        try:
            announcement = await target.send(
                f"**A new challenge has started: {texts.theme_text(created)}**",
                embed=texts.announcement_embed(created),
                allowed_mentions=NO_MENTIONS,
            )
        except discord.HTTPException as error:
            await self.store.discard(created.id)
            log.info("challenge %s: <#%s> refused the announcement (%s)", created.id, channel_id, error.code)
            await reply_privately(interaction, f"I can't post in <#{channel_id}>, so the challenge did not start. "
                                      "Pick a channel where I may send messages, files and embeds.")
            return
        await self.store.set_announcement(created.id, announcement.id)
        self.challenges.opened(created)
        await reply_privately(
            interaction,
            f"Challenge #{created.id} is on in <#{channel_id}> for {describe_duration(seconds)}, until "
            f"{when(created.deadline, 'F')}.",
        )

    @challenge.command(name="end", description="End the running challenge now and post the results (needs Manage Server)")
    async def end(self, interaction: discord.Interaction) -> None:
        running = await self._running_for_moderator(interaction, "Ending a challenge")
        if running is None:
            return
        try:
            await self.store.end_now(running.id)
        except ChallengeRefused as problem:
            await reply_privately(interaction, str(problem))
            return
        self.challenges.closed(running)
        await reply_privately(interaction, f"Challenge #{running.id} is over; the results will be posted in <#{running.channel_id}>.")

    @challenge.command(name="cancel", description="Cancel the running challenge without results (needs Manage Server)")
    async def cancel(self, interaction: discord.Interaction) -> None:
        running = await self._running_for_moderator(interaction, "Cancelling a challenge")
        if running is None:
            return
        try:
            cancelled = await self.store.cancel(running.id)
        except ChallengeRefused as problem:
            await reply_privately(interaction, str(problem))
            return
        self.challenges.closed(cancelled)
        await reply_privately(interaction, f"Challenge #{cancelled.id} was cancelled; no results will be posted.")
        channel = self.client.get_partial_messageable(cancelled.channel_id, guild_id=cancelled.guild_id)
        try:
            await channel.send(f"Challenge #{cancelled.id} ({texts.theme_text(cancelled)}) was cancelled by a moderator.",
                               allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as error:
            log.info("challenge %s: could not post the cancellation (%s)", cancelled.id, error.code)
        await self.challenges.close_entry_messages(cancelled, None)
        await self.challenges.update_announcement(cancelled)

    async def _running_for_moderator(self, interaction: discord.Interaction, doing: str) -> Challenge | None:
        if not manages_server(interaction):
            await reply_privately(interaction, f"{doing} needs the Manage Server permission.")
            return None
        assert interaction.guild_id is not None
        running = await self.store.running(interaction.guild_id)
        if running is None:
            await reply_privately(interaction, "No challenge is running in this server.")
        return running

    # ---- members: entering ------------------------------------------------------------------------------

    @challenge.command(name="submit", description="Enter one of your finished images in the running challenge")
    @app_commands.describe(job="The job id of your image (see /history)")
    async def submit(self, interaction: discord.Interaction, job: str) -> None:
        await self.challenges.enter(interaction, job)

    @submit.autocomplete("job")
    async def _submit_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        recent = await self.challenges.jobs.recent_jobs(interaction.user.id, limit=50)
        typed = current.strip().lstrip("#").lower()
        choices = []
        for job in recent:
            if job.state != "done" or not job.png_path or job.guild_id != interaction.guild_id:
                continue
            if typed and typed not in job.id and typed not in job.prompt.lower():
                continue
            choices.append(app_commands.Choice(name=shorten(f"{job.id} · {job.prompt}", 100), value=job.id))
            if len(choices) == _AUTOCOMPLETE_CHOICES:
                break
        return choices

    @challenge.command(name="withdraw", description="Take one of your entries out of the running challenge")
    @app_commands.describe(entry="The entry number (leave empty if you have only one entry)")
    async def withdraw(self, interaction: discord.Interaction, entry: app_commands.Range[int, 1] | None = None) -> None:
        assert interaction.guild_id is not None
        challenge = await self.store.running(interaction.guild_id)
        if challenge is None:
            await reply_privately(interaction, "No challenge is running in this server.")
            return
        mine = await self.store.entries_of(challenge.id, interaction.user.id)
        target: Entry | None
        if entry is None:
            if len(mine) != 1:
                text = ("You have no entries in the running challenge." if not mine else
                        f"You have {len(mine)} entries ({', '.join(f'#{e.number}' for e in mine)}); "
                        "say which: `/challenge withdraw entry:<number>`.")
                await reply_privately(interaction, text)
                return
            target = mine[0]
        else:
            target = await self.store.entry_by_number(challenge.id, entry)
            # A moderator may take out anyone's entry (one that breaks the server's rules), as they may delete
            # anyone's image.
            if target is None or (target.user_id != interaction.user.id and not is_moderator(interaction)):
                await reply_privately(interaction, f"You have no entry #{entry} in the running challenge.")
                return
        try:
            removed = await self.store.remove_entry(target.id)
        except ChallengeRefused as problem:
            await reply_privately(interaction, str(problem))
            return
        await self.challenges.delete_copy(removed.image_path)
        await reply_privately(interaction, f"Withdrew entry #{removed.number}.")
        if removed.user_id != interaction.user.id:
            await self.challenges.moderator_actions.record(
                challenge.guild_id, Actor(interaction.user.id, interaction.user.display_name), "challenge.withdraw",
                f"entry #{removed.number} of challenge #{challenge.id} by {removed.user_name or 'someone'} "
                f"({removed.user_id})", {"job": removed.job_id, "votes": removed.votes}, None,
            )
        if removed.message_id is not None:
            channel = self.client.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
            try:
                await channel.get_partial_message(removed.message_id).delete()
            except discord.HTTPException as error:
                log.info("challenge %s: could not delete entry %s's message (%s)", challenge.id, removed.number, error.code)

    @withdraw.autocomplete("entry")
    async def _withdraw_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
        challenge = await self.store.running(interaction.guild_id or 0)
        if challenge is None:
            return []
        if is_moderator(interaction):
            entries = await self.store.entries(challenge.id)
        else:
            entries = await self.store.entries_of(challenge.id, interaction.user.id)
        typed = current.strip().lstrip("#")
        return [
            app_commands.Choice(name=shorten(f"#{e.number} · {e.user_name} · {e.prompt}", 100), value=e.number)
            for e in entries
            if not typed or str(e.number).startswith(typed)
        ][:_AUTOCOMPLETE_CHOICES]

    # ---- everyone: looking ------------------------------------------------------------------------------

    @challenge.command(name="list", description="This server's running and past challenges")
    async def list_(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        challenges = await self.store.in_guild(interaction.guild_id, limit=15)
        counts = {challenge.id: len(await self.store.entries(challenge.id)) for challenge in challenges}
        await interaction.response.send_message(
            embed=texts.list_embed(challenges, counts, now=self.clock()), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @challenge.command(name="show", description="A challenge's entries (with standings when votes are visible)")
    @app_commands.describe(id="The challenge number (default: the running or latest one)")
    async def show(self, interaction: discord.Interaction, id: app_commands.Range[int, 1] | None = None) -> None:
        assert interaction.guild_id is not None
        if id is None:
            challenge = await self.store.running(interaction.guild_id) or await self.store.latest(interaction.guild_id)
        else:
            challenge = await self.store.get(id)
        if challenge is None or challenge.guild_id != interaction.guild_id:
            await reply_privately(interaction, "There is no such challenge in this server." if id else "No challenges here yet.")
            return
        standings = await self.challenges.standings(challenge)
        embed = texts.show_embed(challenge, standings, now=self.clock())
        if challenge.state != "ended" or not standings:
            await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        # An archived challenge comes with its contact sheet, drawn again from the bot's own copies.
        await interaction.response.defer(ephemeral=True, thinking=True)
        sheet = await self.challenges.contact_sheet(challenge, standings, interaction.filesize_limit)
        if sheet is not None:
            name = self.challenges.attachment_name(challenge.guild_id, sheet.filename)
            if shown_in_embed(name):
                embed.set_image(url=f"attachment://{name}")
            await interaction.followup.send(embed=embed, file=discord.File(io.BytesIO(sheet.data), filename=name),
                                            ephemeral=True, allowed_mentions=NO_MENTIONS)
        else:
            await interaction.followup.send(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @challenge.command(name="leaderboard", description="Who won the most challenges in this server")
    async def leaderboard(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        rows = await self.store.leaderboard(interaction.guild_id)
        await interaction.response.send_message(
            embed=texts.leaderboard_embed(rows), ephemeral=True, allowed_mentions=NO_MENTIONS
        )
