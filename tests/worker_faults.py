"""Faults for the generation worker's tests, injected around the REAL engine by markers in a job's prompt.

The worker loads this with `WorkerConfig(engine_factory="worker_faults:fault_injecting_engine")`. Jobs without
markers run the real engine untouched, so one worker process serves faulty and normal jobs side by side.

Markers (anywhere in the prompt; K is a number of steps already done):
    [raise@K]                the step raises a RuntimeError once the job has done K steps (and every step after)
    [oom]                    every step runs out of memory
    [oom-if-batched]         a step runs out of memory when this job shares it with other jobs
    [oom-above-cutouts=N]    a step runs out of memory while this job uses more than N cutouts
    [oom-above-cutouts=N@K]  the same, once the job has done K steps
    [hang@K]                 at step K the step never ends (the process sleeps, heartbeats go on)
    [slow=MS]                every step takes at least MS milliseconds, as on a slow device (so that a test can
                             act while the job runs, whatever the speed of the tiny models)

Faults at start come from a plan file instead, named by $BIGSLEEP_TEST_START_FAULTS, for
`engine_factory="worker_faults:engine_after_start_faults"`: each worker process takes the plan's first line
and removes it: "raise" (the models fail to load: the worker reports WorkerStartFailed), "exit" (the process
dies before it is ready); with no line left it starts normally. Every process, whatever it does, first appends
its pid to the file named like the plan plus ".starts", so a test can count the processes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from generator.engine import DreamEngine, DreamJob
from generator.models import DreamModels

START_FAULTS_VARIABLE = "BIGSLEEP_TEST_START_FAULTS"


def fault_injecting_engine(models: DreamModels) -> DreamEngine:
    return FaultInjectingEngine(models)


def engine_after_start_faults(models: DreamModels) -> DreamEngine:
    plan = Path(os.environ[START_FAULTS_VARIABLE])
    with open(f"{plan}.starts", "a") as starts:
        starts.write(f"{os.getpid()}\n")
    fault, *rest = plan.read_text().splitlines() or [""]
    plan.write_text("".join(f"{line}\n" for line in rest))
    if fault == "raise":
        raise RuntimeError("simulated: the weights could not be read")
    if fault == "exit":
        os._exit(3)
    return FaultInjectingEngine(models)


def start_faults(plan: Path, faults: Sequence[str]) -> Path:
    """Write a plan for engine_after_start_faults; returns the file the processes' pids will be appended to."""
    plan.write_text("".join(f"{fault}\n" for fault in faults))
    return Path(f"{plan}.starts")


class FaultInjectingEngine(DreamEngine):
    def step(self, jobs: Sequence[DreamJob]) -> list[float]:
        started = time.monotonic()
        for job in jobs:
            self._inject(job, len(jobs))
        losses = super().step(jobs)
        slowest = max((_number(job.spec.prompt, "slow", "=") or 0 for job in jobs), default=0)
        time.sleep(max(0.0, slowest / 1000 - (time.monotonic() - started)))
        return losses

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
        if (found := re.search(r"\[oom-above-cutouts=(\d+)@(\d+)\]", prompt)) is not None:
            most, after = map(int, found.groups())
            if job.cutouts > most and job.step >= after:
                raise _out_of_memory()
        if _number(prompt, "hang") == job.step:
            while True:
                time.sleep(3600)


def _number(prompt: str, marker: str, separator: str = "@") -> int | None:
    found = re.search(rf"\[{re.escape(marker)}{separator}(\d+)\]", prompt)
    return int(found.group(1)) if found else None


def _out_of_memory() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated by the test)")
