"""A grid of 4 (`/imagine count:4`, bot.jobs.grids) against the same 4 images made one after another, and against
one image alone.

Through the real worker process and client, as benchmarks/throughput.py: one worker with max_batch_size 4,
warmed up with one step of a full batch, then
- one image alone (seed 0);
- 4 single jobs (seeds 0-3), each submitted when the one before finished: what a member gets from 4 /imagine;
- a grid of 4 (seeds 0-3) submitted together: what the dispatcher hands the worker for a grid (its images start
  together, bot.jobs.dispatcher), which continuous batching runs as one batch.
Each is repeated `--repeats` times and the median kept. The issue's target, on a GPU: a grid of 4 in at most 1.6x
the time of one image. On a CPU, a batch of 4 takes about 4 times one image per step (see benchmarks/throughput.py),
so expect the grid near the 4 singles.

    .venv/bin/python -m benchmarks.grid --models tiny --steps 3                     # checks the script
    .venv/bin/python -m benchmarks.grid --size 128 --steps 3 --cutouts 8            # CPU, real-size random models
    .venv/bin/python -m benchmarks.grid --device cuda --size 256 --steps 20 --cutouts 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.throughput import job_spec, run_jobs
from generator.client import GenerationClient
from generator.wire import WorkerConfig

GRID = 4
GPU_TARGET_RATIO = 1.6  # a grid of 4 against one image, wall time


@dataclass
class GridMeasurement:
    models: str
    device: str
    size: int
    steps: int
    cutouts: int
    repeats: int
    startup_seconds: float
    one_image_seconds: float
    four_singles_seconds: float
    grid_seconds: float

    @property
    def grid_vs_one(self) -> float:
        return self.grid_seconds / self.one_image_seconds

    @property
    def grid_vs_singles(self) -> float:
        return self.grid_seconds / self.four_singles_seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per image")
    parser.add_argument("--cutouts", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, choices=(128, 256, 512))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clip-precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--models", default="random", choices=("random", "tiny"), help="tiny: only to check the script")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--hang-timeout", type=float, default=3600.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the measurement here")
    return parser


async def measure(args: argparse.Namespace) -> GridMeasurement:
    config = WorkerConfig(
        models_kind=args.models, sizes=(args.size,), device=args.device, clip_precision=args.clip_precision,
        max_batch_size=GRID, hang_timeout_s=args.hang_timeout, log_level="WARNING",
    )
    client = GenerationClient(config)
    started = time.perf_counter()
    one, singles, grids = [], [], []
    try:
        await client.start()
        startup = time.perf_counter() - started
        await run_jobs(client, [job_spec(10_000 + i, args, steps=1) for i in range(GRID)], "warmup")
        for repeat in range(args.repeats):
            one.append((await run_jobs(client, [job_spec(0, args, args.steps)], f"one{repeat}"))[0])
            one_after_another = 0.0
            for index in range(GRID):
                one_after_another += (await run_jobs(client, [job_spec(index, args, args.steps)], f"s{repeat}-{index}"))[0]
            singles.append(one_after_another)
            grids.append((await run_jobs(client, [job_spec(i, args, args.steps) for i in range(GRID)], f"g{repeat}"))[0])
        device = client.health().device or "?"
    finally:
        await client.stop()
    return GridMeasurement(
        models=args.models, device=device, size=args.size, steps=args.steps, cutouts=args.cutouts, repeats=args.repeats,
        startup_seconds=startup, one_image_seconds=statistics.median(one),
        four_singles_seconds=statistics.median(singles), grid_seconds=statistics.median(grids),
    )


def report(m: GridMeasurement) -> str:
    verdict = "meets" if m.grid_vs_one <= GPU_TARGET_RATIO else "misses"
    return "\n".join([
        f"{m.models} models on {m.device}, {m.size} px, {m.steps} steps, {m.cutouts} cutouts (median of {m.repeats})",
        f"one image            {m.one_image_seconds:8.2f} s",
        f"4 singles in a row   {m.four_singles_seconds:8.2f} s",
        f"a grid of 4          {m.grid_seconds:8.2f} s  = {m.grid_vs_singles:.2f}x the 4 singles, {m.grid_vs_one:.2f}x one "
        f"image ({verdict} the GPU target of {GPU_TARGET_RATIO}x)",
        f"worker start         {m.startup_seconds:8.2f} s",
    ])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.cutouts < 1 or args.repeats < 1:
        raise SystemExit("steps, cutouts and repeats must be positive")
    measurement = asyncio.run(measure(args))
    print(report(measurement))
    if args.json is not None:
        args.json.write_text(json.dumps({**asdict(measurement), "grid_vs_one": measurement.grid_vs_one,
                                         "grid_vs_singles": measurement.grid_vs_singles}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
