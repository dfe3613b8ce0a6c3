"""The bot's one SQLite database (through aiosqlite): the connection, the lock that serialises its use, write
transactions, and the migration runner.

The feature stores (bot.jobs.store, bot.moderation.store, bot.challenges.store) take a `Database` and run their
SQL inside `transaction()` or `reading()`. Each feature keeps its schema changes beside it as numbered SQL files,
`bot/<feature>/migrations/V<n>__<what>.sql`; the runner applies those of every feature in the order of n, and the
database's `PRAGMA user_version` records the last one applied. Migrations are append-only: add a file with the
next number, never edit a released one.

This module must stay free of torch and discord imports.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

# How long a write waits for another process's write lock before SQLite gives up ("database is locked").
BUSY_TIMEOUT_MS = 5000
# bot/: each feature folder below it may have a migrations/ folder.
FEATURES_DIR = Path(__file__).resolve().parent
MIGRATION_NAME = re.compile(r"V(?P<version>[0-9]+)__(?P<name>[^/]+)\.sql")


class DatabaseError(Exception):
    """Base class for the database's own errors (SQLite's pass through as sqlite3.Error)."""


class SchemaTooNew(DatabaseError):
    """The database was written by a newer version of the bot than this one."""


class MigrationError(DatabaseError):
    """The migration files themselves are wrong: a misnamed file, a version missing or claimed twice."""


# ---- migrations ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    # Where it was read from, for error messages.
    source: str = ""

    def statements(self) -> list[str]:
        return split_sql_statements(self.sql)


def load_migrations(folders: Iterable[Path]) -> tuple[Migration, ...]:
    """Every `V<n>__<what>.sql` in these folders, in version order; refuses misnamed files, gaps and duplicates."""
    found = []
    for folder in folders:
        for path in sorted(folder.glob("*.sql")):
            match = MIGRATION_NAME.fullmatch(path.name)
            if match is None:
                raise MigrationError(f"{path} is not named like a migration: V<number>__<what>.sql")
            found.append(Migration(int(match["version"]), match["name"], path.read_text(encoding="utf-8"), str(path)))
    return in_version_order(found)


def in_version_order(migrations: Iterable[Migration]) -> tuple[Migration, ...]:
    """The migrations sorted by version, which must run 1, 2, 3, ... with none missing and none twice."""
    ordered = sorted(migrations, key=lambda migration: migration.version)
    for previous, migration in zip(ordered, ordered[1:]):
        if migration.version == previous.version:
            raise MigrationError(
                f"Two migrations claim version {migration.version}: {previous.source or previous.name} and "
                f"{migration.source or migration.name}; give the newer one the next free number."
            )
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"Migration version {expected} is missing (the next one is {migration.source or migration.name}); "
                "versions run 1, 2, 3, ... without gaps."
            )
    return tuple(ordered)


def feature_migration_folders(features_dir: Path = FEATURES_DIR) -> list[Path]:
    return sorted(path for path in features_dir.glob("*/migrations") if path.is_dir())


@cache
def bot_migrations() -> tuple[Migration, ...]:
    """The bot's migrations, from every feature's migrations/ folder."""
    return load_migrations(feature_migration_folders())


def latest_version() -> int:
    """The schema version this bot migrates a database to."""
    return len(bot_migrations())


def split_sql_statements(script: str) -> list[str]:
    """Split a script into single statements (sqlite3's execute() takes one at a time)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        # complete_statement knows about comments, string literals and CREATE TRIGGER bodies, so a ';' inside
        # any of them does not end the statement early.
        if sqlite3.complete_statement(pending):
            if pending.strip().strip(";").strip():
                statements.append(pending.strip())
            pending = ""
    if pending.strip().strip(";").strip():
        raise ValueError(f"Unterminated SQL statement in migration: {pending.strip()[:80]!r}")
    return statements


async def schema_version(connection: aiosqlite.Connection) -> int:
    async with connection.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(
    connection: aiosqlite.Connection, migrations: Sequence[Migration] | None = None, target: int | None = None
) -> int:
    """Apply the migrations the database has not seen yet, up to `target` (default: all). Returns the version.

    Each runs in one transaction together with its user_version bump, so it must hold only statements SQLite
    allows in a transaction (no VACUUM, no PRAGMA journal_mode). The connection must be in autocommit mode
    (isolation_level=None) so that our BEGIN is the only one.
    """
    migrations = bot_migrations() if migrations is None else in_version_order(migrations)
    target = len(migrations) if target is None else target
    if not 0 <= target <= len(migrations):
        raise ValueError(f"target version {target} is outside 0..{len(migrations)}")
    current = await schema_version(connection)
    if current > len(migrations):
        raise SchemaTooNew(
            f"The database is at schema version {current}, but this bot only knows {len(migrations)}; "
            "upgrade the bot or restore a matching backup."
        )
    while current < target:
        migration = migrations[current]
        statements = migration.statements()
        await connection.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated between our read and our lock.
            if await schema_version(connection) == current:
                for statement in statements:
                    await connection.execute(statement)
                # PRAGMA does not accept bound parameters; version is our own int.
                await connection.execute(f"PRAGMA user_version = {int(migration.version)}")
        except BaseException:
            await connection.rollback()
            raise
        await connection.commit()
        current = await schema_version(connection)
    return current


# ---- the database --------------------------------------------------------------------------------------------


class Database:
    """The shared connection. Open with `await Database.open(path)` or `async with Database.open(path)`.

    One process should own the database file. Every use of the connection goes through one lock, so coroutines
    may share it freely: two of them interleaving statements on one connection would share, or break, one
    transaction.
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
        self._lock = asyncio.Lock()

    @classmethod
    def open(cls, path: str | Path, *, migrations: Sequence[Migration] | None = None) -> _OpeningDatabase:
        """Open (creating and migrating as needed; default: the bot's migrations). Await it, or `async with` it."""
        return _OpeningDatabase(cls._open(path, migrations))

    @classmethod
    async def _open(cls, path: str | Path, migrations: Sequence[Migration] | None) -> Database:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            # First, so that a second process opening the same file waits instead of failing.
            await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # WAL lets readers (backup scripts, a future web gallery) work while the bot writes.
            await _switch_to_wal(connection)
            await connection.execute("PRAGMA synchronous = NORMAL")
            await connection.execute("PRAGMA foreign_keys = ON")
            await migrate(connection, migrations)
        except BaseException:
            await connection.close()
            raise
        return cls(connection)

    async def close(self) -> None:
        await self._connection.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (BEGIN IMMEDIATE): committed when the block ends, rolled back if it raises."""
        async with self._lock:
            await self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                await self._connection.rollback()
                raise
            await self._connection.commit()

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for reads, while no other coroutine's transaction is open."""
        async with self._lock:
            yield self._connection

    async def schema_version(self) -> int:
        async with self.reading() as connection:
            return await schema_version(connection)

    async def journal_mode(self) -> str:
        async with self.reading() as connection, connection.execute("PRAGMA journal_mode") as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else ""

    async def check_writable(self, timeout: float) -> None:
        """Take the database's write lock and give it back at once; raises when the bot could not write (a
        read-only database, or another process holding the write lock for `timeout` seconds). For health checks,
        which must answer within their own time: the check waits for another process's lock only `timeout` (not
        the bot's own busy timeout), so it holds the shared connection no longer than that."""
        async with self._lock:
            await self._connection.execute(f"PRAGMA busy_timeout = {max(1, round(timeout * 1000))}")
            try:
                await self._connection.execute("BEGIN IMMEDIATE")
                await self._connection.rollback()
            finally:
                await self._connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


class _OpeningDatabase:
    """Lets `Database.open()` be used both as `await Database.open(p)` and `async with Database.open(p)`."""

    def __init__(self, opening: Any) -> None:
        self._opening = opening
        self._database: Database | None = None

    def __await__(self) -> Any:
        return self._opening.__await__()

    async def __aenter__(self) -> Database:
        self._database = await self._opening
        return self._database

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._database is not None:
            await self._database.close()


async def _switch_to_wal(connection: aiosqlite.Connection) -> None:
    """PRAGMA journal_mode = WAL. Switching a new file's mode needs it alone, and SQLite answers "database is locked"
    at once, without the busy timeout, while another opener holds it (seen with four openers on a loaded machine):
    try again for as long as the busy timeout would have waited. Once a file is in WAL mode it stays so."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            await connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
