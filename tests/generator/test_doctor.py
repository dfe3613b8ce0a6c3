"""`bigsleep doctor`: what it says about weights, the token, the data folder and database, and the config.

Most cases call the checks in this process (torch is already loaded here); one runs the real command.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from bot.jobs.store import MIGRATIONS, JobStore
from generator import weights
from generator.doctor import Finding, diagnose, format_report

REPO_ROOT = Path(__file__).resolve().parents[2]
# Shaped like a bot token (id.timestamp.hmac) but made up.
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GdPq3x.aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789_-"
FAKE_CLIP = b"a stand-in for CLIP " * 20


@pytest.fixture
def setup(tmp_path, monkeypatch) -> Path:
    """A clean environment, a config for the smallest real setup, and an empty cache; returns the config."""
    for name in list(os.environ):
        if name.startswith(("BIGSLEEP_", "DISCORD_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BIGSLEEP_CACHE_DIR", str(tmp_path / "cache"))
    config = tmp_path / "bot.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\ndevice = "cpu"\n[worker]\nsizes = [128]\n'
                      "[limits]\ndefault_size = 128\n")
    return config


def by_topic(findings: list[Finding], topic: str) -> list[Finding]:
    found = [finding for finding in findings if finding.topic == topic]
    assert found, f"no {topic} line in:\n{format_report(findings)}"
    return found


class FakeDiscordApi:
    """Answers GET /api/v10/users/@me with `status`; records the Authorization headers it got."""

    def __init__(self, status: int) -> None:
        self.authorizations: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.authorizations.append(self.headers.get("Authorization", ""))
                body = json.dumps({"id": "123", "username": "Dreamer"} if status == 200 else {"message": "401: Unauthorized"})
                self.send_response(status if self.path == "/api/v10/users/@me" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.api_base = f"http://127.0.0.1:{self._httpd.server_address[1]}/api/v10"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def discord_api():
    servers = []

    def start(status: int) -> FakeDiscordApi:
        servers.append(FakeDiscordApi(status))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# ---- weights --------------------------------------------------------------------------------------------


def test_missing_weights_are_named_with_the_download_command_as_the_fix(setup):
    (weights_line,) = by_topic(diagnose(setup, offline=True), "weights")

    assert weights_line.status == "WARN"  # the bot would still fetch them on its first start
    for key in ("clip/ViT-B-32.pt", "biggan-deep-128/config.json", "biggan-deep-128/pytorch_model.bin"):
        assert key in weights_line.detail
    assert "biggan-deep-256" not in weights_line.detail  # only what the configured sizes need
    assert "`bigsleep download`" in weights_line.fix and "exactly these names" in weights_line.fix


def test_missing_weights_where_nothing_may_be_downloaded_fail(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("BIGSLEEP_WEIGHTS_DIR", str(tmp_path / "weights"))
    (weights_line,) = by_topic(diagnose(setup, offline=True), "weights")
    assert weights_line.status == "FAIL" and str(tmp_path / "weights") in weights_line.detail
    assert "BIGSLEEP_WEIGHTS_DIR" in weights_line.fix and "clip/ViT-B-32.pt" in weights_line.detail

    monkeypatch.delenv("BIGSLEEP_WEIGHTS_DIR")
    monkeypatch.setenv("BIGSLEEP_OFFLINE", "1")
    (weights_line,) = by_topic(diagnose(setup, offline=True), "weights")
    assert weights_line.status == "FAIL" and "BIGSLEEP_OFFLINE" in weights_line.detail


def test_present_weights_are_verified_and_a_corrupted_one_is_named(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_CLIP_SHA256", hashlib.sha256(FAKE_CLIP).hexdigest())
    monkeypatch.setattr(weights, "_CLIP_SIZE", len(FAKE_CLIP))
    folder = tmp_path / "weights"
    monkeypatch.setenv("BIGSLEEP_WEIGHTS_DIR", str(folder))
    for key, body in (("clip/ViT-B-32.pt", FAKE_CLIP), ("biggan-deep-128/config.json", b"{}"),
                      ("biggan-deep-128/pytorch_model.bin", b"weights")):
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(body)

    (weights_line,) = by_topic(diagnose(setup, offline=True), "weights")
    assert weights_line.status == "OK" and "all 3 weight files" in weights_line.detail

    (folder / "clip/ViT-B-32.pt").write_bytes(FAKE_CLIP[:-1] + b"!")
    (weights_line,) = by_topic(diagnose(setup, offline=True), "weights")
    assert weights_line.status == "FAIL" and "clip/ViT-B-32.pt" in weights_line.detail and "SHA-256" in weights_line.detail


def test_tiny_models_need_no_weights_but_are_called_noise(setup, monkeypatch):
    monkeypatch.setenv("BIGSLEEP_MODELS", "tiny")
    (weights_line,) = by_topic(diagnose(setup, offline=True), "weights")
    assert weights_line.status == "WARN" and "noise" in weights_line.detail


# ---- the token ------------------------------------------------------------------------------------------


def test_a_missing_token_fails_with_where_to_get_one(setup):
    (token_line,) = by_topic(diagnose(setup, offline=True), "token")
    assert token_line.status == "FAIL" and "DISCORD_TOKEN is not set" in token_line.detail
    assert "Developer Portal" in token_line.fix


def test_a_token_discord_accepts_is_ok_and_never_printed(setup, monkeypatch, discord_api):
    api = discord_api(200)
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("DISCORD_API_BASE", api.api_base)

    findings = diagnose(setup)

    (token_line,) = by_topic(findings, "token")
    assert token_line.status == "OK" and "Dreamer" in token_line.detail
    assert api.authorizations == [f"Bot {TOKEN}"]
    report = format_report(findings)
    assert TOKEN not in report and TOKEN.split(".")[0] not in report and TOKEN.split(".")[2] not in report


def test_a_token_discord_refuses_fails_with_how_to_reset_it(setup, monkeypatch, discord_api):
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("DISCORD_API_BASE", discord_api(401).api_base)

    findings = diagnose(setup)

    (token_line,) = by_topic(findings, "token")
    assert token_line.status == "FAIL" and "refused" in token_line.detail and "Reset Token" in token_line.fix
    assert TOKEN not in format_report(findings)


def test_when_discord_cannot_be_reached_the_token_is_only_checked_for_shape(setup, monkeypatch, unreachable_url):
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("DISCORD_API_BASE", unreachable_url + "/api/v10")

    statuses = [(f.status, f.detail) for f in by_topic(diagnose(setup), "token")]

    assert statuses[0][0] == "OK" and "shaped like a bot token" in statuses[0][1]
    assert statuses[1][0] == "WARN" and "could not ask Discord" in statuses[1][1]


@pytest.mark.parametrize("token, complaint", [
    (f"Bot {TOKEN}", "starts with 'Bot '"),
    (f'"{TOKEN}"', "quotes"),
    ("0123456789abcdef0123456789abcdef", "does not look like a bot token"),  # a client secret, say
])
def test_common_token_mistakes_are_explained_without_showing_the_token(setup, monkeypatch, token, complaint):
    monkeypatch.setenv("DISCORD_TOKEN", token)

    findings = diagnose(setup, offline=True)

    (token_line,) = by_topic(findings, "token")
    assert token_line.status == "FAIL" and complaint in token_line.detail
    assert token.strip('"') not in format_report(findings)


# ---- the data folder and the database -------------------------------------------------------------------


def test_a_data_dir_that_cannot_be_written_fails(setup, tmp_path):
    (tmp_path / "data").write_text("a file where the data folder should be")

    (data_line,) = by_topic(diagnose(setup, offline=True), "data dir")

    assert data_line.status == "FAIL" and "is a file, not a folder" in data_line.detail
    assert "BIGSLEEP_DATA_DIR" in data_line.fix
    # In Docker, the uid the image really runs as (it said 1000 while the image used 10001).
    (image_user,) = re.findall(r"^USER (\d+)", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert f"writable by uid {image_user}" in data_line.fix


def test_a_data_dir_below_a_file_cannot_be_created(setup, tmp_path, monkeypatch):
    (tmp_path / "blocker").write_text("")
    monkeypatch.setenv("BIGSLEEP_DATA_DIR", str(tmp_path / "blocker/data"))

    (data_line,) = by_topic(diagnose(setup, offline=True), "data dir")

    assert data_line.status == "FAIL" and "cannot be created" in data_line.detail


def test_a_database_that_is_not_one_fails(setup, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/jobs.sqlite3").write_bytes(b"this is not SQLite " * 100)

    findings = diagnose(setup, offline=True)

    assert by_topic(findings, "data dir")[0].status == "OK"
    (database_line,) = by_topic(findings, "database")
    assert database_line.status == "FAIL" and "cannot be read" in database_line.detail and "backup" in database_line.fix


def test_a_database_from_a_newer_bot_fails(setup, tmp_path):
    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data/jobs.sqlite3") as db:
        db.execute("CREATE TABLE jobs (state TEXT)")
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")

    (database_line,) = by_topic(diagnose(setup, offline=True), "database")

    assert database_line.status == "FAIL" and "newer than this bot's" in database_line.detail


def test_a_good_database_is_described_and_left_unchanged(setup, tmp_path):
    path = tmp_path / "data/jobs.sqlite3"

    async def create_old_database() -> None:
        store = await JobStore.open(path, migrations=MIGRATIONS[:1])
        await store.close()

    asyncio.run(create_old_database())
    before = path.read_bytes()

    (database_line,) = by_topic(diagnose(setup, offline=True), "database")

    assert database_line.status == "OK" and "schema v1" in database_line.detail
    assert f"migrates it to v{len(MIGRATIONS)} on start" in database_line.detail
    assert path.read_bytes() == before  # read-only: the doctor never migrates behind the bot's back


# ---- config, gpu, device, and the command itself --------------------------------------------------------


def test_a_broken_config_fails_naming_the_key_and_the_other_checks_still_run(setup, monkeypatch):
    setup.write_text(setup.read_text() + "[queue]\nmax_queud = 2\n")
    monkeypatch.setenv("BIGSLEEP_MODLES", "tiny")

    findings = diagnose(setup, offline=True)

    config_lines = by_topic(findings, "config")
    assert config_lines[0].status == "FAIL" and "unknown setting 'queue.max_queud'" in config_lines[0].detail
    # A mistyped variable stops the bot's start too, so it is a FAIL in the same line, named.
    assert "unknown setting 'modles' (from BIGSLEEP_MODLES)" in config_lines[0].detail and len(config_lines) == 1
    assert {"python", "torch", "weights", "data dir", "token"} <= {f.topic for f in findings}


def test_gpu_and_device_lines_tell_the_truth_about_this_machine(setup, monkeypatch):
    findings = diagnose(setup, offline=True)

    (gpu_line,) = by_topic(findings, "gpu")
    if torch.cuda.is_available():
        assert gpu_line.status == "OK" and torch.cuda.get_device_name(0) in gpu_line.detail
    else:
        assert gpu_line.status == "WARN" and "very slow" in gpu_line.detail and "--gpus all" in gpu_line.fix
    assert by_topic(findings, "device")[0].status == "OK"

    if not torch.cuda.is_available():
        monkeypatch.setenv("BIGSLEEP_DEVICE", "cuda")
        (device_line,) = by_topic(diagnose(setup, offline=True), "device")
        assert device_line.status == "FAIL" and "'cuda'" in device_line.detail and 'device = "auto"' in device_line.fix


def test_the_command_prints_each_problem_with_its_fix_and_exits_1(setup, tmp_path):
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("BIGSLEEP_", "DISCORD_"))}
    environment |= {"BIGSLEEP_CACHE_DIR": str(tmp_path / "cache"), "BIGSLEEP_OFFLINE": "1"}

    result = subprocess.run([sys.executable, "-m", "generator", "doctor", "--offline", "--config", str(setup)],
                            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=180, check=False)

    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    weights_at = next(i for i, line in enumerate(lines) if line.startswith("FAIL  weights"))
    assert "clip/ViT-B-32.pt" in lines[weights_at] and "biggan-deep-128/pytorch_model.bin" in lines[weights_at]
    assert "fix: run `bigsleep download`" in lines[weights_at + 1]
    assert any(line.startswith("FAIL  token") and "DISCORD_TOKEN is not set" in line for line in lines)
    assert lines[-1].startswith("2 problems to fix") and "Traceback" not in result.stderr
