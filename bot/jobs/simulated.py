"""A stand-in for the generation worker that takes a fixed time per job, for benchmarks and bot tests.

It speaks the same interface as `generator.client.GenerationClient` (start / submit / cancel / stop / health)
in-process, with no models: `benchmarks/bot_load.py` measures the bot with it, not the GPU. Results are small
solid-colour PNGs whose colour is derived from the job's prompt and seed, so a test can tell results apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from generator.protocol import (
    JobCancelled,
    JobEvent,
    JobFailed,
    JobInterrupted,
    JobProgress,
    JobRequest,
    JobResult,
)


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def colour_for(prompt: str, seed: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{prompt}\0{seed}".encode()).digest()
    return digest[0], digest[1], digest[2]


def fake_latents_npz(seed: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, z=np.full((2, 4), float(seed % 1000), dtype=np.float32))
    return buffer.getvalue()


@dataclass
class SimulatedHealth:
    started: bool
    running: int
    completed: int


@dataclass
class _Control:
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class SimulatedGenerationClient:
    """Every job takes `seconds_per_job`, sends `progress_events` progress events (the last `snapshots` of them
    with a PNG) and then a result. Prompts containing `fail_word` fail instead.

    `hold()` makes new and running jobs wait (before their last event) until `release()`: tests use it to
    catch a job mid-run.
    """

    def __init__(
        self,
        seconds_per_job: float = 0.05,
        *,
        progress_events: int = 3,
        snapshots: bool = True,
        image_size: int | None = 16,
        fail_word: str = "__fail__",
    ) -> None:
        self.seconds_per_job = seconds_per_job
        self.progress_events = progress_events
        self.snapshots = snapshots
        self.image_size = image_size
        self.fail_word = fail_word
        self.requests: list[JobRequest] = []
        self.completed = 0
        self._running: dict[str, _Control] = {}
        self._started = False
        self._stopping = asyncio.Event()
        self._released = asyncio.Event()
        self._released.set()
        self.holding_jobs = 0
        self._hold_changed = asyncio.Event()

    async def start(self) -> None:
        self._started = True
        self._stopping.clear()

    def health(self) -> SimulatedHealth:
        return SimulatedHealth(self._started and not self._stopping.is_set(), len(self._running), self.completed)

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
            control.cancelled.set()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._started = False

    async def submit(self, request: JobRequest) -> AsyncIterator[JobEvent]:
        self.requests.append(request)
        job_id = request.job_id
        if not self._started:
            yield JobInterrupted(job_id)
            return
        control = self._running[job_id] = _Control()
        began = time.monotonic()
        try:
            steps = request.spec.steps
            events = max(1, self.progress_events)
            pause = self.seconds_per_job / (events + 1)
            for index in range(1, events + 1):
                outcome = await self._pause(pause, control)
                if outcome is not None:
                    yield outcome(job_id)
                    return
                snapshot = None
                if self.snapshots and self.image_size:
                    snapshot = solid_png(self.image_size, self.image_size, (index * 40 % 256, 0, 0))
                yield JobProgress(job_id, step=steps * index // (events + 1), total=steps, loss=1.0 / index,
                                  snapshot_png=snapshot)
            if not self._released.is_set():
                self.holding_jobs += 1
                self._hold_changed.set()
                try:
                    outcome = await self._wait_released(control)
                finally:
                    self.holding_jobs -= 1
                if outcome is not None:
                    yield outcome(job_id)
                    return
            outcome = await self._pause(pause, control)
            if outcome is not None:
                yield outcome(job_id)
                return
            if self.fail_word and self.fail_word in request.spec.prompt:
                yield JobFailed(job_id, "The simulated worker was asked to fail.")
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
            )
        finally:
            self._running.pop(job_id, None)

    async def _pause(self, seconds: float, control: _Control) -> type[JobCancelled | JobInterrupted] | None:
        if self._stopping.is_set():
            return JobInterrupted
        if control.cancelled.is_set():
            return JobCancelled
        waiters = [asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(control.cancelled.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._stopping.is_set():
            return JobInterrupted
        if control.cancelled.is_set():
            return JobCancelled
        return None

    async def _wait_released(self, control: _Control) -> type[JobCancelled | JobInterrupted] | None:
        while not self._released.is_set():
            outcome = await self._pause(0.05, control)
            if outcome is not None:
                return outcome
        return None
