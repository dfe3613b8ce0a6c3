"""How long a default /imagine job takes through the real worker: one alone, then several at once.

The job is what `/imagine prompt:...` queues with the default settings: the `normal` preset (400 steps, 32
cutouts) at 256 px, a snapshot every 40 steps (the bot's 10 snapshots per job), each sent as a PNG, then the
final image and latents. It runs through the bot's own client and generation process (generator.client), which
start as the bot starts them; the clock runs from submitting the jobs to the last result, after the worker is
ready (its start is timed apart) and has run one warm-up step.

    .venv/bin/python -m benchmarks.job_latency                    # tiny models (BIGSLEEP_MODELS=tiny), CPU
    .venv/bin/python -m benchmarks.job_latency --repeats 3        # the fastest of three of each
    .venv/bin/python -m benchmarks.job_latency --models random --device cuda

Targets for the tiny models on a 2-core CPU (issue 15): one job in 15 s or less, three at once in 30 s or less.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time

import psutil

from benchmarks.throughput import run_jobs
from generator.client import GenerationClient
from generator.protocol import COMPILE_CHOICES, QUALITY_PRESETS, DreamSpec
from generator.wire import WorkerConfig

SNAPSHOTS_PER_JOB = 10  # the bot's default ([jobs] snapshots_per_job)


def default_job(index: int, args: argparse.Namespace) -> DreamSpec:
    preset = QUALITY_PRESETS[args.preset]
    return DreamSpec(
        prompt=f"a lighthouse in a storm, number {index}",
        seed=index,
        size=args.size,
        steps=preset["steps"],
        cutouts=preset["cutouts"],
        snapshot_every=math.ceil(preset["steps"] / SNAPSHOTS_PER_JOB),
    )


async def measure(args: argparse.Namespace) -> None:
    config = WorkerConfig(models_kind=args.models, sizes=(args.size,), device=args.device, compile=args.compile, log_level="WARNING")
    client = GenerationClient(config)
    started = time.perf_counter()
    try:
        await client.start()
        print(f"worker ready in {time.perf_counter() - started:.1f} s ({client.health().device})", flush=True)
        await run_jobs(client, [default_job(10_000, args).with_changes(steps=1, snapshot_every=0)], "warmup")
        worker = psutil.Process(client.health().pid)
        for together in (1, args.together):
            runs = []
            for repeat in range(args.repeats):
                specs = [default_job(100 * repeat + i, args) for i in range(together)]
                cpu_before = sum(worker.cpu_times()[:2])
                elapsed, _ = await run_jobs(client, specs, f"x{together}-{repeat}")
                runs.append((elapsed, sum(worker.cpu_times()[:2]) - cpu_before))
            # CPU seconds hardly change with other load on a shared machine; wall seconds do.
            print(f"{together} default job{'s' if together > 1 else ''} at once: {min(runs)[0]:.1f} s "
                  f"(runs: {', '.join(f'{wall:.1f} s wall / {cpu:.1f} s CPU' for wall, cpu in runs)}; "
                  f"{psutil.cpu_count()} cores, load average {psutil.getloadavg()[0]:.1f})", flush=True)
    finally:
        await client.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny", choices=("tiny", "random"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256, choices=(128, 256, 512))
    parser.add_argument("--preset", default="normal", choices=sorted(QUALITY_PRESETS))
    parser.add_argument("--compile", default="auto", choices=COMPILE_CHOICES, help="worker.compile (auto: on CUDA only)")
    parser.add_argument("--together", type=int, default=3, help="jobs submitted at once in the second measurement")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each measurement; the fastest counts")
    args = parser.parse_args(argv)
    if args.together < 1 or args.repeats < 1:
        raise SystemExit("--together and --repeats must be at least 1")
    print(f"{args.models} models, {args.size} px, preset {args.preset} {QUALITY_PRESETS[args.preset]}", flush=True)
    asyncio.run(measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
