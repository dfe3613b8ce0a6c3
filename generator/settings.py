"""The generator's settings, and the one way settings are read: `config/default.toml` (and an optional
`config/local.toml` beside it), then `BIGSLEEP_*` environment variables, which win. Nested keys use `__` in the
environment: `BIGSLEEP_WORKER__SIZES=[128,256]`.

The bot's settings (`bot.settings.BotSettings`) extend `GeneratorSettings` and are read by the same `load`, from
the same files: the generator reads what it needs and passes over the bot's sections and keys, while the bot,
which knows every key, refuses a key or a `BIGSLEEP_*` variable nobody reads. Every mistake is named with its key
and where it was written.

Where the weights live is read from the environment only (`WeightsSettings`): the generation process reads it
itself, whoever started it.

Torch- and discord-free: `bigsleep download` and the bot import it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from generator.protocol import ALLOWED_SIZES, CLIP_MODELS, CLIP_PRECISIONS, COMPILE_CHOICES, MODEL_KINDS

REPO_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEFAULT_CONFIG_NAME = "default.toml"
LOCAL_CONFIG_NAME = "local.toml"
ENV_PREFIX = "BIGSLEEP_"
CONFIG_DIR_ENV = f"{ENV_PREFIX}CONFIG_DIR"

ModelKind = Literal["full", "tiny", "random"]
WorkerBackend = Literal["local", "ray"]
ClipPrecision = Literal["auto", "fp32", "bf16", "fp16"]
CompileChoice = Literal["auto", "on", "off"]
ClipModel = Literal["ViT-B/32", "ViT-B/16", "ViT-L/14"]
assert set(ModelKind.__args__) == set(MODEL_KINDS)  # type: ignore[attr-defined]
assert set(ClipPrecision.__args__) == set(CLIP_PRECISIONS)  # type: ignore[attr-defined]
assert CompileChoice.__args__ == COMPILE_CHOICES  # type: ignore[attr-defined]
assert ClipModel.__args__ == CLIP_MODELS  # type: ignore[attr-defined]


class SettingsError(ValueError):
    """The settings cannot be used; the message names each offending key, one per line."""


class WorkerSettings(BaseModel):
    """The generator's keys of the `[worker]` section; the bot's section adds its own to the same table."""

    # Keys of the bot's are passed over here; the bot's subclass refuses unknown ones.
    model_config = ConfigDict(extra="ignore", frozen=True)

    # Jobs the worker may run together as one batch; the bot keeps this many in flight. "auto": as many as the
    # memory free when the worker starts holds (generator.batch_memory), between 1 and 8.
    max_batch_size: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 4
    # Image sizes the worker loads a BigGAN for; /imagine refuses other sizes.
    sizes: tuple[int, ...] = (128, 256, 512)
    # CLIP's precision: auto (fp16 on CUDA, bf16 on CPUs that do it natively, else fp32), fp32, bf16, fp16.
    clip_precision: ClipPrecision = "auto"
    # torch.compile the step (fused kernels; CUDA graphs on a GPU), compiled at start and cached beside the weights:
    # "auto" on CUDA only (on the CPUs measured it did not pay), "on", "off". Needs a C++ compiler (README).
    compile: CompileChoice = "auto"
    # Which OpenAI CLIP judges the images: ViT-B/32 (BigSleep's), or the larger ViT-B/16, ViT-L/14 (slower; README).
    clip_model: ClipModel = "ViT-B/32"
    # Defaults of jobs' BigSleep options, recorded in each job's spec: crops gather around the centre; the result
    # is the best-scored EMA image rather than the last.
    center_bias: bool = False
    save_best: bool = False
    # A step that reports nothing for this long counts as hung: the worker is restarted and its jobs re-run.
    hang_timeout_seconds: float = Field(default=300.0, gt=0)
    # Longest start of the worker (importing torch, loading or first downloading the weights).
    startup_timeout_seconds: float = Field(default=1800.0, gt=0)
    # Where workers run: "local" (processes on this machine) or "ray" (actors on the Ray cluster at cluster.address).
    backend: WorkerBackend = "local"
    # Local workers: one process per device listed ("cuda:0", "cuda:1", "cpu"; "cpu" may repeat), or "all" (one per
    # GPU that nvidia-smi lists). Empty: one worker on `device`.
    devices: Literal["all"] | tuple[str, ...] = ()
    # Torch threads of each CPU worker; 0: all cores for a lone CPU worker, an equal share each when several run.
    cpu_threads: int = Field(default=0, ge=0, le=1024)

    @model_validator(mode="after")
    def _known_sizes(self) -> WorkerSettings:
        unknown = [size for size in self.sizes if size not in ALLOWED_SIZES]
        if unknown or not self.sizes:
            raise ValueError(f"sizes must be a non-empty list drawn from {list(ALLOWED_SIZES)}, not {list(self.sizes)}")
        return self

    @field_validator("devices", mode="before")
    @classmethod
    def _all_or_a_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.lower() == "all":
                return "all"
            # BIGSLEEP_WORKER__DEVICES=cuda:0,cuda:1 as well as the JSON list pydantic reads itself.
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @field_validator("devices")
    @classmethod
    def _devices_make_sense(cls, value: Any) -> Any:
        if value == "all":
            return value
        bad = [device for device in value if not _DEVICE.fullmatch(device)]
        if bad:
            raise ValueError(f'devices must be "all" or a list of "cpu", "cuda" or "cuda:N", not {bad}')
        gpus = [device for device in value if device != "cpu"]
        twice = sorted({device for device in gpus if gpus.count(device) > 1})
        if twice:
            raise ValueError(f"devices lists {', '.join(twice)} more than once: one worker per GPU")
        return value


class ClusterSettings(BaseModel):
    """The `[cluster]` section: the Ray cluster whose GPUs the workers run on (worker.backend = "ray")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The Ray head's address, "host:6379" (what `ray start --head` prints); the bot connects as a Ray client.
    address: str = ""
    # GPUs each worker (a Ray actor) takes; 0 makes CPU workers (tests, and trying a cluster without GPUs).
    gpus_per_worker: float = Field(default=1.0, ge=0.0, le=64.0)
    # CPUs each worker takes (Ray schedules by these); also its torch threads when it runs on the CPU.
    cpus_per_worker: float = Field(default=1.0, gt=0.0, le=1024.0)
    # Most workers at once; 0: one per GPU the cluster offers (CPU workers need a number).
    max_workers: int = Field(default=0, ge=0, le=4096)
    # Ray namespace of the bot's actors (several bots may share a cluster under different namespaces).
    namespace: str = Field(default="bigsleep", min_length=1)
    # Longest wait to connect to the cluster before trying again (the bot stays up meanwhile).
    connect_timeout_seconds: float = Field(default=30.0, gt=0)
    # A worker that does not answer for this long counts as dead (its node is gone): its jobs go back to the queue.
    silence_timeout_seconds: float = Field(default=8.0, gt=0)


class GeneratorSettings(BaseSettings):
    """What the generator needs to run: which models, on which device, in what batches."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        # The bot's keys share the files and the environment; BotSettings forbids what neither knows.
        extra="ignore",
        frozen=True,
        # Only real environment variables; no .env files (secrets belong in the service manager).
        env_file=None,
    )

    # 'full' (real weights), 'tiny' (toy random models, for tests), 'random' (real-size random, benchmarks).
    models: ModelKind = "full"
    # 'auto' picks CUDA when present; or 'cpu', 'cuda', 'cuda:1'.
    device: str = "auto"
    worker: WorkerSettings = WorkerSettings()
    cluster: ClusterSettings = ClusterSettings()

    @model_validator(mode="after")
    def _backend_has_what_it_needs(self) -> GeneratorSettings:
        if self.worker.backend == "ray":
            if not self.cluster.address.strip():
                raise ValueError('worker.backend = "ray" needs cluster.address (the Ray head, "host:6379")')
            if self.cluster.gpus_per_worker == 0 and self.cluster.max_workers == 0:
                raise ValueError("CPU workers on Ray (cluster.gpus_per_worker = 0) need cluster.max_workers")
            if self.worker.devices:
                raise ValueError('worker.devices is for worker.backend = "local"; Ray places its workers itself')
        return self

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


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"", "0", "false", "no", "off"}


class WeightsSettings(BaseSettings):
    """Where the model weights come from: `BIGSLEEP_CACHE_DIR`, `BIGSLEEP_WEIGHTS_DIR`, `BIGSLEEP_OFFLINE`,
    `BIGSLEEP_WEIGHTS_MIRROR`. Environment only, so the generation process finds them without the config files."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, env_file=None)

    # Where downloaded weights are kept; unset: the user cache (~/.cache/bigsleep-bot/weights on Linux).
    cache_dir: Path | None = None
    # A folder that already holds every weight file; the network is then never used.
    weights_dir: Path | None = None
    # Never download; name what is missing instead.
    offline: bool = False
    # Fetch `<mirror>/<file>` instead of each file's own URL.
    weights_mirror: str | None = None

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable that sets `field`."""
        assert field in cls.model_fields, field
        return f"{ENV_PREFIX}{field.upper()}"

    @classmethod
    def from_env(cls) -> WeightsSettings:
        """Read them; a value that makes no sense raises SettingsError naming its variable."""
        try:
            return cls()
        except ValidationError as error:
            problems = [problem["msg"].removeprefix("Value error, ") for problem in error.errors(include_url=False)]
            raise SettingsError("\n".join(problems)) from None

    @field_validator("cache_dir", "weights_dir", "weights_mirror", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("offline", mode="before")
    @classmethod
    def _on_or_off(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise ValueError(f"{cls.variable('offline')}={value!r} is neither on (1, true, yes) nor off (0, false, no).")


# BIGSLEEP_* variables read outside the settings files: the weights' location, and the config folder's.
ENVIRONMENT_ONLY_NAMES = frozenset(
    {CONFIG_DIR_ENV.removeprefix(ENV_PREFIX), *(name.upper() for name in WeightsSettings.model_fields)}
)


# ---- reading settings: files, then the environment ------------------------------------------------------


def config_files(config: Path | None = None, environ: Mapping[str, str] | None = None) -> list[Path]:
    """The TOML files to read, later ones winning: an explicit file, else `config/default.toml` + `local.toml`.

    The config dir is `$BIGSLEEP_CONFIG_DIR`, else `./config` when it exists, else the one in the checkout.
    """
    environ = os.environ if environ is None else environ
    if config is not None:
        if not config.is_file():
            raise SettingsError(f"config file {config} does not exist")
        return [config]
    if environ.get(CONFIG_DIR_ENV):
        folder = Path(environ[CONFIG_DIR_ENV])
    elif (Path.cwd() / "config" / DEFAULT_CONFIG_NAME).is_file():
        folder = Path.cwd() / "config"
    else:
        folder = REPO_CONFIG_DIR
    return [path for path in (folder / DEFAULT_CONFIG_NAME, folder / LOCAL_CONFIG_NAME) if path.is_file()]


Settings = TypeVar("Settings", bound=GeneratorSettings)


def load(settings_cls: type[Settings], config: Path | None = None, **overrides: Any) -> Settings:
    """Read `settings_cls` from the config files and the environment; raise SettingsError naming every bad key.
    `overrides` win over everything (tests). A class that forbids unknown keys also refuses unknown variables."""
    files = config_files(config)

    class _FromFiles(settings_cls):  # type: ignore[valid-type, misc]
        model_config = SettingsConfigDict(toml_file=files or None)

    problems = []
    if settings_cls.model_config.get("extra") == "forbid":
        # An unknown variable stops the start like an unknown key in a file does, named along with any other mistake.
        problems += [f"unknown setting '{name[len(ENV_PREFIX):].lower().replace('__', '.')}' (from {name})"
                     for name in unknown_environment_names(settings_cls)]
    try:
        loaded = _FromFiles(**overrides)
    except ValidationError as error:
        problems.append(describe_validation_error(error, files))
    except ValueError as error:  # TOML that does not parse
        problems.append(f"cannot read {', '.join(map(str, files))}: {error}")
    if problems:
        raise SettingsError("\n".join(problems))
    return loaded


def load_generator_settings(config: Path | None = None, **overrides: Any) -> GeneratorSettings:
    """The generator's settings, from the same files and variables the bot reads (its other keys are passed over)."""
    return load(GeneratorSettings, config, **overrides)


def unknown_environment_names(settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> list[str]:
    """BIGSLEEP_* variables nobody reads: pydantic-settings skips them silently, so a typo such as BIGSLEEP_MODLES,
    or a key under a setting that has none (BIGSLEEP_MODELS__X), would otherwise pass unnoticed. Unknown keys
    inside a section (BIGSLEEP_QUEUE__X) are pydantic's to report. Names match case-insensitively, as settings do."""
    environ = os.environ if environ is None else environ
    sections = {name.upper() for name, field in settings_cls.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}
    scalars = ({name.upper() for name in settings_cls.model_fields} - sections) | ENVIRONMENT_ONLY_NAMES
    unknown = []
    for name in environ:
        if name.upper().startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX):].upper()
            if key not in scalars and key.split("__")[0] not in sections:
                unknown.append(name)
    return sorted(unknown)


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
