"""The texts and embeds of moderation: /settings show, the audit trail (/modlog and the log channel), /quota
show and /stats. Everything that quotes user text is escaped and length-capped (bot.messages)."""

from __future__ import annotations

import datetime
from typing import Any

import discord

from bot import messages
from bot.moderation.quotas import LIMIT_LABELS, LIMIT_NAMES, Override, QuotaStatus, describe_window
from bot.moderation.service import ModerationService
from bot.moderation.stats import ServerStats
from bot.moderation.store import ModAction

_MODLOG_DESCRIPTION_LIMIT = 4096
_STATS_DAYS_SHOWN = 14


def _show(value: Any, none: str = "no limit") -> str:
    if value is None:
        return none
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def settings_embed(service: ModerationService, guild_id: int) -> discord.Embed:
    settings = service.settings(guild_id)
    limits = service.limits_for(guild_id)
    embed = discord.Embed(title="Server settings", colour=discord.Colour.dark_gold())
    embed.add_field(name="Queue", value="⏸️ paused" if settings.paused else "running")
    channels = service.allowed_channels(guild_id)
    embed.add_field(name="/imagine allowed in", value=fit_list([f"<#{c}>" for c in sorted(channels)]) or "every channel")
    embed.add_field(name="Spoiler by default", value=_show(settings.spoiler_by_default))
    embed.add_field(name="Image prompts", value=_show(settings.image_prompts))
    embed.add_field(name="Steps", value=f"default {limits.default_steps}, at most {limits.max_steps}")
    embed.add_field(name="Size", value=f"default {limits.default_size} px, at most {limits.max_size} px")
    embed.add_field(name="Log channel", value=f"<#{settings.log_channel_id}>" if settings.log_channel_id else "none")
    rules = settings.rules
    embed.add_field(
        name="Quotas per member",
        value="\n".join(f"{LIMIT_LABELS[name]}: {_show(getattr(rules, name))}" for name in LIMIT_NAMES),
        inline=False,
    )
    budget = settings.budget
    embed.add_field(
        name="Server budget (24 h)",
        value=f"jobs: {_show(budget.jobs_per_day)}\nGPU minutes: {_show(budget.gpu_minutes_per_day)}",
    )
    overrides = service.overrides(guild_id)
    if overrides:
        embed.add_field(name="Quota overrides", value=fit_list([_override_line(o) for o in overrides], "\n"), inline=False)
    words = service.banned_words(guild_id)
    embed.add_field(name="Banned words", value=f"{len(words)} (see `/settings words list`)")
    blocked = service.blocked_members(guild_id)
    embed.add_field(name="Blocked members", value=fit_list([f"<@{b.user_id}>" for b in blocked]) or "none")
    return embed


def fit_list(items: list[str], separator: str = ", ", *, limit: int = 1024) -> str:
    """As many whole items as fit in `limit` characters (an embed field's), then how many more there are."""
    count = length = 0
    while count < len(items) and length + len(separator) * bool(count) + len(items[count]) <= limit:
        length += len(separator) * bool(count) + len(items[count])
        count += 1
    while True:
        text, rest = separator.join(items[:count]), len(items) - count
        if rest:
            text += f"{separator if count else ''}and {rest} more"
        if len(text) <= limit:
            return text
        count -= 1


def _override_line(override: Override) -> str:
    who = f"<@{override.target_id}>" if override.target_kind == "member" else f"<@&{override.target_id}>"
    if override.exempt:
        return f"{who}: exempt"
    parts = [f"{LIMIT_LABELS[name]} {_show(value)}" for name, value in override.limits.items()]
    return f"{who}: " + (", ".join(parts) or "server rules")


def action_embed(entry: ModAction) -> discord.Embed:
    embed = discord.Embed(
        title=f"Moderator action: {entry.action}",
        colour=discord.Colour.dark_orange(),
        timestamp=datetime.datetime.fromtimestamp(entry.at, datetime.UTC),
    )
    embed.add_field(name="By", value=f"<@{entry.moderator_id}>")
    embed.add_field(name="On", value=messages.shorten(entry.target or "-", 1024))
    embed.add_field(name="Before", value=messages.shorten(_describe_change(entry.before), 1024), inline=False)
    embed.add_field(name="After", value=messages.shorten(_describe_change(entry.after), 1024), inline=False)
    return embed


def modlog_embed(entries: list[ModAction], *, page: int, more: bool) -> discord.Embed:
    """One page of the audit trail. Every entry gets an equal share of the description's 4096 characters, so a
    long one is cut short rather than pushing the others off the page."""
    embed = discord.Embed(title="Moderator actions", colour=discord.Colour.dark_orange())
    if not entries:
        embed.description = "None yet." if page == 1 else f"No actions on page {page}; there are fewer."
        return embed
    share = _MODLOG_DESCRIPTION_LIMIT // len(entries) - 1
    lines = []
    for entry in entries:
        change = messages.shorten(f"{_describe_change(entry.before)} → {_describe_change(entry.after)}", 300)
        line = f"{messages.when(entry.at)} <@{entry.moderator_id}> **{entry.action}** {messages.shorten(entry.target, 150)}: {change}"
        lines.append(messages.shorten(line, share))
    embed.description = "\n".join(lines)
    footer = f"Page {page}"
    if more:
        footer += f" · older: /modlog page:{page + 1}"
    embed.set_footer(text=footer)
    return embed


def _describe_change(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_show(item, 'none')}" for key, item in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def quota_embed(status: QuotaStatus, member: discord.abc.User, *, own: bool) -> discord.Embed:
    now = status.now
    whose = "Your" if own else f"{member.display_name}'s"
    embed = discord.Embed(title=f"{whose} allowance on this server", colour=discord.Colour.teal())
    limits = status.effective.limits
    if status.effective.exempt:
        embed.description = f"Exempt from per-member limits ({status.effective.source})."
    else:
        lines = [
            describe_window(status.day, "in the last 24 h", now),
            describe_window(status.hour, "in the last hour", now),
            f"waiting now: {status.queued}" + (f" of {limits.max_queued}" if limits.max_queued is not None else ""),
            f"generating now: {status.running}" + (f" of {limits.max_running}" if limits.max_running is not None else ""),
        ]
        embed.description = "\n".join(lines)
        embed.set_footer(text=f"Limits from {status.effective.source}. Windows roll: a job counts for 24 h after it was made.")
    server = [
        describe_window(status.server_jobs, "jobs for the server", now),
        describe_window(status.server_gpu, "GPU minutes for the server", now),
    ]
    embed.add_field(name="Server budget (24 h)", value="\n".join(server))
    return embed


def stats_embed(stats: ServerStats) -> discord.Embed:
    period = "today (UTC)" if stats.days == 1 else f"the last {stats.days} days (UTC, today included)"
    embed = discord.Embed(title=f"Usage {period}", colour=discord.Colour.blurple())
    embed.add_field(name="Jobs", value=str(stats.jobs))
    embed.add_field(name="GPU time", value=messages.describe_seconds(stats.gpu_seconds))
    rate = stats.failure_rate
    embed.add_field(name="Failure rate", value="-" if rate is None else f"{100 * rate:.1f}% ({stats.failed} of {stats.done + stats.failed})")
    embed.add_field(name="Queue wait p50", value=messages.describe_seconds(stats.wait_p50))
    embed.add_field(name="Queue wait p95", value=messages.describe_seconds(stats.wait_p95))
    embed.add_field(name="Cancelled", value=str(stats.cancelled))
    shown_days = stats.per_day[-_STATS_DAYS_SHOWN:]
    per_day = "\n".join(f"{day.isoformat()}: {count}" for day, count in shown_days)
    latest = "" if len(shown_days) == len(stats.per_day) else f", latest {len(shown_days)}"
    embed.add_field(name=f"Jobs per day (UTC{latest})", value=per_day or "-", inline=False)
    top = "\n".join(f"<@{user}> {count}" for user, _, count in stats.top_users)
    embed.add_field(name="Top members", value=top or "-", inline=False)
    return embed
