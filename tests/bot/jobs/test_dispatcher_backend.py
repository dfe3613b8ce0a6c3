"""The dispatcher against the simulated backend, through its public API (enqueue, start, stop) and the store:
it hands out jobs only while the backend takes them, charges an attempt only for a run on a worker, and runs a
job whose worker died again alone, so a job that kills every worker fails by itself and nothing else is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.jobs.dispatcher import CRASHED_REPEATEDLY, Dispatcher, DispatchSettings
from bot.jobs.fair_queue import FairQueue
from bot.jobs.files import ResultFiles
from bot.jobs.job import Job
from bot.jobs.ports import SilentProgress
from bot.jobs.simulated import SimulatedGenerationClient
from bot.jobs.store import JobStore
from generator.protocol import DreamSpec, JobEvent, JobInterrupted, JobRequest

pytestmark = pytest.mark.timeout(30)


class Endings(SilentProgress):
    """Records how jobs end; `until(n)` waits for the n-th ending."""

    def __init__(self) -> None:
        self.ended: dict[str, str] = {}
        self._changed = asyncio.Event()

    def done(self, job: Job, png: bytes) -> None:
        self._end(job)

    def failed(self, job: Job, reason: str) -> None:
        self._end(job)

    def cancelled(self, job: Job) -> None:
        self._end(job)

    def _end(self, job: Job) -> None:
        self.ended[job.id] = job.state
        self._changed.set()

    async def until(self, count: int) -> None:
        while len(self.ended) < count:
            self._changed.clear()
            await self._changed.wait()


def dispatcher_for(store: JobStore, backend, files_dir, endings: Endings) -> Dispatcher:
    return Dispatcher(
        store=store, queue=FairQueue(), backend=backend, files=ResultFiles(files_dir), progress=endings,
        settings=DispatchSettings(max_in_flight=4, max_attempts=3),
    )


async def queue_job(dispatcher: Dispatcher, user_id: int, prompt: str) -> Job:
    return await dispatcher.enqueue(guild_id=1, channel_id=1, user_id=user_id, spec=DreamSpec(prompt, seed=user_id, steps=10))


async def test_a_job_that_kills_every_worker_fails_alone_and_its_batch_mates_finish(store, tmp_path):
    loaded = asyncio.Event()
    backend = SimulatedGenerationClient(seconds_per_job=0.05, progress_events=2, loaded=loaded)
    endings = Endings()
    dispatcher = dispatcher_for(store, backend, tmp_path, endings)
    dispatcher.start()
    killer = await queue_job(dispatcher, 1, "__crash__ a job that kills its worker")
    mates = [await queue_job(dispatcher, user, f"an innocent job {user}") for user in (2, 3)]
    loaded.set()  # all three start together, in one batch
    await endings.until(3)
    await dispatcher.stop()

    failed = await store.require(killer.id)
    assert (failed.state, failed.attempts, failed.error) == ("failed", 3, CRASHED_REPEATEDLY.format(attempts=3))
    for mate in mates:
        # Their first run died with the killer's; their second ran without it beside them and finished.
        finished = await store.require(mate.id)
        assert (finished.state, finished.attempts) == ("done", 2)
    runs = [request.job_id for request in backend.requests]
    assert [runs.count(job.id) for job in (killer, *mates)] == [3, 2, 2]
    assert backend.restarts == 3


class DiesBeforeTheFirstHandOver(SimulatedGenerationClient):
    """Says it takes jobs, but its worker is gone when the first job arrives (a death between the dispatcher's
    look at its health and the hand-over): that job comes straight back, never having run."""

    def __init__(self) -> None:
        super().__init__(seconds_per_job=0.05, progress_events=1)
        self.handed_back: list[str] = []

    async def submit(self, request: JobRequest) -> AsyncIterator[JobEvent]:
        if not self.handed_back:
            self.handed_back.append(request.job_id)
            yield JobInterrupted(request.job_id)
            return
        async for event in super().submit(request):
            yield event


async def test_a_job_that_never_reached_a_worker_costs_no_attempt(store, tmp_path):
    backend = DiesBeforeTheFirstHandOver()
    endings = Endings()
    dispatcher = dispatcher_for(store, backend, tmp_path, endings)
    dispatcher.start()
    job = await queue_job(dispatcher, 1, "a patient job")
    await endings.until(1)
    await dispatcher.stop()

    assert backend.handed_back == [job.id]
    done = await store.require(job.id)
    assert (done.state, done.attempts) == ("done", 1)
