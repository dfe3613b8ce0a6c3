"""What compiling the step (worker.compile) costs at start and gains per step: uncompiled, compiled with an empty
cache, compiled again with the cache the first start left.

Each start is a fresh process running the worker's own start (generator.worker.start_engine: load the models,
pick the batch size, compile and warm up), so nothing compiled stays in memory between them. After the start,
each runs the same job (same seed) for `--steps` steps and reports the median step and a hash of the final
image's pixels: the two compiled runs must agree exactly (same seed, same pixels).

    .venv/bin/python -m benchmarks.compile_start                          # tiny models, 128 px, CPU
    .venv/bin/python -m benchmarks.compile_start --models random --size 256 --device cuda --max-batch 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def child(args: argparse.Namespace) -> None:
    """One start and one job, in this process; prints one JSON line."""
    import torch

    from generator.protocol import DreamSpec
    from generator.wire import WorkerConfig
    from generator.worker import start_engine

    started = time.perf_counter()
    config = WorkerConfig(models_kind=args.models, sizes=(args.size,), device=args.device, compile=args.compile,
                          max_batch_size=args.max_batch, log_level="WARNING")
    engine, _ = start_engine(config)
    ready_s = time.perf_counter() - started
    job = engine.start(DreamSpec(prompt="a lighthouse in a storm", seed=7, size=args.size, steps=args.steps))
    step_seconds = []
    for _ in range(args.steps):
        before = time.perf_counter()
        engine.step([job])
        if engine.models.device.type == "cuda":
            torch.cuda.synchronize()
        step_seconds.append(time.perf_counter() - before)
    pixels = engine._render_average(job).detach().cpu().numpy().tobytes()
    print(json.dumps({
        "ready_s": ready_s,
        "compiled": engine.networks.compiled,
        "step_ms": 1000 * statistics.median(step_seconds[1:] or step_seconds),
        "pixels": hashlib.sha256(pixels).hexdigest()[:16],
    }))


def run_child(args: argparse.Namespace, compile_choice: str, cache_dir: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.compile_start", "--child", "--compile", compile_choice,
               "--models", args.models, "--size", str(args.size), "--device", args.device,
               "--max-batch", str(args.max_batch), "--steps", str(args.steps)]
    env = dict(os.environ, BIGSLEEP_CACHE_DIR=cache_dir)
    finished = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"the {compile_choice} start failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny", choices=("tiny", "random"))
    parser.add_argument("--size", type=int, default=128, choices=(128, 256, 512))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=1, help="batch buckets compiled at start: up to this")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", default="on", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    import torch

    print(f"{args.models} models, {args.size} px, {args.device}, batches up to {args.max_batch}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="bigsleep-compile-") as cache_dir:
        runs = {
            "uncompiled": run_child(args, "off", cache_dir),
            "compiled, empty cache": run_child(args, "on", cache_dir),
            "compiled, cache kept": run_child(args, "on", cache_dir),
        }
    for label, run in runs.items():
        print(f"{label:>22}: ready in {run['ready_s']:6.1f} s, step {run['step_ms']:8.1f} ms (median of {args.steps}), "
              f"compiled={run['compiled']}, pixels {run['pixels']}", flush=True)
    first, second = runs["compiled, empty cache"], runs["compiled, cache kept"]
    print(f"same seed, same pixels across compiled starts: {'yes' if first['pixels'] == second['pixels'] else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
