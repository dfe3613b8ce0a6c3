"""The log lines' shape (bot.logs): one JSON object per line, job ids from the running task, no secrets."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import logging

import pytest

from bot.logs import (
    REDACTED,
    JsonLineFormatter,
    TextLineFormatter,
    bind_job,
    make_handler,
    unbind_job,
)

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"


@pytest.fixture
def captured():
    """A logger whose lines go, formatted as the bot writes them, into a string buffer."""
    stream = io.StringIO()
    logger = logging.getLogger("bot.test_logs")
    handler = make_handler("json", secrets=["a-plain-secret-token"], stream=stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[dict]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_each_event_is_one_json_line_with_time_level_logger_message_and_its_fields(captured):
    logger, stream = captured

    logger.info("job %s", "done", extra={"job_id": "abcd1234", "ran_seconds": 1.5})
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logger.exception("it failed")

    first, second = lines(stream)
    assert first["level"] == "INFO" and first["logger"] == "bot.test_logs" and first["message"] == "job done"
    assert first["job_id"] == "abcd1234" and first["ran_seconds"] == 1.5
    assert first["time"].endswith("Z") and "T" in first["time"]
    # The traceback stays inside the one line.
    assert second["level"] == "ERROR" and "ValueError: bad" in second["exc_info"]


async def test_lines_logged_inside_a_jobs_task_carry_its_id_and_other_tasks_do_not(captured):
    logger, stream = captured

    async def child() -> None:
        logger.info("child")

    async def job(job_id: str) -> None:
        bind_job(job_id)
        logger.info("working")
        # Tasks started from the job's task (its progress messages) inherit the id.
        await asyncio.create_task(child())

    await asyncio.gather(job("job00001"), job("job00002"))
    logger.info("not about a job")

    records = lines(stream)
    assert sorted((r["message"], r["job_id"]) for r in records if "job_id" in r) == [
        ("child", "job00001"), ("child", "job00002"), ("working", "job00001"), ("working", "job00002"),
    ]
    assert "job_id" not in records[-1]


def test_an_explicit_job_id_wins_over_the_tasks(captured):
    logger, stream = captured
    token = bind_job("outer001")
    try:
        logger.info("cancel", extra={"job_id": "other002"})
    finally:
        unbind_job(token)
    assert lines(stream)[0]["job_id"] == "other002"


def test_tokens_are_removed_from_messages_fields_and_tracebacks(captured):
    logger, stream = captured

    logger.info("configured with a-plain-secret-token")
    logger.warning("headers", extra={"authorization": f"Bot {TOKEN}"})
    try:
        raise RuntimeError(f"login failed for {TOKEN}")
    except RuntimeError:
        logger.exception("login")
    logger.debug("POST https://discord.com/api/v10/interactions/1/aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OQ/callback")
    logger.debug("PATCH https://discord.com/api/v10/webhooks/1234/aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OQ/messages/@original")

    text = stream.getvalue()
    assert "a-plain-secret-token" not in text and TOKEN not in text and "GhIjKl" not in text
    assert "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OQ/messages" not in text
    records = lines(stream)
    assert records[0]["message"] == f"configured with {REDACTED}"
    assert records[1]["authorization"] == f"Bot {REDACTED}"
    assert REDACTED in records[2]["exc_info"]
    assert records[3]["message"].endswith(f"/interactions/1/{REDACTED}/callback")
    assert records[4]["message"].endswith(f"/webhooks/1234/{REDACTED}/messages/@original")


def test_interaction_tokens_are_removed_wherever_they_appear_and_webhook_tokens_in_urls(captured):
    logger, stream = captured
    interaction_token = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OTpGVmxxT0RzX2tJbkFZZ3c-_x"

    logger.debug("received %s", {"id": "1", "token": interaction_token, "type": 2})
    logger.debug("POST https://discord.com/api/v10/interactions/99/%s/callback with None has returned 204",
                 interaction_token)
    logger.debug("POST https://discord.com/api/v10/webhooks/1234/%s", "Zm9v" * 17)

    text = stream.getvalue()
    assert interaction_token not in text and "MTIzNDU2Nzg5MDEy" not in text and "Zm9vZm9v" not in text
    records = lines(stream)
    assert records[0]["message"] == f"received {{'id': '1', 'token': '{REDACTED}', 'type': 2}}"
    assert records[1]["message"].startswith(f"POST https://discord.com/api/v10/interactions/99/{REDACTED}/callback")


def test_ordinary_text_is_left_alone(captured):
    logger, stream = captured
    message = "job abcd1234 done: 400 steps of 'a bowl of cherries, 4k, trending' in 12.5 s (seed 1234567890)"
    logger.info(message)
    assert lines(stream)[0]["message"] == message


def test_text_format_puts_fields_as_key_value_pairs_and_redacts_too():
    stream = io.StringIO()
    logger = logging.getLogger("bot.test_logs_text")
    handler = make_handler("text", secrets=["a-plain-secret-token"], stream=stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        bind_job("abcd1234")
        logger.warning("saw a-plain-secret-token", extra={"note": "two words"})
    finally:
        bind_job(None)
        logger.removeHandler(handler)
        logger.propagate = True
    line = stream.getvalue().strip()
    assert line.endswith(f'WARNING bot.test_logs_text: saw {REDACTED} note="two words" job_id=abcd1234')


@pytest.mark.parametrize("log_format, formatter", [("json", JsonLineFormatter), ("text", TextLineFormatter)])
def test_the_generation_process_writes_its_lines_with_the_bots_own_redacting_formatter(log_format, formatter):
    from bot.app import generation_backend_for
    from bot.settings import BotSettings

    (client,) = generation_backend_for(BotSettings(log_format=log_format, log_level="DEBUG")).workers()

    module_name, _, name = client.config.log_formatter.partition(":")
    assert getattr(importlib.import_module(module_name), name) is formatter
    assert client.config.log_level == "DEBUG"
