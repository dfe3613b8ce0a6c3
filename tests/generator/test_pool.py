"""Choosing the workers without torch: the local devices ("all" counts GPUs with nvidia-smi), each worker's name
and threads, and the settings that pick a backend (worker.backend, worker.devices, [cluster]) refusing what
cannot work."""

from __future__ import annotations

import pytest

from generator.pool import count_gpus, local_configs, local_devices
from generator.ray_pool import RayPoolConfig
from generator.settings import SettingsError, load_generator_settings
from generator.wire import WorkerConfig

NVIDIA_SMI_L = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5e2b0f9c-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5e2b0f9c-0000-0000-0000-000000000001)
"""


def fake_nvidia_smi(tmp_path, output: str, code: int = 0) -> list[str]:
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\ncat <<'END'\n{output}END\nexit {code}\n")
    tool.chmod(0o755)
    return [str(tool), "-L"]


def test_gpus_are_counted_from_nvidia_smi_and_none_without_it(tmp_path):
    assert count_gpus(fake_nvidia_smi(tmp_path, NVIDIA_SMI_L)) == 2
    assert count_gpus(fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed: no driver\n", code=9)) == 0
    assert count_gpus([str(tmp_path / "no-such-tool"), "-L"]) == 0


def test_devices_all_is_one_worker_per_gpu_and_one_on_the_default_device_without_gpus():
    assert local_devices("all", "auto", gpu_count=2) == ["cuda:0", "cuda:1"]
    assert local_devices("all", "cpu", gpu_count=0) == ["cpu"]
    assert local_devices((), "auto") == ["auto"]
    assert local_devices(("cuda:1", "cuda:0"), "auto") == ["cuda:1", "cuda:0"]


def test_each_local_worker_has_a_name_its_device_and_a_share_of_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    base = WorkerConfig(models_kind="tiny", sizes=(128,))
    (alone,) = local_configs(base, ["cpu"])
    assert (alone.worker_id, alone.device, alone.torch_threads) == ("local", "cpu", None)  # torch's own default
    cpus = local_configs(base, ["cpu", "cpu"])
    assert [(c.worker_id, c.device, c.torch_threads) for c in cpus] == [("local-0", "cpu", 4), ("local-1", "cpu", 4)]
    gpus = local_configs(base, ["cuda:0", "cuda:1"], cpu_threads=2)
    assert [(c.worker_id, c.device, c.torch_threads) for c in gpus] == [("local-0", "cuda:0", None), ("local-1", "cuda:1", None)]
    assert [c.torch_threads for c in local_configs(base, ["cpu"], cpu_threads=1)] == [1]


@pytest.mark.parametrize("variables, complaint", [
    ({"BIGSLEEP_WORKER__BACKEND": "slurm"}, "'worker.backend'"),
    ({"BIGSLEEP_WORKER__DEVICES": "gpu0"}, 'devices must be "all" or a list of "cpu", "cuda" or "cuda:N"'),
    ({"BIGSLEEP_WORKER__DEVICES": '["cuda:0", "cuda:0"]'}, "cuda:0 more than once"),
    ({"BIGSLEEP_WORKER__BACKEND": "ray"}, "needs cluster.address"),
    ({"BIGSLEEP_WORKER__BACKEND": "ray", "BIGSLEEP_CLUSTER__ADDRESS": "head:6379", "BIGSLEEP_CLUSTER__GPUS_PER_WORKER": "0"},
     "need cluster.max_workers"),
    ({"BIGSLEEP_WORKER__BACKEND": "ray", "BIGSLEEP_CLUSTER__ADDRESS": "head:6379", "BIGSLEEP_WORKER__DEVICES": "all"},
     "worker.devices is for worker.backend"),
    ({"BIGSLEEP_CLUSTER__ADRESS": "head:6379"}, "cluster.ADRESS"),
])
def test_backend_settings_that_cannot_work_stop_the_start_naming_the_key(monkeypatch, variables, complaint):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_generator_settings()
    assert complaint.lower() in str(refused.value).lower()


def test_backend_settings_that_work(monkeypatch):
    monkeypatch.setenv("BIGSLEEP_WORKER__DEVICES", "cpu, cpu")
    assert load_generator_settings().worker.devices == ("cpu", "cpu")
    monkeypatch.setenv("BIGSLEEP_WORKER__DEVICES", "ALL")
    assert load_generator_settings().worker.devices == "all"
    monkeypatch.delenv("BIGSLEEP_WORKER__DEVICES")
    monkeypatch.setenv("BIGSLEEP_WORKER__BACKEND", "ray")
    monkeypatch.setenv("BIGSLEEP_CLUSTER__ADDRESS", "10.0.0.5:6379")
    settings = load_generator_settings()
    assert (settings.worker.backend, settings.cluster.address, settings.cluster.gpus_per_worker) == ("ray", "10.0.0.5:6379", 1.0)
    with pytest.raises(ValueError, match="need max_workers"):
        RayPoolConfig(address="h:1", worker=WorkerConfig(), gpus_per_worker=0)
