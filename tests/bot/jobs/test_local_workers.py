"""Several local worker processes (worker.devices = ["cpu", "cpu"]: two real generation processes, tiny models, a
thread each): jobs spread over them in fair order, a 256 px job only reaches the worker that makes 256 px, a
cancel reaches a job on either; and through the fake Discord, jobs from several servers get their images while
one worker process is killed mid-job, its job finishing on the other, with /queue saying which worker runs what.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace

import pytest
from e2e_helpers import imagine, png_size, result_png, wait_for_result
from test_ray_workers import Starts, dispatcher_for, queue_job

from bot.app import generation_backend_for
from bot.jobs.job import Job
from bot.settings import BotSettings, WorkerSettings
from generator.client import GenerationClient
from generator.pool import StaticPool, local_configs
from generator.wire import WorkerConfig

pytestmark = pytest.mark.timeout(300)

TINY = WorkerConfig(models_kind="tiny", sizes=(128,), device="cpu", clip_precision="fp32", max_batch_size=2,
                    heartbeat_interval_s=0.5)
RESULT_TIMEOUT = 150.0


async def test_two_processes_share_the_work_in_fair_order_by_size_and_take_cancels(store, tmp_path):
    small, versatile = local_configs(TINY, ["cpu", "cpu"])
    pool = StaticPool([GenerationClient(small), GenerationClient(replace(versatile, sizes=(128, 256)))])
    assert (small.torch_threads, versatile.torch_threads) == (1, 1)  # two CPU workers on 2 cores: a core each
    sink = Starts()
    dispatcher = dispatcher_for(store, pool, tmp_path, sink)
    dispatcher.start()
    jobs: list[Job] = [await queue_job(dispatcher, 1, 11, f"one-{n}") for n in range(3)]
    jobs += [await queue_job(dispatcher, 2, 21, "two-large", size=256), await queue_job(dispatcher, 3, 31, "three")]
    cancelled = await queue_job(dispatcher, 4, 41, "cancelled while it runs", steps=400)
    try:
        await asyncio.wait_for(sink.until_stepping(cancelled.id), 120)
        assert (await dispatcher.cancel(cancelled.id)).state == "cancelled"
        await asyncio.wait_for(sink.until(len(jobs) + 1), 120)
    finally:
        await dispatcher.stop()

    prompt_of = {job.id: job.spec.prompt for job in jobs} | {cancelled.id: "cancelled"}
    started = [(prompt_of[job_id], worker) for job_id, worker, _ in sink.starts]
    assert [prompt for prompt, _ in started] == ["one-0", "two-large", "three", "cancelled", "one-1", "one-2"]
    assert {worker for _, worker in started} == {"local-0", "local-1"}
    assert dict(started)["two-large"] == "local-1"  # the only worker that makes 256 px
    assert sink.ended == {**{job.id: "done" for job in jobs}, cancelled.id: "cancelled"}


async def test_through_discord_a_worker_killed_mid_job_still_gets_every_image_posted(fake_discord, world, start_bot, data_dir):
    overrides = {"worker": {"devices": ("cpu", "cpu"), "sizes": (128,), "max_batch_size": 2, "snapshots_per_job": 2},
                 "limits": {"max_cutouts": 2, "default_steps": 3}}
    settings = BotSettings(data_dir=data_dir, models="tiny", device="cpu", worker=WorkerSettings(**overrides["worker"]),
                           limits={"default_size": 128, **overrides["limits"]})
    pool = generation_backend_for(settings)
    assert [worker.health().worker_id for worker in pool.workers()] == ["local-0", "local-1"]
    bot = await start_bot(pool, **overrides)

    members = [(world.channels[0], world.alice), (world.channels[0], world.bob), (world.channels[1], world.carol),
               (world.channels[2], world.dave)]
    # Still running after a progress message and a /queue: 300 steps are seconds of the tiny models (one thread each;
    # 80 steps took about a second once the tiny preset got quicker). The bot's workers cannot load the tests' engine.
    _, doomed = await imagine(fake_discord, world.channels[0], world.alice, "its worker is killed", steps=300)
    await fake_discord.wait_for_message(world.channels[0], lambda m: "killed" in m.content and "%) step" in m.content,
                                        timeout=RESULT_TIMEOUT)
    queue = await (await fake_discord.invoke_command(world.channels[0], world.alice, "queue")).wait_response()
    now = next(field["value"] for embed in queue.embeds for field in embed["fields"] if field["name"] == "Now")
    holder = next(health for health in bot.dispatcher.pool_health().workers if doomed in health.in_flight_jobs)
    assert f"`{doomed}`" in now and f"on `{holder.worker_id}` (cpu, " in now, now

    os.kill(holder.pid, signal.SIGKILL)
    others = []
    for channel, member in members:
        _, job_id = await imagine(fake_discord, channel, member, f"a dream of {member.name}", steps=3)
        others.append((channel, job_id))
    final = await wait_for_result(fake_discord, world.channels[0], doomed, timeout=RESULT_TIMEOUT)
    for channel, job_id in others:
        await wait_for_result(fake_discord, channel, job_id, timeout=RESULT_TIMEOUT)

    assert png_size(result_png(final, doomed)) == (128, 128)
    job = await bot.store.get(doomed)
    assert (job.state, job.attempts) == ("done", 2)
    assert bot.dispatcher.pool_health().restarts == 1  # the killed process was replaced
