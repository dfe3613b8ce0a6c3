"""The real entry point (`python -m bot`, `bigsleep-bot`) as a subprocess, configured only through the
environment, against the fake Discord; and its refusals to start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import imagine, png_size, result_png, stop_gracefully, wait_for_result
from fakediscord import FakeDiscord

REPO_ROOT = Path(__file__).resolve().parents[3]
BOT_SCRIPT = Path(sys.executable).parent / "bigsleep-bot"

pytestmark = pytest.mark.timeout(300)


def bot_environment(fake: FakeDiscord | None, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BIGSLEEP_", "DISCORD_"))}
    env.update(
        BIGSLEEP_MODELS="tiny",
        BIGSLEEP_DEVICE="cpu",
        BIGSLEEP_DATA_DIR=str(data_dir),
        BIGSLEEP_WORKER__SIZES="[128]",
        BIGSLEEP_WORKER__MAX_BATCH_SIZE="1",
        BIGSLEEP_LIMITS__DEFAULT_SIZE="128",
        BIGSLEEP_LIMITS__MAX_CUTOUTS="2",
        BIGSLEEP_PROGRESS__EDIT_INTERVAL_SECONDS="0.5",
    )
    if fake is not None:
        env.update(DISCORD_TOKEN=fake.token, DISCORD_API_BASE=fake.api_base, DISCORD_GATEWAY_URL=fake.gateway_url)
    env.update(extra)
    return env


async def test_the_entry_point_runs_against_a_discord_compatible_server_and_returns_an_image(fake_discord: FakeDiscord, world, tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--sync",
        cwd=REPO_ROOT,
        env=bot_environment(fake_discord, tmp_path / "data"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = asyncio.ensure_future(process.stdout.read())
    try:
        await fake_discord.wait_for(lambda: any(c["name"] == "imagine" for c in fake_discord.commands()), timeout=120)
        await fake_discord.wait_for_gateway("ready", timeout=60)

        response, job_id = await imagine(fake_discord, world.channel, world.alice, "a bowl of cherries", steps=2)
        assert job_id, response.content
        final = await wait_for_result(fake_discord, world.channel, job_id, timeout=180)
        assert png_size(result_png(final, job_id)) == (128, 128)
        assert (tmp_path / "data" / "jobs.sqlite3").is_file()
    finally:
        code = await stop_gracefully(process)
        log = (await output).decode(errors="replace")
    assert code == 0, log
    assert "Traceback" not in log, log
    assert fake_discord.token not in log


def test_without_a_token_it_exits_with_one_line_saying_what_to_set(tmp_path):
    result = subprocess.run(
        [str(BOT_SCRIPT)], cwd=tmp_path, env=bot_environment(None, tmp_path), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DISCORD_TOKEN" in lines[0], result.stderr


def test_an_unknown_setting_stops_the_start_naming_the_key(tmp_path):
    config = tmp_path / "bot.toml"
    config.write_text('models = "tiny"\n[queue]\nmax_queud_per_user = 3\n')
    env = bot_environment(None, tmp_path, DISCORD_TOKEN="x", BIGSLEEP_PROGRESS__EDIT_INTERVAL_SECONDS="soon")
    result = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(config)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2
    assert "queue.max_queud_per_user" in result.stderr and "progress.edit_interval_seconds" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_mistyped_variable_stops_the_start_with_one_line_naming_it(tmp_path):
    env = bot_environment(None, tmp_path, DISCORD_TOKEN="x", BIGSLEEP_MODLES="tiny")
    result = subprocess.run([str(BOT_SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["bigsleep-bot: unknown setting 'modles' (from BIGSLEEP_MODLES)"]


@pytest.mark.parametrize("variable, url", [
    ("DISCORD_API_BASE", "http://example.invalid/api/v10"),
    ("DISCORD_GATEWAY_URL", "ws://example.invalid/?v=10"),
])
def test_a_plain_text_discord_address_off_this_machine_stops_the_start(tmp_path, variable, url):
    env = bot_environment(None, tmp_path, DISCORD_TOKEN="x", **{variable: url})
    result = subprocess.run([str(BOT_SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"bigsleep-bot: {variable} ") and "unencrypted" in line and "https://" in line
    assert not (tmp_path / "jobs.sqlite3").exists()

