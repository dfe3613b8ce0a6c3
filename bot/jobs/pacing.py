"""How fast the bot changes its messages: a pace per message (`Pacer`) and a budget per channel (`ChannelBudgets`).

Take a message's pace first, then its channel's slot (`async with pacer, budgets.slot(channel)`): a change that
held a channel slot while it waited for its message's pace would go out late, beside the next window's changes,
and the channel would get more than its budget.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType

from asyncio_throttle import Throttler


class Pacer:
    """One change at a time, each starting at least `interval` seconds after the previous one *finished*: a slow
    or retried request (a 429) must not let the next change of the same message follow it sooner.
    asyncio-throttle counts from when a change started, and its public interface cannot say otherwise."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._finished_at = -math.inf
        self._lock = asyncio.Lock()

    def stamp(self) -> None:
        """Count a change made elsewhere (an earlier process) as if it had just finished."""
        self._finished_at = time.monotonic()

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        try:
            while (wait := self._finished_at + self.interval - time.monotonic()) > 0:
                await asyncio.sleep(wait)
        except BaseException:
            self._lock.release()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finished_at = time.monotonic()
        self._lock.release()


@dataclass
class _Budget:
    throttler: Throttler
    # Changes taking or waiting for a slot now: a budget in use is never dropped.
    users: int = 0
    # When a slot was last taken (time.monotonic, as the throttler counts).
    last_taken: float = field(default_factory=time.monotonic)


class ChannelBudgets:
    """At most `per_window` changes in any `window` seconds per channel, shared by every job there
    (asyncio-throttle's Throttler, one per channel).

    Bounded: a budget nobody uses whose last slot was taken more than a window ago remembers nothing a new one
    would not, so it is dropped (swept at most once a window). Memory holds only the channels changed in the
    last window or two, however many channels the bot has ever posted in.
    """

    def __init__(self, per_window: int, window: float, retry_interval: float) -> None:
        self.per_window = per_window
        self.window = window
        self.retry_interval = retry_interval
        self._budgets: dict[int, _Budget] = {}
        self._next_sweep = time.monotonic() + window

    def __len__(self) -> int:
        return len(self._budgets)

    @asynccontextmanager
    async def slot(self, channel_id: int) -> AsyncIterator[None]:
        """Wait for a slot in the channel's budget, then hold it while the change is made."""
        self._sweep()
        budget = self._budgets.get(channel_id)
        if budget is None:
            budget = self._budgets[channel_id] = _Budget(Throttler(self.per_window, self.window, self.retry_interval))
        budget.users += 1
        try:
            async with budget.throttler:
                budget.last_taken = time.monotonic()
                yield
        finally:
            budget.users -= 1

    def _sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window
        expired = [channel for channel, budget in self._budgets.items()
                   if budget.users == 0 and now - budget.last_taken > self.window]
        for channel in expired:
            del self._budgets[channel]
