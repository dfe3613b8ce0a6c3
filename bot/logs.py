"""The bot's log lines: one line per event, JSON (or key=value text), with the job id on every job's lines, and
never a secret.

- `configure_logging(level, fmt, secrets=[token])` installs one stderr handler on the root logger.
- `bind_job(job_id)` tags every line logged afterwards in the current asyncio task (and in tasks it starts)
  with `job_id`; an explicit `extra={"job_id": ...}` wins. The tag lives in a contextvar, so each job's task
  carries its own.
- Secrets are removed from the finished line, after formatting, so nothing reaches the stream unredacted:
  the token itself (exact value), anything shaped like a Discord bot token, interaction tokens wherever they
  appear, and webhook tokens in Discord URLs (discord.py logs request URLs at DEBUG).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "text"]

REDACTED = "[REDACTED]"
# A bot token: base64 of the bot's user id, a timestamp part and an HMAC part, separated by dots.
_DISCORD_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,}")
# Interaction and webhook tokens travel in the URL path: /webhooks/<application or webhook id>/<token>, and
# /interactions/<interaction id>/<token>/callback (discord.py logs both at DEBUG).
_TOKEN_IN_PATH = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.-]{20,}")
# An interaction token anywhere (a gateway payload, say): it is base64 of "interaction:..." so it starts the same.
_INTERACTION_TOKEN = re.compile(r"aW50ZXJhY3Rpb246[A-Za-z0-9_=-]*")
# "Authorization: Bot <token>" as a header dump would show it.
_AUTHORIZATION_VALUE = re.compile(r"(?i)(\bBot\s+)[A-Za-z0-9_.-]{20,}")

# Loggers that say too much for their level: discord.py's gateway at INFO, and aiosqlite, which logs every
# statement with its parameters (people's prompts) at DEBUG.
CHATTY_LOGGERS = {"discord.gateway": logging.WARNING, "aiosqlite": logging.INFO}

_current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("bigsleep_job_id", default=None)

# LogRecord attributes that are not event fields (taskName is new in Python 3.12).
_STANDARD_ATTRS = frozenset(RESERVED_ATTRS) | {"taskName", "message", "asctime"}


def bind_job(job_id: str | None) -> contextvars.Token[str | None]:
    """Tag this task's following log lines with `job_id` (tasks created afterwards inherit it)."""
    return _current_job_id.set(job_id)


def unbind_job(token: contextvars.Token[str | None]) -> None:
    _current_job_id.reset(token)


def current_job_id() -> str | None:
    return _current_job_id.get()


class JobContextFilter(logging.Filter):
    """Adds `job_id` from the current task's context to records that do not name one themselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            job_id = _current_job_id.get()
            if job_id is not None:
                record.job_id = job_id
        return True


class SecretRedactor:
    """Removes secrets from finished log text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is removed whole. Very short values are not
        # secrets worth matching (and would blank out ordinary words).
        self.secrets = sorted({secret for secret in secrets if secret and len(secret) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _DISCORD_TOKEN_SHAPE.sub(REDACTED, text)
        text = _INTERACTION_TOKEN.sub(REDACTED, text)
        text = _TOKEN_IN_PATH.sub(rf"\g<1>{REDACTED}", text)
        return _AUTHORIZATION_VALUE.sub(rf"\g<1>{REDACTED}", text)


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call added with `extra=` (and job_id), in the order they were set."""
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD_ATTRS and not key.startswith("_")}


class JsonLineFormatter(JsonFormatter):
    """{"time": ..., "level": ..., "logger": ..., "message": ..., <extra fields>, "exc_info": ...} on one line."""

    def __init__(self, redact: SecretRedactor | None = None) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "message"],
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            reserved_attrs=sorted(_STANDARD_ATTRS),
            json_default=str,
            json_ensure_ascii=False,
        )
        self.redact = redact or SecretRedactor()

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # ISO 8601 in UTC with milliseconds: sortable, and log shippers parse it without configuration.
        return logging.Formatter.formatTime(self, record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class TextLineFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` for people reading a terminal; tracebacks follow on their own
    lines (use json for one line per event everywhere)."""

    def __init__(self, redact: SecretRedactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.redact = redact or SecretRedactor()

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = event_fields(record)
        if fields:
            head, newline, rest = text.partition("\n")
            pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
            text = f"{head} {pairs}{newline}{rest}"
        return self.redact(text)


def _text_value(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if not text or any(char.isspace() or char in '"=' for char in text) else text


def make_handler(fmt: LogFormat, secrets: Iterable[str] = (), stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) that writes redacted lines in `fmt`, with job ids filled in."""
    redact = SecretRedactor(secrets)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLineFormatter(redact) if fmt == "json" else TextLineFormatter(redact))
    handler.addFilter(JobContextFilter())
    return handler


def configure_logging(level: str, fmt: LogFormat = "json", *, secrets: Iterable[str] = (), stream: Any = None) -> None:
    """Send every log line (the bot's, discord.py's, the worker client's) through one redacting handler."""
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt, secrets, stream)]
    root.setLevel(level)
    for name, quietest in CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), quietest))
    # Uncaught exceptions outside the event loop go through the same redacting handler.
    sys.excepthook = _log_uncaught


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("bot").critical("uncaught exception", exc_info=(exc_type, exc, tb))


__all__ = [
    "JobContextFilter",
    "JsonLineFormatter",
    "LogFormat",
    "SecretRedactor",
    "TextLineFormatter",
    "bind_job",
    "configure_logging",
    "current_job_id",
    "make_handler",
    "unbind_job",
]
