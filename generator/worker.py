"""The generation process: owns the GPU, loads the models once, and runs every job it is given, in batches.

Started by `generator.client.GenerationClient` (multiprocessing, spawn); `serve` is its main function. Jobs of
the same image size are optimised together, one engine step at a time ("continuous batching"): a new job joins
its size's batch at the next step boundary, a finished or cancelled one leaves it, and the others go on. Control
messages (submit, cancel, stop) are read between steps, so a cancel or a stop takes effect within one step.

A job's image does not depend on which jobs shared its batch: each job has its own latents, optimiser, EMA and
crop generator, and a step that fails is undone for every job in it (crop generator included) before any retry.
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from generator import batch_memory
from generator.compiled import step_networks
from generator.cpu_share import yield_cpu_to_bot
from generator.engine import DreamEngine, DreamJob, DreamOutcome, StepReport
from generator.images import png_bytes
from generator.models import (
    DreamModels,
    clip_dtype_for,
    load_models,
    prepare_process,
    resolve_device,
)
from generator.protocol import (
    DreamSpec,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    JobProgress,
    JobRequest,
    JobResult,
    SpecError,
)
from generator.weights import default_cache_dir
from generator.wire import (
    AUTO_BATCH_SIZE,
    CancelJob,
    ClientGone,
    EarlyCancels,
    EventSender,
    StepDone,
    StopWorker,
    SubmitJob,
    WorkerConfig,
    WorkerReady,
    WorkerStartFailed,
    WorkerStopped,
    send_heartbeats,
)

log = logging.getLogger("bigsleep.worker")

OUT_OF_MEMORY = (
    "The image generator ran out of memory for this image, even on its own and with fewer cutouts. "
    "Try a smaller size or fewer cutouts."
)
INTERNAL_ERROR = (
    "The image generator hit an internal error ({kind}) while making this image. "
    "It has been logged; other settings may work."
)


def serve(config: WorkerConfig, requests: Connection, events: Connection) -> None:
    """Main function of the generation process."""
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s generator[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # A native crash (segfault in a kernel, say) then leaves a Python traceback in the log before the client
    # notices the death.
    faulthandler.enable()
    # Ctrl-C in a terminal reaches the whole process group; the client decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sender = EventSender(events)
    stop_heartbeats = threading.Event()
    heartbeats = threading.Thread(
        target=send_heartbeats, args=(sender, config.heartbeat_interval_s, stop_heartbeats), name="heartbeat", daemon=True
    )
    heartbeats.start()
    exit_code = 0
    try:
        try:
            engine, batch_size = start_engine(config)
        except Exception as error:
            log.exception("could not load the models")
            exit_code = 1
            sender.send(WorkerStartFailed(f"{type(error).__name__}: {error}"))
            return
        sender.send(ready_message(engine, socket.gethostname(), batch_size))
        GenerationLoop(engine, batch_size, requests, sender, config.batch_wait_s).run()
    except ClientGone:
        log.warning("the client went away; exiting")
    except BaseException:
        # A bug in this loop, not in a job: the client sees the exit and re-runs the jobs in a new process.
        log.critical("the generation loop failed", exc_info=True)
        exit_code = 1
    finally:
        stop_heartbeats.set()
        # Everything is reported; skip the interpreter's teardown, which takes seconds with torch loaded and
        # saves nothing here (the operating system frees the memory, the GPU's included).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def ready_message(engine: DreamEngine, node: str, max_batch_size: int) -> WorkerReady:
    """What a worker says once its models are loaded (`node`: the machine it runs on)."""
    models = engine.models
    return WorkerReady(
        pid=os.getpid(),
        models_kind=models.kind,
        device=str(models.device),
        sizes=tuple(models.sizes),
        clip_dtype=str(models.clip_dtype).removeprefix("torch."),
        node=node,
        max_batch_size=max_batch_size,
        compiled=engine.networks.compiled,
    )


def batch_size_of(config: WorkerConfig, engine: DreamEngine) -> int:
    """The configured batch size, or for AUTO_BATCH_SIZE what the memory free now (models loaded) holds."""
    if config.max_batch_size != AUTO_BATCH_SIZE:
        return config.max_batch_size
    models = engine.models
    chosen = batch_memory.batch_size_for(batch_memory.free_memory_bytes(models.device), models.sizes)
    log.info("max_batch_size auto: %d jobs per batch on %s for sizes %s", chosen, models.device, list(models.sizes))
    return chosen


def start_engine(config: WorkerConfig) -> tuple[DreamEngine, int]:
    """The engine a worker serves with, and its batch size; its step compiled and warmed up when configured."""
    engine = build_engine(config)
    batch_size = batch_size_of(config, engine)
    engine.networks = step_networks(engine.models, config.compile, default_cache_dir(), config.compile_backend)
    engine.warm_up(batch_size)
    return engine, batch_size


def build_engine(config: WorkerConfig) -> DreamEngine:
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    device = resolve_device(config.device)
    prepare_process(device)
    yield_cpu_to_bot(device.type)
    started = time.perf_counter()
    models = load_models(config.models_kind, config.sizes, device, clip_dtype_for(config.clip_precision, device),
                         clip_name=config.clip_model)
    log.info("loaded %s models for %s px on %s in %.1f s", models.kind, models.sizes, device, time.perf_counter() - started)
    factory: Callable[[DreamModels], DreamEngine] = DreamEngine
    if config.engine_factory is not None:
        factory = import_object(config.engine_factory)
        log.warning("using the engine from %s", config.engine_factory)
    return factory(models)


def import_object(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def readable_reason(error: BaseException) -> str:
    """What a user is told: the text of a spec problem (written for users), otherwise no internals."""
    if isinstance(error, SpecError):
        return str(error)
    if is_out_of_memory(error):
        return OUT_OF_MEMORY
    return INTERNAL_ERROR.format(kind=type(error).__name__)


def release_cached_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(eq=False)
class HeldJob:
    request: JobRequest
    # Set when the job joins a batch (its latents, optimiser and prompt embeddings exist from then on).
    dream: DreamJob | None = None
    fewer_cutouts_tried: bool = False

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def spec(self) -> DreamSpec:
        return self.request.spec


class GenerationLoop:
    """Jobs by image size: a batch being optimised and a queue waiting to join it, for each size."""

    def __init__(
        self, engine: DreamEngine, max_batch_size: int, requests: Connection, sender: EventSender, batch_wait_s: float = 0.0
    ):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.requests = requests
        self.sender = sender
        self.jobs: dict[str, HeldJob] = {}
        # Cancels of jobs this worker does not hold: a job that comes after its own cancel never runs.
        self.early_cancels = EarlyCancels()
        self.waiting: defaultdict[int, deque[HeldJob]] = defaultdict(deque)
        self.batches: defaultdict[int, list[HeldJob]] = defaultdict(list)
        # Lowered after running out of memory; forgotten once a size has no jobs left, since what fits depends
        # on the jobs (their cutouts) as much as on their number.
        self.batch_limits: dict[int, int] = {}
        self.last_size = 0
        self.stop_requested = False

    def run(self) -> None:
        while True:
            self.take_messages(wait=not self.jobs)
            if self.stop_requested:
                for job in list(self.jobs.values()):
                    self.sender.send(JobInterrupted(job.job_id))
                self.jobs.clear()
                self.sender.send(WorkerStopped())
                log.info("stopped on request")
                return
            size = self.next_size()
            if size is not None:
                self.advance(size)

    # ---- control messages ---------------------------------------------------------------------------------

    def take_messages(self, wait: bool) -> None:
        """Everything the client sent since the last step; when idle, wait for the next message first."""
        try:
            if wait:
                self.handle(self.requests.recv())
                while not self.stop_requested and self.requests.poll(self.batch_wait_s):
                    self.handle(self.requests.recv())
            while not self.stop_requested and self.requests.poll(0):
                self.handle(self.requests.recv())
        except (EOFError, OSError):
            log.warning("the client closed its end of the pipe; stopping")
            self.stop_requested = True

    def handle(self, message: Any) -> None:
        if isinstance(message, SubmitJob):
            job = HeldJob(message.request)
            if job.job_id in self.jobs:
                log.warning("job %s submitted twice; ignoring the second", job.job_id, extra={"job_id": job.job_id})
                return
            if self.early_cancels.take(job.job_id):
                self.sender.send(JobCancelled(job.job_id))
                log.info("job %s was cancelled before it came; not running it", job.job_id, extra={"job_id": job.job_id})
                return
            self.jobs[job.job_id] = job
            self.waiting[job.spec.size].append(job)
        elif isinstance(message, CancelJob):
            job = self.jobs.get(message.job_id)
            if job is None:
                self.early_cancels.add(message.job_id)
                return
            self.remove(job)
            self.sender.send(JobCancelled(job.job_id))
            log.info("job %s cancelled", job.job_id, extra={"job_id": job.job_id})
        elif isinstance(message, StopWorker):
            self.stop_requested = True
        else:
            log.warning("unexpected message: %r", message)

    # ---- scheduling ---------------------------------------------------------------------------------------

    def next_size(self) -> int | None:
        """Sizes with jobs take turns, one step each, so one size's queue cannot starve another's."""
        sizes = sorted(size for size in set(self.batches) | set(self.waiting) if self.batches[size] or self.waiting[size])
        if not sizes:
            return None
        size = next((size for size in sizes if size > self.last_size), sizes[0])
        self.last_size = size
        return size

    def admit(self, size: int) -> None:
        batch, queue = self.batches[size], self.waiting[size]
        limit = min(self.max_batch_size, self.batch_limits.get(size, self.max_batch_size))
        while queue and len(batch) < limit:
            job = queue.popleft()
            if job.dream is None and not self.begin(job):
                continue
            batch.append(job)

    def begin(self, job: HeldJob, spec: DreamSpec | None = None) -> bool:
        """Set the job up to make `spec` (its own unless given) from the start; False when it failed instead."""
        spec = spec or job.spec
        loaded = self.engine.models.sizes
        if spec.size not in loaded:
            self.fail(job, f"This generator makes images of {', '.join(map(str, loaded))} pixels only, not {spec.size}.")
            return False
        try:
            job.dream = self.engine.start(spec, keep_frames=job.request.timelapse)
        except Exception as error:
            self.fail(job, readable_reason(error), error)
            return False
        return True

    def advance(self, size: int) -> None:
        self.admit(size)
        batch = self.batches[size]
        if batch:
            started = time.perf_counter()
            failure: Exception | None = None
            try:
                losses = self.step(batch)
            except Exception as error:
                failure = error
            # Handled outside the except block, so errors from the retries are not chained to this one in the log.
            if failure is None:
                self.sender.send(StepDone(size, len(batch), time.perf_counter() - started))
                self.report(batch, losses)
            elif is_out_of_memory(failure):
                # Its traceback holds the failed step's tensors; let them go before trying again.
                self.shrink(size, batch, failure.with_traceback(None))
            else:
                self.find_culprit(batch, failure)
        if not self.batches[size] and not self.waiting[size]:
            self.batch_limits.pop(size, None)

    # ---- stepping and its failures ------------------------------------------------------------------------

    def step(self, jobs: Sequence[HeldJob]) -> list[float]:
        """One engine step for `jobs`; if it raises, every job that did not advance is left exactly as it was."""
        dreams = [job.dream for job in jobs]
        before = [(dream.step, dream.crop_rng.get_state()) for dream in dreams]
        try:
            return self.engine.step(dreams)
        except Exception:
            # The crops are drawn before anything can fail; drawing them again must give the same ones, or a
            # job's image would depend on whether a batch it was in failed.
            for dream, (step, crop_state) in zip(dreams, before, strict=True):
                if dream.step == step:
                    dream.crop_rng.set_state(crop_state)
            raise

    def shrink(self, size: int, batch: list[HeldJob], error: BaseException) -> None:
        """Out of memory: halve the batch (the rest wait their turn); alone, start the job over once with half
        the cutouts, and say so with its result."""
        release_cached_memory(self.engine.models.device)
        if len(batch) > 1:
            limit = len(batch) // 2
            self.batch_limits[size] = limit
            parked = batch[limit:]
            del batch[limit:]
            self.waiting[size].extendleft(reversed(parked))
            log.warning("out of memory with %d jobs of %d px (%s); at most %d at a time for now", len(batch) + len(parked), size, error, limit,
                        extra={"job_ids": [job.job_id for job in (*batch, *parked)]})
            return
        (job,) = batch
        if not job.fewer_cutouts_tried and job.dream.cutouts > 1:
            job.fewer_cutouts_tried = True
            # From the start, not from the step that failed: steps made with two numbers of cutouts give an image
            # no spec can make again, while this one is exactly what the same seed with these cutouts makes.
            smaller = job.dream.spec.with_changes(cutouts=job.dream.cutouts // 2)
            job.dream = None
            release_cached_memory(self.engine.models.device)
            log.warning("out of memory with job %s alone (%s); starting it over with %d cutouts", job.job_id, error,
                        smaller.cutouts, extra={"job_id": job.job_id})
            self.begin(job, smaller)
            return
        self.fail(job, OUT_OF_MEMORY, error)

    def find_culprit(self, batch: list[HeldJob], error: BaseException) -> None:
        """A batch step raised: step its jobs one at a time, so only the job that raises fails."""
        if len(batch) == 1:
            self.fail(batch[0], readable_reason(error), error)
            return
        log.warning("a step of %d jobs failed (%s: %s); stepping them one at a time", len(batch), type(error).__name__, error,
                    extra={"job_ids": [job.job_id for job in batch]})
        size = batch[0].spec.size
        for job in list(batch):
            single_failure: Exception | None = None
            try:
                losses = self.step([job])
            except Exception as single_error:
                single_failure = single_error
            if single_failure is None:
                self.report([job], losses)
            elif is_out_of_memory(single_failure):
                self.shrink(size, [job], single_failure.with_traceback(None))
            else:
                self.fail(job, readable_reason(single_failure), single_failure)

    # ---- telling the client -------------------------------------------------------------------------------

    def report(self, jobs: Sequence[HeldJob], losses: Sequence[float]) -> None:
        held = {job.dream: job for job in jobs}
        self.engine.report(
            list(held), losses,
            on_step=lambda dream, report: self.tell(held[dream], report),
            on_error=lambda dream, error: self.report_failed(held[dream], error),
        )

    def tell(self, job: HeldJob, report: StepReport) -> None:
        png = png_bytes(report.snapshot) if report.snapshot is not None else None
        self.sender.send(JobProgress(job.job_id, report.step, report.total, report.loss, png))
        if report.outcome is not None:
            self.finish(job, report.outcome)

    def report_failed(self, job: HeldJob, error: Exception) -> None:
        if isinstance(error, ClientGone):
            raise error
        self.fail(job, readable_reason(error), error)

    def finish(self, job: HeldJob, outcome: DreamOutcome) -> None:
        result = JobResult(
            job_id=job.job_id,
            png=png_bytes(outcome.image),
            seed=job.spec.seed,
            steps=outcome.steps,
            wall_seconds=outcome.wall_seconds,
            latents_npz=outcome.latents_npz,
            cutouts=job.dream.cutouts,
            timelapse_gif=outcome.timelapse_gif() if job.request.timelapse else None,
            score=outcome.score,
            score_step=outcome.score_step,
        )
        self.remove(job)
        self.sender.send(result)
        log.info("job %s done: %d steps in %.1f s", job.job_id, outcome.steps, result.wall_seconds, extra={"job_id": job.job_id})

    def fail(self, job: HeldJob, reason: str, error: BaseException | None = None) -> None:
        if error is not None:
            log.error("job %s failed", job.job_id, exc_info=error, extra={"job_id": job.job_id})
        else:
            log.error("job %s failed: %s", job.job_id, reason, extra={"job_id": job.job_id})
        self.remove(job)
        self.sender.send(JobFailed(job.job_id, reason))

    def remove(self, job: HeldJob) -> None:
        self.jobs.pop(job.job_id, None)
        size = job.spec.size
        if job in self.batches[size]:
            self.batches[size].remove(job)
        if job in self.waiting[size]:
            self.waiting[size].remove(job)
