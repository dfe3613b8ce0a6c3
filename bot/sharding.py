"""Sharding (settings `discord.shards`): when each shard may IDENTIFY, and what each shard's connection looks like.

Discord's rule for starting gateway sessions: shards in one rate-limit bucket (`shard_id % max_concurrency`, where
`max_concurrency` comes from GET /gateway/bot) IDENTIFY at most once per 5 s; shards in different buckets may
IDENTIFY together. Most bots have max_concurrency 1 (one IDENTIFY per 5 s in all); large bots get 16 or more.
discord.py 2.7 never reads max_concurrency and waits 5 s before every IDENTIFY but the first, so without
IdentifyPacer a bot with 16 shards would take 75 s to connect even where Discord allows it at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord

# Discord's window is one IDENTIFY per bucket per 5 s, counted from when Discord receives it; the turn is counted
# from before it is sent, so a little more keeps network jitter from making two look closer than 5 s.
IDENTIFY_INTERVAL_SECONDS = 5.5


class IdentifyPacer:
    """Hands out IDENTIFY turns per bucket. A shard that identifies again (its session was lost and cannot be
    resumed) also waits a full interval, as discord.py does by default and Discord asks after an invalid session.

    `clock` and `sleep` are injectable so a test can run the 5 s rule on a fake clock."""

    def __init__(
        self,
        *,
        interval: float = IDENTIFY_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self._next_turn: dict[int, float] = {}  # bucket -> earliest time its next IDENTIFY may go
        self._identified: set[int] = set()

    def reserve(self, shard_id: int, max_concurrency: int) -> float:
        """Book this shard's IDENTIFY and return how many seconds it must wait for it. Booking before waiting
        (nothing awaited in between) keeps two shards of one bucket from taking the same turn."""
        now = self.clock()
        bucket = shard_id % max(1, max_concurrency)
        turn = max(now, self._next_turn.get(bucket, now))
        if shard_id in self._identified:
            turn = max(turn, now + self.interval)
        self._identified.add(shard_id)
        self._next_turn[bucket] = turn + self.interval
        return turn - now

    async def wait_turn(self, shard_id: int, max_concurrency: int) -> None:
        delay = self.reserve(shard_id, max_concurrency)
        if delay > 0:
            await self.sleep(delay)


@dataclass(frozen=True)
class ShardState:
    id: int
    connected: bool
    # Seconds between the last heartbeat and its acknowledgement; not finite before the first one came back.
    latency: float

    def details(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"id": self.id, "connected": self.connected}
        if math.isfinite(self.latency):
            shown["latency_seconds"] = round(self.latency, 3)
        return shown


def shard_states(client: Any) -> list[ShardState] | None:
    """Each shard's connection, in shard order, or None for an unsharded client (its one connection is client.ws).
    A shard that discord.py has not launched yet (they connect one after another) is listed as not connected."""
    if not isinstance(client, discord.AutoShardedClient):
        return None
    launched = client.shards
    expected = range(client.shard_count) if client.shard_count else sorted(launched)
    states = []
    for shard_id in expected:
        info = launched.get(shard_id)
        if info is None:
            states.append(ShardState(shard_id, False, math.nan))
        else:
            states.append(ShardState(shard_id, not info.is_closed(), info.latency))
    return states


__all__ = ["IDENTIFY_INTERVAL_SECONDS", "IdentifyPacer", "ShardState", "shard_states"]
