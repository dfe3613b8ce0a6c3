"""The bot with `discord.shards` set, end to end against the fake Discord's sharded gateway: both shards connect at
once where max_concurrency allows it and 5 s apart where it does not, /imagine and buttons work in servers of
either shard, and /healthz and /metrics report every shard.

The conftest's world has three servers; with 2 shards the first and third are on shard 0, the second on shard 1."""

from __future__ import annotations

import asyncio
import threading

import discord.gateway
import pytest
from e2e_helpers import imagine, wait_for_result
from test_health_metrics import healthz, metrics

from bot.app import ShardedBigSleepBot
from bot.sharding import IDENTIFY_INTERVAL_SECONDS, IdentifyPacer

HEALTH = {"enabled": True, "port": 0}
# Well under discord.py's own 5 s wait before every IDENTIFY but the first: a bot that ready this fast did not pause.
READY_WITHOUT_PAUSES = 3.0


def identified_shards(fake) -> list[tuple[int, int]]:
    return sorted(record.shard for record in fake.gateway_records if record.kind == "identify")


async def test_two_shards_connect_at_once_and_each_gets_its_own_servers(fake_discord, world, bot_runner, make_bot):
    bot = await bot_runner.start(make_bot(discord={"shards": 2}), timeout=READY_WITHOUT_PAUSES)

    assert isinstance(bot, ShardedBigSleepBot) and bot.shard_count == 2 and bot.is_ready()
    assert identified_shards(fake_discord) == [(0, 2), (1, 2)]
    assert all(session.connected for session in fake_discord.gateway_sessions())
    assert [fake_discord.shard_of(guild, 2) for guild in world.guilds] == [0, 1, 0]
    assert [bot.get_guild(guild.id).shard_id for guild in world.guilds] == [0, 1, 0]
    assert sorted(bot.shards) == [0, 1]


async def test_imagine_and_buttons_work_in_the_servers_of_either_shard(fake_discord, world, bot_runner, make_bot):
    bot = await bot_runner.start(make_bot(discord={"shards": 2}), timeout=READY_WITHOUT_PAUSES)
    servers = [(world.guilds[0], world.channels[0], world.alice), (world.guilds[1], world.channels[1], world.carol)]

    results = {}
    for guild, channel, member in servers:
        response, job_id = await imagine(fake_discord, channel, member, f"a lighthouse for {member.user.name}")
        assert job_id is not None, response.content
        results[guild.id] = (job_id, await wait_for_result(fake_discord, channel, job_id))

    # A button on the result in shard 1's server: its interaction arrives on shard 1, its answer goes out by REST.
    guild, channel, member = servers[1]
    job_id, result = results[guild.id]
    reroll = await fake_discord.click_button(member, result, f"bs:reroll:{job_id}")
    reroll_id = (await reroll.wait_response()).content.split("`")[1]
    await wait_for_result(fake_discord, channel, reroll_id)

    assert (await bot.store.get(reroll_id)).parent_job_id == job_id
    for guild, _, _ in servers:
        delivered = fake_discord.dispatches("INTERACTION_CREATE", guild=guild)
        assert delivered and {record.shard_id for record in delivered} == {fake_discord.shard_of(guild, 2)}
    assert len(fake_discord.dispatches("INTERACTION_CREATE", guild=world.guilds[1])) == 2  # /imagine, then the click


async def test_healthz_and_metrics_report_every_shard_and_a_lost_one(fake_discord, world, bot_runner, make_bot):
    bot = await bot_runner.start(make_bot(discord={"shards": 2}, health=HEALTH), timeout=READY_WITHOUT_PAUSES)

    status, body = await healthz(bot)
    samples = await metrics(bot)

    assert status == 200 and body["discord"]["ok"] and body["discord"]["connected"], body
    assert [(shard["id"], shard["connected"]) for shard in body["discord"]["shards"]] == [(0, True), (1, True)]
    assert samples[("bigsleep_discord_shard_up", (("shard", "0"),))] == 1
    assert samples[("bigsleep_discord_shard_up", (("shard", "1"),))] == 1

    # One shard down is enough to be unhealthy, and the body says which.
    await bot.get_shard(1).disconnect()
    status, body = await healthz(bot)
    samples = await metrics(bot)

    assert status == 503 and not body["discord"]["ok"] and body["discord"]["connected"] is False, body
    assert [(shard["id"], shard["connected"]) for shard in body["discord"]["shards"]] == [(0, True), (1, False)]
    assert body["worker"]["ok"] and body["database"]["ok"]
    assert samples[("bigsleep_discord_shard_up", (("shard", "1"),))] == 0


async def test_an_unsharded_bot_reports_its_one_connection_as_before(fake_discord, world, start_bot):
    bot = await start_bot(health=HEALTH)

    status, body = await healthz(bot)
    samples = await metrics(bot)

    assert not isinstance(bot, ShardedBigSleepBot) and bot.shard_count is None
    assert identified_shards(fake_discord) == [None]  # IDENTIFY without a shard, as before sharding existed
    assert status == 200 and set(body["discord"]) <= {"ok", "connected", "latency_seconds"}, body
    assert not any(name.startswith("bigsleep_discord_shard_") for name, _ in samples)


async def test_auto_uses_the_shard_count_discord_recommends(fake_discord, world, bot_runner, make_bot):
    fake_discord.recommended_shards = 2

    bot = await bot_runner.start(make_bot(discord={"shards": "auto"}), timeout=READY_WITHOUT_PAUSES)

    assert bot.shard_count == 2 and identified_shards(fake_discord) == [(0, 2), (1, 2)]
    assert fake_discord.requests_matching("GET", "/gateway/bot")
    response, job_id = await imagine(fake_discord, world.channels[1], world.carol, "an owl at dusk")
    await wait_for_result(fake_discord, world.channels[1], job_id)
    assert [record.shard_id for record in fake_discord.dispatches("INTERACTION_CREATE", guild=world.guilds[1])] == [1]


@pytest.mark.parametrize("max_concurrency, waits", [(1, 1), (2, 0), (16, 0)])
async def test_shards_identify_as_max_concurrency_allows(fake_discord, world, bot_runner, make_bot, max_concurrency, waits):
    """The fake refuses (op 9) a second IDENTIFY within 5 s in one bucket (shard_id % max_concurrency). The pacer
    runs on the fake's clock, and its waits move that clock instead of taking real seconds: a bot that did not
    wait, or waited too little, would get op 9."""
    fake_discord.max_concurrency = max_concurrency
    fake_discord.enforce_identify_concurrency = True
    slept: list[float] = []

    async def advance_fake_clock(seconds: float) -> None:
        slept.append(seconds)
        fake_discord.clock.advance(seconds)

    bot = make_bot(discord={"shards": 2})
    bot.identify_pacer = IdentifyPacer(clock=fake_discord.clock.monotonic, sleep=advance_fake_clock)
    await bot_runner.start(bot, timeout=READY_WITHOUT_PAUSES)

    kinds = [record.kind for record in fake_discord.gateway_records]
    assert "invalid_session" not in kinds and kinds.count("identify") == 2
    assert identified_shards(fake_discord) == [(0, 2), (1, 2)]
    assert len(slept) == waits and all(IDENTIFY_INTERVAL_SECONDS - 0.5 < seconds <= IDENTIFY_INTERVAL_SECONDS for seconds in slept)


async def test_a_stop_while_a_shard_waits_for_its_turn_ends_the_bot(fake_discord, world, make_bot, discord_error_log):
    """discord.py retries a shard whose IDENTIFY failed (the stop closed its socket) every 5 s, forever unless the
    bot stops it: this test takes those 5 s once."""
    discord_error_log.allow("Failed to connect for shard_id: 1")
    fake_discord.max_concurrency = 1
    waiting, stopped = asyncio.Event(), asyncio.Event()

    async def wait_until_stopped(seconds: float) -> None:
        waiting.set()
        await stopped.wait()

    bot = make_bot(discord={"shards": 2})
    bot.identify_pacer = IdentifyPacer(sleep=wait_until_stopped)
    await bot.login(fake_discord.token)
    connecting = asyncio.create_task(bot.connect())
    await asyncio.wait_for(waiting.wait(), 5)  # shard 0 is connected; shard 1 waits for its turn

    await bot.close()
    stopped.set()

    await asyncio.wait_for(connecting, 10)
    assert identified_shards(fake_discord) == [(0, 2)]

    # discord.py never closes the socket whose IDENTIFY failed, so that socket's heartbeat thread runs on; 41 s
    # later it would fire into a closed event loop during some other test. The process ends here in real life.
    for thread in threading.enumerate():
        if isinstance(thread, discord.gateway.KeepAliveHandler) and thread.shard_id == 1:
            thread.stop()
