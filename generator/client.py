"""The asyncio side of the generation process: start it, feed it jobs, stream their events, keep it alive.

The bot imports this module, so it must never import torch: the process that runs torch is started with the
multiprocessing "spawn" method and only imports `generator.worker` inside itself.

One worker process at a time owns the GPU. Spawning it, its pipes and the threads that read and write them are
`generator.worker_process`'s; this module is the policy around them. A supervisor task watches for
silence (a frozen process), steps that take too long (a hang) and starts that take too long, and kills such a
worker; every case then follows the same path as any other death.

This client is the one place that restarts workers, and it never gives up: a worker that dies is replaced at
once; starts that keep failing are retried after growing pauses (`WorkerConfig.start_retry_pauses_s`), and so
is a start whose models fail to load, which would fail the same way right away (an admin may fix the weights
meanwhile). `health()` says where it stands and why, and counts each replacement process once in `restarts`.

Jobs are not re-run here. A job goes to a worker only while one is ready (`health().accepting_jobs`); at other
times `submit()` hands it straight back (JobInterrupted, not the job's fault). When a worker dies, each job it
held ends with JobInterrupted naming the death. The caller, the bot's dispatcher, is the one scheduler: it
queues such a job again at the front of its fair queue, counts that run as one of the job's attempts and runs
it again alone (no two such jobs together), so a job that kills every worker fails by itself after its last
attempt while the jobs that shared its worker finish: nothing is lost, and a crash loop is found.

Messages between client and worker that callers never see (submit, cancel, stop, ready, heartbeat, ...), the
worker's configuration and its health are in `generator.wire`; `generator.protocol` holds what callers see.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

from generator.protocol import (
    FINAL_EVENTS,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobInterrupted,
    JobProgress,
    JobRequest,
    JobResult,
    SpecError,
)
from generator.wire import (
    CancelJob,
    EarlyCancels,
    Heartbeat,
    StepDone,
    StopWorker,
    SubmitJob,
    WorkerConfig,
    WorkerHealth,
    WorkerReady,
    WorkerStartFailed,
    WorkerStateKeeper,
    WorkerStopped,
    health_as_reported,
)
from generator.worker_process import WorkerProcess, describe_exit

log = logging.getLogger("bigsleep.client")


def refusal_reason(request: JobRequest) -> str | None:
    """Why a job is refused before it reaches a worker: the spec's own ranges. A size the worker did not load is
    the worker's to refuse (it knows what it has)."""
    try:
        request.spec.validate()
    except SpecError as error:
        return str(error)
    return None


class WorkerStartError(RuntimeError):
    """The first worker could not be started (its models failed to load, it kept dying, or it was too slow)."""


# ---- the client -------------------------------------------------------------------------------------------


class JobEvents:
    """The events of one job, in order; iteration ends after the final one (result, failure, cancel, interrupt)."""

    def __init__(self, job_id: str, events: asyncio.Queue[JobEvent]):
        self.job_id = job_id
        self._events = events
        self._ended = False

    def __aiter__(self) -> JobEvents:
        return self

    async def __anext__(self) -> JobEvent:
        if self._ended:
            raise StopAsyncIteration
        event = await self._events.get()
        if isinstance(event, FINAL_EVENTS):
            self._ended = True
        return event


@dataclass(eq=False)
class _Ticket:
    request: JobRequest
    events: asyncio.Queue[JobEvent]
    # The worker that holds the job.
    worker: _Incarnation
    cancel_requested: bool = False

    @property
    def job_id(self) -> str:
        return self.request.job_id


class _Incarnation(WorkerProcess):
    """One worker process, and what the client knows of it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.started_at = time.monotonic()
        self.last_heard = self.started_at
        # Last sign that held jobs are moving: a step or job event, or work arriving at an idle worker.
        self.last_progress = self.started_at
        self.ready: WorkerReady | None = None
        self.start_failure: str | None = None
        self.exit_seen_at: float | None = None


class GenerationClient:
    """Runs jobs in a supervised generation process; see the module docstring.

    Use from one event loop: `await start()`, then `submit()` jobs and iterate their events, `cancel()` them,
    read `health()`, and finally `await stop()` (or use `async with`).
    """

    def __init__(self, config: WorkerConfig | None = None):
        self.config = config or WorkerConfig()
        self._context = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tickets: dict[str, _Ticket] = {}
        # Cancels of jobs not submitted (yet): one submitted after its cancel ends at once, never sent.
        self._early_cancels = EarlyCancels()
        self._worker: _Incarnation | None = None
        self._numbers = itertools.count(1)
        self._state = WorkerStateKeeper()
        self._processes_started = 0
        # Failed starts since a worker was last ready, and the pauses taken among them.
        self._failed_starts = 0
        self._pauses_taken = 0
        self._failure: str | None = None
        self._retry_at: float | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._first_start: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._last_step: StepDone | None = None
        self._last_step_at: float | None = None

    async def __aenter__(self) -> GenerationClient:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---- public API ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker and wait until its models are loaded.

        Raises WorkerStartError if the first worker cannot be started (its models fail to load, or it failed
        `start_failures_before_pausing` times). The client then goes on trying after pauses until stop(), so a
        caller that can wait (the bot) just reads health() from then on; one that cannot calls stop()."""
        if self._state.state != "not started":
            raise RuntimeError(f"start() was already called (state: {self._state.state})")
        self._loop = asyncio.get_running_loop()
        self._first_start = self._loop.create_future()
        self._state.set("starting")
        self._supervisor = self._loop.create_task(self._supervise(), name="bigsleep-generator-supervisor")
        self._launch_worker()
        try:
            await self._first_start
        except asyncio.CancelledError:
            await self.stop()
            raise

    def submit(self, request: JobRequest) -> JobEvents:
        """Hand a job to the worker now; its events (progress..., then one final event) come from the returned
        iterator.

        A job cancelled before it was submitted ends at once with JobCancelled; one whose spec is out of range
        or of a size the worker did not load ends at once with JobFailed; one submitted while no worker is ready
        (see health().accepting_jobs) ends at once with JobInterrupted.
        """
        if self._state.state in ("not started", "stopping", "stopped"):
            raise RuntimeError(f"cannot submit jobs: the generation client is {self._state.state}")
        if request.job_id in self._tickets:
            raise ValueError(f"job {request.job_id!r} is already running")
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        problem = refusal_reason(request)
        worker = self._worker
        if self._early_cancels.take(request.job_id):
            events.put_nowait(JobCancelled(request.job_id))
        elif problem is not None:
            events.put_nowait(JobFailed(request.job_id, problem))
        elif not self._state.accepting_jobs or worker is None:
            events.put_nowait(JobInterrupted(request.job_id))
        else:
            if not self._holds_jobs(worker):
                worker.last_progress = time.monotonic()  # the hang clock starts when an idle worker gets work
            self._tickets[request.job_id] = _Ticket(request, events, worker)
            worker.send(SubmitJob(request))
        return JobEvents(request.job_id, events)

    async def cancel(self, job_id: str) -> bool:
        """Stop a job at the next step boundary; its stream ends with JobCancelled (or with its result, if it
        finished first). False if the job is unknown or already over; an unknown one may be on its way (the
        caller cancelled while handing it over), so if it is submitted soon after, it ends at once, unrun."""
        ticket = self._tickets.get(job_id)
        if ticket is None:
            self._early_cancels.add(job_id)
            return False
        if not ticket.cancel_requested:
            ticket.cancel_requested = True
            ticket.worker.send(CancelJob(job_id))
        return True

    def health(self) -> WorkerHealth:
        """A snapshot of the worker's state; cheap, never waits."""
        worker = self._worker if self._worker is not None and not self._worker.gone else None
        ready = worker.ready if worker is not None else None
        return health_as_reported(
            self.config,
            ready,
            self._last_step,
            self._last_step_at,
            state=self._state.state,
            accepting_jobs=self._state.accepting_jobs,
            worker_id=self.config.worker_id,
            alive=ready is not None,
            restarts=max(0, self._processes_started - 1),
            pid=worker.pid if worker is not None else None,
            in_flight_jobs=tuple(self._tickets),
            failure=self._failure,
            failed_starts=self._failed_starts,
            retry_at=self._retry_at,
        )

    async def wait_until_accepting(self) -> None:
        """Return once a worker takes jobs (at once if one does now)."""
        await self._state.wait_until_accepting()

    async def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown: the worker finishes its current step, every unfinished job ends with JobInterrupted
        (queue them again later), and the process is gone when this returns (killed after `timeout`)."""
        if self._state.state == "not started":
            self._state.set("stopped")
            return
        if self._state.state in ("stopping", "stopped"):
            await self._stopped.wait()
            return
        self._state.set("stopping")
        self._retry_at = None
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self._first_start is not None and not self._first_start.done():
            self._first_start.set_exception(WorkerStartError("the generation client was stopped while starting"))
        if self._supervisor is not None:
            self._supervisor.cancel()
        worker = self._worker
        if worker is not None and not worker.gone:
            if worker.ready is None:
                # Still loading models: nothing to finish, and it would not read our request before it is done.
                worker.kill("stopped while starting")
            else:
                worker.send(StopWorker())
            try:
                await asyncio.wait_for(worker.exited.wait(), timeout)
            except TimeoutError:
                worker.kill(f"it did not stop within {timeout:g} s")
                await worker.exited.wait()
        for ticket in list(self._tickets.values()):
            self._finish(ticket, JobInterrupted(ticket.job_id))
        if worker is not None:
            await worker.join_threads()
        self._state.set("stopped")
        self._stopped.set()

    # ---- worker lifecycle ---------------------------------------------------------------------------------

    def _launch_worker(self) -> None:
        try:
            self._launch()
        except Exception as error:  # no process could be created at all (out of memory, out of processes)
            log.exception("could not start a generation process")
            self._start_failed(f"no generation process could be created: {error}", certain_to_repeat=True)

    def _launch(self) -> None:
        worker = _Incarnation.spawn(
            self._context,
            self.config,
            next(self._numbers),
            loop=self._loop,
            on_message=self._on_message,
            on_exit=self._on_worker_gone,
        )
        self._processes_started += 1
        self._worker = worker
        log.info("started generation process %d (pid %s)", worker.number, worker.pid)

    def _on_message(self, worker: _Incarnation, message: Any) -> None:
        if worker.gone or worker is not self._worker:
            return
        now = time.monotonic()
        worker.last_heard = now
        if isinstance(message, Heartbeat):
            return
        if isinstance(message, StepDone):
            worker.last_progress = now
            self._last_step, self._last_step_at = message, time.time()
        elif isinstance(message, (JobProgress, *FINAL_EVENTS)):
            worker.last_progress = now
            self._deliver(worker, message)
        elif isinstance(message, WorkerReady):
            self._on_ready(worker, message)
        elif isinstance(message, WorkerStartFailed):
            worker.start_failure = message.reason
        elif isinstance(message, WorkerStopped):
            log.info("generation process %d stopped cleanly", worker.number)
        else:
            log.warning("unexpected message from generation process %d: %r", worker.number, message)

    def _on_ready(self, worker: _Incarnation, ready: WorkerReady) -> None:
        worker.ready = ready
        worker.last_progress = time.monotonic()
        self._failed_starts = self._pauses_taken = 0
        self._failure = None
        if self._state.state in ("starting", "restarting"):
            self._state.set("ready")
        log.info(
            "generation process %d ready: %s models, sizes %s, on %s (CLIP %s), %.1f s after start",
            worker.number, ready.models_kind, list(ready.sizes), ready.device, ready.clip_dtype,
            time.monotonic() - worker.started_at,
        )
        if self._first_start is not None and not self._first_start.done():
            self._first_start.set_result(None)

    def _on_worker_gone(self, worker: _Incarnation, exit_code: int | None) -> None:
        if not worker.mark_gone(exit_code):
            return
        if worker is not self._worker:
            return
        held = [ticket for ticket in self._tickets.values() if ticket.worker is worker]
        if self._state.state in ("stopping", "stopped"):
            for ticket in held:
                self._finish(ticket, JobInterrupted(ticket.job_id))
            return
        reason = worker.death_reason or describe_exit(exit_code)
        if worker.ready is None:  # it held no job: jobs go to ready workers only
            cause = worker.start_failure or f"the generation process ended before it was ready ({reason})"
            self._start_failed(cause, certain_to_repeat=worker.start_failure is not None, number=worker.number)
            return
        log.error(
            "generation process %d (pid %s) died: %s; %d job(s) handed back; starting a new one",
            worker.number, worker.pid, reason, len(held),
        )
        self._failure = f"the last generation process died: {reason}"
        for ticket in held:
            self._finish(ticket, JobCancelled(ticket.job_id) if ticket.cancel_requested else JobInterrupted(ticket.job_id, reason))
        self._state.set("restarting")
        self._launch_worker()

    def _start_failed(self, cause: str, *, certain_to_repeat: bool, number: int | None = None) -> None:
        """A start failed: start another at once, or after a pause when starts keep failing or would fail alike."""
        self._failed_starts += 1
        self._failure = cause
        which = f"generation process {number}" if number is not None else "a generation process"
        if not certain_to_repeat and self._failed_starts < self.config.start_failures_before_pausing:
            log.error("%s failed to start: %s; trying again now", which, cause)
            self._state.set("restarting")
            self._launch_worker()
            return
        pauses = self.config.start_retry_pauses_s
        pause = pauses[min(self._pauses_taken, len(pauses) - 1)]
        self._pauses_taken += 1
        self._retry_at = time.time() + pause
        self._state.set("waiting to retry")
        log.error("%s failed to start (%d in a row): %s; trying again in %g s", which, self._failed_starts, cause, pause)
        self._retry_timer = self._loop.call_later(pause, self._retry_start)
        if self._first_start is not None and not self._first_start.done():
            self._first_start.set_exception(WorkerStartError(cause))

    def _retry_start(self) -> None:
        self._retry_timer = self._retry_at = None
        if self._state.state == "waiting to retry":
            self._state.set("restarting")
            self._launch_worker()

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self.config.supervise_interval_s)
            try:
                self._check_worker()
            except Exception:  # keep watching: a bug here must not leave the worker unsupervised
                log.exception("supervising the generation process failed")

    def _check_worker(self) -> None:
        config = self.config
        worker = self._worker
        if worker is None or worker.gone or worker.death_reason is not None:
            return
        now = time.monotonic()
        if worker.has_exited():
            # Normally the reader thread reports an exit at once (end of pipe). If something else still holds
            # the pipe open, that never comes: go on without it.
            worker.exit_seen_at = worker.exit_seen_at or now
            if now - worker.exit_seen_at > 2.0:
                self._on_worker_gone(worker, None)
            return
        if worker.ready is None:
            # Loading can hold the GIL for long stretches (unpickling weights), so no heartbeat rule yet.
            if now - worker.started_at > config.startup_timeout_s:
                worker.kill(f"it did not load its models within {config.startup_timeout_s:g} s")
        elif now - worker.last_heard > config.heartbeat_timeout_s:
            worker.kill(f"it stopped answering for {now - worker.last_heard:.0f} s")
        elif self._holds_jobs(worker) and now - worker.last_progress > config.hang_timeout_s:
            worker.kill(f"a step hung: no progress for {now - worker.last_progress:.0f} s")

    # ---- jobs ---------------------------------------------------------------------------------------------

    def _holds_jobs(self, worker: _Incarnation) -> bool:
        return any(ticket.worker is worker for ticket in self._tickets.values())

    def _deliver(self, worker: _Incarnation, event: JobEvent) -> None:
        ticket = self._tickets.get(event.job_id)
        if ticket is None or ticket.worker is not worker:
            return  # a job already ended here (cancelled while the worker finished it, say)
        if isinstance(event, FINAL_EVENTS):
            self._finish(ticket, event)
        else:
            ticket.events.put_nowait(event)

    def _finish(self, ticket: _Ticket, event: JobResult | JobFailed | JobCancelled | JobInterrupted) -> None:
        if self._tickets.get(ticket.job_id) is ticket:
            del self._tickets[ticket.job_id]
            ticket.events.put_nowait(event)

