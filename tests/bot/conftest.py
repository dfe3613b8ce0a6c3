"""Fixtures for the bot's tests: the database and a job store on a fake clock, and the real bot (bot.app.BigSleepBot) against the
fake Discord: `make_bot(backend=None, **settings)` builds a bot on this test's data dir; `start_bot(...)` also
logs it in and waits until it is ready. The backend is the simulated worker unless a test passes another (the
real GenerationClient for the end-to-end tests that need it)."""

from __future__ import annotations

import logging
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fakediscord import FakeDiscord, Permission

from bot.app import BigSleepBot
from bot.database import Database
from bot.jobs.ports import GenerationBackend
from bot.jobs.simulated import SimulatedGenerationClient
from bot.jobs.store import JobStore
from bot.settings import BotSettings, ProgressSettings, WorkerSettings


class FakeClock:
    """A clock the test moves by hand, so timestamps are exact."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jobs.sqlite3"


@pytest.fixture
async def database(db_path: Path) -> AsyncIterator[Database]:
    async with Database.open(db_path) as opened:
        yield opened


@pytest.fixture
def store(database: Database, clock: FakeClock) -> JobStore:
    return JobStore(database, clock=clock)


# Fast enough for tests, slow enough that spacing between edits is measurable.
TEST_EDIT_INTERVAL = 0.25


@pytest.fixture(autouse=True)
def bot_errors_fail_the_test(request):
    """In tests that run a bot against the fake Discord, an ERROR from the bot's own loggers fails the test, as
    discord.py's do (the `discord_error_log` fixture)."""
    if "fake_discord" not in request.fixturenames:
        yield
        return
    discord_error_log = request.getfixturevalue("discord_error_log")
    logger = logging.getLogger("bot")
    logger.addHandler(discord_error_log)
    try:
        yield
    finally:
        logger.removeHandler(discord_error_log)


def test_settings(data_dir: Path, **overrides: Any) -> BotSettings:
    worker = {"max_batch_size": 2, "sizes": (128, 256), "snapshots_per_job": 3, "stop_timeout_seconds": 10.0,
              **overrides.pop("worker", {})}
    progress = {"edit_interval_seconds": TEST_EDIT_INTERVAL, "channel_edits_per_window": 20,
                "channel_window_seconds": 1.0, **overrides.pop("progress", {})}
    limits = {"default_size": 128, "default_steps": 8, **overrides.pop("limits", {})}
    return BotSettings(
        data_dir=data_dir,
        models="tiny",
        device="cpu",
        worker=WorkerSettings(**worker),
        progress=ProgressSettings(**progress),
        limits=limits,
        **overrides,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def simulated() -> SimulatedGenerationClient:
    return SimulatedGenerationClient(seconds_per_job=0.2, progress_events=3)


@pytest.fixture
def make_bot(data_dir: Path, simulated: SimulatedGenerationClient) -> Callable[..., BigSleepBot]:
    def make(backend: GenerationBackend | None = None, **overrides: Any) -> BigSleepBot:
        chosen = backend if backend is not None else simulated
        return BigSleepBot(
            test_settings(data_dir, **overrides),
            backend_factory=lambda settings: chosen,
            sync="global",
            guild_ready_timeout=0.01,
        )

    return make


@pytest.fixture
def start_bot(bot_runner, make_bot) -> Callable[..., Awaitable[BigSleepBot]]:
    async def start(backend: GenerationBackend | None = None, **overrides: Any) -> BigSleepBot:
        return await bot_runner.start(make_bot(backend, **overrides))

    return start


@pytest.fixture
def world(fake_discord: FakeDiscord) -> types.SimpleNamespace:
    """Three servers, each with an #art channel and members; one moderator."""
    guilds = [fake_discord.add_guild(name) for name in ("Dreamers", "Painters", "Quiet")]
    channels = [fake_discord.add_channel(guild, "art") for guild in guilds]
    members = {
        "alice": fake_discord.add_member(guilds[0], "alice"),
        "bob": fake_discord.add_member(guilds[0], "bob"),
        "carol": fake_discord.add_member(guilds[1], "carol"),
        "dave": fake_discord.add_member(guilds[2], "dave"),
        "mod": fake_discord.add_member(guilds[0], "mod", permissions=Permission.MANAGE_MESSAGES),
    }
    return types.SimpleNamespace(guilds=guilds, channels=channels, channel=channels[0], **members)
