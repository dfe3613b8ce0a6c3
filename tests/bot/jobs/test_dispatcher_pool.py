"""The dispatcher with several workers (a pool of simulated ones): it stays the one scheduler. Jobs spread over the
workers, start in fair order whichever worker takes them, go only to a worker that makes their size and has a
free slot, come back and finish on another worker when theirs dies (one attempt charged), and a cancel reaches
the worker that holds the job. The same scenarios run on real processes and Ray actors in test_local_workers.py
and test_ray_workers.py."""

from __future__ import annotations

import asyncio

import pytest
from test_dispatcher_backend import Endings

from bot.jobs.dispatcher import Dispatcher, DispatchSettings
from bot.jobs.fair_queue import FairQueue, UserCaps
from bot.jobs.files import ResultFiles
from bot.jobs.simulated import SimulatedGenerationClient
from generator.pool import StaticPool
from generator.protocol import DreamSpec, JobRequest

pytestmark = pytest.mark.timeout(30)


class Recorded(SimulatedGenerationClient):
    """A simulated worker that writes each job it is given into a list shared by the pool, in hand-over order."""

    def __init__(self, handed: list[tuple[str, str]], worker_id: str, **options) -> None:
        super().__init__(worker_id=worker_id, **options)
        self.handed = handed
        # Each job handed to it, with the jobs it held already.
        self.beside: list[tuple[str, frozenset[str]]] = []

    def submit(self, request: JobRequest):
        self.handed.append((self.worker_id, request.job_id))
        self.beside.append((request.job_id, frozenset(self._running)))
        return super().submit(request)


def pool_of(*workers: SimulatedGenerationClient) -> StaticPool:
    return StaticPool(list(workers))


def dispatcher_for(store, pool, tmp_path, endings, caps: UserCaps | None = None) -> Dispatcher:
    return Dispatcher(store=store, queue=FairQueue(), backend=pool, files=ResultFiles(tmp_path), progress=endings,
                      settings=DispatchSettings(max_attempts=3, caps=caps or UserCaps(running=5)))


async def queue_job(dispatcher: Dispatcher, guild: int, user: int, prompt: str, size: int = 128):
    return await dispatcher.enqueue(guild_id=guild, channel_id=guild, user_id=user,
                                    spec=DreamSpec(prompt, seed=user, steps=10, size=size))


async def test_jobs_spread_over_the_workers_and_start_in_fair_order_across_them(store, tmp_path):
    loaded = asyncio.Event()
    handed: list[tuple[str, str]] = []
    workers = [Recorded(handed, name, seconds_per_job=0.2, progress_events=1, loaded=loaded, max_batch_size=1)
               for name in ("w1", "w2")]
    endings = Endings()
    dispatcher = dispatcher_for(store, pool_of(*workers), tmp_path, endings)
    dispatcher.start()
    # Server 1 queues three jobs before servers 2 and 3 queue one each: fair order takes turns between servers.
    jobs = [await queue_job(dispatcher, 1, 11, f"one-{n}") for n in range(3)]
    jobs += [await queue_job(dispatcher, 2, 21, "two"), await queue_job(dispatcher, 3, 31, "three")]
    loaded.set()
    await endings.until(5)
    await dispatcher.stop()

    by_id = {job.id: job.spec.prompt for job in jobs}
    assert [by_id[job_id] for _, job_id in handed] == ["one-0", "two", "three", "one-1", "one-2"]
    # One slot each: the first two went out together, one to each worker, and both workers made images.
    assert {worker for worker, _ in handed[:2]} == {"w1", "w2"}
    assert all(worker.completed >= 2 for worker in workers)


async def test_a_job_only_goes_to_a_worker_that_makes_its_size(store, tmp_path):
    handed: list[tuple[str, str]] = []
    small = Recorded(handed, "small", seconds_per_job=0.05, progress_events=1, sizes=(128,), max_batch_size=2)
    large = Recorded(handed, "large", seconds_per_job=0.05, progress_events=1, sizes=(128, 256), max_batch_size=2)
    endings = Endings()
    dispatcher = dispatcher_for(store, pool_of(small, large), tmp_path, endings)
    dispatcher.start()
    jobs = [await queue_job(dispatcher, 1, user, f"job {user}", size=256 if user % 2 else 128) for user in range(1, 9)]
    await endings.until(len(jobs))
    await dispatcher.stop()

    size_of = {job.id: job.size for job in jobs}
    assert all(size_of[job_id] == 128 for worker, job_id in handed if worker == "small")
    assert {worker for worker, job_id in handed if size_of[job_id] == 256} == {"large"}
    assert all(state == "done" for state in endings.ended.values())


async def test_a_user_whose_first_job_has_no_slot_starts_one_that_has(store, tmp_path):
    handed: list[tuple[str, str]] = []
    small = Recorded(handed, "small", seconds_per_job=0.05, progress_events=1, sizes=(128,), max_batch_size=1)
    endings = Endings()
    dispatcher = dispatcher_for(store, pool_of(small), tmp_path, endings)
    dispatcher.start()
    large = await queue_job(dispatcher, 1, 1, "no worker makes 512 px", size=512)
    fits = await queue_job(dispatcher, 1, 1, "but this one fits")
    await endings.until(1)
    await dispatcher.stop()

    assert handed == [("small", fits.id)]
    assert (await store.require(large.id)).state == "queued" and dispatcher.position(large.id) == 1


async def test_a_job_whose_worker_dies_finishes_on_another_charged_one_attempt(store, tmp_path):
    handed: list[tuple[str, str]] = []
    dying = Recorded(handed, "dying", seconds_per_job=0.3, progress_events=2, max_batch_size=1)
    healthy = Recorded(handed, "healthy", seconds_per_job=0.05, progress_events=1, max_batch_size=1)
    endings = Endings()
    dispatcher = dispatcher_for(store, pool_of(dying, healthy), tmp_path, endings)
    dispatcher.start()
    dying.hold()
    job = await queue_job(dispatcher, 1, 1, "caught mid-run")
    await asyncio.wait_for(dying.wait_until_holding(1), 5)
    dying.die("its process was killed")
    await endings.until(1)
    await dispatcher.stop()

    assert handed == [("dying", job.id), ("healthy", job.id)]
    finished = await store.require(job.id)
    assert (finished.state, finished.attempts, finished.png_path is not None) == ("done", 2, True)


async def test_no_two_jobs_whose_worker_died_share_a_worker(store, tmp_path):
    handed: list[tuple[str, str]] = []
    workers = [Recorded(handed, name, seconds_per_job=0.05, progress_events=2, max_batch_size=4) for name in ("a", "b")]
    endings = Endings()
    dispatcher = dispatcher_for(store, pool_of(*workers), tmp_path, endings)
    dispatcher.start()
    # Each kills its worker once in its first run: on their second runs they are suspects, one per worker.
    killers = [await queue_job(dispatcher, 1, user, f"__crash__ {user}") for user in (1, 2, 3)]
    await endings.until(3)
    await dispatcher.stop()

    # A job on its second or third run never joined a worker holding another such job.
    beside = {worker.worker_id: iter(worker.beside) for worker in workers}
    runs: dict[str, int] = {}
    for worker, job_id in handed:
        _, held = next(beside[worker])
        runs[job_id] = runs.get(job_id, 0) + 1
        if runs[job_id] > 1:
            assert all(runs.get(other, 0) < 2 for other in held), (job_id, held, runs)
    assert sorted(runs.values()) == [3, 3, 3]
    for killer in killers:
        failed = await store.require(killer.id)
        assert (failed.state, failed.attempts) == ("failed", 3)


async def test_a_cancel_reaches_the_worker_that_holds_the_job(store, tmp_path):
    handed: list[tuple[str, str]] = []
    workers = [Recorded(handed, name, seconds_per_job=0.2, progress_events=1, max_batch_size=1) for name in ("a", "b")]
    for worker in workers:
        worker.hold()
    endings = Endings()
    dispatcher = dispatcher_for(store, pool_of(*workers), tmp_path, endings)
    dispatcher.start()
    first = await queue_job(dispatcher, 1, 1, "first")
    second = await queue_job(dispatcher, 2, 2, "second")
    for worker in workers:
        await asyncio.wait_for(worker.wait_until_holding(1), 5)
    holder = dict((job_id, worker) for worker, job_id in handed)[second.id]
    assert (await dispatcher.cancel(second.id)).state == "cancelled"
    other = next(worker for worker in workers if worker.worker_id != holder)
    await asyncio.wait_for(other.wait_until_holding(1), 5)  # the first job still runs there
    for worker in workers:
        worker.release()
    await endings.until(2)
    await dispatcher.stop()

    assert endings.ended == {first.id: "done", second.id: "cancelled"}
    assert next(worker for worker in workers if worker.worker_id == holder).completed == 0


async def test_queue_waits_with_no_worker_and_eta_counts_every_workers_slots(store, tmp_path):
    workers = [SimulatedGenerationClient(worker_id=name, max_batch_size=3) for name in ("a", "b")]
    dispatcher = dispatcher_for(store, pool_of(*workers), tmp_path, Endings())
    assert not dispatcher.backend_ready and dispatcher.pool_health().state == "not started"
    for worker in workers:
        await worker.start()
    # Six slots over two workers: the seventh job in line waits for one typical job (120 s by default).
    assert dispatcher.estimate_wait(7) == pytest.approx(120.0)
    assert dispatcher.estimate_wait(6) == 0.0
