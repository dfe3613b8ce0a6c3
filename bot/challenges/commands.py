"""`/challenge ...`: community prompt challenges. A moderator starts one (theme, duration); members enter finished
images and vote with buttons; at the deadline the results are posted with a contact sheet of every entry.

Moderator subcommands (start, end, cancel) check Manage Server here: Discord's default_member_permissions is per
top-level command, and every member must see /challenge for submit, withdraw, list, show and leaderboard.
Taking out someone else's entry is content moderation, so it takes what deleting someone's image takes
(`bot.permissions.is_moderator`) and goes into the audit trail. Members the moderators blocked neither enter nor vote,
and a server that posts its images as spoilers gets its entries and contact sheets as spoilers too.

One challenge runs per server at a time. Deadlines live in the database and are fired by
`bot.challenges.scheduler.DeadlineScheduler`, so a deadline that passes while the bot is stopped ends the
challenge at the next start. Entries keep the bot's own copy of the image under `challenges/<id>/` in the data
dir: a result deleted later, or Discord's expiring attachment URLs, cannot break the archive.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.challenges import texts
from bot.challenges.buttons import COG_NAME, ChallengeButton, entry_view, unvote_view
from bot.challenges.contact_sheet import Sheet, SheetTooLarge, Tile, compose
from bot.challenges.durations import DurationError, describe_duration, parse_duration
from bot.challenges.results import Standing, rank
from bot.challenges.scheduler import DeadlineScheduler
from bot.challenges.store import (
    AlreadyVoted,
    Challenge,
    ChallengeRefused,
    ChallengeStore,
    Entry,
)
from bot.jobs.buttons import result_extras
from bot.jobs.store import Job
from bot.locks import KeyedLocks
from bot.messages import NO_MENTIONS, SPOILER_PREFIX, reply_privately, shorten, when
from bot.moderation.service import Actor
from bot.permissions import is_moderator, manages_server

if TYPE_CHECKING:
    from bot.app import BigSleepBot

log = logging.getLogger(__name__)

CHALLENGES_DIR = "challenges"
MAX_THEME_CHARS = 200
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
_AUTOCOMPLETE_CHOICES = 25
_REFUSED_BY_CHANNEL = (discord.Forbidden, discord.NotFound)


def _shown_in_embed(attachment_name: str | None) -> str | None:
    """The attachment an embed may show: none for a spoiler, which an embed would show unblurred."""
    return None if attachment_name is None or attachment_name.startswith(SPOILER_PREFIX) else attachment_name


class ChallengesCog(commands.Cog, name=COG_NAME):
    challenge = app_commands.Group(
        name="challenge", description="Prompt challenges: a theme, a deadline, entries and votes", guild_only=True
    )

    def __init__(self, bot: BigSleepBot, *, clock: Callable[[], float]) -> None:
        self.bot = bot
        self.settings = bot.settings.challenges
        self.clock = clock
        self.store = ChallengeStore(bot.database, clock=clock)
        self.scheduler = DeadlineScheduler(self.store, self.end_challenge, clock=clock, before_first_check=bot.wait_until_ready)
        # Servers with an open challenge: result_view is synchronous, so the "Submit to challenge" button is
        # decided from this set (kept in step with the store by start, end and cancel).
        self.running_guilds: set[int] = set()
        # One writer at a time for a challenge's entry messages: a count shown after a vote must never land
        # after the ending took the Vote buttons away (and bring one back).
        self._entry_message_lock = KeyedLocks()

    async def cog_load(self) -> None:
        self.running_guilds = await self.store.open_guild_ids()
        result_extras.append(self._submit_button_for)
        self.bot.add_dynamic_items(ChallengeButton)
        self.scheduler.start()

    async def cog_unload(self) -> None:
        if self._submit_button_for in result_extras:
            result_extras.remove(self._submit_button_for)
        self.bot.remove_dynamic_items(ChallengeButton)
        await self.scheduler.stop()

    def _submit_button_for(self, job: Job) -> discord.ui.Item[discord.ui.View] | None:
        if job.guild_id in self.running_guilds and job.state == "done":
            return ChallengeButton("enter", job.id)
        return None

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
        target = self.bot.get_partial_messageable(channel_id, guild_id=interaction.guild_id)
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
        self.running_guilds.add(created.guild_id)
        self.scheduler.wake()
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
        self.running_guilds.discard(running.guild_id)
        self.scheduler.wake()
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
        self.running_guilds.discard(cancelled.guild_id)
        self.scheduler.wake()
        await reply_privately(interaction, f"Challenge #{cancelled.id} was cancelled; no results will be posted.")
        channel = self.bot.get_partial_messageable(cancelled.channel_id, guild_id=cancelled.guild_id)
        try:
            await channel.send(f"Challenge #{cancelled.id} ({texts.theme_text(cancelled)}) was cancelled by a moderator.",
                               allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as error:
            log.info("challenge %s: could not post the cancellation (%s)", cancelled.id, error.code)
        await self._close_entry_messages(cancelled, None)
        await self._update_announcement(cancelled)

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
        await self._submit(interaction, job)

    @submit.autocomplete("job")
    async def _submit_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        recent = await self.bot.store.recent_jobs(interaction.user.id, limit=50)
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

    async def submit_from_button(self, interaction: discord.Interaction, job_id: str) -> None:
        await self._submit(interaction, job_id)

    async def _submit(self, interaction: discord.Interaction, job_id: str) -> None:
        assert interaction.guild_id is not None
        if await self._refused_as_blocked(interaction):
            return
        challenge = await self.store.running(interaction.guild_id)
        if challenge is None or not challenge.accepts_votes(self.clock()):
            await reply_privately(interaction, "No challenge is taking entries in this server right now.")
            return
        job = await self.bot.store.get(job_id.strip())
        if job is None or job.user_id != interaction.user.id:
            await reply_privately(interaction, f"You have no job `{shorten(job_id, 40)}`; only your own images can be entered.")
            return
        if job.guild_id != interaction.guild_id:
            await reply_privately(interaction, f"Job `{job.id}` was made in another server; enter an image you made here.")
            return
        if job.state != "done":
            await reply_privately(interaction, f"Job `{job.id}` has no finished image to enter.")
            return
        if not self.bot.files.exists(job.png_path):
            await reply_privately(interaction, f"The image of `{job.id}` was deleted, so it can't be entered.")
            return
        # Copying the image and posting the entry take a moment; the thinking state keeps the interaction alive.
        await interaction.response.defer(ephemeral=True, thinking=True)
        png = await asyncio.to_thread(self.bot.files.read, job.png_path)  # type: ignore[arg-type]
        copy = PurePosixPath(CHALLENGES_DIR) / str(challenge.id) / f"{job.id}-{secrets.token_hex(4)}.png"
        await asyncio.to_thread(self.bot.files.write, copy, png)
        try:
            entry = await self.store.add_entry(
                challenge.id,
                user_id=interaction.user.id,
                user_name=interaction.user.display_name,
                job_id=job.id,
                prompt=job.prompt,
                image_path=str(copy),
            )
        except ChallengeRefused as problem:
            self._delete_copy(str(copy))
            await reply_privately(interaction, str(problem))
            return
        try:
            message = await self._post_entry(challenge, entry, png)
        except discord.HTTPException as error:
            await self.store.remove_entry(entry.id, only_while_open=False)
            self._delete_copy(entry.image_path)
            log.info("challenge %s: could not post entry %s (%s)", challenge.id, entry.number, error.code)
            await reply_privately(interaction, f"I couldn't post your entry in <#{challenge.channel_id}>; please tell a moderator.")
            return
        await self.store.set_entry_message(entry.id, message.id)
        link = texts.message_link(challenge.guild_id, challenge.channel_id, message.id)
        await reply_privately(
            interaction,
            f"Your entry #{entry.number} is in: {link}\nYou can withdraw it with `/challenge withdraw` until "
            f"{when(challenge.deadline, 'R')}.",
        )

    async def _post_entry(self, challenge: Challenge, entry: Entry, png: bytes) -> discord.Message:
        name = self._attachment_name(challenge.guild_id, f"entry-{entry.number}.png")
        channel = self.bot.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
        return await channel.send(
            texts.entry_content(challenge, entry),
            embed=texts.entry_embed(entry, _shown_in_embed(name)),
            file=discord.File(io.BytesIO(png), filename=name),
            view=entry_view(entry.id, None if challenge.counts_hidden else entry.votes),
            allowed_mentions=NO_MENTIONS,
        )

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
        self._delete_copy(removed.image_path)
        await reply_privately(interaction, f"Withdrew entry #{removed.number}.")
        if removed.user_id != interaction.user.id:
            await self.bot.moderation.record(
                challenge.guild_id, Actor(interaction.user.id, interaction.user.display_name), "challenge.withdraw",
                f"entry #{removed.number} of challenge #{challenge.id} by {removed.user_name or 'someone'} "
                f"({removed.user_id})", {"job": removed.job_id, "votes": removed.votes}, None,
            )
        if removed.message_id is not None:
            channel = self.bot.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
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

    def _attachment_name(self, guild_id: int, name: str) -> str:
        """Servers that post their images as spoilers get entries and contact sheets blurred too."""
        return f"{SPOILER_PREFIX}{name}" if self.bot.moderation.spoiler_for(guild_id) else name

    async def _refused_as_blocked(self, interaction: discord.Interaction) -> bool:
        """A member the moderators blocked from the bot here neither enters nor votes (as they can't /imagine);
        taking back their own entry or vote stays possible."""
        assert interaction.guild_id is not None
        refusal = self.bot.moderation.blocked_refusal(interaction.guild_id, interaction.user.id)
        if refusal is None:
            return False
        await reply_privately(interaction, refusal)
        return True

    def _delete_copy(self, relative: str) -> None:
        try:
            self.bot.files.absolute(relative).unlink(missing_ok=True)
        except (OSError, ValueError) as error:
            log.warning("could not delete the challenge image %s: %s", relative, error)

    # ---- members: voting --------------------------------------------------------------------------------

    async def vote(self, interaction: discord.Interaction, entry_id: int) -> None:
        if await self._refused_as_blocked(interaction):
            return
        try:
            entry = await self.store.vote(entry_id, interaction.user.id)
        except AlreadyVoted as already:
            await reply_privately(interaction, f"{already} Votes can be changed until the deadline:", view=unvote_view(entry_id))
            return
        except ChallengeRefused as problem:
            await reply_privately(interaction, str(problem))
            return
        challenge = await self.store.get(entry.challenge_id)
        assert challenge is not None
        await reply_privately(
            interaction,
            f"Your vote for entry #{entry.number} is in; press Vote again to take it back before "
            f"{when(challenge.deadline, 'R')}.",
        )
        await self._show_count(challenge, entry)

    async def unvote(self, interaction: discord.Interaction, entry_id: int) -> None:
        try:
            entry = await self.store.unvote(entry_id, interaction.user.id)
        except ChallengeRefused as problem:
            await interaction.response.edit_message(content=str(problem), view=None, allowed_mentions=NO_MENTIONS)
            return
        await interaction.response.edit_message(
            content=f"You took back your vote for entry #{entry.number}.", view=None, allowed_mentions=NO_MENTIONS
        )
        challenge = await self.store.get(entry.challenge_id)
        assert challenge is not None
        await self._show_count(challenge, entry)

    async def _show_count(self, challenge: Challenge, entry: Entry) -> None:
        if challenge.counts_hidden or entry.message_id is None:
            return
        async with self._entry_message_lock(challenge.id):
            current = await self.store.get(challenge.id)
            if current is None or current.state != "open":
                return  # the ending has closed (or is closing) the entry messages; their buttons stay away
            fresh = await self.store.entry(entry.id)
            if fresh is None:
                return  # withdrawn meanwhile
            channel = self.bot.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
            try:
                await channel.get_partial_message(entry.message_id).edit(view=entry_view(entry.id, fresh.votes))
            except discord.HTTPException as error:
                log.info("challenge %s: could not show entry %s's count (%s)", challenge.id, entry.number, error.code)

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
        standings = await self._standings(challenge)
        embed = texts.show_embed(challenge, standings, now=self.clock())
        if challenge.state != "ended" or not standings:
            await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        # An archived challenge comes with its contact sheet, drawn again from the bot's own copies.
        await interaction.response.defer(ephemeral=True, thinking=True)
        sheet = await self._contact_sheet(challenge, standings, interaction.filesize_limit)
        if sheet is not None:
            name = self._attachment_name(challenge.guild_id, sheet.filename)
            if _shown_in_embed(name):
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

    async def _standings(self, challenge: Challenge) -> list[Standing]:
        entries = await self.store.entries(challenge.id)
        if challenge.state == "ended":
            # The archive: places as they were when it ended.
            return sorted((Standing(entry.place, entry) for entry in entries),
                          key=lambda s: (s.place is None, s.place or 0, s.entry.number))
        return rank(entries)

    async def _contact_sheet(self, challenge: Challenge, standings: list[Standing], max_bytes: int) -> Sheet | None:
        show_counts = challenge.counts_visible() or challenge.state == "closing"

        def draw() -> Sheet | None:
            tiles = []
            for standing in standings:
                entry: Entry = standing.entry  # type: ignore[assignment]
                try:
                    image = self.bot.files.read(entry.image_path)
                except (OSError, ValueError):
                    image = None
                tiles.append(Tile(image, texts.sheet_label(standing, show_counts=show_counts),
                                  standing.place if show_counts else None))
            try:
                return compose(tiles, max_bytes=max_bytes, tile_px=self.settings.contact_sheet_tile_px)
            except SheetTooLarge:
                log.warning("challenge %s: the contact sheet does not fit in %d bytes", challenge.id, max_bytes)
                return None

        return await asyncio.to_thread(draw)

    # ---- the deadline -----------------------------------------------------------------------------------

    async def end_challenge(self, due: Challenge) -> None:
        """Close voting, rank, post the results with the contact sheet, archive. Only the scheduler calls it (one at a
        time). Safe to run again after a crash at any point: each step looks at what the store says is done."""
        challenge = await self.store.begin_closing(due.id)
        if challenge.state != "closing":
            return
        self.running_guilds.discard(challenge.guild_id)
        standings = rank(await self.store.entries(challenge.id))
        await self.store.record_places(standings)
        results_id = challenge.results_message_id
        if results_id is None:
            results_id = await self._post_results(challenge, standings)
            if results_id is not None:
                await self.store.set_results_message(challenge.id, results_id)
        ended = await self.store.mark_ended(challenge.id, results_id)
        log.info("challenge %s ended: %d entries", challenge.id, len(standings))
        await self._close_entry_messages(ended, standings)
        await self._update_announcement(ended)

    async def _post_results(self, challenge: Challenge, standings: list[Standing]) -> int | None:
        """The results message's id; None when the channel refuses the bot for good (deleted, no access)."""
        guild = self.bot.get_guild(challenge.guild_id)
        limit = challenge.upload_limit or (guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT)
        sheet = await self._contact_sheet(challenge, standings, limit) if standings else None
        channel = self.bot.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
        try:
            try:
                message = await self._send_results(channel, challenge, standings, sheet)
            except discord.HTTPException as error:
                if sheet is None or error.status != 413:
                    raise
                # The upload limit fell since /challenge start told it (a server's boosts ran out): the results
                # go out without the sheet rather than never; /challenge show draws it to the limit of its day.
                log.warning("challenge %s: the contact sheet is over the server's upload limit now", challenge.id)
                message = await self._send_results(channel, challenge, standings, None)
        except _REFUSED_BY_CHANNEL as error:
            log.warning("challenge %s: its channel refuses the results (%s); archived without them", challenge.id, error.code)
            return None
        return message.id

    async def _send_results(
        self, channel: discord.PartialMessageable, challenge: Challenge, standings: list[Standing], sheet: Sheet | None
    ) -> discord.Message:
        content, winners = texts.results_content(challenge, standings)
        kwargs: dict[str, object] = {}
        sheet_name = None
        if sheet is not None:
            sheet_name = self._attachment_name(challenge.guild_id, sheet.filename)
            kwargs["file"] = discord.File(io.BytesIO(sheet.data), filename=sheet_name)
        embed = texts.results_embed(challenge, standings, challenge.guild_id, _shown_in_embed(sheet_name),
                                    sheet_left_out=bool(standings) and sheet is None)
        return await channel.send(
            content,
            embed=embed,
            # Winners are pinged; nothing else in the message can ping (themes and prompts are escaped).
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False,
                                                     users=[discord.Object(u) for u in winners]),
            **kwargs,  # type: ignore[arg-type]
        )

    async def _close_entry_messages(self, challenge: Challenge, standings: list[Standing] | None) -> None:
        """Entry messages lose their Vote button; after results they show place and votes."""
        async with self._entry_message_lock(challenge.id):
            await self._close_entry_messages_locked(challenge, standings)

    async def _close_entry_messages_locked(self, challenge: Challenge, standings: list[Standing] | None) -> None:
        channel = self.bot.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
        if standings is None:
            standings = [Standing(None, entry) for entry in await self.store.entries(challenge.id)]
        for standing in standings:
            entry: Entry = standing.entry  # type: ignore[assignment]
            if entry.message_id is None:
                continue
            if challenge.state == "ended":
                content = texts.entry_final_content(challenge, entry, standing.place)
            else:
                content = f"{texts.entry_content(challenge, entry)}\nThe challenge was cancelled."
            try:
                await channel.get_partial_message(entry.message_id).edit(content=content, view=None,
                                                                         allowed_mentions=NO_MENTIONS)
            except discord.HTTPException as error:
                log.info("challenge %s: could not close entry %s's message (%s)", challenge.id, entry.number, error.code)

    async def _update_announcement(self, challenge: Challenge) -> None:
        if challenge.announcement_message_id is None:
            return
        link = texts.message_link(challenge.guild_id, challenge.channel_id, challenge.results_message_id)
        channel = self.bot.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
        try:
            await channel.get_partial_message(challenge.announcement_message_id).edit(
                embed=texts.announcement_closed_embed(challenge, link), allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException as error:
            log.info("challenge %s: could not update the announcement (%s)", challenge.id, error.code)
