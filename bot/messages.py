"""What every feature needs to talk to members: private answers, user text made safe to quote, Discord
timestamps. Everything that quotes user text is escaped and length-capped, and sent with `NO_MENTIONS` (a prompt
must never ping @everyone or anyone else)."""

from __future__ import annotations

from typing import Any

import discord

NO_MENTIONS = discord.AllowedMentions.none()

# Discord's limit on message content is 2000 characters; a quoted prompt leaves room for the rest of the line.
_PROMPT_IN_CONTENT = 1200

# Discord blurs an attachment whose name starts with this until it is clicked (servers that ask for spoilers).
SPOILER_PREFIX = "SPOILER_"



def when(timestamp: float, style: str = "f") -> str:
    """A Discord timestamp: every reader sees it in their own time zone ("R": relative, "F": long date)."""
    return f"<t:{int(timestamp)}:{style}>"


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quoted_prompt(text: str, limit: int = _PROMPT_IN_CONTENT) -> str:
    """User text made inert for Markdown (so `**` or `@everyone` show as typed) and capped."""
    escaped = discord.utils.escape_mentions(discord.utils.escape_markdown(text))
    return shorten(escaped, limit)


def describe_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s"


async def reply_privately(interaction: discord.Interaction, text: str | None = None, **options: Any) -> None:
    """An answer only the user sees, pinging nobody: the interaction's response, or a followup once that is
    used (deferred, or already answered). `options` go to discord.py's send (embed, view, file...)."""
    options.setdefault("allowed_mentions", NO_MENTIONS)
    if interaction.response.is_done():
        await interaction.followup.send(discord.utils.MISSING if text is None else text, ephemeral=True, **options)
    else:
        await interaction.response.send_message(text, ephemeral=True, **options)
