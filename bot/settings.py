"""The bot's settings: `config/default.toml` (and an optional `config/local.toml` beside it), then `BIGSLEEP_*`
environment variables, which win. Nested keys use `__` in the environment: `BIGSLEEP_QUEUE__MAX_QUEUED_PER_USER=5`.
They extend the generator's (`generator.settings`: models, device, the worker's keys), and are read by its `load`.

A key the bot does not know, or a value out of range, stops the start with a message naming the key (a typo
in a config file should never be silently ignored). The Discord token is read from `DISCORD_TOKEN` only, never
from a file, and is kept in a SecretStr so it cannot end up in a log line by accident.

This module must stay free of torch and discord imports.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from generator import settings as generator_settings
from generator.protocol import ALLOWED_SIZES, MAX_STEPS
from generator.settings import REPO_CONFIG_DIR, GeneratorSettings, SettingsError  # noqa: F401 (REPO_CONFIG_DIR: tests)
from generator.settings import WorkerSettings as GeneratorWorkerSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerSettings(GeneratorWorkerSettings):
    """The generator's worker keys (batch size, sizes, precision, timeouts), and the bot's own below."""

    model_config = ConfigDict(extra="forbid")

    # Progress pictures per job (the worker renders one every steps/N steps).
    snapshots_per_job: int = Field(default=10, ge=0, le=100)
    # Keep an animated GIF of the snapshots with each result (in the data dir, never posted).
    timelapse: bool = False
    # Seconds the worker gets to hand back its jobs when the bot stops.
    stop_timeout_seconds: float = Field(default=20.0, gt=0)
    # A job the generator stopped on this many times is given up instead of being re-queued again.
    max_attempts: int = Field(default=3, ge=1)


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


class DiscordSettings(_Section):
    # Gateway connections (shards): 1, "auto" (as many as Discord recommends for the bot's server count), or a number.
    # Discord requires sharding from 2,500 servers; discord.py suggests it from about 1,000.
    shards: int | Literal["auto"] = 1

    @field_validator("shards", mode="before")
    @classmethod
    def _auto_or_a_count(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return "auto"
            if text.isascii() and text.isdigit():
                value = int(text)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise ValueError('must be "auto" or a whole number of shards, 1 or more')

    @property
    def sharded(self) -> bool:
        """Whether the bot runs several gateway connections (discord.py's AutoShardedClient)."""
        return self.shards == "auto" or self.shards > 1

    @property
    def shard_count(self) -> int | None:
        """discord.py's shard_count: None asks Discord (GET /gateway/bot) for its recommendation."""
        return None if self.shards == "auto" else self.shards


class BotSettings(GeneratorSettings):
    """Everything configurable except the Discord token and the test-only Discord URLs (see DiscordConnection).

    The generator's keys (models, device, the worker's) are declared in `generator.settings.GeneratorSettings`."""

    # Unlike the generator, the bot knows every key: any other is a mistake.
    model_config = SettingsConfigDict(extra="forbid")

    # Where the job database and the bot's own copies of images live.
    data_dir: Path = Path("data")
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
    discord: DiscordSettings = DiscordSettings()

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


def unknown_environment_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """BIGSLEEP_* variables that are no setting of the bot's (see generator.settings.unknown_environment_names)."""
    return generator_settings.unknown_environment_names(BotSettings, environ)


def load_settings(config: Path | None = None, **overrides: Any) -> BotSettings:
    """Read the settings; raise SettingsError naming every bad key. `overrides` win over everything (tests)."""
    return generator_settings.load(BotSettings, config, **overrides)


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

    def cleartext_problems(self) -> list[str]:
        """Why the token must not go to the addresses set (one line per variable); empty when it may."""
        addresses = {"DISCORD_API_BASE": self.api_base, "DISCORD_GATEWAY_URL": self.gateway_url}
        return [problem for variable, url in addresses.items() if url and (problem := cleartext_problem(variable, url))]


CLEARTEXT_FIX = ("use an https:// address (wss:// for DISCORD_GATEWAY_URL), or unset it to use discord.com; plain "
                 "http:// and ws:// are only for a server on this machine (localhost, 127.0.0.0/8, ::1)")


def cleartext_problem(variable: str, url: str) -> str | None:
    """Why the Discord token must not be sent to `url` (from `variable`), or None. TLS is needed for any address
    but this machine's own: plain text to loopback (a test server) never crosses a network."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return f"{variable} ({url}) is not a URL"
    scheme = parts.scheme.lower()
    if scheme in ("https", "wss") and host:
        return None
    if scheme in ("http", "ws") and _is_loopback(host):
        return None
    if scheme in ("http", "ws"):
        return f"{variable} is plain {scheme}:// to another machine ({host}): the token would cross the network unencrypted"
    return f"{variable} ({url}) is not an https:// address: the token may only be sent over TLS"


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
