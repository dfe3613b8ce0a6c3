"""The bot's settings: `config/default.toml` (and an optional `config/local.toml` beside it), then `BIGSLEEP_*`
environment variables, which win. Nested keys use `__` in the environment: `BIGSLEEP_QUEUE__MAX_QUEUED_PER_USER=5`.

A key the bot does not know, or a value out of range, stops the start with a message naming the key (a typo
in a config file should never be silently ignored). The Discord token is read from `DISCORD_TOKEN` only, never
from a file, and is kept in a SecretStr so it cannot end up in a log line by accident.

This module must stay free of torch and discord imports.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from generator.protocol import ALLOWED_SIZES, MAX_STEPS, MODEL_KINDS

REPO_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEFAULT_CONFIG_NAME = "default.toml"
LOCAL_CONFIG_NAME = "local.toml"
ENV_PREFIX = "BIGSLEEP_"

ModelKind = Literal["full", "tiny", "random"]
assert set(ModelKind.__args__) == set(MODEL_KINDS)  # type: ignore[attr-defined]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerSettings(_Section):
    # Jobs the worker may run together as one batch; the bot keeps this many in flight.
    max_batch_size: int = Field(default=4, ge=1, le=64)
    # Image sizes the worker loads a BigGAN for; /imagine refuses other sizes.
    sizes: tuple[int, ...] = (128, 256, 512)
    # Progress pictures per job (the worker renders one every steps/N steps).
    snapshots_per_job: int = Field(default=10, ge=0, le=100)
    # Keep an animated GIF of the snapshots with each result (in the data dir, never posted).
    timelapse: bool = False
    # Seconds the worker gets to hand back its jobs when the bot stops.
    stop_timeout_seconds: float = Field(default=20.0, gt=0)
    # A job the generator stopped on this many times is given up instead of being re-queued again.
    max_attempts: int = Field(default=3, ge=1)
    # CLIP's precision: auto (fp16 on CUDA, bf16 on CPUs that do it natively, else fp32), fp32, bf16, fp16.
    clip_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # A step that reports nothing for this long counts as hung: the worker is restarted and its jobs re-run.
    hang_timeout_seconds: float = Field(default=300.0, gt=0)
    # Longest start of the worker (importing torch, loading or first downloading the weights).
    startup_timeout_seconds: float = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _known_sizes(self) -> WorkerSettings:
        unknown = [size for size in self.sizes if size not in ALLOWED_SIZES]
        if unknown or not self.sizes:
            raise ValueError(f"sizes must be a non-empty list drawn from {list(ALLOWED_SIZES)}, not {list(self.sizes)}")
        return self


class QueueSettings(_Section):
    # Jobs one person may have generating at once (over all servers).
    max_running_per_user: int = Field(default=3, ge=1)
    # Jobs one person may have waiting (over all servers); past it, /imagine says so.
    max_queued_per_user: int = Field(default=10, ge=0)
    # ETAs use the median of this many recent jobs (seconds per job before any job finished: default_job_seconds).
    eta_history: int = Field(default=20, ge=1)
    default_job_seconds: float = Field(default=120.0, gt=0)


class LimitSettings(_Section):
    max_steps: int = Field(default=1000, ge=1, le=MAX_STEPS)
    default_steps: int = Field(default=400, ge=1, le=MAX_STEPS)
    max_size: int = 512
    default_size: int = 256
    max_prompt_chars: int = Field(default=1000, ge=1, le=4000)
    # Most random crops CLIP judges per step (quality presets ask for 8-64). Lower it to save GPU memory.
    max_cutouts: int = Field(default=64, ge=1, le=256)
    # Words refused in prompts on every server (bot.moderation.wordfilter); servers add their own with /settings.
    banned_words: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> LimitSettings:
        if self.default_steps > self.max_steps:
            raise ValueError("default_steps must not exceed max_steps")
        for name in ("max_size", "default_size"):
            if getattr(self, name) not in ALLOWED_SIZES:
                raise ValueError(f"{name} must be one of {list(ALLOWED_SIZES)}")
        if self.default_size > self.max_size:
            raise ValueError("default_size must not exceed max_size")
        return self


class ProgressSettings(_Section):
    # At most one change to a job's message per this many seconds (Discord asks for 5-10).
    edit_interval_seconds: float = Field(default=5.0, ge=0.01)
    # Budget for message changes per channel: this many per window, shared by every job in the channel.
    channel_edits_per_window: int = Field(default=5, ge=1)
    channel_window_seconds: float = Field(default=5.0, ge=0.01)
    # After Discord refuses a channel (no permission, deleted), leave it alone this long before trying again.
    unreachable_retry_seconds: float = Field(default=600.0, ge=0)
    # When a job's channel refuses its result, tell its owner by direct message how to fetch it with /show.
    dm_when_unreachable: bool = True


class VariationSettings(_Section):
    # Noise added to the parent's latents (0 = the same image, 1 = barely related).
    noise: float = Field(default=0.3, ge=0.0, le=2.0)
    # A variation runs this fraction of its parent's steps.
    steps_fraction: float = Field(default=0.4, gt=0.0, le=1.0)


class ChallengeSettings(_Section):
    # Vote counts stay hidden until a challenge ends (a moderator can choose otherwise per challenge).
    hide_counts_until_end: bool = True
    # Entries one member may have in a challenge, unless /challenge start says otherwise.
    default_max_entries_per_member: int = Field(default=1, ge=1, le=25)
    # Shortest and longest challenge /challenge start accepts.
    min_duration_minutes: float = Field(default=10.0, ge=1.0)
    max_duration_days: float = Field(default=60.0, gt=0.0, le=365.0)
    # Side of each entry's picture on the results contact sheet; smaller when the sheet would be too big to upload.
    contact_sheet_tile_px: int = Field(default=256, ge=32, le=1024)

    @model_validator(mode="after")
    def _durations_make_sense(self) -> ChallengeSettings:
        if self.min_duration_minutes * 60 > self.max_duration_days * 86400:
            raise ValueError("min_duration_minutes must be shorter than max_duration_days")
        return self


class HealthSettings(_Section):
    # Serve GET /healthz (200 or 503 with details) and GET /metrics (Prometheus) over HTTP.
    enabled: bool = False
    # Nothing there needs a password: keep it on localhost unless a Prometheus elsewhere must reach it.
    host: str = "127.0.0.1"
    # 0 picks a free port (the bound one is logged).
    port: int = Field(default=8080, ge=0, le=65535)


class BotSettings(BaseSettings):
    """Everything configurable except the Discord token and the test-only Discord URLs (see DiscordConnection)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        # Only real environment variables; no .env files (secrets belong in the service manager).
        env_file=None,
    )

    # Where the job database and the bot's own copies of images live.
    data_dir: Path = Path("data")
    # 'full' (real weights), 'tiny' (toy random models, for tests), 'random' (real-size random, benchmarks).
    models: ModelKind = "full"
    # 'auto' picks CUDA when present; or 'cpu', 'cuda', 'cuda:1'.
    device: str = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # 'json': one JSON object per line (for log collectors); 'text': time, level, logger, message, key=value.
    log_format: Literal["json", "text"] = "json"
    worker: WorkerSettings = WorkerSettings()
    queue: QueueSettings = QueueSettings()
    limits: LimitSettings = LimitSettings()
    progress: ProgressSettings = ProgressSettings()
    variations: VariationSettings = VariationSettings()
    health: HealthSettings = HealthSettings()
    challenges: ChallengeSettings = ChallengeSettings()

    @model_validator(mode="after")
    def _sizes_cover_limits(self) -> BotSettings:
        if self.limits.default_size not in self.worker.sizes:
            raise ValueError(
                f"limits.default_size ({self.limits.default_size}) must be one of worker.sizes {list(self.worker.sizes)}"
            )
        return self

    @property
    def database_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if files:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=files, deep_merge=True))
        return tuple(sources)


# BIGSLEEP_* variables the generator reads itself (weights download), and the config dir chooser.
OTHER_ENVIRONMENT_NAMES = frozenset({"CONFIG_DIR", "CACHE_DIR", "OFFLINE", "WEIGHTS_DIR", "WEIGHTS_MIRROR"})


def unknown_environment_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """BIGSLEEP_* variables nobody reads: pydantic-settings skips them silently, so a typo such as BIGSLEEP_MODLES,
    or a key under a setting that has none (BIGSLEEP_MODELS__X), would otherwise pass unnoticed. Unknown keys
    inside a section (BIGSLEEP_QUEUE__X) are pydantic's to report. Names match case-insensitively, as settings do."""
    environ = os.environ if environ is None else environ
    sections = {name.upper() for name, field in BotSettings.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}
    scalars = ({name.upper() for name in BotSettings.model_fields} - sections) | OTHER_ENVIRONMENT_NAMES
    unknown = []
    for name in environ:
        if name.upper().startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX):].upper()
            if key not in scalars and key.split("__")[0] not in sections:
                unknown.append(name)
    return sorted(unknown)


class SettingsError(ValueError):
    """The settings cannot be used; the message names each offending key, one per line."""


def config_files(config: Path | None = None, environ: Mapping[str, str] | None = None) -> list[Path]:
    """The TOML files to read, later ones winning: an explicit file, else `config/default.toml` + `local.toml`.

    The config dir is `$BIGSLEEP_CONFIG_DIR`, else `./config` when it exists, else the one in the checkout.
    """
    environ = os.environ if environ is None else environ
    if config is not None:
        if not config.is_file():
            raise SettingsError(f"config file {config} does not exist")
        return [config]
    if environ.get(f"{ENV_PREFIX}CONFIG_DIR"):
        folder = Path(environ[f"{ENV_PREFIX}CONFIG_DIR"])
    elif (Path.cwd() / "config" / DEFAULT_CONFIG_NAME).is_file():
        folder = Path.cwd() / "config"
    else:
        folder = REPO_CONFIG_DIR
    return [path for path in (folder / DEFAULT_CONFIG_NAME, folder / LOCAL_CONFIG_NAME) if path.is_file()]


def load_settings(config: Path | None = None, **overrides: Any) -> BotSettings:
    """Read the settings; raise SettingsError naming every bad key. `overrides` win over everything (tests)."""
    files = config_files(config)

    class _FromFiles(BotSettings):
        model_config = SettingsConfigDict(toml_file=files or None)

    # An unknown variable stops the start like an unknown key in a file does, named along with any other mistake.
    problems = [f"unknown setting '{name[len(ENV_PREFIX):].lower().replace('__', '.')}' (from {name})"
                for name in unknown_environment_names()]
    try:
        loaded = _FromFiles(**overrides)
    except ValidationError as error:
        problems.append(describe_validation_error(error, files))
    except ValueError as error:  # TOML that does not parse
        problems.append(f"cannot read {', '.join(map(str, files))}: {error}")
    if problems:
        raise SettingsError("\n".join(problems))
    return loaded


def describe_validation_error(error: ValidationError, files: list[Path], environ: Mapping[str, str] | None = None) -> str:
    lines = []
    for problem in error.errors():
        loc = [str(part) for part in problem["loc"]]
        key = ".".join(loc) or "settings"
        where = _where_set(loc, files, os.environ if environ is None else environ)
        if problem["type"] == "extra_forbidden":
            lines.append(f"unknown setting '{key}'{where}")
        else:
            value = problem.get("input")
            shown = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) else ""
            lines.append(f"setting '{key}'{where}: {problem['msg']}{shown}")
    return "\n".join(lines)


def _where_set(loc: list[str], files: list[Path], environ: Mapping[str, str]) -> str:
    """' (from BIGSLEEP_X)' or ' (in FILE)': where the offending key was written, so it can be found and fixed."""
    variable = ENV_PREFIX + "__".join(loc).upper()
    names = sorted(name.upper() for name in environ if name.upper().startswith(ENV_PREFIX))
    if variable in names and loc:
        return f" (from {variable})"  # the environment wins over the files, so this is the value that was used
    origins = []
    for path in reversed(files):  # the last file that sets a key is the one whose value was used
        try:
            table: Any = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for part in loc:
            table = table.get(part) if isinstance(table, dict) else None
        if table is not None:
            origins.append(str(path))
            break
    if loc:
        origins += [name for name in names if name.startswith(variable + "__")]
    return f" (in {' and '.join(origins)})" if origins else ""


@dataclass(frozen=True)
class DiscordConnection:
    """What to connect with; from the environment only."""

    token: SecretStr | None
    # For tests against a Discord-compatible server: REST base (…/api/v10) and gateway websocket URL.
    api_base: str | None = None
    gateway_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DiscordConnection:
        environ = os.environ if environ is None else environ
        token = environ.get("DISCORD_TOKEN", "").strip()
        return cls(
            token=SecretStr(token) if token else None,
            api_base=environ.get("DISCORD_API_BASE") or None,
            gateway_url=environ.get("DISCORD_GATEWAY_URL") or None,
        )
