"""/stats arithmetic on small samples and period edges, and /modlog pages within Discord's embed limits."""

from __future__ import annotations

import datetime

import pytest

from bot.moderation.commands import MODLOG_LENGTH
from bot.moderation.stats import percentile, period_start, summarize
from bot.moderation.store import ModAction, StatsRow
from bot.moderation.texts import action_embed, fit_list, modlog_embed

# 2025-06-15 12:00 UTC
NOW = datetime.datetime(2025, 6, 15, 12, tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize(
    "values, fraction, expected",
    [
        ([], 0.5, None),
        ([7.0], 0.95, 7.0),
        ([0.0, 100.0], 0.5, 50.0),
        ([0.0, 100.0], 0.95, 95.0),
        ([100.0, 1.0, 2.0], 0.5, 2.0),  # unsorted input
        ([1.0, 2.0, 100.0], 0.95, 90.2),  # linear between the two largest
        ([float(v) for v in range(1, 21)], 0.95, 19.05),
    ],
)
def test_percentiles_on_small_samples(values, fraction, expected):
    assert percentile(values, fraction) == pytest.approx(expected)


def _row(user: int, created: float, state: str = "done", wait: float = 10.0, wall: float = 30.0) -> StatsRow:
    started = created + wait if state != "queued" else None
    finished = started + wall if state in ("done", "failed", "cancelled") and started is not None else None
    return StatsRow(user, f"user{user}", state, created, started, finished, wall if finished is not None else 0.0)


def test_the_period_is_whole_utc_days_so_the_days_add_up_to_the_total():
    start = period_start(NOW, 7)
    assert datetime.datetime.fromtimestamp(start, datetime.UTC) == datetime.datetime(2025, 6, 9, tzinfo=datetime.UTC)
    rows = [_row(1, start), _row(1, start + 3600), _row(2, NOW - 60, "failed"), _row(2, NOW - 30, "queued")]
    stats = summarize(rows, now=NOW, days=7)
    assert [day.isoformat() for day, _ in stats.per_day][::6] == ["2025-06-09", "2025-06-15"]
    assert sum(count for _, count in stats.per_day) == stats.jobs == 4
    assert stats.failure_rate == pytest.approx(1 / 3) and stats.waiting_or_running == 1
    assert stats.top_users == [(1, "user1", 2), (2, "user2", 2)]
    # The failed job's run took GPU time too, as the budget counts it.
    assert stats.gpu_seconds == 90.0 and stats.wait_p50 == 10.0


def _action(n: int, before, after, target: str = "server") -> ModAction:
    return ModAction(n, 1, 99, "mod", "quota.override", target, before, after, NOW + n)


def test_a_modlog_page_of_huge_entries_fits_one_embed_and_keeps_every_entry():
    huge = {f"word{i}": "x" * 200 for i in range(40)}
    entries = [_action(n, huge, huge, target="role " + "r" * 100 + " (1)") for n in range(MODLOG_LENGTH)]
    embed = modlog_embed(entries, page=2, more=True)
    assert len(embed.description) <= 4096 and len(embed) <= 6000
    assert embed.description.count("**quota.override**") == MODLOG_LENGTH
    assert embed.footer.text == "Page 2 · older: /modlog page:3"


def test_an_empty_modlog_page_says_so():
    assert modlog_embed([], page=1, more=False).description == "None yet."
    assert "page 3" in modlog_embed([], page=3, more=False).description


def test_an_action_posted_to_the_log_channel_fits_the_field_limits():
    embed = action_embed(_action(1, ["w" * 100] * 100, None))
    assert all(len(field.value) <= 1024 for field in embed.fields) and len(embed) <= 6000


def test_long_lists_show_whole_items_and_how_many_more():
    channels = [f"<#{10**18 + n}>" for n in range(100)]
    text = fit_list(channels)
    assert len(text) <= 1024 and text.endswith(" more") and text.split(", ")[0] == channels[0]
    shown = text.split(", ")[:-1]
    assert shown == channels[: len(shown)] and text.endswith(f"and {100 - len(shown)} more")
    assert fit_list(["||a||", "||b||", "||c||"], limit=17) == "||a||, and 2 more"
    assert fit_list(["||a||", "||b||"]) == "||a||, ||b||" and fit_list([]) == ""
