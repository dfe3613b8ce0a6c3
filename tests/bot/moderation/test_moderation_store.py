"""The moderation store and service on a real SQLite file: what counts against quotas, what survives a
reopen, and the per-server running cap the dispatcher asks about."""

from __future__ import annotations

from bot.database import Database
from bot.jobs.admission import Requester, ServerLimits
from bot.jobs.fair_queue import FairQueue, JobRef
from bot.jobs.ports import Actor
from bot.jobs.store import JobStore
from bot.moderation.quotas import DAY, Override
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
    assert gpu == {"done": 25.0, "queued": 0.0, "cancelled": 10.0}
    assert waiting.id  # still queued, counted above
    clock.advance(DAY + 60)
    later = await moderation.usage_events(GUILD, since=clock() - DAY, now=clock(), user_id=ALICE)
    assert [e.state for e in later] == ["queued"]  # old jobs left the window; a waiting one always counts


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
