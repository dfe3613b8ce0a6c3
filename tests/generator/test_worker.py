"""The generation worker with real processes and the tiny models.

One client (and worker process) serves the whole module, because starting one loads the models (seconds on a
CPU). Faults come from `worker_faults` (markers in prompts around the real engine), so faulty and normal jobs
share that worker. Every test leaves the client idle; the shutdown test stops it and so comes last.

No test waits by sleeping: each one awaits the events it needs.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable

import numpy as np
import psutil
import pytest
import pytest_asyncio
from PIL import Image

from generator.client import GenerationClient, JobEvents
from generator.protocol import (
    DreamSpec,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobInterrupted,
    JobProgress,
    JobRequest,
    JobResult,
)
from generator.wire import WorkerConfig

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

HANG_TIMEOUT_S = 10.0
CONFIG = WorkerConfig(
    models_kind="tiny",
    sizes=(128,),
    device="cpu",
    clip_precision="fp32",
    max_batch_size=2,
    hang_timeout_s=HANG_TIMEOUT_S,
    heartbeat_interval_s=0.5,
    # Generous: a step of the tiny models takes up to a few seconds on a busy 2-core machine.
    heartbeat_timeout_s=15.0,
    engine_factory="worker_faults:fault_injecting_engine",
)
# The engine is not bitwise batch-invariant: on this CPU even BigGAN's first linear layer rounds differently
# for 2 images than for 1 (about 1e-7), and the optimisation can amplify that (Adam's first steps are nearly
# sign steps; the loss has kinks: clamp, abs, top-k, ReLU). Measured with these tiny models, 2 cutouts, 2-5
# steps, 12 jobs alone vs batched: mean 0-0.47 levels and 99th percentile 0-3 levels for 11 of them, max up
# to 21 levels at a few pixels; one outlier seed reached mean 2.35 (not used here). The stated tolerance, in
# 8-bit levels: the mean difference is at most 1 level and 99 % of pixel values differ by at most 4 levels.
MEAN_LEVELS_TOLERANCE = 1.0
P99_LEVELS_TOLERANCE = 4


def dream(prompt: str, seed: int, steps: int, **changes) -> DreamSpec:
    return DreamSpec(prompt=prompt, seed=seed, steps=steps, size=128, cutouts=2, **changes)


APPLE = dream("a red apple", seed=11, steps=5)
PEAR = dream("a green pear", seed=22, steps=2)
LONG = dream("a very long dream", seed=33, steps=60)
_job_numbers = itertools.count(1)


def request(spec: DreamSpec, timelapse: bool = False) -> JobRequest:
    return JobRequest(job_id=f"job-{next(_job_numbers)}", spec=spec, timelapse=timelapse)


class Recorder:
    """Follows several jobs at once and keeps every event in the order it arrived."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, JobEvent]] = []
        self._changed = asyncio.Event()

    def follow(self, events: JobEvents) -> asyncio.Task[list[JobEvent]]:
        return asyncio.create_task(self._follow(events))

    async def _follow(self, events: JobEvents) -> list[JobEvent]:
        mine = []
        async for event in events:
            mine.append(event)
            self.arrivals.append((events.job_id, event))
            self._changed.set()
        return mine

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    def steps(self, job_id: str) -> list[int]:
        return [event.step for jid, event in self.arrivals if jid == job_id and isinstance(event, JobProgress)]

    def position(self, job_id: str, matches: Callable[[JobEvent], bool]) -> int:
        return next(i for i, (jid, event) in enumerate(self.arrivals) if jid == job_id and matches(event))


async def run(client: GenerationClient, job: JobRequest) -> list[JobEvent]:
    return [event async for event in client.submit(job)]


def result_of(events: list[JobEvent]) -> JobResult:
    assert isinstance(events[-1], JobResult), events[-1]
    return events[-1]


def progress_steps(events: list[JobEvent]) -> list[int]:
    return [event.step for event in events if isinstance(event, JobProgress)]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def assert_same_image(png: bytes, reference_png: bytes) -> None:
    difference = np.abs(pixels(png) - pixels(reference_png))
    mean, p99 = difference.mean(), np.percentile(difference, 99)
    assert mean <= MEAN_LEVELS_TOLERANCE and p99 <= P99_LEVELS_TOLERANCE, (
        f"images differ: mean {mean:.3f}, 99th percentile {p99}, max {difference.max()} levels"
    )


def processes_left_behind() -> list[psutil.Process]:
    """This test process's descendants, except multiprocessing's resource tracker: the spawn method starts that
    one once per interpreter and it ends when the interpreter does (end of its pipe), so it is no orphan."""
    children = psutil.Process().children(recursive=True)
    return [child for child in children if "multiprocessing.resource_tracker" not in " ".join(child.cmdline())]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client():
    client = GenerationClient(CONFIG)
    await client.start()
    yield client
    await client.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alone(client: GenerationClient) -> dict[DreamSpec, bytes]:
    """Each reference job's image when it ran with no other job in the worker."""
    images = {}
    for spec in (APPLE, PEAR):
        events = await run(client, request(spec))
        assert progress_steps(events) == list(range(1, spec.steps + 1))
        images[spec] = result_of(events).png
    return images


async def test_two_jobs_batched_give_the_images_they_give_alone(client, alone):
    recorder = Recorder()
    apple, pear = request(APPLE), request(PEAR)
    apple_events, pear_events = await asyncio.gather(recorder.follow(client.submit(apple)), recorder.follow(client.submit(pear)))

    assert_same_image(result_of(apple_events).png, alone[APPLE])
    assert_same_image(result_of(pear_events).png, alone[PEAR])
    # One step for both: each of the pear's steps arrives between the apple's same step and its next one.
    for step in (1, 2):
        pear_at = recorder.position(pear.job_id, lambda e, s=step: isinstance(e, JobProgress) and e.step == s)
        assert recorder.position(apple.job_id, lambda e, s=step: isinstance(e, JobProgress) and e.step == s) < pear_at
        assert pear_at < recorder.position(apple.job_id, lambda e, s=step: isinstance(e, JobProgress) and e.step == s + 1)
    # The pear left after its 2 steps; the apple went on alone.
    assert recorder.steps(apple.job_id) == [1, 2, 3, 4, 5]
    assert client.health().last_step_batch_size == 1


async def test_a_job_joins_a_running_batch_and_leaves_it_without_stopping_the_other(client, alone):
    recorder = Recorder()
    apple, pear = request(APPLE), request(PEAR)
    apple_task = recorder.follow(client.submit(apple))
    await recorder.until(lambda: recorder.steps(apple.job_id))
    pear_task = recorder.follow(client.submit(pear))
    apple_events, pear_events = await asyncio.gather(apple_task, pear_task)

    assert_same_image(result_of(apple_events).png, alone[APPLE])
    assert_same_image(result_of(pear_events).png, alone[PEAR])
    assert recorder.steps(apple.job_id) == [1, 2, 3, 4, 5]
    # The pear joined after the apple's first step and was done before the apple.
    apple_result_at = recorder.position(apple.job_id, lambda e: isinstance(e, JobResult))
    assert recorder.position(apple.job_id, lambda e: isinstance(e, JobProgress)) < recorder.position(pear.job_id, lambda e: True)
    assert recorder.position(pear.job_id, lambda e: isinstance(e, JobResult)) < apple_result_at


async def test_cancel_stops_a_job_within_one_step_and_frees_its_slot(client, alone):
    recorder = Recorder()
    first, second, waiting = request(LONG), request(LONG.with_changes(seed=34)), request(PEAR)
    first_task = recorder.follow(client.submit(first))
    second_task = recorder.follow(client.submit(second))
    waiting_task = recorder.follow(client.submit(waiting))  # the batch holds 2: this one waits for a slot
    await recorder.until(lambda: recorder.steps(first.job_id))
    assert recorder.steps(waiting.job_id) == []

    steps_seen = max(recorder.steps(first.job_id))
    assert await client.cancel(first.job_id)
    first_events = await first_task
    assert isinstance(first_events[-1], JobCancelled)
    # The worker may have been inside the next step when the cancel came; it takes effect before the one after.
    assert max(progress_steps(first_events)) <= steps_seen + 1

    waiting_events = await waiting_task
    assert_same_image(result_of(waiting_events).png, alone[PEAR])
    # The other long job kept going while the freed slot served the waiting one.
    assert len(recorder.steps(second.job_id)) >= PEAR.steps
    assert await client.cancel(second.job_id)
    assert isinstance((await second_task)[-1], JobCancelled)
    assert not await client.cancel(second.job_id)
    assert not await client.cancel("no-such-job")
    assert client.health().in_flight_jobs == ()


async def test_a_job_that_raises_fails_alone_and_the_others_go_on(client, alone):
    pid_before, restarts_before = client.health().pid, client.health().restarts
    broken = request(dream("a broken [raise@1] dream", seed=44, steps=3))
    pear = request(PEAR)
    broken_events, pear_events = await asyncio.gather(run(client, broken), run(client, pear))

    failure = broken_events[-1]
    assert isinstance(failure, JobFailed)
    assert "internal error" in failure.reason and "Traceback" not in failure.reason and "simulated" not in failure.reason
    assert progress_steps(broken_events) == [1]
    # Its batch-mate's failed step was undone and retried alone: the same image as ever.
    assert_same_image(result_of(pear_events).png, alone[PEAR])
    assert (client.health().pid, client.health().restarts) == (pid_before, restarts_before)


async def test_out_of_memory_shrinks_the_batch_and_others_wait(client, alone):
    pid_before = client.health().pid
    recorder = Recorder()
    crowded = request(dream("[oom-if-batched] a crowded dream", seed=55, steps=2))
    pear = request(PEAR)
    crowded_events, pear_events = await asyncio.gather(recorder.follow(client.submit(crowded)), recorder.follow(client.submit(pear)))

    assert progress_steps(crowded_events) == [1, 2]
    # Batches of one after that: the pear waited until the crowded job was done.
    assert recorder.position(crowded.job_id, lambda e: isinstance(e, JobResult)) < recorder.position(pear.job_id, lambda e: True)
    assert_same_image(result_of(pear_events).png, alone[PEAR])
    assert client.health().pid == pid_before


async def test_out_of_memory_alone_retries_with_fewer_cutouts_then_fails_clearly(client):
    pid_before = client.health().pid
    detailed = request(dream("[oom-above-cutouts=1] a detailed dream", seed=56, steps=1))
    impossible = request(dream("[oom] an impossible dream", seed=57, steps=1))
    detailed_events, impossible_events = await asyncio.gather(run(client, detailed), run(client, impossible))

    # Every step with more than 1 cutout runs out of memory for this job: it finished, so it was retried with 1,
    # and its result says so.
    assert progress_steps(detailed_events) == [1]
    assert result_of(detailed_events).cutouts == 1
    failure = impossible_events[-1]
    assert isinstance(failure, JobFailed) and "ran out of memory" in failure.reason
    assert client.health().pid == pid_before


async def test_out_of_memory_midway_starts_the_job_over_with_half_the_cutouts_so_its_seed_makes_it_again(client):
    """Out of memory at its third step, alone: the job is made again from the start with 1 cutout instead of 2,
    and its result says 1. The same seed with 1 cutout (a reroll of what the result card shows) gives the very
    same image; steps made with 2 cutouts and then 1 would give one that no settings make again."""
    asked = dream("[oom-above-cutouts=1@2] a lighthouse", seed=58, steps=3)
    events = await run(client, request(asked))
    result = result_of(events)
    assert (result.cutouts, progress_steps(events)) == (1, [1, 2, 1, 2, 3])

    again = result_of(await run(client, request(asked.with_changes(cutouts=1))))
    assert (again.cutouts, again.png) == (1, result.png)
    assert result_of(await run(client, request(asked.with_changes(steps=2)))).cutouts == 2  # no shortage: as asked


async def test_a_cancel_that_comes_before_its_job_keeps_it_from_running(client):
    job = request(PEAR)
    # Cancelled while the caller was still handing it over: the client does not know it yet, and remembers.
    assert not await client.cancel(job.job_id)
    assert await run(client, job) == [JobCancelled(job.job_id)]
    assert client.health().in_flight_jobs == ()


async def test_progress_snapshots_and_timelapse(client):
    job = request(dream("a sunset", seed=66, steps=2, snapshot_every=1), timelapse=True)
    events = await run(client, job)

    progress = [event for event in events if isinstance(event, JobProgress)]
    assert [(p.step, p.total) for p in progress] == [(1, 2), (2, 2)]
    assert all(np.isfinite(p.loss) for p in progress)
    assert all(pixels(p.snapshot_png).shape == (128, 128, 3) for p in progress)
    result = result_of(events)
    assert (result.seed, result.steps) == (66, 2) and result.wall_seconds > 0
    assert result.png == progress[-1].snapshot_png
    assert result.latents_npz.startswith(b"PK")  # a zip archive
    gif = Image.open(io.BytesIO(result.timelapse_gif))
    assert gif.format == "GIF" and gif.n_frames == 2
    health = client.health()
    assert health.alive and health.models_kind == "tiny" and health.device == "cpu"
    assert health.last_step_at is not None and health.last_step_seconds > 0


async def test_jobs_the_worker_cannot_make_fail_at_once(client):
    wrong_size = await run(client, request(dream("a big dream", seed=1, steps=1).with_changes(size=256)))
    assert isinstance(wrong_size[-1], JobFailed) and "128" in wrong_size[-1].reason
    no_steps = await run(client, request(dream("a short dream", seed=1, steps=1).with_changes(steps=0)))
    assert isinstance(no_steps[-1], JobFailed) and "Steps must be" in no_steps[-1].reason

    job = request(LONG)
    events = client.submit(job)
    with pytest.raises(ValueError, match="already running"):
        client.submit(job)
    assert await client.cancel(job.job_id)
    assert isinstance([event async for event in events][-1], JobCancelled)


async def test_a_killed_or_hung_worker_hands_its_jobs_back_and_is_replaced_once_each_time(client, alone):
    """kill -9 with two jobs in flight: both come back at once, naming the death (the caller queues them again
    and counts the run); a job sent while the new worker loads comes back untouched. Then a step hangs: the hang
    detector kills that worker, which counts as a death the same way. Each death starts one new process."""
    before = client.health()
    pear, long = request(PEAR), request(LONG)
    recorder = Recorder()
    tasks = [recorder.follow(client.submit(job)) for job in (pear, long)]
    await recorder.until(lambda: bool(recorder.steps(pear.job_id) and recorder.steps(long.job_id)))
    os.kill(before.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    pear_events, long_events = await asyncio.gather(*tasks)

    assert time.monotonic() - killed_at < 5.0
    assert pear_events[-1] == JobInterrupted(pear.job_id, "it was killed by SIGKILL")
    assert long_events[-1] == JobInterrupted(long.job_id, "it was killed by SIGKILL")
    during = client.health()
    assert (during.state, during.accepting_jobs, during.restarts) == ("restarting", False, before.restarts + 1)
    assert "SIGKILL" in during.failure
    sent_too_early = request(PEAR)
    assert await run(client, sent_too_early) == [JobInterrupted(sent_too_early.job_id)]

    await client.wait_until_accepting()
    replaced = client.health()
    assert (replaced.state, replaced.restarts, replaced.failure) == ("ready", before.restarts + 1, None)
    assert replaced.pid != before.pid and not psutil.pid_exists(before.pid)

    fragile = request(dream("[hang@1] a fragile dream", seed=77, steps=3))
    fragile_task = recorder.follow(client.submit(fragile))
    await recorder.until(lambda: bool(recorder.steps(fragile.job_id)))
    last_progress_at = time.monotonic()
    fragile_events = await fragile_task
    hang_noticed_after = time.monotonic() - last_progress_at

    assert progress_steps(fragile_events) == [1]
    assert isinstance(fragile_events[-1], JobInterrupted) and fragile_events[-1].worker_death.startswith("a step hung")
    assert HANG_TIMEOUT_S - 0.5 <= hang_noticed_after < HANG_TIMEOUT_S + 5.0
    await client.wait_until_accepting()
    assert client.health().restarts == before.restarts + 2
    # The replacement makes the same image as ever.
    assert_same_image(result_of(await run(client, request(PEAR))).png, alone[PEAR])


async def test_clean_stop_interrupts_jobs_in_flight_and_leaves_no_process(client, caplog):
    caplog.set_level(logging.INFO, logger="bigsleep.client")
    recorder = Recorder()
    jobs = [request(LONG), request(LONG.with_changes(seed=35)), request(PEAR)]
    tasks = [recorder.follow(client.submit(job)) for job in jobs]
    await recorder.until(lambda: recorder.steps(jobs[0].job_id))
    worker_pid = client.health().pid

    await client.stop(timeout=30)

    for job, task in zip(jobs, tasks, strict=True):
        assert (await task)[-1] == JobInterrupted(job.job_id)
    # It finished its step and exited by itself rather than being killed.
    assert any("stopped cleanly" in record.getMessage() for record in caplog.records)
    assert not psutil.pid_exists(worker_pid)
    assert processes_left_behind() == []
    health = client.health()
    assert (health.state, health.alive, health.pid, health.in_flight_jobs) == ("stopped", False, None, ())
    with pytest.raises(RuntimeError, match="stopped"):
        client.submit(request(PEAR))
