"""Pytest fixtures for running a real discord.py bot against ``FakeDiscord``.

``fake_discord``       a started FakeDiscord on a free 127.0.0.1 port, with discord.py pointed at it.
``bot_runner``         ``await bot_runner.start(bot)`` logs a bot in and waits for on_ready; bots still
                       running at teardown are closed (before the fake stops).
``discord_error_log``  collects ERROR records of the ``discord`` logger and fails the test at teardown
                       unless they were allowed with ``discord_error_log.allow(...)``: discord.py logs
                       command and view errors instead of raising them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Dict, List, Union

import discord
import discord.gateway
import discord.http
import pytest
import pytest_asyncio
import yarl

from .errors import FakeDiscordTimeout
from .server import FakeDiscord

LogMatcher = Union[str, Callable[[logging.LogRecord], bool]]


class DiscordErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: List[logging.LogRecord] = []
        self._allowed: List[Callable[[logging.LogRecord], bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def allow(self, matcher: LogMatcher) -> None:
        """Accept ERROR records whose message (with traceback) contains ``matcher``, or for which it returns True."""
        if isinstance(matcher, str):
            text = matcher
            self._allowed.append(lambda record: text in self._full_text(record))
        else:
            self._allowed.append(matcher)

    @staticmethod
    def _full_text(record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += '\n' + logging.Formatter().formatException(record.exc_info)
        return text

    def unexpected(self) -> List[logging.LogRecord]:
        return [record for record in self.records if not any(allowed(record) for allowed in self._allowed)]

    def report(self) -> str:
        return '\n\n'.join(f'[{record.name}] {self._full_text(record)}' for record in self.unexpected())


@pytest.fixture
def discord_error_log():
    handler = DiscordErrorLog()
    logger = logging.getLogger('discord')
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
    if handler.unexpected():
        pytest.fail('discord.py logged errors during the test:\n' + handler.report(), pytrace=False)


@pytest_asyncio.fixture
async def fake_discord(monkeypatch: pytest.MonkeyPatch, discord_error_log: DiscordErrorLog):
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, 'BASE', fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, 'DEFAULT_GATEWAY', yarl.URL(fake.gateway_url))
    try:
        yield fake
    finally:
        await fake.stop()
    if fake.internal_errors:
        pytest.fail('the fake Discord failed internally:\n' + '\n'.join(fake.internal_errors), pytrace=False)


class BotRunner:
    """Starts bots the way ``Client.start`` does, but returns once the bot is ready."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self._tasks: Dict[discord.Client, asyncio.Task[None]] = {}

    async def start(self, bot: discord.Client, *, timeout: float = 10.0) -> discord.Client:
        # login() runs setup_hook (where bots sync commands); connect() then runs the gateway until close().
        await bot.login(self.fake.token)
        ready = asyncio.ensure_future(bot.wait_until_ready())
        task = asyncio.create_task(bot.connect(reconnect=True), name=f'bot-{type(bot).__name__}')
        self._tasks[bot] = task
        done, _ = await asyncio.wait({ready, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if ready in done:
            return bot
        ready.cancel()
        if task.done():
            # A start that failed (e.g. a gateway close such as 4010 or 4011) is the caller's to assert on;
            # the bot is closed here so that teardown does not raise the same error again.
            del self._tasks[bot]
            await bot.close()
            error = task.exception()
            raise error or RuntimeError('the bot stopped before it was ready')
        raise FakeDiscordTimeout(f'the bot was not ready within {timeout} s')

    async def stop(self, bot: discord.Client) -> None:
        """Close the bot (as a shutdown would: gateway close 1000 ends its session) and wait for it."""
        await bot.close()
        task = self._tasks.pop(bot, None)
        if task is not None:
            await task

    async def stop_all(self) -> None:
        for bot in list(self._tasks):
            await self.stop(bot)


@pytest_asyncio.fixture
async def bot_runner(fake_discord: FakeDiscord):
    runner = BotRunner(fake_discord)
    try:
        yield runner
    finally:
        await runner.stop_all()
