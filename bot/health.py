"""The operations endpoint: `GET /healthz` and `GET /metrics` over plain HTTP (aiohttp), on localhost by default.

/healthz answers 200 when all three hold, else 503, always with a JSON body saying what was checked; its
"status" is "ok", "starting" (only the first worker is still loading its models) or "unhealthy":
  discord    the gateway is connected and the bot is ready (with the heartbeat latency); a sharded bot lists
             each shard's connection and latency, and is healthy only while every shard is connected
  worker     some generation worker takes jobs (one still loading its models counts as down); the body has the
             pool's backend, its state and restarts, why it has no worker when it has none ("problem": the Ray
             cluster cannot be reached, say), and each worker with its id, node, device, sizes, batch size, jobs
             and state and, while it is down, why (and when it tries again)
  database   the job database can take its write lock, and the data folder accepts a file write
/metrics is Prometheus's text format (see bot.metrics for the names).

Nothing here needs a password, so keep it off the public internet (the default host is 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.sharding import shard_states

if TYPE_CHECKING:
    from bot.app import BigSleepBot
    from bot.settings import HealthSettings
    from generator.wire import WorkerHealth

log = logging.getLogger(__name__)

# A database that takes longer than this to hand over its write lock counts as not writable.
DATABASE_CHECK_TIMEOUT = 3.0
# Of that, how long the check waits for a write lock another process holds: the rest is for the bot's own
# transaction to end, and the disk write.
_LOCK_WAIT_SHARE = 0.5
PROBE_FILE_NAME = ".healthcheck"


class HealthServerError(RuntimeError):
    """The endpoint could not be served (the port is taken, say); the message says what to change."""


@dataclass(frozen=True)
class Check:
    ok: bool
    details: dict[str, Any]


class HealthServer:
    """Serves /healthz and /metrics for one bot. `await start()` binds (port 0: a free one; see `port`)."""

    def __init__(self, bot: BigSleepBot, settings: HealthSettings) -> None:
        self.bot = bot
        self.settings = settings
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        # One database check at a time: a slow disk must not pile up checks from an impatient monitor.
        self._database_check: asyncio.Task[None] | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        # No access log: a monitor polling every few seconds would drown the bot's own lines.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise HealthServerError(
                f"cannot serve /healthz on {self.settings.host}:{self.settings.port} ({error.strerror or error}); "
                "set health.port (BIGSLEEP_HEALTH__PORT) to a free port, or health.enabled = false"
            ) from None
        self._runner = runner
        self.port = runner.addresses[0][1] if runner.addresses else self.settings.port
        log.info(
            "health and metrics at http://%s:%s/healthz and /metrics", self.settings.host, self.port,
            extra={"host": self.settings.host, "port": self.port},
        )

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- handlers --

    async def healthz(self, request: web.Request) -> web.Response:
        checks = {
            "discord": self.discord_check(),
            "worker": self.worker_check(),
            "database": await self.database_check(),
        }
        healthy = all(check.ok for check in checks.values())
        body = {"status": "ok" if healthy else ("starting" if _only_starting(checks) else "unhealthy")}
        body.update({name: {"ok": check.ok, **check.details} for name, check in checks.items()})
        return web.json_response(body, status=200 if healthy else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.bot.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # -- checks --

    def discord_check(self) -> Check:
        bot = self.bot
        shards = shard_states(bot)
        if shards is None:
            ws = getattr(bot, "ws", None)
            gateway_open = ws is not None and ws.open
        else:
            gateway_open = bool(shards) and all(shard.connected for shard in shards)
        connected = bot.is_ready() and not bot.is_closed() and gateway_open
        latency = bot.latency  # a sharded bot's is the mean over its shards
        details: dict[str, Any] = {"connected": connected}
        if math.isfinite(latency):
            details["latency_seconds"] = round(latency, 3)
        if shards is not None:
            details["shards"] = [shard.details() for shard in shards]
        return Check(connected, details)

    def worker_check(self) -> Check:
        dispatcher = getattr(self.bot, "dispatcher", None)
        if dispatcher is None:
            return Check(False, {"state": "not started"})
        pool = dispatcher.pool_health()
        details: dict[str, Any] = {
            "backend": pool.backend,
            "state": pool.state,
            "alive": any(worker.alive for worker in pool.workers),
            "accepting_jobs": pool.accepting_jobs,
            "restarts": pool.restarts,
        }
        if pool.problem is not None:
            details["problem"] = pool.problem
        details["workers"] = [_worker_details(worker) for worker in pool.workers]
        return Check(pool.accepting_jobs, details)

    async def database_check(self) -> Check:
        database = getattr(self.bot, "database", None)
        if database is None:
            return Check(False, {"writable": False, "error": "the database is not open"})
        if self._database_check is None or self._database_check.done():
            self._database_check = asyncio.create_task(self._probe_database(database), name="bigsleep-health-database")
        try:
            # Shielded: a check that times out still finishes (and gives the write lock back) in the background.
            await asyncio.wait_for(asyncio.shield(self._database_check), DATABASE_CHECK_TIMEOUT)
        except TimeoutError:
            return Check(False, {"writable": False, "error": f"no write lock within {DATABASE_CHECK_TIMEOUT:g} s"})
        except (sqlite3.Error, OSError, ValueError) as error:  # ValueError: aiosqlite's closed connection
            return Check(False, {"writable": False, "error": f"{type(error).__name__}: {error}"})
        return Check(True, {"writable": True})

    async def _probe_database(self, database: Any) -> None:
        await database.check_writable(timeout=DATABASE_CHECK_TIMEOUT * _LOCK_WAIT_SHARE)
        # The write lock says nothing about the disk: a full or read-only file system fails here.
        await asyncio.to_thread(_write_probe_file, Path(self.bot.settings.data_dir) / PROBE_FILE_NAME)


def _worker_details(health: WorkerHealth) -> dict[str, Any]:
    details: dict[str, Any] = {
        "id": health.worker_id,
        "node": health.node,
        "state": health.state,
        "alive": health.alive,
        "accepting_jobs": health.accepting_jobs,
        "restarts": health.restarts,
        "sizes": list(health.sizes),
        "jobs": list(health.in_flight_jobs),
    }
    optional = {
        "max_batch_size": health.max_batch_size or None,
        "compiled": health.compiled or None,
        "pid": health.pid,
        "device": health.device,
        "failure": health.failure,
        "failed_starts": health.failed_starts or None,
        "retry_in_seconds": None if health.retry_at is None else round(max(0.0, health.retry_at - time.time()), 1),
    }
    details.update((name, value) for name, value in optional.items() if value is not None)
    return details


def _only_starting(checks: dict[str, Check]) -> bool:
    """Nothing is wrong but the first worker still loading its models (minutes, the first time: weights download):
    still 503, since no job can run, but a monitor (or a person reading the body) can tell it from a fault."""
    return all(check.ok or (name == "worker" and check.details.get("state") == "starting")
               for name, check in checks.items())


def _write_probe_file(path: Path) -> None:
    with open(path, "wb") as probe:
        probe.write(b"ok\n")
        probe.flush()
        os.fsync(probe.fileno())


__all__ = ["HealthServer", "HealthServerError"]
