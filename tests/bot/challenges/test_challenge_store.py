"""The challenge store on the bot's database: the rules hold even against races and raw SQL."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING

import pytest

from bot.challenges.results import rank
from bot.challenges.store import AlreadyVoted, ChallengeRefused, ChallengeStore
from bot.database import Database, latest_version

if TYPE_CHECKING:
    from conftest import FakeClock

GUILD, OTHER_GUILD, CHANNEL = 1001, 1002, 2001
ALICE, BOB, CAROL = 11, 12, 13
DAY = 86400.0


@pytest.fixture
def challenges(database: Database, clock: FakeClock) -> ChallengeStore:
    return ChallengeStore(database, clock=clock)


async def start(challenges: ChallengeStore, clock: FakeClock, guild: int = GUILD, **options) -> object:
    values = {"max_entries_per_member": 1, "counts_hidden": True, **options}
    return await challenges.create(
        guild_id=guild, channel_id=CHANNEL, theme="lighthouses", created_by=ALICE, deadline=clock() + DAY, **values
    )


async def enter(challenges, challenge, user: int, job_id: str):
    return await challenges.add_entry(
        challenge.id, user_id=user, user_name=f"user{user}", job_id=job_id, prompt=f"prompt {job_id}",
        image_path=f"challenges/{challenge.id}/{job_id}.png",
    )


async def test_schema_is_at_the_latest_version(database: Database):
    assert await database.schema_version() == latest_version() >= 4


async def test_one_open_challenge_per_server(challenges, clock):
    first = await start(challenges, clock)
    with pytest.raises(ChallengeRefused, match="already has a challenge running"):
        await start(challenges, clock)
    assert (await start(challenges, clock, guild=OTHER_GUILD)).guild_id == OTHER_GUILD
    await challenges.cancel(first.id)
    assert (await start(challenges, clock)).id != first.id
    assert await challenges.open_guild_ids() == {GUILD, OTHER_GUILD}


async def test_entries_are_numbered_and_numbers_are_never_reused(challenges, clock):
    challenge = await start(challenges, clock, max_entries_per_member=2)
    first = await enter(challenges, challenge, ALICE, "aaaaaaaa")
    second = await enter(challenges, challenge, BOB, "bbbbbbbb")
    await challenges.remove_entry(second.id)
    third = await enter(challenges, challenge, BOB, "cccccccc")
    assert (first.number, second.number, third.number) == (1, 2, 3)
    assert [e.number for e in await challenges.entries(challenge.id)] == [1, 3]


async def test_entry_limit_per_member_and_the_same_job_only_once(challenges, clock):
    challenge = await start(challenges, clock, max_entries_per_member=1)
    await enter(challenges, challenge, ALICE, "aaaaaaaa")
    with pytest.raises(ChallengeRefused, match="most allowed"):
        await enter(challenges, challenge, ALICE, "a2a2a2a2")
    with pytest.raises(ChallengeRefused, match="already in this challenge"):
        await enter(challenges, challenge, BOB, "aaaaaaaa")


async def test_votes_one_per_member_per_entry_and_not_for_oneself(challenges, clock):
    challenge = await start(challenges, clock)
    entry = await enter(challenges, challenge, ALICE, "aaaaaaaa")

    assert (await challenges.vote(entry.id, BOB)).votes == 1
    with pytest.raises(AlreadyVoted):
        await challenges.vote(entry.id, BOB)
    with pytest.raises(ChallengeRefused, match="your own entry"):
        await challenges.vote(entry.id, ALICE)
    assert (await challenges.vote(entry.id, CAROL)).votes == 2
    assert (await challenges.unvote(entry.id, BOB)).votes == 1
    with pytest.raises(ChallengeRefused, match="no vote"):
        await challenges.unvote(entry.id, BOB)
    assert (await challenges.vote(entry.id, BOB)).votes == 2


async def test_racing_double_votes_count_once(challenges, clock):
    challenge = await start(challenges, clock)
    entry = await enter(challenges, challenge, ALICE, "aaaaaaaa")

    outcomes = await asyncio.gather(*(challenges.vote(entry.id, BOB) for _ in range(5)), return_exceptions=True)

    assert sum(not isinstance(o, Exception) for o in outcomes) == 1
    assert all(isinstance(o, AlreadyVoted) for o in outcomes if isinstance(o, Exception))
    assert (await challenges.entry(entry.id)).votes == 1


async def test_the_database_itself_refuses_double_and_self_votes(database, challenges, clock):
    challenge = await start(challenges, clock)
    entry = await enter(challenges, challenge, ALICE, "aaaaaaaa")
    async with database.transaction() as db:
        await db.execute("INSERT INTO challenge_votes (entry_id, voter_id, voted_at) VALUES (?, ?, 0)", (entry.id, BOB))
    for voter in (BOB, ALICE):
        with pytest.raises(sqlite3.IntegrityError):
            async with database.transaction() as db:
                await db.execute("INSERT INTO challenge_votes (entry_id, voter_id, voted_at) VALUES (?, ?, 0)",
                                 (entry.id, voter))


async def test_after_the_deadline_nothing_changes(challenges, clock):
    challenge = await start(challenges, clock, max_entries_per_member=3)
    entry = await enter(challenges, challenge, ALICE, "aaaaaaaa")
    await challenges.vote(entry.id, BOB)
    clock.advance(DAY)

    with pytest.raises(ChallengeRefused, match="closed"):
        await enter(challenges, challenge, ALICE, "a2a2a2a2")
    with pytest.raises(ChallengeRefused, match="closed"):
        await challenges.vote(entry.id, CAROL)
    with pytest.raises(ChallengeRefused, match="closed"):
        await challenges.unvote(entry.id, BOB)
    with pytest.raises(ChallengeRefused, match="closed"):
        await challenges.remove_entry(entry.id)
    assert (await challenges.entry(entry.id)).votes == 1


async def test_withdrawing_an_entry_removes_its_votes(database, challenges, clock):
    challenge = await start(challenges, clock)
    entry = await enter(challenges, challenge, ALICE, "aaaaaaaa")
    await challenges.vote(entry.id, BOB)

    removed = await challenges.remove_entry(entry.id)

    assert removed.number == 1 and await challenges.entry(entry.id) is None
    async with database.reading() as db, db.execute("SELECT COUNT(*) FROM challenge_votes") as cursor:
        assert (await cursor.fetchone())[0] == 0
    with pytest.raises(ChallengeRefused, match="already withdrawn"):
        await challenges.remove_entry(entry.id)


async def test_due_deadlines_closing_and_ending(challenges, clock):
    soon = await start(challenges, clock)
    later = await challenges.create(guild_id=OTHER_GUILD, channel_id=CHANNEL, theme="t", created_by=BOB,
                                    deadline=clock() + 3 * DAY, max_entries_per_member=1, counts_hidden=False)
    assert await challenges.due(clock()) == []
    assert await challenges.next_deadline() == soon.deadline
    assert await challenges.next_deadline(excluding=[soon.id]) == later.deadline

    clock.advance(DAY)
    assert [c.id for c in await challenges.due(clock())] == [soon.id]
    closing = await challenges.begin_closing(soon.id)
    assert closing.state == "closing" and not closing.accepts_votes(clock())
    # An interrupted closing is still due, whatever the time.
    assert [c.id for c in await challenges.due(0)] == [soon.id]
    ended = await challenges.mark_ended(soon.id, 555)
    assert (ended.state, ended.results_message_id) == ("ended", 555)
    assert (await challenges.begin_closing(soon.id)).state == "ended"  # ending twice changes nothing
    assert await challenges.due(clock() + 10 * DAY) == [later]


async def test_end_now_brings_the_deadline_forward(challenges, clock):
    challenge = await start(challenges, clock)
    moved = await challenges.end_now(challenge.id)
    assert moved.deadline == clock() and [c.id for c in await challenges.due(clock())] == [challenge.id]
    await challenges.cancel(challenge.id)
    with pytest.raises(ChallengeRefused, match="not running"):
        await challenges.end_now(challenge.id)


async def test_leaderboard_counts_places_of_ended_challenges_in_one_server(challenges, clock):
    async def run_challenge(votes_for: dict[int, int], guild: int = GUILD):
        challenge = await start(challenges, clock, guild=guild)
        voters = iter(range(100, 200))
        for user, votes in votes_for.items():
            entry = await enter(challenges, challenge, user, f"{challenge.id:04d}{user:04d}")
            for _ in range(votes):
                await challenges.vote(entry.id, next(voters))
        clock.advance(DAY)
        await challenges.begin_closing(challenge.id)
        await challenges.record_places(rank(await challenges.entries(challenge.id)))
        await challenges.mark_ended(challenge.id, None)

    await run_challenge({ALICE: 3, BOB: 1, CAROL: 2})
    await run_challenge({ALICE: 1, BOB: 4, CAROL: 0})
    await run_challenge({BOB: 5}, guild=OTHER_GUILD)
    cancelled = await start(challenges, clock)
    await enter(challenges, cancelled, CAROL, "zzzzzzzz")
    await challenges.cancel(cancelled.id)

    board = await challenges.leaderboard(GUILD)

    assert [(r.user_id, r.wins, r.seconds, r.thirds) for r in board] == [(ALICE, 1, 1, 0), (BOB, 1, 0, 1), (CAROL, 0, 1, 0)]
    assert [(r.user_id, r.wins) for r in await challenges.leaderboard(OTHER_GUILD)] == [(BOB, 1)]


async def test_challenges_survive_reopening_the_database(db_path, clock):
    async with Database.open(db_path) as database:
        challenge = await start(ChallengeStore(database, clock=clock), clock)
    async with Database.open(db_path) as database:
        again = await ChallengeStore(database, clock=clock).get(challenge.id)
    assert again == challenge


async def test_racing_submissions_keep_the_entry_limit(challenges, clock):
    challenge = await start(challenges, clock, max_entries_per_member=2)

    outcomes = await asyncio.gather(*(enter(challenges, challenge, ALICE, f"job{n:05d}") for n in range(6)),
                                    return_exceptions=True)

    assert sum(not isinstance(o, Exception) for o in outcomes) == 2
    assert all(isinstance(o, ChallengeRefused) and "most allowed" in str(o) for o in outcomes if isinstance(o, Exception))
    assert len(await challenges.entries_of(challenge.id, ALICE)) == 2
