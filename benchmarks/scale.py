"""Scaling benchmark: images per hour and time to first progress with 1 and 2 workers, as local processes and as
Ray actors, and the bot's /imagine acknowledgement latency while 2 workers are busy.

    .venv/bin/python -m benchmarks.scale                       # everything (about 15 minutes on 2 cores)
    .venv/bin/python -m benchmarks.scale --skip-ray --jobs 4   # local processes only
    .venv/bin/python -m benchmarks.scale --models tiny --steps 3 --jobs 4 --skip-ack   # a quick smoke run

Each worker is a real generation process (or Ray actor) with real-size architectures and random weights
(`models = "random"`) at 128 px, limited to one CPU thread, running one job at a time (max_batch_size 1), so that
N workers on N cores should give N times the images of one. Jobs go through the bot's dispatcher (SQLite store,
fair queue) exactly as in the bot. Workers are started and their models loaded before the clock starts.

- images/h: jobs / (queueing the first -> the last one finished) * 3600;
- first progress: queueing -> the first job's first progress event (a worker already loaded and idle);
- Ray overhead: 1 - Ray's images/h / local's, for the same number of workers;
- ack latency: /imagine through the fake Discord (tests/fakediscord) while 2 local workers generate, p50 / p95.

The Ray runs start a local cluster (`ray start --head --block`, 127.0.0.1) for the benchmark and end it after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The fake Discord lives with the tests.
for folder in (REPO_ROOT / "tests", REPO_ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from bot.database import Database  # noqa: E402
from bot.jobs.dispatcher import Dispatcher, DispatchSettings  # noqa: E402
from bot.jobs.fair_queue import FairQueue, UserCaps  # noqa: E402
from bot.jobs.files import ResultFiles  # noqa: E402
from bot.jobs.job import Job  # noqa: E402
from bot.jobs.ports import SilentProgress  # noqa: E402
from bot.jobs.store import JobStore  # noqa: E402
from generator.pool import StaticPool, local_pool  # noqa: E402
from generator.protocol import DreamSpec  # noqa: E402
from generator.ray_pool import RayPool, RayPoolConfig  # noqa: E402
from generator.wire import WorkerConfig  # noqa: E402


@dataclass
class Run:
    backend: str
    workers: int
    jobs: int
    steps: int
    start_seconds: float
    elapsed_seconds: float
    images_per_hour: float
    first_progress_seconds: float


class Timings(SilentProgress):
    def __init__(self) -> None:
        self.first_progress: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.all_done = asyncio.Event()
        self.expected = 0

    def running(self, job: Job, step: int, total: int, snapshot_png: bytes | None) -> None:
        if step > 0:
            self.first_progress.setdefault(job.id, time.monotonic())

    def done(self, job: Job, png: bytes) -> None:
        self._end(job)

    def failed(self, job: Job, reason: str) -> None:
        print(f"job {job.id} failed: {reason}", file=sys.stderr)
        self._end(job)

    def _end(self, job: Job) -> None:
        self.finished[job.id] = time.monotonic()
        if len(self.finished) >= self.expected:
            self.all_done.set()


class LocalRayHead:
    """`ray start --head --block` on 127.0.0.1 with token authentication, for the Ray runs."""

    def __init__(self, cpus: int) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="bsray"))
        token = self.folder / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        os.environ.update(self.auth)  # the bridge processes spawned from here join with these
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={self.port}",
             "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={self.folder / 'ray'}"],
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the Ray head did not start")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def worker_config(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(models_kind=args.models, sizes=(128,), device="cpu", max_batch_size=1, torch_threads=1,
                        log_level="WARNING", hang_timeout_s=3600.0)


def make_pool(backend: str, workers: int, args: argparse.Namespace, head: LocalRayHead | None):
    config = worker_config(args)
    if backend == "local":
        return local_pool(config, ["cpu"] * workers, cpu_threads=1)
    assert head is not None
    return RayPool(RayPoolConfig(address=head.address, worker=config, gpus_per_worker=0, cpus_per_worker=1,
                                 max_workers=workers, poll_interval_s=0.5))


async def until_ready(pool: StaticPool | RayPool, workers: int) -> None:
    while sum(worker.health().accepting_jobs for worker in pool.workers()) < workers:
        await asyncio.sleep(0.2)


async def measure(backend: str, workers: int, args: argparse.Namespace, head: LocalRayHead | None) -> Run:
    folder = Path(tempfile.mkdtemp(prefix="bs-scale-"))
    async with Database.open(folder / "jobs.sqlite3") as database:
        store = JobStore(database)
        timings = Timings()
        timings.expected = args.jobs
        pool = make_pool(backend, workers, args, head)
        dispatcher = Dispatcher(store=store, queue=FairQueue(), backend=pool, files=ResultFiles(folder),
                                progress=timings, settings=DispatchSettings(caps=UserCaps(running=args.jobs, queued=args.jobs),
                                                                            snapshots_per_job=2, stop_timeout=30))
        began = time.monotonic()
        dispatcher.start()
        await asyncio.wait_for(until_ready(pool, workers), 900)
        started = time.monotonic() - began
        # Every job from a user of its own: the fair queue takes them in the order queued.
        queued_at = time.monotonic()
        for index in range(args.jobs):
            await dispatcher.enqueue(guild_id=1 + index % 3, channel_id=1, user_id=100 + index,
                                     spec=DreamSpec(f"a lighthouse {index}", seed=index, steps=args.steps, size=128,
                                                    cutouts=args.cutouts))
        await asyncio.wait_for(timings.all_done.wait(), 3600)
        elapsed = max(timings.finished.values()) - queued_at
        first = min(timings.first_progress.values()) - queued_at
        await dispatcher.stop()
    return Run(backend, workers, args.jobs, args.steps, round(started, 1), round(elapsed, 1),
               round(args.jobs / elapsed * 3600, 1), round(first, 2))


async def ack_latency(args: argparse.Namespace) -> dict[str, float]:
    """/imagine acknowledgement while 2 local workers generate: the bot's event loop shares the 2 cores with them."""
    import discord
    import discord.gateway
    import discord.http
    import yarl
    from fakediscord import FakeDiscord

    from bot.app import BigSleepBot
    from bot.settings import BotSettings

    fake = FakeDiscord()
    await fake.start()
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    folder = Path(tempfile.mkdtemp(prefix="bs-scale-bot-"))
    settings = BotSettings(data_dir=folder, models=args.models, device="cpu", log_level="WARNING",
                           worker={"max_batch_size": 1, "sizes": (128,), "devices": ("cpu", "cpu"), "cpu_threads": 1,
                                   "snapshots_per_job": 2},
                           limits={"default_size": 128, "default_steps": args.steps, "max_cutouts": args.cutouts})
    pool = local_pool(worker_config(args), ["cpu", "cpu"], cpu_threads=1)
    bot = BigSleepBot(settings, backend_factory=lambda _: pool, sync="global", guild_ready_timeout=0.01)
    connection = None
    latencies: list[float] = []
    try:
        guilds = [fake.add_guild(f"server {n}") for n in range(5)]
        channels = [fake.add_channel(guild, "art") for guild in guilds]
        members = [(channels[n % 5], fake.add_member(guilds[n % 5], f"user {n}")) for n in range(args.ack_commands)]
        await bot.login(fake.token)
        connection = asyncio.create_task(bot.connect(reconnect=True))
        await asyncio.wait_for(bot.wait_until_ready(), 60)
        await asyncio.wait_for(until_ready(pool, 2), 900)
        # Load first: both workers busy before the measured commands arrive.
        for channel, member in members[:4]:
            await (await fake.invoke_command(channel, member, "imagine", prompt="a busy worker")).wait_response()
        await asyncio.sleep(2.0)
        for channel, member in members[4:]:
            interaction = await fake.invoke_command(channel, member, "imagine", prompt="a storm over the sea")
            response = await interaction.wait_response()
            latencies.append(response.at - interaction.created_at)
            await asyncio.sleep(0.25)
    finally:
        await bot.close()
        if connection is not None:
            await asyncio.gather(connection, return_exceptions=True)
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved
        await fake.stop()
    ordered = sorted(latencies)
    return {"commands": len(ordered), "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 1),
            "max_ms": round(1000 * ordered[-1], 1)}


async def main_async(args: argparse.Namespace) -> dict:
    runs: list[Run] = []
    backends = ["local"] + ([] if args.skip_ray else ["ray"])
    head = LocalRayHead(cpus=os.cpu_count() or 2) if "ray" in backends else None
    try:
        for _ in range(args.repeats):
            for backend in backends:
                for workers in (1, 2):
                    run = await measure(backend, workers, args, head)
                    print(json.dumps(asdict(run)), flush=True)
                    runs.append(run)
    finally:
        if head is not None:
            head.stop()
    report: dict = {"runs": [asdict(run) for run in runs], "load": os.getloadavg()}
    best = {}
    for backend in backends:
        for workers in (1, 2):
            best[(backend, workers)] = max(run.images_per_hour for run in runs if (run.backend, run.workers) == (backend, workers))
    for backend in backends:
        report[f"{backend}_speedup_2_over_1"] = round(best[(backend, 2)] / best[(backend, 1)], 2)
    if "ray" in backends:
        for workers in (1, 2):
            report[f"ray_overhead_{workers}_workers"] = round(1 - best[("ray", workers)] / best[("local", workers)], 3)
    if not args.skip_ack:
        report["ack_latency_2_workers"] = await ack_latency(args)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="random", choices=("random", "tiny"))
    parser.add_argument("--jobs", type=int, default=6, help="jobs per run (default 6)")
    parser.add_argument("--steps", type=int, default=8, help="steps per job (default 8)")
    parser.add_argument("--cutouts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--ack-commands", type=int, default=24, help="/imagine commands for the ack latency")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-ack", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
