"""worker.compile: the step's networks through torch.compile, batches padded to buckets, warmed up at start.

torch.compile runs here with its 'aot_eager' backend: the same tracing, graph capture and autograd as inductor,
without building C++ kernels (minutes on 2 cores). What inductor itself costs and gains is measured by
benchmarks/compile_start.py.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from generator import compiled as compiled_module
from generator.compiled import StepNetworks, batch_bucket, compile_cache_folder, crop_bucket, should_compile
from generator.engine import DreamEngine
from generator.protocol import DreamSpec
from generator.settings import SettingsError, load_generator_settings
from generator.wire import WorkerConfig
from generator.worker import ready_message, start_engine

TEST_BACKEND = "aot_eager"


def test_batches_and_crops_are_padded_to_few_shapes():
    assert [batch_bucket(images) for images in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, 9]
    assert [crop_bucket(crops) for crops in (1, 8, 32, 33, 96, 128, 129)] == [1, 8, 32, 64, 128, 128, 256]


def test_auto_compiles_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert should_compile("auto", cuda) and not should_compile("auto", cpu)
    assert should_compile("on", cpu) and not should_compile("off", cuda)
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        should_compile("yes", cpu)


def test_a_bad_compile_setting_is_named(monkeypatch):
    monkeypatch.setenv("BIGSLEEP_WORKER__COMPILE", "on")
    assert load_generator_settings().worker.compile == "on"
    monkeypatch.setenv("BIGSLEEP_WORKER__COMPILE", "fast")
    with pytest.raises(SettingsError, match="compile"):
        load_generator_settings()
    with pytest.raises(ValueError, match="compile must be one of"):
        WorkerConfig(compile="fast")


def test_compiled_artefacts_are_kept_per_torch_version_and_device(tmp_path):
    folder = compile_cache_folder(tmp_path, torch.device("cuda", 1))
    assert folder.parent == tmp_path / "compiled"
    assert folder.name == f"torch-{torch.__version__}-cuda"


def _losses_and_gradients(engine: DreamEngine, seeds: list[int], cutouts: list[int]):
    jobs = [engine.start(DreamSpec(prompt="a red apple", seed=seed, size=128, steps=3, cutouts=cut)) for seed, cut in zip(seeds, cutouts)]
    losses = engine.losses(jobs)
    losses.sum().backward()
    return losses.detach(), [(job.latents.z.grad.clone(), job.latents.class_logits.grad.clone()) for job in jobs]


def test_a_padded_compiled_batch_computes_what_the_eager_step_does(tiny_models):
    eager = DreamEngine(tiny_models)
    compiled = DreamEngine(tiny_models, StepNetworks(tiny_models, compiled=True, backend=TEST_BACKEND))
    # Three images (padded to 4) with 8 + 8 + 16 crops (padded to 32): padding rows must not leak into real ones.
    expected_losses, expected_gradients = _losses_and_gradients(eager, [1, 2, 3], [8, 8, 16])
    losses, gradients = _losses_and_gradients(compiled, [1, 2, 3], [8, 8, 16])
    torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-5)
    # A batch of 4 rather than 3 takes other matrix kernels, so sums round differently: compare each gradient
    # to its own scale (a padding row leaking in would be off by its whole size).
    for got, expected in zip(sum(gradients, ()), sum(expected_gradients, ())):
        assert (got - expected).norm() <= 1e-4 * expected.norm()


def test_the_same_seed_gives_the_same_pixels_compiled(tiny_models):
    def final_pixels() -> torch.Tensor:
        engine = DreamEngine(tiny_models, StepNetworks(tiny_models, compiled=True, backend=TEST_BACKEND))
        job = engine.start(DreamSpec(prompt="a red apple", seed=5, size=128, steps=3, cutouts=8))
        for _ in range(3):
            engine.step([job])
        return engine._render_average(job)

    assert torch.equal(final_pixels(), final_pixels())


def test_warm_up_steps_each_size_once_per_bucket(tiny_models):
    networks = StepNetworks(tiny_models, compiled=True, backend=TEST_BACKEND)
    stepped: list[tuple[int, int]] = []
    networks.warm_up(lambda size, images: stepped.append((size, images)), [128, 256], max_batch_size=3)
    assert stepped == [(128, 1), (128, 2), (128, 4), (256, 1), (256, 2), (256, 4)]
    eager = StepNetworks(tiny_models)
    assert eager.warm_up(lambda size, images: stepped.append((size, images)), [128], max_batch_size=8) == 0.0
    assert len(stepped) == 6


def test_a_failing_compile_falls_back_to_the_eager_step_with_one_line(tiny_models, caplog):
    networks = StepNetworks(tiny_models, compiled=True, backend=TEST_BACKEND)

    def broken_compiler(size: int, images: int) -> None:
        raise RuntimeError("C++ compile failed: cc1plus killed")

    with caplog.at_level(logging.WARNING, logger="bigsleep.worker"):
        networks.warm_up(broken_compiler, [128], max_batch_size=4)
    assert not networks.compiled
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warnings == ["compiling the step failed (RuntimeError: C++ compile failed: cc1plus killed); running it uncompiled"]
    # And it still steps, eagerly.
    engine = DreamEngine(tiny_models, networks)
    job = engine.start(DreamSpec(prompt="a red apple", seed=1, size=128, steps=2, cutouts=8))
    assert len(engine.step([job])) == 1


def test_a_compiled_step_that_fails_later_is_taken_again_eagerly_and_no_job_fails(tiny_models, caplog):
    networks = StepNetworks(tiny_models, compiled=True, backend=TEST_BACKEND)
    engine = DreamEngine(tiny_models, networks)
    job = engine.start(DreamSpec(prompt="a red apple", seed=1, size=128, steps=3, cutouts=8))
    reference = DreamEngine(tiny_models)
    same_job = reference.start(DreamSpec(prompt="a red apple", seed=1, size=128, steps=3, cutouts=8))

    def graph_that_does_not_build(*args):
        raise RuntimeError("a shape first seen now did not build")

    networks._encode = graph_that_does_not_build
    with caplog.at_level(logging.WARNING, logger="bigsleep.worker"):
        losses = engine.step([job])
    assert not networks.compiled and job.step == 1
    assert losses == pytest.approx(reference.step([same_job]), rel=1e-6)
    assert torch.equal(job.latents.z, same_job.latents.z)
    assert [record.getMessage() for record in caplog.records] == [
        "compiling the step failed (RuntimeError: a shape first seen now did not build); running it uncompiled"]


def test_out_of_memory_in_a_compiled_step_is_left_to_the_worker(tiny_models):
    networks = StepNetworks(tiny_models, compiled=True, backend=TEST_BACKEND)
    engine = DreamEngine(tiny_models, networks)
    job = engine.start(DreamSpec(prompt="a red apple", seed=1, size=128, steps=3, cutouts=8))

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    networks._render = out_of_memory
    with pytest.raises(torch.OutOfMemoryError):
        engine.step([job])
    assert networks.compiled and job.step == 0


def _config(**changes) -> WorkerConfig:
    return WorkerConfig(models_kind="tiny", sizes=(128,), device="cpu", max_batch_size=2, compile_backend=TEST_BACKEND,
                        log_level="WARNING", **changes)


def test_a_worker_asked_to_compile_warms_up_and_caches_beside_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGSLEEP_CACHE_DIR", str(tmp_path / "weights"))
    for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(variable, "restored after the test")
    monkeypatch.setattr(compiled_module, "missing_compiler", lambda: None)
    warmed_up: list[int] = []
    monkeypatch.setattr(DreamEngine, "warm_up", lambda engine, batch: warmed_up.append(batch) or 0.0)
    engine, batch_size = start_engine(_config(compile="on"))
    assert engine.networks.compiled and batch_size == 2 and warmed_up == [2]
    assert ready_message(engine, "here", batch_size).compiled
    cache = compile_cache_folder(tmp_path / "weights", torch.device("cpu"))
    assert cache.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache)


def test_without_a_compiler_the_worker_runs_uncompiled_and_says_why(monkeypatch, caplog):
    monkeypatch.setattr(compiled_module, "missing_compiler", lambda: "no C++ compiler found (InvalidCxxCompiler)")
    with caplog.at_level(logging.WARNING, logger="bigsleep.worker"):
        engine, batch_size = start_engine(_config(compile="on"))
    assert not engine.networks.compiled
    assert not ready_message(engine, "here", batch_size).compiled
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warnings == ["not compiling the step (no C++ compiler found (InvalidCxxCompiler)): running it uncompiled"]


def test_auto_leaves_a_cpu_worker_uncompiled(monkeypatch):
    monkeypatch.setattr(compiled_module, "missing_compiler", lambda: pytest.fail("auto on the CPU must not look for a compiler"))
    engine, _ = start_engine(_config())
    assert not engine.networks.compiled
