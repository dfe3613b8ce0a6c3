"""`bigsleep-bot doctor`: what it says about the token, the data folder and database, and the bot's config, with
the machine's checks (tests/generator/test_machine_doctor.py) in the same report.

Most cases call the checks in this process; one runs the real command.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from doctor_helpers import by_topic, start_clean

from bot.database import Database, bot_migrations, latest_version
from bot.doctor import diagnose
from bot.settings import cleartext_problem
from generator.doctor import format_report

REPO_ROOT = Path(__file__).resolve().parents[2]
# Shaped like a bot token (id.timestamp.hmac) but made up.
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GdPq3x.aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789_-"


@pytest.fixture
def setup(tmp_path, monkeypatch) -> Path:
    """A clean environment, a config for the smallest real setup, and an empty cache; returns the config."""
    return start_clean(monkeypatch, tmp_path, f'data_dir = "{tmp_path / "data"}"\ndevice = "cpu"\n[worker]\nsizes = [128]\n'
                                              "[limits]\ndefault_size = 128\n")


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


def test_when_discord_cannot_be_reached_the_token_is_only_checked_for_shape(setup, monkeypatch):
    gone = FakeDiscordApi(200)
    gone.close()  # nothing listens at its address any more: connecting is refused at once
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("DISCORD_API_BASE", gone.api_base)

    statuses = [(f.status, f.detail) for f in by_topic(diagnose(setup), "token")]

    assert statuses[0][0] == "OK" and "shaped like a bot token" in statuses[0][1]
    assert statuses[1][0] == "WARN" and "could not ask Discord" in statuses[1][1]


@pytest.mark.parametrize("url", [
    "https://discord.com/api/v10", "HTTPS://Discord.com/api/v10", "https://203.0.113.5:8443/api/v10", "wss://gateway.discord.gg",
    "http://127.0.0.1:5000/api/v10", "http://127.8.9.10/api", "http://[::1]:8080/api/v10", "http://localhost/api/v10",
    "http://LOCALHOST:80/api", "ws://127.0.0.1:5001/gateway", "ws://[::1]:5001",
])
def test_the_token_may_go_over_tls_anywhere_and_in_the_clear_only_to_this_machine(url):
    assert cleartext_problem("DISCORD_API_BASE", url) is None


@pytest.mark.parametrize("url", [
    "http://example.invalid/api/v10", "http://discord.com/api/v10", "http://10.0.0.2/api", "http://[2001:db8::1]/api",
    "http://127.0.0.1.example.com/api", "http://localhost.example.com/api", "http://127.0.0.1@evil.example/api",
    "ws://gateway.example", "ftp://127.0.0.1/api", "discord.com/api/v10", "http://[::1/api",
])
def test_the_token_never_goes_in_the_clear_to_another_machine(url):
    problem = cleartext_problem("DISCORD_API_BASE", url)
    assert problem is not None and problem.startswith("DISCORD_API_BASE ")


def test_a_plain_http_api_base_to_another_machine_fails_and_the_token_is_not_sent(setup, monkeypatch):
    attempts = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, **kwargs: attempts.append(request.full_url))
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("DISCORD_API_BASE", "http://example.invalid/api/v10")

    findings = diagnose(setup)

    assert attempts == []
    (token_line,) = by_topic(findings, "token")
    assert token_line.status == "FAIL"
    assert "DISCORD_API_BASE" in token_line.detail and "unencrypted" in token_line.detail and "not sent" in token_line.detail
    assert "https://" in token_line.fix
    assert TOKEN not in format_report(findings)


def test_a_plain_ws_gateway_to_another_machine_fails_even_offline(setup, monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("DISCORD_GATEWAY_URL", "ws://gateway.example/?v=10")

    (token_line,) = by_topic(diagnose(setup, offline=True), "token")

    assert token_line.status == "FAIL" and "DISCORD_GATEWAY_URL" in token_line.detail


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
        db.execute(f"PRAGMA user_version = {latest_version() + 1}")

    (database_line,) = by_topic(diagnose(setup, offline=True), "database")

    assert database_line.status == "FAIL" and "newer than this bot's" in database_line.detail


def test_a_good_database_is_described_and_left_unchanged(setup, tmp_path):
    path = tmp_path / "data/jobs.sqlite3"

    async def create_old_database() -> None:
        database = await Database.open(path, migrations=bot_migrations()[:1])
        await database.close()

    asyncio.run(create_old_database())
    before = path.read_bytes()

    (database_line,) = by_topic(diagnose(setup, offline=True), "database")

    assert database_line.status == "OK" and "schema v1" in database_line.detail
    assert f"migrates it to v{latest_version()} on start" in database_line.detail
    assert path.read_bytes() == before  # read-only: the doctor never migrates behind the bot's back


# ---- config, and the command itself --------------------------------------------------------------------


def test_a_broken_config_fails_naming_the_key_and_the_other_checks_still_run(setup, monkeypatch):
    setup.write_text(setup.read_text() + "[queue]\nmax_queud = 2\n")
    monkeypatch.setenv("BIGSLEEP_MODLES", "tiny")

    findings = diagnose(setup, offline=True)

    config_lines = by_topic(findings, "config")
    assert config_lines[0].status == "FAIL" and "unknown setting 'queue.max_queud'" in config_lines[0].detail
    # A mistyped variable stops the bot's start too, so it is a FAIL in the same line, named.
    assert "unknown setting 'modles' (from BIGSLEEP_MODLES)" in config_lines[0].detail and len(config_lines) == 1
    assert {"python", "torch", "weights", "data dir", "token"} <= {f.topic for f in findings}


def test_the_command_runs_without_a_token_and_reports_it_with_the_machines_checks(setup, tmp_path):
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("BIGSLEEP_", "DISCORD_"))}
    environment |= {"BIGSLEEP_CACHE_DIR": str(tmp_path / "cache"), "BIGSLEEP_OFFLINE": "1"}

    result = subprocess.run([sys.executable, "-m", "bot", "doctor", "--offline", "--config", str(setup)],
                            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=180, check=False)

    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    topics = [line.split()[1] for line in lines if line.startswith(("OK ", "WARN ", "FAIL "))]
    assert topics == ["config", "python", "torch", "gpu", "device", "weights", "data", "database", "token"]
    assert any(line.startswith("FAIL  token") and "DISCORD_TOKEN is not set" in line for line in lines)
    assert any(line.startswith("FAIL  weights") and "clip/ViT-B-32.pt" in line for line in lines)
    assert lines[-1].startswith("2 problems to fix") and "Traceback" not in result.stderr


# ---- the Ray cluster (worker.backend = "ray"); a reachable one is checked in tests/bot/jobs/test_ray_workers.py --


def test_a_ray_cluster_nobody_answers_for_fails_naming_the_address(setup, monkeypatch):
    from ray_cluster import free_port

    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("BIGSLEEP_WORKER__BACKEND", "ray")
    monkeypatch.setenv("BIGSLEEP_CLUSTER__ADDRESS", address)

    (finding,) = by_topic(diagnose(setup, offline=True), "cluster")

    assert finding.status == "FAIL" and f"the Ray cluster at {address} cannot be reached" in finding.detail
    assert "ray start --head" in finding.fix


def test_the_local_backend_checks_no_cluster(setup):
    assert not [finding for finding in diagnose(setup, offline=True) if finding.topic == "cluster"]
