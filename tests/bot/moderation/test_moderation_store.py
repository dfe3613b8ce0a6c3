"""The moderation store and service on a real SQLite file: what counts against quotas, what survives a
reopen, and the per-server running cap the dispatcher asks about."""

from __future__ import annotations

from bot.database import Database
from bot.jobs.admission import Requester, ServerLimits
from bot.jobs.fair_queue import FairQueue, JobRef
from bot.jobs.ports import Actor
from bot.jobs.store import JobStore
from bot.moderation.quotas import DAY, Override, refusal
from bot.moderation.service import ModerationService
from bot.moderation.store import ModerationStore
from generator.protocol import DreamSpec

GUILD, OTHER_GUILD, ALICE, BOB = 10, 20, 1, 2
MOD = Actor(99, "mod")


async def make_job(store: JobStore, user: int = ALICE, guild: int = GUILD):
    return await store.create_job(guild_id=guild, channel_id=guild * 10, user_id=user, user_name=f"u{user}",
                                  spec=DreamSpec("a lake", seed=1))


async def test_what_counts_against_quotas(database: Database, store: JobStore, clock) -> None:
    moderation = ModerationStore(database, clock=clock)
    done = await make_job(store)
    await store.mark_running(done.id)
    clock.advance(30)
    await store.mark_done(done.id, wall_seconds=25.0)
    waiting = await make_job(store)
    never_started = await make_job(store)
    await store.mark_cancelled(never_started.id)
    failed = await make_job(store)
    await store.mark_failed(failed.id, "the generator broke")
    stopped = await make_job(store)
    await store.mark_running(stopped.id)
    clock.advance(10)
    await store.mark_cancelled(stopped.id)
    await make_job(store, user=BOB)
    await make_job(store, guild=OTHER_GUILD)

    now = clock()
    events = await moderation.usage_events(GUILD, since=now - DAY, now=now, user_id=ALICE)

    # Done, waiting and cancelled-after-starting count; cancelled-before-starting and failed give it back.
    assert sorted(e.state for e in events) == ["cancelled", "done", "queued"]
    gpu = {e.state: e.gpu_seconds for e in events}
    # A run's GPU time is from its start to its end, as the store saw them (the worker's 25 s leave out the hand-over).
    assert gpu == {"done": 30.0, "queued": 0.0, "cancelled": 10.0}
    assert waiting.id  # still queued, counted above
    clock.advance(DAY + 60)
    later = await moderation.usage_events(GUILD, since=clock() - DAY, now=clock(), user_id=ALICE)
    assert [e.state for e in later] == ["queued"]  # old jobs left the window; a waiting one always counts


async def test_every_run_of_a_job_costs_gpu_time_however_it_ended(database: Database, store: JobStore, clock) -> None:
    """Runs that crashed, were handed back by a clean stop, failed or were cancelled all count, each from its start
    to its end; a run cut short by the bot itself dying is not counted (nobody saw when it ended)."""
    moderation = ModerationStore(database, clock=clock)
    service = ModerationService(moderation, base_limits=ServerLimits())
    await service.load()
    await service.update_settings(GUILD, MOD, "quota.budget", budget_gpu_minutes_per_day=2.0)
    crashing = await make_job(store)
    for seconds, end in ((40, "worker died"), (20, "clean stop"), (30, "failed")):
        await store.mark_running(crashing.id)
        clock.advance(seconds)
        if end == "failed":
            await store.mark_failed(crashing.id, "The image generator stopped 3 times ...")
        else:
            await store.requeue(crashing.id, counts_as_attempt=end == "worker died")
    failed = await store.require(crashing.id)
    assert (failed.state, failed.gpu_seconds, failed.gpu_spent_at) == ("failed", 90.0, clock())

    cancelled = await make_job(store, user=BOB)
    await store.mark_running(cancelled.id)
    clock.advance(15)
    assert (await store.mark_cancelled(cancelled.id)).gpu_seconds == 15.0
    lost = await make_job(store, user=BOB)
    await store.mark_running(lost.id)
    clock.advance(600)
    [recovered] = await store.recover_after_restart(max_attempts=3)
    assert (recovered.id, recovered.state, recovered.gpu_seconds) == (lost.id, "queued", 0.0)

    now = clock()
    events = {(e.user_id, e.state): e for e in await moderation.usage_events(GUILD, since=now - DAY, now=now)}
    # The failed job gives Alice her job back, not the server its GPU time.
    assert (events[ALICE, "failed"].counts_as_job, events[ALICE, "failed"].gpu_seconds) == (False, 90.0)
    assert events[BOB, "cancelled"].gpu_seconds == 15.0 and events[BOB, "queued"].gpu_seconds == 0.0
    status = await service.quota_status(GUILD, BOB, ())
    assert (status.server_gpu.used, status.day) == (105 / 60, None)
    assert refusal(status) is None
    await store.mark_running(lost.id)
    clock.advance(15)  # the run going on counts up to now: 2 minutes in all
    assert "This server has used its whole budget (2 of 2 GPU minutes" in refusal(await service.quota_status(GUILD, BOB, ()))


async def test_a_job_a_moderator_cancelled_is_given_back(database: Database, store: JobStore, clock) -> None:
    moderation = ModerationStore(database, clock=clock)
    service = ModerationService(moderation, base_limits=ServerLimits())
    await service.load()
    await service.update_settings(GUILD, MOD, "quota.rules", quota_per_day=1)
    job = await make_job(store)
    running = await store.mark_running(job.id)
    clock.advance(20)
    await store.mark_cancelled(job.id)

    assert (await service.quota_status(GUILD, ALICE, ())).day.used == 1  # her own cancel after starting counts
    await service.record_job_action(running, MOD, "cancel", {"state": "cancelled"})

    status = await service.quota_status(GUILD, ALICE, ())
    assert status.day.used == 0 and status.server_gpu is None
    [event] = await moderation.usage_events(GUILD, since=clock() - DAY, now=clock())
    assert not event.counts_as_job and event.gpu_seconds == 20.0  # the GPU still did the work
    [entry] = [a for a in await moderation.actions(GUILD) if a.action == "job.cancel"]
    assert entry.before == {"state": "running"} and entry.target == f"job {job.id} of u1 (1)"


async def test_settings_overrides_words_and_blocks_survive_a_reopen(db_path, clock) -> None:
    async with Database.open(db_path) as database:
        service = ModerationService(ModerationStore(database, clock=clock), base_limits=ServerLimits())
        await service.load()
        await service.update_settings(GUILD, MOD, "queue.pause", paused=True, quota_per_day=5)
        await service.set_override(GUILD, MOD, kind="role", target_id=7, target_name="vip",
                                   override=Override("role", 7, limits={"per_day": None}))
        await service.change_words(GUILD, MOD, add=["Gore", "blood*"])
        await service.block(GUILD, MOD, BOB, "bob", "spam")
        await service.set_channel(GUILD, MOD, 123, True)

    async with Database.open(db_path) as database:
        queue = FairQueue()
        service = ModerationService(ModerationStore(database, clock=clock), base_limits=ServerLimits(), queue=queue)
        await service.load()
        assert queue.is_paused(GUILD) and not queue.is_paused(OTHER_GUILD)
        assert service.settings(GUILD).rules.per_day == 5
        assert service.overrides(GUILD) == [Override("role", 7, False, {"per_day": None})]
        assert service.matcher_for(GUILD).find("bloodbath") == "blood*"
        assert service.matcher_for(OTHER_GUILD).find("gore") is None
        assert service.blocked(GUILD, BOB).reason == "spam" and service.allowed_channels(GUILD) == {123}
        actions = await service.store.actions(GUILD, limit=10)
        assert [a.action for a in reversed(actions)] == [
            "queue.pause", "quota.override", "words.add", "block", "channels.allow"
        ]
        assert actions[-1].before == {"paused": False, "quota_per_day": None}
        assert actions[-1].after == {"paused": True, "quota_per_day": 5}


async def test_the_server_running_cap_holds_back_dispatch_per_server(database, clock) -> None:
    queue = FairQueue()
    service = ModerationService(ModerationStore(database, clock=clock), base_limits=ServerLimits(), queue=queue)
    await service.load()
    await service.update_settings(GUILD, MOD, "quota.rules", quota_max_running=1)
    for seq, (guild, job_id) in enumerate([(GUILD, "a1"), (GUILD, "a2"), (OTHER_GUILD, "b1")], start=1):
        queue.push(JobRef(job_id, guild, ALICE, seq))

    started = [queue.pop_next(can_run_in=service.may_start) for _ in range(3)]

    # Alice may run one job for GUILD at a time; her job in the other server is not held back.
    assert [ref.job_id if ref else None for ref in started] == ["a1", "b1", None]
    queue.finish("a1")
    assert queue.pop_next(can_run_in=service.may_start).job_id == "a2"


async def test_a_role_overrides_running_cap_holds_after_a_restart_before_the_member_is_seen_again(db_path, clock) -> None:
    async with Database.open(db_path) as database:
        service = ModerationService(ModerationStore(database, clock=clock), base_limits=ServerLimits())
        await service.load()
        await service.update_settings(GUILD, MOD, "quota.rules", quota_max_running=1)
        await service.set_override(GUILD, MOD, kind="role", target_id=7, target_name="vip",
                                   override=Override("role", 7, limits={"max_running": 2}))
        # Alice queues with the vip role: the admission check is where the bot sees her roles.
        assert await service.member_refusal(Requester(GUILD, 1, ALICE, role_ids=(7,))) is None

    async with Database.open(db_path) as database:
        queue = FairQueue()
        service = ModerationService(ModerationStore(database, clock=clock), base_limits=ServerLimits(), queue=queue)
        await service.load()
        for seq, job_id in enumerate(["a1", "a2", "a3"], start=1):
            queue.push(JobRef(job_id, GUILD, ALICE, seq))

        started = [queue.pop_next(can_run_in=service.may_start) for _ in range(3)]

    # Her role's cap of 2, known from before the restart; without it the server's rule (1) would apply.
    assert [ref.job_id if ref else None for ref in started] == ["a1", "a2", None]


async def test_members_roles_in_memory_stay_bounded_but_never_forget_a_member_with_jobs(db_path, clock) -> None:
    """Roles are kept in memory for the running cap; over a year every member who ever asked would be there. Only
    the most recently seen (up to `roles_kept`) and members with jobs in the queue stay; the database keeps all."""
    async with Database.open(db_path) as database:
        queue = FairQueue()
        service = ModerationService(ModerationStore(database, clock=clock), base_limits=ServerLimits(), queue=queue,
                                    roles_kept=3)
        await service.load()
        await service.update_settings(GUILD, MOD, "quota.rules", quota_max_running=1)
        await service.set_override(GUILD, MOD, kind="role", target_id=7, target_name="vip",
                                   override=Override("role", 7, limits={"max_running": 2}))
        # Alice (a vip) queues two jobs first; then 200 other members come and go.
        assert await service.member_refusal(Requester(GUILD, 1, ALICE, role_ids=(7,))) is None
        for seq, job_id in enumerate(["a1", "a2"], start=1):
            queue.push(JobRef(job_id, GUILD, ALICE, seq))
        for member in range(1000, 1200):
            clock.advance(1)
            assert await service.member_refusal(Requester(GUILD, 1, member, role_ids=(8,))) is None

        assert len(service._roles_seen) <= 3 + 1
        # Her role's cap of 2 still holds: her roles stayed in memory while she has jobs.
        started = [queue.pop_next(can_run_in=service.may_start) for _ in range(2)]
        assert [ref.job_id if ref else None for ref in started] == ["a1", "a2"]

    async with Database.open(db_path) as database:
        # After a restart, the rebuilt queue holds a job of alice's (seen before everyone else) and one of member 1000.
        queue = FairQueue.rebuild([JobRef("a3", GUILD, ALICE, 1), JobRef("m1", GUILD, 1000, 2)])
        service = ModerationService(ModerationStore(database, clock=clock), base_limits=ServerLimits(), queue=queue,
                                    roles_kept=3)
        await service.load()
        assert set(service._roles_seen) == {(GUILD, ALICE), (GUILD, 1000), (GUILD, 1199), (GUILD, 1198), (GUILD, 1197)}
        assert service._roles_seen[(GUILD, ALICE)] == (7,)
