"""`bigsleep doctor`: check a machine for generating images, and say how to fix what is wrong.

The machine's checks: the generator's configuration, Python, torch, the GPU, the configured device, and the
weights with their checksums. A GPU machine that only runs workers needs nothing more; the bot's own checks (its
data folder, database and Discord token) are `bigsleep-bot doctor` (bot.doctor), which runs these too.

Each check gives OK, WARN (works, but not as it should) or FAIL (it cannot work), with a fix for anything that is
not OK. A check that itself breaks is reported as FAIL rather than ending the report: an admin with a
half-broken install is exactly who runs this.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from generator.settings import GeneratorSettings, SettingsError, config_files, load_generator_settings

Status = Literal["OK", "WARN", "FAIL"]
Settings = TypeVar("Settings", bound=GeneratorSettings)

MIN_PYTHON = (3, 11)


@dataclass(frozen=True)
class Finding:
    status: Status
    topic: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def diagnose(config: Path | None = None, *, environ: Mapping[str, str] | None = None) -> list[Finding]:
    """Every check of the machine, in the order an admin would fix things."""
    findings: list[Finding] = []
    settings = check_settings(findings, GeneratorSettings, load_generator_settings, config, environ)
    check_machine(findings, settings)
    return findings


def check_machine(findings: list[Finding], settings: GeneratorSettings) -> None:
    """Python, torch, the GPU, the configured device and the weights `settings` need."""
    findings.append(_check_python())
    torch_ok = guarded(findings, "torch", lambda: _check_torch(findings))
    if torch_ok:
        guarded(findings, "gpu", lambda: findings.append(_check_gpu()))
        guarded(findings, "device", lambda: findings.append(_check_device(settings.device)))
    guarded(findings, "weights", lambda: findings.extend(_check_weights(settings)))


def format_report(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"{finding.status:<5} {finding.topic:<9} {finding.detail}")
        if finding.fix:
            lines.append(f"{'':<15} fix: {finding.fix}")
    failures = sum(f.status == "FAIL" for f in findings)
    warnings = sum(f.status == "WARN" for f in findings)
    if failures:
        summary = f"{failures} problem{'s' * (failures != 1)} to fix before the bot can work"
        summary += f", and {warnings} warning{'s' * (warnings != 1)}." if warnings else "."
    elif warnings:
        summary = f"Ready, with {warnings} warning{'s' * (warnings != 1)}."
    else:
        summary = "Everything looks ready."
    return "\n".join([*lines, "", summary])


def guarded(findings: list[Finding], topic: str, check: Callable[[], object]) -> object:
    """`check()`, or a FAIL line for `topic` when the check itself raises."""
    try:
        return check()
    except Exception as error:  # noqa: BLE001 (a broken install must still get a report)
        findings.append(Finding("FAIL", topic, f"the check itself failed: {type(error).__name__}: {error}",
                                "reinstall with scripts/setup-venv (or rebuild the image), then run doctor again"))
        return None


# ---- configuration -------------------------------------------------------------------------------------


def check_settings(
    findings: list[Finding],
    settings_cls: type[Settings],
    load: Callable[[Path | None], Settings],
    config: Path | None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """A config line for `load(config)`; the settings, or the defaults when they do not load (the other checks
    then run with those)."""
    environ = os.environ if environ is None else environ
    settings = guarded(findings, "config", lambda: _check_config(findings, settings_cls, load, config, environ))
    return settings if settings is not None else settings_cls.model_construct()


def _check_config(findings: list[Finding], settings_cls: type[Settings], load: Callable[[Path | None], Settings],
                  config: Path | None, environ: Mapping[str, str]) -> Settings:
    try:
        settings = load(config)
    except SettingsError as error:
        problems = str(error).splitlines()
        findings.append(Finding(
            "FAIL", "config", "the settings do not load: " + "; ".join(problems),
            "correct or remove each key named, in the file or the BIGSLEEP_* variable shown (every key and its "
            "default is in config/default.toml); "
            "the checks below use the defaults",
        ))
        return settings_cls.model_construct()  # the defaults, without reading the broken sources again
    files = ", ".join(str(path) for path in config_files(config)) or "no file (built-in defaults)"
    overridden = sorted(name for name in environ if name.startswith("BIGSLEEP_"))
    from_env = f", and {len(overridden)} BIGSLEEP_* variable{'s' * (len(overridden) != 1)}" if overridden else ""
    findings.append(Finding("OK", "config", f"settings load from {files}{from_env}; models = {settings.models!r}"))
    return settings


# ---- python, torch, gpu, device ------------------------------------------------------------------------


def _check_python() -> Finding:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        return Finding("FAIL", "python", f"Python {version} is too old", "install Python 3.11 or newer")
    return Finding("OK", "python", f"Python {version} ({sys.executable})")


def _pinned_torch() -> str | None:
    from importlib import metadata

    try:
        requirements = metadata.requires("bigsleep-bot") or []
    except metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        match = re.fullmatch(r"torch\s*==\s*([\w.]+)", requirement.split(";")[0].strip())
        if match:
            return match.group(1)
    return None


def _check_torch(findings: list[Finding]) -> bool:
    try:
        import torch
    except Exception as error:  # noqa: BLE001 (a broken wheel raises anything: OSError, ImportError, ...)
        findings.append(Finding("FAIL", "torch", f"torch does not import ({type(error).__name__}: {error})",
                                "reinstall: scripts/setup-venv (or rebuild the Docker image)"))
        return False
    installed = torch.__version__
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    pinned = _pinned_torch()
    if pinned and installed.split("+")[0] != pinned:
        findings.append(Finding("WARN", "torch", f"torch {installed} ({build}) is installed, but bigsleep-bot pins {pinned}",
                                f"reinstall the pinned version: scripts/setup-venv, or pip install torch=={pinned}"))
    else:
        findings.append(Finding("OK", "torch", f"torch {installed} ({build})"))
    return True


def _check_gpu() -> Finding:
    import warnings

    import torch

    if torch.cuda.is_available():
        gpus = []
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            gpus.append(f"cuda:{index} {properties.name} ({properties.total_memory / 2**30:.0f} GiB)")
        return Finding("OK", "gpu", "; ".join(gpus))
    slow = "no usable CUDA GPU: generation will be very slow (minutes per image even at 128 px)"
    if not torch.version.cuda:
        return Finding("WARN", "gpu", f"{slow}; this torch is a CPU-only build",
                       "install the CUDA build (torch from PyPI on Linux x86_64 is one: scripts/setup-venv), "
                       "or keep the CPU and use /imagine quality:cpu")
    reason = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.cuda.init()
        except Exception as error:  # noqa: BLE001 (torch's own words for why: no driver, driver too old, no device)
            reason = f" ({str(error).strip().splitlines()[0]})"
    return Finding("WARN", "gpu", slow + reason,
                   "install the NVIDIA driver (nvidia-smi must list the GPU); in Docker, give the container the "
                   "GPU (docker run --gpus all, or the compose file's GPU reservation in the README) with the "
                   "NVIDIA Container Toolkit installed; or keep the CPU and use /imagine quality:cpu")


def _check_device(name: str) -> Finding:
    import torch

    from generator.models import ModelLoadError, resolve_device

    fix = 'set device = "auto" (CUDA when present, else the CPU) or "cpu" in config/local.toml, or BIGSLEEP_DEVICE'
    try:
        device = resolve_device(name)
        torch.zeros(1, device=device).add_(1)  # touching the device is the only real proof it works
    except (ModelLoadError, RuntimeError, AssertionError) as error:
        return Finding("FAIL", "device", f"the configured device {name!r} cannot be used: {error}", fix)
    return Finding("OK", "device", f"device = {name!r} runs on {device}")


# ---- weights -------------------------------------------------------------------------------------------


def _check_weights(settings: GeneratorSettings) -> list[Finding]:
    from generator.weights import (
        MIRROR_ENV,
        OFFLINE_ENV,
        WEIGHTS_DIR_ENV,
        WeightsSource,
        files_for_sizes,
        inspect_files,
        weights_root,
    )

    if settings.models != "full":
        return [Finding("WARN", "weights", f"models = {settings.models!r}: no weights needed, but every image is noise",
                        'set models = "full" (config/local.toml or BIGSLEEP_MODELS=full) for real images')]
    try:
        source = WeightsSource.from_env()
    except ValueError as error:
        return [Finding("FAIL", "weights", str(error), f"set {OFFLINE_ENV}=1 or {OFFLINE_ENV}=0, or unset it")]
    root = weights_root(source)
    sizes = ", ".join(map(str, settings.worker.sizes))
    statuses = inspect_files(files_for_sizes(settings.worker.sizes, source.mirror, settings.worker.clip_model), source)
    missing = [status for status in statuses if status.missing]
    broken = [status for status in statuses if status.problem and not status.missing]
    findings = [Finding("FAIL", "weights", status.problem) for status in broken]
    if missing:
        names = ", ".join(status.weight_file.key for status in missing)
        what = f"{len(missing)} of {len(statuses)} weight files for sizes {sizes} are missing from {root}: {names}"
        place = f"put them in {root} under exactly these names"
        if source.local_dir is not None:
            findings.append(Finding("FAIL", "weights", what + f" (the bot never downloads while {WEIGHTS_DIR_ENV} is set)",
                                    f"{place} (their URLs: `bigsleep download` prints them), or unset "
                                    f"{WEIGHTS_DIR_ENV} and run `bigsleep download`"))
        elif source.offline:
            findings.append(Finding("FAIL", "weights", what + f" (and {OFFLINE_ENV} forbids downloading them)",
                                    f"run `bigsleep download` on a machine with internet access and {place}, or "
                                    f"unset {OFFLINE_ENV} and run `bigsleep download` here"))
        else:
            mirror = f" from {source.mirror} ({MIRROR_ENV})" if source.mirror else ""
            findings.append(Finding("WARN", "weights", what + "; the bot would download them on its first start",
                                    f"run `bigsleep download` now to fetch and verify them{mirror}, or {place} "
                                    f"(or in a folder named by {WEIGHTS_DIR_ENV})"))
    if not missing and not broken:
        findings.append(Finding("OK", "weights", f"all {len(statuses)} weight files for sizes {sizes} present and verified in {root}"))
    return findings
