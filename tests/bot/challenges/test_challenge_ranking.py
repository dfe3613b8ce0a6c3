from __future__ import annotations

from dataclasses import dataclass

from bot.challenges.results import ordinal, podium, rank


@dataclass(frozen=True)
class Entry:
    number: int
    votes: int


def places(entries):
    return [(standing.entry.number, standing.place) for standing in rank(entries)]


def test_most_votes_first():
    assert places([Entry(1, 2), Entry(2, 5), Entry(3, 3)]) == [(2, 1), (3, 2), (1, 3)]


def test_ties_share_a_place_and_the_next_place_is_skipped():
    entries = [Entry(1, 4), Entry(2, 4), Entry(3, 2), Entry(4, 2), Entry(5, 1)]
    assert places(entries) == [(1, 1), (2, 1), (3, 3), (4, 3), (5, 5)]
    assert [s.entry.number for s in podium(rank(entries))] == [1, 2, 3, 4]


def test_ties_keep_submission_order():
    assert [s.entry.number for s in rank([Entry(3, 1), Entry(1, 1), Entry(2, 1)])] == [1, 2, 3]


def test_entries_without_votes_get_no_place():
    standings = rank([Entry(1, 0), Entry(2, 1), Entry(3, 0)])
    assert [(s.entry.number, s.place) for s in standings] == [(2, 1), (1, None), (3, None)]
    assert [s.entry.number for s in podium(standings)] == [2]
    assert podium(rank([Entry(1, 0), Entry(2, 0)])) == []


def test_no_entries():
    assert rank([]) == []


def test_ordinals():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"
    ]
