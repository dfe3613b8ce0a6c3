"""Configuration: where each value comes from (built-in default < default.toml < local.toml < BIGSLEEP_* <
explicit overrides), that every mistake names its key and where it was written, that config/default.toml
documents every setting, whatever sections are added later, and that the generator reads its own keys from the
same files (generator.settings) while the bot's settings include them."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from bot.settings import (
    REPO_CONFIG_DIR,
    BotSettings,
    DiscordConnection,
    SettingsError,
    WorkerSettings,
    load_settings,
    unknown_environment_names,
)
from generator.settings import GeneratorSettings, load_generator_settings
from generator.settings import WorkerSettings as GeneratorWorkerSettings

DEFAULT_TOML = REPO_CONFIG_DIR / "default.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("BIGSLEEP_", "DISCORD_")):
            monkeypatch.delenv(name)


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    monkeypatch.setenv("BIGSLEEP_CONFIG_DIR", str(folder))
    return folder


def test_each_layer_wins_over_the_ones_before_it(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Four queue keys, each last set by a different layer; default_job_seconds only by the built-in default.
    (config_dir / "default.toml").write_text(
        "[queue]\nmax_running_per_user = 2\nmax_queued_per_user = 2\neta_history = 2\n")
    (config_dir / "local.toml").write_text("[queue]\nmax_queued_per_user = 3\neta_history = 3\n")
    monkeypatch.setenv("BIGSLEEP_QUEUE__ETA_HISTORY", "4")

    settings = load_settings()
    assert settings.queue.model_dump() == {"max_running_per_user": 2, "max_queued_per_user": 3, "eta_history": 4,
                                           "default_job_seconds": BotSettings().queue.default_job_seconds}

    # Overrides given to load_settings (what a command line option passes) win over everything, key by key.
    overridden = load_settings(queue={"eta_history": 5})
    assert (overridden.queue.eta_history, overridden.queue.max_queued_per_user) == (5, 3)


def test_an_explicit_config_file_replaces_both_toml_files_but_not_the_environment(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config_dir / "default.toml").write_text('models = "random"\n')
    (config_dir / "local.toml").write_text('device = "cuda:3"\n')
    chosen = tmp_path / "chosen.toml"
    chosen.write_text('log_level = "DEBUG"\n')
    monkeypatch.setenv("BIGSLEEP_MODELS", "tiny")

    settings = load_settings(chosen)

    assert (settings.log_level, settings.device, settings.models) == ("DEBUG", "auto", "tiny")


@pytest.mark.parametrize(
    "file_text, variables, expected",
    [
        # Unknown keys, top level and in a section, in a file: named with the file.
        ("modles = 'tiny'\n", {}, r"unknown setting 'modles' \(in {local}\)"),
        ("[queue]\nmax_queud_per_user = 3\n", {}, r"unknown setting 'queue.max_queud_per_user' \(in {local}\)"),
        # ...and in the environment: named with the variable.
        ("", {"BIGSLEEP_QUEUE__MAX_QUEUD_PER_USER": "3"},
         r"unknown setting 'queue.max_queud_per_user' \(from BIGSLEEP_QUEUE__MAX_QUEUD_PER_USER\)"),
        # Bad values: the key, where, and what was given.
        ("[limits]\nmax_steps = 'many'\n", {}, r"setting 'limits.max_steps' \(in {local}\): .*integer.*'many'"),
        ("", {"BIGSLEEP_PROGRESS__EDIT_INTERVAL_SECONDS": "-2"},
         r"setting 'progress.edit_interval_seconds' \(from BIGSLEEP_PROGRESS__EDIT_INTERVAL_SECONDS\): .*greater"),
        ("", {"BIGSLEEP_LOG_LEVEL": "LOUD"}, r"setting 'log_level' \(from BIGSLEEP_LOG_LEVEL\): .*'LOUD'"),
        # A value checked with its section: the section, and both places it was written.
        ("[worker]\nmax_batch_size = 2\n", {"BIGSLEEP_WORKER__SIZES": "[100]"},
         r"setting 'worker' \(in {local} and BIGSLEEP_WORKER__SIZES\): .*\[100\]"),
    ],
)
def test_every_mistake_names_its_key_and_where_it_was_written(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, file_text: str, variables: dict[str, str], expected: str
) -> None:
    (config_dir / "default.toml").write_text(DEFAULT_TOML.read_text())
    local = config_dir / "local.toml"
    local.write_text(file_text)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError) as problem:
        load_settings()

    assert re.search(expected.format(local=re.escape(str(local))), str(problem.value)), str(problem.value)


def test_several_mistakes_are_all_named_one_per_line(tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text("colour = 'blue'\n[queue]\neta_history = 0\n[limits]\nmax_cutouts = 'lots'\n")

    with pytest.raises(SettingsError) as problem:
        load_settings(config)

    lines = str(problem.value).splitlines()
    assert len(lines) == 3
    assert any("'colour'" in line for line in lines) and any("'queue.eta_history'" in line for line in lines)
    assert any("'limits.max_cutouts'" in line for line in lines)


def _leaf_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """Every setting's path and default, walking into sections, from the model's own field list."""
    leaves = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves |= _leaf_fields(annotation, (*prefix, name))
        else:
            leaves[(*prefix, name)] = field.get_default(call_default_factory=True)
    return leaves


def test_default_toml_documents_every_field_of_the_settings_with_its_real_default() -> None:
    text = DEFAULT_TOML.read_text()
    written = tomllib.loads(text)
    defaults = BotSettings().model_dump(mode="json")
    leaves = _leaf_fields(BotSettings)
    assert ("queue", "max_queued_per_user") in leaves  # the walk really reaches into the sections

    for path, default_value in leaves.items():
        if default_value is None:  # TOML has no null: such a setting is shown commented out, "# key = ..."
            assert re.search(rf"^#\s*{path[-1]}\s*=", text, re.MULTILINE), f"config/default.toml lacks {'.'.join(path)}"
            continue
        table, default = written, defaults
        for part in path:
            assert isinstance(table, dict) and part in table, f"config/default.toml lacks {'.'.join(path)}"
            table, default = table[part], default[part]
        assert table == default, f"{'.'.join(path)} is {table!r} in config/default.toml but defaults to {default!r}"

    # Each key has a comment saying what it does: on the lines just above it (a comment may cover a run of keys).
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^[a-z_]+\s*=", line):
            above = number - 1
            while above >= 0 and re.match(r"^[a-z_]+\s*=", lines[above]):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), f"config/default.toml: {line.split('=')[0].strip()} has no comment"


def test_the_token_comes_from_the_environment_only_and_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token-value")

    connection = DiscordConnection.from_env()

    assert connection.token is not None and connection.token.get_secret_value() == "secret-token-value"
    assert "secret-token-value" not in repr(connection) and "secret-token-value" not in str(connection)
    assert DiscordConnection.from_env({}).token is None


def test_unknown_bigsleep_variables_are_reported() -> None:
    environ = {"BIGSLEEP_MODLES": "tiny", "BIGSLEEP_MODELS": "tiny", "BIGSLEEP_QUEUE__MAX_QUEUED_PER_USER": "3",
               "BIGSLEEP_CACHE_DIR": "/tmp", "BIGSLEEP_WEIGHTS_MIRROR": "http://m", "HOME": "/root",
               # A key under a setting that has none, and a lower-case name (settings match case-insensitively).
               "BIGSLEEP_MODELS__X": "1", "bigsleep_colour": "blue"}

    assert unknown_environment_names(environ) == ["BIGSLEEP_MODELS__X", "BIGSLEEP_MODLES", "bigsleep_colour"]


def test_an_unknown_variable_stops_the_load_naming_it_with_any_other_mistake(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config_dir / "default.toml").write_text(DEFAULT_TOML.read_text())
    monkeypatch.setenv("BIGSLEEP_MODLES", "tiny")

    with pytest.raises(SettingsError) as problem:
        load_settings()
    assert str(problem.value) == "unknown setting 'modles' (from BIGSLEEP_MODLES)"

    monkeypatch.setenv("BIGSLEEP_QUEUE__ETA_HISTORY", "0")
    with pytest.raises(SettingsError) as problem:
        load_settings()
    lines = str(problem.value).splitlines()
    assert lines[0] == "unknown setting 'modles' (from BIGSLEEP_MODLES)" and "'queue.eta_history'" in lines[1]

    # The variables the generator and the config chooser read are no mistake.
    monkeypatch.delenv("BIGSLEEP_MODLES")
    monkeypatch.delenv("BIGSLEEP_QUEUE__ETA_HISTORY")
    for name in ("BIGSLEEP_CACHE_DIR", "BIGSLEEP_OFFLINE", "BIGSLEEP_WEIGHTS_DIR", "BIGSLEEP_WEIGHTS_MIRROR"):
        monkeypatch.setenv(name, "0")
    assert load_settings().models == "full"


def test_every_bigsleep_variable_the_docs_and_the_image_name_is_one_the_bot_accepts() -> None:
    repo = REPO_CONFIG_DIR.parent
    named = set()
    for document in ("README.md", "Dockerfile", "config/default.toml", ".ci/run", "scripts/bot", "scripts/test"):
        named |= set(re.findall(r"\bBIGSLEEP_[A-Z0-9_]*[A-Z0-9]", (repo / document).read_text()))
    named -= {"BIGSLEEP_MODLES", "BIGSLEEP_X"}  # the docs' own examples of a typo
    assert {"BIGSLEEP_HEALTH__HOST", "BIGSLEEP_WEIGHTS_MIRROR", "BIGSLEEP_QUEUE__MAX_QUEUED_PER_USER"} <= named

    assert unknown_environment_names(dict.fromkeys(named, "")) == []
    # Section keys are pydantic's to check: each must name a real field of its section.
    sections = {name: field.annotation for name, field in BotSettings.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}
    for variable in named:
        section, _, key = variable.removeprefix("BIGSLEEP_").lower().partition("__")
        if key:
            assert key in sections[section].model_fields, variable


def test_the_generator_reads_its_keys_from_the_bots_files_and_passes_over_the_rest(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config_dir / "default.toml").write_text(DEFAULT_TOML.read_text())
    (config_dir / "local.toml").write_text(
        'device = "cuda:1"\n[worker]\nsizes = [256]\ntimelapse = true\n[limits]\ndefault_size = 256\n[queue]\nmax_queud = 1\n')
    monkeypatch.setenv("BIGSLEEP_WORKER__MAX_BATCH_SIZE", "2")
    monkeypatch.setenv("BIGSLEEP_DATA_DIR", "/srv/bigsleep")

    generator = load_generator_settings()

    assert (generator.models, generator.device, generator.worker.sizes, generator.worker.max_batch_size) == (
        "full", "cuda:1", (256,), 2)
    # The bot knows every key, so it refuses the typo the generator passed over.
    with pytest.raises(SettingsError, match=r"unknown setting 'queue.max_queud'"):
        load_settings()
    # A bad value of the generator's own is the generator's mistake too, named where it was written.
    monkeypatch.setenv("BIGSLEEP_WORKER__SIZES", "[100]")
    with pytest.raises(SettingsError, match=r"setting 'worker' \(in .*local.toml and .*BIGSLEEP_WORKER__SIZES\): .*\[100\]"):
        load_generator_settings()


def test_the_bots_settings_include_the_generators_each_key_declared_once() -> None:
    assert issubclass(BotSettings, GeneratorSettings) and issubclass(WorkerSettings, GeneratorWorkerSettings)
    # Only the worker section is declared again, as the bot's subclass of the generator's section.
    assert set(BotSettings.__annotations__) & set(GeneratorSettings.model_fields) == {"worker"}
    assert set(WorkerSettings.__annotations__) & set(GeneratorWorkerSettings.model_fields) == set()
    defaults = BotSettings()
    assert defaults.worker.model_dump(include=set(GeneratorWorkerSettings.model_fields)) == GeneratorWorkerSettings().model_dump()


@pytest.mark.parametrize("written, shards, shard_count", [
    ("", 1, 1),
    ('[discord]\nshards = "auto"\n', "auto", None),
    ("[discord]\nshards = 4\n", 4, 4),
])
def test_discord_shards_is_one_auto_or_a_count(config_dir: Path, written: str, shards: object, shard_count: int | None) -> None:
    (config_dir / "default.toml").write_text(written)

    discord = load_settings().discord

    assert (discord.shards, discord.shard_count, discord.sharded) == (shards, shard_count, shards != 1)


def test_discord_shards_from_the_environment(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIGSLEEP_DISCORD__SHARDS", "auto")
    assert load_settings().discord.shards == "auto"
    monkeypatch.setenv("BIGSLEEP_DISCORD__SHARDS", "3")
    assert load_settings().discord.shards == 3


@pytest.mark.parametrize("value", ["0", "-2", '"many"', "1.5", "true", "[2]"])
def test_a_shard_count_that_is_neither_auto_nor_a_whole_number_is_refused(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    (config_dir / "default.toml").write_text(f"[discord]\nshards = {value}\n")

    with pytest.raises(SettingsError) as problem:
        load_settings()

    assert re.fullmatch(r"setting 'discord\.shards' \(in .*default\.toml\): .*must be \"auto\" or a whole number of shards, "
                        r"1 or more.*", str(problem.value)), str(problem.value)
