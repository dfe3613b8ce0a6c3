"""The bot with the REAL generation worker process (tiny models, CPU) against the fake Discord.

Kept few and small (128 px, 2 cutouts, a handful of steps): a tiny-model step takes about a second on a busy
2-core machine, and each worker start imports torch in a new process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import signal

import aiohttp
import pytest
from e2e_helpers import imagine, png_size, result_png, wait_for_result
from fakediscord import FakeDiscord, Upload
from pictures import picture
from prometheus_client.parser import text_string_to_metric_families
from worker_faults import START_FAULTS_VARIABLE, start_faults

from bot.database import Database
from bot.jobs.ports import GenerationBackend
from bot.jobs.store import JobStore
from generator.client import GenerationClient
from generator.protocol import JobRequest
from generator.wire import WorkerConfig

pytestmark = pytest.mark.timeout(300)

RESULT_TIMEOUT = 150.0
TINY_NOTE = "Made with the tiny test models: this is noise, not your prompt."
REAL_SETTINGS = {
    "worker": {"max_batch_size": 2, "sizes": (128,), "snapshots_per_job": 2},
    "limits": {"max_cutouts": 2, "default_steps": 2, "default_size": 128},
    "progress": {"edit_interval_seconds": 0.5},
}


def real_client(**changes) -> GenerationClient:
    defaults = dict(
        models_kind="tiny",
        sizes=(128,),
        device="cpu",
        clip_precision="fp32",
        max_batch_size=2,
        # A tiny step can take seconds on a busy shared machine.
        heartbeat_interval_s=0.5,
        heartbeat_timeout_s=30.0,
    )
    return GenerationClient(WorkerConfig(**{**defaults, **changes}))


class StartsWhenReleased:
    """The real client, declared ready only when the test says so: every job is queued before the first one
    starts, so the order they run in is the fair queue's alone."""

    def __init__(self, inner: GenerationClient) -> None:
        self.inner = inner
        self.gate = asyncio.Event()

    async def start(self) -> None:
        await self.inner.start()
        await self.gate.wait()

    def submit(self, request: JobRequest):
        return self.inner.submit(request)

    async def cancel(self, job_id: str) -> bool:
        return await self.inner.cancel(job_id)

    async def stop(self, timeout: float) -> None:
        await self.inner.stop(timeout)

    def health(self):
        return self.inner.health()

    async def wait_until_accepting(self) -> None:
        await self.inner.wait_until_accepting()


async def started_order(store: JobStore, job_ids: dict[str, str]) -> list[str]:
    prompt_of = {job_id: prompt for prompt, job_id in job_ids.items()}
    jobs = [await store.require(job_id) for job_id in job_ids.values()]
    return [prompt_of[job.id] for job in sorted(jobs, key=lambda job: job.started_at)]


async def test_three_servers_get_real_images_in_fair_order_within_discords_rules(fake_discord: FakeDiscord, world, start_bot):
    backend: GenerationBackend = StartsWhenReleased(real_client())
    bot = await start_bot(backend, **REAL_SETTINGS)

    submitted = {}
    for channel, member, prompt in [
        (world.channels[0], world.alice, "a1 a red apple"),
        (world.channels[0], world.alice, "a2 a green pear"),
        (world.channels[0], world.alice, "a3 a yellow lemon"),
        (world.channels[0], world.bob, "b1 a blue boat"),
        (world.channels[1], world.carol, "c1 a castle"),
        (world.channels[1], world.carol, "c2 a cloud"),
        (world.channels[2], world.dave, "d1 a quiet pond"),
    ]:
        response, job_id = await imagine(fake_discord, channel, member, prompt)
        assert job_id and "starting in" in response.content, response.content
        submitted[prompt.split()[0]] = job_id
    # Every interaction token expires before any job ends; a 429 hits the first progress edit in server 2.
    fake_discord.clock.advance(15 * 60 + 1)
    rate_limit = fake_discord.rate_limit_next(f"/channels/{world.channels[1].id}/messages/", retry_after=0.3, method="PATCH")
    backend.gate.set()

    channel_of = {"a": 0, "b": 0, "c": 1, "d": 2}
    results = {}
    for prompt, job_id in submitted.items():
        results[prompt] = await wait_for_result(fake_discord, world.channels[channel_of[prompt[0]]], job_id, timeout=RESULT_TIMEOUT)

    for prompt, message in results.items():
        assert png_size(result_png(message, submitted[prompt])) == (128, 128)
    # Servers take turns, then the users within a server.
    assert await started_order(bot.store, submitted) == ["a1", "c1", "d1", "b1", "c2", "a2", "a3"]
    # Progress edits arrived, never closer together than the interval. Tiny models draw noise, and every
    # progress and result message made with them says so.
    for message in results.values():
        assert any("%) step" in version.content for version in message.versions)
        assert all(TINY_NOTE in version.content for version in message.versions if "%) step" in version.content)
        assert TINY_NOTE in message.content
        times = [version.at for version in message.versions]
        assert all(later - earlier >= 0.5 * 0.95 for earlier, later in itertools.pairwise(times)), times
    assert rate_limit.hits == 1
    assert fake_discord.requests_matching(status=401) == []


class RecordsRequests(StartsWhenReleased):
    """The real client, ready at once, keeping every request it was given."""

    def __init__(self, inner: GenerationClient) -> None:
        super().__init__(inner)
        self.gate.set()
        self.requests: list[JobRequest] = []

    def submit(self, request: JobRequest):
        self.requests.append(request)
        return self.inner.submit(request)


async def test_an_uploaded_picture_reaches_the_real_worker_with_the_job(fake_discord: FakeDiscord, world, start_bot):
    backend = RecordsRequests(real_client())
    bot = await start_bot(backend, **REAL_SETTINGS)

    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a cat", steps=2,
                              image=Upload("cat.jpg", picture(300, 200, format="JPEG")))
    final = await wait_for_result(fake_discord, world.channel, job_id, timeout=RESULT_TIMEOUT)

    [image] = (await bot.store.get(job_id)).spec.image_prompts
    [request] = backend.requests
    assert request.spec.image_prompts[0].png == bot.files.read(image.key)
    assert png_size(request.spec.image_prompts[0].png) == (300, 200)
    assert png_size(result_png(final, job_id)) == (128, 128)
    assert f"{job_id}-prompts.png" in [attachment.filename for attachment in final.attachments]


async def test_a_job_survives_a_restart_mid_run_and_its_buttons_work_after_it(fake_discord, world, bot_runner, make_bot):
    def slow_device_client() -> GenerationClient:
        return real_client(engine_factory="worker_faults:fault_injecting_engine")

    first_bot = await bot_runner.start(make_bot(slow_device_client(), **REAL_SETTINGS))
    # Each step takes 0.7 s, as on a slow device: the job is still running when the bot stops.
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a phoenix rising [slow=700]", steps=6)
    progress = await fake_discord.wait_for_message(
        world.channel, lambda m: "phoenix" in m.content and re.search(r"step [1-5]/6", m.content), timeout=RESULT_TIMEOUT
    )

    await bot_runner.stop(first_bot)
    async with Database.open(first_bot.settings.database_path) as database:
        interrupted = await JobStore(database).require(job_id)
    # Handed back by a clean stop: not the job's fault, so it has used none of its attempts.
    assert (interrupted.state, interrupted.attempts) == ("queued", 0)

    bot = await bot_runner.start(make_bot(slow_device_client(), **REAL_SETTINGS))
    final = await wait_for_result(fake_discord, world.channel, job_id, timeout=RESULT_TIMEOUT)
    assert final.id == progress.id  # the same message, found again by the new process
    assert png_size(result_png(final, job_id)) == (128, 128)
    original = await bot.store.get(job_id)
    assert original.attempts == 1

    # Variations start from the saved latents of the result; its progress message is deleted on the way.
    click = await fake_discord.click_button(world.alice, final, f"bs:vary:{job_id}")
    vary_id = (await click.wait_response()).content.split("`")[1]
    waiting = await fake_discord.wait_for_message(world.channel, lambda m: m.id != final.id and "phoenix" in m.content)
    fake_discord.delete_message(world.channel, waiting)
    varied = await wait_for_result(fake_discord, world.channel, vary_id, timeout=RESULT_TIMEOUT)

    variation = await bot.store.get(vary_id)
    assert varied.id != waiting.id
    assert (variation.kind, variation.parent_job_id, variation.init_latents_path) == ("variation", job_id, original.latents_path)
    assert variation.steps == round(6 * 0.4) and variation.spec.init_noise == pytest.approx(0.3)
    assert png_size(result_png(varied, vary_id)) == (128, 128)


async def test_a_worker_that_fails_to_start_then_dies_mid_job_loses_no_job_and_counts_each_process_once(
    fake_discord, world, start_bot, tmp_path, monkeypatch, caplog
):
    """The first worker dies while loading, so the next starts at once; its models fail to load, so the client
    pauses before the third (as if an admin fixed the weights meanwhile). The bot stays up and queues jobs all
    along, and no job is failed or charged for it. Then the worker is killed mid-job: that job is charged the
    run it lost, runs again and finishes; the job waiting behind it is charged nothing. /healthz and /metrics
    count each replacement process once."""
    plan = tmp_path / "start-faults"
    starts = start_faults(plan, ["exit", "raise"])
    monkeypatch.setenv(START_FAULTS_VARIABLE, str(plan))
    caplog.set_level(logging.ERROR, logger="bigsleep.client")
    # One job at a time: the worker's own batch size decides how many jobs it is handed.
    client = real_client(engine_factory="worker_faults:engine_after_start_faults", start_retry_pauses_s=(0.2,),
                         max_batch_size=1)
    bot = await start_bot(client, health={"enabled": True, "port": 0}, **REAL_SETTINGS)

    # 0.15 s a step, as on a slow device: still running when the process is killed after step 12 at the latest.
    _, killed_id = await imagine(fake_discord, world.channel, world.alice, "a phoenix rising [slow=150]", steps=16)
    _, spared_id = await imagine(fake_discord, world.channel, world.bob, "a quiet pond")
    await fake_discord.wait_for_message(
        world.channel, lambda m: "phoenix" in m.content and re.search(r"step ([1-9]|1[0-2])/16", m.content),
        timeout=RESULT_TIMEOUT,
    )
    running = client.health()
    os.kill(running.pid, signal.SIGKILL)
    await wait_for_result(fake_discord, world.channel, killed_id, timeout=RESULT_TIMEOUT)
    await wait_for_result(fake_discord, world.channel, spared_id, timeout=RESULT_TIMEOUT)

    assert [(await bot.store.require(job_id)).attempts for job_id in (killed_id, spared_id)] == [2, 1]
    retries = [record.getMessage().rsplit("; ", 1)[-1] for record in caplog.records if "failed to start" in record.getMessage()]
    assert retries == ["trying again now", "trying again in 0.2 s"]
    # Four processes: two that failed to start, the one killed, its replacement.
    assert len(starts.read_text().split()) == 4
    assert running.restarts == 2
    base = f"http://127.0.0.1:{bot.health.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as response:
            worker = json.loads(await response.text())["worker"]
        async with session.get(f"{base}/metrics") as response:
            exposition = await response.text()
    assert (worker["state"], worker["restarts"]) == ("ready", 3)
    restarts = [sample.value for family in text_string_to_metric_families(exposition) for sample in family.samples
                if sample.name == "bigsleep_worker_restarts_total"]
    assert restarts == [3]
