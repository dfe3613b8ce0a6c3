"""Faults for the generation worker's tests, injected around the REAL engine by markers in a job's prompt.

The worker loads this with `WorkerConfig(engine_factory="worker_faults:fault_injecting_engine")`. Jobs without
markers run the real engine untouched, so one worker process serves faulty and normal jobs side by side.

Markers (anywhere in the prompt; K is a number of steps already done):
    [raise@K]                the step raises a RuntimeError once the job has done K steps (and every step after)
    [oom]                    every step runs out of memory
    [oom-if-batched]         a step runs out of memory when this job shares it with other jobs
    [oom-above-cutouts=N]    a step runs out of memory while this job uses more than N cutouts
    [hang@K]                 at step K the step never ends (the process sleeps, heartbeats go on)
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import torch

from generator.engine import DreamEngine, DreamJob
from generator.models import DreamModels


def fault_injecting_engine(models: DreamModels) -> DreamEngine:
    return FaultInjectingEngine(models)


class FaultInjectingEngine(DreamEngine):
    def step(self, jobs: Sequence[DreamJob]) -> list[float]:
        for job in jobs:
            self._inject(job, len(jobs))
        return super().step(jobs)

    def _inject(self, job: DreamJob, batch_size: int) -> None:
        prompt = job.spec.prompt
        if (after := _number(prompt, "raise")) is not None and job.step >= after:
            raise RuntimeError(f"simulated bug in the step of a job at step {job.step}")
        if "[oom]" in prompt:
            raise _out_of_memory()
        if "[oom-if-batched]" in prompt and batch_size > 1:
            raise _out_of_memory()
        if (most := _number(prompt, "oom-above-cutouts", "=")) is not None and job.cutouts > most:
            raise _out_of_memory()
        if _number(prompt, "hang") == job.step:
            while True:
                time.sleep(3600)


def _number(prompt: str, marker: str, separator: str = "@") -> int | None:
    found = re.search(rf"\[{re.escape(marker)}{separator}(\d+)\]", prompt)
    return int(found.group(1)) if found else None


def _out_of_memory() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated by the test)")
