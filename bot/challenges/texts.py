"""What challenges look like in Discord: the announcement, entry messages, results, listings. User text (themes,
prompts, names) goes through `quoted_prompt`, so it cannot format or ping."""

from __future__ import annotations

from collections.abc import Sequence

import discord

from bot.challenges.durations import describe_duration
from bot.challenges.results import Standing, ordinal
from bot.challenges.store import Challenge, Entry, LeaderboardRow
from bot.messages import quoted_prompt, shorten, when

_DESCRIPTION = 4000
_FIELD_VALUE = 1024
_CONTENT = 2000
_PINGED_USERS = 100  # allowed_mentions.users takes at most 100 ids
_AND_OTHERS = " and everyone else on the podium!"
MEDALS = {1: "🥇", 2: "🥈", 3: "🥉"}


def theme_text(challenge: Challenge, limit: int = 200) -> str:
    return quoted_prompt(challenge.theme, limit)


def message_link(guild_id: int, channel_id: int, message_id: int | None) -> str:
    return f"https://discord.com/channels/{guild_id}/{channel_id}/{message_id}" if message_id else ""


def announcement_embed(challenge: Challenge) -> discord.Embed:
    per_member = challenge.max_entries_per_member
    entries = f"{per_member} {'entry' if per_member == 1 else 'entries'} per member"
    rules = [
        ("Make an image on the theme with `/imagine`, then enter it with `/challenge submit` or the "
         f"**Submit to challenge** button under your result ({entries})."),
        ("Vote with the button under each entry you like: one vote per entry, not for your own. Press it again "
         "to take your vote back."),
        "Vote counts stay hidden until the end." if challenge.counts_hidden else "Vote counts are shown as they come in.",
        "You can withdraw an entry with `/challenge withdraw` until the deadline.",
    ]
    embed = discord.Embed(
        title=shorten(f"Challenge #{challenge.id}: {challenge.theme}", 256),
        colour=discord.Colour.gold(),
        description="\n".join(f"• {rule}" for rule in rules),
    )
    embed.add_field(name="Theme", value=theme_text(challenge, _FIELD_VALUE), inline=False)
    embed.add_field(name="Deadline", value=f"{when(challenge.deadline, 'F')} ({when(challenge.deadline, 'R')})")
    embed.add_field(name="Lasts", value=describe_duration(challenge.deadline - challenge.created_at))
    return embed


def announcement_closed_embed(challenge: Challenge, results_link: str = "") -> discord.Embed:
    embed = discord.Embed(title=shorten(f"Challenge #{challenge.id}: {challenge.theme}", 256), colour=discord.Colour.dark_grey())
    embed.add_field(name="Theme", value=theme_text(challenge, _FIELD_VALUE), inline=False)
    if challenge.state == "cancelled":
        embed.description = "This challenge was cancelled."
    else:
        embed.description = "This challenge has ended." + (f" [Results]({results_link})" if results_link else "")
    return embed


def entry_content(challenge: Challenge, entry: Entry) -> str:
    return f"**Entry #{entry.number}** by <@{entry.user_id}> for challenge #{challenge.id}: {theme_text(challenge, 300)}"


def entry_embed(entry: Entry, attachment_name: str | None) -> discord.Embed:
    """`attachment_name` None: the image is not shown in the embed (a spoiler must stay a plain attachment)."""
    embed = discord.Embed(title=shorten(entry.prompt, 256), colour=discord.Colour.gold())
    if attachment_name:
        embed.set_image(url=f"attachment://{attachment_name}")
    embed.set_footer(text=f"Job {entry.job_id}")
    return embed


def entry_final_content(challenge: Challenge, entry: Entry, place: int | None) -> str:
    votes = f"{entry.votes} vote{'' if entry.votes == 1 else 's'}"
    where = f"{MEDALS.get(place, '')} {ordinal(place)} place, {votes}".strip() if place else votes
    return f"{entry_content(challenge, entry)}\nVoting closed: {where}."


def standing_line(standing: Standing, *, show_counts: bool) -> str:
    entry: Entry = standing.entry  # type: ignore[assignment]
    place = ""
    if show_counts:
        place = f"{MEDALS.get(standing.place or 0, '')} {ordinal(standing.place)} · " if standing.place else ""
        place += f"{entry.votes} vote{'' if entry.votes == 1 else 's'} · "
    return f"{place}#{entry.number} by <@{entry.user_id}>: {quoted_prompt(entry.prompt, 80)}"


def results_embed(
    challenge: Challenge, standings: Sequence[Standing], guild_id: int, sheet_name: str | None, *, sheet_left_out: bool = False
) -> discord.Embed:
    """`sheet_name`: the contact sheet attached to show in the embed; `sheet_left_out`: it could not be posted."""
    embed = discord.Embed(
        title=shorten(f"Results of challenge #{challenge.id}: {challenge.theme}", 256), colour=discord.Colour.gold()
    )
    podium = [standing for standing in standings if standing.on_podium]
    if not standings:
        embed.description = "Nobody entered this challenge."
    elif not podium:
        embed.description = f"{len(standings)} entries, but no votes, so no winner this time."
    else:
        lines = []
        for standing in podium:
            entry: Entry = standing.entry  # type: ignore[assignment]
            link = message_link(guild_id, challenge.channel_id, entry.message_id)
            number = f"[#{entry.number}]({link})" if link else f"#{entry.number}"
            votes = f"{entry.votes} vote{'' if entry.votes == 1 else 's'}"
            lines.append(f"{MEDALS[standing.place or 0]} **{ordinal(standing.place or 0)}**: {number} by <@{entry.user_id}> "
                         f"({votes}): {quoted_prompt(entry.prompt, 100)}")
        embed.description = shorten("\n".join(lines), _DESCRIPTION)
    embed.add_field(name="Theme", value=theme_text(challenge, _FIELD_VALUE), inline=False)
    embed.add_field(name="Entries", value=str(len(standings)))
    embed.add_field(name="Votes", value=str(sum(standing.entry.votes for standing in standings)))
    if sheet_name:
        embed.set_image(url=f"attachment://{sheet_name}")
    if sheet_left_out:
        embed.set_footer(text="The contact sheet is too large to post here; /challenge show draws it again.")
    return embed


def results_content(challenge: Challenge, standings: Sequence[Standing]) -> tuple[str, list[int]]:
    """The results message's text and the podium members it pings (each once, in the order of their places).
    A tie of many keeps within Discord's limits: 2000 characters and 100 pinged users per message."""
    content = f"**Challenge #{challenge.id} has ended: {theme_text(challenge)}**"
    winners = list(dict.fromkeys(standing.entry.user_id for standing in standings if standing.on_podium))  # type: ignore[attr-defined]
    pinged: list[int] = []
    line = "\nCongratulations"
    for user_id in winners[:_PINGED_USERS]:
        mention = f" <@{user_id}>"
        if len(content) + len(line) + len(mention) + len(_AND_OTHERS) > _CONTENT:
            break
        line += mention
        pinged.append(user_id)
    if pinged:
        content += line + (_AND_OTHERS if len(pinged) < len(winners) else "!")
    return content, pinged


def sheet_label(standing: Standing, *, show_counts: bool) -> str:
    entry: Entry = standing.entry  # type: ignore[assignment]
    parts = [f"#{entry.number}"]
    if show_counts:
        if standing.place:
            parts.append(ordinal(standing.place))
        parts.append(f"{entry.votes} vote{'' if entry.votes == 1 else 's'}")
    parts.append(entry.user_name or str(entry.user_id))
    return " · ".join(parts)


def show_embed(challenge: Challenge, standings: Sequence[Standing], *, now: float) -> discord.Embed:
    show_counts = challenge.counts_visible()
    embed = discord.Embed(title=shorten(f"Challenge #{challenge.id}: {challenge.theme}", 256), colour=discord.Colour.gold())
    state = {
        "open": f"running, ends {when(challenge.deadline, 'R')}" if now < challenge.deadline else "closing",
        "closing": "closing: results coming",
        "ended": f"ended {when(challenge.ended_at or challenge.deadline, 'R')}",
        "cancelled": "cancelled",
    }[challenge.state]
    embed.add_field(name="Theme", value=theme_text(challenge, _FIELD_VALUE), inline=False)
    embed.add_field(name="State", value=state)
    embed.add_field(name="Channel", value=f"<#{challenge.channel_id}>")
    embed.add_field(name="Entries", value=str(len(standings)))
    ordered = list(standings) if show_counts else sorted(standings, key=lambda s: s.entry.number)
    lines = [standing_line(standing, show_counts=show_counts) for standing in ordered]
    if lines:
        embed.description = shorten("\n".join(lines), _DESCRIPTION)
    else:
        embed.description = "No entries yet." if challenge.state == "open" else "Nobody entered this challenge."
    if not show_counts:
        embed.set_footer(text="Vote counts are hidden until the challenge ends.")
    return embed


def list_embed(challenges: Sequence[Challenge], entry_counts: dict[int, int], *, now: float) -> discord.Embed:
    embed = discord.Embed(title="Challenges in this server", colour=discord.Colour.gold())
    if not challenges:
        embed.description = "None yet. A moderator can start one with `/challenge start`."
        return embed
    lines = []
    for challenge in challenges:
        if challenge.state == "open":
            state = f"running, ends {when(challenge.deadline, 'R')}"
        elif challenge.state == "ended":
            state = f"ended {when(challenge.ended_at or challenge.deadline, 'R')}"
        else:
            state = challenge.state
        count = entry_counts.get(challenge.id, 0)
        lines.append(f"**#{challenge.id}** {theme_text(challenge, 80)} · {state} · {count} "
                     f"{'entry' if count == 1 else 'entries'}")
    embed.description = shorten("\n".join(lines), _DESCRIPTION)
    embed.set_footer(text="/challenge show id:<number> for the entries.")
    return embed


def leaderboard_embed(rows: Sequence[LeaderboardRow]) -> discord.Embed:
    embed = discord.Embed(title="Challenge leaderboard", colour=discord.Colour.gold())
    if not rows:
        embed.description = "No challenge has been won here yet."
        return embed
    lines = []
    position, previous = 0, None
    for index, row in enumerate(rows, start=1):
        won = (row.wins, row.seconds, row.thirds)
        if won != previous:  # equal medals share a position, as equal votes share a place
            position, previous = index, won
        medals = f"🥇×{row.wins} 🥈×{row.seconds} 🥉×{row.thirds}"
        lines.append(f"{position}. <@{row.user_id}>: {row.wins} win{'' if row.wins == 1 else 's'} ({medals})")
    embed.description = shorten("\n".join(lines), _DESCRIPTION)
    return embed
