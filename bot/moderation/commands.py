"""Moderator commands: `/settings ...` (server settings, banned words, blocks, pause, quotas), `/modlog`, `/stats`,
and `/quota show` for everyone.

Discord hides the moderator commands from members without Manage Server (default_member_permissions), but a
server's admins can hand any command to anyone in Server Settings > Integrations, so every moderator command
also checks the permission itself. Discord applies default_member_permissions per top-level command, which is
why the quota rules live under `/settings quota` and `/quota` (everyone's own allowance) stands alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.jobs.admission import banned_text_refusal, size_not_offered
from bot.jobs.ports import Actor
from bot.messages import NO_MENTIONS, reply_privately
from bot.moderation.quotas import Override
from bot.moderation.service import ModerationService
from bot.moderation.stats import period_start, summarize
from bot.moderation.store import ModAction
from bot.moderation.texts import action_embed, fit_list, modlog_embed, quota_embed, settings_embed, stats_embed
from bot.moderation.wordfilter import MAX_WORD_LENGTH, normalize_entry
from bot.permissions import manages_server
from generator.protocol import ALLOWED_SIZES, MAX_STEPS

log = logging.getLogger(__name__)

MANAGE_SERVER = discord.Permissions(manage_guild=True)
MAX_WORDS_PER_SERVER = 500
MAX_QUOTA = 10_000
MODLOG_LENGTH = 15
# The families of moderator actions (the part before the dot of `quota.rules`, `job.cancel`, ...).
MODLOG_ACTION_FAMILIES = ("settings", "queue", "quota", "words", "channels", "block", "unblock", "job")
# "0" in a limit option: no limit (quotas) or the bot's default (steps, sizes).
_NO_LIMIT_HELP = "0 = no limit"
_SIZE_CHOICES = [app_commands.Choice(name="the bot's default", value=0)] + [
    app_commands.Choice(name=f"{size} px", value=size) for size in ALLOWED_SIZES
]


def _require_manager(interaction: discord.Interaction) -> None:
    """The bot's own check behind Discord's: Manage Server (or Administrator) in this server."""
    if not manages_server(interaction):
        raise app_commands.MissingPermissions(["manage_guild"])


class _ModeratorGroup(app_commands.Group):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        _require_manager(interaction)
        return True


def _actor(interaction: discord.Interaction) -> Actor:
    return Actor(interaction.user.id, interaction.user.display_name)


def _parse_words(text: str) -> list[str]:
    """Words from a comma- or newline-separated list; `*` allowed at either end."""
    words = []
    for piece in text.replace("\n", ",").split(","):
        piece = piece.strip()
        if piece and piece not in words:
            words.append(piece)
    return words


class QuotaCommands(app_commands.Group):
    """`/quota show`: for everyone (no default_member_permissions)."""

    def __init__(self, cog: ModerationCog) -> None:
        super().__init__(name="quota", description="Your image allowance on this server", guild_only=True)
        self.cog = cog

    @app_commands.command(name="show", description="How many images you (or, for moderators, a member) may still make")
    @app_commands.describe(member="Moderators only: whose allowance to show")
    async def show(self, interaction: discord.Interaction, member: discord.Member | None = None) -> None:
        target = member or interaction.user
        own = target.id == interaction.user.id
        if not own and not manages_server(interaction):
            await reply_privately(interaction, "Only moderators (Manage Server) can see another member's allowance; "
                                      "leave out `member` to see yours.")
            return
        roles = [role.id for role in getattr(target, "roles", ())]
        status = await self.cog.service.quota_status(interaction.guild_id, target.id, roles)  # type: ignore[arg-type]
        await reply_privately(interaction, embed=quota_embed(status, target, own=own))


class SettingsCommands(_ModeratorGroup):
    words = app_commands.Group(name="words", description="Words this server does not allow in prompts")
    quota = app_commands.Group(name="quota", description="How much each member (and the server) may make")

    def __init__(self, cog: ModerationCog) -> None:
        super().__init__(
            name="settings",
            description="Moderators: this server's settings for the image bot",
            guild_only=True,
            default_permissions=MANAGE_SERVER,
        )
        self.cog = cog

    @property
    def service(self) -> ModerationService:
        return self.cog.service

    async def _done(self, interaction: discord.Interaction, text: str) -> None:
        await reply_privately(interaction, text, embed=settings_embed(self.service, interaction.guild_id))  # type: ignore[arg-type]

    @app_commands.command(name="show", description="Show this server's settings")
    async def show(self, interaction: discord.Interaction) -> None:
        await reply_privately(interaction, embed=settings_embed(self.service, interaction.guild_id))  # type: ignore[arg-type]

    @app_commands.command(name="limits", description="Default and maximum steps and size for this server")
    @app_commands.describe(
        default_steps="Steps when /imagine names none (0 = the bot's default)",
        max_steps="Most steps a member may ask for (0 = the bot's maximum)",
        default_size="Size when /imagine names none",
        max_size="Largest size a member may ask for",
    )
    @app_commands.choices(default_size=_SIZE_CHOICES, max_size=_SIZE_CHOICES)
    async def limits(
        self,
        interaction: discord.Interaction,
        default_steps: app_commands.Range[int, 0, MAX_STEPS] | None = None,
        max_steps: app_commands.Range[int, 0, MAX_STEPS] | None = None,
        default_size: int | None = None,
        max_size: int | None = None,
    ) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        given = {"default_steps": default_steps, "max_steps": max_steps, "default_size": default_size, "max_size": max_size}
        changes = {key: (value or None) for key, value in given.items() if value is not None}
        if not changes:
            await reply_privately(interaction, "Name at least one of default_steps, max_steps, default_size, max_size.")
            return
        problem = self._limits_problem(guild_id, changes)
        if problem:
            await reply_privately(interaction, problem)
            return
        await self.service.update_settings(guild_id, _actor(interaction), "settings.limits", **changes)
        await self._done(interaction, "Limits updated.")

    def _limits_problem(self, guild_id: int, changes: dict[str, int | None]) -> str | None:
        base = self.service.base_limits
        current = self.service.settings(guild_id)
        merged = {key: changes.get(key, getattr(current, key)) for key in ("default_steps", "max_steps", "default_size", "max_size")}
        if merged["max_steps"] is not None and merged["max_steps"] > base.max_steps:
            return f"This bot allows at most {base.max_steps} steps anywhere; pick {base.max_steps} or fewer."
        if merged["max_size"] is not None and merged["max_size"] > base.max_size:
            return f"This bot makes images up to {base.max_size} px; pick that or smaller."
        for key in ("default_size", "max_size"):
            not_offered = size_not_offered(merged[key], self.cog.sizes) if merged[key] is not None else None
            if not_offered:
                return not_offered
        max_steps = merged["max_steps"] or base.max_steps
        if merged["default_steps"] is not None and merged["default_steps"] > max_steps:
            return f"The default steps ({merged['default_steps']}) can't be more than the maximum ({max_steps})."
        max_size = merged["max_size"] or base.max_size
        if merged["default_size"] is not None and merged["default_size"] > max_size:
            return f"The default size ({merged['default_size']} px) can't be more than the maximum ({max_size} px)."
        return None

    @app_commands.command(name="channels", description="Where /imagine may be used (all channels when none is listed)")
    @app_commands.describe(action="Add or remove a channel, or allow every channel again", channel="The channel")
    @app_commands.choices(action=[
        app_commands.Choice(name="allow this channel", value="add"),
        app_commands.Choice(name="stop allowing this channel", value="remove"),
        app_commands.Choice(name="allow every channel", value="clear"),
    ])
    async def channels(self, interaction: discord.Interaction, action: str, channel: discord.TextChannel | None = None) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        if action == "clear":
            await self.service.clear_channels(guild_id, _actor(interaction))
            await self._done(interaction, "/imagine works in every channel again.")
            return
        if channel is None:
            await reply_privately(interaction, "Name the channel to add or remove.")
            return
        changed = await self.service.set_channel(guild_id, _actor(interaction), channel.id, action == "add")
        if changed is None:
            state = "already allowed" if action == "add" else "not on the list"
            await reply_privately(interaction, f"<#{channel.id}> is {state}; nothing changed.")
            return
        await self._done(interaction, f"{'Allowed' if action == 'add' else 'Removed'} <#{channel.id}>.")

    @app_commands.command(name="spoiler", description="Post this server's images as spoilers (blurred until clicked)")
    async def spoiler(self, interaction: discord.Interaction, enabled: bool) -> None:
        await self.service.update_settings(interaction.guild_id, _actor(interaction), "settings.spoiler", spoiler_by_default=enabled)  # type: ignore[arg-type]
        await self._done(interaction, f"Spoilers by default: {'on' if enabled else 'off'}.")

    @app_commands.command(name="images", description="Let members steer by pictures: uploads, like: and /blend")
    async def images(self, interaction: discord.Interaction, enabled: bool) -> None:
        await self.service.update_settings(interaction.guild_id, _actor(interaction), "settings.images", image_prompts=enabled)  # type: ignore[arg-type]
        await self._done(interaction, f"Image prompts: {'on' if enabled else 'off'}.")

    @app_commands.command(name="pause", description="Stop starting this server's jobs (they keep their places)")
    async def pause(self, interaction: discord.Interaction) -> None:
        if self.service.settings(interaction.guild_id).paused:  # type: ignore[arg-type]
            await reply_privately(interaction, "This server's queue is already paused.")
            return
        await self.service.update_settings(interaction.guild_id, _actor(interaction), "queue.pause", paused=True)  # type: ignore[arg-type]
        await self._done(interaction, "Paused: this server's jobs wait until `/settings resume`. Running ones finish.")

    @app_commands.command(name="resume", description="Start this server's jobs again")
    async def resume(self, interaction: discord.Interaction) -> None:
        if not self.service.settings(interaction.guild_id).paused:  # type: ignore[arg-type]
            await reply_privately(interaction, "This server's queue is not paused.")
            return
        await self.service.update_settings(interaction.guild_id, _actor(interaction), "queue.resume", paused=False)  # type: ignore[arg-type]
        await self._done(interaction, "Resumed.")

    @app_commands.command(name="block", description="Stop a member from using the bot on this server")
    @app_commands.describe(reason="Shown to the member when they try")
    async def block(self, interaction: discord.Interaction, member: discord.Member, reason: app_commands.Range[str, 0, 200] = "") -> None:
        if member.id == interaction.user.id:
            await reply_privately(interaction, "You can't block yourself.")
            return
        if member.bot:
            await reply_privately(interaction, "Bots can't use the bot anyway; nothing to block.")
            return
        guild_id = interaction.guild_id
        assert guild_id is not None
        reason = reason.strip()
        # The reason is posted: to the member at each refusal, and in the log channel.
        banned = banned_text_refusal(self.service, guild_id, [("reason", reason)])
        if banned:
            await reply_privately(interaction, banned.sentence)
            return
        already = self.service.blocked(guild_id, member.id)
        if already is not None and already.reason == reason:
            await reply_privately(interaction, f"<@{member.id}> is already blocked here; nothing changed.")
            return
        await self.service.block(guild_id, _actor(interaction), member.id, member.display_name, reason)
        if already is not None:
            await reply_privately(interaction, f"<@{member.id}> was already blocked; the reason is updated.")
            return
        await reply_privately(interaction, f"Blocked <@{member.id}> from making images here. Their queued jobs stay; cancel them with /cancel if needed.")

    @app_commands.command(name="unblock", description="Let a blocked member use the bot again")
    async def unblock(self, interaction: discord.Interaction, member: discord.Member) -> None:
        entry = await self.service.unblock(interaction.guild_id, _actor(interaction), member.id, member.display_name)  # type: ignore[arg-type]
        await reply_privately(interaction, f"Unblocked <@{member.id}>." if entry else f"<@{member.id}> was not blocked.")

    @app_commands.command(name="log-channel", description="Post every moderator action to a channel (empty: stop)")
    async def log_channel(self, interaction: discord.Interaction, channel: discord.TextChannel | None = None) -> None:
        if channel is not None:
            mine = channel.permissions_for(channel.guild.me) if channel.guild.me else None
            if mine is not None and not (mine.view_channel and mine.send_messages and mine.embed_links):
                await reply_privately(interaction, f"I can't post embeds in <#{channel.id}>; give me View Channel, Send Messages and Embed Links there first.")
                return
        await self.service.update_settings(
            interaction.guild_id, _actor(interaction), "settings.log_channel",  # type: ignore[arg-type]
            log_channel_id=channel.id if channel else None,
        )
        await self._done(interaction, f"Moderator actions go to <#{channel.id}>." if channel else "No log channel.")

    # -- /settings words --

    @words.command(name="add", description="Refuse prompts with these words (comma-separated; word* and *word* match more)")
    async def words_add(self, interaction: discord.Interaction, words: app_commands.Range[str, 1, 1000]) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        wanted = _parse_words(words)
        unusable = [w for w in wanted if not normalize_entry(w)]
        too_long = [w for w in wanted if len(w.strip("*")) > MAX_WORD_LENGTH]
        if unusable or too_long:
            bad = ", ".join(f"“{messages.shorten(w, 30)}”" for w in (unusable + too_long)[:5])
            await reply_privately(interaction, f"These can't be used as banned words (they need letters, at most {MAX_WORD_LENGTH}): {bad}. Nothing changed.")
            return
        existing = self.service.banned_words(guild_id)
        if len(set(existing) | set(wanted)) > MAX_WORDS_PER_SERVER:
            await reply_privately(interaction, f"A server can ban at most {MAX_WORDS_PER_SERVER} words. Nothing changed.")
            return
        added, _ = await self.service.change_words(guild_id, _actor(interaction), add=wanted)
        await reply_privately(interaction, f"Added {len(added)} word(s)." if added else "Those words were already banned.")

    @words.command(name="remove", description="Allow these words again (comma-separated)")
    async def words_remove(self, interaction: discord.Interaction, words: app_commands.Range[str, 1, 1000]) -> None:
        removed, _ = await self.service.change_words(interaction.guild_id, _actor(interaction), remove=_parse_words(words))  # type: ignore[arg-type]
        await reply_privately(interaction, f"Removed {len(removed)} word(s)." if removed else "None of those words were banned.")

    @words.command(name="list", description="This server's banned words")
    async def words_list(self, interaction: discord.Interaction) -> None:
        words = self.service.banned_words(interaction.guild_id)  # type: ignore[arg-type]
        # Whole items only: a spoiler cut in half would show the rest of the word in the clear.
        text = fit_list([f"||{discord.utils.escape_markdown(w)}||" for w in words], limit=1900)
        await reply_privately(interaction, f"Banned words ({len(words)}): {text}" if words else "No banned words.")

    @words.command(name="test", description="Would this prompt be refused here?")
    async def words_test(self, interaction: discord.Interaction, prompt: app_commands.Range[str, 1, 1000]) -> None:
        found = self.service.banned_word(interaction.guild_id, prompt)  # type: ignore[arg-type]
        await reply_privately(interaction, f"Refused: it matches “{found}”." if found else "Allowed: no banned word found.")

    # -- /settings quota --

    @quota.command(name="rules", description="Limits for every member of this server (0 = no limit)")
    @app_commands.describe(per_day=_NO_LIMIT_HELP, per_hour=_NO_LIMIT_HELP, max_queued=_NO_LIMIT_HELP, max_running=_NO_LIMIT_HELP)
    async def quota_rules(
        self,
        interaction: discord.Interaction,
        per_day: app_commands.Range[int, 0, MAX_QUOTA] | None = None,
        per_hour: app_commands.Range[int, 0, MAX_QUOTA] | None = None,
        max_queued: app_commands.Range[int, 0, MAX_QUOTA] | None = None,
        max_running: app_commands.Range[int, 0, MAX_QUOTA] | None = None,
    ) -> None:
        given = {"per_day": per_day, "per_hour": per_hour, "max_queued": max_queued, "max_running": max_running}
        changes = {f"quota_{key}": (value or None) for key, value in given.items() if value is not None}
        if not changes:
            await reply_privately(interaction, "Name at least one limit: per_day, per_hour, max_queued, max_running.")
            return
        await self.service.update_settings(interaction.guild_id, _actor(interaction), "quota.rules", **changes)  # type: ignore[arg-type]
        await self._done(interaction, "Quota rules updated.")

    @quota.command(name="budget", description="What the whole server may use per 24 hours (0 = no limit)")
    @app_commands.describe(jobs=_NO_LIMIT_HELP, gpu_minutes=_NO_LIMIT_HELP)
    async def quota_budget(
        self,
        interaction: discord.Interaction,
        jobs: app_commands.Range[int, 0, 1_000_000] | None = None,
        gpu_minutes: app_commands.Range[float, 0, 1440 * 64] | None = None,
    ) -> None:
        changes: dict[str, Any] = {}
        if jobs is not None:
            changes["budget_jobs_per_day"] = jobs or None
        if gpu_minutes is not None:
            changes["budget_gpu_minutes_per_day"] = gpu_minutes or None
        if not changes:
            await reply_privately(interaction, "Name jobs or gpu_minutes.")
            return
        await self.service.update_settings(interaction.guild_id, _actor(interaction), "quota.budget", **changes)  # type: ignore[arg-type]
        await self._done(interaction, "Server budget updated.")

    @quota.command(name="override", description="Different limits for one member or role: more, less, or exempt")
    @app_commands.describe(
        target="A member or a role",
        mode="custom: the limits below replace the server's; exempt: no per-member limits; remove: back to the rules",
        per_day=_NO_LIMIT_HELP, per_hour=_NO_LIMIT_HELP, max_queued=_NO_LIMIT_HELP, max_running=_NO_LIMIT_HELP,
    )
    @app_commands.choices(mode=[
        app_commands.Choice(name="custom limits", value="custom"),
        app_commands.Choice(name="exempt", value="exempt"),
        app_commands.Choice(name="remove the override", value="remove"),
    ])
    async def quota_override(
        self,
        interaction: discord.Interaction,
        target: discord.Member | discord.Role,
        mode: str,
        per_day: app_commands.Range[int, 0, MAX_QUOTA] | None = None,
        per_hour: app_commands.Range[int, 0, MAX_QUOTA] | None = None,
        max_queued: app_commands.Range[int, 0, MAX_QUOTA] | None = None,
        max_running: app_commands.Range[int, 0, MAX_QUOTA] | None = None,
    ) -> None:
        kind = "role" if isinstance(target, discord.Role) else "member"
        given = {"per_day": per_day, "per_hour": per_hour, "max_queued": max_queued, "max_running": max_running}
        limits = {key: (value or None) for key, value in given.items() if value is not None}
        if mode == "custom" and not limits:
            await reply_privately(interaction, "A custom override needs at least one limit (per_day, per_hour, max_queued, max_running).")
            return
        if mode != "custom" and limits:
            await reply_privately(interaction, f"Limits only go with mode “custom limits”; for “{mode}” leave them out.")
            return
        override = None if mode == "remove" else Override(kind, target.id, mode == "exempt", limits)
        name = target.name if kind == "role" else target.display_name  # type: ignore[union-attr]
        await self.service.set_override(
            interaction.guild_id, _actor(interaction), kind=kind, target_id=target.id, target_name=name, override=override  # type: ignore[arg-type]
        )
        await self._done(interaction, "Override removed." if override is None else "Override saved.")


class ModerationCog(commands.Cog):
    """`service` is built in BigSleepBot.setup_hook (it is also the dispatcher's running cap, the progress
    messages' spoiler setting and the jobs' admission rules); `sizes` are the sizes the worker makes."""

    def __init__(self, bot: commands.Bot, service: ModerationService, *, sizes: Collection[int]) -> None:
        self.bot = bot
        self.service = service
        self.sizes = tuple(sizes)
        self.quota_commands = QuotaCommands(self)
        self.settings_commands = SettingsCommands(self)
        self._log_posts: set[asyncio.Task[None]] = set()

    async def cog_load(self) -> None:
        self.service.listeners.append(self._post_to_log_channel)
        self.bot.tree.add_command(self.quota_commands)
        self.bot.tree.add_command(self.settings_commands)

    async def cog_unload(self) -> None:
        self.service.listeners.remove(self._post_to_log_channel)
        self.bot.tree.remove_command(self.quota_commands.name)
        self.bot.tree.remove_command(self.settings_commands.name)

    async def _post_to_log_channel(self, entry: ModAction) -> None:
        channel_id = self.service.settings(entry.guild_id).log_channel_id
        if channel_id is None:
            return

        async def post() -> None:
            channel = self.bot.get_partial_messageable(channel_id, guild_id=entry.guild_id)
            try:
                await channel.send(embed=action_embed(entry), allowed_mentions=NO_MENTIONS)
            except discord.HTTPException as error:
                log.warning("could not post a moderator action to the log channel %s: %s", channel_id, error)

        task = asyncio.create_task(post(), name="bigsleep-modlog-post")
        self._log_posts.add(task)
        task.add_done_callback(self._log_posts.discard)

    @app_commands.command(name="modlog", description="Moderators: recent moderator actions on this server")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(
        moderator="Only this moderator's actions", action="Only this kind of action", page="1 is the newest"
    )
    @app_commands.choices(action=[app_commands.Choice(name=name, value=name) for name in MODLOG_ACTION_FAMILIES])
    async def modlog(
        self,
        interaction: discord.Interaction,
        moderator: discord.Member | None = None,
        action: str | None = None,
        page: app_commands.Range[int, 1, 10_000] = 1,
    ) -> None:
        _require_manager(interaction)
        # One more than a page, to know whether an older page exists.
        entries = await self.service.store.actions(
            interaction.guild_id, limit=MODLOG_LENGTH + 1, offset=(page - 1) * MODLOG_LENGTH,  # type: ignore[arg-type]
            moderator_id=moderator.id if moderator else None, action=action,
        )
        await reply_privately(interaction, embed=modlog_embed(entries[:MODLOG_LENGTH], page=page, more=len(entries) > MODLOG_LENGTH))

    @app_commands.command(name="stats", description="Moderators: this server's usage")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(days="How many days back (default 7)")
    async def stats(self, interaction: discord.Interaction, days: app_commands.Range[int, 1, 90] = 7) -> None:
        _require_manager(interaction)
        now = self.service.store.clock()
        rows = await self.service.store.stats_rows(interaction.guild_id, since=period_start(now, days))  # type: ignore[arg-type]
        await reply_privately(interaction, embed=stats_embed(summarize(rows, now=now, days=days)))



