"""/healthz and /metrics through a real HTTP client while the bot runs against the fake Discord, and the bot's
log lines during a whole /imagine (JSON, job ids, no token)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sqlite3
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from e2e_helpers import imagine, stop_gracefully, wait_for_result
from fakediscord import FakeDiscord
from prometheus_client.parser import text_string_to_metric_families
from test_entry_point import REPO_ROOT, bot_environment

from bot import health
from bot.jobs.simulated import SimulatedGenerationClient
from bot.logs import CHATTY_LOGGERS, configure_logging
from generator.wire import WorkerHealth

HEALTH = {"enabled": True, "port": 0}
# The labels of the simulated worker's samples (bot.metrics.WORKER_LABELS).
SIMULATED = (("device", "simulated"), ("node", "simulated"), ("worker", "simulated"))


async def get(bot, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{bot.health.port}{path}") as response:
        return response.status, await response.text()


async def healthz(bot) -> tuple[int, dict]:
    status, text = await get(bot, "/healthz")
    return status, json.loads(text)


async def metrics(bot) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    status, text = await get(bot, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# ---- /healthz ----------------------------------------------------------------------------------------------


async def test_healthz_is_ok_when_discord_the_worker_and_the_database_are(fake_discord, world, start_bot):
    bot = await start_bot(health=HEALTH)
    assert bot.health.port and bot.health.port != 0

    status, body = await healthz(bot)

    assert status == 200, body
    assert body["status"] == "ok"
    assert body["discord"]["ok"] and body["discord"]["connected"]
    assert body["worker"]["ok"] and body["worker"]["alive"] and body["worker"]["restarts"] == 0
    assert body["worker"]["backend"] == "local" and "problem" not in body["worker"]
    assert [(worker["id"], worker["state"], worker["jobs"]) for worker in body["worker"]["workers"]] == [("simulated", "ready", [])]
    assert body["database"] == {"ok": True, "writable": True}


async def test_healthz_says_starting_while_the_first_worker_loads_its_models(fake_discord, world, start_bot):
    loaded = asyncio.Event()
    bot = await start_bot(SimulatedGenerationClient(seconds_per_job=0.01, loaded=loaded), health=HEALTH)

    status, body = await healthz(bot)
    assert status == 503 and body["status"] == "starting", body
    assert body["worker"]["state"] == "starting" and body["discord"]["ok"] and body["database"]["ok"]

    loaded.set()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "once it has loaded")
    await wait_for_result(fake_discord, world.channel, job_id)
    status, body = await healthz(bot)
    assert status == 200 and body["status"] == "ok", body


async def test_healthz_is_503_naming_the_worker_when_the_worker_is_down(fake_discord, world, start_bot, simulated):
    bot = await start_bot(health=HEALTH)
    await simulated.stop()

    status, body = await healthz(bot)

    assert status == 503
    assert body["status"] == "unhealthy" and not body["worker"]["ok"] and not body["worker"]["alive"]
    assert body["discord"]["ok"] and body["database"]["ok"]


async def test_while_the_worker_takes_no_jobs_healthz_says_why_and_jobs_wait_for_it(fake_discord, world, start_bot, simulated):
    bot = await start_bot(health=HEALTH)
    simulated.take_down("the generation process died: it was killed by SIGKILL")

    _, job_id = await imagine(fake_discord, world.channel, world.alice, "patiently waiting")
    status, body = await healthz(bot)
    # No event says "the dispatcher chose not to hand it out": give a wrongly handed-out job its run time.
    await asyncio.sleep(simulated.seconds_per_job)

    assert status == 503 and body["status"] == "unhealthy", body
    assert body["worker"] == {
        "ok": False, "backend": "local", "state": "restarting", "alive": False, "accepting_jobs": False, "restarts": 0,
        "workers": [{
            "id": "simulated", "node": "simulated", "state": "restarting", "alive": False, "accepting_jobs": False,
            "restarts": 0, "sizes": [], "jobs": [], "device": "simulated",
            "failure": "the generation process died: it was killed by SIGKILL",
        }],
    }
    assert (await metrics(bot))[("bigsleep_worker_up", SIMULATED)] == 0
    job = await bot.store.get(job_id)
    assert (job.state, job.attempts, simulated.requests) == ("queued", 0, [])

    simulated.bring_up()
    await wait_for_result(fake_discord, world.channel, job_id)
    status, body = await healthz(bot)
    assert status == 200 and body["worker"]["restarts"] == 1 and "failure" not in body["worker"]["workers"][0], body
    assert (await metrics(bot))[("bigsleep_worker_restarts_total", SIMULATED)] == 1
    assert (await bot.store.get(job_id)).attempts == 1


async def test_healthz_is_503_while_the_database_cannot_be_written_and_recovers(fake_discord, world, start_bot):
    bot = await start_bot(health=HEALTH)
    async with bot.database.reading() as connection:
        await connection.execute("PRAGMA query_only = ON")

    status, body = await healthz(bot)

    assert status == 503 and not body["database"]["ok"]
    assert "readonly" in body["database"]["error"], body
    assert body["worker"]["ok"] and body["discord"]["ok"]

    async with bot.database.reading() as connection:
        await connection.execute("PRAGMA query_only = OFF")
    status, body = await healthz(bot)
    assert status == 200, body
    # The probe left no transaction open: the bot still writes.
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "after the check")
    await wait_for_result(fake_discord, world.channel, job_id)


async def test_a_database_locked_by_another_process_fails_the_probe_in_time_and_blocks_nothing(
    fake_discord, world, start_bot, monkeypatch
):
    probe_timeout = 1.0
    monkeypatch.setattr(health, "DATABASE_CHECK_TIMEOUT", probe_timeout)
    bot = await start_bot(health=HEALTH)
    other = sqlite3.connect(bot.settings.database_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        asked = time.monotonic()
        status, body = await healthz(bot)
        assert time.monotonic() - asked < probe_timeout + 0.5
        assert status == 503 and not body["database"]["ok"], body
        # The probe gave the bot's connection back when it answered: the bot's own reads go on at once.
        await asyncio.wait_for(bot.store.get("nosuchjb"), 0.5)
    finally:
        other.rollback()
        other.close()
    # And once the other process lets go, the bot writes at once, and the probe says so.
    _, job_id = await asyncio.wait_for(imagine(fake_discord, world.channel, world.alice, "after the lock"), 5)
    await wait_for_result(fake_discord, world.channel, job_id)
    status, body = await healthz(bot)
    assert status == 200 and body["database"] == {"ok": True, "writable": True}


async def test_healthz_says_discord_is_down_while_the_gateway_reconnects(fake_discord, world, start_bot, discord_error_log):
    discord_error_log.allow("Attempting a reconnect")
    bot = await start_bot(health=HEALTH)
    checkpoint = fake_discord.checkpoint()
    await fake_discord.drop_gateway_connections()
    await fake_discord.wait_for(lambda: not bot.ws.open, timeout=5)

    # discord.py waits a moment before it reconnects: the check sees the gap.
    down = bot.health.discord_check()
    await fake_discord.wait_for_gateway("resumed", after=checkpoint, timeout=10)
    await fake_discord.wait_for(lambda: bot.ws.open, timeout=5)
    status, body = await healthz(bot)

    assert not down.ok and down.details["connected"] is False
    assert status == 200 and body["discord"]["connected"], body


async def test_the_endpoint_is_off_unless_enabled(fake_discord, world, start_bot):
    bot = await start_bot()
    assert bot.health is None


# ---- /metrics ----------------------------------------------------------------------------------------------


async def test_metrics_show_queue_length_per_server_then_job_times_and_steps(fake_discord, world, start_bot, simulated):
    bot = await start_bot(health=HEALTH, worker={"max_batch_size": 1})
    simulated.hold()
    _, first = await imagine(fake_discord, world.channels[0], world.alice, "running")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)
    waiting = [
        (world.channels[0], world.alice, "a2"),
        (world.channels[0], world.bob, "b1"),
        (world.channels[1], world.carol, "c1"),
    ]
    job_ids = [first]
    for channel, member, prompt in waiting:
        response, job_id = await imagine(fake_discord, channel, member, prompt)
        assert job_id, response.content
        job_ids.append(job_id)
    dreamers, painters = (str(guild.id) for guild in world.guilds[:2])

    during = await metrics(bot)

    assert during[("bigsleep_queue_length", (("guild", dreamers),))] == 2
    assert during[("bigsleep_queue_length", (("guild", painters),))] == 1
    assert not any(name == "bigsleep_queue_length" and labels[0][1] == str(world.guilds[2].id) for name, labels in during)
    assert during[("bigsleep_jobs_running", ())] == 1
    assert during[("bigsleep_jobs_queued_total", ())] == 4
    assert during[("bigsleep_worker_up", SIMULATED)] == 1

    simulated.release()
    for job_id, channel in zip(job_ids, [world.channels[0], world.channels[0], world.channels[0], world.channels[1]]):
        await wait_for_result(fake_discord, channel, job_id)
    after = await metrics(bot)

    assert not any(name == "bigsleep_queue_length" for name, _ in after)
    assert after[("bigsleep_jobs_running", ())] == 0
    assert after[("bigsleep_job_wait_seconds_count", ())] == 4
    assert after[("bigsleep_job_run_seconds_count", ())] == 4
    assert after[("bigsleep_job_run_seconds_sum", ())] > 0
    assert after[("bigsleep_jobs_finished_total", (("outcome", "done"),))] == 4
    steps = sum(job.steps for job in [await bot.store.get(job_id) for job_id in job_ids])
    assert after[("bigsleep_steps_total", SIMULATED)] == steps
    assert after[("bigsleep_steps_per_second", ())] == pytest.approx(steps / 60)
    assert after[("bigsleep_worker_restarts_total", SIMULATED)] == 0


async def test_metrics_count_discord_api_errors_by_status_and_code(fake_discord: FakeDiscord, world, start_bot, simulated):
    bot = await start_bot(health=HEALTH)
    simulated.hold()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a message that will vanish")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)
    progress = await fake_discord.wait_for_message(world.channel, lambda m: "vanish" in m.content)
    await bot.progress.idle()
    # A deleted progress message answers the next edit with 404/10008; the next post meets one 429 first.
    fake_discord.delete_message(world.channel, progress)
    fake_discord.rate_limit_next(f"/channels/{world.channel.id}/messages", retry_after=0.05, method="POST")

    simulated.release()
    await wait_for_result(fake_discord, world.channel, job_id)
    samples = await metrics(bot)

    assert samples[("bigsleep_discord_api_errors_total", (("code", "10008"), ("status", "404")))] == 1
    assert samples[("bigsleep_discord_api_errors_total", (("code", "0"), ("status", "429")))] == 1


async def test_each_bot_has_its_own_registry(fake_discord, world, make_bot):
    first, second = make_bot(), make_bot()
    first.metrics.steps_done(5, WorkerHealth("ready", True, worker_id="local-1", node="gpu-box", device="cuda:1"))
    assert b'bigsleep_steps_total{device="cuda:1",node="gpu-box",worker="local-1"} 5.0' in first.metrics.render()
    assert b"bigsleep_steps_total{" not in second.metrics.render()


# ---- logs --------------------------------------------------------------------------------------------------


@contextmanager
def logging_as_the_entry_point_sets_it_up(level: str, **options):
    """bot.logs.configure_logging, as `python -m bot` calls it, undone afterwards (pytest's handlers come back)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, sys.excepthook, {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    configure_logging(level, "json", **options)
    try:
        yield
    finally:
        root.handlers[:], level_before, sys.excepthook, chatty = saved
        root.setLevel(level_before)
        for name, chatty_level in chatty.items():
            logging.getLogger(name).setLevel(chatty_level)


async def test_log_lines_over_a_whole_imagine_are_json_name_the_job_and_never_hold_the_token(fake_discord, world, start_bot):
    stream = io.StringIO()
    with logging_as_the_entry_point_sets_it_up("DEBUG", secrets=[fake_discord.token], stream=stream):
        bot = await start_bot()
        _, job_id = await imagine(fake_discord, world.channel, world.alice, "a bowl of cherries")
        await wait_for_result(fake_discord, world.channel, job_id)
        await bot.progress.idle()

    text = stream.getvalue()
    assert fake_discord.token not in text
    # discord.py logs each interaction's callback URL at DEBUG, with the interaction's token in it.
    interaction_tokens = [interaction.token for interaction in fake_discord.interactions.values()]
    assert interaction_tokens and not any(token in text for token in interaction_tokens)
    assert "/interactions/" in text
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) > 20  # discord.py's DEBUG lines included
    # discord.py logs each request it makes with the bot's Authorization header unseen; interaction tokens in
    # URLs are redacted.
    job_lines = [record for record in records if job_id in record["message"] or record.get("job_id") == job_id]
    assert {record["message"] for record in job_lines} >= {"job queued", "job started", "job done"}
    assert all(record.get("job_id") == job_id for record in job_lines), [r for r in job_lines if "job_id" not in r]
    done = next(record for record in job_lines if record["message"] == "job done")
    assert done["outcome"] == "done" and done["ran_seconds"] > 0


# ---- the real entry point ----------------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_the_entry_point_serves_health_and_metrics_and_logs_json_without_the_token(fake_discord, world, tmp_path):
    """`python -m bot` with the real (tiny) generation worker, DEBUG logs, and the endpoint on a free port."""
    env = bot_environment(
        fake_discord, tmp_path / "data",
        BIGSLEEP_LOG_LEVEL="DEBUG", BIGSLEEP_HEALTH__ENABLED="true", BIGSLEEP_HEALTH__PORT="0",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--sync", cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    new_line = asyncio.Condition()

    async def read_output() -> None:
        async for raw in process.stdout:
            async with new_line:
                lines.append(raw.decode(errors="replace").rstrip("\n"))
                new_line.notify_all()

    async def line_saying(text: str) -> dict:
        async with new_line:
            await asyncio.wait_for(new_line.wait_for(lambda: any(text in line for line in lines)), 120)
            return json.loads(next(line for line in lines if text in line))

    reader = asyncio.create_task(read_output())
    try:
        base = f"http://127.0.0.1:{(await line_saying('/healthz and /metrics'))['port']}"
        async with aiohttp.ClientSession() as session:
            # The worker loads its (tiny) models in the background; /healthz says 503 until then.
            await line_saying("generation worker ready")
            async with session.get(f"{base}/healthz") as response:
                body = await response.json()
                assert response.status == 200, body
            (worker,) = body["worker"]["workers"]
            assert body["worker"]["state"] == "ready" and worker["pid"] != process.pid
            assert (worker["id"], worker["node"], worker["device"]) == ("local", socket.gethostname(), "cpu")
            assert "compiled" not in worker  # worker.compile "auto" compiles on CUDA only
            # The generation process never holds the token, not even in its environment.
            worker_environment = Path(f"/proc/{worker['pid']}/environ").read_bytes()
            assert fake_discord.token.encode() not in worker_environment and b"BIGSLEEP_" in worker_environment
            await fake_discord.wait_for(lambda: any(c["name"] == "imagine" for c in fake_discord.commands()), timeout=60)
            _, job_id = await imagine(fake_discord, world.channel, world.alice, "a bowl of cherries", steps=2)
            assert job_id
            await wait_for_result(fake_discord, world.channel, job_id, timeout=180)
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("bigsleep_jobs_finished_total", (("outcome", "done"),))] == 1
        local = (("device", "cpu"), ("node", socket.gethostname()), ("worker", "local"))
        assert samples[("bigsleep_steps_total", local)] == 2
        assert samples[("bigsleep_worker_up", local)] == 1
    finally:
        code = await stop_gracefully(process)
        await reader

    output = "\n".join(lines)
    assert code == 0, output
    assert fake_discord.token not in output
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    # The generation process writes JSON lines too.
    assert any(record["logger"].startswith("bigsleep.worker") for record in records)
    job_lines = [record for record in records if record.get("job_id") == job_id or job_id in record["message"]]
    assert {"job queued", "job started", "job done"} <= {record["message"] for record in job_lines}
    # Every line about the job names it in a field, the worker's lines included.
    assert all(record.get("job_id") == job_id for record in job_lines), [r for r in job_lines if r.get("job_id") != job_id]
    assert any(record["logger"].startswith("bigsleep.worker") for record in job_lines)


@pytest.mark.timeout(300)
async def test_a_taken_health_port_stops_the_start_with_one_line_saying_what_to_change(fake_discord, world, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = bot_environment(fake_discord, tmp_path / "data", BIGSLEEP_HEALTH__ENABLED="true",
                              BIGSLEEP_HEALTH__PORT=str(port), BIGSLEEP_LOG_LEVEL="ERROR")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=REPO_ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 120)
        finally:
            await stop_gracefully(process)

    assert process.returncode == 1, stderr
    lines = stderr.decode().strip().splitlines()
    assert lines[-1].startswith(f"bigsleep-bot: cannot serve /healthz on 127.0.0.1:{port}"), lines
    # The port is bound before the generation process starts: nothing else is started, nor killed.
    assert lines == [lines[-1]] and "BIGSLEEP_HEALTH__PORT" in lines[-1] and "Traceback" not in stderr.decode()


def test_a_worker_whose_step_is_compiled_says_so_in_healthz():
    from bot.health import _worker_details
    from generator.wire import WorkerConfig, WorkerReady, health_as_reported

    ready = WorkerReady(pid=1, models_kind="full", device="cuda:0", sizes=(256,), clip_dtype="float16", compiled=True)
    health = health_as_reported(WorkerConfig(models_kind="full"), ready, None, None, state="ready", alive=True, accepting_jobs=True)
    assert _worker_details(health)["compiled"] is True
    assert "compiled" not in _worker_details(health_as_reported(WorkerConfig(models_kind="full"), None, None, None,
                                                                state="starting", alive=True, accepting_jobs=False))
