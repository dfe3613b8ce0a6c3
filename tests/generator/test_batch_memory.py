"""`max_batch_size = "auto"`: the batch size chosen from the free memory and each size's memory per slot."""

from __future__ import annotations

from dataclasses import replace

import psutil
import pytest
import torch

from generator import batch_memory
from generator.batch_memory import MAX_AUTO_BATCH_SIZE, MIB, StepMemory, batch_size_for, free_memory_bytes
from generator.engine import DreamEngine
from generator.settings import SettingsError, load_generator_settings
from generator.wire import AUTO_BATCH_SIZE, WorkerConfig
from generator.worker import batch_size_of, ready_message

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


def test_max_batch_size_auto_is_a_setting_and_nothing_else_is(monkeypatch):
    monkeypatch.setenv("BIGSLEEP_WORKER__MAX_BATCH_SIZE", "auto")
    assert load_generator_settings().worker.max_batch_size == "auto"
    monkeypatch.setenv("BIGSLEEP_WORKER__MAX_BATCH_SIZE", "3")
    assert load_generator_settings().worker.max_batch_size == 3
    for wrong in ("lots", "0"):
        monkeypatch.setenv("BIGSLEEP_WORKER__MAX_BATCH_SIZE", wrong)
        with pytest.raises(SettingsError, match="max_batch_size"):
            load_generator_settings()


def test_a_worker_set_to_auto_chooses_from_the_free_memory_and_says_so_when_ready(tiny_models, monkeypatch):
    engine = DreamEngine(tiny_models)
    monkeypatch.setattr(batch_memory, "free_memory_bytes", lambda device: 6_000 * MIB)
    expected = batch_size_for(6_000 * MIB, tiny_models.sizes)
    auto = WorkerConfig(models_kind="tiny", sizes=(128,), device="cpu", max_batch_size=AUTO_BATCH_SIZE)
    assert 1 < expected < MAX_AUTO_BATCH_SIZE
    assert batch_size_of(auto, engine) == expected
    assert ready_message(engine, "here", batch_size_of(auto, engine)).max_batch_size == expected
    assert batch_size_of(replace(auto, max_batch_size=3), engine) == 3
