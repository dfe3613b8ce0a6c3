"""The asyncio side of the generation process: start it, feed it jobs, stream their events, keep it alive.

The bot imports this module, so it must never import torch: the process that runs torch is started with the
multiprocessing "spawn" method and only imports `generator.worker` inside itself.

One worker process at a time owns the GPU. Each process (an "incarnation") gets its own pair of pipes, so a
process that is killed mid-message can never leave a half-written message or a held lock behind for the next
one. A reader thread per incarnation turns pipe messages into calls on the event loop; a writer thread sends,
so a worker busy with a long step never blocks the event loop on a full pipe. A supervisor task watches for
silence (a frozen process) and for steps that take too long (a hang), kills such a worker, and both cases then
follow the same path as any other death: the jobs it held run again in a new process, once, and one at a time
(each may share its steps with new jobs), so that a job which kills the worker again fails alone.

Messages between client and worker that callers never see (submit, cancel, stop, ready, heartbeat, ...), the
worker's configuration and its health are in `generator.wire`; `generator.protocol` holds what callers see.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import multiprocessing
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_objects
from multiprocessing.process import BaseProcess
from typing import Any

from generator.protocol import (
    FINAL_EVENTS,
    JobCancelled,
    JobEvent,
    JobFailed,
    JobInterrupted,
    JobProgress,
    JobRequest,
    JobRestarted,
    JobResult,
    SpecError,
)
from generator.wire import (
    CancelJob,
    Heartbeat,
    StepDone,
    StopWorker,
    SubmitJob,
    WorkerConfig,
    WorkerHealth,
    WorkerReady,
    WorkerStartFailed,
    WorkerStopped,
)

log = logging.getLogger("bigsleep.client")

CRASHED_TWICE = (
    "The image generator crashed twice while making this image, so it gave up on it. "
    "Other settings (fewer steps, cutouts or a smaller size) may work."
)
# How long a worker that closed its pipe may take to exit before it is killed.
EXIT_GRACE_S = 10.0
GENERATOR_UNAVAILABLE = "The image generator is not available right now; please try again later."


class WorkerStartError(RuntimeError):
    """The generation process could not be started (models failed to load, it kept dying, or it was too slow)."""


def _run_worker_process(config: WorkerConfig, requests: Connection, events: Connection) -> None:
    """Entry point of the spawned process. Lives here, torch-free, so that starting it never imports torch here."""
    if config.log_formatter is not None:
        # Installed before serve() so that its own logging.basicConfig finds a handler and leaves it alone.
        module_name, _, formatter_name = config.log_formatter.partition(":")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(getattr(importlib.import_module(module_name), formatter_name)())
        logging.basicConfig(level=config.log_level, handlers=[handler])
    from generator.worker import serve

    serve(config, requests, events)


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
    # The worker that holds the job; None while it waits for a worker to be ready.
    worker: _Incarnation | None = None
    # Worker deaths while a worker held this job.
    deaths: int = 0
    cancel_requested: bool = False

    @property
    def job_id(self) -> str:
        return self.request.job_id


class _Incarnation:
    """One worker process and everything that talks to it."""

    def __init__(self, number: int, process: BaseProcess, requests: Connection, events: Connection):
        self.number = number
        self.process = process
        self.pid = process.pid
        self.requests = requests
        self.events = events
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.started_at = time.monotonic()
        self.last_heard = self.started_at
        # Last sign that held jobs are moving: a step or job event, or work arriving at an idle worker.
        self.last_progress = self.started_at
        self.ready: WorkerReady | None = None
        self.start_failure: str | None = None
        # Set when we kill it on purpose (hang, silence, too slow to start), to say why.
        self.death_reason: str | None = None
        self.exit_seen_at: float | None = None
        self.gone = False
        self.exited = asyncio.Event()
        self.threads: list[threading.Thread] = []

    def send(self, message: Any) -> None:
        self.outbox.put(message)


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
        self._worker: _Incarnation | None = None
        self._numbers = itertools.count(1)
        self._state = "not started"
        self._restarts = 0
        self._start_failures = 0
        self._failure: str | None = None
        self._first_start: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._last_step: StepDone | None = None
        self._last_step_at: float | None = None

    async def __aenter__(self) -> GenerationClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---- public API ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker and wait until its models are loaded. Raises WorkerStartError if that fails."""
        if self._state != "not started":
            raise RuntimeError(f"start() was already called (state: {self._state})")
        self._loop = asyncio.get_running_loop()
        self._state = "starting"
        self._first_start = self._loop.create_future()
        try:
            self._launch()
            self._supervisor = self._loop.create_task(self._supervise(), name="bigsleep-generator-supervisor")
            await self._first_start
        except BaseException:
            await self.stop()
            raise

    def submit(self, request: JobRequest) -> JobEvents:
        """Queue a job now; its events (progress..., then one final event) come from the returned iterator.

        A job whose spec is out of range or of a size the worker did not load ends at once with JobFailed.
        """
        if self._state in ("not started", "stopping", "stopped"):
            raise RuntimeError(f"cannot submit jobs: the generation client is {self._state}")
        if request.job_id in self._tickets:
            raise ValueError(f"job {request.job_id!r} is already running")
        ticket = _Ticket(request, asyncio.Queue())
        self._tickets[request.job_id] = ticket
        problem = self._reason_to_refuse(request)
        if problem is not None:
            self._finish(ticket, JobFailed(request.job_id, problem))
        elif self._worker_accepts_jobs():
            self._dispatch()
        return JobEvents(request.job_id, ticket.events)

    async def cancel(self, job_id: str) -> bool:
        """Stop a job at the next step boundary; its stream ends with JobCancelled (or with its result, if it
        finished first). False if the job is unknown or already over."""
        ticket = self._tickets.get(job_id)
        if ticket is None:
            return False
        if not ticket.cancel_requested:
            ticket.cancel_requested = True
            if ticket.worker is None:
                self._finish(ticket, JobCancelled(job_id))
            else:
                ticket.worker.send(CancelJob(job_id))
        return True

    def health(self) -> WorkerHealth:
        """A snapshot of the worker's state; cheap, never waits."""
        worker = self._worker
        alive = worker is not None and worker.ready is not None and not worker.gone and self._state == "ready"
        return WorkerHealth(
            state=self._state,
            alive=alive,
            pid=worker.pid if worker is not None and not worker.gone else None,
            restarts=self._restarts,
            in_flight_jobs=tuple(self._tickets),
            last_step_at=self._last_step_at,
            last_step_seconds=self._last_step.seconds if self._last_step else None,
            last_step_batch_size=self._last_step.batch_size if self._last_step else None,
            models_kind=self.config.models_kind,
            device=worker.ready.device if worker is not None and worker.ready is not None else None,
            failure=self._failure,
        )

    async def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown: the worker finishes its current step, every unfinished job ends with JobInterrupted
        (queue them again later), and the process is gone when this returns (killed after `timeout`)."""
        if self._state == "not started":
            self._state = "stopped"
            return
        if self._state in ("stopping", "stopped"):
            await self._stopped.wait()
            return
        self._state = "stopping"
        if self._first_start is not None and not self._first_start.done():
            self._first_start.set_exception(WorkerStartError("the generation client was stopped while starting"))
        if self._supervisor is not None:
            self._supervisor.cancel()
        worker = self._worker
        if worker is not None and not worker.gone:
            if worker.ready is None:
                # Still loading models: nothing to finish, and it would not read our request before it is done.
                self._kill(worker, "stopped while starting")
            else:
                worker.send(StopWorker())
            try:
                await asyncio.wait_for(worker.exited.wait(), timeout)
            except TimeoutError:
                self._kill(worker, f"it did not stop within {timeout:g} s")
                await worker.exited.wait()
        for ticket in list(self._tickets.values()):
            self._finish(ticket, JobInterrupted(ticket.job_id))
        if worker is not None:
            await self._join_threads(worker)
        self._state = "stopped"
        self._stopped.set()

    # ---- worker lifecycle ---------------------------------------------------------------------------------

    def _launch(self) -> None:
        number = next(self._numbers)
        worker_reads, client_writes = self._context.Pipe(duplex=False)
        client_reads, worker_writes = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_run_worker_process,
            args=(self.config, worker_reads, worker_writes),
            name=f"bigsleep-generator-{number}",
            # multiprocessing terminates daemonic children when this interpreter exits, even without stop().
            daemon=True,
        )
        process.start()
        # The child has its own copies now. Closing ours is what makes the child's death show as end-of-pipe.
        worker_reads.close()
        worker_writes.close()
        worker = _Incarnation(number, process, client_writes, client_reads)
        for target, role in ((self._read_events, "reader"), (self._write_requests, "writer")):
            thread = threading.Thread(target=target, args=(worker,), name=f"bigsleep-generator-{number}-{role}", daemon=True)
            worker.threads.append(thread)
            thread.start()
        self._worker = worker
        log.info("started generation process %d (pid %s)", number, process.pid)

    def _read_events(self, worker: _Incarnation) -> None:
        """Reader thread: blocking receives, handed to the event loop; on end of pipe, reaps the process."""
        while True:
            try:
                message = worker.events.recv()
            except (EOFError, OSError):
                break
            except Exception:  # a message that does not unpickle: this worker cannot be trusted any more
                log.exception("unreadable message from generation process %d; killing it", worker.number)
                worker.death_reason = "it sent an unreadable message"
                worker.process.kill()
                break
            self._call_in_loop(self._on_message, worker, message)
        worker.events.close()
        # End of pipe means the process is gone (a death closes its pipes) or exiting after a clean stop; wait
        # for it here, off the event loop.
        worker.process.join(EXIT_GRACE_S)
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()
        self._call_in_loop(self._on_worker_gone, worker, worker.process.exitcode)

    def _write_requests(self, worker: _Incarnation) -> None:
        """Writer thread: a worker in a long step reads nothing, and a full pipe must not block the event loop."""
        while True:
            message = worker.outbox.get()
            if message is None:
                break
            try:
                worker.requests.send(message)
            except (OSError, ValueError):
                break  # the worker is gone; the reader thread reports it
        worker.requests.close()

    def _call_in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the event loop is closed: nobody is left to tell

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
        self._start_failures = 0
        if self._state in ("starting", "restarting"):
            self._state = "ready"
        log.info(
            "generation process %d ready: %s models, sizes %s, on %s (CLIP %s), %.1f s after start",
            worker.number, ready.models_kind, list(ready.sizes), ready.device, ready.clip_dtype,
            time.monotonic() - worker.started_at,
        )
        if self._first_start is not None and not self._first_start.done():
            self._first_start.set_result(None)
        if self._state == "ready":
            self._dispatch()

    def _on_worker_gone(self, worker: _Incarnation, exit_code: int | None) -> None:
        if worker.gone:
            return
        worker.gone = True
        worker.send(None)  # ends the writer thread
        worker.exited.set()
        if exit_code is not None:
            worker.process.close()  # the reader thread has reaped it; this frees its sentinel
        if worker is not self._worker:
            return
        held = [ticket for ticket in self._tickets.values() if ticket.worker is worker]
        if self._state in ("stopping", "stopped"):
            for ticket in held:
                self._finish(ticket, JobInterrupted(ticket.job_id))
            return
        reason = worker.death_reason or _describe_exit(exit_code)
        if worker.ready is None:
            self._start_failures += 1
            cause = worker.start_failure or f"the generation process ended before it was ready ({reason})"
            log.error("generation process %d failed to start: %s", worker.number, cause)
            if worker.start_failure is not None or self._start_failures >= self.config.max_start_failures:
                self._give_up(cause)
                return
        else:
            log.error("generation process %d (pid %s) died: %s; %d job(s) were in flight", worker.number, worker.pid, reason, len(held))
        for ticket in held:
            ticket.worker = None
            ticket.deaths += 1
            if ticket.cancel_requested:
                self._finish(ticket, JobCancelled(ticket.job_id))
            elif ticket.deaths >= 2:
                self._finish(ticket, JobFailed(ticket.job_id, CRASHED_TWICE))
            else:
                ticket.events.put_nowait(JobRestarted(ticket.job_id, f"The image generator restarted ({reason}); this image starts again."))
        self._state = "restarting" if self._state == "ready" else self._state
        self._restarts += 1
        try:
            self._launch()
        except Exception as error:  # no process could be created at all (out of memory, out of processes)
            log.exception("could not start a new generation process")
            self._give_up(f"could not start a new generation process: {error}")

    def _give_up(self, reason: str) -> None:
        self._state = "failed"
        self._failure = reason
        if self._first_start is not None and not self._first_start.done():
            self._first_start.set_exception(WorkerStartError(reason))
        for ticket in list(self._tickets.values()):
            self._finish(ticket, JobFailed(ticket.job_id, GENERATOR_UNAVAILABLE))

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
        if wait_for_objects([worker.process.sentinel], timeout=0):  # exited (without reaping it: the reader does)
            # Normally the reader thread reports an exit at once (end of pipe). If something else still holds
            # the pipe open, that never comes: go on without it.
            worker.exit_seen_at = worker.exit_seen_at or now
            if now - worker.exit_seen_at > 2.0:
                self._on_worker_gone(worker, None)
            return
        if worker.ready is None:
            # Loading can hold the GIL for long stretches (unpickling weights), so no heartbeat rule yet.
            if now - worker.started_at > config.startup_timeout_s:
                self._kill(worker, f"it did not load its models within {config.startup_timeout_s:g} s")
        elif now - worker.last_heard > config.heartbeat_timeout_s:
            self._kill(worker, f"it stopped answering for {now - worker.last_heard:.0f} s")
        elif self._holds_jobs(worker) and now - worker.last_progress > config.hang_timeout_s:
            self._kill(worker, f"a step hung: no progress for {now - worker.last_progress:.0f} s")

    def _kill(self, worker: _Incarnation, reason: str) -> None:
        if worker.gone:
            return
        log.error("killing generation process %d (pid %s): %s", worker.number, worker.pid, reason)
        worker.death_reason = reason
        try:
            worker.process.kill()
        except (OSError, ValueError):
            pass  # already gone or reaped

    async def _join_threads(self, worker: _Incarnation) -> None:
        loop = asyncio.get_running_loop()
        for thread in worker.threads:
            await loop.run_in_executor(None, thread.join, 5.0)

    # ---- jobs ---------------------------------------------------------------------------------------------

    def _reason_to_refuse(self, request: JobRequest) -> str | None:
        if self._state == "failed":
            return GENERATOR_UNAVAILABLE
        try:
            request.spec.validate()
        except SpecError as error:
            return str(error)
        if request.spec.size not in self.config.sizes:
            sizes = ", ".join(f"{size}" for size in sorted(self.config.sizes))
            return f"This generator makes images of {sizes} pixels only, not {request.spec.size}."
        return None

    def _worker_accepts_jobs(self) -> bool:
        worker = self._worker
        return self._state == "ready" and worker is not None and worker.ready is not None and not worker.gone

    def _holds_jobs(self, worker: _Incarnation) -> bool:
        return any(ticket.worker is worker for ticket in self._tickets.values())

    def _dispatch(self) -> None:
        """Send the worker every job waiting for one, except that jobs which were in a worker when it died go
        one at a time: a job that kills its worker again is then found without taking innocent jobs with it."""
        if not self._worker_accepts_jobs():
            return
        worker = self._worker
        suspect_held = any(ticket.worker is worker and ticket.deaths > 0 for ticket in self._tickets.values())
        for ticket in list(self._tickets.values()):
            if ticket.worker is not None or (ticket.deaths > 0 and suspect_held):
                continue
            suspect_held = suspect_held or ticket.deaths > 0
            if not self._holds_jobs(worker):
                worker.last_progress = time.monotonic()  # the hang clock starts when an idle worker gets work
            ticket.worker = worker
            worker.send(SubmitJob(ticket.request))

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
            ticket.worker = None
            ticket.events.put_nowait(event)
            if ticket.deaths > 0 and self._state == "ready":
                self._dispatch()  # the next job re-run after a death may go now


def _describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "it exited"
    if exit_code < 0:
        try:
            return f"it was killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"it was killed by signal {-exit_code}"
    return f"it exited with code {exit_code}"
