"""Starting the generation process when the system refuses new processes: the client retries after growing
pauses and never gives up; start() and health() say why (and when the next try is). No worker process runs
here, so this is quick; tests/bot/jobs/test_real_worker_e2e.py has real workers that fail to start."""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import time

import pytest

from generator.client import GenerationClient, WorkerStartError
from generator.protocol import DreamSpec, JobInterrupted, JobRequest
from generator.wire import WorkerConfig

pytestmark = pytest.mark.timeout(30)

PAUSES = (0.05, 0.1, 0.2)


async def test_starts_are_retried_after_growing_pauses_and_health_says_why(monkeypatch, caplog):
    tries: list[float] = []
    tried = asyncio.Event()

    class NoProcessCanBeCreated:
        """multiprocessing's Process while the system is out of processes (or memory)."""

        def __init__(self, **options: object) -> None:
            pass

        def start(self) -> None:
            tries.append(time.monotonic())
            tried.set()
            raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.get_context("spawn"), "Process", NoProcessCanBeCreated)
    caplog.set_level(logging.ERROR, logger="bigsleep.client")
    client = GenerationClient(WorkerConfig(models_kind="tiny", sizes=(128,), device="cpu", start_retry_pauses_s=PAUSES))

    with pytest.raises(WorkerStartError, match="no generation process could be created: .*Resource temporarily unavailable"):
        await client.start()
    waiting, read_at = client.health(), time.time()
    handed_back = [event async for event in client.submit(JobRequest("early", DreamSpec("a pear", seed=1, size=128)))]
    while len(tries) < 5:
        tried.clear()
        await tried.wait()
    await client.stop()

    assert (waiting.state, waiting.accepting_jobs, waiting.alive, waiting.failed_starts) == ("waiting to retry", False, False, 1)
    assert "Resource temporarily unavailable" in waiting.failure
    assert 0 < waiting.retry_at - read_at <= PAUSES[0]
    assert handed_back == [JobInterrupted("early")]
    # Each pause at least as long as planned, the last one repeating; no process was created, so no restart.
    gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
    assert all(gap >= pause * 0.9 for gap, pause in zip(gaps, (*PAUSES, PAUSES[-1]), strict=True)), gaps
    retries = [record.getMessage().rsplit("; ", 1)[-1] for record in caplog.records if "failed to start" in record.getMessage()]
    assert retries[:5] == ["trying again in 0.05 s", "trying again in 0.1 s", "trying again in 0.2 s", "trying again in 0.2 s", "trying again in 0.2 s"]
    stopped = client.health()
    assert (stopped.state, stopped.restarts, stopped.retry_at) == ("stopped", 0, None)
