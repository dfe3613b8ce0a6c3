"""Models load through the same function users call, from files in the real formats.

Tiny random models are written to disk as the published files are (pytorch-pretrained-biggan's `config.json` +
legacy-format `pytorch_model.bin`, CLIP as a TorchScript archive; see test_real_formats.py), then found in a local
folder or downloaded from a server on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from generator.engine import dream
from generator.models import ModelLoadError, load_biggan, load_models, write_random_weights
from generator.protocol import DreamSpec
from generator.weights import MissingWeightsError, WeightsSource, files_for_sizes

CPU = torch.device("cpu")
SPEC = DreamSpec(prompt="a lighthouse", seed=5, steps=2, size=128, cutouts=2)


@pytest.fixture(scope="module")
def tiny_weights_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    write_random_weights(folder, [128])
    return folder


def catalog_for(folder: Path, mirror: str | None = None):
    """The real catalogue, with the checksums of our tiny files in place of the published ones."""
    return [
        dataclasses.replace(file, sha256=hashlib.sha256((folder / file.key).read_bytes()).hexdigest(), size=None)
        for file in files_for_sizes([128], mirror)
    ]


def test_written_files_are_in_the_formats_the_libraries_read(tiny_weights_folder):
    keys = sorted(str(p.relative_to(tiny_weights_folder)) for p in tiny_weights_folder.rglob("*") if p.is_file())
    assert keys == ["biggan-deep-128/config.json", "biggan-deep-128/pytorch_model.bin", "clip/ViT-B-32.pt"]
    state = torch.load(tiny_weights_folder / "biggan-deep-128/pytorch_model.bin", weights_only=True)
    assert "generator.gen_z.weight_orig" in state and "embeddings.weight" in state


def test_loads_from_a_local_folder_without_the_network(tiny_weights_folder, tmp_path, unreachable_url):
    source = WeightsSource(cache_dir=tmp_path / "cache", local_dir=tiny_weights_folder, mirror=unreachable_url, progress=False)
    models = load_models("full", [128], CPU, torch.float32, source, catalog=catalog_for(tiny_weights_folder, unreachable_url))
    assert models.kind == "full" and models.sizes == [128]
    # the same networks as the in-memory tiny preset (same seeds), so the same picture
    from_disk = np.asarray(dream(models, SPEC).image)
    in_memory = np.asarray(dream(load_models("tiny", [128], CPU, torch.float32), SPEC).image)
    assert np.array_equal(from_disk, in_memory)


def test_downloads_into_the_cache_then_loads(tiny_weights_folder, tmp_path, server):
    for file in files_for_sizes([128]):
        server.serve(file.key, (tiny_weights_folder / file.key).read_bytes())
    source = WeightsSource(cache_dir=tmp_path / "cache", mirror=server.url, progress=False)
    models = load_models("full", [128], CPU, torch.float32, source, catalog=catalog_for(tiny_weights_folder, server.url))
    assert (tmp_path / "cache/clip/ViT-B-32.pt").is_file()
    assert np.asarray(dream(models, SPEC).image).shape == (128, 128, 3)
    requests_before = len(server.requests)
    load_models("full", [128], CPU, torch.float32, source, catalog=catalog_for(tiny_weights_folder, server.url))
    assert len(server.requests) == requests_before, "cached weights must load without touching the network"


def test_offline_without_weights_names_every_missing_file(tmp_path):
    source = WeightsSource(cache_dir=tmp_path / "cache", offline=True, progress=False)
    with pytest.raises(MissingWeightsError) as caught:
        load_models("full", [256], CPU, torch.float32, source)
    message = str(caught.value)
    for file in files_for_sizes([256]):
        assert file.key in message and file.url in message
    assert str(tmp_path / "cache") in message


def test_a_checkpoint_that_does_not_match_its_config_is_refused(tiny_weights_folder, tmp_path):
    folder = tmp_path / "mixed"
    write_random_weights(folder, [128])
    other = tmp_path / "other"
    write_random_weights(other, [256])
    (folder / "biggan-deep-128/pytorch_model.bin").write_bytes((other / "biggan-deep-256/pytorch_model.bin").read_bytes())
    source = WeightsSource(cache_dir=tmp_path / "cache", local_dir=folder, progress=False)
    with pytest.raises(ModelLoadError, match="does not match"):
        load_models("full", [128], CPU, torch.float32, source, catalog=catalog_for(folder))


REPEATABLE_PROBE = """
import os, torch
from generator.models import use_repeatable_kernels
for device in ("cpu", "cuda"):
    use_repeatable_kernels(torch.device(device))
    print(device, torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
          os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
"""


def test_cuda_runs_use_repeatable_kernels_and_the_cpu_is_left_alone():
    # A fresh interpreter: the switch is process-wide, as it is in the worker and the CLI that call it.
    environment = {key: value for key, value in os.environ.items() if key != "CUBLAS_WORKSPACE_CONFIG"}
    result = subprocess.run([sys.executable, "-c", REPEATABLE_PROBE], capture_output=True, text=True, timeout=120,
                            check=True, env=environment, cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip().splitlines()[-2:] == ["cpu False False None", "cuda True True :4096:8"]


@pytest.mark.parametrize("dropped", [
    ["generator.gen_z.weight_u"],
    ["generator.layers.0.conv_1.weight_v", "generator.layers.1.bn_2.scale.weight_u", "generator.conv_to_rgb.weight_v"],
])
def test_a_checkpoint_without_its_spectral_norm_vectors_is_refused(tmp_path, dropped):
    folder = tmp_path / "weights"
    write_random_weights(folder, [128])
    weights = folder / "biggan-deep-128/pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    for key in dropped:
        del state[key]
    torch.save(state, weights, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelLoadError) as caught:
        load_biggan(weights.parent)
    message = str(caught.value)
    assert str(weights) in message and "spectral-norm" in message
    assert all(key in message for key in dropped), message
