"""The job store: the jobs table of the bot's database (bot.database), the source of truth for every job
(`bot.jobs.job.Job`).

The in-memory fair queue (`bot.jobs.fair_queue`) is only an index over the 'queued' rows here and is rebuilt from
this store on start. Every state change goes through one of the `mark_*` methods, which refuse illegal
transitions atomically (the state check is part of the UPDATE), so two racing coroutines cannot both win.

The table's schema is in bot/jobs/migrations (run by bot.database). A job's DreamSpec is stored whole, as one
JSON document (`DreamSpec.to_document`), so adding a setting needs no migration; so is what the worker really
made the image with (`ran_spec`, beside it).

Every run that ends (done, failed, cancelled, handed back) adds its time, from its start to that moment, to
the job's `gpu_seconds`, in the same UPDATE as the state change: the GPU budget counts every run, and a job run
three times costs three runs. The one exception is a run cut short by the bot itself dying: the next start puts
the job back (`recover_after_restart`) without counting that run's time, which nobody measured.

This module must stay free of torch and discord imports.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

import aiosqlite

from bot.database import Database
from bot.jobs.job import ALLOWED_TRANSITIONS, JOB_KINDS, Job, JobKind, new_job_id, normalize_job_id
from generator.protocol import DreamSpec

_ID_ATTEMPTS = 20


class StoreError(Exception):
    """Base class for job-store errors."""


class JobNotFound(StoreError, LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"There is no job with id {job_id!r}.")
        self.job_id = job_id


class IllegalTransition(StoreError):
    def __init__(self, job_id: str, current: str, wanted: str) -> None:
        super().__init__(f"Job {job_id} is {current}; it cannot become {wanted}.")
        self.job_id = job_id
        self.current = current
        self.wanted = wanted


_JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Job))
# Explicit columns, so later migrations may add columns without breaking older readers of this row shape.
_SELECT_JOB = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"


def _job_from_row(row: Sequence[Any]) -> Job:
    values = dict(zip(_JOB_COLUMNS, row))
    for name in ("spec", "ran_spec"):
        if values[name] is None:
            continue
        try:
            values[name] = DreamSpec.from_document(json.loads(values[name]))
        except ValueError as error:  # json's errors are ValueErrors too
            raise StoreError(f"Job {values['id']}'s stored {name} cannot be read: {error}") from error
    return Job(**values)


def _spec_document(spec: DreamSpec) -> str:
    return json.dumps(spec.to_document(), ensure_ascii=False)


# Ends the job's run, if it was running: the run's time is added to its GPU time. Its parameters: now, three times.
_END_RUN = (
    "gpu_seconds = gpu_seconds + CASE WHEN state = 'running' THEN MAX(0, ? - COALESCE(started_at, ?)) ELSE 0 END, "
    "gpu_spent_at = CASE WHEN state = 'running' THEN ? ELSE gpu_spent_at END"
)


@dataclass(frozen=True)
class UserJobCounts:
    running: int
    queued: int


def _relative_path(path: str | PurePosixPath | Path | None, what: str) -> str | None:
    """Result paths are stored relative to the data dir so the dir can move; refuse anything that escapes it."""
    if path is None:
        return None
    text = str(path).replace("\\", "/")
    pure = PurePosixPath(text)
    if not text or pure.is_absolute() or ".." in pure.parts or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"{what} must be a path relative to the data dir, not {str(path)!r}")
    return pure.as_posix()


# ---- the store ---------------------------------------------------------------------------------------------


class JobStore:
    """Async access to the jobs table, on the bot's shared database (bot.database.Database), whose lock
    serialises every call, so coroutines may share a store freely."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = new_job_id,
    ) -> None:
        self._database = database
        self._clock = clock
        self._id_factory = id_factory

    # -- creating and reading --

    async def create_job(
        self,
        *,
        guild_id: int,
        channel_id: int,
        user_id: int,
        spec: DreamSpec,
        user_name: str = "",
        kind: JobKind = "imagine",
        parent_job_id: str | None = None,
        init_latents_path: str | Path | None = None,
    ) -> Job:
        """Queue a new job at the back of its user's order. The spec should already be validated."""
        (job,) = await self.create_jobs(
            guild_id=guild_id, channel_id=channel_id, user_id=user_id, specs=[spec], user_name=user_name,
            kind=kind, parent_job_id=parent_job_id, init_latents_path=init_latents_path,
        )
        return job

    async def create_jobs(
        self,
        *,
        guild_id: int,
        channel_id: int,
        user_id: int,
        specs: Sequence[DreamSpec],
        user_name: str = "",
        kind: JobKind = "imagine",
        parent_job_id: str | None = None,
        init_latents_path: str | Path | None = None,
    ) -> list[Job]:
        """Queue one job per spec, in one transaction, one after another in the user's order. Two or more are a
        grid (bot.jobs.grids): they share a new grid id and are numbered in the order given."""
        if not specs:
            raise ValueError("no specs to queue")
        if kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, not {kind!r}")
        if kind != "imagine" and parent_job_id is None:
            raise ValueError(f"a {kind} job needs the parent_job_id it was made from")
        if any(spec.init_latents is not None for spec in specs) and init_latents_path is None:
            raise ValueError("the store keeps latents as files: save them and pass init_latents_path")
        latents_path = _relative_path(init_latents_path, "init_latents_path")
        now = self._clock()
        async with self._database.transaction() as db:
            grid_id = await self._unused_id(db) if len(specs) > 1 else None
            taken = {grid_id}
            async with db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs") as cursor:
                (first_seq,) = await cursor.fetchone()  # type: ignore[misc]
            job_ids = []
            for index, spec in enumerate(specs):
                job_id = await self._unused_id(db, taken)
                taken.add(job_id)
                await db.execute(
                    """INSERT INTO jobs (id, seq, guild_id, channel_id, user_id, user_name, kind, parent_job_id,
                           state, spec, init_latents_path, created_at, grid_id, grid_index, grid_size)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)""",
                    (
                        job_id, first_seq + index, guild_id, channel_id, user_id, user_name, kind, parent_job_id,
                        _spec_document(spec), latents_path, now, grid_id, index, len(specs),
                    ),
                )
                job_ids.append(job_id)
            return [await self._fetch(db, job_id) for job_id in job_ids]

    async def _unused_id(self, db: aiosqlite.Connection, taken: Collection[str | None] = ()) -> str:
        """An id no job and no grid has, nor any of `taken` (ids this transaction gave out but has not stored yet)."""
        for _ in range(_ID_ATTEMPTS):
            candidate = normalize_job_id(self._id_factory())
            if candidate in taken:
                continue
            # Job ids and grid ids share one space: /show and /cancel take either.
            async with db.execute("SELECT 1 FROM jobs WHERE id = ? OR grid_id = ?", (candidate, candidate)) as cursor:
                if await cursor.fetchone() is None:
                    return candidate
        raise StoreError(f"Could not find an unused job id in {_ID_ATTEMPTS} tries.")

    async def _fetch(self, db: aiosqlite.Connection, job_id: str) -> Job:
        async with db.execute(f"{_SELECT_JOB} WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job_from_row(row)

    async def _select(self, where_and_order: str, params: Sequence[Any] = ()) -> list[Job]:
        async with self._database.reading() as db:
            async with db.execute(f"{_SELECT_JOB} {where_and_order}", tuple(params)) as cursor:
                rows = await cursor.fetchall()
        return [_job_from_row(row) for row in rows]

    async def get(self, job_id: str) -> Job | None:
        """The job, or None. Accepts what a user typed (case, spaces, a leading '#')."""
        jobs = await self._select("WHERE id = ?", (normalize_job_id(job_id),))
        return jobs[0] if jobs else None

    async def grid(self, grid_id: str) -> list[Job]:
        """The jobs of a grid in grid order; empty when there is no such grid. Accepts what a user typed."""
        return await self._select("WHERE grid_id = ? ORDER BY grid_index", (normalize_job_id(grid_id),))

    async def require(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def list_queued(self) -> list[Job]:
        """All queued jobs in seq order: the order to push them into a fresh FairQueue."""
        return await self._select("WHERE state = 'queued' ORDER BY seq")

    async def list_running(self) -> list[Job]:
        return await self._select("WHERE state = 'running' ORDER BY seq")

    async def user_counts(self, user_id: int) -> UserJobCounts:
        """Running and queued jobs of one user, over all servers (caps are per person)."""
        async with self._database.reading() as db:
            async with db.execute(
                "SELECT state, COUNT(*) FROM jobs WHERE user_id = ? AND state IN ('queued', 'running') "
                "GROUP BY state",
                (user_id,),
            ) as cursor:
                counts = dict(await cursor.fetchall())
        return UserJobCounts(running=counts.get("running", 0), queued=counts.get("queued", 0))

    async def recent_jobs(self, user_id: int, *, limit: int = 10, guild_id: int | None = None) -> list[Job]:
        """A user's history, newest first; optionally only in one server."""
        if guild_id is None:
            return await self._select(
                "WHERE user_id = ? ORDER BY created_at DESC, seq DESC LIMIT ?", (user_id, limit)
            )
        return await self._select(
            "WHERE user_id = ? AND guild_id = ? ORDER BY created_at DESC, seq DESC LIMIT ?",
            (user_id, guild_id, limit),
        )

    async def active_jobs(self, user_id: int) -> list[Job]:
        """A user's queued and running jobs over all servers, in dispatch order (for /queue and /cancel)."""
        return await self._select(
            "WHERE user_id = ? AND state IN ('queued', 'running') ORDER BY state = 'queued', seq", (user_id,)
        )

    async def guild_active_jobs(self, guild_id: int) -> list[Job]:
        """A server's running and queued jobs, running first (a moderator's /queue)."""
        return await self._select(
            "WHERE guild_id = ? AND state IN ('queued', 'running') ORDER BY state = 'queued', seq", (guild_id,)
        )

    async def children(self, parent_job_id: str) -> list[Job]:
        """Rerolls and variations made from a job, oldest first."""
        return await self._select("WHERE parent_job_id = ? ORDER BY seq", (parent_job_id,))

    async def recent_durations(self, limit: int = 20) -> list[float]:
        """Wall seconds of the most recently finished successful jobs, newest first (for ETAs)."""
        async with self._database.reading() as db:
            async with db.execute(
                "SELECT wall_seconds FROM jobs WHERE state = 'done' AND wall_seconds IS NOT NULL "
                "ORDER BY finished_at DESC, seq DESC LIMIT ?",
                (limit,),
            ) as cursor:
                rows = await cursor.fetchall()
        return [float(row[0]) for row in rows]

    # -- state transitions --

    async def _transition(
        self, job_id: str, to_state: str, assignments: str = "", params: Sequence[Any] = (), *, count_run: bool = True
    ) -> Job:
        """Move the job to `to_state` if it may go there from where it is. Leaving 'running' ends a run, whose
        time goes to the job's GPU time unless count_run=False."""
        job_id = normalize_job_id(job_id)
        allowed_from = [state for state, targets in ALLOWED_TRANSITIONS.items() if to_state in targets]
        placeholders = ", ".join("?" for _ in allowed_from)
        if count_run and to_state != "running":
            assignments = f"{_END_RUN}, {assignments}" if assignments else _END_RUN
            params = (*(self._clock(),) * 3, *params)
        extra = f", {assignments}" if assignments else ""
        async with self._database.transaction() as db:
            cursor = await db.execute(
                f"UPDATE jobs SET state = ?{extra} WHERE id = ? AND state IN ({placeholders})",
                (to_state, *params, job_id, *allowed_from),
            )
            if cursor.rowcount == 0:
                current = await self._fetch(db, job_id)  # raises JobNotFound
                raise IllegalTransition(job_id, current.state, to_state)
            return await self._fetch(db, job_id)

    async def mark_running(self, job_id: str) -> Job:
        """queued -> running. Each start counts as an attempt (so crash loops are visible)."""
        return await self._transition(
            job_id, "running", "started_at = ?, attempts = attempts + 1, progress_step = 0", (self._clock(),)
        )

    async def mark_done(
        self,
        job_id: str,
        *,
        png_path: str | Path | None = None,
        latents_path: str | Path | None = None,
        timelapse_path: str | Path | None = None,
        wall_seconds: float | None = None,
        ran_spec: DreamSpec | None = None,
    ) -> Job:
        """running -> done, recording the result files (paths relative to the data dir) and what the worker made
        the image with (`ran_spec`; None when the caller does not know) in the same transaction."""
        paths = (
            _relative_path(png_path, "png_path"),
            _relative_path(latents_path, "latents_path"),
            _relative_path(timelapse_path, "timelapse_path"),
        )
        return await self._transition(
            job_id,
            "done",
            "finished_at = ?, error = NULL, png_path = ?, latents_path = ?, timelapse_path = ?, wall_seconds = ?, "
            "ran_spec = ?",
            (self._clock(), *paths, wall_seconds, None if ran_spec is None else _spec_document(ran_spec)),
        )

    async def mark_failed(self, job_id: str, error: str) -> Job:
        """queued/running -> failed, with the reason to show the user."""
        return await self._transition(job_id, "failed", "finished_at = ?, error = ?", (self._clock(), error))

    async def mark_cancelled(self, job_id: str) -> Job:
        """queued/running -> cancelled. For a running job, the worker must be told to stop too."""
        return await self._transition(job_id, "cancelled", "finished_at = ?", (self._clock(),))

    async def requeue(self, job_id: str, *, front: bool = True, counts_as_attempt: bool = True) -> Job:
        """running -> queued (the worker stopped before finishing). At the front of the order unless front=False.

        counts_as_attempt=False takes back the attempt the start counted: the bot stopped cleanly and handed the
        job back, which says nothing about the job, so restarts alone never bring it to `max_attempts`. The run's
        GPU time counts either way: the GPU did the work."""
        jobs = await self._requeue_running(
            [normalize_job_id(job_id)], front=front, strict=True, counts_as_attempt=counts_as_attempt
        )
        return jobs[0]

    async def recover_after_restart(self, *, max_attempts: int | None = None) -> list[Job]:
        """Put every job left 'running' by a previous process back at the front of the queue.

        They keep their order among themselves and go ahead of every job that was waiting, so the new
        FairQueue (built from list_queued() in seq order) puts their users and servers first. A job that has
        already been started `max_attempts` times is marked failed instead (it probably crashes the worker).
        The runs they were in are not added to their GPU time: nobody saw when they ended.
        Returns the jobs that were running, in their new state ('queued', or 'failed').
        """
        async with self._database.reading() as db:
            async with db.execute("SELECT id, attempts FROM jobs WHERE state = 'running' ORDER BY seq") as c:
                running = list(await c.fetchall())
        give_up = [job_id for job_id, attempts in running if max_attempts is not None and attempts >= max_attempts]
        retry = [job_id for job_id, attempts in running if job_id not in give_up]
        recovered = {
            job.id: job for job in await self._requeue_running(retry, front=True, strict=False, count_run=False)
        }
        for job_id in give_up:
            recovered[job_id] = await self._transition(
                job_id, "failed", "finished_at = ?, error = ?",
                (self._clock(), f"The job stopped the generator {max_attempts} times, so it was given up."),
                count_run=False,
            )
        return [recovered[job_id] for job_id, _ in running if job_id in recovered]

    async def _requeue_running(
        self, job_ids: Sequence[str], *, front: bool, strict: bool, counts_as_attempt: bool = True, count_run: bool = True
    ) -> list[Job]:
        if not job_ids:
            return []
        async with self._database.transaction() as db:
            requeued: list[Job] = []
            current = [await self._fetch(db, job_id) for job_id in job_ids]
            not_running = [job for job in current if job.state != "running"]
            if strict and not_running:
                raise IllegalTransition(not_running[0].id, not_running[0].state, "queued")
            current = [job for job in current if job.state == "running"]
            current.sort(key=lambda job: job.seq)
            if front:
                async with db.execute("SELECT COALESCE(MIN(seq), 1) FROM jobs") as cursor:
                    (lowest,) = await cursor.fetchone()  # type: ignore[misc]
                new_seqs = [min(lowest, 1) - len(current) + index for index in range(len(current))]
            else:
                async with db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs") as cursor:
                    (highest,) = await cursor.fetchone()  # type: ignore[misc]
                new_seqs = [highest + 1 + index for index in range(len(current))]
            now = self._clock()
            end_run, end_run_params = (f"{_END_RUN}, ", (now,) * 3) if count_run else ("", ())
            for job, seq in zip(current, new_seqs):
                # started_at is cleared so "running for N minutes" never counts time spent waiting again;
                # progress_message_id is kept so the bot edits the same message back to "waiting".
                await db.execute(
                    f"UPDATE jobs SET {end_run}state = 'queued', seq = ?, started_at = NULL, progress_step = 0, "
                    "attempts = MAX(attempts - ?, 0) WHERE id = ? AND state = 'running'",
                    (*end_run_params, seq, 0 if counts_as_attempt else 1, job.id),
                )
                requeued.append(await self._fetch(db, job.id))
            return requeued

    # -- progress and results --

    async def _update(self, job_id: str, assignments: str, params: Sequence[Any], *, whole_grid: bool = False) -> Job:
        """Change the job's row; with whole_grid, the rows of every job of its grid too (they share one message)."""
        job_id = normalize_job_id(job_id)
        where, keys = "id = ?", (job_id,)
        if whole_grid:
            where, keys = "id = ? OR grid_id = (SELECT grid_id FROM jobs WHERE id = ? AND grid_id IS NOT NULL)", (job_id,) * 2
        async with self._database.transaction() as db:
            cursor = await db.execute(f"UPDATE jobs SET {assignments} WHERE {where}", (*params, *keys))
            if cursor.rowcount == 0:
                raise JobNotFound(job_id)
            return await self._fetch(db, job_id)

    async def mark_final_shown(self, job_id: str) -> None:
        """The job's message now shows how it ended (or never can: its channel refuses the bot). A grid's one
        message shows its ending once every job of it ended, so this marks the whole grid."""
        await self._update(job_id, "final_shown = 1", (), whole_grid=True)

    async def unshown_finished(self, limit: int = 500) -> list[Job]:
        """Finished jobs whose message does not show the ending yet, oldest first."""
        return await self._select(
            "WHERE final_shown = 0 AND state IN ('done', 'failed', 'cancelled') ORDER BY finished_at, seq LIMIT ?",
            (limit,),
        )

    async def set_progress_message(self, job_id: str, message_id: int | None) -> Job:
        """The bot-owned channel message that shows this job, and every job of its grid (None when it was
        deleted)."""
        return await self._update(job_id, "progress_message_id = ?", (message_id,), whole_grid=True)

    async def record_progress(self, job_id: str, step: int) -> Job:
        return await self._update(job_id, "progress_step = ?", (step,))

    async def record_result(
        self,
        job_id: str,
        *,
        png_path: str | Path | None,
        latents_path: str | Path | None,
        timelapse_path: str | Path | None = None,
    ) -> Job:
        """Replace a job's result paths (relative to the data dir) without changing its state."""
        return await self._update(
            job_id,
            "png_path = ?, latents_path = ?, timelapse_path = ?",
            (
                _relative_path(png_path, "png_path"),
                _relative_path(latents_path, "latents_path"),
                _relative_path(timelapse_path, "timelapse_path"),
            ),
        )

    async def delete_result(self, job_id: str, data_dir: str | Path | None = None) -> list[str]:
        """Forget a job's result files; returns their relative paths.

        With data_dir the files are deleted too, after the database stops pointing at them, so a crash in
        between leaves orphan files rather than rows that point at missing ones. The job row itself stays
        (history, and rerolls that name it as parent).
        """
        async with self._database.transaction() as db:
            job = await self._fetch(db, normalize_job_id(job_id))
            await db.execute(
                "UPDATE jobs SET png_path = NULL, latents_path = NULL, timelapse_path = NULL WHERE id = ?",
                (job.id,),
            )
        paths = job.result_paths
        if data_dir is not None:
            await asyncio.to_thread(_delete_files, Path(data_dir), paths)
        return paths


def _delete_files(folder: Path, relative_paths: Sequence[str]) -> None:
    for relative in relative_paths:
        (folder / relative).unlink(missing_ok=True)
