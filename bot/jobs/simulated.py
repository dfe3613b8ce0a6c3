"""A stand-in for the generation worker that takes a fixed time per job, for benchmarks and bot tests.

It speaks the same interface as `generator.client.GenerationClient` (`bot.jobs.ports.GenerationBackend`:
start / health / wait_until_accepting / submit / cancel / stop) in-process, with no models: `benchmarks/bot_load.py`
measures the bot with it, not the GPU. Results are small solid-colour PNGs whose colour is derived from the job's
prompt and seed, so a test can tell results apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from generator.protocol import (
    JobCancelled,
    JobEvent,
    JobFailed,
    JobInterrupted,
    JobProgress,
    JobRequest,
    JobResult,
)
from generator.wire import WorkerHealth, WorkerStateKeeper


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_for(prompt: str, seed: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{prompt}\0{seed}".encode()).digest()
    return digest[0], digest[1], digest[2]


def fake_latents_npz(seed: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, z=np.full((2, 4), float(seed % 1000), dtype=np.float32))
    return buffer.getvalue()


@dataclass
class _Control:
    # Set when the job is cancelled or its simulated worker dies.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    worker_death: str | None = None


class SimulatedGenerationClient:
    """Every job takes `seconds_per_job`, sends `progress_events` progress events (the last `snapshots` of them
    with a PNG) and then a result. Prompts containing `fail_word` fail instead; a prompt containing `crash_word`
    kills the worker after its first progress event: every job in flight ends with JobInterrupted naming the
    death, and a replacement is ready at once (one more restart).

    `sizes` (none: any) and `max_batch_size` (0: the dispatcher's default) are what its health reports; several
    with their own `worker_id` make a pool (`generator.pool.StaticPool`).

    With `cutouts_that_fit` given, a job asking for more cutouts runs out of memory and is made with half of
    them, as the real worker does (fails when half is still too many); its result says how many it ran with.

    `die(reason)` kills it for good (its jobs end naming the death; it takes no more). `hold()` makes new and
    running jobs wait (before their last event) until `release()`: tests use it to
    catch a job mid-run. `take_down(reason)` makes the worker refuse new jobs (health says why; jobs already
    running go on) until `bring_up()`, which counts as a replacement worker. With `loaded` given, start()
    returns (and the worker takes jobs) only once it is set.
    """

    def __init__(
        self,
        seconds_per_job: float = 0.05,
        *,
        progress_events: int = 3,
        snapshots: bool = True,
        image_size: int | None = 16,
        fail_word: str = "__fail__",
        crash_word: str = "__crash__",
        loaded: asyncio.Event | None = None,
        cutouts_that_fit: int | None = None,
        worker_id: str = "simulated",
        sizes: tuple[int, ...] = (),
        max_batch_size: int = 0,
    ) -> None:
        self.seconds_per_job = seconds_per_job
        self.progress_events = progress_events
        self.snapshots = snapshots
        self.image_size = image_size
        self.fail_word = fail_word
        self.crash_word = crash_word
        self.cutouts_that_fit = cutouts_that_fit
        self.worker_id = worker_id
        self.sizes = sizes
        self.max_batch_size = max_batch_size
        self.requests: list[JobRequest] = []
        self.completed = 0
        self.restarts = 0
        self._loaded = loaded
        self._running: dict[str, _Control] = {}
        self._state = WorkerStateKeeper()
        self._failure: str | None = None
        self._stopping = asyncio.Event()
        self._released = asyncio.Event()
        self._released.set()
        self.holding_jobs = 0
        self._hold_changed = asyncio.Event()

    async def start(self) -> None:
        self._state.set("starting")
        if self._loaded is not None:
            await self._loaded.wait()
        self._stopping.clear()
        self._state.set("ready")

    def health(self) -> WorkerHealth:
        return WorkerHealth(
            state=self._state.state,
            accepting_jobs=self._state.accepting_jobs,
            alive=self._state.accepting_jobs,
            restarts=self.restarts,
            worker_id=self.worker_id,
            node="simulated",
            in_flight_jobs=tuple(self._running),
            models_kind="simulated",
            device="simulated",
            sizes=self.sizes,
            max_batch_size=self.max_batch_size,
            failure=self._failure,
        )

    async def wait_until_accepting(self) -> None:
        await self._state.wait_until_accepting()

    def take_down(self, reason: str) -> None:
        self._failure = reason
        self._state.set("restarting")

    def bring_up(self) -> None:
        self.restarts += 1
        self._failure = None
        self._state.set("ready")

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def wait_until_holding(self, count: int = 1) -> None:
        """Until `count` jobs are held (see hold())."""
        while self.holding_jobs < count:
            self._hold_changed.clear()
            await self._hold_changed.wait()

    async def wait_until_completed(self, count: int = 1) -> None:
        """Until `count` results have been handed out."""
        while self.completed < count:
            self._hold_changed.clear()
            await self._hold_changed.wait()

    async def cancel(self, job_id: str) -> None:
        control = self._running.get(job_id)
        if control is not None:
            control.cancelled = True
            control.changed.set()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._state.set("stopped")

    def die(self, reason: str) -> None:
        """Its worker dies now and stays down: every job in flight ends with JobInterrupted naming `reason`."""
        self.take_down(reason)
        self._crash(reason)

    def _crash(self, reason: str) -> None:
        for control in self._running.values():
            control.worker_death = reason
            control.changed.set()
        self.restarts += 1

    async def submit(self, request: JobRequest) -> AsyncIterator[JobEvent]:
        self.requests.append(request)
        job_id = request.job_id
        if not self._state.accepting_jobs:
            yield JobInterrupted(job_id)
            return
        control = self._running[job_id] = _Control()
        began = time.monotonic()
        try:
            steps = request.spec.steps
            events = max(1, self.progress_events)
            pause = self.seconds_per_job / (events + 1)
            for index in range(1, events + 1):
                outcome = await self._pause(pause, job_id, control)
                if outcome is not None:
                    yield outcome
                    return
                snapshot = None
                if self.snapshots and self.image_size:
                    snapshot = solid_png(self.image_size, self.image_size, (index * 40 % 256, 0, 0))
                yield JobProgress(job_id, step=steps * index // (events + 1), total=steps, loss=1.0 / index,
                                  snapshot_png=snapshot)
                if self.crash_word and self.crash_word in request.spec.prompt:
                    self._crash(f"simulated crash while making job {job_id}")
            if not self._released.is_set():
                self.holding_jobs += 1
                self._hold_changed.set()
                try:
                    outcome = await self._wait_released(job_id, control)
                finally:
                    self.holding_jobs -= 1
                if outcome is not None:
                    yield outcome
                    return
            outcome = await self._pause(pause, job_id, control)
            if outcome is not None:
                yield outcome
                return
            if self.fail_word and self.fail_word in request.spec.prompt:
                yield JobFailed(job_id, "The simulated worker was asked to fail.")
                return
            cutouts = request.spec.cutouts
            if self.cutouts_that_fit is not None and cutouts > self.cutouts_that_fit:
                cutouts //= 2
                if cutouts > self.cutouts_that_fit:
                    yield JobFailed(job_id, "The simulated worker ran out of memory, even with fewer cutouts.")
                    return
            size = self.image_size or request.spec.size
            self.completed += 1
            self._hold_changed.set()
            yield JobResult(
                job_id,
                png=solid_png(size, size, colour_for(request.spec.prompt, request.spec.seed)),
                seed=request.spec.seed,
                steps=steps,
                wall_seconds=time.monotonic() - began,
                latents_npz=fake_latents_npz(request.spec.seed),
                cutouts=cutouts,
            )
        finally:
            self._running.pop(job_id, None)

    async def _pause(self, seconds: float, job_id: str, control: _Control) -> JobEvent | None:
        if (outcome := self._outcome(job_id, control)) is not None:
            return outcome
        waiters = [asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(control.changed.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return self._outcome(job_id, control)

    def _outcome(self, job_id: str, control: _Control) -> JobEvent | None:
        if control.worker_death is not None:
            return JobInterrupted(job_id, control.worker_death)
        if self._stopping.is_set():
            return JobInterrupted(job_id)
        if control.cancelled:
            return JobCancelled(job_id)
        return None

    async def _wait_released(self, job_id: str, control: _Control) -> JobEvent | None:
        while not self._released.is_set():
            outcome = await self._pause(0.05, job_id, control)
            if outcome is not None:
                return outcome
        return None
