"""`bigsleep-bot doctor`: check a machine for running the bot, and say how to fix what is wrong.

The bot's checks (its configuration, data folder, job database, Discord token) with the machine's from
`generator.doctor` (Python, torch, GPU, device, weights) between them, in the order an admin would fix things.
Each line is OK, WARN or FAIL with a fix, as there. Never prints the Discord token or anything derived from it, and
sends it only over TLS (or to this machine: a test server), never in plain text across a network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path

from bot.database import latest_version
from bot.settings import CLEARTEXT_FIX, BotSettings, DiscordConnection, load_settings
from generator.doctor import Finding, check_machine, check_settings, guarded

DISCORD_API_BASE = "https://discord.com/api/v10"
DISCORD_CHECK_TIMEOUT_S = 5.0
# Below this much free space the job database and the images it keeps will soon stop growing.
LOW_DISK_BYTES = 1 << 30
# Three base64url parts joined by dots: the bot's id, a timestamp, an HMAC (Discord's bot token format).
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{17,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}")
_PORTAL = "Discord Developer Portal > your application > Bot > Reset Token"


def diagnose(config: Path | None = None, *, offline: bool = False, environ: Mapping[str, str] | None = None) -> list[Finding]:
    """Every check, the machine's included. `offline`: do not ask Discord whether the token is valid."""
    environ = os.environ if environ is None else environ
    findings: list[Finding] = []
    settings = check_settings(findings, BotSettings, load_settings, config, environ)
    check_machine(findings, settings)
    if settings.worker.backend == "ray":
        guarded(findings, "cluster", lambda: findings.extend(check_cluster(settings)))
    guarded(findings, "data dir", lambda: findings.extend(_check_data_dir(settings)))
    guarded(findings, "token", lambda: findings.extend(_check_token(environ, offline=offline)))
    return findings


# ---- the Ray cluster (worker.backend = "ray") ----------------------------------------------------------------


def check_cluster(settings: BotSettings, environ: Mapping[str, str] | None = None) -> list[Finding]:
    """Ray installed, the cluster's address answering, what it offers (nodes, GPUs: how many workers), and
    whether this connection uses Ray's token authentication."""
    environ = os.environ if environ is None else environ
    cluster = settings.cluster
    if importlib.util.find_spec("ray") is None:
        return [Finding("FAIL", "cluster", 'worker.backend = "ray" but Ray is not installed',
                        'pip install "bigsleep-bot[cluster]" (on the bot\'s machine and on every GPU machine)')]
    from generator.ray_bridge import reachability_problem

    problem = reachability_problem(cluster.address)
    if problem is not None:
        return [Finding("FAIL", "cluster", f"the Ray cluster at {cluster.address} cannot be reached: {problem}",
                        "start it (`ray start --head` there) or fix cluster.address; the bot runs meanwhile, "
                        "and jobs wait until it answers")]
    findings = [_check_ray_auth(environ)]
    try:
        probe = subprocess.run([sys.executable, "-m", "generator.ray_bridge", cluster.address], capture_output=True,
                               text=True, timeout=cluster.connect_timeout_seconds + 15, check=False)
        offered = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        offered = None
    if offered is None:
        findings.append(Finding("FAIL", "cluster", f"the Ray cluster at {cluster.address} answers but did not let "
                                "this machine connect as a client", "check Ray's versions match (ray --version) and "
                                "its token authentication (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH): see the README"))
        return findings
    if cluster.gpus_per_worker > 0:
        room = int(offered["gpus"] // cluster.gpus_per_worker)
    else:
        room = int(offered["cpus"] // cluster.cpus_per_worker)
    workers = room if cluster.max_workers == 0 else min(room, cluster.max_workers)
    summary = (f"the Ray cluster at {cluster.address} answers: {offered['nodes']} node(s), {offered['gpus']:g} GPU(s), "
               f"{offered['cpus']:g} CPU(s); room for {workers} worker(s) now")
    if workers == 0:
        findings.append(Finding("WARN", "cluster", summary, "join a GPU machine (`ray start --address=...` there); "
                                "workers start as GPUs join"))
    else:
        findings.append(Finding("OK", "cluster", summary))
    return findings


def _check_ray_auth(environ: Mapping[str, str]) -> Finding:
    if environ.get("RAY_AUTH_MODE", "").strip().lower() == "token":
        return Finding("OK", "cluster", "Ray's token authentication is on for this connection (RAY_AUTH_MODE=token)")
    return Finding("WARN", "cluster", "Ray's token authentication is off for this connection: anyone who reaches "
                   "the cluster's ports can run code on it", "start the cluster with RAY_AUTH_MODE=token and give the "
                   "bot RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN_PATH); keep Ray's ports on a private network")


# ---- data dir and database -----------------------------------------------------------------------------


def _check_data_dir(settings: BotSettings) -> list[Finding]:
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
    known = latest_version()
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
    connection = DiscordConnection.from_env(environ)
    if connection.token is None:
        return [Finding("FAIL", "token", "DISCORD_TOKEN is not set",
                        f"set DISCORD_TOKEN in the bot's environment (never in a config file); get it from the {_PORTAL}")]
    token = connection.token.get_secret_value()
    shape_problem = _token_shape_problem(token)
    # The bot refuses to start with these too, so they fail offline as well.
    cleartext = [Finding("FAIL", "token", f"{problem}, so it was not sent", CLEARTEXT_FIX)
                 for problem in connection.cleartext_problems()]
    if cleartext or offline:
        if shape_problem:
            return [*cleartext, Finding("FAIL", "token", f"DISCORD_TOKEN is set, but {shape_problem}", f"copy the token again: {_PORTAL}")]
        return cleartext or [Finding("OK", "token", "DISCORD_TOKEN is set and shaped like a bot token (not checked with Discord: --offline)")]
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
