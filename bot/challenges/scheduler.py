"""Challenge deadlines, fired from the database: the deadline is the timer, so nothing is lost by a restart.

One task sleeps until the earliest deadline of an open (or interrupted closing) challenge, then hands every due
challenge to `fire`. `wake()` makes it look again at once: a new or earlier deadline, or a test that moved the
clock. At start it finds deadlines that passed while the bot was stopped and fires them straight away.

`fire` must be idempotent: a challenge is only done once `fire` marked it ended, so a crash (or a stop) in the
middle fires it again on the next start. A `fire` that raises is retried after `retry_seconds`.

This module must stay free of torch and discord imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bot.challenges.store import Challenge, ChallengeStore

log = logging.getLogger(__name__)

# Sleep at most this long at a time, so a wall clock that jumps (NTP, suspend) is noticed soon enough.
LONGEST_SLEEP_SECONDS = 300.0


class DeadlineScheduler:
    def __init__(
        self,
        store: ChallengeStore,
        fire: Callable[[Challenge], Awaitable[None]],
        *,
        clock: Callable[[], float],
        retry_seconds: float = 60.0,
        before_first_check: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._fire = fire
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._before_first_check = before_first_check
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retry_at: dict[int, float] = {}
        # For tests and logs: challenges fire() ended without error, and looks at the deadlines done.
        self.fired = 0
        self.rounds = 0
        self._progress = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bigsleep-challenge-deadlines")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Look at the deadlines again now (one was added or moved, or the clock moved)."""
        self._wake.set()

    async def wait_fired(self, count: int) -> None:
        """Until `count` challenges in all have been fired successfully by this scheduler."""
        await self._wait_until(lambda: self.fired >= count)

    async def wait_rounds(self, count: int) -> None:
        """Until the scheduler has looked at the deadlines `count` times in all."""
        await self._wait_until(lambda: self.rounds >= count)

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._progress.clear()
            await self._progress.wait()

    async def _run(self) -> None:
        if self._before_first_check is not None:
            await self._before_first_check()
        while True:
            self._wake.clear()
            try:
                delay = await self._fire_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not check challenge deadlines; trying again in %.0f s", self._retry_seconds)
                delay = self._retry_seconds
            self.rounds += 1
            self._progress.set()
            if delay is None:
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, min(delay, LONGEST_SLEEP_SECONDS)))

    async def _fire_due(self) -> float | None:
        """Fire what is due; returns seconds until the next thing to do, or None when nothing is scheduled."""
        now = self._clock()
        fired_now = False
        due = await self._store.due(now)
        for stale in self._retry_at.keys() - {challenge.id for challenge in due}:
            del self._retry_at[stale]  # ended or cancelled some other way
        for challenge in due:
            if self._retry_at.get(challenge.id, 0.0) > now:
                continue
            try:
                await self._fire(challenge)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("challenge %s: ending it failed; trying again in %.0f s", challenge.id, self._retry_seconds)
                self._retry_at[challenge.id] = self._clock() + self._retry_seconds
                continue
            self._retry_at.pop(challenge.id, None)
            fired_now = True
            self.fired += 1
        now = self._clock()
        upcoming = await self._store.next_deadline(excluding=self._retry_at.keys())
        candidates = list(self._retry_at.values()) + ([upcoming] if upcoming is not None else [])
        if not candidates:
            return None
        wait = min(candidates) - now
        if wait <= 0:
            # Due already: it became due while others were ending (go on at once), or fire() returned without
            # ending it (wait, rather than spin).
            return 0.0 if fired_now else self._retry_seconds
        return wait
