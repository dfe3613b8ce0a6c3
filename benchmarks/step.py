"""One BigSleep optimisation step: our engine against a faithful re-implementation of the reference step.

Real-size architectures (BigGAN-deep + CLIP ViT-B/32) with random weights, same latents, same machine; each step
draws its crops its own way from the same seed, so crops drawn differently show up as a mismatch. Prints seconds per step, the ratio, peak memory, achieved GFLOP/s, and how far our loss and latent
gradients are from the reference formulation's (so every speed-up is shown to be quality-neutral).

    .venv/bin/python -m benchmarks.step                     # 512 px, 128 cutouts (the reference's settings)
    .venv/bin/python -m benchmarks.step --size 128 --cutouts 32
    .venv/bin/python -m benchmarks.step --cpu-preset-run      # also time a whole run of the 'cpu' preset
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import threading
import time
import warnings

warnings.filterwarnings("ignore")

import psutil  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.reference_step import reference_losses  # noqa: E402
from generator import biggan as biggan_ops  # noqa: E402
from generator import clip_model  # noqa: E402
from generator.engine import DreamEngine, dream  # noqa: E402
from generator.latents import Latents  # noqa: E402
from generator.models import assemble, clip_dtype_for, resolve_device  # noqa: E402
from generator.protocol import CLIP_PRECISIONS, QUALITY_PRESETS, DreamSpec  # noqa: E402

PROMPT = "a bowl of cherries"
NEGATIVE = "a blurry photo"
# Equivalence is judged against the reference formulation computed in float64 (the exact answer). The reference
# step in fp32 is itself some way from it: with random weights the latent gradients are ill-conditioned. Our
# fp32 step passes when it is no further from the exact answer than FP32_SLACK times the reference's own fp32
# error; a half-precision CLIP passes within HALF_TOLERANCE relative difference.
FP32_SLACK = 2.0
HALF_TOLERANCE = 5e-2
# Both steps seed a generator with this for their crops, and each draws its crop positions its own way.
CROP_SEED = 2


class PeakMemory:
    """Peak memory above the starting point while the block runs: GPU allocator on CUDA, process RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._process = psutil.Process()
            self._start = self._process.memory_info().rss
            self._peak = self._start
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._sampler.join()
            self.peak_bytes = self._peak - self._start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device: torch.device, repeats: int) -> tuple[list[float], int]:
    times = []
    with PeakMemory(device) as memory:
        step()  # warm-up (untimed): allocator, kernel selection, lazy initialisation
        synchronize(device)
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - started)
    return times, memory.peak_bytes


def count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}[dtype]


def float64_copies(biggan, clip):
    """Float64 copies of both networks; CLIP's LayerNorm insists on float32, so use torch's plain one."""
    biggan, clip = copy.deepcopy(biggan).double(), copy.deepcopy(clip).double()
    for parameter in [*biggan.parameters(), *clip.parameters()]:
        parameter.requires_grad_(False)  # weight gradients do not change latent gradients; skip their cost
    for module in clip.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.__class__ = torch.nn.LayerNorm
    return biggan, clip


def relative_errors(result, exact) -> dict[str, float]:
    return {
        label: ((mine.double() - truth.double()).abs().max() / truth.double().abs().max().clamp(min=1e-30)).item()
        for label, mine, truth in zip(("loss", "z grad", "class grad"), result, exact)
    }


def format_errors(errors: dict[str, float]) -> str:
    return ", ".join(f"{label} {error:.2e}" for label, error in errors.items())


def print_speed_table(args, ours_dtype: torch.dtype) -> None:
    """Time each variant in a fresh process, so that each one's peak memory is its own."""
    print("\n== speed (each variant in a fresh process: one warm-up step, then the timed ones) ==")
    variants = ["ours"] if args.skip_reference_timing else ["reference", "ours"]
    seconds_by_variant = {}
    for variant in variants:
        command = [sys.executable, "-m", "benchmarks.step", "--time-variant", variant, "--size", str(args.size),
                   "--cutouts", str(args.cutouts), "--device", args.device, "--repeats", str(args.repeats),
                   "--clip-precision", args.clip_precision]
        report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        seconds = statistics.median(report["times"])
        seconds_by_variant[variant] = seconds
        name = "reference fp32" if variant == "reference" else "ours " + dtype_name(ours_dtype)
        print(f"{name:>16}: {seconds:7.2f} s/step (runs {', '.join(f'{t:.2f}' for t in report['times'])}), "
              f"{report['flops'] / 1e12:.2f} TFLOP/step, {report['flops'] / seconds / 1e9:6.1f} GFLOP/s, "
              f"peak memory +{report['peak_bytes'] / 2**20:,.0f} MiB")
    if "reference" in seconds_by_variant:
        print(f"speed-up over the reference: {seconds_by_variant['reference'] / seconds_by_variant['ours']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, choices=(128, 256, 512))
    parser.add_argument("--cutouts", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clip-precision", choices=CLIP_PRECISIONS, default="auto", help="our CLIP's precision (auto: as the product picks)")
    parser.add_argument("--check-cutouts", type=int, default=16,
                        help="cutouts for the equivalence check (its float64 reference is slow and memory-hungry)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--skip-reference-timing", action="store_true", help="check equivalence only, time ours")
    parser.add_argument("--time-variant", choices=("reference", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--cpu-preset-run", action="store_true", help="time a whole run of the 'cpu' preset at 128 px")
    args = parser.parse_args()

    device = resolve_device(args.device)
    ours_dtype = clip_dtype_for(args.clip_precision, device)
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
          f"torch {torch.__version__}, size {args.size} px, {args.cutouts} cutouts, our CLIP in {dtype_name(ours_dtype)}")

    raw_biggan = biggan_ops.random_biggan(biggan_ops.config_for_size(args.size))
    raw_clip = clip_model.random_clip("full")
    reference_biggan = copy.deepcopy(raw_biggan).to(device).eval()
    reference_clip = copy.deepcopy(raw_clip).to(device).eval()  # weights stay trainable, as in the reference
    ours = assemble(raw_clip, {args.size: raw_biggan}, device, ours_dtype, "full")

    spec = DreamSpec(prompt=PROMPT, negative=NEGATIVE, seed=1, size=args.size, cutouts=args.cutouts)
    rows = biggan_ops.latent_rows(reference_biggan.config)
    initial = Latents.random(rows, torch.Generator().manual_seed(1), device)
    with torch.no_grad():
        positive = clip_model.encode_texts(reference_clip, spec.prompts, device)
        negative = clip_model.encode_texts(reference_clip, spec.negative_prompts, device)

    def reference_step_in(biggan, clip, dtype, cutouts=args.cutouts):
        def step():
            z = initial.z.detach().to(dtype).clone().requires_grad_()
            logits = initial.class_logits.detach().to(dtype).clone().requires_grad_()
            biggan.zero_grad(set_to_none=True)
            clip.zero_grad(set_to_none=True)
            # The reference draws its own crops, its own way, from a generator seeded as ours is below.
            crop_rng = torch.Generator().manual_seed(CROP_SEED)
            loss = sum(reference_losses(biggan, clip, z, logits, crop_rng, cutouts, positive.to(dtype), negative.to(dtype)))
            loss.backward()
            return loss.detach(), z.grad, logits.grad
        return step

    reference_step = reference_step_in(reference_biggan, reference_clip, torch.float32)

    engine = DreamEngine(ours)
    job = engine.start(spec)
    job.latents = Latents(initial.z.detach().clone().requires_grad_(), initial.class_logits.detach().clone().requires_grad_())
    job.positive_embeddings, job.negative_embeddings = positive, negative

    def our_step(cutouts: int | None = None):
        job.crop_rng = torch.Generator().manual_seed(CROP_SEED)
        job.cutouts_override = cutouts
        for tensor in job.latents.parameters():
            tensor.grad = None
        loss = engine.losses([job])
        loss.sum().backward()
        return loss.detach()[0], job.latents.z.grad, job.latents.class_logits.grad

    verdict = None
    if not args.time_variant:
        print("\n== equivalence with the reference formulation (one step, same latents and crops) ==")
        exact = reference_step_in(*float64_copies(reference_biggan, reference_clip), torch.float64, args.check_cutouts)()
        reference_errors = relative_errors(reference_step_in(reference_biggan, reference_clip, torch.float32, args.check_cutouts)(), exact)
        our_errors = relative_errors(our_step(args.check_cutouts), exact)
        print(f"({args.check_cutouts} cutouts at {args.size} px)")
        print("relative difference from the float64 reference (max |x - exact| / max |exact|):")
        print(f"{'reference fp32':>16}: " + format_errors(reference_errors))
        print(f"{'ours ' + dtype_name(ours_dtype):>16}: " + format_errors(our_errors))
        if ours_dtype == torch.float32:
            allowed = {label: FP32_SLACK * error + 1e-6 for label, error in reference_errors.items()}
            rule = f"no more than {FP32_SLACK:g}x the fp32 reference's own error"
        else:
            # On a GPU the reference's fp32 is itself far from exact (cuDNN runs BigGAN's convolutions in TF32:
            # z grad 0.20 on an H100), so a half-precision CLIP is held to whichever bound is looser.
            allowed = {label: max(HALF_TOLERANCE, FP32_SLACK * reference_errors[label]) for label in our_errors}
            rule = f"within {HALF_TOLERANCE:g} or {FP32_SLACK:g}x the fp32 reference's own error (half-precision CLIP)"
        verdict = "OK" if all(our_errors[label] <= allowed[label] for label in our_errors) else "MISMATCH"
        print(f"verdict: {verdict} ({rule}); exact loss {exact[0].item():.5f}")

    if args.time_variant:
        step = reference_step if args.time_variant == "reference" else our_step
        flops = count_flops(step)
        times, peak = time_steps(step, device, args.repeats)
        print(json.dumps({"times": times, "flops": flops, "peak_bytes": peak}))
        return
    print_speed_table(args, ours_dtype)

    if args.cpu_preset_run:
        preset = QUALITY_PRESETS["cpu"]
        cpu_spec = DreamSpec(prompt=PROMPT, seed=3, **preset)
        models = assemble(clip_model.random_clip("full"), {cpu_spec.size: biggan_ops.random_biggan(biggan_ops.config_for_size(cpu_spec.size))},
                          device, ours_dtype, "full")
        started = time.perf_counter()
        outcome = dream(models, cpu_spec)
        print(f"\n'cpu' preset ({preset}): whole run {time.perf_counter() - started:.1f} s for {outcome.steps} steps "
              f"({(time.perf_counter() - started) / outcome.steps:.2f} s/step)")
    if verdict == "MISMATCH":
        sys.exit("our step does not compute the reference's: see the equivalence check above")


if __name__ == "__main__":
    main()
