"""`bigsleep-bot` / `python -m bot`: run the Discord bot.

    DISCORD_TOKEN=... bigsleep-bot                 # run
    bigsleep-bot --sync-guild 123456789012345678   # also register the commands in one server (instant)
    bigsleep-bot --sync                            # also register them globally (once per release)
    bigsleep-bot doctor [--offline]                # check the setup (machine, data, database, token) and say what to fix

Commands are only registered when asked: Discord limits command creates per day. For tests against a
Discord-compatible server, DISCORD_API_BASE and DISCORD_GATEWAY_URL point discord.py elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

PROG = "bigsleep-bot"
CONFIG_HELP = "a TOML settings file instead of config/default.toml + config/local.toml"
EXIT_CONFIG = 2
EXIT_FAILED = 1

NO_TOKEN_MESSAGE = (
    f"{PROG}: set DISCORD_TOKEN to your bot's token "
    "(Discord Developer Portal > your application > Bot > Reset Token), then start it again."
)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=PROG, description="A Discord bot that dreams images with BigSleep (BigGAN + CLIP).")
    sync = parser.add_mutually_exclusive_group()
    sync.add_argument("--sync", action="store_true", help="register the slash commands globally (takes up to an hour to show)")
    sync.add_argument("--sync-guild", type=int, metavar="ID", help="register the slash commands in one server (instant; for development)")
    parser.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="{doctor}", parser_class=_OneLineParser)
    doctor = commands.add_parser(
        "doctor",
        help="check this machine for running the bot, and say how to fix what is wrong",
        description="Check the configuration, Python and torch, the GPU, the configured device, the weights, the data "
                    "folder and job database (read-only), and DISCORD_TOKEN; print OK, WARN or FAIL for each with a "
                    "fix. Exits 1 when anything FAILs. The token is never printed.",
    )
    # SUPPRESS: `bigsleep-bot --config FILE doctor` keeps the FILE given before the command.
    doctor.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
    doctor.add_argument("--offline", action="store_true", help="do not ask Discord whether the token is valid")
    return parser


def run_doctor(config: Path | None, *, offline: bool) -> int:
    from bot.doctor import diagnose
    from generator.doctor import format_report

    findings = diagnose(config, offline=offline)
    print(format_report(findings))
    return EXIT_FAILED if any(finding.failed for finding in findings) else 0


def point_discord_at(api_base: str | None, gateway_url: str | None) -> None:
    """Use a Discord-compatible server (tests) instead of discord.com; main() has refused plain-text addresses
    off this machine (DiscordConnection.cleartext_problems) before the token goes anywhere."""
    import discord.gateway
    import discord.http
    import yarl

    if api_base:
        discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


async def run_until_stopped(bot, token: str) -> None:
    """Run the bot until it stops or SIGINT/SIGTERM arrives; either way running jobs go back to the queue."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with bot:
        running = asyncio.create_task(bot.start(token), name="discord")
        stopping = asyncio.create_task(stop.wait(), name="signals")
        done, _ = await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping in done:
            logging.getLogger(__name__).info("stopping: handing running jobs back to the queue")
            await bot.close()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        else:
            stopping.cancel()
            running.result()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":
        return run_doctor(args.config, offline=args.offline)  # reports every problem itself, a missing token too

    from bot.settings import (
        CLEARTEXT_FIX,
        DiscordConnection,
        SettingsError,
        load_settings,
    )

    connection = DiscordConnection.from_env()
    if connection.token is None:
        print(NO_TOKEN_MESSAGE, file=sys.stderr)
        return EXIT_CONFIG
    if cleartext := connection.cleartext_problems():
        for problem in cleartext:
            print(f"{PROG}: {problem}; {CLEARTEXT_FIX}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_settings(args.config)
    except SettingsError as problem:
        for line in str(problem).splitlines():
            print(f"{PROG}: {line}", file=sys.stderr)
        return EXIT_CONFIG

    from bot.logs import configure_logging

    # The generation process inherits this environment and has no use for the token: it leaves with us.
    os.environ.pop("DISCORD_TOKEN", None)
    # The token goes to the redactor, so no line (a traceback with headers, say) can carry it.
    configure_logging(settings.log_level, settings.log_format, secrets=[connection.token.get_secret_value()])
    point_discord_at(connection.api_base, connection.gateway_url)

    import discord

    from bot.app import BigSleepBot
    from bot.health import HealthServerError

    sync = "global" if args.sync else args.sync_guild
    bot = BigSleepBot(settings, sync=sync)
    try:
        asyncio.run(run_until_stopped(bot, connection.token.get_secret_value()))
    except discord.LoginFailure:
        print(f"{PROG}: Discord refused the token in DISCORD_TOKEN; copy it again from the Developer Portal.", file=sys.stderr)
        return EXIT_FAILED
    except (discord.PrivilegedIntentsRequired, HealthServerError) as problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
