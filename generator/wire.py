"""What crosses the boundary between the generation client (asyncio, in the bot's process) and the generation
process (torch): the worker's configuration, the health the client reports (the health of every generation
backend, the bot's simulated one included), and the private control messages (submit, cancel, stop, ready,
heartbeat, ...). Job events that callers see are in `generator.protocol`.

Torch-free and discord-free: the client, the worker and the bot all import it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from generator.protocol import (
    ALLOWED_SIZES,
    CLIP_MODELS,
    CLIP_PRECISIONS,
    COMPILE_CHOICES,
    DEFAULT_CLIP_MODEL,
    MODEL_KINDS,
    JobEvent,
    JobRequest,
)


def _models_kind_from_env() -> str:
    return os.environ.get("BIGSLEEP_MODELS", "full").strip().lower() or "full"


def _device_from_env() -> str:
    return os.environ.get("BIGSLEEP_DEVICE", "auto").strip() or "auto"


# WorkerConfig.max_batch_size for "auto".
AUTO_BATCH_SIZE = 0


@dataclass(frozen=True)
class WorkerConfig:
    """How the generation process is set up and watched. Torch-free, picklable: it is sent to the worker."""

    # full, tiny or random (see protocol.MODEL_KINDS); default from $BIGSLEEP_MODELS, else full.
    models_kind: str = field(default_factory=_models_kind_from_env)
    # Image sizes whose BigGAN is loaded at start; jobs of other sizes fail at once with a readable reason.
    sizes: tuple[int, ...] = ALLOWED_SIZES
    # auto (CUDA when present), cpu, cuda, cuda:N; default from $BIGSLEEP_DEVICE.
    device: str = field(default_factory=_device_from_env)
    clip_precision: str = "auto"
    # Which OpenAI CLIP judges the images (protocol.CLIP_MODELS).
    clip_model: str = DEFAULT_CLIP_MODEL
    # Jobs of one size optimised together in one step; 1 runs one job at a time; AUTO_BATCH_SIZE: as many as
    # the memory free at the start holds (the worker says what it chose in WorkerReady).
    max_batch_size: int = 4
    # torch.compile the step (generator.compiled.COMPILE_CHOICES): "auto" on CUDA only; "on"; "off".
    compile: str = "auto"
    # torch.compile's backend: "inductor" builds kernels; tests use "aot_eager" (traces the same, builds nothing).
    compile_backend: str = "inductor"
    # An idle worker that gets a job waits this long for more before its first step, so that jobs submitted
    # together also start together (later ones join at a step boundary anyway).
    batch_wait_s: float = 0.05
    # A worker that holds jobs and reports no step for this long is killed and treated as dead. Must exceed
    # the slowest real step (a full batch at the largest size on the slowest device) with margin.
    hang_timeout_s: float = 300.0
    # The worker sends a heartbeat this often from a side thread, whatever its main thread is doing.
    heartbeat_interval_s: float = 1.0
    # No message at all for this long from a ready worker (frozen, or stuck holding the GIL) counts as a death.
    # A worker that exits or is killed is noticed at once, by the end of its pipe, whatever this says.
    heartbeat_timeout_s: float = 30.0
    # From process start to models loaded (importing torch, maybe downloading the weights first).
    startup_timeout_s: float = 1800.0
    # A worker that dies before it is ready is replaced at once, up to this many failed starts in a row; after
    # that (or at once when its models fail to load, which a new try right away would repeat) the client
    # waits before each next try.
    start_failures_before_pausing: int = 3
    # Those waits, in seconds: the first pause, the second, ...; the last one repeats. The client never gives
    # up (an admin may fix the weights folder meanwhile); a worker that gets ready starts the series over.
    start_retry_pauses_s: tuple[float, ...] = (5.0, 15.0, 60.0, 300.0)
    # How often the supervisor looks at the worker; deaths by exit are noticed at once (end of pipe) anyway.
    supervise_interval_s: float = 0.25
    torch_threads: int | None = None
    # "module:function" taking the loaded DreamModels and returning a DreamEngine (tests wrap the real one).
    engine_factory: str | None = None
    log_level: str = "INFO"
    # "module:Class" of a logging.Formatter for the worker's lines (the bot passes its JSON one); None: plain text.
    log_formatter: str | None = None
    # How the worker is named in health, /queue and metrics ("local-0", "ray-3").
    worker_id: str = "local"

    def __post_init__(self) -> None:
        if self.models_kind not in MODEL_KINDS:
            raise ValueError(f"models_kind must be one of {', '.join(MODEL_KINDS)}, not {self.models_kind!r}")
        if not self.sizes or any(size not in ALLOWED_SIZES for size in self.sizes):
            raise ValueError(f"sizes must be some of {ALLOWED_SIZES}, not {self.sizes!r}")
        if self.clip_precision not in CLIP_PRECISIONS:
            raise ValueError(f"clip_precision must be one of {', '.join(CLIP_PRECISIONS)}, not {self.clip_precision!r}")
        if self.clip_model not in CLIP_MODELS:
            raise ValueError(f"clip_model must be one of {', '.join(CLIP_MODELS)}, not {self.clip_model!r}")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, not {self.compile!r}")
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be at least 1 (or AUTO_BATCH_SIZE), not {self.max_batch_size}")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must be longer than heartbeat_interval_s")
        if self.batch_wait_s < 0:
            raise ValueError("batch_wait_s must not be negative")
        for name in ("hang_timeout_s", "heartbeat_interval_s", "startup_timeout_s", "supervise_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.start_failures_before_pausing < 1:
            raise ValueError("start_failures_before_pausing must be at least 1")
        if not self.start_retry_pauses_s or any(pause < 0 for pause in self.start_retry_pauses_s):
            raise ValueError(f"start_retry_pauses_s must be one or more seconds >= 0, not {self.start_retry_pauses_s!r}")
        for name in ("engine_factory", "log_formatter"):
            value = getattr(self, name)
            if value is not None and ":" not in value:
                raise ValueError(f"{name} must look like 'module:name', not {value!r}")


WorkerState = Literal["not started", "starting", "ready", "restarting", "waiting to retry", "stopping", "stopped"]


@dataclass(frozen=True)
class WorkerHealth:
    """What a generation backend says about its worker (`GenerationBackend.health()`); cheap to read, torch-free.

    States: "not started"; "starting" (the first worker loads its models); "ready"; "restarting" (a worker
    that replaces one that died, hung or failed to start loads its models); "waiting to retry" (starts kept
    failing: the next try is at `retry_at`, and `failure` says why); "stopping"; "stopped".
    """

    state: WorkerState
    # Jobs handed to submit() now reach a worker (state "ready"); at other times submit() hands them back.
    accepting_jobs: bool
    # Which worker this is ("local-0", "ray-3") and the machine it runs on (host name or Ray node address).
    worker_id: str = "local"
    node: str = ""
    # A worker process is up with its models loaded (also while it stops).
    alive: bool = False
    # Worker processes started to replace one that died, hung or failed to start: one per process.
    restarts: int = 0
    pid: int | None = None
    # Jobs submitted and not finished, in submission order.
    in_flight_jobs: tuple[str, ...] = ()
    # Wall-clock time (time.time()) the last optimisation step ended, its duration and how many jobs it held.
    last_step_at: float | None = None
    last_step_seconds: float | None = None
    last_step_batch_size: int | None = None
    models_kind: str = ""
    # As the worker resolved it ("cuda:0", "cpu"); None until a worker is ready.
    device: str | None = None
    # Image sizes the worker makes (none named: any), and how many jobs it runs together (0: not said; the
    # dispatcher then uses its own default).
    sizes: tuple[int, ...] = ()
    max_batch_size: int = 0
    # Whether its step runs compiled (torch.compile; WorkerConfig.compile).
    compiled: bool = False
    # Why the last worker died or failed to start, until a worker is ready again (for the operator).
    failure: str | None = None
    # Failed starts in a row, and (state "waiting to retry") the wall-clock time of the next try.
    failed_starts: int = 0
    retry_at: float | None = None


@dataclass(frozen=True)
class PoolHealth:
    """What a pool of workers says (`WorkerPool.health()`): each worker's health, and why there is none when
    the pool can offer none (a Ray cluster that cannot be reached, say)."""

    workers: tuple[WorkerHealth, ...] = ()
    # "local", "ray" or "simulated".
    backend: str = "local"
    # A sentence for the operator while the pool itself is in trouble or has no worker; None otherwise.
    problem: str | None = None

    @property
    def accepting_jobs(self) -> bool:
        return any(worker.accepting_jobs for worker in self.workers)

    @property
    def restarts(self) -> int:
        return sum(worker.restarts for worker in self.workers)

    @property
    def models_kind(self) -> str:
        return next((worker.models_kind for worker in self.workers if worker.models_kind), "")

    @property
    def state(self) -> str:
        """"ready" while some worker takes jobs; else the most hopeful state among them ("no workers" if none)."""
        if self.accepting_jobs:
            return "ready"
        states = [worker.state for worker in self.workers]
        for state in ("starting", "restarting", "waiting to retry", "stopping", "stopped", "not started"):
            if state in states:
                return state
        return "no workers"

    def capacity(self) -> int:
        """Jobs the workers that take jobs now can hold together."""
        return sum(worker.max_batch_size for worker in self.workers if worker.accepting_jobs)


class WorkerStateKeeper:
    """A backend's WorkerState, with what waits for it to take jobs: set(), .state, .accepting_jobs,
    wait_until_accepting(). Jobs are taken exactly in state "ready"."""

    def __init__(self) -> None:
        self.state: WorkerState = "not started"
        self._accepting = asyncio.Event()

    @property
    def accepting_jobs(self) -> bool:
        return self._accepting.is_set()

    def set(self, state: WorkerState) -> None:
        self.state = state
        if state == "ready":
            self._accepting.set()
        else:
            self._accepting.clear()

    async def wait_until_accepting(self) -> None:
        await self._accepting.wait()


# ---- messages only the client and the worker see ----------------------------------------------------------


@dataclass(frozen=True)
class SubmitJob:
    request: JobRequest


@dataclass(frozen=True)
class CancelJob:
    job_id: str


class EarlyCancels:
    """Cancels that came before their job: the job was still on its way (the client's and the worker's memory of
    them). A job that arrives after its cancel ends at once, unrun. Bounded, since a cancel whose job never
    comes (it had ended already) must not be kept for ever: the latest `capacity` ids, each for `keep_s`."""

    def __init__(self, capacity: int = 1024, keep_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = capacity
        self._keep_s = keep_s
        self._clock = clock
        self._cancelled_at: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cancelled_at)

    def add(self, job_id: str) -> None:
        self._cancelled_at.pop(job_id, None)
        self._cancelled_at[job_id] = self._clock()
        self._forget_old()

    def take(self, job_id: str) -> bool:
        """Whether the job was cancelled before it arrived; the cancel is used up."""
        self._forget_old()
        return self._cancelled_at.pop(job_id, None) is not None

    def _forget_old(self) -> None:
        kept_since = self._clock() - self._keep_s
        while self._cancelled_at and (
            len(self._cancelled_at) > self._capacity or next(iter(self._cancelled_at.values())) < kept_since
        ):
            self._cancelled_at.popitem(last=False)


@dataclass(frozen=True)
class StopWorker:
    """Finish the current step, report every held job as interrupted, then exit."""


@dataclass(frozen=True)
class WorkerReady:
    pid: int
    models_kind: str
    device: str
    sizes: tuple[int, ...]
    clip_dtype: str
    # The machine: its host name (a Ray actor: its node's address).
    node: str = ""
    # Jobs it runs as one batch (what WorkerConfig.max_batch_size asked, or what "auto" chose).
    max_batch_size: int = 0
    # Its step runs compiled (it asked, and a compiler was there and worked).
    compiled: bool = False


@dataclass(frozen=True)
class WorkerStartFailed:
    """The models could not be loaded; starting again would fail the same way."""

    reason: str


@dataclass(frozen=True)
class Heartbeat:
    pass


@dataclass(frozen=True)
class StepDone:
    size: int
    batch_size: int
    seconds: float


def health_as_reported(
    config: WorkerConfig, ready: WorkerReady | None, last_step: StepDone | None, last_step_at: float | None, **own: Any
) -> WorkerHealth:
    """A worker's health from what it said (WorkerReady, its last StepDone) or, before it said it, from what its
    configuration asks; `own` gives what the side that runs it knows (state, ids, pid, restarts, failure...)."""
    return WorkerHealth(
        node=ready.node if ready is not None else "",
        device=ready.device if ready is not None else None,
        sizes=tuple(ready.sizes) if ready is not None else tuple(config.sizes),
        max_batch_size=ready.max_batch_size if ready is not None else config.max_batch_size,
        models_kind=config.models_kind,
        compiled=ready.compiled if ready is not None else False,
        last_step_at=last_step_at,
        last_step_seconds=last_step.seconds if last_step is not None else None,
        last_step_batch_size=last_step.batch_size if last_step is not None else None,
        **own,
    )


@dataclass(frozen=True)
class WorkerStopped:
    pass


class ClientGone(Exception):
    """The client's end of a pipe is closed: nobody is left to work for."""


class EventSender:
    """Sends to the client from the main loop and side threads (heartbeats), one whole message at a time."""

    def __init__(self, connection: Any):
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, message: Any) -> None:
        with self._lock:
            try:
                self._connection.send(message)
            except (OSError, ValueError) as error:
                raise ClientGone from error


def send_heartbeats(sender: EventSender, interval_s: float, stop: threading.Event) -> None:
    # From a side thread, so a long step (which releases the GIL in torch) does not look like a dead process;
    # a step that never ends is caught by the client's hang timeout instead.
    while not stop.wait(interval_s):
        try:
            sender.send(Heartbeat())
        except ClientGone:
            return


# ---- messages between a Ray pool (in the bot) and its bridge process (the Ray driver) ---------------------


@dataclass(frozen=True)
class ToWorker:
    """A SubmitJob, CancelJob or StopWorker for one Ray worker."""

    worker_id: str
    message: SubmitJob | CancelJob | StopWorker


@dataclass(frozen=True)
class FromWorker:
    """What a Ray worker said: WorkerReady, WorkerStartFailed, StepDone, or a job event."""

    worker_id: str
    message: WorkerReady | WorkerStartFailed | StepDone | JobEvent


@dataclass(frozen=True)
class WorkerJoined:
    """The bridge created a worker (an actor); it loads its models and then says WorkerReady."""

    worker_id: str


@dataclass(frozen=True)
class WorkerLeft:
    """A worker is gone (its actor or node died, it hung, it went silent, or it stopped); `reason` says which."""

    worker_id: str
    reason: str
    died: bool = True


@dataclass(frozen=True)
class ClusterState:
    """The bridge's view of the cluster: reachable or not (why), and how many workers it wants there."""

    reachable: bool
    problem: str | None = None
    gpus: float = 0.0
    wanted_workers: int = 0
