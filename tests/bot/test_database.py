"""The database seam (bot.database): the migration files and their runner, the connection's lock and
transactions, and a database written by an older bot migrating forward with every row intact."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from bot.challenges.store import ChallengeStore
from bot.database import (
    BUSY_TIMEOUT_MS,
    FEATURES_DIR,
    Database,
    Migration,
    MigrationError,
    SchemaTooNew,
    bot_migrations,
    latest_version,
    load_migrations,
    schema_version,
    split_sql_statements,
)
from bot.jobs.fair_queue import FairQueue, JobRef
from bot.jobs.store import JobStore
from bot.moderation.quotas import Override
from bot.moderation.store import BlockedMember, GuildSettings, ModerationStore
from generator.protocol import DreamSpec

FIXTURES = Path(__file__).parent / "fixtures"


def write_migrations(folder: Path, **scripts: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in scripts.items():
        (folder / f"{name}.sql").write_text(sql)
    return folder


# ---- the migration files ---------------------------------------------------------------------------------------


def test_the_bots_migrations_sit_with_their_features_in_order():
    migrations = bot_migrations()

    assert [(m.version, Path(m.source).relative_to(FEATURES_DIR).as_posix()) for m in migrations] == [
        (1, "jobs/migrations/V1__jobs.sql"),
        (2, "jobs/migrations/V2__final_shown.sql"),
        (3, "moderation/migrations/V3__moderation.sql"),
        (4, "challenges/migrations/V4__challenges.sql"),
        (5, "jobs/migrations/V5__spec_document.sql"),
        (6, "jobs/migrations/V6__gpu_time_and_what_ran.sql"),
        (7, "moderation/migrations/V7__image_prompts_setting.sql"),
        (8, "jobs/migrations/V8__grids.sql"),
    ]
    assert latest_version() == 8
    assert all(m.statements() for m in migrations)


def test_versions_are_ordered_across_folders(tmp_path):
    jobs = write_migrations(tmp_path / "jobs", V1__jobs="CREATE TABLE a (x);", V3__more="CREATE TABLE c (x);")
    other = write_migrations(tmp_path / "other", V2__other="CREATE TABLE b (x);")
    (other / "README.md").write_text("not a migration")

    assert [(m.version, m.name) for m in load_migrations([jobs, other])] == [(1, "jobs"), (2, "other"), (3, "more")]


def test_a_gap_is_refused_naming_the_missing_version(tmp_path):
    folder = write_migrations(tmp_path / "jobs", V1__a="SELECT 1;", V3__c="SELECT 1;")

    with pytest.raises(MigrationError, match=r"version 2 is missing \(the next one is .*V3__c\.sql\)"):
        load_migrations([folder])


def test_a_version_claimed_twice_is_refused_naming_both_files(tmp_path):
    jobs = write_migrations(tmp_path / "jobs", V1__a="SELECT 1;", V2__jobs_thing="SELECT 1;")
    other = write_migrations(tmp_path / "other", V2__other_thing="SELECT 1;")

    with pytest.raises(MigrationError, match="Two migrations claim version 2: .*V2__.*_thing.sql and .*V2__.*_thing.sql"):
        load_migrations([jobs, other])


@pytest.mark.parametrize("name", ["v1__lower", "V1_one_underscore", "V__no_number", "1__no_v"])
def test_a_misnamed_sql_file_is_refused(tmp_path, name):
    folder = write_migrations(tmp_path / "jobs", **{name: "SELECT 1;"})

    with pytest.raises(MigrationError, match="not named like a migration"):
        load_migrations([folder])


def test_sql_splitting_respects_literals_comments_and_trigger_bodies() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT);
    INSERT INTO t VALUES ('semi;colon');
    CREATE TRIGGER t_copy AFTER INSERT ON t BEGIN
        INSERT INTO t VALUES ('copied');
        SELECT 1;
    END;
    """
    statements = split_sql_statements(script)
    assert len(statements) == 3
    assert statements[0].startswith("-- a comment; with a semicolon") and statements[0].endswith("(x TEXT);")
    assert statements[1] == "INSERT INTO t VALUES ('semi;colon');"
    assert statements[2].startswith("CREATE TRIGGER") and statements[2].endswith("END;")
    # A missing final semicolon is fine; an unclosed string literal is not.
    assert split_sql_statements("SELECT 1; SELECT 2") == ["SELECT 1;", "SELECT 2;"]
    with pytest.raises(ValueError):
        split_sql_statements("INSERT INTO t VALUES ('unclosed);")


# ---- the runner ------------------------------------------------------------------------------------------------

FIRST = Migration(1, "first", "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
SECOND = Migration(2, "second", "ALTER TABLE t ADD COLUMN y TEXT NOT NULL DEFAULT 'y';")


async def test_migrations_apply_in_order_and_only_once(db_path):
    async with Database.open(db_path, migrations=[FIRST]) as database:
        assert await database.schema_version() == 1
    async with Database.open(db_path, migrations=[SECOND, FIRST]) as database:
        assert await database.schema_version() == 2
        async with database.reading() as db, db.execute("SELECT x, y FROM t") as cursor:
            assert await cursor.fetchall() == [(1, "y")]  # FIRST's insert ran once


async def test_a_runner_with_a_gap_refuses_to_start(db_path):
    with pytest.raises(MigrationError, match="version 2 is missing"):
        await Database.open(db_path, migrations=[FIRST, Migration(3, "third", "SELECT 1;")])


async def test_a_database_newer_than_the_bot_is_refused_unchanged(db_path):
    async with Database.open(db_path, migrations=[FIRST, SECOND]):
        pass
    before = db_path.read_bytes()

    with pytest.raises(SchemaTooNew, match="schema version 2, but this bot only knows 1"):
        await Database.open(db_path, migrations=[FIRST])
    assert db_path.read_bytes() == before


async def test_a_failing_migration_is_rolled_back_whole(db_path):
    async with Database.open(db_path, migrations=[FIRST]):
        pass
    broken = Migration(2, "broken", "CREATE TABLE half_done (x INTEGER); INSERT INTO no_such_table VALUES (1);")

    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        await Database.open(db_path, migrations=[FIRST, broken])
    async with aiosqlite.connect(db_path) as db:
        assert await schema_version(db) == 1
        async with db.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'") as cursor:
            assert await cursor.fetchall() == []


async def test_concurrent_openers_migrate_once(db_path):
    counting = Migration(1, "counted", "CREATE TABLE runs (n INTEGER); INSERT INTO runs VALUES (1);")
    opened = await asyncio.gather(*(Database.open(db_path, migrations=[counting]) for _ in range(4)))
    try:
        for database in opened:
            assert await database.schema_version() == 1
        async with opened[0].reading() as db, db.execute("SELECT COUNT(*) FROM runs") as cursor:
            assert (await cursor.fetchone())[0] == 1
    finally:
        for database in opened:
            await database.close()


async def test_a_failing_transaction_rolls_back_and_the_next_one_works(database):
    with pytest.raises(RuntimeError):
        async with database.transaction() as db:
            await db.execute("INSERT INTO banned_words (guild_id, word) VALUES (1, 'gone')")
            raise RuntimeError("changed my mind")
    async with database.transaction() as db:
        await db.execute("INSERT INTO banned_words (guild_id, word) VALUES (1, 'kept')")
    async with database.reading() as db, db.execute("SELECT word FROM banned_words") as cursor:
        assert await cursor.fetchall() == [("kept",)]


async def test_transactions_of_coroutines_sharing_the_connection_do_not_interleave(database):
    async def add(word: str) -> None:
        async with database.transaction() as db:
            await db.execute("INSERT INTO banned_words (guild_id, word) VALUES (1, ?)", (word,))
            await asyncio.sleep(0)  # let the other coroutine try to run in between
            await db.execute("UPDATE banned_words SET word = word || '!' WHERE word = ?", (word,))

    await asyncio.gather(*(add(f"w{n}") for n in range(5)))

    async with database.reading() as db, db.execute("SELECT word FROM banned_words ORDER BY word") as cursor:
        assert [row[0] for row in await cursor.fetchall()] == [f"w{n}!" for n in range(5)]


async def test_check_writable_raises_on_a_read_only_database_and_leaves_no_transaction(database):
    await database.check_writable(timeout=1.0)
    async with database.reading() as db:
        await db.execute("PRAGMA query_only = ON")
    with pytest.raises(sqlite3.OperationalError):
        await database.check_writable(timeout=1.0)
    async with database.reading() as db:
        await db.execute("PRAGMA query_only = OFF")
    await database.check_writable(timeout=1.0)
    async with database.transaction() as db:
        await db.execute("INSERT INTO banned_words (guild_id, word) VALUES (1, 'still writes')")


async def test_check_writable_waits_for_another_process_only_its_own_timeout(database, db_path):
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        asked = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await database.check_writable(timeout=0.2)
        assert time.monotonic() - asked < 1.0  # the bot's own writes would wait 5 s
    finally:
        other.rollback()
        other.close()
    # The bot's connection is as it was: its own busy timeout, no transaction left open.
    async with database.reading() as db, db.execute("PRAGMA busy_timeout") as cursor:
        assert (await cursor.fetchone())[0] == BUSY_TIMEOUT_MS
    async with database.transaction() as db:
        await db.execute("INSERT INTO banned_words (guild_id, word) VALUES (1, 'after the check')")


# ---- a database written by the bot before this seam existed ---------------------------------------------------
# tests/bot/fixtures/jobs-v4.sqlite3 is schema v4, written by the bot at commit 5da0168 (spec settings in ten
# columns of `jobs`, migrations as Python strings); tests/bot/fixtures/make_jobs_v4.py is the script that made it,
# and says how to run it again. Its expectations below are read from the file itself, as v4 stored them.

GUILD_A, GUILD_B = 1001, 1002
SPEC_COLUMNS = ("prompt", "negative", "seed", "steps", "size", "cutouts", "learning_rate", "ema_decay", "max_classes",
                "init_noise")
OTHER_TABLES = ("guild_settings", "quota_overrides", "allowed_channels", "banned_words", "blocked_members",
                "mod_actions", "quota_refunds", "member_roles_seen", "challenges", "challenge_entries", "challenge_votes")


def read_v4(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[tuple]]]:
    """Every job as a dict of its v4 columns, and every row of the other tables."""
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 4
        db.row_factory = sqlite3.Row
        jobs = {row["id"]: dict(row) for row in db.execute("SELECT * FROM jobs")}
        db.row_factory = None
        tables = {table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in OTHER_TABLES}
    return jobs, tables


def dispatch_order(refs: list[JobRef]) -> list[str]:
    queue = FairQueue.rebuild(refs)
    order = []
    while (ref := queue.pop_next()) is not None:
        order.append(ref.job_id)
        queue.finish(ref.job_id)
    return order


@pytest.fixture
def v4_database(tmp_path) -> Path:
    path = tmp_path / "jobs.sqlite3"
    shutil.copy(FIXTURES / "jobs-v4.sqlite3", path)
    return path


async def test_a_v4_database_migrates_to_the_latest_version_with_every_row_intact(v4_database):
    v4_jobs, v4_tables = read_v4(v4_database)
    assert {job["state"] for job in v4_jobs.values()} == {"queued", "running", "done", "failed", "cancelled"}
    assert {job["kind"] for job in v4_jobs.values()} == {"imagine", "reroll", "variation"}

    async with Database.open(v4_database) as database:
        assert await database.schema_version() == latest_version() == 8
        store = JobStore(database)
        for job_id, v4 in v4_jobs.items():
            job = await store.require(job_id)
            # The spec holds exactly what the ten columns held (floats to the last bit), and nothing else changed.
            assert job.spec == DreamSpec(**{name: v4[name] for name in SPEC_COLUMNS}), job_id
            assert all(type(getattr(job.spec, name)) is type(v4[name]) for name in SPEC_COLUMNS), job_id
            others = {name: value for name, value in v4.items() if name not in SPEC_COLUMNS and name != "final_shown"}
            assert {name: getattr(job, name) for name in others} == others, job_id
            # The GPU time the budget counted for it before (V6), and no record of what ran (the spec says it).
            counted = 0.0
            if v4["state"] == "done":
                counted = v4["wall_seconds"] or 0.0
            elif v4["state"] == "cancelled" and v4["started_at"] is not None:
                counted = v4["finished_at"] - v4["started_at"]
            assert (job.gpu_seconds, job.ran_spec, job.made_with) == (counted, None, job.spec), job_id
        assert {job.id for job in await store.unshown_finished()} == {
            job_id for job_id, v4 in v4_jobs.items() if v4["final_shown"] == 0 and v4["state"] in ("done", "failed", "cancelled")
        }
        variation = await store.require("bbbb3333")
        assert (variation.kind, variation.parent_job_id, variation.init_latents_path) == (
            "variation", "aaaa2222", "results/aaaa2222.npz")
        assert variation.spec.init_noise == 0.35 and variation.spec.max_classes == 10

        # The fair queue rebuilt from the migrated store dispatches in the order v4's rows gave.
        queued = await store.list_queued()
        v4_refs = [JobRef(v4["id"], v4["guild_id"], v4["user_id"], v4["seq"])
                   for v4 in v4_jobs.values() if v4["state"] == "queued"]
        assert dispatch_order([JobRef.of(job) for job in queued]) == dispatch_order(v4_refs)
        # Server B (the re-queued job first), A, B, then A again with Carol before Alice's second job.
        assert dispatch_order(v4_refs) == ["mmmm4567", "gggg8888", "hhhh9999", "kkkk3456", "jjjj2345"]
        assert [job.id for job in await store.list_running()] == ["ffff7777"]

        # Moderation and challenges: the tables are untouched row for row (V7 adds a server setting, on for every
        # server), and their stores read them.
        async with database.reading() as db:
            for table, rows in v4_tables.items():
                if table == "guild_settings":
                    rows = [(*row, 1) for row in rows]  # image_prompts
                async with db.execute(f"SELECT * FROM {table} ORDER BY 1, 2") as cursor:
                    assert await cursor.fetchall() == rows, table
        moderation = ModerationStore(database)
        assert await moderation.settings(GUILD_A) == GuildSettings(
            GUILD_A, default_steps=300, max_steps=1000, max_size=256, spoiler_by_default=True, log_channel_id=2099,
            quota_per_day=20, quota_max_queued=3, budget_gpu_minutes_per_day=90.5)
        assert (await moderation.settings(GUILD_B)).paused
        assert await moderation.banned_words() == {GUILD_A: ["gore", "spoilerword"]}
        assert await moderation.blocked_members() == [BlockedMember(GUILD_B, 3050, "spam", 3999, 1700001320.0)]
        assert await moderation.overrides(GUILD_A) == [
            (GUILD_A, Override("member", 3002, False, {"per_day": 40, "max_queued": None})),
            (GUILD_A, Override("role", 4001, True, {})),
        ]
        assert [(a.action, a.before, a.after) for a in await moderation.actions(GUILD_A)] == [
            ("quota.rules", {"per_day": None}, {"per_day": 20})]
        challenges = ChallengeStore(database, clock=lambda: 1_800_000_000.0)
        still_open, ended = await challenges.in_guild(GUILD_A)  # newest first
        assert (ended.theme, ended.state, still_open.theme, still_open.state) == (
            "Lighthouses", "ended", "Forests", "open")
        assert [(e.job_id, e.votes, e.place) for e in await challenges.entries(ended.id)] == [
            ("aaaa2222", 2, 1), ("bbbb3333", 1, 2)]
        [entry] = await challenges.entries(still_open.id)
        assert (entry.job_id, entry.votes) == ("ffff7777", 1)
        assert await challenges.has_voted(entry.id, 3001)


class _SwitchingConnection:
    """Answers PRAGMA journal_mode = WAL with the given errors first, as SQLite does while another opener switches."""

    def __init__(self, *errors: str) -> None:
        self.errors = list(errors)
        self.tries = 0

    async def execute(self, sql: str) -> None:
        assert sql == "PRAGMA journal_mode = WAL"
        self.tries += 1
        if self.errors:
            raise sqlite3.OperationalError(self.errors.pop(0))


async def test_switching_to_wal_waits_out_another_opener_but_not_other_errors():
    from bot.database import _switch_to_wal

    busy = _SwitchingConnection("database is locked", "database is locked")
    await _switch_to_wal(busy)
    assert busy.tries == 3
    broken = _SwitchingConnection("disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        await _switch_to_wal(broken)
    assert broken.tries == 1
