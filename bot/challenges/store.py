"""Challenges, entries and votes in the bot's database (bot.database; tables from bot/challenges/migrations).

Every rule that a race could break is checked inside one write transaction or by a constraint: a second open
challenge in a server, a second vote of one member for one entry, a vote for one's own entry, an entry past the
deadline or past the member's limit. Refusals raise `ChallengeRefused` with a sentence to show the member.

This module must stay free of torch and discord imports.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from bot.challenges.results import Standing
from bot.database import Database

ChallengeState = Literal["open", "closing", "ended", "cancelled"]


class ChallengeRefused(Exception):
    """An action the rules do not allow; str() is the friendly reason."""


class AlreadyVoted(ChallengeRefused):
    pass


@dataclass(frozen=True)
class Challenge:
    id: int
    guild_id: int
    channel_id: int
    theme: str
    created_by: int
    created_at: float
    deadline: float
    max_entries_per_member: int
    counts_hidden: bool
    upload_limit: int | None
    state: str
    entries_numbered: int
    announcement_message_id: int | None
    results_message_id: int | None
    ended_at: float | None

    def accepts_votes(self, now: float) -> bool:
        return self.state == "open" and now < self.deadline

    def counts_visible(self) -> bool:
        """Vote counts may be shown: always once it ended, before that only when the challenge says so."""
        return self.state == "ended" or not self.counts_hidden


@dataclass(frozen=True)
class Entry:
    id: int
    challenge_id: int
    number: int
    user_id: int
    user_name: str
    job_id: str
    prompt: str
    image_path: str
    submitted_at: float
    message_id: int | None
    final_votes: int | None
    place: int | None
    votes: int  # counted now (final_votes once ended)


@dataclass(frozen=True)
class LeaderboardRow:
    user_id: int
    user_name: str
    wins: int
    seconds: int
    thirds: int
    entries: int


_CHALLENGE_COLUMNS = tuple(f.name for f in fields(Challenge))
_SELECT_CHALLENGE = f"SELECT {', '.join(_CHALLENGE_COLUMNS)} FROM challenges"
_ENTRY_COLUMNS = tuple(f.name for f in fields(Entry) if f.name != "votes")
_SELECT_ENTRY = (
    f"SELECT {', '.join('e.' + name for name in _ENTRY_COLUMNS)}, "
    "(SELECT COUNT(*) FROM challenge_votes v WHERE v.entry_id = e.id) FROM challenge_entries e"
)


def _challenge(row: Sequence[Any]) -> Challenge:
    values = dict(zip(_CHALLENGE_COLUMNS, row))
    values["counts_hidden"] = bool(values["counts_hidden"])
    return Challenge(**values)


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(**dict(zip(_ENTRY_COLUMNS, row[:-1])), votes=int(row[-1]))


class ChallengeStore:
    def __init__(self, database: Database, *, clock: Callable[[], float]) -> None:
        self._database = database
        self.clock = clock

    # -- reading --

    async def _challenges(self, where_and_order: str, params: Sequence[Any] = ()) -> list[Challenge]:
        async with self._database.reading() as db, db.execute(f"{_SELECT_CHALLENGE} {where_and_order}", tuple(params)) as c:
            return [_challenge(row) for row in await c.fetchall()]

    async def _entries(self, where_and_order: str, params: Sequence[Any] = ()) -> list[Entry]:
        async with self._database.reading() as db, db.execute(f"{_SELECT_ENTRY} {where_and_order}", tuple(params)) as c:
            return [_entry(row) for row in await c.fetchall()]

    async def get(self, challenge_id: int) -> Challenge | None:
        found = await self._challenges("WHERE id = ?", (challenge_id,))
        return found[0] if found else None

    async def running(self, guild_id: int) -> Challenge | None:
        """The server's open challenge (at most one)."""
        found = await self._challenges("WHERE guild_id = ? AND state = 'open'", (guild_id,))
        return found[0] if found else None

    async def latest(self, guild_id: int) -> Challenge | None:
        found = await self._challenges("WHERE guild_id = ? ORDER BY created_at DESC, id DESC LIMIT 1", (guild_id,))
        return found[0] if found else None

    async def in_guild(self, guild_id: int, *, limit: int = 10) -> list[Challenge]:
        """Newest first."""
        return await self._challenges("WHERE guild_id = ? ORDER BY created_at DESC, id DESC LIMIT ?", (guild_id, limit))

    async def open_guild_ids(self) -> set[int]:
        return {challenge.guild_id for challenge in await self._challenges("WHERE state = 'open'")}

    async def due(self, now: float) -> list[Challenge]:
        """Open challenges past their deadline, and ones whose closing was interrupted; earliest first."""
        return await self._challenges(
            "WHERE (state = 'open' AND deadline <= ?) OR state = 'closing' ORDER BY deadline, id", (now,)
        )

    async def next_deadline(self, *, excluding: Collection[int] = ()) -> float | None:
        """The earliest deadline still to fire (a closing challenge's is in the past), leaving out some ids."""
        skipped = ", ".join(str(int(challenge_id)) for challenge_id in excluding)
        async with self._database.reading() as db, db.execute(
            "SELECT MIN(deadline) FROM challenges WHERE state IN ('open', 'closing')"
            + (f" AND id NOT IN ({skipped})" if skipped else "")
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def entries(self, challenge_id: int) -> list[Entry]:
        """In submission order."""
        return await self._entries("WHERE e.challenge_id = ? ORDER BY e.number", (challenge_id,))

    async def entry(self, entry_id: int) -> Entry | None:
        found = await self._entries("WHERE e.id = ?", (entry_id,))
        return found[0] if found else None

    async def entry_by_number(self, challenge_id: int, number: int) -> Entry | None:
        found = await self._entries("WHERE e.challenge_id = ? AND e.number = ?", (challenge_id, number))
        return found[0] if found else None

    async def entries_of(self, challenge_id: int, user_id: int) -> list[Entry]:
        return await self._entries("WHERE e.challenge_id = ? AND e.user_id = ? ORDER BY e.number", (challenge_id, user_id))

    async def has_voted(self, entry_id: int, voter_id: int) -> bool:
        async with self._database.reading() as db, db.execute(
            "SELECT 1 FROM challenge_votes WHERE entry_id = ? AND voter_id = ?", (entry_id, voter_id)
        ) as cursor:
            return await cursor.fetchone() is not None

    async def leaderboard(self, guild_id: int, *, limit: int = 10) -> list[LeaderboardRow]:
        """Members of a server by first places in its ended challenges, then seconds, then thirds."""
        async with self._database.reading() as db, db.execute(
            """SELECT e.user_id, MAX(e.user_name),
                      SUM(e.place = 1), SUM(e.place = 2), SUM(e.place = 3), COUNT(*)
               FROM challenge_entries e JOIN challenges c ON c.id = e.challenge_id
               WHERE c.guild_id = ? AND c.state = 'ended'
               GROUP BY e.user_id
               HAVING SUM(e.place IS NOT NULL AND e.place <= 3) > 0
               ORDER BY 3 DESC, 4 DESC, 5 DESC, MIN(e.submitted_at)
               LIMIT ?""",
            (guild_id, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [LeaderboardRow(int(r[0]), r[1] or "", int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]

    # -- a challenge's life --

    async def create(
        self,
        *,
        guild_id: int,
        channel_id: int,
        theme: str,
        created_by: int,
        deadline: float,
        max_entries_per_member: int,
        counts_hidden: bool,
        upload_limit: int | None = None,
    ) -> Challenge:
        try:
            async with self._database.transaction() as db:
                cursor = await db.execute(
                    """INSERT INTO challenges (guild_id, channel_id, theme, created_by, created_at, deadline,
                           max_entries_per_member, counts_hidden, upload_limit)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (guild_id, channel_id, theme, created_by, self.clock(), deadline, max_entries_per_member,
                     int(counts_hidden), upload_limit),
                )
                challenge_id = cursor.lastrowid
        except sqlite3.IntegrityError:
            running = await self.running(guild_id)
            number = f" (#{running.id})" if running else ""
            raise ChallengeRefused(
                f"This server already has a challenge running{number}; end or cancel it first."
            ) from None
        created = await self.get(int(challenge_id))  # type: ignore[arg-type]
        assert created is not None
        return created

    async def discard(self, challenge_id: int) -> None:
        """Forget a challenge that never got announced (its channel refused the announcement)."""
        async with self._database.transaction() as db:
            await db.execute("DELETE FROM challenges WHERE id = ? AND announcement_message_id IS NULL", (challenge_id,))

    async def set_announcement(self, challenge_id: int, message_id: int) -> None:
        async with self._database.transaction() as db:
            await db.execute("UPDATE challenges SET announcement_message_id = ? WHERE id = ?", (message_id, challenge_id))

    async def end_now(self, challenge_id: int) -> Challenge:
        """Bring an open challenge's deadline forward to now (the scheduler then ends it)."""
        async with self._database.transaction() as db:
            cursor = await db.execute(
                "UPDATE challenges SET deadline = MIN(deadline, ?) WHERE id = ? AND state = 'open'",
                (self.clock(), challenge_id),
            )
            if cursor.rowcount == 0:
                raise ChallengeRefused(f"Challenge #{challenge_id} is not running.")
        return await self._require(challenge_id)

    async def cancel(self, challenge_id: int) -> Challenge:
        async with self._database.transaction() as db:
            cursor = await db.execute(
                "UPDATE challenges SET state = 'cancelled', ended_at = ? WHERE id = ? AND state = 'open'",
                (self.clock(), challenge_id),
            )
            if cursor.rowcount == 0:
                raise ChallengeRefused(f"Challenge #{challenge_id} is not running.")
        return await self._require(challenge_id)

    async def begin_closing(self, challenge_id: int) -> Challenge:
        """Voting and entries stop for good (open -> closing; a closing one stays closing)."""
        async with self._database.transaction() as db:
            await db.execute("UPDATE challenges SET state = 'closing' WHERE id = ? AND state = 'open'", (challenge_id,))
        return await self._require(challenge_id)

    async def record_places(self, standings: Sequence[Standing]) -> None:
        async with self._database.transaction() as db:
            for standing in standings:
                entry: Entry = standing.entry  # type: ignore[assignment]
                await db.execute(
                    "UPDATE challenge_entries SET final_votes = ?, place = ? WHERE id = ?",
                    (entry.votes, standing.place, entry.id),
                )

    async def set_results_message(self, challenge_id: int, message_id: int) -> None:
        async with self._database.transaction() as db:
            await db.execute("UPDATE challenges SET results_message_id = ? WHERE id = ?", (message_id, challenge_id))

    async def mark_ended(self, challenge_id: int, results_message_id: int | None) -> Challenge:
        async with self._database.transaction() as db:
            await db.execute(
                "UPDATE challenges SET state = 'ended', ended_at = ?, results_message_id = ? "
                "WHERE id = ? AND state = 'closing'",
                (self.clock(), results_message_id, challenge_id),
            )
        return await self._require(challenge_id)

    async def _require(self, challenge_id: int) -> Challenge:
        challenge = await self.get(challenge_id)
        if challenge is None:
            raise ChallengeRefused(f"There is no challenge #{challenge_id}.")
        return challenge

    # -- entries --

    async def add_entry(
        self, challenge_id: int, *, user_id: int, user_name: str, job_id: str, prompt: str, image_path: str
    ) -> Entry:
        now = self.clock()
        async with self._database.transaction() as db:
            async with db.execute(f"{_SELECT_CHALLENGE} WHERE id = ?", (challenge_id,)) as cursor:
                row = await cursor.fetchone()
            challenge = _challenge(row) if row else None
            if challenge is None or not challenge.accepts_votes(now):
                raise ChallengeRefused("The challenge is closed; it takes no more entries.")
            async with db.execute(
                "SELECT number FROM challenge_entries WHERE challenge_id = ? AND job_id = ?", (challenge_id, job_id)
            ) as cursor:
                same_job = await cursor.fetchone()
            if same_job is not None:
                raise ChallengeRefused(f"Job `{job_id}` is already in this challenge (entry #{same_job[0]}).")
            async with db.execute(
                "SELECT COUNT(*) FROM challenge_entries WHERE challenge_id = ? AND user_id = ?", (challenge_id, user_id)
            ) as cursor:
                (mine,) = await cursor.fetchone()  # type: ignore[misc]
            if mine >= challenge.max_entries_per_member:
                allowed = challenge.max_entries_per_member
                raise ChallengeRefused(
                    f"You already have {mine} {'entry' if mine == 1 else 'entries'} in this challenge, the most "
                    f"allowed ({allowed}). Withdraw one with `/challenge withdraw` to enter another."
                )
            number = challenge.entries_numbered + 1
            await db.execute("UPDATE challenges SET entries_numbered = ? WHERE id = ?", (number, challenge_id))
            cursor = await db.execute(
                """INSERT INTO challenge_entries (challenge_id, number, user_id, user_name, job_id, prompt,
                       image_path, submitted_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (challenge_id, number, user_id, user_name, job_id, prompt, image_path, now),
            )
            entry_id = cursor.lastrowid
        entry = await self.entry(int(entry_id))  # type: ignore[arg-type]
        assert entry is not None
        return entry

    async def set_entry_message(self, entry_id: int, message_id: int | None) -> None:
        async with self._database.transaction() as db:
            await db.execute("UPDATE challenge_entries SET message_id = ? WHERE id = ?", (message_id, entry_id))

    async def remove_entry(self, entry_id: int, *, only_while_open: bool = True) -> Entry:
        """Delete an entry and its votes; returns it as it was. Withdrawals happen only before the deadline."""
        entry = await self.entry(entry_id)
        if entry is None:
            raise ChallengeRefused("That entry was already withdrawn.")
        now = self.clock()
        async with self._database.transaction() as db:
            if only_while_open:
                async with db.execute(f"{_SELECT_CHALLENGE} WHERE id = ?", (entry.challenge_id,)) as cursor:
                    row = await cursor.fetchone()
                if row is None or not _challenge(row).accepts_votes(now):
                    raise ChallengeRefused("The challenge has closed; entries can no longer be withdrawn.")
            cursor = await db.execute("DELETE FROM challenge_entries WHERE id = ?", (entry_id,))
            if cursor.rowcount == 0:
                raise ChallengeRefused("That entry was already withdrawn.")
        return entry

    # -- votes --

    async def vote(self, entry_id: int, voter_id: int) -> Entry:
        """One vote of `voter_id` for the entry; refused for one's own entry, a second time, or after the deadline."""
        now = self.clock()
        try:
            async with self._database.transaction() as db:
                entry = await self._open_entry(db, entry_id, now)
                if entry.user_id == voter_id:
                    raise ChallengeRefused("You can't vote for your own entry.")
                await db.execute(
                    "INSERT INTO challenge_votes (entry_id, voter_id, voted_at) VALUES (?, ?, ?)",
                    (entry_id, voter_id, now),
                )
        except sqlite3.IntegrityError as error:
            if "own entry" in str(error):  # the schema's trigger: the entry changed hands mid-vote
                raise ChallengeRefused("You can't vote for your own entry.") from None
            raise AlreadyVoted(f"You already voted for entry #{entry.number}.") from None
        updated = await self.entry(entry_id)
        assert updated is not None
        return updated

    async def unvote(self, entry_id: int, voter_id: int) -> Entry:
        now = self.clock()
        async with self._database.transaction() as db:
            entry = await self._open_entry(db, entry_id, now)
            cursor = await db.execute(
                "DELETE FROM challenge_votes WHERE entry_id = ? AND voter_id = ?", (entry_id, voter_id)
            )
            if cursor.rowcount == 0:
                raise ChallengeRefused(f"You have no vote for entry #{entry.number} to take back.")
        updated = await self.entry(entry_id)
        assert updated is not None
        return updated

    async def _open_entry(self, db: Any, entry_id: int, now: float) -> Entry:
        async with db.execute(f"{_SELECT_ENTRY} WHERE e.id = ?", (entry_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise ChallengeRefused("This entry was withdrawn.")
        entry = _entry(row)
        async with db.execute(f"{_SELECT_CHALLENGE} WHERE id = ?", (entry.challenge_id,)) as cursor:
            challenge_row = await cursor.fetchone()
        if challenge_row is None or not _challenge(challenge_row).accepts_votes(now):
            raise ChallengeRefused("Voting has closed for this challenge.")
        return entry
