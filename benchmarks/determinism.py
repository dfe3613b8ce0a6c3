"""Same seed, same settings, same image? Runs one job twice on a device and compares the results bit for bit.

On CUDA some kernels use atomics (the crop gather's backward is an index_add; BigGAN's nearest upsample
backward too), so two runs may differ. This prints how far apart they are with torch's default kernels and
again with `torch.use_deterministic_algorithms(True)`, and what the deterministic kernels cost in time.

    .venv/bin/python -m benchmarks.determinism --device cuda --size 256 --steps 30
    .venv/bin/python -m benchmarks.determinism --device cuda --through-worker   # the product's path: the worker
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
import warnings

warnings.filterwarnings("ignore")
# cuBLAS picks reduction orders per workspace; a fixed workspace is what makes its GEMMs repeatable.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator import biggan as biggan_ops  # noqa: E402
from generator import clip_model  # noqa: E402
from generator.client import GenerationClient  # noqa: E402
from generator.engine import dream  # noqa: E402
from generator.models import assemble, clip_dtype_for, resolve_device  # noqa: E402
from generator.protocol import CLIP_PRECISIONS, DreamSpec, JobRequest, JobResult  # noqa: E402
from generator.wire import WorkerConfig


def run_once(models, spec: DreamSpec) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    outcome = dream(models, spec)
    if models.device.type == "cuda":
        torch.cuda.synchronize()
    return np.asarray(outcome.image, dtype=np.int16), time.perf_counter() - started


def compare(first: np.ndarray, second: np.ndarray) -> str:
    difference = np.abs(first - second)
    return (f"identical: {bool((difference == 0).all())}, pixels differing {np.count_nonzero(difference) / difference.size:.2%}, "
            f"mean |diff| {difference.mean():.3f} levels, max {int(difference.max())}")


async def twice_through_worker(args: argparse.Namespace, spec: DreamSpec) -> None:
    """The same job twice through the real worker process (which switches on the deterministic kernels itself)."""
    from PIL import Image

    client = GenerationClient(WorkerConfig(models_kind="random", sizes=(args.size,), device=args.device,
                                           clip_precision=args.clip_precision, max_batch_size=1, log_level="WARNING"))
    images = []
    try:
        await client.start()  # if it raises, the client would go on retrying: stop() ends that too
        for attempt in range(2):
            async for event in client.submit(JobRequest(f"repeat-{attempt}", spec)):
                if isinstance(event, JobResult):
                    images.append(np.asarray(Image.open(io.BytesIO(event.png)).convert("RGB"), dtype=np.int16))
    finally:
        await client.stop()
    print(f"through the worker:    {compare(*images)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=256, choices=(128, 256, 512))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cutouts", type=int, default=32)
    parser.add_argument("--clip-precision", choices=CLIP_PRECISIONS, default="auto")
    parser.add_argument("--through-worker", action="store_true", help="run the job twice through the worker process")
    args = parser.parse_args()
    spec = DreamSpec(prompt="a bowl of cherries", seed=7, size=args.size, steps=args.steps, cutouts=args.cutouts)
    if args.through_worker:
        asyncio.run(twice_through_worker(args, spec))
        return

    device = resolve_device(args.device)
    clip_dtype = clip_dtype_for(args.clip_precision, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), torch {torch.__version__}, {args.size} px, {args.steps} steps, "
          f"{args.cutouts} cutouts, CLIP {clip_dtype}")
    torch.manual_seed(0)
    models = assemble(clip_model.random_clip("full"), {args.size: biggan_ops.random_biggan(biggan_ops.config_for_size(args.size))},
                      device, clip_dtype, "random")
    run_once(models, DreamSpec(prompt="warm up", seed=1, size=args.size, steps=2, cutouts=args.cutouts))

    first, first_seconds = run_once(models, spec)
    second, second_seconds = run_once(models, spec)
    print(f"default kernels:       {compare(first, second)}; {first_seconds:.2f} s, {second_seconds:.2f} s per run")

    try:
        torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
        third, third_seconds = run_once(models, spec)
        fourth, fourth_seconds = run_once(models, spec)
    except RuntimeError as error:
        print(f"deterministic kernels: refused: {str(error).splitlines()[0]}")
        return
    finally:
        torch.use_deterministic_algorithms(False)
    print(f"deterministic kernels: {compare(third, fourth)}; {third_seconds:.2f} s, {fourth_seconds:.2f} s per run")
    print(f"default vs deterministic: {compare(first, third)}")


if __name__ == "__main__":
    main()
