from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import pytest

from bot.database import Database, Migration, SchemaTooNew, bot_migrations, latest_version, migrate, schema_version
from bot.jobs.fair_queue import FairQueue
from bot.jobs.job import JOB_ID_ALPHABET, JOB_ID_LENGTH, Job
from bot.jobs.store import IllegalTransition, JobNotFound, JobStore, StoreError
from generator.protocol import DreamSpec

if TYPE_CHECKING:
    from conftest import FakeClock

GUILD_A, GUILD_B = 1001, 1002
ALICE, BOB, CAROL = 11, 12, 13


async def new_job(
    store: JobStore, user: int = ALICE, guild: int = GUILD_A, prompt: str = "a bowl of cherries",
    spec: DreamSpec | None = None, **options: Any
) -> Job:
    return await store.create_job(
        guild_id=guild,
        channel_id=guild * 10,
        user_id=user,
        user_name=f"user{user}",
        spec=spec or DreamSpec(prompt, seed=7),
        **options,
    )


async def table_columns(db: aiosqlite.Connection, table: str) -> list[str]:
    async with db.execute(f"PRAGMA table_info({table})") as cursor:
        return [row[1] for row in await cursor.fetchall()]


# ---- schema and migrations (the runner itself: tests/bot/test_database.py) ----------------------------------


async def test_empty_file_reaches_latest_version_in_wal_mode(db_path: Path) -> None:
    assert not db_path.exists()
    async with Database.open(db_path) as database:
        assert await database.schema_version() == latest_version() == len(bot_migrations()) >= 5
        assert await database.journal_mode() == "wal"
        async with database.reading() as db:
            columns = await table_columns(db, "jobs")
    for expected in ("id", "seq", "guild_id", "state", "spec", "init_latents_path", "png_path", "progress_message_id"):
        assert expected in columns
    # The spec is one document: no setting keeps a column of its own.
    assert not {"prompt", "seed", "steps", "size", "init_noise"} & set(columns)


async def test_reopening_is_idempotent_and_keeps_data(db_path: Path, clock: FakeClock) -> None:
    async with Database.open(db_path) as database:
        job = await new_job(JobStore(database, clock=clock))
    for _ in range(2):
        async with Database.open(db_path) as database:
            store = JobStore(database, clock=clock)
            assert await database.schema_version() == latest_version()
            assert await store.get(job.id) == job
            assert [j.id for j in await store.list_queued()] == [job.id]


@pytest.mark.parametrize("applied", range(latest_version() + 1))
async def test_database_at_an_older_version_is_upgraded(db_path: Path, applied: int) -> None:
    db_path.parent.mkdir(parents=True)
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        assert await migrate(db, target=applied) == applied
        assert await schema_version(db) == applied
    async with Database.open(db_path) as database:
        assert await database.schema_version() == latest_version()
        store = JobStore(database)
        job = await new_job(store)
        assert (await store.require(job.id)).state == "queued"


async def test_a_later_release_can_append_a_migration_without_losing_jobs(db_path: Path) -> None:
    async with Database.open(db_path) as database:
        job = await new_job(JobStore(database))
    future = (
        *bot_migrations(),
        Migration(latest_version() + 1, "quota_weight", """
        ALTER TABLE jobs ADD COLUMN quota_weight REAL NOT NULL DEFAULT 1.0;
        CREATE TABLE guild_themes (guild_id INTEGER PRIMARY KEY, theme TEXT NOT NULL DEFAULT '');
        """),
    )
    async with Database.open(db_path, migrations=future) as database:
        assert await database.schema_version() == latest_version() + 1
        async with database.reading() as db:
            assert "quota_weight" in await table_columns(db, "jobs")
        # Rows are read by explicit column names, so an added column does not break Job.
        assert await JobStore(database).get(job.id) == job
    # An older bot must refuse a database written by a newer one rather than misread it.
    with pytest.raises(SchemaTooNew):
        await Database.open(db_path)


# ---- creating and reading ------------------------------------------------------------------------------------


async def test_created_job_has_a_typeable_id_and_round_trips_its_spec(store: JobStore, clock: FakeClock) -> None:
    spec = DreamSpec("a red fox | snow", negative="blurry", seed=2**63 - 1, steps=150, size=512, cutouts=16,
                     learning_rate=0.05, ema_decay=0.98, max_classes=12, init_noise=0.3)
    job = await store.create_job(guild_id=GUILD_A, channel_id=5, user_id=ALICE, user_name="Alice", spec=spec)
    assert re.fullmatch(f"[{JOB_ID_ALPHABET}]{{{JOB_ID_LENGTH}}}", job.id)
    assert (job.state, job.kind, job.attempts, job.created_at) == ("queued", "imagine", 0, clock.now)
    assert job.started_at is None and job.finished_at is None and job.result_paths == []
    assert job.spec == spec and job.worker_spec() == spec
    assert (job.prompt, job.negative, job.seed, job.steps, job.size, job.cutouts) == ("a red fox | snow", "blurry",
                                                                                       2**63 - 1, 150, 512, 16)
    assert job.worker_spec(snapshot_every=50) == spec.with_changes(snapshot_every=50)
    assert await store.get(job.id) == job
    # What a user types back: different case, a leading '#', spaces.
    assert await store.get(f"  #{job.id.upper()} ") == job
    assert await store.get("zzzzzzzz") is None


async def test_sequence_numbers_increase_and_order_the_queue(store: JobStore) -> None:
    jobs = [await new_job(store, user=user) for user in (ALICE, BOB, ALICE, CAROL)]
    assert [j.seq for j in jobs] == sorted(j.seq for j in jobs)
    assert len({j.seq for j in jobs}) == 4
    assert [j.id for j in await store.list_queued()] == [j.id for j in jobs]


async def test_colliding_ids_are_retried(db_path: Path) -> None:
    candidates = iter(["aaaaaaaa", "aaaaaaaa", "AAAAAAAA", "bbbbbbbb"])
    async with Database.open(db_path) as database:
        store = JobStore(database, id_factory=lambda: next(candidates))
        first = await new_job(store)
        second = await new_job(store)
    assert (first.id, second.id) == ("aaaaaaaa", "bbbbbbbb")


async def test_variation_keeps_its_parent_and_latents_path(store: JobStore) -> None:
    parent = await new_job(store)
    variation = await new_job(store, kind="variation", parent_job_id=parent.id,
                              init_latents_path=Path("results") / f"{parent.id}.npz")
    reroll = await new_job(store, kind="reroll", parent_job_id=parent.id)
    assert variation.init_latents_path == f"results/{parent.id}.npz"
    assert [j.id for j in await store.children(parent.id)] == [variation.id, reroll.id]
    with pytest.raises(ValueError, match="init_latents"):
        variation.worker_spec()
    assert variation.worker_spec(init_latents=b"npz").init_latents == b"npz"
    with pytest.raises(ValueError, match="parent"):
        await new_job(store, kind="reroll")
    with pytest.raises(ValueError, match="relative"):
        await new_job(store, kind="variation", parent_job_id=parent.id, init_latents_path="/etc/passwd")
    with pytest.raises(ValueError, match="relative"):
        await new_job(store, kind="variation", parent_job_id=parent.id, init_latents_path="../../x.npz")
    with pytest.raises(sqlite3.IntegrityError):
        await new_job(store, kind="reroll", parent_job_id="nosuchjb")


async def test_the_spec_is_stored_as_one_versioned_document(store: JobStore, database: Database) -> None:
    job = await new_job(store, prompt="a red fox")
    async with database.reading() as db, db.execute("SELECT spec FROM jobs WHERE id = ?", (job.id,)) as cursor:
        (text,) = await cursor.fetchone()
    assert json.loads(text) == {
        "version": 1, "prompt": "a red fox", "negative": "", "seed": 7, "steps": 400, "size": 256, "cutouts": 32,
        "learning_rate": 0.07, "ema_decay": 0.99, "max_classes": None, "init_noise": 0.0,
        "image_prompts": [], "center_bias": False, "save_best": False, "class_temperature": 2.0,
    }
    assert job.spec == DreamSpec("a red fox", seed=7)


async def test_a_stored_spec_without_a_later_setting_reads_with_its_default(store: JobStore, database: Database) -> None:
    """What adding a DreamSpec field with a default means for the rows already stored: no migration needed."""
    job = await new_job(store, spec=DreamSpec("a lake", seed=3, max_classes=9, init_noise=0.5))
    async with database.transaction() as db:
        # As if written before max_classes and init_noise existed, and by a newer bot that knows a setting more.
        await db.execute("UPDATE jobs SET spec = json_set(json_remove(spec, '$.max_classes', '$.init_noise'), "
                         "'$.image_prompt', 'cat.png') WHERE id = ?", (job.id,))
    assert (await store.require(job.id)).spec == DreamSpec("a lake", seed=3)


async def test_a_spec_document_of_an_unknown_version_is_refused_naming_the_job(store: JobStore, database: Database) -> None:
    job = await new_job(store)
    async with database.transaction() as db:
        await db.execute("UPDATE jobs SET spec = json_set(spec, '$.version', 2) WHERE id = ?", (job.id,))
    with pytest.raises(StoreError, match=f"Job {job.id}.*version 2"):
        await store.require(job.id)


# ---- state transitions ---------------------------------------------------------------------------------------


async def test_lifecycle_records_timestamps_attempts_and_results(store: JobStore, clock: FakeClock) -> None:
    job = await new_job(store)
    started = clock.advance(30)
    running = await store.mark_running(job.id)
    assert (running.state, running.started_at, running.attempts) == ("running", started, 1)
    await store.set_progress_message(job.id, 987654321012345678)
    assert (await store.record_progress(job.id, 120)).progress_step == 120
    finished = clock.advance(95.5)
    done = await store.mark_done(job.id, png_path="results/x.png", latents_path="results/x.npz", wall_seconds=95.5)
    assert (done.state, done.finished_at, done.wall_seconds) == ("done", finished, 95.5)
    assert done.progress_message_id == 987654321012345678
    assert done.result_paths == ["results/x.png", "results/x.npz"]
    assert done.is_finished


async def test_what_the_worker_made_the_image_with_is_kept_beside_what_was_asked(store: JobStore, database: Database) -> None:
    asked = DreamSpec("a lighthouse", seed=5, cutouts=32)
    job = await new_job(store, spec=asked)
    await store.mark_running(job.id)
    done = await store.mark_done(job.id, png_path="results/x.png", ran_spec=asked.with_changes(cutouts=16))

    assert (done.spec, done.ran_spec, done.made_with.cutouts) == (asked, asked.with_changes(cutouts=16), 16)
    assert await store.require(job.id) == done
    async with database.reading() as db, db.execute("SELECT ran_spec FROM jobs WHERE id = ?", (job.id,)) as cursor:
        (text,) = await cursor.fetchone()
    # The same document as the spec: a setting added later needs no migration here either.
    assert json.loads(text) == asked.with_changes(cutouts=16).to_document()
    assert (await new_job(store)).made_with == DreamSpec("a bowl of cherries", seed=7)  # not made yet: the spec


@pytest.mark.parametrize(
    ("setup", "illegal"),
    [
        (["mark_running", "mark_done"], "mark_running"),
        (["mark_running", "mark_done"], "mark_cancelled"),
        (["mark_running", "mark_done"], "requeue"),
        (["mark_cancelled"], "mark_running"),
        (["mark_cancelled"], "mark_cancelled"),
        (["mark_failed"], "mark_running"),
        ([], "mark_done"),
        ([], "requeue"),
        (["mark_running"], "mark_running"),
    ],
)
async def test_illegal_transitions_are_refused_and_change_nothing(
    store: JobStore, setup: list[str], illegal: str
) -> None:
    job = await new_job(store)
    for step in setup:
        await (store.mark_failed(job.id, "boom") if step == "mark_failed" else getattr(store, step)(job.id))
    before = await store.require(job.id)
    with pytest.raises(IllegalTransition) as refused:
        await (store.mark_failed(job.id, "x") if illegal == "mark_failed" else getattr(store, illegal)(job.id))
    assert refused.value.current == before.state
    assert await store.require(job.id) == before


async def test_queued_job_may_fail_or_be_cancelled(store: JobStore) -> None:
    first, second = await new_job(store), await new_job(store)
    assert (await store.mark_failed(first.id, "The parent image was deleted.")).error == "The parent image was deleted."
    assert (await store.mark_cancelled(second.id)).state == "cancelled"
    assert await store.list_queued() == []


async def test_unknown_job_is_reported_as_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        await store.mark_running("nosuchjb")
    with pytest.raises(JobNotFound):
        await store.set_progress_message("nosuchjb", 1)
    with pytest.raises(JobNotFound):
        await store.delete_result("nosuchjb")


async def test_racing_starts_let_exactly_one_win(store: JobStore) -> None:
    job = await new_job(store)
    outcomes = await asyncio.gather(*(store.mark_running(job.id) for _ in range(20)), return_exceptions=True)
    assert sum(isinstance(o, Job) for o in outcomes) == 1
    assert sum(isinstance(o, IllegalTransition) for o in outcomes) == 19
    assert (await store.require(job.id)).attempts == 1


async def test_requeue_puts_a_job_at_the_front_or_the_back(store: JobStore) -> None:
    a, b, c = [await new_job(store, user=user) for user in (ALICE, BOB, CAROL)]
    await store.mark_running(b.id)
    front = await store.requeue(b.id)
    assert front.state == "queued" and front.started_at is None and front.attempts == 1
    assert [j.id for j in await store.list_queued()] == [b.id, a.id, c.id]
    await store.mark_running(b.id)
    back = await store.requeue(b.id, front=False)
    assert back.attempts == 2
    assert [j.id for j in await store.list_queued()] == [a.id, c.id, b.id]


async def test_a_clean_hand_back_takes_back_the_attempt_its_start_counted(store: JobStore) -> None:
    job = await new_job(store)
    for _ in range(5):
        await store.mark_running(job.id)
        handed_back = await store.requeue(job.id, counts_as_attempt=False)
    assert handed_back.attempts == 0
    await store.mark_running(job.id)
    assert (await store.requeue(job.id)).attempts == 1


# ---- restart recovery ----------------------------------------------------------------------------------------


async def test_recovery_after_restart_puts_running_jobs_first_on_a_real_file(db_path: Path, clock: FakeClock) -> None:
    async with Database.open(db_path) as database:
        store = JobStore(database, clock=clock)
        a1 = await new_job(store, user=ALICE)
        b1 = await new_job(store, user=BOB, guild=GUILD_B)
        a2 = await new_job(store, user=ALICE)
        c1 = await new_job(store, user=CAROL)
        b2 = await new_job(store, user=BOB, guild=GUILD_B)
        done = await new_job(store, user=CAROL)
        for job in (done, c1, b2):
            await store.mark_running(job.id)
        await store.mark_done(done.id, png_path="d.png", latents_path="d.npz", wall_seconds=10)
    # The process died with c1 and b2 running. A fresh process opens the same file.
    async with Database.open(db_path) as database:
        store = JobStore(database, clock=clock)
        recovered = await store.recover_after_restart()
        assert [j.id for j in recovered] == [c1.id, b2.id]
        assert all(j.state == "queued" and j.attempts == 1 and j.started_at is None for j in recovered)
        queued = await store.list_queued()
        # Recovered jobs first in their old order, then the rest in theirs.
        assert [j.id for j in queued] == [c1.id, b2.id, a1.id, b1.id, a2.id]
        assert (await store.require(done.id)).state == "done"
        assert await store.recover_after_restart() == []
        # Rebuilt from the store, the queue dispatches the interrupted work first.
        queue = FairQueue.rebuild(queued)
        first_two = [queue.pop_next(), queue.pop_next()]
        assert [ref.job_id for ref in first_two if ref] == [c1.id, b2.id]


async def test_recovery_gives_up_on_jobs_that_keep_killing_the_worker(store: JobStore) -> None:
    flaky, fresh = await new_job(store), await new_job(store, user=BOB)
    for _ in range(2):
        await store.mark_running(flaky.id)
        await store.recover_after_restart(max_attempts=3)
    await store.mark_running(flaky.id)
    await store.mark_running(fresh.id)
    recovered = await store.recover_after_restart(max_attempts=3)
    states = {job.id: (job.state, job.attempts) for job in recovered}
    assert states == {flaky.id: ("failed", 3), fresh.id: ("queued", 1)}
    assert "3 times" in (await store.require(flaky.id)).error


# ---- counts, history, durations, results ---------------------------------------------------------------------


async def test_user_counts_span_servers(store: JobStore) -> None:
    jobs = [await new_job(store, guild=g) for g in (GUILD_A, GUILD_B, GUILD_A, GUILD_B)]
    await new_job(store, user=BOB)
    await store.mark_running(jobs[0].id)
    await store.mark_running(jobs[1].id)
    await store.mark_cancelled(jobs[2].id)
    counts = await store.user_counts(ALICE)
    assert (counts.running, counts.queued) == (2, 1)
    assert (await store.user_counts(BOB)).queued == 1
    assert (await store.user_counts(CAROL)).running == 0


async def test_history_is_newest_first_and_filterable(store: JobStore, clock: FakeClock) -> None:
    ids = []
    for n, guild in enumerate((GUILD_A, GUILD_B, GUILD_A, GUILD_A)):
        clock.advance(1)
        ids.append((await new_job(store, guild=guild, prompt=f"prompt {n}")).id)
    await new_job(store, user=BOB)
    assert [j.id for j in await store.recent_jobs(ALICE)] == ids[::-1]
    assert [j.id for j in await store.recent_jobs(ALICE, limit=2)] == [ids[3], ids[2]]
    assert [j.id for j in await store.recent_jobs(ALICE, guild_id=GUILD_B)] == [ids[1]]


async def test_recent_durations_come_from_finished_jobs_newest_first(store: JobStore, clock: FakeClock) -> None:
    for seconds in (50.0, 70.0, 60.0):
        job = await new_job(store)
        await store.mark_running(job.id)
        clock.advance(seconds)
        await store.mark_done(job.id, png_path="a.png", latents_path="a.npz", wall_seconds=seconds)
    failed = await new_job(store)
    await store.mark_running(failed.id)
    await store.mark_failed(failed.id, "out of memory")
    assert await store.recent_durations() == [60.0, 70.0, 50.0]
    assert await store.recent_durations(limit=1) == [60.0]


async def test_delete_result_clears_paths_then_files(store: JobStore, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "results").mkdir(parents=True)
    for name in ("j.png", "j.npz", "j.gif"):
        (data_dir / "results" / name).write_bytes(b"x")
    job = await new_job(store)
    await store.mark_running(job.id)
    await store.mark_done(job.id, png_path="results/j.png", latents_path="results/j.npz",
                          timelapse_path="results/j.gif", wall_seconds=1.0)
    removed = await store.delete_result(job.id, data_dir)
    assert removed == ["results/j.png", "results/j.npz", "results/j.gif"]
    assert list((data_dir / "results").iterdir()) == []
    after = await store.require(job.id)
    assert after.result_paths == [] and after.state == "done"
    # A second delete is harmless.
    assert await store.delete_result(job.id, data_dir) == []


async def test_record_result_refuses_paths_outside_the_data_dir(store: JobStore) -> None:
    job = await new_job(store)
    with pytest.raises(ValueError):
        await store.record_result(job.id, png_path="/abs/x.png", latents_path=None)
    with pytest.raises(ValueError):
        await store.record_result(job.id, png_path="C:\\x.png", latents_path=None)
    updated = await store.record_result(job.id, png_path="r\\x.png", latents_path="r/x.npz")
    assert updated.result_paths == ["r/x.png", "r/x.npz"]
