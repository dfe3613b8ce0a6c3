"""Standings: entries ordered by votes, with shared places for ties ("1224" ranking: two entries with the
most votes are both 1st and the next is 3rd). An entry without a single vote gets no place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

PODIUM_PLACES = 3


class Votable(Protocol):
    @property
    def number(self) -> int: ...

    @property
    def votes(self) -> int: ...


@dataclass(frozen=True)
class Standing:
    place: int | None  # None: no votes, so no place
    entry: Votable

    @property
    def on_podium(self) -> bool:
        return self.place is not None and self.place <= PODIUM_PLACES


def rank(entries: Sequence[Votable]) -> list[Standing]:
    """Most votes first; equal votes share a place and keep submission order (entry number) among themselves."""
    ordered = sorted(entries, key=lambda entry: (-entry.votes, entry.number))
    standings: list[Standing] = []
    place = 0
    previous_votes: int | None = None
    for index, entry in enumerate(ordered, start=1):
        if entry.votes != previous_votes:
            place = index
            previous_votes = entry.votes
        standings.append(Standing(place if entry.votes > 0 else None, entry))
    return standings


def podium(standings: Sequence[Standing]) -> list[Standing]:
    return [standing for standing in standings if standing.on_podium]


def ordinal(place: int) -> str:
    if 10 <= place % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(place % 10, "th")
    return f"{place}{suffix}"
