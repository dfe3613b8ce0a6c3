"""Peak memory of one optimisation step per batch slot, for each image size: what `max_batch_size = "auto"` uses.

Each (size, batch) runs in a fresh process: the models are built, then one step of `batch` jobs warms up and one
more is measured. On CUDA the figure is the allocator's peak (torch.cuda.max_memory_allocated) above what the
models hold; on the CPU it is the process's peak resident memory (the kernel's high-water mark, VmHWM, reset
after the models were built) above its resident memory then. The cost of one more slot is the slope between the two batch sizes; the rest is the step's fixed part.

    .venv/bin/python -m benchmarks.memory                              # random real-size models, CPU
    .venv/bin/python -m benchmarks.memory --device cuda --batches 1 4
    .venv/bin/python -m benchmarks.memory --models tiny --sizes 128 256 # the tiny models

The figures to copy into generator/batch_memory.py's tables are printed last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings

from generator.protocol import QUALITY_PRESETS

warnings.filterwarnings("ignore")

MIB = 2**20


def measure_one(models_kind: str, device_name: str, size: int, batch: int, cutouts: int) -> int:
    """Peak bytes of one step of `batch` jobs above the models' own (run in a fresh process)."""
    import torch

    from generator.engine import DreamEngine
    from generator.models import load_models, prepare_process, resolve_device
    from generator.protocol import DreamSpec

    device = resolve_device(device_name)
    prepare_process(device)
    engine = DreamEngine(load_models(models_kind, [size], device))
    jobs = [engine.start(DreamSpec(prompt=f"a lighthouse, number {n}", seed=n, size=size, cutouts=cutouts)) for n in range(batch)]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        start = reset_peak_resident_memory()
    engine.step(jobs)  # the first step's workspaces and Adam's state count: a real job has them too
    engine.step(jobs)
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    return resident_memory("VmHWM") - start


def resident_memory(field: str = "VmRSS") -> int:
    """This process's resident memory (VmRSS) or its peak (VmHWM), in bytes, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_resident_memory() -> int:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux 4.0+) and return that."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return resident_memory()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="random", choices=("tiny", "random"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--batches", type=int, nargs=2, default=[1, 2], metavar=("SMALL", "LARGE"))
    parser.add_argument("--cutouts", type=int, default=QUALITY_PRESETS["best"]["cutouts"],
                        help="cutouts per job (default: the most a preset asks for)")
    parser.add_argument("--one", nargs=2, type=int, metavar=("SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps({"peak_bytes": measure_one(args.models, args.device, *args.one, args.cutouts)}))
        return 0

    small, large = sorted(args.batches)
    if small < 1 or large <= small:
        raise SystemExit("--batches needs two different batch sizes of at least 1")
    what = "GPU allocator peak" if args.device.startswith("cuda") else "peak resident memory"
    print(f"{args.models} models on {args.device}, {args.cutouts} cutouts per job; {what} of one step above the models'")
    table = {}
    for size in args.sizes:
        peaks = {}
        for batch in (small, large):
            command = [sys.executable, "-m", "benchmarks.memory", "--models", args.models, "--device", args.device,
                       "--cutouts", str(args.cutouts), "--one", str(size), str(batch)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            peaks[batch] = json.loads(output.strip().splitlines()[-1])["peak_bytes"]
        per_slot = (peaks[large] - peaks[small]) / (large - small)
        fixed = max(0.0, peaks[small] - small * per_slot)
        table[size] = (round(per_slot / MIB), round(fixed / MIB))
        print(f"{size:>4} px: batch {small} {peaks[small] / MIB:,.0f} MiB, batch {large} {peaks[large] / MIB:,.0f} MiB "
              f"-> {per_slot / MIB:,.0f} MiB per slot + {fixed / MIB:,.0f} MiB fixed", flush=True)
    print("per size, (MiB per slot, MiB fixed):", {size: list(figures) for size, figures in table.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
