"""Workers on a Ray cluster, as the bot's dispatcher sees them: a pool (bot.jobs.ports.WorkerPool) whose workers
come and go with the cluster's GPUs, each a `RayWorker` (a bot.jobs.ports.GenerationBackend).

The bot's process imports neither ray nor torch: this pool spawns the Ray bridge (generator.ray_bridge, the Ray
driver) as a process of its own, the way generator.client spawns a generation process, and talks to it over
pipes. The bridge keeps one actor per GPU and says when one joins, is ready, reports job events, or leaves.

- A worker that leaves (its actor or node died, it hung or went silent) ends each job it held with
  JobInterrupted naming the death: the dispatcher queues it again at the front, charged one attempt, and another
  worker runs it.
- A bridge that ends (the cluster cannot be reached, at start or later) takes every worker with it; health()
  says why ("no workers: the Ray cluster at ... cannot be reached: ..."), jobs wait in the queue, and a new
  bridge is started after growing pauses until the cluster answers again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import time
from dataclasses import dataclass, replace
from typing import Any

from generator.client import JobEvents, refusal_reason
from generator.protocol import FINAL_EVENTS, JobCancelled, JobEvent, JobFailed, JobInterrupted, JobRequest
from generator.ray_bridge import run_bridge_process
from generator.wire import (
    CancelJob,
    ClusterState,
    EarlyCancels,
    FromWorker,
    Heartbeat,
    PoolHealth,
    StepDone,
    StopWorker,
    SubmitJob,
    ToWorker,
    WorkerConfig,
    WorkerHealth,
    WorkerJoined,
    WorkerLeft,
    WorkerReady,
    WorkerStartFailed,
    WorkerStateKeeper,
    WorkerStopped,
    health_as_reported,
)
from generator.worker_process import WorkerProcess, describe_exit

log = logging.getLogger("bigsleep.ray")


@dataclass(frozen=True)
class RayPoolConfig:
    """What the pool and its bridge need (picklable: it is sent to the bridge process)."""

    # The Ray head, "host:port".
    address: str
    # Each worker's configuration (models, sizes, batch size, precision, timeouts, logging); the bridge names it
    # and sets its device (its GPU, or the CPU).
    worker: WorkerConfig
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    # 0: one worker per GPU the cluster offers.
    max_workers: int = 0
    namespace: str = "bigsleep"
    connect_timeout_s: float = 30.0
    # A worker (or the cluster's control store) that does not answer for this long counts as gone.
    silence_timeout_s: float = 8.0
    # How often the bridge looks at the cluster's resources (new GPUs) and whether it answers.
    poll_interval_s: float = 1.0
    # Pauses before starting a new bridge after one ended; the last one repeats; a ready worker starts them over.
    reconnect_pauses_s: tuple[float, ...] = (2.0, 5.0, 10.0, 30.0)
    stop_timeout_s: float = 20.0
    # Workers are named ray-<n> from this number on (each new bridge goes on from the last name).
    first_worker_number: int = 1

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise ValueError("the Ray cluster's address is needed")
        if self.gpus_per_worker == 0 and self.max_workers == 0:
            raise ValueError("CPU workers (gpus_per_worker = 0) need max_workers")


class RayWorker:
    """One actor of the cluster, through the pool's bridge. Started, restarted and stopped by the pool; its own
    start() and stop() only follow what the pool does."""

    def __init__(self, pool: RayPool, worker_id: str) -> None:
        self.worker_id = worker_id
        self._pool = pool
        self._state = WorkerStateKeeper()
        self._state.set("starting")
        self._ready: WorkerReady | None = None
        self._tickets: dict[str, asyncio.Queue[JobEvent]] = {}
        self._cancel_requested: set[str] = set()
        # Cancels of jobs not submitted (yet): one submitted after its cancel ends at once, never sent.
        self._early_cancels = EarlyCancels()
        self._failure: str | None = None
        self._last_step: StepDone | None = None
        self._last_step_at: float | None = None

    # ---- a worker, as the dispatcher sees it --------------------------------------------------------------

    async def start(self) -> None:
        await self._state.wait_until_accepting()

    def health(self) -> WorkerHealth:
        ready = self._ready
        return health_as_reported(
            self._pool.config.worker,
            ready,
            self._last_step,
            self._last_step_at,
            state=self._state.state,
            accepting_jobs=self._state.accepting_jobs,
            worker_id=self.worker_id,
            alive=ready is not None and self._state.state == "ready",
            pid=ready.pid if ready is not None else None,
            in_flight_jobs=tuple(self._tickets),
            failure=self._failure,
        )

    async def wait_until_accepting(self) -> None:
        await self._state.wait_until_accepting()

    def submit(self, request: JobRequest) -> JobEvents:
        """As GenerationClient.submit: JobCancelled at once if cancelled before, JobFailed for a bad spec,
        JobInterrupted while the worker takes no jobs; otherwise the job goes to the actor."""
        job_id = request.job_id
        if job_id in self._tickets:
            raise ValueError(f"job {job_id!r} is already running")
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        problem = refusal_reason(request)
        if self._early_cancels.take(job_id):
            events.put_nowait(JobCancelled(job_id))
        elif problem is not None:
            events.put_nowait(JobFailed(job_id, problem))
        elif not self._state.accepting_jobs:
            events.put_nowait(JobInterrupted(job_id))
        else:
            self._tickets[job_id] = events
            self._pool.send(ToWorker(self.worker_id, SubmitJob(request)))
        return JobEvents(job_id, events)

    async def cancel(self, job_id: str) -> bool:
        if job_id not in self._tickets:
            self._early_cancels.add(job_id)
            return False
        if job_id not in self._cancel_requested:
            self._cancel_requested.add(job_id)
            self._pool.send(ToWorker(self.worker_id, CancelJob(job_id)))
        return True

    async def stop(self, timeout: float) -> None:
        self._pool.send(ToWorker(self.worker_id, StopWorker()))

    # ---- what the pool hears about it ---------------------------------------------------------------------

    def heard(self, message: Any) -> None:
        if isinstance(message, WorkerReady):
            self._ready = message
            self._failure = None
            self._state.set("ready")
            log.info("worker %s ready on %s (%s, sizes %s)", self.worker_id, message.node, message.device, list(message.sizes))
        elif isinstance(message, WorkerStartFailed):
            self._failure = f"its models did not load: {message.reason}"
        elif isinstance(message, StepDone):
            self._last_step, self._last_step_at = message, time.time()
        elif isinstance(message, FINAL_EVENTS):
            self._end(message)
        else:
            events = self._tickets.get(message.job_id)
            if events is not None:
                events.put_nowait(message)

    def left(self, reason: str | None) -> None:
        """Gone: each job it held ends (JobInterrupted naming `reason` when it died, plainly when it stopped)."""
        self._state.set("stopped")
        if reason is not None:
            self._failure = reason
        for job_id in list(self._tickets):
            cancelled = job_id in self._cancel_requested
            self._end(JobCancelled(job_id) if cancelled else JobInterrupted(job_id, reason))

    def _end(self, event: JobEvent) -> None:
        events = self._tickets.pop(event.job_id, None)
        self._cancel_requested.discard(event.job_id)
        if events is not None:
            events.put_nowait(event)


class RayPool:
    """The workers of a Ray cluster (see the module docstring). Use from one event loop."""

    backend = "ray"

    def __init__(self, config: RayPoolConfig) -> None:
        self.config = config
        self.version = 0
        self._workers: dict[str, RayWorker] = {}
        self._changed = asyncio.Event()
        self._context = multiprocessing.get_context("spawn")
        self._bridge: WorkerProcess | None = None
        self._bridges = itertools.count(1)
        self._next_worker_number = config.first_worker_number
        self._problem: str | None = f"no workers yet: connecting to the Ray cluster at {config.address}"
        self._cluster: ClusterState | None = None
        self._pauses_taken = 0
        self._retry: asyncio.TimerHandle | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- a pool, as the dispatcher sees it ----------------------------------------------------------------

    def workers(self) -> list[RayWorker]:
        return list(self._workers.values())

    def health(self) -> PoolHealth:
        problem = self._problem
        if problem is None and not self._workers:
            problem = f"no workers yet: the Ray cluster at {self.config.address} offers no room for one"
            if self._cluster is not None and self.config.gpus_per_worker > 0 and self._cluster.gpus == 0:
                problem = f"no workers: the Ray cluster at {self.config.address} has no GPU"
        return PoolHealth(workers=tuple(worker.health() for worker in self._workers.values()), backend="ray",
                          problem=problem)

    async def start(self) -> None:
        """Start the bridge; workers join as the cluster places them (this does not wait for them)."""
        self._loop = asyncio.get_running_loop()
        self._launch_bridge()

    async def wait_for_change(self, version: int) -> None:
        while self.version == version:
            self._changed.clear()
            await self._changed.wait()

    async def stop(self, timeout: float) -> None:
        """Every worker finishes its step and hands its jobs back (JobInterrupted), then the bridge ends."""
        self._stopping = True
        if self._retry is not None:
            self._retry.cancel()
        bridge = self._bridge
        if bridge is not None and not bridge.gone:
            bridge.send(StopWorker())
            try:
                await asyncio.wait_for(bridge.exited.wait(), timeout)
            except TimeoutError:
                bridge.kill(f"it did not stop within {timeout:g} s")
                await bridge.exited.wait()
            await bridge.join_threads()
        self._drop_workers(None)

    # ---- the bridge ---------------------------------------------------------------------------------------

    def send(self, message: ToWorker) -> None:
        bridge = self._bridge
        if bridge is not None and not bridge.gone:
            bridge.send(message)

    def _launch_bridge(self) -> None:
        self._retry = None
        config = replace(self.config, first_worker_number=self._next_worker_number)
        try:
            self._bridge = WorkerProcess.spawn(
                self._context, config, next(self._bridges), loop=self._loop, on_message=self._on_message,
                on_exit=self._on_bridge_gone, target=run_bridge_process, name="bigsleep-ray-bridge",
            )
        except Exception as error:  # no process could be created at all
            log.exception("could not start the Ray bridge")
            self._problem = self._unreachable(f"no bridge process could be started: {error}")
            self._retry_later()
            return
        log.info("connecting to the Ray cluster at %s", self.config.address)

    def _on_message(self, bridge: WorkerProcess, message: Any) -> None:
        if bridge is not self._bridge or isinstance(message, Heartbeat):
            return
        if isinstance(message, ClusterState):
            self._cluster = message
            self._problem = None if message.reachable else self._unreachable(message.problem or "no reason given")
            if message.reachable:
                log.info("the Ray cluster at %s offers %g GPU(s): %d worker(s) wanted", self.config.address,
                         message.gpus, message.wanted_workers)
        elif isinstance(message, WorkerJoined):
            self._workers[message.worker_id] = RayWorker(self, message.worker_id)
            self._next_worker_number = max(self._next_worker_number, _number_of(message.worker_id) + 1)
            self._changed_membership()
        elif isinstance(message, FromWorker):
            worker = self._workers.get(message.worker_id)
            if worker is not None:
                worker.heard(message.message)
                if isinstance(message.message, WorkerReady):
                    self._pauses_taken = 0
        elif isinstance(message, WorkerLeft):
            worker = self._workers.pop(message.worker_id, None)
            if worker is not None:
                if message.died:
                    log.error("worker %s is gone: %s; its jobs go back to the queue", message.worker_id, message.reason)
                worker.left(message.reason if message.died else None)
                self._changed_membership()
        elif isinstance(message, WorkerStopped):
            log.info("the Ray bridge stopped its workers")

    def _on_bridge_gone(self, bridge: WorkerProcess, exit_code: int | None) -> None:
        if not bridge.mark_gone(exit_code) or bridge is not self._bridge:
            return
        if self._stopping:
            return
        if self._problem is None or not self._problem.startswith("no workers: the Ray cluster"):
            self._problem = self._unreachable(f"the connection ended ({bridge.death_reason or describe_exit(exit_code)})")
        log.error("%s; trying again", self._problem)
        self._drop_workers(f"the Ray cluster at {self.config.address} was lost")
        self._retry_later()

    def _retry_later(self) -> None:
        pauses = self.config.reconnect_pauses_s
        pause = pauses[min(self._pauses_taken, len(pauses) - 1)]
        self._pauses_taken += 1
        self._retry = self._loop.call_later(pause, self._launch_bridge)

    def _drop_workers(self, reason: str | None) -> None:
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.left(reason)
        if workers:
            self._changed_membership()

    def _changed_membership(self) -> None:
        self.version += 1
        self._changed.set()

    def _unreachable(self, why: str) -> str:
        return f"no workers: the Ray cluster at {self.config.address} cannot be reached: {why}"


def _number_of(worker_id: str) -> int:
    tail = worker_id.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0
