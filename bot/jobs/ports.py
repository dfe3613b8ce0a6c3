"""What the jobs feature needs from outside it, as small protocols: the generation backend, where progress and
counts go, and who records what moderators do to jobs. The bot passes implementations in (bot.app); tests and
tools pass the do-nothing ones here. No discord imports, so the dispatcher runs without a Discord connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.jobs.job import Job
from generator.protocol import JobEvent, JobRequest
from generator.wire import PoolHealth, WorkerHealth


class GenerationBackend(Protocol):
    """A worker: what the dispatcher needs from `generator.client.GenerationClient`, a Ray worker
    (`generator.ray_pool.RayWorker`) or a simulated stand-in. Its health() also says what the dispatcher chooses
    by: the worker's id and node, its device, the sizes it makes, how many jobs it runs together
    (max_batch_size) and the jobs it holds."""

    async def start(self) -> None:
        """Start the worker. May raise if the first start fails; the backend then keeps trying by itself, so
        nobody starts or replaces it again (health() says how it goes)."""
        ...

    def health(self) -> WorkerHealth:
        """A snapshot: whether it accepts jobs now, its restarts, why it is down. Cheap, never waits."""
        ...

    async def wait_until_accepting(self) -> None:
        """Return once health().accepting_jobs holds (at once if it does now)."""
        ...

    def submit(self, request: JobRequest) -> AsyncIterator[JobEvent]:
        """Events for one job, ending after a final one (JobResult/JobFailed/JobCancelled/JobInterrupted).
        A job it cannot hand to a worker now ends at once with JobInterrupted."""
        ...

    async def cancel(self, job_id: str) -> object: ...

    async def stop(self, timeout: float) -> None:
        """Stop the worker; jobs still running end with JobInterrupted."""
        ...


class WorkerPool(Protocol):
    """The set of workers: `generator.pool.StaticPool` (one process per local device) or
    `generator.ray_pool.RayPool` (one actor per GPU of a Ray cluster, as GPUs come and go)."""

    # Changes whenever a worker joins or leaves.
    version: int

    async def start(self) -> None:
        """Start bringing workers up. May raise when none could start; the pool keeps trying by itself."""
        ...

    def workers(self) -> Sequence[GenerationBackend]:
        """The workers now (some may be starting or down: read each one's health)."""
        ...

    def health(self) -> PoolHealth:
        """Every worker's health, and why there are none when there are none. Cheap, never waits."""
        ...

    async def wait_for_change(self, version: int) -> None:
        """Return once `version` is no longer the pool's (a worker joined or left)."""
        ...

    async def stop(self, timeout: float) -> None:
        """Stop every worker; jobs still running end with JobInterrupted."""
        ...


class ProgressSink(Protocol):
    """Where the dispatcher reports what happens to each job (the Discord messages, in the bot)."""

    def waiting(self, job: Job, note: str = "") -> None: ...

    def running(self, job: Job, step: int, total: int, snapshot_png: bytes | None) -> None: ...

    def done(self, job: Job, png: bytes) -> None: ...

    def failed(self, job: Job, reason: str) -> None: ...

    def cancelled(self, job: Job) -> None: ...


class SilentProgress:
    """A ProgressSink that shows nothing (tests, tools)."""

    def waiting(self, job: Job, note: str = "") -> None:
        pass

    def running(self, job: Job, step: int, total: int, snapshot_png: bytes | None) -> None:
        pass

    def done(self, job: Job, png: bytes) -> None:
        pass

    def failed(self, job: Job, reason: str) -> None:
        pass

    def cancelled(self, job: Job) -> None:
        pass


class JobMetrics(Protocol):
    """Where the dispatcher counts what happens to jobs (bot.metrics.BotMetrics, in the bot)."""

    def job_queued(self, job: Job) -> None: ...

    def job_started(self, job: Job) -> None: ...

    def job_finished(self, job: Job) -> None:
        """The job reached done, failed or cancelled (job.state says which)."""
        ...

    def steps_done(self, count: int, worker: WorkerHealth) -> None:
        """`count` more optimisation steps were done by `worker` (over its jobs)."""
        ...


class NoMetrics:
    """A JobMetrics that counts nothing (tests, tools)."""

    def job_queued(self, job: Job) -> None:
        pass

    def job_started(self, job: Job) -> None:
        pass

    def job_finished(self, job: Job) -> None:
        pass

    def steps_done(self, count: int, worker: WorkerHealth) -> None:
        pass


@dataclass(frozen=True)
class Actor:
    """The moderator doing something (for the audit trail)."""

    id: int
    name: str


class ModeratorActions(Protocol):
    """Where moderators' actions are recorded (bot.moderation's service, in the bot: its audit trail, /modlog)."""

    async def record(self, guild_id: int, actor: Actor, action: str, target: str, before: Any, after: Any) -> object:
        """Any moderator action on something of the server (a challenge entry taken out, say)."""
        ...

    async def record_job_action(self, job: Job, actor: Actor, action: str, after: Any) -> object:
        """A moderator cancelled ("cancel") or deleted ("delete") someone else's job."""
        ...

