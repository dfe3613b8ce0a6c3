"""`bigsleep doctor`: the machine's checks (the generator's config, Python, torch, GPU, device, weights). The bot's
own checks (data folder, database, token) are `bigsleep-bot doctor`'s: tests/bot/test_doctor.py.

Most cases call the checks in this process (torch is already loaded here); one runs the real command.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from doctor_helpers import by_topic, start_clean

from generator import weights
from generator.doctor import diagnose

FAKE_CLIP = b"a stand-in for CLIP " * 20


@pytest.fixture
def setup(tmp_path, monkeypatch) -> Path:
    """A clean environment, the bot's config for the smallest real setup, and an empty cache; returns the config."""
    # The bot's keys and sections (data_dir, [limits], [worker] timelapse) share the file: the generator passes them over.
    return start_clean(monkeypatch, tmp_path, f'data_dir = "{tmp_path / "data"}"\ndevice = "cpu"\n'
                                              "[worker]\nsizes = [128]\ntimelapse = true\n[limits]\ndefault_size = 128\n")


# ---- weights --------------------------------------------------------------------------------------------


def test_missing_weights_are_named_with_the_download_command_as_the_fix(setup):
    (weights_line,) = by_topic(diagnose(setup), "weights")

    assert weights_line.status == "WARN"  # the bot would still fetch them on its first start
    for key in ("clip/ViT-B-32.pt", "biggan-deep-128/config.json", "biggan-deep-128/pytorch_model.bin"):
        assert key in weights_line.detail
    assert "biggan-deep-256" not in weights_line.detail  # only what the configured sizes need
    assert "`bigsleep download`" in weights_line.fix and "exactly these names" in weights_line.fix


def test_missing_weights_where_nothing_may_be_downloaded_fail(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("BIGSLEEP_WEIGHTS_DIR", str(tmp_path / "weights"))
    (weights_line,) = by_topic(diagnose(setup), "weights")
    assert weights_line.status == "FAIL" and str(tmp_path / "weights") in weights_line.detail
    assert "BIGSLEEP_WEIGHTS_DIR" in weights_line.fix and "clip/ViT-B-32.pt" in weights_line.detail

    monkeypatch.delenv("BIGSLEEP_WEIGHTS_DIR")
    monkeypatch.setenv("BIGSLEEP_OFFLINE", "1")
    (weights_line,) = by_topic(diagnose(setup), "weights")
    assert weights_line.status == "FAIL" and "BIGSLEEP_OFFLINE" in weights_line.detail


def test_present_weights_are_verified_and_a_corrupted_one_is_named(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(weights._CLIP_CHECKPOINTS, weights.DEFAULT_CLIP_MODEL,
                        (hashlib.sha256(FAKE_CLIP).hexdigest(), len(FAKE_CLIP)))
    folder = tmp_path / "weights"
    monkeypatch.setenv("BIGSLEEP_WEIGHTS_DIR", str(folder))
    for key, body in (("clip/ViT-B-32.pt", FAKE_CLIP), ("biggan-deep-128/config.json", b"{}"),
                      ("biggan-deep-128/pytorch_model.bin", b"weights")):
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(body)

    (weights_line,) = by_topic(diagnose(setup), "weights")
    assert weights_line.status == "OK" and "all 3 weight files" in weights_line.detail

    (folder / "clip/ViT-B-32.pt").write_bytes(FAKE_CLIP[:-1] + b"!")
    (weights_line,) = by_topic(diagnose(setup), "weights")
    assert weights_line.status == "FAIL" and "clip/ViT-B-32.pt" in weights_line.detail and "SHA-256" in weights_line.detail


def test_tiny_models_need_no_weights_but_are_called_noise(setup, monkeypatch):
    monkeypatch.setenv("BIGSLEEP_MODELS", "tiny")
    (weights_line,) = by_topic(diagnose(setup), "weights")
    assert weights_line.status == "WARN" and "noise" in weights_line.detail


# ---- config, gpu, device, and the command itself --------------------------------------------------------


def test_the_bots_config_is_read_for_the_generators_keys_only(setup, monkeypatch):
    monkeypatch.setenv("BIGSLEEP_QUEUE__MAX_QUEUED_PER_USER", "5")  # the bot's, not the generator's

    findings = diagnose(setup)

    (config_line,) = by_topic(findings, "config")
    assert config_line.status == "OK" and str(setup) in config_line.detail and "2 BIGSLEEP_* variables" in config_line.detail
    # Only the machine is checked: a GPU host that only runs workers has no database nor token.
    assert [finding.topic for finding in findings] == ["config", "python", "torch", "gpu", "device", "weights"]


def test_a_bad_generator_setting_fails_naming_it_and_the_other_checks_still_run(setup, monkeypatch):
    monkeypatch.setenv("BIGSLEEP_WORKER__SIZES", "[100]")

    findings = diagnose(setup)

    (config_line,) = by_topic(findings, "config")
    assert config_line.status == "FAIL" and "'worker' (in" in config_line.detail
    assert "BIGSLEEP_WORKER__SIZES" in config_line.detail
    assert {"python", "torch", "device", "weights"} <= {f.topic for f in findings}


def test_gpu_and_device_lines_tell_the_truth_about_this_machine(setup, monkeypatch):
    findings = diagnose(setup)

    (gpu_line,) = by_topic(findings, "gpu")
    if torch.cuda.is_available():
        assert gpu_line.status == "OK" and torch.cuda.get_device_name(0) in gpu_line.detail
    else:
        assert gpu_line.status == "WARN" and "very slow" in gpu_line.detail and "--gpus all" in gpu_line.fix
    assert by_topic(findings, "device")[0].status == "OK"

    if not torch.cuda.is_available():
        monkeypatch.setenv("BIGSLEEP_DEVICE", "cuda")
        (device_line,) = by_topic(diagnose(setup), "device")
        assert device_line.status == "FAIL" and "'cuda'" in device_line.detail and 'device = "auto"' in device_line.fix


def test_the_command_prints_each_problem_with_its_fix_and_exits_1(setup, tmp_path):
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("BIGSLEEP_", "DISCORD_"))}
    environment |= {"BIGSLEEP_CACHE_DIR": str(tmp_path / "cache"), "BIGSLEEP_OFFLINE": "1"}

    result = subprocess.run([sys.executable, "-m", "generator", "doctor", "--config", str(setup)],
                            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=180, check=False)

    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    weights_at = next(i for i, line in enumerate(lines) if line.startswith("FAIL  weights"))
    assert "clip/ViT-B-32.pt" in lines[weights_at] and "biggan-deep-128/pytorch_model.bin" in lines[weights_at]
    assert "fix: run `bigsleep download`" in lines[weights_at + 1]
    assert not any("token" in line or "database" in line for line in lines)
    assert lines[-1].startswith("1 problem to fix") and "Traceback" not in result.stderr
