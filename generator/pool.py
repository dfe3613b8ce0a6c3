"""The set of workers the bot's dispatcher hands jobs to: one worker process per device of this machine.

A pool (`bot.jobs.ports.WorkerPool`) is what the dispatcher sees: its workers, each a `GenerationBackend`
(`generator.client.GenerationClient` here; `generator.ray_pool.RayWorker` for Ray actors), its health, and a
version that changes whenever workers join or leave. This one never changes its membership: each worker is a
client that replaces its own process when it dies. `generator.ray_pool.RayPool` is the one whose workers come
and go with the cluster's GPUs.

Torch-free: the bot imports it. The GPUs are counted with `nvidia-smi -L`, never by importing torch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from generator.wire import PoolHealth, WorkerConfig

log = logging.getLogger("bigsleep.pool")

_GPU_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


# A worker: start/health/wait_until_accepting/submit/cancel/stop, as bot.jobs.ports.GenerationBackend declares.
Worker = Any


class StaticPool:
    """A fixed set of workers that each keep themselves alive (they restart their own processes)."""

    def __init__(self, workers: Sequence[Worker], backend: str = "local") -> None:
        if not workers:
            raise ValueError("a pool needs at least one worker")
        self._workers = list(workers)
        self.backend = backend
        self.version = 0

    def workers(self) -> list[Worker]:
        return list(self._workers)

    def health(self) -> PoolHealth:
        return PoolHealth(workers=tuple(worker.health() for worker in self._workers), backend=self.backend)

    async def start(self) -> None:
        """Start every worker at once; raises the first failure only when none started (each keeps trying)."""
        results = await asyncio.gather(*(worker.start() for worker in self._workers), return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        for failure in failures:
            if not isinstance(failure, Exception):
                raise failure
        if len(failures) == len(self._workers):
            raise failures[0]

    async def wait_for_change(self, version: int) -> None:
        """Workers never join or leave here: wait until cancelled."""
        await asyncio.Event().wait()

    async def stop(self, timeout: float) -> None:
        await asyncio.gather(*(worker.stop(timeout) for worker in self._workers), return_exceptions=True)


def count_gpus(command: Sequence[str] = ("nvidia-smi", "-L"), timeout: float = 20.0) -> int:
    """NVIDIA GPUs on this machine, from `nvidia-smi -L` (0 without the tool or a driver)."""
    if shutil.which(command[0]) is None:
        return 0
    try:
        listed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return len(_GPU_LINE.findall(listed.stdout)) if listed.returncode == 0 else 0


def local_devices(devices: str | Sequence[str], default_device: str, gpu_count: int | None = None) -> list[str]:
    """The device of each local worker: `devices` as configured ("all", a list, or empty for one worker on
    `default_device`). "all" is every GPU nvidia-smi lists, or the one default device when it lists none."""
    if devices == "all":
        found = count_gpus() if gpu_count is None else gpu_count
        if found == 0:
            log.warning("worker.devices = \"all\" but nvidia-smi lists no GPU; running one worker on %s", default_device)
            return [default_device]
        return [f"cuda:{index}" for index in range(found)]
    return list(devices) or [default_device]


def local_configs(base: WorkerConfig, devices: Sequence[str], cpu_threads: int = 0) -> list[WorkerConfig]:
    """One worker configuration per device, each named "local-<n>" (just "local" when there is one). CPU workers
    share the machine's cores: `cpu_threads` each, or (0) an equal share of them."""
    cpu_workers = sum(1 for device in devices if device == "cpu")
    share = cpu_threads or max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
    configs = []
    for index, device in enumerate(devices):
        threads = share if device == "cpu" and (cpu_threads or cpu_workers > 1) else base.torch_threads
        name = "local" if len(devices) == 1 else f"local-{index}"
        configs.append(replace(base, device=device, worker_id=name, torch_threads=threads))
    return configs


def local_pool(base: WorkerConfig, devices: Sequence[str], cpu_threads: int = 0) -> StaticPool:
    """A pool of GenerationClients, one per device (see local_configs)."""
    from generator.client import GenerationClient

    return StaticPool([GenerationClient(config) for config in local_configs(base, devices, cpu_threads)])


__all__ = ["StaticPool", "Worker", "count_gpus", "local_configs", "local_devices", "local_pool"]
