"""`max_batch_size = "auto"`: the batch size chosen from the free memory and each size's memory per slot."""

from __future__ import annotations

import psutil
import torch

from generator.batch_memory import MAX_AUTO_BATCH_SIZE, MIB, StepMemory, batch_size_for, free_memory_bytes

TABLE = {128: StepMemory(per_slot=100 * MIB, fixed=50 * MIB), 512: StepMemory(per_slot=400 * MIB, fixed=200 * MIB)}


def test_the_batch_is_as_large_as_three_quarters_of_the_free_memory_holds():
    # 3/4 of 2,000 MiB = 1,500 MiB; at 512 px (1,500 - 200) // 400 = 3 jobs.
    assert batch_size_for(2_000 * MIB, [512], TABLE) == 3
    # At 128 px (1,500 - 50) // 100 = 14 jobs, held to the most that still pays.
    assert batch_size_for(2_000 * MIB, [128], TABLE) == MAX_AUTO_BATCH_SIZE


def test_the_most_demanding_loaded_size_decides():
    assert batch_size_for(2_000 * MIB, [128, 512], TABLE) == 3


def test_a_worker_short_of_memory_still_runs_one_job():
    assert batch_size_for(100 * MIB, [512], TABLE) == 1
    assert batch_size_for(0, [128], TABLE) == 1


def test_free_memory_on_the_cpu_is_the_available_ram():
    free = free_memory_bytes(torch.device("cpu"))
    assert 0 < free <= psutil.virtual_memory().total
