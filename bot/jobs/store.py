"""The job store: one SQLite file (through aiosqlite) that is the source of truth for every job.

The in-memory fair queue (`bot.jobs.fair_queue`) is only an index over the 'queued' rows here and is rebuilt from
this store on start. Every state change goes through one of the `mark_*` methods, which refuse illegal
transitions atomically (the state check is part of the UPDATE), so two racing coroutines cannot both win.

Schema changes are append-only: add a new script to the end of `MIGRATIONS`, never edit a released one. The
database's `PRAGMA user_version` records how many scripts have been applied.

This module must stay free of torch and discord imports.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Literal, get_args

import aiosqlite

from generator.protocol import DreamSpec

JobKind = Literal["imagine", "reroll", "variation"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]

JOB_KINDS: tuple[str, ...] = get_args(JobKind)
JOB_STATES: tuple[str, ...] = get_args(JobState)
FINISHED_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})

# Which states each state may move to. 'queued' -> 'failed' exists for jobs that can no longer run (for
# example a variation whose parent's latents were deleted); 'running' -> 'queued' is a re-queue after the
# worker stopped or the bot restarted.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"queued", "done", "failed", "cancelled"}),
    "done": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}

# No 0/1/i/l/o: ids are read off screenshots and typed back into /cancel or /show.
JOB_ID_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
JOB_ID_LENGTH = 8
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


class SchemaTooNew(StoreError):
    """The database was written by a newer version of the bot than this one."""


def new_job_id() -> str:
    return "".join(secrets.choice(JOB_ID_ALPHABET) for _ in range(JOB_ID_LENGTH))


def normalize_job_id(text: str) -> str:
    """What a user typed (`#AB12CD34 `) to the stored form."""
    return text.strip().lstrip("#").strip().lower()


# ---- schema ------------------------------------------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    -- Dispatch order within a user. New jobs count up from 1; jobs re-queued at the front count down
    -- from the smallest existing value, so it may be negative.
    seq                 INTEGER NOT NULL UNIQUE,
    guild_id            INTEGER NOT NULL,
    channel_id          INTEGER NOT NULL,
    user_id             INTEGER NOT NULL,
    user_name           TEXT NOT NULL DEFAULT '',
    kind                TEXT NOT NULL CHECK (kind IN ('imagine', 'reroll', 'variation')),
    parent_job_id       TEXT REFERENCES jobs (id) ON DELETE SET NULL,
    state               TEXT NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    prompt              TEXT NOT NULL,
    negative            TEXT NOT NULL DEFAULT '',
    seed                INTEGER NOT NULL,
    steps               INTEGER NOT NULL,
    size                INTEGER NOT NULL,
    cutouts             INTEGER NOT NULL,
    learning_rate       REAL NOT NULL,
    ema_decay           REAL NOT NULL,
    max_classes         INTEGER,
    init_noise          REAL NOT NULL DEFAULT 0,
    init_latents_path   TEXT,
    created_at          REAL NOT NULL,
    started_at          REAL,
    finished_at         REAL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    error               TEXT,
    progress_message_id INTEGER,
    progress_step       INTEGER NOT NULL DEFAULT 0,
    png_path            TEXT,
    latents_path        TEXT,
    timelapse_path      TEXT,
    wall_seconds        REAL
);
CREATE INDEX jobs_by_state_seq ON jobs (state, seq);
CREATE INDEX jobs_by_user_state ON jobs (user_id, state);
CREATE INDEX jobs_by_user_created ON jobs (user_id, created_at);
CREATE INDEX jobs_by_state_finished ON jobs (state, finished_at);
CREATE INDEX jobs_by_guild_state ON jobs (guild_id, state);
CREATE INDEX jobs_by_parent ON jobs (parent_job_id);
"""

# Whether the job's channel message already shows how it ended (result, failure or cancel): a restart
# re-shows what a stop or crash left unshown. Jobs that ended before this column existed count as shown.
_SCHEMA_V2 = """
ALTER TABLE jobs ADD COLUMN final_shown INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET final_shown = 1 WHERE state IN ('done', 'failed', 'cancelled');
CREATE INDEX jobs_by_final_shown ON jobs (final_shown, state);
"""

# Moderation (bot.moderation): per-server settings and quota rules (NULL: the bot's default, or no limit),
# overrides for members and roles, allowed channels, banned words, blocked members, and the audit trail of
# every moderator action with its before and after as JSON.
_SCHEMA_V3 = """
CREATE TABLE guild_settings (
    guild_id                   INTEGER PRIMARY KEY,
    default_steps              INTEGER,
    max_steps                  INTEGER,
    default_size               INTEGER,
    max_size                   INTEGER,
    spoiler_by_default         INTEGER NOT NULL DEFAULT 0,
    paused                     INTEGER NOT NULL DEFAULT 0,
    log_channel_id             INTEGER,
    quota_per_day              INTEGER,
    quota_per_hour             INTEGER,
    quota_max_queued           INTEGER,
    quota_max_running          INTEGER,
    budget_jobs_per_day        INTEGER,
    budget_gpu_minutes_per_day REAL
);

CREATE TABLE quota_overrides (
    guild_id    INTEGER NOT NULL,
    target_kind TEXT NOT NULL CHECK (target_kind IN ('member', 'role')),
    target_id   INTEGER NOT NULL,
    exempt      INTEGER NOT NULL DEFAULT 0,
    -- Only the limits the override sets: {"per_day": 40, "max_queued": null (no limit)}.
    limits_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (guild_id, target_kind, target_id)
);

CREATE TABLE allowed_channels (
    guild_id   INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
);

CREATE TABLE banned_words (
    guild_id INTEGER NOT NULL,
    word     TEXT NOT NULL,
    PRIMARY KEY (guild_id, word)
);

CREATE TABLE blocked_members (
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    blocked_by INTEGER NOT NULL,
    blocked_at REAL NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE mod_actions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id       INTEGER NOT NULL,
    moderator_id   INTEGER NOT NULL,
    moderator_name TEXT NOT NULL DEFAULT '',
    action         TEXT NOT NULL,
    target         TEXT NOT NULL DEFAULT '',
    before_json    TEXT,
    after_json     TEXT,
    at             REAL NOT NULL
);
CREATE INDEX mod_actions_by_guild ON mod_actions (guild_id, id);

-- Jobs that no longer count against their member's quotas although they started (a moderator cancelled them).
CREATE TABLE quota_refunds (
    job_id      TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    refunded_by INTEGER NOT NULL,
    at          REAL NOT NULL
);

-- Each member's roles as their last command showed them (the bot has no members intent): the running cap of
-- a role override applies to their queued jobs after a restart too, before they interact again.
CREATE TABLE member_roles_seen (
    guild_id INTEGER NOT NULL,
    user_id  INTEGER NOT NULL,
    role_ids TEXT NOT NULL DEFAULT '[]',
    seen_at  REAL NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- Quotas and /stats count a server's jobs by time.
CREATE INDEX jobs_by_guild_created ON jobs (guild_id, created_at);
"""

# Challenges (bot.challenges): a theme with a deadline per server, members' entries, and votes. The constraints
# carry the rules, so no race can break them: one open challenge per server, a job entered once per challenge,
# one vote per member per entry, and no vote for one's own entry.
_SCHEMA_V4 = """
CREATE TABLE challenges (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id                INTEGER NOT NULL,
    channel_id              INTEGER NOT NULL,
    theme                   TEXT NOT NULL,
    created_by              INTEGER NOT NULL,
    created_at              REAL NOT NULL,
    deadline                REAL NOT NULL,
    max_entries_per_member  INTEGER NOT NULL CHECK (max_entries_per_member >= 1),
    counts_hidden           INTEGER NOT NULL DEFAULT 1,
    -- The server's upload limit as Discord last told it (in the /challenge start interaction; boosts raise it),
    -- for the results contact sheet, which is posted when no interaction is at hand.
    upload_limit            INTEGER,
    -- open: taking entries and votes; closing: deadline passed, results not posted yet (a restart finishes
    -- it); ended: results posted, archived; cancelled: stopped by a moderator, no results.
    state                   TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closing', 'ended', 'cancelled')),
    -- Entry numbers count up and are never reused, so "#3" means one image for the whole challenge.
    entries_numbered        INTEGER NOT NULL DEFAULT 0,
    announcement_message_id INTEGER,
    results_message_id      INTEGER,
    ended_at                REAL
);
CREATE UNIQUE INDEX challenges_one_open_per_guild ON challenges (guild_id) WHERE state = 'open';
CREATE INDEX challenges_by_state_deadline ON challenges (state, deadline);
CREATE INDEX challenges_by_guild_created ON challenges (guild_id, created_at);

CREATE TABLE challenge_entries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    challenge_id INTEGER NOT NULL REFERENCES challenges (id) ON DELETE CASCADE,
    number       INTEGER NOT NULL,
    user_id      INTEGER NOT NULL,
    user_name    TEXT NOT NULL DEFAULT '',
    job_id       TEXT NOT NULL,
    prompt       TEXT NOT NULL,
    -- The bot's own copy, relative to the data dir: the job's result may be deleted, Discord's URLs expire.
    image_path   TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    message_id   INTEGER,
    -- Written when the challenge ends: the archive and the leaderboard read these.
    final_votes  INTEGER,
    place        INTEGER,
    UNIQUE (challenge_id, number),
    UNIQUE (challenge_id, job_id)
);
CREATE INDEX challenge_entries_by_user ON challenge_entries (challenge_id, user_id);

CREATE TABLE challenge_votes (
    entry_id INTEGER NOT NULL REFERENCES challenge_entries (id) ON DELETE CASCADE,
    voter_id INTEGER NOT NULL,
    voted_at REAL NOT NULL,
    PRIMARY KEY (entry_id, voter_id)
);

CREATE TRIGGER challenge_votes_not_for_oneself BEFORE INSERT ON challenge_votes
WHEN NEW.voter_id = (SELECT user_id FROM challenge_entries WHERE id = NEW.entry_id)
BEGIN
    SELECT RAISE(ABORT, 'a member cannot vote for their own entry');
END;
"""

MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4)
"""Migration scripts in order; the database's user_version is the number applied. Append only.

Each script runs inside one transaction together with the user_version bump, so it must contain only
statements SQLite allows in a transaction (no VACUUM, no PRAGMA journal_mode)."""

LATEST_VERSION = len(MIGRATIONS)


def split_sql_statements(script: str) -> list[str]:
    """Split a script into single statements (sqlite3's execute() takes one at a time)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        # complete_statement knows about string literals and CREATE TRIGGER bodies, so a ';' inside
        # either does not end the statement early.
        if sqlite3.complete_statement(pending):
            if pending.strip().strip(";").strip():
                statements.append(pending.strip())
            pending = ""
    if pending.strip().strip(";").strip():
        raise ValueError(f"Unterminated SQL statement in migration: {pending.strip()[:80]!r}")
    return statements


async def schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(
    db: aiosqlite.Connection, migrations: Sequence[str] = MIGRATIONS, target: int | None = None
) -> int:
    """Apply the scripts the database has not seen yet, up to `target` (default: all). Returns the version.

    The connection must be in autocommit mode (isolation_level=None) so that our BEGIN is the only one.
    """
    target = len(migrations) if target is None else target
    if not 0 <= target <= len(migrations):
        raise ValueError(f"target version {target} is outside 0..{len(migrations)}")
    current = await schema_version(db)
    if current > len(migrations):
        raise SchemaTooNew(
            f"The database is at schema version {current}, but this bot only knows {len(migrations)}; "
            "upgrade the bot or restore a matching backup."
        )
    while current < target:
        version = current + 1
        statements = split_sql_statements(migrations[version - 1])
        await db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated between our read and our lock.
            if await schema_version(db) == current:
                for statement in statements:
                    await db.execute(statement)
                # PRAGMA does not accept bound parameters; version is our own int.
                await db.execute(f"PRAGMA user_version = {int(version)}")
        except BaseException:
            await db.rollback()
            raise
        await db.commit()
        current = await schema_version(db)
    return current


# ---- the job record ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: str
    seq: int
    guild_id: int
    channel_id: int
    user_id: int
    user_name: str
    kind: str
    parent_job_id: str | None
    state: str
    prompt: str
    negative: str
    seed: int
    steps: int
    size: int
    cutouts: int
    learning_rate: float
    ema_decay: float
    max_classes: int | None
    init_noise: float
    init_latents_path: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    error: str | None
    progress_message_id: int | None
    progress_step: int
    png_path: str | None
    latents_path: str | None
    timelapse_path: str | None
    wall_seconds: float | None

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def result_paths(self) -> list[str]:
        return [p for p in (self.png_path, self.latents_path, self.timelapse_path) if p]

    def spec(self, *, init_latents: bytes | None = None, snapshot_every: int = 0) -> DreamSpec:
        """The DreamSpec to send to the worker.

        The store keeps only the path of a variation's starting latents; the caller reads that file (relative
        to its data dir) and passes the bytes, so this method does no I/O.
        """
        if self.init_latents_path is not None and init_latents is None:
            raise ValueError(
                f"Job {self.id} starts from {self.init_latents_path}; read that file and pass init_latents."
            )
        return self.settings_spec().with_changes(
            snapshot_every=snapshot_every, init_latents=init_latents, init_noise=self.init_noise
        )

    def settings_spec(self) -> DreamSpec:
        """The prompt and optimiser settings alone, without a variation's starting point (a new job's base)."""
        return DreamSpec(
            prompt=self.prompt,
            negative=self.negative,
            seed=self.seed,
            steps=self.steps,
            size=self.size,
            cutouts=self.cutouts,
            learning_rate=self.learning_rate,
            ema_decay=self.ema_decay,
            max_classes=self.max_classes,
        )


_JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Job))
# Explicit columns, so later migrations may add columns without breaking older readers of this row shape.
_SELECT_JOB = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"


def _job_from_row(row: Sequence[Any]) -> Job:
    return Job(**dict(zip(_JOB_COLUMNS, row)))


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
    """Async access to the jobs table. Open with `await JobStore.open(path)` or `async with JobStore.open(path)`.

    One process should own the database; all calls on one store are serialised by an internal lock, so
    coroutines may share it freely.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        *,
        clock: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = new_job_id,
    ) -> None:
        self._db = db
        self._clock = clock
        self._id_factory = id_factory
        self._lock = asyncio.Lock()

    # -- lifecycle --

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = new_job_id,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> _OpeningStore:
        """Open (creating and migrating as needed). Await it, or use it as `async with`."""
        return _OpeningStore(cls._open(path, clock=clock, id_factory=id_factory, migrations=migrations))

    @classmethod
    async def _open(
        cls,
        path: str | Path,
        *,
        clock: Callable[[], float],
        id_factory: Callable[[], str],
        migrations: Sequence[str],
    ) -> JobStore:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            # WAL lets readers (backup scripts, a future web gallery) work while the bot writes.
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute("PRAGMA busy_timeout = 5000")
            await migrate(db, migrations)
        except BaseException:
            await db.close()
            raise
        return cls(db, clock=clock, id_factory=id_factory)

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> JobStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connection(self) -> aiosqlite.Connection:
        """For later modules (quotas, settings) that add their own tables through MIGRATIONS."""
        return self._db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction on the shared connection for feature stores, serialised with the job store's own
        (two coroutines interleaving statements on one connection would share, or break, one transaction)."""
        async with self._transaction() as db:
            yield db

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """The shared connection for reads by feature stores, while no transaction of another coroutine is open."""
        async with self._lock:
            yield self._db

    async def schema_version(self) -> int:
        async with self._lock:
            return await schema_version(self._db)

    async def check_writable(self) -> None:
        """Take the database's write lock and give it back at once; raises when the bot could not write (a
        read-only database, or another process holding the lock past the busy timeout). For health checks."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            await self._db.rollback()

    async def journal_mode(self) -> str:
        async with self._lock:
            async with self._db.execute("PRAGMA journal_mode") as cursor:
                row = await cursor.fetchone()
        return str(row[0]) if row else ""

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.rollback()
                raise
            await self._db.commit()

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
        if kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, not {kind!r}")
        if kind != "imagine" and parent_job_id is None:
            raise ValueError(f"a {kind} job needs the parent_job_id it was made from")
        if spec.init_latents is not None and init_latents_path is None:
            raise ValueError("the store keeps latents as files: save them and pass init_latents_path")
        latents_path = _relative_path(init_latents_path, "init_latents_path")
        now = self._clock()
        async with self._transaction() as db:
            job_id = await self._unused_id(db)
            async with db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs") as cursor:
                (seq,) = await cursor.fetchone()  # type: ignore[misc]
            await db.execute(
                """INSERT INTO jobs (id, seq, guild_id, channel_id, user_id, user_name, kind, parent_job_id,
                       state, prompt, negative, seed, steps, size, cutouts, learning_rate, ema_decay,
                       max_classes, init_noise, init_latents_path, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    job_id, seq, guild_id, channel_id, user_id, user_name, kind, parent_job_id,
                    spec.prompt, spec.negative, spec.seed, spec.steps, spec.size, spec.cutouts,
                    spec.learning_rate, spec.ema_decay, spec.max_classes, spec.init_noise, latents_path, now,
                ),
            )
            return await self._fetch(db, job_id)

    async def _unused_id(self, db: aiosqlite.Connection) -> str:
        for _ in range(_ID_ATTEMPTS):
            candidate = normalize_job_id(self._id_factory())
            async with db.execute("SELECT 1 FROM jobs WHERE id = ?", (candidate,)) as cursor:
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
        async with self._lock:
            async with self._db.execute(f"{_SELECT_JOB} {where_and_order}", tuple(params)) as cursor:
                rows = await cursor.fetchall()
        return [_job_from_row(row) for row in rows]

    async def get(self, job_id: str) -> Job | None:
        """The job, or None. Accepts what a user typed (case, spaces, a leading '#')."""
        jobs = await self._select("WHERE id = ?", (normalize_job_id(job_id),))
        return jobs[0] if jobs else None

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
        async with self._lock:
            async with self._db.execute(
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
        async with self._lock:
            async with self._db.execute(
                "SELECT wall_seconds FROM jobs WHERE state = 'done' AND wall_seconds IS NOT NULL "
                "ORDER BY finished_at DESC, seq DESC LIMIT ?",
                (limit,),
            ) as cursor:
                rows = await cursor.fetchall()
        return [float(row[0]) for row in rows]

    # -- state transitions --

    async def _transition(
        self, job_id: str, to_state: str, assignments: str = "", params: Sequence[Any] = ()
    ) -> Job:
        job_id = normalize_job_id(job_id)
        allowed_from = [state for state, targets in ALLOWED_TRANSITIONS.items() if to_state in targets]
        placeholders = ", ".join("?" for _ in allowed_from)
        extra = f", {assignments}" if assignments else ""
        async with self._transaction() as db:
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
    ) -> Job:
        """running -> done, recording the result files in the same transaction (paths relative to the data dir)."""
        paths = (
            _relative_path(png_path, "png_path"),
            _relative_path(latents_path, "latents_path"),
            _relative_path(timelapse_path, "timelapse_path"),
        )
        return await self._transition(
            job_id,
            "done",
            "finished_at = ?, error = NULL, png_path = ?, latents_path = ?, timelapse_path = ?, wall_seconds = ?",
            (self._clock(), *paths, wall_seconds),
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
        job back, which says nothing about the job, so restarts alone never bring it to `max_attempts`."""
        jobs = await self._requeue_running(
            [normalize_job_id(job_id)], front=front, strict=True, counts_as_attempt=counts_as_attempt
        )
        return jobs[0]

    async def recover_after_restart(self, *, max_attempts: int | None = None) -> list[Job]:
        """Put every job left 'running' by a previous process back at the front of the queue.

        They keep their order among themselves and go ahead of every job that was waiting, so the new
        FairQueue (built from list_queued() in seq order) puts their users and servers first. A job that has
        already been started `max_attempts` times is marked failed instead (it probably crashes the worker).
        Returns the jobs that were running, in their new state ('queued', or 'failed').
        """
        async with self._lock:
            async with self._db.execute("SELECT id, attempts FROM jobs WHERE state = 'running' ORDER BY seq") as c:
                running = list(await c.fetchall())
        give_up = [job_id for job_id, attempts in running if max_attempts is not None and attempts >= max_attempts]
        retry = [job_id for job_id, attempts in running if job_id not in give_up]
        recovered = {job.id: job for job in await self._requeue_running(retry, front=True, strict=False)}
        for job_id in give_up:
            recovered[job_id] = await self.mark_failed(
                job_id, f"The job stopped the generator {max_attempts} times, so it was given up."
            )
        return [recovered[job_id] for job_id, _ in running if job_id in recovered]

    async def _requeue_running(
        self, job_ids: Sequence[str], *, front: bool, strict: bool, counts_as_attempt: bool = True
    ) -> list[Job]:
        if not job_ids:
            return []
        async with self._transaction() as db:
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
            for job, seq in zip(current, new_seqs):
                # started_at is cleared so "running for N minutes" never counts time spent waiting again;
                # progress_message_id is kept so the bot edits the same message back to "waiting".
                await db.execute(
                    "UPDATE jobs SET state = 'queued', seq = ?, started_at = NULL, progress_step = 0, "
                    "attempts = MAX(attempts - ?, 0) WHERE id = ? AND state = 'running'",
                    (seq, 0 if counts_as_attempt else 1, job.id),
                )
                requeued.append(await self._fetch(db, job.id))
            return requeued

    # -- progress and results --

    async def _update(self, job_id: str, assignments: str, params: Sequence[Any]) -> Job:
        job_id = normalize_job_id(job_id)
        async with self._transaction() as db:
            cursor = await db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*params, job_id))
            if cursor.rowcount == 0:
                raise JobNotFound(job_id)
            return await self._fetch(db, job_id)

    async def mark_final_shown(self, job_id: str) -> None:
        """The job's message now shows how it ended (or never can: its channel refuses the bot)."""
        await self._update(job_id, "final_shown = 1", ())

    async def unshown_finished(self, limit: int = 500) -> list[Job]:
        """Finished jobs whose message does not show the ending yet, oldest first."""
        return await self._select(
            "WHERE final_shown = 0 AND state IN ('done', 'failed', 'cancelled') ORDER BY finished_at, seq LIMIT ?",
            (limit,),
        )

    async def set_progress_message(self, job_id: str, message_id: int | None) -> Job:
        """The bot-owned channel message that shows this job (None when it was deleted)."""
        return await self._update(job_id, "progress_message_id = ?", (message_id,))

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
        async with self._transaction() as db:
            job = await self._fetch(db, normalize_job_id(job_id))
            await db.execute(
                "UPDATE jobs SET png_path = NULL, latents_path = NULL, timelapse_path = NULL WHERE id = ?",
                (job.id,),
            )
        paths = job.result_paths
        if data_dir is not None:
            for relative in paths:
                (Path(data_dir) / relative).unlink(missing_ok=True)
        return paths


class _OpeningStore:
    """Lets `JobStore.open()` be used both as `await JobStore.open(p)` and `async with JobStore.open(p)`."""

    def __init__(self, opening: Any) -> None:
        self._opening = opening
        self._store: JobStore | None = None

    def __await__(self) -> Any:
        return self._opening.__await__()

    async def __aenter__(self) -> JobStore:
        self._store = await self._opening
        return self._store

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._store is not None:
            await self._store.close()
