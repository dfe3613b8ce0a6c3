"""Shared by the doctors' tests (tests/generator/test_machine_doctor.py, tests/bot/test_doctor.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from generator.doctor import Finding, format_report


def start_clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config_text: str) -> Path:
    """No BIGSLEEP_* nor DISCORD_* variable but an empty weights cache in `tmp_path`; returns a config file."""
    for name in list(os.environ):
        if name.startswith(("BIGSLEEP_", "DISCORD_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BIGSLEEP_CACHE_DIR", str(tmp_path / "cache"))
    config = tmp_path / "bot.toml"
    config.write_text(config_text)
    return config


def by_topic(findings: list[Finding], topic: str) -> list[Finding]:
    found = [finding for finding in findings if finding.topic == topic]
    assert found, f"no {topic} line in:\n{format_report(findings)}"
    return found
