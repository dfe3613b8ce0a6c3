"""The deadline scheduler against a real store, with a clock the test moves."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from bot.challenges.scheduler import DeadlineScheduler
from bot.challenges.store import ChallengeStore

if TYPE_CHECKING:
    from conftest import FakeClock

HOUR = 3600.0


@pytest.fixture
def challenges(database, clock) -> ChallengeStore:
    return ChallengeStore(database, clock=clock)


async def new_challenge(challenges: ChallengeStore, clock, guild: int, hours: float):
    return await challenges.create(guild_id=guild, channel_id=1, theme="t", created_by=1, deadline=clock() + hours * HOUR,
                                   max_entries_per_member=1, counts_hidden=True)


class Ender:
    """fire(): ends the challenge as the cog does; can be told to fail a number of times first."""

    def __init__(self, challenges: ChallengeStore, failures: int = 0) -> None:
        self.challenges = challenges
        self.failures = failures
        self.calls: list[int] = []

    async def __call__(self, challenge) -> None:
        self.calls.append(challenge.id)
        await self.challenges.begin_closing(challenge.id)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("Discord is down")
        await self.challenges.mark_ended(challenge.id, None)


async def test_overdue_deadlines_fire_at_start_and_future_ones_wait(challenges, clock: FakeClock):
    overdue = await new_challenge(challenges, clock, 1, hours=1)
    upcoming = await new_challenge(challenges, clock, 2, hours=5)
    clock.advance(2 * HOUR)  # the bot was "stopped" past the first deadline
    ender = Ender(challenges)
    scheduler = DeadlineScheduler(challenges, ender, clock=clock)
    scheduler.start()
    try:
        await asyncio.wait_for(scheduler.wait_fired(1), 5)
        assert ender.calls == [overdue.id]
        assert (await challenges.get(upcoming.id)).state == "open"

        clock.advance(3 * HOUR)
        scheduler.wake()
        await asyncio.wait_for(scheduler.wait_fired(2), 5)
        assert ender.calls == [overdue.id, upcoming.id]
        assert (await challenges.get(upcoming.id)).state == "ended"
    finally:
        await scheduler.stop()


async def test_a_sooner_deadline_added_later_wakes_the_scheduler(challenges, clock):
    await new_challenge(challenges, clock, 1, hours=10)
    ender = Ender(challenges)
    scheduler = DeadlineScheduler(challenges, ender, clock=clock)
    scheduler.start()
    try:
        await asyncio.wait_for(scheduler.wait_rounds(1), 5)  # asleep until the far deadline
        sooner = await challenges.create(guild_id=2, channel_id=1, theme="t", created_by=1, deadline=clock() - 1,
                                         max_entries_per_member=1, counts_hidden=True)
        scheduler.wake()
        await asyncio.wait_for(scheduler.wait_fired(1), 5)
        assert ender.calls == [sooner.id]
    finally:
        await scheduler.stop()


async def test_a_failed_ending_is_retried_and_an_interrupted_one_refires_on_the_next_start(challenges, clock):
    challenge = await new_challenge(challenges, clock, 1, hours=1)
    clock.advance(HOUR)
    failing = Ender(challenges, failures=1)
    scheduler = DeadlineScheduler(challenges, failing, clock=clock, retry_seconds=60)
    scheduler.start()
    try:
        await asyncio.wait_for(scheduler.wait_rounds(1), 5)
        assert failing.calls == [challenge.id] and (await challenges.get(challenge.id)).state == "closing"
    finally:
        await scheduler.stop()  # the bot stops with the challenge half-ended

    fresh = Ender(challenges)
    restarted = DeadlineScheduler(challenges, fresh, clock=clock)
    restarted.start()
    try:
        await asyncio.wait_for(restarted.wait_fired(1), 5)
        assert fresh.calls == [challenge.id] and (await challenges.get(challenge.id)).state == "ended"
    finally:
        await restarted.stop()


async def test_retry_after_the_retry_interval(challenges, clock, caplog):
    challenge = await new_challenge(challenges, clock, 1, hours=1)
    clock.advance(HOUR)
    failing = Ender(challenges, failures=1)
    scheduler = DeadlineScheduler(challenges, failing, clock=clock, retry_seconds=60)
    scheduler.start()
    try:
        await asyncio.wait_for(scheduler.wait_rounds(1), 5)
        scheduler.wake()  # too early: nothing happens
        await asyncio.wait_for(scheduler.wait_rounds(2), 5)
        assert len(failing.calls) == 1
        clock.advance(61)
        scheduler.wake()
        await asyncio.wait_for(scheduler.wait_fired(1), 5)
        assert failing.calls == [challenge.id, challenge.id]
        assert "trying again" in caplog.text
    finally:
        await scheduler.stop()

