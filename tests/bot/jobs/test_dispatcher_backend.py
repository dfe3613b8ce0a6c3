"""The dispatcher against the simulated backend, through its public API (enqueue, start, cancel, stop) and the
store: it hands out jobs only while the backend takes them, charges an attempt only for a run on a worker, runs
a job whose worker died again alone, so a job that kills every worker fails by itself and nothing else is lost,
and charges the GPU time of every run. A cancel that lands while a job is handed to the worker, or back to the
queue, stops it there: it never reaches the worker, or never takes a place in the queue again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.database import Database
from bot.jobs.dispatcher import CRASHED_REPEATEDLY, Dispatcher, DispatchSettings
from bot.jobs.fair_queue import FairQueue, UserCaps
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


class MinuteSteps(Endings):
    """Each progress event of a job moves the store's clock on by a minute: a run lasts a minute per step."""

    def __init__(self, clock) -> None:
        super().__init__()
        self.clock = clock

    def running(self, job: Job, step: int, total: int, snapshot_png: bytes | None) -> None:
        if step:
            self.clock.advance(60)


class PausingStore(JobStore):
    """Once its `pause_after` method (mark_running or requeue) has written its change, it waits for `go_on()`:
    a test catches the dispatcher halfway through handing a job to the worker, or back to the queue."""

    def __init__(self, database: Database, clock, pause_after: str) -> None:
        super().__init__(database, clock=clock)
        self.pause_after = pause_after
        self.paused = asyncio.Event()
        self._going_on = asyncio.Event()

    def go_on(self) -> None:
        self._going_on.set()

    async def _pause(self, method: str) -> None:
        if method == self.pause_after and not self._going_on.is_set():
            self.paused.set()
            await self._going_on.wait()

    async def mark_running(self, job_id: str) -> Job:
        job = await super().mark_running(job_id)
        await self._pause("mark_running")
        return job

    async def requeue(self, job_id: str, **options) -> Job:
        job = await super().requeue(job_id, **options)
        await self._pause("requeue")
        return job


def dispatcher_for(store: JobStore, backend, files_dir, endings: Endings, caps: UserCaps | None = None) -> Dispatcher:
    return Dispatcher(
        store=store, queue=FairQueue(), backend=backend, files=ResultFiles(files_dir), progress=endings,
        settings=DispatchSettings(max_in_flight=4, max_attempts=3, caps=caps or UserCaps()),
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


async def test_a_job_that_kills_every_worker_costs_the_gpu_time_of_every_run(store, clock, tmp_path):
    backend = SimulatedGenerationClient(seconds_per_job=0.05, progress_events=2)
    endings = MinuteSteps(clock)
    dispatcher = dispatcher_for(store, backend, tmp_path, endings)
    dispatcher.start()
    killer = await queue_job(dispatcher, 1, "__crash__ an expensive job")
    await endings.until(1)
    await dispatcher.stop()

    # Three runs of a minute each, every one ended by the worker's death: the server's GPU budget is charged three.
    failed = await store.require(killer.id)
    assert (failed.state, failed.attempts, backend.restarts) == ("failed", 3, 3)
    assert (failed.gpu_seconds, failed.gpu_spent_at) == (180.0, clock())


async def test_a_cancel_during_the_hand_over_keeps_the_job_from_the_worker(database, clock, tmp_path):
    store = PausingStore(database, clock, pause_after="mark_running")
    backend = SimulatedGenerationClient(seconds_per_job=0.05, progress_events=1)
    endings = Endings()
    dispatcher = dispatcher_for(store, backend, tmp_path, endings)
    dispatcher.start()
    job = await queue_job(dispatcher, 1, "cancelled on its way to the worker")
    await store.paused.wait()  # marked running, not handed to the worker yet
    assert (await dispatcher.cancel(job.id)).state == "cancelled"
    store.go_on()
    await dispatcher.stop()  # once the job's own task has ended

    assert backend.requests == []
    assert (await store.require(job.id)).state == "cancelled" and endings.ended == {job.id: "cancelled"}


async def test_a_job_cancelled_while_being_handed_back_takes_no_place_in_the_queue(database, clock, tmp_path):
    store = PausingStore(database, clock, pause_after="requeue")
    backend = SimulatedGenerationClient(seconds_per_job=0.05, progress_events=2)
    one_waiting = UserCaps(queued=1)
    dispatcher = dispatcher_for(store, backend, tmp_path, Endings(), caps=one_waiting)
    dispatcher.start()
    job = await queue_job(dispatcher, 1, "__crash__ handed back, then cancelled")
    await store.paused.wait()  # its worker died: queued again in the store, not yet in the fair queue
    assert (await dispatcher.cancel(job.id)).state == "cancelled"
    store.go_on()
    await dispatcher.stop()  # once the job's own task has ended

    assert job.id not in dispatcher.queue and len(dispatcher.queue) == 0
    assert dispatcher.queue.admit(1, one_waiting)  # its owner may queue another job
    assert (await store.require(job.id)).state == "cancelled" and len(backend.requests) == 1
