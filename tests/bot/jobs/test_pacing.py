"""The message pacer and the per-channel budgets (bot.jobs.pacing): spacing counted from when a change finished,
budgets shared per channel and dropped once their window passed."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.jobs.pacing import ChannelBudgets, Pacer

INTERVAL = 0.1


async def test_the_pacer_spaces_changes_from_when_the_previous_one_finished():
    pacer = Pacer(INTERVAL)
    async with pacer:
        await asyncio.sleep(0.15)  # a slow change (a 429 retried inside it, say)
    finished = time.monotonic()
    async with pacer:
        started = time.monotonic()
    assert started - finished >= INTERVAL * 0.95


async def test_a_fresh_pacer_goes_at_once_and_a_stamped_one_waits_its_interval():
    fresh = Pacer(60.0)
    await asyncio.wait_for(fresh.__aenter__(), 1.0)
    await fresh.__aexit__(None, None, None)

    stamped = Pacer(INTERVAL)
    stamped.stamp()
    stamped_at = time.monotonic()
    async with stamped:
        assert time.monotonic() - stamped_at >= INTERVAL * 0.95


async def test_a_change_cancelled_while_it_waits_for_its_pace_leaves_the_pacer_usable():
    pacer = Pacer(60.0)
    pacer.stamp()
    waiting = asyncio.create_task(pacer.__aenter__())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    pacer.interval = 0.0
    await asyncio.wait_for(pacer.__aenter__(), 1.0)
    await pacer.__aexit__(None, None, None)


async def test_a_channel_budget_lets_its_cap_through_per_window_and_channels_are_apart():
    window = 0.2
    budgets = ChannelBudgets(2, window, 0.005)
    taken = []

    async def change(channel: int) -> None:
        async with budgets.slot(channel):
            taken.append((channel, time.monotonic()))

    await asyncio.gather(*(change(1) for _ in range(4)), change(2), change(2))
    times_in_1 = [at for channel, at in taken if channel == 1]
    assert times_in_1[2] - times_in_1[0] >= window * 0.95 and times_in_1[3] - times_in_1[1] >= window * 0.95
    times_in_2 = [at for channel, at in taken if channel == 2]
    assert times_in_2[1] - times_in_2[0] < window / 2


async def test_budgets_are_dropped_once_their_window_passed_but_never_while_in_use():
    window = 0.05
    budgets = ChannelBudgets(1, window, 0.005)
    for channel in range(1000):
        async with budgets.slot(channel):
            pass
    assert len(budgets) == 1000

    held = asyncio.Event()
    release = asyncio.Event()

    async def long_change() -> None:
        async with budgets.slot(-1):
            held.set()
            await release.wait()

    holder = asyncio.create_task(long_change())
    await held.wait()
    await asyncio.sleep(window * 2.5)
    async with budgets.slot(5000):
        pass
    # Only the budget in use (-1) and the new one are left: memory follows the last window, not all history.
    assert len(budgets) == 2
    release.set()
    await holder
