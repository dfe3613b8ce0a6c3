from __future__ import annotations

import pytest

from bot.challenges.durations import DurationError, describe_duration, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("2d", 2 * 86400),
        ("36h", 36 * 3600),
        ("1d12h", 36 * 3600),
        ("90m", 90 * 60),
        (" 1D 6H ", 30 * 3600),
        ("1w", 7 * 86400),
        ("1w2d3h4m", 7 * 86400 + 2 * 86400 + 3 * 3600 + 4 * 60),
        ("1d, 2h", 26 * 3600),
    ],
)
def test_durations_people_type(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "Give a duration"),
        ("2", "no unit"),
        ("2 days", "can't read"),
        ("1d1d", "twice"),
        ("d", "can't read"),
        ("1.5d", "can't read"),
        ("-2d", "can't read"),
        ("2d tomorrow", "can't read"),
    ],
)
def test_bad_durations_say_how_to_write_one(text, says):
    with pytest.raises(DurationError, match=says):
        parse_duration(text)


def test_minimum_and_maximum_are_enforced_with_readable_limits():
    with pytest.raises(DurationError, match="at least 10 minutes"):
        parse_duration("5m", minimum_seconds=600)
    with pytest.raises(DurationError, match="at most 60 days"):
        parse_duration("61d", maximum_seconds=60 * 86400)
    assert parse_duration("10m", minimum_seconds=600, maximum_seconds=600) == 600


@pytest.mark.parametrize(
    "text, says",
    [("0m", "at least 10 minutes"), ("0d0h", "at least 10 minutes"), ("999d", "at most 60 days"),
     ("99999999999999999999w", "at most 60 days"), ("2x", "can't read"), ("", "Give a duration"),
     ("   ", "Give a duration")],
)
def test_what_challenge_start_refuses(text, says):
    with pytest.raises(DurationError, match=says):
        parse_duration(text, minimum_seconds=600, maximum_seconds=60 * 86400)


def test_describe_duration():
    assert describe_duration(36 * 3600) == "1 day 12 hours"
    assert describe_duration(60) == "1 minute"
    assert describe_duration(2 * 86400 + 90) == "2 days 2 minutes"
    assert describe_duration(10) == "less than a minute"
