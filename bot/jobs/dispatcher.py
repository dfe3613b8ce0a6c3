"""Feeds the generation workers from the fair queue and turns their events into store updates and messages.

The store is the source of truth; the FairQueue is an index over its 'queued' rows. The dispatcher is the one
scheduler: workers never pick jobs. Each time a job ends, a job is queued or a worker changes, it takes the next
jobs in fair order and hands each to a worker that takes jobs now, makes its image size and has a free slot
(a worker holds as many jobs as its batch size, so it can batch them), preferring the worker with the most free
slots. The images of a grid (bot.jobs.grids) start together: the rest of it joins its first image on that
worker, as far as it has free slots, whatever the running caps say. The workers come from a pool (bot.jobs.ports.WorkerPool: one process per local device, or Ray actors that
come and go with the cluster's GPUs); the dispatcher starts the pool once and from then on only reads its
health (workers restart themselves and never give up; see generator.client and generator.ray_pool). A single
worker passed in is a pool of one.

Every job the backend gives back unfinished goes back to the front of the queue. One that never reached a
worker, or that a clean stop handed back, costs no attempt. One whose worker died while running it counts that
run as an attempt (JobStore.mark_running counted it; `requeue(counts_as_attempt=False)` takes it back in the
other cases) and runs again alone: no two such jobs share a worker, so a job that kills every worker fails by
itself after `max_attempts` runs while the jobs that shared its worker finish.

A cancel that lands while a job is being handed to the worker, or back to the queue, stops it there: it is never
sent, or never queued again.

No discord imports here: progress reaches Discord through the `ProgressSink` the bot passes in (the ports are in
bot.jobs.ports), so the dispatcher can be driven by tests and benchmarks without a Discord connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.jobs.fair_queue import FairQueue, JobRef, LaneFilter, UserCaps, estimate_wait
from bot.jobs.files import ResultFiles
from bot.jobs.job import Job, JobKind
from bot.jobs.ports import GenerationBackend, JobMetrics, NoMetrics, ProgressSink, SilentProgress, WorkerPool
from bot.jobs.store import IllegalTransition, JobNotFound, JobStore
from bot.locks import KeyedLocks
from bot.logs import bind_job
from generator.pool import StaticPool
from generator.protocol import (
    DreamSpec,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    JobProgress,
    JobRequest,
    JobResult,
)
from generator.wire import PoolHealth, WorkerHealth

log = logging.getLogger(__name__)

CRASHED_REPEATEDLY = (
    "The image generator stopped {attempts} times while making this image, so it was given up. "
    "Other settings (fewer steps, cutouts or a smaller size) may work."
)


class QueueFull(Exception):
    """The user is at their waiting cap; the message is a sentence for them."""


class NotCancellable(Exception):
    """The job already finished; the message is a sentence for the user."""


@dataclass(frozen=True)
class DispatchSettings:
    # Slots of a worker that does not say its batch size (WorkerHealth.max_batch_size 0: a simulated one).
    max_in_flight: int = 4
    caps: UserCaps = field(default_factory=UserCaps)
    snapshots_per_job: int = 10
    timelapse: bool = False
    stop_timeout: float = 20.0
    max_attempts: int = 3
    eta_history: int = 20
    default_job_seconds: float = 120.0


@dataclass
class _InFlight:
    ref: JobRef
    # The worker it was handed to.
    worker: GenerationBackend
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    step: int = 0
    total: int = 0
    # Its last run ended with its worker's death: no other such job may be in flight with it.
    suspect: bool = False


class Dispatcher:
    def __init__(
        self,
        *,
        store: JobStore,
        queue: FairQueue,
        backend: WorkerPool | GenerationBackend,
        files: ResultFiles,
        progress: ProgressSink | None = None,
        settings: DispatchSettings | None = None,
        recent_durations: list[float] | None = None,
        metrics: JobMetrics | None = None,
        lane_gate: LaneFilter | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.pool: WorkerPool = backend if hasattr(backend, "workers") else StaticPool([backend])  # type: ignore[list-item]
        self.files = files
        self.progress: ProgressSink = progress or SilentProgress()
        self.settings = settings or DispatchSettings()
        self.metrics: JobMetrics = metrics or NoMetrics()
        self._in_flight: dict[str, _InFlight] = {}
        # Per-server say over who may start (bot.moderation: a server's running cap); None lets everyone.
        self._lane_gate = lane_gate
        self._wake = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._main_task: asyncio.Task[None] | None = None
        self._handed_back: list[JobRef] = []
        # Queued jobs whose last run ended with their worker's death (see the module docstring).
        self._suspects: set[str] = set()
        self._user_lock = KeyedLocks()
        # Newest first, like JobStore.recent_durations.
        self._durations: deque[float] = deque(recent_durations or (), maxlen=self.settings.eta_history)

    # -- lifecycle --

    def start(self) -> None:
        """Start the workers and the dispatch loop in the background (workers may take minutes to load)."""
        if self._main_task is None:
            self._main_task = asyncio.create_task(self._main(), name="bigsleep-dispatcher")

    async def stop(self) -> None:
        """Hand running jobs back to the queue (store and memory) and stop the workers."""
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()
        if self._main_task is not None:
            # Also stops workers that are still loading their models.
            try:
                await self.pool.stop(self.settings.stop_timeout)
            except Exception:
                log.exception("the generation workers did not stop cleanly")
        tasks = [flight.task for flight in self._in_flight.values() if flight.task is not None]
        if tasks:
            # The worker's JobInterrupted events hand the jobs back; a job whose stream never ends is left
            # 'running' in the store, which recover_after_restart handles on the next start.
            _, pending = await asyncio.wait(tasks, timeout=self.settings.stop_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Each re-queue goes to the very front, so the job that started last is queued again first and
        # the earliest one ends up ahead of it.
        for ref in sorted(self._handed_back, key=lambda ref: ref.seq, reverse=True):
            await self._give_back(ref.job_id, counts_as_attempt=False)
        self._handed_back.clear()
        if self._main_task is not None:
            self._main_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main_task

    @property
    def backend_ready(self) -> bool:
        """Some worker takes jobs now."""
        return self.pool_health().accepting_jobs

    def pool_health(self) -> PoolHealth:
        """The pool's own account of its workers: what /healthz, /metrics and /queue show."""
        return self.pool.health()

    async def _main(self) -> None:
        try:
            await self.pool.start()
        except Exception as error:
            if self._stopping:
                return
            # The pool says why in its own log and in its health, and keeps trying by itself.
            log.warning("no generation worker started (%s); jobs wait in the queue until one does", error)
        else:
            ready = [health.worker_id for health in self.pool_health().workers if health.accepting_jobs]
            log.info("generation worker ready", extra={"workers": ready})
        while not self._stopping:
            self._wake.clear()
            version = self.pool.version
            idle = self._dispatch_ready_jobs()
            await self._until_something_changes(version, idle)

    async def _until_something_changes(self, version: int, idle: list[GenerationBackend]) -> None:
        """Until a wake(), a stop, a worker joining or leaving, or one of the `idle` workers taking jobs."""
        waits = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._stop_requested.wait()),
            asyncio.ensure_future(self.pool.wait_for_change(version)),
            *(asyncio.ensure_future(worker.wait_until_accepting()) for worker in idle),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _slots(self, health: WorkerHealth) -> int:
        return health.max_batch_size or self.settings.max_in_flight

    def _dispatch_ready_jobs(self) -> list[GenerationBackend]:
        """Hand out every job that may start now; returns the workers that take no jobs (to wait for them)."""
        free: dict[GenerationBackend, int] = {}
        sizes: dict[GenerationBackend, frozenset[int]] = {}
        idle = []
        for worker in self.pool.workers():
            health = worker.health()
            if not health.accepting_jobs:
                idle.append(worker)
                continue
            held = sum(1 for flight in self._in_flight.values() if flight.worker is worker)
            free[worker] = self._slots(health) - held
            sizes[worker] = frozenset(health.sizes)
        # A worker holding a job whose last run ended with its worker's death takes no second such job.
        with_suspect = {flight.worker for flight in self._in_flight.values() if flight.suspect}
        # Lanes whose next job is a suspect that no worker may take now: they wait, and keep their turn.
        held_back: set[tuple[int, int]] = set()

        def fits(worker: GenerationBackend, size: int) -> bool:
            # A worker that names no sizes (a simulated one) makes any.
            return free[worker] > 0 and (not sizes[worker] or size in sizes[worker])

        def lane_may_start(guild_id: int, user_id: int) -> bool:
            if (guild_id, user_id) in held_back:
                return False
            return self._lane_gate is None or self._lane_gate(guild_id, user_id)

        while not self._stopping:
            ref = self.queue.pop_next(
                lambda user: self.queue.can_start(user, self.settings.caps),
                lane_may_start,
                lambda size: any(fits(worker, size) for worker in free),
            )
            if ref is None:
                break
            suspect = ref.job_id in self._suspects
            candidates = [w for w in free if fits(w, ref.size) and not (suspect and w in with_suspect)]
            if not candidates:
                held_back.add((ref.guild_id, ref.user_id))
                self.queue.requeue(ref)
                continue
            # The most free slots first (spreads the work), then the worker that makes the fewest sizes (keeps
            # the versatile ones free for jobs only they can run).
            worker = max(candidates, key=lambda w: (free[w], -len(sizes[w])))
            free[worker] -= 1
            if suspect:
                self._suspects.discard(ref.job_id)
                with_suspect.add(worker)
            self._hand_out(ref, worker, suspect=suspect)
            if ref.grid_id is not None and not suspect:
                # The rest of its grid joins it in the worker's batch, as far as the worker has room.
                for image in self.queue.take_grid(ref.grid_id, free[worker], skip=self._suspects):
                    free[worker] -= 1
                    self._hand_out(image, worker, suspect=False)
        return idle

    def _hand_out(self, ref: JobRef, worker: GenerationBackend, *, suspect: bool) -> None:
        flight = _InFlight(ref=ref, worker=worker, suspect=suspect)
        self._in_flight[ref.job_id] = flight
        flight.task = asyncio.create_task(self._run_job(flight), name=f"bigsleep-job-{ref.job_id}")

    # -- queueing --

    async def enqueue(
        self,
        *,
        guild_id: int,
        channel_id: int,
        user_id: int,
        spec: DreamSpec,
        user_name: str = "",
        kind: JobKind = "imagine",
        parent_job_id: str | None = None,
        init_latents_path: str | None = None,
    ) -> Job:
        """Store and queue a job, or raise QueueFull."""
        (job,) = await self.enqueue_many(
            guild_id=guild_id, channel_id=channel_id, user_id=user_id, specs=[spec], user_name=user_name, kind=kind,
            parent_job_id=parent_job_id, init_latents_path=init_latents_path,
        )
        return job

    async def enqueue_many(
        self,
        *,
        guild_id: int,
        channel_id: int,
        user_id: int,
        specs: Sequence[DreamSpec],
        user_name: str = "",
        kind: JobKind = "imagine",
        parent_job_id: str | None = None,
        init_latents_path: str | None = None,
    ) -> list[Job]:
        """Store and queue one job per spec (two or more are a grid: JobStore.create_jobs), all or none: raise
        QueueFull when the user's waiting cap has no room for all. The user's lock makes admit -> create -> push
        atomic."""
        async with self._user_lock(user_id):
            room = self.queue.admit(user_id, self.settings.caps, count=len(specs))
            if not room:
                raise QueueFull(room.reason)
            jobs = await self.store.create_jobs(
                guild_id=guild_id,
                channel_id=channel_id,
                user_id=user_id,
                user_name=user_name,
                specs=specs,
                kind=kind,
                parent_job_id=parent_job_id,
                init_latents_path=init_latents_path,
            )
            for job in jobs:
                self.queue.push(JobRef.of(job))
        for job in jobs:
            self.metrics.job_queued(job)
            log.info(
                "job queued", extra={"job_id": job.id, "kind": job.kind, "guild_id": job.guild_id, "user_id": job.user_id,
                                     "steps": job.steps, "size": job.size, "queued": len(self.queue),
                                     "grid_id": job.grid_id},
            )
        self._wake.set()
        return jobs

    def wake(self) -> None:
        """Look at the queue again now (a server was resumed, or a limit raised)."""
        self._wake.set()

    def position(self, job_id: str) -> int | None:
        return self.queue.position(job_id)

    def estimate_wait(self, position: int) -> float:
        accepting = [health for health in self.pool_health().workers if health.accepting_jobs]
        return estimate_wait(
            position,
            list(self._durations),
            slots=sum(self._slots(health) for health in accepting) or self.settings.max_in_flight,
            busy_slots=len(self._in_flight),
            default_duration=self.settings.default_job_seconds,
        )

    def in_flight_progress(self) -> dict[str, tuple[int, int]]:
        return {job_id: (flight.step, flight.total) for job_id, flight in self._in_flight.items()}

    def in_flight_workers(self) -> dict[str, WorkerHealth]:
        """Which worker runs each job handed out (its id, node and device), for /queue."""
        healths: dict[int, WorkerHealth] = {}
        for flight in self._in_flight.values():
            if id(flight.worker) not in healths:
                healths[id(flight.worker)] = flight.worker.health()
        return {job_id: healths[id(flight.worker)] for job_id, flight in self._in_flight.items()}

    # -- cancelling --

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; raise NotCancellable if it already finished, JobNotFound if unknown."""
        job = await self.store.require(job_id)
        if self.queue.remove(job.id) is not None:
            self._suspects.discard(job.id)
            job = await self._mark_cancelled(job.id)
            self._ended(job)
            self.progress.cancelled(job)
            return job
        flight = self._in_flight.get(job.id)
        if flight is not None:
            flight.cancel_requested = True
            job = await self._mark_cancelled(job.id)
            self._ended(job)
            self.progress.cancelled(job)
            # Its worker slot stays taken until the worker confirms; the final event frees it.
            try:
                await flight.worker.cancel(job.id)
            except Exception:
                log.exception("could not ask the worker to cancel job %s", job.id, extra={"job_id": job.id})
            return job
        raise NotCancellable(f"Job `{job.id}` is already {job.state}.")

    async def _mark_cancelled(self, job_id: str) -> Job:
        try:
            return await self.store.mark_cancelled(job_id)
        except IllegalTransition as error:
            raise NotCancellable(f"Job `{job_id}` is already {error.current}.") from None

    # -- running one job --

    async def _run_job(self, flight: _InFlight) -> None:
        job_id = flight.ref.job_id
        # Every line logged while this job runs (here, in the progress messages it starts) names the job.
        bind_job(job_id)
        try:
            if flight.cancel_requested:
                return
            try:
                job = await self.store.mark_running(job_id)
            except (IllegalTransition, JobNotFound):
                return  # cancelled (or removed) between the pop and now
            self.metrics.job_started(job)
            waited = _seconds_between(job.created_at, job.started_at)
            log.info("job started", extra={"job_id": job_id, "attempt": job.attempts, "waited_seconds": waited,
                                           "worker": flight.worker.health().worker_id})
            try:
                request = await self._request_for(job)
            except FileNotFoundError:
                await self._fail(job, "The image this variation starts from was deleted.")
                return
            if flight.cancel_requested:
                # Cancelled while being handed over (marked running, its latents read): cancel() asked the backend
                # to stop a job it did not have yet. No await between here and the hand-over, so it is never sent.
                return
            flight.total = job.steps
            self.progress.running(job, 0, job.steps, None)
            await self._follow(job, flight, request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: unexpected error while running it", job_id)
            await self._give_back_or_fail(job_id, flight)
        finally:
            self._in_flight.pop(job_id, None)
            self.queue.finish(job_id)
            self._wake.set()

    async def _request_for(self, job: Job) -> JobRequest:
        init_latents = None
        if job.init_latents_path is not None:
            init_latents = await asyncio.to_thread(self.files.read, job.init_latents_path)
        snapshot_every = 0
        if self.settings.snapshots_per_job > 0:
            snapshot_every = max(1, math.ceil(job.steps / self.settings.snapshots_per_job))
        spec = job.worker_spec(init_latents=init_latents, snapshot_every=snapshot_every)
        if spec.image_prompts:
            # The stored spec names its image prompts' pictures; the worker gets their bytes (kept by bot.jobs.files).
            spec = await asyncio.to_thread(spec.with_image_bytes, self.files.read)
        return JobRequest(job_id=job.id, spec=spec, timelapse=self.settings.timelapse)

    async def _follow(self, job: Job, flight: _InFlight, request: JobRequest) -> None:
        async for event in flight.worker.submit(request):
            if isinstance(event, JobProgress):
                self.metrics.steps_done(event.step - flight.step, flight.worker.health())
                flight.step, flight.total = event.step, event.total
                if not flight.cancel_requested:
                    self.progress.running(job, event.step, event.total, event.snapshot_png)
            elif isinstance(event, JobResult):
                self.metrics.steps_done(event.steps - flight.step, flight.worker.health())
                await self._finish_done(job, flight, event)
                return
            elif isinstance(event, JobFailed):
                if not flight.cancel_requested:
                    await self._fail(job, event.reason)
                return
            elif isinstance(event, JobCancelled):
                if not flight.cancel_requested:
                    # Cancelled by someone other than us (an operator on the worker): record it.
                    with contextlib.suppress(IllegalTransition):
                        cancelled = await self.store.mark_cancelled(job.id)
                        self._ended(cancelled)
                        self.progress.cancelled(cancelled)
                return
            elif isinstance(event, JobInterrupted):
                if flight.cancel_requested:
                    return
                if event.worker_death is None:
                    await self._give_back_or_fail(job.id, flight, counts_as_attempt=False)
                else:
                    log.warning("job %s: its generation process died (%s)", job.id, event.worker_death)
                    await self._give_back_or_fail(job.id, flight)
                return
        # The stream ended without a final event: the worker went away.
        if not flight.cancel_requested:
            await self._give_back_or_fail(job.id, flight)

    async def _finish_done(self, job: Job, flight: _InFlight, result: JobResult) -> None:
        if flight.cancel_requested:
            return
        saved = await asyncio.to_thread(
            self.files.save_result, job.id, result.png, result.latents_npz, result.timelapse_gif
        )
        wall_seconds = max(result.wall_seconds, 0.0)
        try:
            done = await self.store.mark_done(
                job.id,
                png_path=saved.png_path,
                latents_path=saved.latents_path,
                timelapse_path=saved.timelapse_path,
                wall_seconds=wall_seconds,
                # Fewer cutouts than asked when it ran out of memory: the result card, Reroll and Variations use these.
                ran_spec=job.spec.with_changes(cutouts=result.cutouts),
            )
        except IllegalTransition:
            return  # cancelled while the result was on its way
        self._durations.appendleft(wall_seconds)
        self._ended(done)
        self.progress.done(done, result.png)

    async def _fail(self, job: Job, reason: str) -> None:
        try:
            failed = await self.store.mark_failed(job.id, reason)
        except IllegalTransition:
            return
        self._ended(failed, reason=reason)
        self.progress.failed(failed, reason)

    def _ended(self, job: Job, **details: object) -> None:
        self.metrics.job_finished(job)
        log.info(
            "job %s", job.state,
            extra={"job_id": job.id, "outcome": job.state, "attempts": job.attempts,
                   "ran_seconds": _seconds_between(job.started_at, job.finished_at), **details},
        )

    async def _give_back_or_fail(self, job_id: str, flight: _InFlight, *, counts_as_attempt: bool = True) -> None:
        """The job stopped before finishing: queue it again at the front. A run that counts (its worker died, or
        its events broke off) makes it a suspect (see the module docstring); its last allowed one fails it."""
        try:
            job = await self.store.require(job_id)
        except JobNotFound:
            return
        if job.state != "running":
            return
        if self._stopping:
            # Queued again all together once every job is back, so they keep their order (see stop()).
            self._handed_back.append(JobRef.of(job))
            return
        if counts_as_attempt:
            if job.attempts >= self.settings.max_attempts:
                await self._fail(job, CRASHED_REPEATEDLY.format(attempts=job.attempts))
                return
            self._suspects.add(job_id)
        await self._give_back(job_id, counts_as_attempt=counts_as_attempt, flight=flight)

    async def _give_back(self, job_id: str, *, counts_as_attempt: bool, flight: _InFlight | None = None) -> None:
        try:
            requeued = await self.store.requeue(job_id, counts_as_attempt=counts_as_attempt)
        except (IllegalTransition, JobNotFound):
            return
        if flight is not None and flight.cancel_requested:
            # Cancelled while it was being handed back: cancel() found it neither queued nor (in the store)
            # finished, and moves the stored row on from 'queued' itself. Queuing it would leave a ghost that
            # holds a place in its owner's waiting cap until popped.
            self._suspects.discard(job_id)
            return
        self.queue.requeue(JobRef.of(requeued))
        log.info("job queued again at the front", extra={"job_id": job_id, "attempts": requeued.attempts})
        if not self._stopping:
            self.progress.waiting(requeued, " again: the generator restarted")
        self._wake.set()


def _seconds_between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(max(0.0, end - start), 3)


def settings_from(bot_settings: object) -> DispatchSettings:
    """DispatchSettings from a `bot.settings.BotSettings` (kept loose so this module needs no pydantic)."""
    worker = bot_settings.worker  # type: ignore[attr-defined]
    queue = bot_settings.queue  # type: ignore[attr-defined]
    return DispatchSettings(
        max_in_flight=DispatchSettings.max_in_flight if worker.max_batch_size == "auto" else worker.max_batch_size,
        caps=UserCaps(running=queue.max_running_per_user, queued=queue.max_queued_per_user),
        snapshots_per_job=worker.snapshots_per_job,
        timelapse=worker.timelapse,
        stop_timeout=worker.stop_timeout_seconds,
        max_attempts=worker.max_attempts,
        eta_history=queue.eta_history,
        default_job_seconds=queue.default_job_seconds,
    )

