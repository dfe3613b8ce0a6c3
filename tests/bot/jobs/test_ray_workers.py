"""The Ray backend against a real local Ray cluster (tests/ray_cluster.py: `ray start --head`, token
authentication on), with tiny models on CPU actors: two workers of one CPU each.

The first test starts with the cluster down: the bot stays up, says why it has no workers, queues /imagine, and
drains the queue once the cluster is started. Then: jobs spread over the two actors in fair order and a 256 px job
never reaches a worker that makes only 128 px; an actor killed mid-job (ray.kill) hands its job to the other
worker, which finishes it; a cancel reaches a job on a remote worker; an actor never sees DISCORD_TOKEN; the
doctor reads the cluster; and last, the cluster lost mid-job: the job goes back to the queue and is finished
once the cluster is back.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from e2e_helpers import imagine, wait_for_result
from ray_cluster import RayCluster
from test_dispatcher_backend import Endings

from bot.doctor import check_cluster
from bot.jobs.dispatcher import Dispatcher, DispatchSettings
from bot.jobs.fair_queue import FairQueue, UserCaps
from bot.jobs.files import ResultFiles
from bot.jobs.job import Job
from bot.settings import BotSettings
from generator.protocol import DreamSpec
from generator.ray_pool import RayPool, RayPoolConfig
from generator.wire import WorkerConfig

pytestmark = pytest.mark.timeout(300)

# The tests' engine (tests/worker_faults.py): "[slow=MS]" in a prompt keeps a job running for as long as a test needs,
# whatever the speed of the tiny models.
TINY = WorkerConfig(models_kind="tiny", sizes=(128,), device="cpu", clip_precision="fp32", max_batch_size=2,
                    start_retry_pauses_s=(1.0,), engine_factory="worker_faults:fault_injecting_engine")
RESULT_TIMEOUT = 150.0


def ray_pool(cluster: RayCluster, workers: int = 2) -> RayPool:
    return RayPool(RayPoolConfig(address=cluster.address, worker=TINY, gpus_per_worker=0, cpus_per_worker=1,
                                 max_workers=workers, poll_interval_s=0.5, reconnect_pauses_s=(0.5, 1.0), stop_timeout_s=10))


@pytest.fixture(scope="module")
def cluster():
    cluster = RayCluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def joined(cluster: RayCluster, monkeypatch) -> RayCluster:
    """The cluster, with this process set up to join it (the bridge it spawns reads these)."""
    for name, value in cluster.auth.items():
        monkeypatch.setenv(name, value)
    return cluster


class Starts(Endings):
    """Also records each hand-over to a worker, in order: (job id, worker id, time)."""

    def __init__(self) -> None:
        super().__init__()
        self.dispatcher: Dispatcher | None = None
        self.starts: list[tuple[str, str, float]] = []
        self.steps: dict[str, int] = {}
        self._stepped = asyncio.Event()

    def running(self, job: Job, step: int, total: int, snapshot_png: bytes | None) -> None:
        if step == 0:
            worker = self.dispatcher.in_flight_workers()[job.id]
            self.starts.append((job.id, worker.worker_id, time.monotonic()))
        self.steps[job.id] = step
        self._stepped.set()

    async def until_stepping(self, *job_ids: str) -> None:
        while not all(self.steps.get(job_id, 0) > 0 for job_id in job_ids):
            self._stepped.clear()
            await self._stepped.wait()


def dispatcher_for(store, pool: RayPool, tmp_path, sink: Starts) -> Dispatcher:
    dispatcher = Dispatcher(store=store, queue=FairQueue(), backend=pool, files=ResultFiles(tmp_path), progress=sink,
                            settings=DispatchSettings(max_attempts=3, caps=UserCaps(running=3), stop_timeout=10))
    sink.dispatcher = dispatcher
    return dispatcher


async def queue_job(dispatcher: Dispatcher, guild: int, user: int, prompt: str, *, steps: int = 3, size: int = 128) -> Job:
    return await dispatcher.enqueue(guild_id=guild, channel_id=guild, user_id=user,
                                    spec=DreamSpec(prompt, seed=user, steps=steps, size=size, cutouts=2))


async def until_workers_ready(pool: RayPool, count: int) -> None:
    while sum(worker.health().accepting_jobs for worker in pool.workers()) < count:
        await asyncio.sleep(0.2)


async def healthz(bot) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{bot.health.port}/healthz") as response:
        return response.status, await response.json()


# Runs first: the module's cluster is not started yet.
async def test_with_the_cluster_gone_at_start_the_bot_says_why_queues_and_drains_once_it_is_back(
    fake_discord, world, start_bot, joined
):
    pool = ray_pool(joined)
    bot = await start_bot(pool, health={"enabled": True, "port": 0}, worker={"sizes": (128,)})

    # The bridge process needs a moment to find nobody there; a monitor polls /healthz the same way.
    status, body = await healthz(bot)
    while "cannot be reached" not in body["worker"].get("problem", ""):
        assert body["worker"]["problem"].startswith("no workers yet: connecting to the Ray cluster"), body
        await asyncio.sleep(0.1)
        status, body = await healthz(bot)
    assert status == 503 and body["discord"]["ok"] and body["database"]["ok"], body
    assert body["worker"]["backend"] == "ray" and body["worker"]["workers"] == []
    assert body["worker"]["problem"].startswith(f"no workers: the Ray cluster at {joined.address} cannot be reached"), body
    members = [(world.channels[0], world.alice), (world.channels[1], world.carol), (world.channels[2], world.dave)]
    job_ids = []
    for channel, member in members:
        response, job_id = await imagine(fake_discord, channel, member, f"a dream of {member.name}", steps=2)
        assert job_id, response.content
        job_ids.append(job_id)

    joined.start()
    for (channel, _), job_id in zip(members, job_ids):
        await wait_for_result(fake_discord, channel, job_id, timeout=RESULT_TIMEOUT)

    # Tiny jobs can all finish on the first actor ready; the second reports its device once it is ready too.
    await asyncio.wait_for(until_workers_ready(pool, 2), RESULT_TIMEOUT)
    status, body = await healthz(bot)
    assert status == 200 and "problem" not in body["worker"], body
    workers = body["worker"]["workers"]
    assert len(workers) == 2 and all(worker["device"] == "cpu" and worker["node"] for worker in workers), workers
    assert {worker["id"] for worker in workers} == {"ray-1", "ray-2"}


async def test_jobs_spread_over_two_actors_in_fair_order_and_a_256_px_job_waits(store, tmp_path, joined, monkeypatch):
    joined.start()
    monkeypatch.setenv("DISCORD_TOKEN", "never-to-reach-an-actor")
    sink = Starts()
    pool = ray_pool(joined)
    dispatcher = dispatcher_for(store, pool, tmp_path, sink)
    dispatcher.start()
    # Server 1 queues three jobs before servers 2 and 3 queue one each; no actor is ready yet. Each job takes at least
    # 2 s: the actor ready first is still busy when the second gets ready (the two start within a second of each other).
    slow = " [slow=50]"
    jobs = [await queue_job(dispatcher, 1, 11, f"one-{n}{slow}", steps=40) for n in range(3)]
    jobs += [await queue_job(dispatcher, 2, 21, f"two{slow}", steps=40), await queue_job(dispatcher, 3, 31, f"three{slow}", steps=40)]
    large = await queue_job(dispatcher, 3, 32, "too large for these workers", size=256)
    try:
        await asyncio.wait_for(sink.until(len(jobs)), RESULT_TIMEOUT)
        names = [worker.worker_id for worker in pool.workers()]
        sees = [joined.ask_actor(name, "sees_variable", variable) for name in names for variable in ("DISCORD_TOKEN", "PATH")]
    finally:
        await dispatcher.stop()

    prompt_of = {job.id: job.spec.prompt.removesuffix(slow) for job in jobs}
    assert [prompt_of[job_id] for job_id, _, _ in sink.starts] == ["one-0", "two", "three", "one-1", "one-2"]
    assert {worker for _, worker, _ in sink.starts} == {"ray-1", "ray-2"}
    assert all(state == "done" for state in sink.ended.values())
    assert (await store.require(large.id)).state == "queued" and large.id not in sink.steps
    assert sees == ["False", "True"] * 2


async def test_a_killed_actor_hands_its_job_to_the_other_worker_and_a_cancel_reaches_a_remote_job(store, tmp_path, joined):
    joined.start()
    sink = Starts()
    pool = ray_pool(joined)
    dispatcher = dispatcher_for(store, pool, tmp_path, sink)
    dispatcher.start()
    try:
        await asyncio.wait_for(until_workers_ready(pool, 2), RESULT_TIMEOUT)
        victim = await queue_job(dispatcher, 1, 1, "its actor is killed [slow=50]", steps=200)
        cancelled = await queue_job(dispatcher, 2, 2, "cancelled on its remote worker [slow=50]", steps=200)
        await asyncio.wait_for(sink.until_stepping(victim.id, cancelled.id), 60)
        placed = {job_id: worker for job_id, worker, _ in sink.starts}
        assert placed[victim.id] != placed[cancelled.id]  # one job per worker: the most free slots first

        assert (await dispatcher.cancel(cancelled.id)).state == "cancelled"
        holder = next(worker for worker in pool.workers() if worker.worker_id == placed[cancelled.id])
        while cancelled.id in holder.health().in_flight_jobs:  # until the actor confirms
            await asyncio.sleep(0.1)

        killed_at = time.monotonic()
        await asyncio.to_thread(joined.kill_actor, placed[victim.id])
        await asyncio.wait_for(sink.until(2), RESULT_TIMEOUT)
    finally:
        await dispatcher.stop()

    runs = [(worker, at) for job_id, worker, at in sink.starts if job_id == victim.id]
    assert [worker for worker, _ in runs] == [placed[victim.id], placed[cancelled.id]]
    assert runs[1][1] - killed_at < 10.0  # found dead and handed over within 10 s
    finished = await store.require(victim.id)
    assert (finished.state, finished.attempts, finished.png_path is not None) == ("done", 2, True)
    assert (await store.require(cancelled.id)).state == "cancelled"
    assert sink.ended == {victim.id: "done", cancelled.id: "cancelled"}


def test_the_doctor_says_what_the_cluster_offers_and_that_token_authentication_is_on(joined):
    joined.start()
    settings = BotSettings(worker={"backend": "ray"}, cluster={"address": joined.address, "gpus_per_worker": 0,
                                                               "max_workers": 2})

    auth, offered = check_cluster(settings)

    assert (auth.status, offered.status) == ("OK", "OK"), (auth, offered)
    assert "RAY_AUTH_MODE=token" in auth.detail
    assert f"the Ray cluster at {joined.address} answers: 1 node(s), 0 GPU(s), 4 CPU(s); room for 2 worker(s)" in offered.detail


# Runs last: it crashes the module's cluster and starts it again. One worker, so that the job cannot move to a
# second worker of the cluster that is going down (it would, and be charged for that run too).
async def test_a_cluster_lost_mid_job_gives_its_jobs_back_and_work_resumes_when_it_returns(store, tmp_path, joined):
    joined.start()
    sink = Starts()
    pool = ray_pool(joined, workers=1)
    dispatcher = dispatcher_for(store, pool, tmp_path, sink)
    dispatcher.start()
    try:
        await asyncio.wait_for(until_workers_ready(pool, 1), RESULT_TIMEOUT)
        job = await queue_job(dispatcher, 1, 1, "its cluster goes away [slow=50]", steps=200)
        await asyncio.wait_for(sink.until_stepping(job.id), 60)
        lost_at = time.monotonic()
        await asyncio.to_thread(joined.crash)

        async def until_queued_again() -> None:
            while (await store.require(job.id)).state != "queued":
                await asyncio.sleep(0.1)

        async def until_unreachable() -> None:
            while "cannot be reached" not in (pool.health().problem or ""):
                await asyncio.sleep(0.1)

        await asyncio.wait_for(until_queued_again(), 60)
        given_back = time.monotonic() - lost_at
        await asyncio.wait_for(until_unreachable(), 60)
        assert pool.workers() == [] and not dispatcher.backend_ready

        await asyncio.to_thread(joined.start)
        await asyncio.wait_for(sink.until(1), RESULT_TIMEOUT)
        back = pool.health()
    finally:
        await dispatcher.stop()

    assert given_back < 10.0
    finished = await store.require(job.id)
    assert (finished.state, finished.attempts) == ("done", 2)
    assert back.problem is None and [worker.worker_id for worker in back.workers] == ["ray-2"]
