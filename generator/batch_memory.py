"""How many jobs fit in one batch: `max_batch_size = "auto"` from the free memory and each size's cost per slot.

A step of `b` jobs at one size needs about fixed + b * per_slot bytes on top of the models (benchmarks/memory.py
measures both, with the most cutouts a preset asks for). The batch size is the largest `b` for which the largest
loaded size fits in a share of the memory free when the worker starts, between 1 and MAX_AUTO_BATCH_SIZE.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psutil
import torch

MIB = 2**20
# Leave a quarter of the free memory to everything else (the allocator's fragmentation, the bot, the system).
USABLE_SHARE = 0.75
# Past 8 jobs a GPU step gains little throughput per job (benchmarks/throughput.py), and each job waits longer.
MAX_AUTO_BATCH_SIZE = 8


@dataclass(frozen=True)
class StepMemory:
    """Memory of one step at one size, above the models' own: `fixed` once, `per_slot` for each job in the batch."""

    per_slot: int
    fixed: int


# Real-size models (BigGAN-deep, CLIP ViT-B/32), 64 cutouts per job, fp32. ESTIMATES, to be replaced by what
# benchmarks/memory.py measures: autograd keeps 319 MiB for one 128 px BigGAN-deep image (measured with saved-tensor
# hooks), and CLIP ViT-B/32 about 20 MiB per cutout (12 blocks of 50 tokens: the attention's projections and the
# MLP's 3072-wide activations); BigGAN's share taken to double from one size to the next. On CUDA, CLIP's share in fp16 is
# half of this: the table is an upper bound there.
STEP_MEMORY: dict[int, StepMemory] = {
    128: StepMemory(per_slot=1_700 * MIB, fixed=200 * MIB),
    256: StepMemory(per_slot=2_000 * MIB, fixed=200 * MIB),
    512: StepMemory(per_slot=2_600 * MIB, fixed=300 * MIB),
}


def free_memory_bytes(device: torch.device) -> int:
    """Memory a step could still use: free GPU memory on CUDA, available RAM on the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return psutil.virtual_memory().available


def batch_size_for(free_bytes: int, sizes: Iterable[int], table: dict[int, StepMemory] = STEP_MEMORY) -> int:
    """The largest batch whose step at the most demanding of `sizes` fits in USABLE_SHARE of `free_bytes`;
    at least 1 (a worker always runs one job), at most MAX_AUTO_BATCH_SIZE."""
    usable = free_bytes * USABLE_SHARE
    fitting = min((usable - table[size].fixed) // table[size].per_slot for size in sizes)
    return int(max(1, min(MAX_AUTO_BATCH_SIZE, fitting)))
