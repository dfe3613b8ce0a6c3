"""IdentifyPacer: Discord's IDENTIFY rule (one per 5 s per bucket shard_id % max_concurrency), on a clock the test moves."""

from __future__ import annotations

import pytest

from bot.sharding import IDENTIFY_INTERVAL_SECONDS, IdentifyPacer

INTERVAL = IDENTIFY_INTERVAL_SECONDS


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def waits(pacer: IdentifyPacer, shard_ids: range | list[int], max_concurrency: int) -> list[float]:
    return [pacer.reserve(shard_id, max_concurrency) for shard_id in shard_ids]


@pytest.mark.parametrize("max_concurrency, expected", [
    (1, [0, INTERVAL, 2 * INTERVAL, 3 * INTERVAL]),  # one bucket: one after another
    (2, [0, 0, INTERVAL, INTERVAL]),                  # shards 0 and 2 share a bucket, 1 and 3 the other
    (16, [0, 0, 0, 0]),                               # every shard in its own bucket: all at once
])
def test_shards_in_one_bucket_wait_their_turn_and_other_buckets_go_together(max_concurrency, expected):
    pacer = IdentifyPacer(clock=ManualClock())

    assert waits(pacer, range(4), max_concurrency) == pytest.approx(expected)


def test_a_turn_counts_from_the_last_identify_in_the_bucket():
    clock = ManualClock()
    pacer = IdentifyPacer(clock=clock)

    assert pacer.reserve(0, 1) == 0
    clock.now += 2.0
    assert pacer.reserve(1, 1) == pytest.approx(INTERVAL - 2.0)
    clock.now += 60.0  # long after both: the next shard goes at once
    assert pacer.reserve(2, 1) == 0


def test_a_shard_that_identifies_again_waits_a_full_interval():
    """A lost session's new IDENTIFY waits, as discord.py's own hook does, however long ago the bucket's last was."""
    clock = ManualClock()
    pacer = IdentifyPacer(clock=clock)
    assert waits(pacer, [0, 1], 16) == [0, 0]

    clock.now += 600.0

    assert pacer.reserve(1, 16) == pytest.approx(INTERVAL)
    assert pacer.reserve(2, 16) == 0  # a first IDENTIFY in a free bucket still goes at once


async def test_wait_turn_sleeps_only_when_it_must():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = IdentifyPacer(clock=ManualClock(), sleep=sleep)
    for shard_id in range(3):
        await pacer.wait_turn(shard_id, 2)

    assert slept == pytest.approx([INTERVAL])
