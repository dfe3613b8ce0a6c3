"""Prometheus metrics for one bot, in its own CollectorRegistry (several bots in one process never clash).

What the bot counts as it happens (the dispatcher calls the `bot.jobs.ports.JobMetrics` methods; Discord's HTTP answers come
through an aiohttp trace on discord.py's session) and what is read at scrape time (queue lengths, jobs
running, worker state), so no number here can drift from the thing it describes.

Metric names (all prefixed `bigsleep_`):
  queue_length{guild}                      jobs waiting, per server (servers with none are not listed)
  jobs_running                             jobs handed to workers
  jobs_queued_total                        jobs accepted by /imagine, variations and rerolls
  jobs_finished_total{outcome}             done, failed or cancelled
  job_wait_seconds (histogram)             queued -> first start
  job_run_seconds (histogram)              start -> done, for finished images
  steps_total{worker,node,device}          optimisation steps done, summed over the worker's jobs: rate() is
                                           steps/s, sum() over workers the bot's
  steps_per_second                         all workers' over the last minute, for dashboards without rate()
  worker_up{worker,node,device}            1 while that worker takes jobs (one series per worker the pool has)
  worker_restarts_total{worker,node,device}  processes started to replace one of that worker's that died, hung or
                                           failed to start (the worker client's own count: one per process)
  workers_problem                          1 while the pool says it has a problem (no Ray cluster, say: /healthz
                                           says which)
  discord_api_errors_total{status,code}    Discord REST answers >= 400, by HTTP status and Discord's JSON code
                                           (429s included, even those discord.py retried by itself)
  discord_gateway_latency_seconds          the last heartbeat's round trip (a sharded bot: the mean over shards)
  discord_shard_up{shard}                  1 while that shard's gateway connection is open (sharded bots only)
  discord_shard_latency_seconds{shard}     that shard's last heartbeat round trip (sharded bots only)
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bot.sharding import shard_states

if TYPE_CHECKING:
    from bot.jobs.dispatcher import Dispatcher
    from bot.jobs.job import Job
    from generator.wire import WorkerHealth

PREFIX = "bigsleep"
# From an instant start to a long backlog on a busy server.
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
# From a 128 px preview on a fast GPU to a 5000-step 512 px dream on a CPU.
RUN_BUCKETS = (5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600, 7200)
STEPS_WINDOW_SECONDS = 60.0
# Which worker a sample is about: its id ("local-0", "ray-3"), its machine and its device ("cuda:0").
WORKER_LABELS = ["worker", "node", "device"]


def worker_labels(worker: WorkerHealth) -> list[str]:
    return [worker.worker_id, worker.node, worker.device or ""]


class StepRate:
    """Steps per second over a sliding window."""

    def __init__(self, window: float = STEPS_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, count: int) -> None:
        self._events.append((self.clock(), count))
        self._total += count
        self._trim()

    def per_second(self) -> float:
        self._trim()
        return self._total / self.window

    def _trim(self) -> None:
        cutoff = self.clock() - self.window
        while self._events and self._events[0][0] < cutoff:
            self._total -= self._events.popleft()[1]


class BotMetrics:
    """The bot's metrics. `attach(dispatcher, client)` once both exist; `render()` gives the exposition text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs_queued = Counter(f"{PREFIX}_jobs_queued", "Jobs accepted into the queue.", registry=self.registry)
        self.jobs_finished = Counter(
            f"{PREFIX}_jobs_finished", "Jobs that ended, by outcome.", ["outcome"], registry=self.registry
        )
        self.job_wait = Histogram(
            f"{PREFIX}_job_wait_seconds", "Seconds from queueing to the job's first start.",
            buckets=WAIT_BUCKETS, registry=self.registry,
        )
        self.job_run = Histogram(
            f"{PREFIX}_job_run_seconds", "Seconds from start to finished image.", buckets=RUN_BUCKETS, registry=self.registry
        )
        self.steps = Counter(
            f"{PREFIX}_steps", "Optimisation steps done, summed over the worker's jobs.", WORKER_LABELS, registry=self.registry
        )
        self.discord_errors = Counter(
            f"{PREFIX}_discord_api_errors",
            "Discord REST answers with status >= 400, by HTTP status and Discord JSON error code (0: none).",
            ["status", "code"],
            registry=self.registry,
        )
        self.step_rate = StepRate()
        self._dispatcher: Dispatcher | None = None
        self._client: Any = None
        self.registry.register(_LiveState(self))

    def attach(self, dispatcher: Dispatcher | None = None, client: Any = None) -> None:
        """What the scrape-time numbers are read from: the dispatcher (queue, worker) and the discord.Client."""
        if dispatcher is not None:
            self._dispatcher = dispatcher
        if client is not None:
            self._client = client

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- JobMetrics --

    def job_queued(self, job: Job) -> None:
        self.jobs_queued.inc()

    def job_started(self, job: Job) -> None:
        # A job re-run after a restart was already counted at its first start.
        if job.attempts <= 1 and job.started_at is not None:
            self.job_wait.observe(max(0.0, job.started_at - job.created_at))

    def job_finished(self, job: Job) -> None:
        self.jobs_finished.labels(outcome=job.state).inc()
        if job.state == "done" and job.started_at is not None and job.finished_at is not None:
            self.job_run.observe(max(0.0, job.finished_at - job.started_at))

    def steps_done(self, count: int, worker: WorkerHealth) -> None:
        if count > 0:
            self.steps.labels(*worker_labels(worker)).inc(count)
            self.step_rate.add(count)

    # -- Discord's HTTP answers --

    def discord_trace(self) -> aiohttp.TraceConfig:
        """Pass as discord.Client(http_trace=...): sees every REST answer on discord.py's session, interaction
        responses included, and 429s that discord.py retries without raising."""
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._on_discord_response)
        return trace

    async def _on_discord_response(self, session: Any, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
        response = params.response
        if response.status < 400:
            return
        code = 0
        try:
            # read() caches the body: discord.py reads the same bytes afterwards.
            body = json.loads(await response.read())
            if isinstance(body, dict) and isinstance(body.get("code"), int):
                code = body["code"]
        except (ValueError, aiohttp.ClientError, UnicodeDecodeError):
            pass
        self.discord_errors.labels(status=str(response.status), code=str(code)).inc()


class _LiveState(Collector):
    """Numbers read when Prometheus scrapes: nothing to keep in step."""

    def __init__(self, metrics: BotMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Any]:
        return iter(self._families(None, None))

    def collect(self) -> Iterator[Any]:
        return iter(self._families(self.metrics._dispatcher, self.metrics._client))

    def _families(self, dispatcher: Dispatcher | None, client: Any) -> list[Any]:
        queue_length = GaugeMetricFamily(f"{PREFIX}_queue_length", "Jobs waiting, per server.", labels=["guild"])
        running = GaugeMetricFamily(f"{PREFIX}_jobs_running", "Jobs handed to generation workers.")
        worker_up = GaugeMetricFamily(f"{PREFIX}_worker_up", "1 while the generation worker takes jobs.", labels=WORKER_LABELS)
        restarts = CounterMetricFamily(
            f"{PREFIX}_worker_restarts", "Worker processes started to replace one that died, hung or failed to start.",
            labels=WORKER_LABELS,
        )
        problem = GaugeMetricFamily(f"{PREFIX}_workers_problem", "1 while the worker pool reports a problem (see /healthz).")
        steps_per_second = GaugeMetricFamily(
            f"{PREFIX}_steps_per_second", f"Optimisation steps per second over the last {STEPS_WINDOW_SECONDS:g} s."
        )
        latency = GaugeMetricFamily(f"{PREFIX}_discord_gateway_latency_seconds", "The last gateway heartbeat's round trip.")
        shard_up = GaugeMetricFamily(
            f"{PREFIX}_discord_shard_up", "1 while the shard's gateway connection is open.", labels=["shard"]
        )
        shard_latency = GaugeMetricFamily(
            f"{PREFIX}_discord_shard_latency_seconds", "The shard's last gateway heartbeat round trip.", labels=["shard"]
        )
        if dispatcher is not None:
            for guild_id, length in sorted(dispatcher.queue.guild_lengths().items()):
                queue_length.add_metric([str(guild_id)], length)
            running.add_metric([], len(dispatcher.in_flight_progress()))
            pool = dispatcher.pool_health()
            for worker in pool.workers:
                worker_up.add_metric(worker_labels(worker), 1.0 if worker.accepting_jobs else 0.0)
                restarts.add_metric(worker_labels(worker), worker.restarts)
            problem.add_metric([], 0.0 if pool.problem is None else 1.0)
        steps_per_second.add_metric([], self.metrics.step_rate.per_second())
        # Infinite or NaN until the first heartbeat comes back: no sample rather than a misleading one.
        if client is not None and math.isfinite(getattr(client, "latency", math.nan)):
            latency.add_metric([], client.latency)
        for shard in shard_states(client) or ():
            shard_up.add_metric([str(shard.id)], 1.0 if shard.connected else 0.0)
            if math.isfinite(shard.latency):
                shard_latency.add_metric([str(shard.id)], shard.latency)
        return [queue_length, running, worker_up, restarts, problem, steps_per_second, latency, shard_up, shard_latency]


__all__ = ["BotMetrics", "StepRate"]
