"""Settings: config/default.toml documents every setting at its default; the environment wins; mistakes name
the key. (Here with the other bot-side tests this work added.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bot.settings import (
    REPO_CONFIG_DIR,
    BotSettings,
    DiscordConnection,
    SettingsError,
    load_settings,
    unknown_environment_names,
)

DEFAULT_TOML = REPO_CONFIG_DIR / "default.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("BIGSLEEP_", "DISCORD_")):
            monkeypatch.delenv(name)


def keys_of(table: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in table.items():
        if isinstance(value, dict):
            keys |= keys_of(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_default_toml_lists_every_setting_at_its_default() -> None:
    written = tomllib.loads(DEFAULT_TOML.read_text())
    defaults = BotSettings().model_dump(mode="json")

    assert keys_of(written) == keys_of(defaults)
    assert load_settings(DEFAULT_TOML).model_dump() == BotSettings().model_dump()


def test_environment_wins_over_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text('models = "random"\n[queue]\nmax_queued_per_user = 4\nmax_running_per_user = 2\n')
    monkeypatch.setenv("BIGSLEEP_MODELS", "tiny")
    monkeypatch.setenv("BIGSLEEP_QUEUE__MAX_QUEUED_PER_USER", "7")
    monkeypatch.setenv("BIGSLEEP_DATA_DIR", str(tmp_path / "somewhere"))

    settings = load_settings(config)

    assert (settings.models, settings.queue.max_queued_per_user, settings.queue.max_running_per_user) == ("tiny", 7, 2)
    assert settings.database_path == tmp_path / "somewhere" / "jobs.sqlite3"


def test_local_toml_beside_the_default_overrides_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "default.toml").write_text(DEFAULT_TOML.read_text())
    (tmp_path / "local.toml").write_text("[progress]\nedit_interval_seconds = 8.0\n")
    monkeypatch.setenv("BIGSLEEP_CONFIG_DIR", str(tmp_path))

    settings = load_settings()

    assert settings.progress.edit_interval_seconds == 8.0
    assert settings.progress.channel_edits_per_window == 5  # the rest of the section stays


@pytest.mark.parametrize(
    "text, named",
    [
        ("modles = 'tiny'\n", "unknown setting 'modles'"),
        ("[queue]\nmax_queued = 3\n", "unknown setting 'queue.max_queued'"),
        ("[worker]\nsizes = [100]\n", "worker"),
        ("[progress]\nedit_interval_seconds = -1\n", "'progress.edit_interval_seconds'"),
        ("models = 'huge'\n", "'models'"),
    ],
)
def test_a_mistake_stops_the_start_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "bot.toml"
    config.write_text(text)

    with pytest.raises(SettingsError) as problem:
        load_settings(config)

    assert named in str(problem.value)


def test_the_token_comes_from_the_environment_only_and_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token-value")

    connection = DiscordConnection.from_env()

    assert connection.token is not None and connection.token.get_secret_value() == "secret-token-value"
    assert "secret-token-value" not in repr(connection) and "secret-token-value" not in str(connection)
    assert DiscordConnection.from_env({}).token is None


def test_unknown_bigsleep_variables_are_reported() -> None:
    environ = {"BIGSLEEP_MODLES": "tiny", "BIGSLEEP_MODELS": "tiny", "BIGSLEEP_QUEUE__MAX_QUEUED_PER_USER": "3",
               "BIGSLEEP_CACHE_DIR": "/tmp", "HOME": "/root"}

    assert unknown_environment_names(environ) == ["BIGSLEEP_MODLES"]
