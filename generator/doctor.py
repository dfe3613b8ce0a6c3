"""`bigsleep doctor`: check a machine for running the bot, and say how to fix what is wrong.

Each check gives OK, WARN (works, but not as it should) or FAIL (the bot cannot work), with a fix for anything
that is not OK. A check that itself breaks is reported as FAIL rather than ending the report: an admin with a
half-broken install is exactly who runs this.

Never prints the Discord token or anything derived from it.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["OK", "WARN", "FAIL"]

DISCORD_API_BASE = "https://discord.com/api/v10"
DISCORD_CHECK_TIMEOUT_S = 5.0
MIN_PYTHON = (3, 11)
# Below this much free space the job database and the images it keeps will soon stop growing.
LOW_DISK_BYTES = 1 << 30
# Three base64url parts joined by dots: the bot's id, a timestamp, an HMAC (Discord's bot token format).
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{17,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}")
_PORTAL = "Discord Developer Portal > your application > Bot > Reset Token"


@dataclass(frozen=True)
class Finding:
    status: Status
    topic: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def diagnose(config: Path | None = None, *, offline: bool = False, environ: Mapping[str, str] | None = None) -> list[Finding]:
    """Run every check, in the order an admin would fix things."""
    environ = os.environ if environ is None else environ
    findings: list[Finding] = []
    settings = _guarded(findings, "config", lambda: _check_config(findings, config, environ))
    if settings is None:
        from bot.settings import BotSettings

        settings = BotSettings.model_construct()
    findings.append(_check_python())
    torch_ok = _guarded(findings, "torch", lambda: _check_torch(findings))
    if torch_ok:
        _guarded(findings, "gpu", lambda: findings.append(_check_gpu()))
        _guarded(findings, "device", lambda: findings.append(_check_device(settings.device)))
    _guarded(findings, "weights", lambda: findings.extend(_check_weights(settings)))
    _guarded(findings, "data dir", lambda: findings.extend(_check_data_dir(settings)))
    _guarded(findings, "token", lambda: findings.extend(_check_token(environ, offline=offline)))
    return findings


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


def _guarded(findings: list[Finding], topic: str, check: Callable[[], object]) -> object:
    try:
        return check()
    except Exception as error:  # noqa: BLE001 (a broken install must still get a report)
        findings.append(Finding("FAIL", topic, f"the check itself failed: {type(error).__name__}: {error}",
                                "reinstall with scripts/setup-venv (or rebuild the image), then run doctor again"))
        return None


# ---- configuration -------------------------------------------------------------------------------------


def _check_config(findings: list[Finding], config: Path | None, environ: Mapping[str, str]):
    from bot.settings import BotSettings, SettingsError, config_files, load_settings

    try:
        settings = load_settings(config)
    except SettingsError as error:
        problems = str(error).splitlines()
        findings.append(Finding(
            "FAIL", "config", "the settings do not load: " + "; ".join(problems),
            "correct or remove each key named, in the file or the BIGSLEEP_* variable shown (every key and its "
            "default is in config/default.toml); "
            "the checks below use the defaults",
        ))
        settings = BotSettings.model_construct()  # the defaults, without reading the broken sources again
    else:
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


def _check_weights(settings) -> list[Finding]:
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
    statuses = inspect_files(files_for_sizes(settings.worker.sizes, source.mirror), source)
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


# ---- data dir and database -----------------------------------------------------------------------------


def _check_data_dir(settings) -> list[Finding]:
    data_dir = Path(settings.data_dir).expanduser()
    shown = str(data_dir.resolve())
    fix_dir = ("set data_dir (config/local.toml or BIGSLEEP_DATA_DIR) to a folder the bot's user can write, or "
               "give that user the folder (chown); in Docker, the /data volume must be writable by uid 10001")
    if data_dir.exists() and not data_dir.is_dir():
        return [Finding("FAIL", "data dir", f"data_dir {shown} is a file, not a folder", fix_dir)]
    existing = data_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return [Finding("FAIL", "data dir", f"data_dir {shown} cannot be created: {existing} is a file", fix_dir)]
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return [Finding("FAIL", "data dir", f"cannot write in {existing} ({error.strerror or error})", fix_dir)]
    findings = []
    free = shutil.disk_usage(existing).free
    created = "" if data_dir.exists() else " (it will be created on start)"
    if free < LOW_DISK_BYTES:
        findings.append(Finding("WARN", "data dir", f"{shown} is writable{created} but only {free / 2**20:.0f} MiB are free",
                                "free some space: every finished job keeps its image there"))
    else:
        findings.append(Finding("OK", "data dir", f"{shown} is writable{created}, {free / 2**30:.1f} GiB free"))
    findings.append(_check_database(Path(settings.database_path).expanduser().resolve()))
    return findings


def _check_database(path: Path) -> Finding:
    from bot.jobs.store import MIGRATIONS

    known = len(MIGRATIONS)
    if not path.exists():
        return Finding("OK", "database", f"{path} does not exist yet; the bot creates it (schema v{known}) on start")
    move_away = f"restore {path} from a backup, or move it away to start with an empty job history"
    if not path.is_file():
        return Finding("FAIL", "database", f"{path} is not a file", move_away)
    if not os.access(path, os.R_OK | os.W_OK):
        return Finding("FAIL", "database", f"{path} is not readable and writable by this user",
                       "give the bot's user the file (chown), or run the bot as its owner")
    try:
        # Read-only: the doctor must never change the database, nor migrate it behind the bot's back.
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            integrity = db.execute("PRAGMA quick_check").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            counts = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()) if version else {}
    except sqlite3.Error as error:
        return Finding("FAIL", "database", f"{path} cannot be read as the job database ({error})", move_away)
    if integrity != "ok":
        return Finding("FAIL", "database", f"{path} is damaged (SQLite's quick_check: {integrity})", move_away)
    if version > known:
        return Finding("FAIL", "database", f"{path} is at schema version {version}, newer than this bot's {known}",
                       "upgrade the bot to the version that wrote it, or restore a matching backup")
    jobs = f"{sum(counts.values())} jobs, {counts.get('queued', 0)} waiting"
    if version < known:
        return Finding("OK", "database", f"{path}: schema v{version}, {jobs}; the bot migrates it to v{known} on start")
    return Finding("OK", "database", f"{path}: schema v{version}, {jobs}")


# ---- the Discord token ---------------------------------------------------------------------------------


def _token_shape_problem(token: str) -> str | None:
    if token.lower().startswith("bot "):
        return "it starts with 'Bot ': set only the token itself"
    if token[:1] in "\"'" or token[-1:] in "\"'":
        return "it is wrapped in quotes: set only the token itself"
    if not _TOKEN_SHAPE.fullmatch(token):
        return ("it does not look like a bot token (three parts joined by dots); the application id, public key "
                "and client secret are not the token")
    return None


def _ask_discord(token: str, api_base: str) -> tuple[str, str]:
    """('accepted', bot name) | ('refused', why) | ('unreachable', why)."""
    import json

    request = urllib.request.Request(
        f"{api_base.rstrip('/')}/users/@me",
        headers={"Authorization": f"Bot {token}", "User-Agent": "DiscordBot (bigsleep-bot doctor, 0.1)"},
    )
    try:
        with urllib.request.urlopen(request, timeout=DISCORD_CHECK_TIMEOUT_S) as response:
            user = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        if error.code == 401:
            return "refused", "Discord answered 401 Unauthorized"
        return "unreachable", f"Discord answered {error.code} {error.reason}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return "unreachable", str(getattr(error, "reason", error))
    return "accepted", str(user.get("username", "?"))


def _check_token(environ: Mapping[str, str], *, offline: bool) -> list[Finding]:
    from bot.settings import DiscordConnection

    connection = DiscordConnection.from_env(environ)
    if connection.token is None:
        return [Finding("FAIL", "token", "DISCORD_TOKEN is not set",
                        f"set DISCORD_TOKEN in the bot's environment (never in a config file); get it from the {_PORTAL}")]
    token = connection.token.get_secret_value()
    shape_problem = _token_shape_problem(token)
    if offline:
        if shape_problem:
            return [Finding("FAIL", "token", f"DISCORD_TOKEN is set, but {shape_problem}", f"copy the token again: {_PORTAL}")]
        return [Finding("OK", "token", "DISCORD_TOKEN is set and shaped like a bot token (not checked with Discord: --offline)")]
    api_base = connection.api_base or DISCORD_API_BASE
    answer, detail = _ask_discord(token, api_base)
    if answer == "accepted":
        return [Finding("OK", "token", f"Discord accepts DISCORD_TOKEN (the bot is {detail})")]
    if answer == "refused":
        hint = f"; besides, {shape_problem}" if shape_problem else ""
        return [Finding("FAIL", "token", f"Discord refused DISCORD_TOKEN ({detail}){hint}",
                        f"reset the token and set the new one: {_PORTAL}")]
    findings = [Finding("WARN", "token", f"could not ask Discord whether DISCORD_TOKEN is valid ({detail})",
                        "check this machine's connection to discord.com, or run doctor with --offline")]
    if shape_problem:
        findings.insert(0, Finding("FAIL", "token", f"DISCORD_TOKEN is set, but {shape_problem}", f"copy the token again: {_PORTAL}"))
    else:
        findings.insert(0, Finding("OK", "token", "DISCORD_TOKEN is set and shaped like a bot token"))
    return findings
