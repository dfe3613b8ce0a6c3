"""What challenges post stays within Discord's limits, whatever members typed or however many tie."""

from __future__ import annotations

import discord

from bot.challenges import texts
from bot.challenges.results import rank
from bot.challenges.store import Challenge, Entry, LeaderboardRow

LONG_THEME = "a *very* long theme with @everyone and <@&42> " * 10


def challenge(theme: str = "lighthouses", **changes) -> Challenge:
    values = {
        "id": 7, "guild_id": 1, "channel_id": 2, "theme": theme, "created_by": 3, "created_at": 1_800_000_000.0,
        "deadline": 1_800_086_400.0, "max_entries_per_member": 1, "counts_hidden": True, "upload_limit": None,
        "state": "open", "entries_numbered": 0, "announcement_message_id": None, "results_message_id": None,
        "ended_at": None,
    }
    return Challenge(**{**values, **changes})


def entry(number: int, votes: int, user_id: int | None = None, prompt: str = "a lighthouse") -> Entry:
    return Entry(
        id=number, challenge_id=7, number=number, user_id=user_id or 10**17 + number, user_name=f"member {number}",
        job_id=f"{number:08d}", prompt=prompt, image_path="x.png", submitted_at=0.0, message_id=10**18 + number,
        final_votes=None, place=None, votes=votes,
    )


def within_limits(embed: discord.Embed) -> None:
    assert len(embed) <= 6000
    assert len(embed.title or "") <= 256 and len(embed.description or "") <= 4096
    assert len(embed.fields) <= 25 and all(len(f.value or "") <= 1024 and len(f.name or "") <= 256 for f in embed.fields)


def test_a_tie_of_many_winners_pings_at_most_100_of_them_in_a_message_discord_accepts():
    tied = rank([entry(number, votes=1) for number in range(1, 151)])
    content, pinged = texts.results_content(challenge(LONG_THEME[:200]), tied)

    assert len(content) <= 2000
    assert 0 < len(pinged) <= 100
    assert all(f"<@{user_id}>" in content for user_id in pinged)
    assert "@everyone" not in content.replace("@\u200beveryone", "")


def test_results_ping_each_winner_once():
    standings = rank([entry(1, 3, user_id=5), entry(2, 3, user_id=5), entry(3, 1, user_id=6), entry(4, 0, user_id=9)])
    content, pinged = texts.results_content(challenge(), standings)
    assert pinged == [5, 6] and content.count("<@5>") == 1 and "<@9>" not in content


def test_no_winner_pings_nobody():
    content, pinged = texts.results_content(challenge(), rank([entry(1, 0)]))
    assert pinged == [] and "<@" not in content


def test_long_themes_and_prompts_keep_every_embed_within_limits():
    long = challenge(LONG_THEME[:200], state="ended", ended_at=1_800_090_000.0)
    standings = rank([entry(n, n % 4, prompt="p" * 1000 + " **x** @everyone") for n in range(1, 120)])
    for embed in (
        texts.announcement_embed(long),
        texts.announcement_closed_embed(long, "https://discord.com/channels/1/2/3"),
        texts.results_embed(long, standings, 1, "contact-sheet.jpg"),
        texts.show_embed(long, standings, now=1_800_000_000.0),
        texts.list_embed([long] * 15, {7: 119}, now=1_800_000_000.0),
        texts.entry_embed(standings[0].entry, "entry-1.png"),
    ):
        within_limits(embed)
    assert len(texts.entry_content(long, standings[0].entry)) <= 2000


def test_deadlines_are_discord_timestamps():
    embed = texts.announcement_embed(challenge())
    deadline = next(field.value for field in embed.fields if field.name == "Deadline")
    assert deadline == "<t:1800086400:F> (<t:1800086400:R>)"


def test_leaderboard_ties_share_a_position():
    rows = [LeaderboardRow(1, "a", 2, 0, 0, 3), LeaderboardRow(2, "b", 1, 1, 0, 2), LeaderboardRow(3, "c", 1, 1, 0, 4),
            LeaderboardRow(4, "d", 1, 0, 0, 1)]
    lines = texts.leaderboard_embed(rows).description.splitlines()
    assert [line.split(".")[0] for line in lines] == ["1", "2", "2", "4"]


def test_an_empty_challenge_says_so_for_its_state():
    assert texts.show_embed(challenge(), [], now=1_800_000_000.0).description == "No entries yet."
    ended = challenge(state="ended", ended_at=1_800_090_000.0)
    assert texts.show_embed(ended, [], now=1_800_100_000.0).description == "Nobody entered this challenge."
