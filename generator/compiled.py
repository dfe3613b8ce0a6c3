"""The step's two networks, BigGAN-deep's render and CLIP's image tower, run eagerly or compiled by torch.compile.

A step at 256 px on a GPU is bound by kernel launches and Python, not arithmetic (80 ms a step on an H200, when a
512 px step with 128 cutouts takes 50 ms). Compiled, each network is a few fused kernels; on CUDA they are also
captured in CUDA graphs ("reduce-overhead"), which replay a whole forward or backward as one launch.

A compiled graph has fixed shapes, so batches are padded to a bucket (1, 2, 4, 8 images; crops to a power of
two): a job joining or leaving a batch at a step boundary reuses a graph instead of compiling a new one. Padding
rows copy a real row, detached: they change no real row's result or gradient. Graphs are compiled when the worker
starts (`warm_up`) and kept on disk beside the weights, so a restart loads them instead of compiling again.

Compiling needs a C++ compiler at run time (inductor's CPU kernels, Triton's launchers on CUDA). Without one, or
when compiling fails, the networks run eagerly and one log line says why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from generator import biggan as biggan_ops
from generator import clip_vision
from generator.models import DreamModels
from generator.protocol import COMPILE_CHOICES

log = logging.getLogger("bigsleep.worker")

BATCH_BUCKETS = (1, 2, 4, 8)
# Each (size, batch bucket) and each crop bucket is its own graph of the same function; torch's default limit of
# 8 graphs per function would send the rest back to eager without a word.
GRAPHS_PER_FUNCTION = 64


def batch_bucket(images: int) -> int:
    """The batch a step of `images` images is padded to: the smallest bucket that holds it (past 8, itself)."""
    return next((bucket for bucket in BATCH_BUCKETS if bucket >= images), images)


def crop_bucket(crops: int) -> int:
    """Crops are padded to the next power of two: cutouts per job (32, 64, 128, ...) times a batch bucket."""
    return 1 << max(crops - 1, 0).bit_length()


def should_compile(choice: str, device: torch.device) -> bool:
    """'auto' compiles on CUDA only. On the CPUs measured it did not pay: a real-size 128 px render went from 732 to
    658 ms a step forward and backward after 156 s of compiling, and the tiny models spend longer compiling than
    any job runs (README's speed table)."""
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, not {choice!r}")
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def missing_compiler() -> str | None:
    """Why torch.compile cannot build kernels on this machine, or None when it can."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as error:  # torch raises its own InvalidCxxCompiler, or an OSError from the search
        return f"no C++ compiler found ({type(error).__name__}); install g++ (Debian: apt install g++) or set CXX"
    return None


def step_networks(models: DreamModels, choice: str, cache_root: Path, backend: str = "inductor") -> StepNetworks:
    """The networks a step should run with: compiled when `choice` asks for it on this device and a compiler is
    there (kept under `cache_root`, the weights cache), else eager, with one log line saying why."""
    if not should_compile(choice, models.device):
        return StepNetworks(models)
    reason = missing_compiler()
    if reason is not None:
        log.warning("not compiling the step (%s): running it uncompiled", reason)
        return StepNetworks(models)
    use_compile_cache(compile_cache_folder(cache_root, models.device))
    return StepNetworks(models, compiled=True, backend=backend)


def use_compile_cache(folder: Path) -> None:
    """Keep compiled kernels and graphs under `folder` (on the weights volume), kept between starts of a worker."""
    folder.mkdir(parents=True, exist_ok=True)
    # Read by inductor (and Triton) whenever they look for a cached artefact; this process owns its environment.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True


def compile_cache_folder(root: Path, device: torch.device) -> Path:
    """One folder per torch version and device kind: artefacts of one do not load in another."""
    return root / "compiled" / f"torch-{torch.__version__}-{device.type}"


class StepNetworks:
    """Render latents into images and embed crops, as a step needs them (with gradients).

    Eager unless `compiled`; `backend` is torch.compile's (tests use 'aot_eager', which traces and differentiates
    the same way without building kernels).
    """

    def __init__(self, models: DreamModels, compiled: bool = False, backend: str = "inductor"):
        self.models = models
        self._run_eagerly()
        self.compiled = compiled
        self._uses_cuda_graphs = compiled and backend == "inductor" and models.device.type == "cuda"
        if compiled:
            import torch._dynamo.config as dynamo_config

            for limit in ("cache_size_limit", "recompile_limit"):
                if hasattr(dynamo_config, limit):
                    setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), GRAPHS_PER_FUNCTION))
            mode = "reduce-overhead" if self._uses_cuda_graphs else None
            self._render = torch.compile(self._render, backend=backend, mode=mode, dynamic=False)
            self._encode = torch.compile(self._encode, backend=backend, mode=mode, dynamic=False)

    def begin_step(self) -> None:
        """Before each step's forward: the last step's CUDA graph outputs may be overwritten from here on."""
        if self._uses_cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def render(self, size: int, z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """biggan.render of (batch, rows, ...) latents; compiled, the batch is padded to its bucket."""
        generator = self.models.generator(size)
        if not self.compiled:
            return self._render(generator, z, classes)
        images = z.shape[0]
        padding = batch_bucket(images) - images
        return self._render(generator, _pad_rows(z, padding), _pad_rows(classes, padding))[:images]

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """clip_vision.encode_patches of normalised crops cut into patches (3, n, patches, pixels); compiled, n is
        padded to its bucket."""
        visual = self.models.clip.visual
        if not self.compiled:
            return self._encode(visual, patches)
        channels, count, *patch_shape = patches.shape
        padded = torch.cat([patches, patches.new_zeros((channels, crop_bucket(count) - count, *patch_shape))], dim=1)
        return self._encode(visual, padded)[:count]

    def warm_up(self, step: Callable[[int, int], None], sizes: Sequence[int], max_batch_size: int) -> float:
        """Compile (or load from the cache) each size's graphs for every bucket up to `max_batch_size`, by calling
        `step(size, images)` once for each; seconds taken. Does nothing when eager."""
        if not self.compiled:
            return 0.0
        started = time.perf_counter()
        buckets = sorted({batch_bucket(images) for images in range(1, max_batch_size + 1)})
        try:
            for size in sizes:
                for bucket in buckets:
                    step(size, bucket)
        except Exception as error:  # a compiler or backend that fails here would fail every job: run eagerly instead
            self.stop_compiling(error)
            return time.perf_counter() - started
        seconds = time.perf_counter() - started
        log.info("compiled the step for %s px, batches of %s, in %.1f s", list(sizes), buckets, seconds)
        return seconds

    def stop_compiling(self, error: BaseException) -> None:
        """Run eagerly from now on, saying why in one line."""
        log.warning("compiling the step failed (%s: %s); running it uncompiled", type(error).__name__, error)
        self._run_eagerly()

    def _run_eagerly(self) -> None:
        self.compiled = self._uses_cuda_graphs = False
        self._render: Callable[..., torch.Tensor] = biggan_ops.render
        self._encode: Callable[..., torch.Tensor] = clip_vision.encode_patches


def _pad_rows(rows: torch.Tensor, padding: int) -> torch.Tensor:
    if padding == 0:
        return rows
    return torch.cat([rows, rows[-1:].detach().expand(padding, *rows.shape[1:])])
