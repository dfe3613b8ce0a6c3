"""What the jobs feature needs from outside it, as small protocols: the generation backend, where progress and
counts go, and who records what moderators do to jobs. The bot passes implementations in (bot.app); tests and
tools pass the do-nothing ones here. No discord imports, so the dispatcher runs without a Discord connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from bot.jobs.job import Job
from generator.protocol import JobEvent, JobRequest
from generator.wire import WorkerHealth


class GenerationBackend(Protocol):
    """What the dispatcher needs from `generator.client.GenerationClient` (or a simulated stand-in)."""

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

    def steps_done(self, count: int) -> None:
        """`count` more optimisation steps were done (over all jobs)."""
        ...


class NoMetrics:
    """A JobMetrics that counts nothing (tests, tools)."""

    def job_queued(self, job: Job) -> None:
        pass

    def job_started(self, job: Job) -> None:
        pass

    def job_finished(self, job: Job) -> None:
        pass

    def steps_done(self, count: int) -> None:
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

