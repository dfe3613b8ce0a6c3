"""Does the bot stay responsive while the real generation process computes on the same CPU?

The bot runs against the fake Discord (tests/fakediscord) with its own generation process (the real worker on the
tiny models, on the CPU), as `bigsleep-bot` starts it. The fake's gateway asks for a heartbeat every
`--heartbeat-ms`; while default `/imagine` jobs run, it records discord.py's `bot.latency` (heartbeat sent to its
acknowledgement read) after every heartbeat, discord.py's "Can't keep up" warnings, and how late the event loop
wakes a 10 ms sleeper. The bot and the fake share one event loop, so the figures are pessimistic.

    .venv/bin/python -m benchmarks.heartbeat              # one default job
    .venv/bin/python -m benchmarks.heartbeat --jobs 3

Target (issue 15): heartbeat latency under 1 s throughout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The fake Discord lives with the tests.
if str(REPO_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tests"))

import discord.gateway  # noqa: E402
import discord.http  # noqa: E402
import psutil  # noqa: E402
import yarl  # noqa: E402
from fakediscord import FakeDiscord  # noqa: E402

from benchmarks.bot_load import percentile  # noqa: E402
from bot.app import BigSleepBot  # noqa: E402
from bot.settings import BotSettings  # noqa: E402

TARGET_S = 1.0


class CountWarnings(logging.Handler):
    """Counts discord.py's "Can't keep up" warnings (the heartbeat thread found the event loop busy)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.behind: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "keep up" in record.getMessage():
            self.behind.append(record.getMessage())


async def watch(bot: BigSleepBot, latencies: list[float], lags: list[float], tick: float = 0.01) -> None:
    """Record each new heartbeat latency, and how late a 10 ms sleeper wakes."""
    last = None
    while True:
        before = time.monotonic()
        await asyncio.sleep(tick)
        lags.append(time.monotonic() - before - tick)
        latency = bot.latency
        if latency != last and latency == latency:  # a new acknowledgement (NaN before the first)
            latencies.append(latency)
            last = latency


def generation_processes() -> list[psutil.Process]:
    return [child for child in psutil.Process().children(recursive=True) if "python" in child.name().lower()]


async def measure(args: argparse.Namespace, data_dir: Path) -> bool:
    fake = FakeDiscord()
    await fake.start()
    fake.gateway.heartbeat_interval_ms = args.heartbeat_ms
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    warnings = CountWarnings()
    logging.getLogger("discord.gateway").addHandler(warnings)
    settings = BotSettings(data_dir=data_dir, models="tiny", device="cpu", log_level="WARNING",
                           worker={"sizes": (args.size,)})
    bot = BigSleepBot(settings, sync="global", guild_ready_timeout=0.01)
    connection = None
    try:
        guild = fake.add_guild("art club")
        channel = fake.add_channel(guild, "art")
        members = [fake.add_member(guild, f"painter {n}") for n in range(args.jobs)]
        await bot.login(fake.token)
        connection = asyncio.create_task(bot.connect(reconnect=True))
        await asyncio.wait_for(bot.wait_until_ready(), 30)
        started = time.monotonic()
        while not bot.dispatcher.backend_ready:
            await asyncio.sleep(0.05)
        print(f"generation process ready in {time.monotonic() - started:.1f} s", flush=True)
        for process in generation_processes():
            print(f"generation process pid {process.pid}: niceness {process.nice()}, {process.num_threads()} threads "
                  f"(the bot's niceness {psutil.Process().nice()}; {psutil.cpu_count()} cores)", flush=True)

        latencies: list[float] = []
        lags: list[float] = []
        watcher = asyncio.create_task(watch(bot, latencies, lags))
        began = time.monotonic()
        for n, member in enumerate(members):
            options = {"steps": args.steps} if args.steps else {}
            await fake.invoke_command(channel, member, "imagine", prompt=f"a lighthouse in a storm, number {n}", **options)
        await asyncio.sleep(1)
        while len(bot.dispatcher.queue) or bot.dispatcher.in_flight_progress():
            await asyncio.sleep(0.25)
        elapsed = time.monotonic() - began
        watcher.cancel()
    finally:
        await bot.close()
        if connection is not None:
            await asyncio.gather(connection, return_exceptions=True)
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved
        logging.getLogger("discord.gateway").removeHandler(warnings)
        await fake.stop()

    worst = max(latencies, default=float("nan"))
    print(f"{args.jobs} job(s) at {args.size} px ran {elapsed:.1f} s; {len(latencies)} heartbeats "
          f"(every {args.heartbeat_ms} ms)")
    print(f"heartbeat latency (bot.latency): median {1000 * percentile(latencies, 0.5):.0f} ms, "
          f"p99 {1000 * percentile(latencies, 0.99):.0f} ms, max {1000 * worst:.0f} ms")
    print(f"event loop lag (10 ms sleeper): p99 {1000 * percentile(lags, 0.99):.0f} ms, max {1000 * max(lags, default=0):.0f} ms")
    print(f"\"Can't keep up\" warnings: {len(warnings.behind)}")
    ok = bool(latencies) and worst < TARGET_S and not warnings.behind
    print(f"verdict: {'OK' if ok else 'TOO SLOW'} (every heartbeat acknowledged within {TARGET_S:g} s)")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1, help="default /imagine jobs sent at once")
    parser.add_argument("--size", type=int, default=256, choices=(128, 256, 512))
    parser.add_argument("--steps", type=int, default=0, help="steps per job (0: the default)")
    parser.add_argument("--heartbeat-ms", type=int, default=500, help="the gateway's heartbeat interval")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as data_dir:
        return 0 if asyncio.run(measure(args, Path(data_dir))) else 1


if __name__ == "__main__":
    sys.exit(main())
