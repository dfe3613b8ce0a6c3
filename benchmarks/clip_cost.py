"""What a larger CLIP costs: one engine step with each of worker.clip_model's choices, in a fresh process each.

Real-size architectures with random weights (BigGAN-deep at --size, CLIP ViT-B/32, ViT-B/16 or ViT-L/14). Prints,
per CLIP, seconds of one step after a warm-up step and the process's peak resident memory (CPU) or the device's
peak allocation (CUDA), one JSON line each.

    .venv/bin/python -m benchmarks.clip_cost --size 256 --cutouts 32
    .venv/bin/python -m benchmarks.clip_cost --device cuda --clip ViT-L/14
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

from generator.protocol import CLIP_MODELS


def measure(clip_name: str, size: int, cutouts: int, device_name: str, clip_precision: str) -> dict:
    warnings.filterwarnings("ignore")
    import torch

    from generator.engine import DreamEngine
    from generator.models import clip_dtype_for, load_models, prepare_process, resolve_device
    from generator.protocol import DreamSpec

    device = resolve_device(device_name)
    prepare_process(device)
    models = load_models("random", [size], device, clip_dtype_for(clip_precision, device), clip_name=clip_name)
    engine = DreamEngine(models)
    job = engine.start(DreamSpec(prompt="a bowl of cherries", size=size, cutouts=cutouts, steps=10))
    engine.step([job])  # warm-up: allocator, kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    engine.step([job])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = {"clip": clip_name, "size": size, "cutouts": cutouts, "device": str(device),
              "clip_dtype": str(models.clip_dtype).removeprefix("torch."), "step_s": round(seconds, 3),
              "input_px": models.clip.visual.input_resolution, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cutouts", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clip-precision", default="auto")
    parser.add_argument("--clip", choices=CLIP_MODELS, action="append", help="default: each of them")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process measuring one CLIP
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.clip[0], args.size, args.cutouts, args.device, args.clip_precision)), flush=True)
        return
    for clip_name in args.clip or CLIP_MODELS:
        # A fresh process for each, so that one's peak memory is not another's.
        command = [sys.executable, "-m", "benchmarks.clip_cost", "--one", "--clip", clip_name, "--size", str(args.size),
                   "--cutouts", str(args.cutouts), "--device", args.device, "--clip-precision", args.clip_precision]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
