"""Loading the two networks, real or tiny, onto a chosen device and precision."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pytorch_pretrained_biggan import BigGAN, BigGANConfig

from generator import biggan as biggan_ops
from generator import clip_model
from generator.cpu_memory import keep_freed_memory
from generator.protocol import DEFAULT_CLIP_MODEL, MODEL_KINDS
from generator.weights import WeightFile, WeightsSource, ensure_files, files_for_sizes

# The tiny preset: BigGAN-deep's modules at the smallest width that keeps a channel in every block (at 512 px the
# last block's bottleneck is a quarter of one width unit), one block per resolution where the published models
# have two, and self-attention over the 16 x 16 map instead of 64 x 64. A setup check needs the code path, not the
# cost: at toy width a step's time goes to the number of operations and to the largest maps, not to arithmetic
# (measured at 256 px on 2 AVX2 cores, forward and backward: attention over 4,096 pixels was 78 of 135 ms; the
# second block of each resolution then about a quarter of a step).
TINY_CHANNEL_WIDTH = 4
TINY_ATTENTION_RESOLUTION = 16
TINY_WARNING = (
    "Using the TINY models: random weights at toy width, for checking a setup without downloading the real "
    "weights (about 1 GB for CLIP and BigGAN-deep at all three sizes). "
    "Their images are noise, not pictures of your prompt."
)
RANDOM_WARNING = "Using RANDOM real-size models (for benchmarks): their images are noise, not pictures of your prompt."


class ModelLoadError(RuntimeError):
    """A weights file exists but is not what it should be; the message says which and what to do."""


@dataclass
class DreamModels:
    """BigGAN-deep generators (one per image size) and CLIP, frozen, on one device."""

    clip: torch.nn.Module
    device: torch.device
    clip_dtype: torch.dtype
    kind: str
    generators: dict[int, BigGAN] = field(default_factory=dict)

    @property
    def images_are_noise(self) -> bool:
        return self.kind != "full"

    @property
    def sizes(self) -> list[int]:
        return sorted(self.generators)

    def generator(self, size: int) -> BigGAN:
        try:
            return self.generators[size]
        except KeyError:
            raise ModelLoadError(f"no BigGAN-deep-{size} loaded (loaded: {self.sizes})") from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_clip_dtype(device: torch.device) -> torch.dtype:
    """Half precision for CLIP where the hardware multiplies it fast, as the reference does on GPU.

    On CUDA, fp16. On a CPU, bfloat16 only with native support (AVX-512 BF16 or AMX): without it, torch's
    bfloat16 matrix products run about 100x slower than fp32 (measured on an AVX2 EPYC: 1-17 vs 130 GFLOP/s).
    """
    if device.type == "cuda":
        return torch.float16
    native_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if native_bf16 else torch.float32


def clip_dtype_for(precision: str, device: torch.device) -> torch.dtype:
    """The dtype named by one of CLIP_PRECISIONS; 'auto' is what suits `device`."""
    if precision == "auto":
        return default_clip_dtype(device)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_device(name: str | None) -> torch.device:
    """'auto' (or None) picks CUDA when present; anything else is taken as a torch device name."""
    if name in (None, "", "auto"):
        return default_device()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} was asked for, but this machine has no usable CUDA GPU")
    return device


def prepare_process(device: torch.device) -> None:
    """Process-wide settings for generating on `device`, for the process that owns it (a worker, the CLI):
    repeatable kernels on CUDA, and on the CPU a malloc that keeps freed memory for the next step."""
    use_repeatable_kernels(device)
    if device.type == "cpu":
        keep_freed_memory()


def use_repeatable_kernels(device: torch.device) -> None:
    """Make the same seed give the same image on CUDA, for this whole process (a worker or the CLI owns its own).

    Some of torch's default CUDA kernels sum with atomics (the crop gather's backward is an index_add, BigGAN's
    upsample backward too), so two runs of one job differed: measured on an H100, 61% of pixels, mean 6.9 levels.
    The deterministic kernels made them bit-identical, at 12% more time per step (benchmarks/determinism.py, the
    same H100; README's measurements).
    """
    if device.type != "cuda":
        return
    # cuBLAS only repeats its reductions with a fixed workspace; read when its first handle is made.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an operation with no deterministic kernel (none on the measured path; perhaps a rarely used
    # option's) warns and runs as before, rather than failing someone's job.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def load_models(
    kind: str,
    sizes: Sequence[int],
    device: torch.device,
    clip_dtype: torch.dtype | None = None,
    source: WeightsSource | None = None,
    catalog: list[WeightFile] | None = None,
    clip_name: str = DEFAULT_CLIP_MODEL,
) -> DreamModels:
    """Load the networks for `sizes`. 'full' fetches (or finds) the real weights; 'tiny' builds toy ones.

    `catalog` replaces the list of weight files (a mirror with other checksums, tests); `source` says where
    files live and whether the network may be used. `clip_name`: which CLIP (one of CLIP_MODELS).
    """
    if kind not in MODEL_KINDS:
        raise ModelLoadError(f"models must be one of {', '.join(MODEL_KINDS)}, not {kind!r}")
    clip_dtype = clip_dtype or default_clip_dtype(device)
    if kind in ("tiny", "random"):
        width = "tiny" if kind == "tiny" else "full"
        clip = clip_model.random_clip(width, architecture=clip_name)
        generators = {size: biggan_ops.random_biggan(random_biggan_config(size, width)) for size in sizes}
    else:
        source = source or WeightsSource.from_env()
        files = catalog if catalog is not None else files_for_sizes(sizes, source.mirror, clip_name)
        paths = ensure_files(files, source)
        clip = clip_model.load_clip(paths[_clip_key(files)])
        generators = {size: load_biggan(paths[_biggan_key(files, size, "pytorch_model.bin")].parent) for size in sizes}
    return assemble(clip, generators, device, clip_dtype, kind)


def assemble(clip: torch.nn.Module, generators: dict[int, BigGAN], device: torch.device, clip_dtype: torch.dtype, kind: str) -> DreamModels:
    """Prepare freshly loaded networks for BigSleep: frozen, trimmed, on `device`, CLIP in `clip_dtype`."""
    prepared = {size: biggan_ops.prepare_for_inference(g).to(device) for size, g in generators.items()}
    clip = clip_model.prepare_for_inference(clip, device, clip_dtype)
    return DreamModels(clip=clip, device=device, clip_dtype=clip_dtype, kind=kind, generators=prepared)


def load_biggan(folder: Path) -> BigGAN:
    """A BigGAN-deep from a folder holding pytorch-pretrained-biggan's `config.json` and `pytorch_model.bin`."""
    config = BigGANConfig.from_json_file(str(folder / "config.json"))
    model = BigGAN(config)
    weights = folder / "pytorch_model.bin"
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which one, not a pickle traceback
        raise ModelLoadError(f"{weights} is not a readable BigGAN checkpoint ({error}). Delete it to download it again.") from error
    mismatch = f"{weights} does not match {folder / 'config.json'}"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of the wrong shapes
        raise ModelLoadError(f"{mismatch} ({str(error).splitlines()[-1].strip()}). Delete both files to download them again.") from error
    # Each weight is divided by its largest singular value, estimated from its stored vectors u and v. Without
    # them the module keeps the random ones it was built with, a made-up scale for every weight: refuse instead.
    spectral_norm = [key for key in missing if key.endswith(("weight_u", "weight_v"))]
    if spectral_norm:
        raise ModelLoadError(
            f"{weights} lacks {len(spectral_norm)} spectral-norm vector(s) that BigGAN-deep needs to scale its weights "
            f"({_first_few(spectral_norm)}): it is incomplete or not pytorch-pretrained-biggan's file. Delete it to download it again."
        )
    if missing or unexpected:
        raise ModelLoadError(f"{mismatch}: missing {_first_few(missing)}; unexpected {_first_few(unexpected)}. "
                             "Delete both files to download them again.")
    return model.eval()


def _first_few(keys: list[str], shown: int = 4) -> str:
    if not keys:
        return "nothing"
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def write_random_weights(folder: Path, sizes: Sequence[int], width: str = "tiny", clip_name: str = DEFAULT_CLIP_MODEL) -> dict[str, Path]:
    """Write random-weight models in the real file formats and layout, as `ensure_files` would leave them.

    'tiny' is the toy-width preset; 'full' is the real architectures (BigGAN-deep + ViT-B/32) with random
    weights, for benchmarks and real-size checks where the real weights cannot be downloaded.
    """
    written: dict[str, Path] = {}
    for file in files_for_sizes(sizes, clip_model=clip_name):
        path = folder / file.key
        path.parent.mkdir(parents=True, exist_ok=True)
        written[file.key] = path
    for size in sizes:
        config = random_biggan_config(size, width)
        model_path = written[_biggan_key(files_for_sizes([size]), size, "pytorch_model.bin")]
        # As pytorch-pretrained-biggan's converter saved the published files (torch 1.x): the legacy pickle format,
        # a state dict holding each spectral norm's weight_orig, weight_u and weight_v.
        torch.save(biggan_ops.random_biggan(config).state_dict(), model_path, _use_new_zipfile_serialization=False)
        (model_path.parent / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    clip_path = written[_clip_key(files_for_sizes(sizes, clip_model=clip_name))]
    clip_model.save_torchscript_archive(clip_model.random_clip(width, architecture=clip_name), clip_path)
    return written


def random_biggan_config(size: int, width: str) -> BigGANConfig:
    """'tiny': the toy preset; 'full': the published layout."""
    if width == "tiny":
        return biggan_ops.config_for_size(size, TINY_CHANNEL_WIDTH, TINY_ATTENTION_RESOLUTION, two_blocks_per_resolution=False)
    return biggan_ops.config_for_size(size)


def _clip_key(files: list[WeightFile]) -> str:
    return next(file.key for file in files if file.key.endswith(".pt"))


def _biggan_key(files: list[WeightFile], size: int, name: str) -> str:
    return next(file.key for file in files if f"biggan-deep-{size}" in file.key and file.key.endswith(name))
