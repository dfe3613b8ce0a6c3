"""The running of a server's prompt challenges on Discord: entries (the bot's own copy of the image, posted
with a Vote button), votes, and the ending at the deadline (voting closes, places are recorded, the results go
out with a contact sheet, entry messages and the announcement are closed). Built once in
`BigSleepBot.setup_hook`; the slash commands (bot.challenges.commands) and the buttons (bot.challenges.buttons,
which find it as `interaction.client.challenges`) call it.

Deadlines live in the database and are fired by `bot.challenges.scheduler.DeadlineScheduler`, so a deadline that
passes while the bot is stopped ends the challenge at the next start. Entries keep the bot's own copy of the
image under `challenges/<id>/` in the data dir: a result deleted later, or Discord's expiring attachment URLs,
cannot break the archive. Members the moderators blocked neither enter nor vote, and a server that posts its
images as spoilers gets its entries and contact sheets as spoilers too (`ChallengeRules`, which
bot.moderation's service implements).
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, Protocol

import discord

from bot.challenges import texts
from bot.challenges.buttons import ChallengeButton, entry_view, unvote_view
from bot.challenges.contact_sheet import Sheet, SheetTooLarge, Tile, compose
from bot.challenges.results import Standing, rank
from bot.challenges.scheduler import DeadlineScheduler
from bot.challenges.store import AlreadyVoted, Challenge, ChallengeRefused, ChallengeStore, Entry
from bot.jobs.admission import BannedWordRules
from bot.jobs.files import ResultFiles
from bot.jobs.job import Job
from bot.jobs.ports import ModeratorActions
from bot.jobs.store import JobStore
from bot.locks import KeyedLocks
from bot.messages import NO_MENTIONS, SPOILER_PREFIX, reply_privately, shorten, when
from bot.settings import ChallengeSettings

log = logging.getLogger(__name__)

CHALLENGES_DIR = "challenges"
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
_REFUSED_BY_CHANNEL = (discord.Forbidden, discord.NotFound)


def shown_in_embed(attachment_name: str | None) -> str | None:
    """The attachment an embed may show: none for a spoiler, which an embed would show unblurred."""
    return None if attachment_name is None or attachment_name.startswith(SPOILER_PREFIX) else attachment_name


class ChallengeRules(BannedWordRules, Protocol):
    """What challenges ask of a server's moderation (bot.moderation's service, in the bot): its banned words
    (a theme is posted, so it passes the check a prompt passes), blocks and spoiler setting."""

    def blocked_refusal(self, guild_id: int, user_id: int) -> str | None:
        """The sentence for a member the moderators blocked here; None when not blocked."""
        ...

    def spoiler_for(self, guild_id: int) -> bool:
        """Whether the server posts its images as spoilers."""
        ...


class ChallengeService:
    def __init__(
        self,
        client: discord.Client,
        store: ChallengeStore,
        *,
        jobs: JobStore,
        files: ResultFiles,
        rules: ChallengeRules,
        moderator_actions: ModeratorActions,
        settings: ChallengeSettings,
        clock: Callable[[], float],
    ) -> None:
        self.client = client
        self.store = store
        self.jobs = jobs
        self.files = files
        self.rules = rules
        self.moderator_actions = moderator_actions
        self.settings = settings
        self.clock = clock
        self.scheduler = DeadlineScheduler(store, self.end_challenge, clock=clock, before_first_check=client.wait_until_ready)
        # Servers with an open challenge: result views are built synchronously, so the "Submit to challenge" button
        # is decided from this set (kept in step with the store by opened, closed and the ending).
        self.running_guilds: set[int] = set()
        # One writer at a time for a challenge's entry messages: a count shown after a vote must never land
        # after the ending took the Vote buttons away (and bring one back).
        self._entry_message_lock = KeyedLocks()

    async def start(self) -> None:
        """Learn which servers have a challenge open, and start watching the deadlines."""
        self.running_guilds = await self.store.open_guild_ids()
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()

    def opened(self, challenge: Challenge) -> None:
        """A challenge was started: its server's results get the Submit button, and its deadline is watched."""
        self.running_guilds.add(challenge.guild_id)
        self.scheduler.wake()

    def closed(self, challenge: Challenge) -> None:
        """A challenge was ended early or cancelled."""
        self.running_guilds.discard(challenge.guild_id)
        self.scheduler.wake()

    def submit_button_for(self, job: Job) -> discord.ui.Item[Any] | None:
        """The "Submit to challenge" button under a finished image, while its server has a challenge open."""
        if job.guild_id in self.running_guilds and job.state == "done":
            return ChallengeButton("enter", job.id)
        return None

    # ---- members: entering ------------------------------------------------------------------------------

    async def enter(self, interaction: discord.Interaction, job_id: str) -> None:
        """Enter one of the member's finished images made here (/challenge submit, and the Submit button)."""
        assert interaction.guild_id is not None
        if await self.refused_as_blocked(interaction):
            return
        challenge = await self.store.running(interaction.guild_id)
        if challenge is None or not challenge.accepts_votes(self.clock()):
            await reply_privately(interaction, "No challenge is taking entries in this server right now.")
            return
        job = await self.jobs.get(job_id.strip())
        grid = await self.jobs.grid(job_id.strip()) if job is None else []
        if grid and grid[0].user_id == interaction.user.id:
            # An entry is one image: the member picks one of the grid's.
            await reply_privately(
                interaction,
                f"`{grid[0].grid_id}` is a grid of {len(grid)}; an entry is one image. Press the U button of the one "
                "you want (it posts that image alone, with a Submit button), or give its own id: "
                + ", ".join(f"`{image.id}`" for image in grid) + ".",
            )
            return
        if job is None or job.user_id != interaction.user.id:
            await reply_privately(interaction, f"You have no job `{shorten(job_id, 40)}`; only your own images can be entered.")
            return
        if job.guild_id != interaction.guild_id:
            await reply_privately(interaction, f"Job `{job.id}` was made in another server; enter an image you made here.")
            return
        if job.state != "done":
            await reply_privately(interaction, f"Job `{job.id}` has no finished image to enter.")
            return
        if not await asyncio.to_thread(self.files.exists, job.png_path):
            await reply_privately(interaction, f"The image of `{job.id}` was deleted, so it can't be entered.")
            return
        # Copying the image and posting the entry take a moment; the thinking state keeps the interaction alive.
        await interaction.response.defer(ephemeral=True, thinking=True)
        png = await asyncio.to_thread(self.files.read, job.png_path)  # type: ignore[arg-type]
        copy = PurePosixPath(CHALLENGES_DIR) / str(challenge.id) / f"{job.id}-{secrets.token_hex(4)}.png"
        await asyncio.to_thread(self.files.write, copy, png)
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
            await self.delete_copy(str(copy))
            await reply_privately(interaction, str(problem))
            return
        try:
            message = await self._post_entry(challenge, entry, png)
        except discord.HTTPException as error:
            await self.store.remove_entry(entry.id, only_while_open=False)
            await self.delete_copy(entry.image_path)
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
        name = self.attachment_name(challenge.guild_id, f"entry-{entry.number}.png")
        channel = self.client.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
        return await channel.send(
            texts.entry_content(challenge, entry),
            embed=texts.entry_embed(entry, shown_in_embed(name)),
            file=discord.File(io.BytesIO(png), filename=name),
            view=entry_view(entry.id, None if challenge.counts_hidden else entry.votes),
            allowed_mentions=NO_MENTIONS,
        )

    def attachment_name(self, guild_id: int, name: str) -> str:
        """Servers that post their images as spoilers get entries and contact sheets blurred too."""
        return f"{SPOILER_PREFIX}{name}" if self.rules.spoiler_for(guild_id) else name

    async def refused_as_blocked(self, interaction: discord.Interaction) -> bool:
        """A member the moderators blocked from the bot here neither enters nor votes (as they can't /imagine);
        taking back their own entry or vote stays possible."""
        assert interaction.guild_id is not None
        refusal = self.rules.blocked_refusal(interaction.guild_id, interaction.user.id)
        if refusal is None:
            return False
        await reply_privately(interaction, refusal)
        return True

    async def delete_copy(self, relative: str) -> None:
        try:
            await asyncio.to_thread(self.files.absolute(relative).unlink, missing_ok=True)
        except (OSError, ValueError) as error:
            log.warning("could not delete the challenge image %s: %s", relative, error)

    # ---- members: voting --------------------------------------------------------------------------------

    async def vote(self, interaction: discord.Interaction, entry_id: int) -> None:
        """The Vote button: one vote per member and entry, never for their own."""
        if await self.refused_as_blocked(interaction):
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
        await self.show_count(challenge, entry)

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
        await self.show_count(challenge, entry)

    async def show_count(self, challenge: Challenge, entry: Entry) -> None:
        if challenge.counts_hidden or entry.message_id is None:
            return
        async with self._entry_message_lock(challenge.id):
            current = await self.store.get(challenge.id)
            if current is None or current.state != "open":
                return  # the ending has closed (or is closing) the entry messages; their buttons stay away
            fresh = await self.store.entry(entry.id)
            if fresh is None:
                return  # withdrawn meanwhile
            channel = self.client.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
            try:
                await channel.get_partial_message(entry.message_id).edit(view=entry_view(entry.id, fresh.votes))
            except discord.HTTPException as error:
                log.info("challenge %s: could not show entry %s's count (%s)", challenge.id, entry.number, error.code)

    async def standings(self, challenge: Challenge) -> list[Standing]:
        entries = await self.store.entries(challenge.id)
        if challenge.state == "ended":
            # The archive: places as they were when it ended.
            return sorted((Standing(entry.place, entry) for entry in entries),
                          key=lambda s: (s.place is None, s.place or 0, s.entry.number))
        return rank(entries)

    async def contact_sheet(self, challenge: Challenge, standings: list[Standing], max_bytes: int) -> Sheet | None:
        show_counts = challenge.counts_visible() or challenge.state == "closing"

        def draw() -> Sheet | None:
            tiles = []
            for standing in standings:
                entry: Entry = standing.entry  # type: ignore[assignment]
                try:
                    image = self.files.read(entry.image_path)
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
        await self.close_entry_messages(ended, standings)
        await self.update_announcement(ended)

    async def _post_results(self, challenge: Challenge, standings: list[Standing]) -> int | None:
        """The results message's id; None when the channel refuses the bot for good (deleted, no access)."""
        guild = self.client.get_guild(challenge.guild_id)
        limit = challenge.upload_limit or (guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT)
        sheet = await self.contact_sheet(challenge, standings, limit) if standings else None
        channel = self.client.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
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
            sheet_name = self.attachment_name(challenge.guild_id, sheet.filename)
            kwargs["file"] = discord.File(io.BytesIO(sheet.data), filename=sheet_name)
        embed = texts.results_embed(challenge, standings, challenge.guild_id, shown_in_embed(sheet_name),
                                    sheet_left_out=bool(standings) and sheet is None)
        return await channel.send(
            content,
            embed=embed,
            # Winners are pinged; nothing else in the message can ping (themes and prompts are escaped).
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False,
                                                     users=[discord.Object(u) for u in winners]),
            **kwargs,  # type: ignore[arg-type]
        )

    async def close_entry_messages(self, challenge: Challenge, standings: list[Standing] | None) -> None:
        """Entry messages lose their Vote button; after results they show place and votes."""
        async with self._entry_message_lock(challenge.id):
            await self._close_entry_messages_locked(challenge, standings)

    async def _close_entry_messages_locked(self, challenge: Challenge, standings: list[Standing] | None) -> None:
        channel = self.client.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
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

    async def update_announcement(self, challenge: Challenge) -> None:
        if challenge.announcement_message_id is None:
            return
        link = texts.message_link(challenge.guild_id, challenge.channel_id, challenge.results_message_id)
        channel = self.client.get_partial_messageable(challenge.channel_id, guild_id=challenge.guild_id)
        try:
            await channel.get_partial_message(challenge.announcement_message_id).edit(
                embed=texts.announcement_closed_embed(challenge, link), allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException as error:
            log.info("challenge %s: could not update the announcement (%s)", challenge.id, error.code)
