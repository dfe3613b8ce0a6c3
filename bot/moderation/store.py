"""Moderation data in the bot's database (bot.database; tables from bot/moderation/migrations). This module must
stay free of torch and discord imports."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from bot.database import Database
from bot.moderation.quotas import (
    LIMIT_NAMES,
    MemberLimits,
    Override,
    ServerBudget,
    UsageEvent,
)


@dataclass(frozen=True)
class GuildSettings:
    """One server's settings; None means the bot's default (steps and sizes) or no limit (quotas)."""

    guild_id: int
    default_steps: int | None = None
    max_steps: int | None = None
    default_size: int | None = None
    max_size: int | None = None
    spoiler_by_default: bool = False
    paused: bool = False
    log_channel_id: int | None = None
    quota_per_day: int | None = None
    quota_per_hour: int | None = None
    quota_max_queued: int | None = None
    quota_max_running: int | None = None
    budget_jobs_per_day: int | None = None
    budget_gpu_minutes_per_day: float | None = None
    # Members may steer by pictures (uploads, like:, /blend).
    image_prompts: bool = True

    @property
    def rules(self) -> MemberLimits:
        return MemberLimits(**{name: getattr(self, f"quota_{name}") for name in LIMIT_NAMES})

    @property
    def budget(self) -> ServerBudget:
        return ServerBudget(self.budget_jobs_per_day, self.budget_gpu_minutes_per_day)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["guild_id"]
        return data


_SETTING_COLUMNS = tuple(f.name for f in fields(GuildSettings))
_BOOLEAN_COLUMNS = frozenset({"spoiler_by_default", "paused", "image_prompts"})


@dataclass(frozen=True)
class BlockedMember:
    guild_id: int
    user_id: int
    reason: str
    blocked_by: int
    blocked_at: float


@dataclass(frozen=True)
class ModAction:
    id: int
    guild_id: int
    moderator_id: int
    moderator_name: str
    action: str
    target: str
    before: Any
    after: Any
    at: float


@dataclass(frozen=True)
class StatsRow:
    user_id: int
    user_name: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    # Every ended run's GPU time (see bot.jobs.store), what the server's GPU budget counts too.
    gpu_seconds: float


def _settings_from_row(row: Iterable[Any]) -> GuildSettings:
    values = dict(zip(_SETTING_COLUMNS, row))
    for name in _BOOLEAN_COLUMNS:
        values[name] = bool(values[name])
    return GuildSettings(**values)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


class ModerationStore:
    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._database = database
        self.clock = clock

    # -- settings --

    async def all_settings(self) -> list[GuildSettings]:
        async with self._database.reading() as db:
            async with db.execute(f"SELECT {', '.join(_SETTING_COLUMNS)} FROM guild_settings") as cursor:
                rows = await cursor.fetchall()
        return [_settings_from_row(row) for row in rows]

    async def settings(self, guild_id: int) -> GuildSettings:
        async with self._database.reading() as db:
            async with db.execute(
                f"SELECT {', '.join(_SETTING_COLUMNS)} FROM guild_settings WHERE guild_id = ?", (guild_id,)
            ) as cursor:
                row = await cursor.fetchone()
        return _settings_from_row(row) if row else GuildSettings(guild_id)

    async def update_settings(self, guild_id: int, **changes: Any) -> tuple[GuildSettings, GuildSettings]:
        """Change some settings in one transaction; returns (before, after)."""
        unknown = set(changes) - set(_SETTING_COLUMNS[1:])
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        async with self._database.transaction() as db:
            async with db.execute(
                f"SELECT {', '.join(_SETTING_COLUMNS)} FROM guild_settings WHERE guild_id = ?", (guild_id,)
            ) as cursor:
                row = await cursor.fetchone()
            before = _settings_from_row(row) if row else GuildSettings(guild_id)
            after = replace(before, **changes)
            columns = _SETTING_COLUMNS
            await db.execute(
                f"INSERT OR REPLACE INTO guild_settings ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                tuple(int(v) if isinstance(v, bool) else v for v in (getattr(after, c) for c in columns)),
            )
        return before, after

    # -- quota overrides --

    async def overrides(self, guild_id: int | None = None) -> list[tuple[int, Override]]:
        """(guild_id, override) pairs, for one server or all."""
        query = "SELECT guild_id, target_kind, target_id, exempt, limits_json FROM quota_overrides"
        params: tuple[Any, ...] = ()
        if guild_id is not None:
            query += " WHERE guild_id = ?"
            params = (guild_id,)
        async with self._database.reading() as db:
            async with db.execute(query + " ORDER BY target_kind, target_id", params) as cursor:
                rows = await cursor.fetchall()
        return [(g, Override(kind, target, bool(exempt), json.loads(limits))) for g, kind, target, exempt, limits in rows]

    async def set_override(self, guild_id: int, override: Override | None, *, kind: str, target_id: int) -> Override | None:
        """Replace (or with None remove) the override for one member or role; returns the previous one."""
        async with self._database.transaction() as db:
            async with db.execute(
                "SELECT exempt, limits_json FROM quota_overrides WHERE guild_id = ? AND target_kind = ? AND target_id = ?",
                (guild_id, kind, target_id),
            ) as cursor:
                row = await cursor.fetchone()
            before = Override(kind, target_id, bool(row[0]), json.loads(row[1])) if row else None  # type: ignore[arg-type]
            if override is None:
                await db.execute(
                    "DELETE FROM quota_overrides WHERE guild_id = ? AND target_kind = ? AND target_id = ?",
                    (guild_id, kind, target_id),
                )
            else:
                await db.execute(
                    "INSERT OR REPLACE INTO quota_overrides (guild_id, target_kind, target_id, exempt, limits_json) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (guild_id, kind, target_id, int(override.exempt), json.dumps(dict(override.limits), sort_keys=True)),
                )
        return before

    # -- channels, words, blocks --

    async def allowed_channels(self) -> dict[int, set[int]]:
        async with self._database.reading() as db:
            async with db.execute("SELECT guild_id, channel_id FROM allowed_channels") as cursor:
                rows = await cursor.fetchall()
        allowed: dict[int, set[int]] = {}
        for guild_id, channel_id in rows:
            allowed.setdefault(guild_id, set()).add(channel_id)
        return allowed

    async def set_channel_allowed(self, guild_id: int, channel_id: int, allowed: bool) -> bool:
        """True when this changed anything."""
        async with self._database.transaction() as db:
            if allowed:
                cursor = await db.execute(
                    "INSERT OR IGNORE INTO allowed_channels (guild_id, channel_id) VALUES (?, ?)", (guild_id, channel_id)
                )
            else:
                cursor = await db.execute(
                    "DELETE FROM allowed_channels WHERE guild_id = ? AND channel_id = ?", (guild_id, channel_id)
                )
            return cursor.rowcount > 0

    async def clear_allowed_channels(self, guild_id: int) -> int:
        async with self._database.transaction() as db:
            cursor = await db.execute("DELETE FROM allowed_channels WHERE guild_id = ?", (guild_id,))
            return cursor.rowcount

    async def banned_words(self) -> dict[int, list[str]]:
        async with self._database.reading() as db:
            async with db.execute("SELECT guild_id, word FROM banned_words ORDER BY guild_id, word") as cursor:
                rows = await cursor.fetchall()
        words: dict[int, list[str]] = {}
        for guild_id, word in rows:
            words.setdefault(guild_id, []).append(word)
        return words

    async def change_banned_words(self, guild_id: int, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> list[str]:
        """Returns the words that actually changed."""
        changed = []
        async with self._database.transaction() as db:
            for word in add:
                cursor = await db.execute("INSERT OR IGNORE INTO banned_words (guild_id, word) VALUES (?, ?)", (guild_id, word))
                if cursor.rowcount:
                    changed.append(word)
            for word in remove:
                cursor = await db.execute("DELETE FROM banned_words WHERE guild_id = ? AND word = ?", (guild_id, word))
                if cursor.rowcount:
                    changed.append(word)
        return changed

    async def blocked_members(self) -> list[BlockedMember]:
        async with self._database.reading() as db:
            async with db.execute(
                "SELECT guild_id, user_id, reason, blocked_by, blocked_at FROM blocked_members ORDER BY blocked_at"
            ) as cursor:
                rows = await cursor.fetchall()
        return [BlockedMember(*row) for row in rows]

    async def set_blocked(self, guild_id: int, user_id: int, block: BlockedMember | None) -> BlockedMember | None:
        """Block (or with None unblock) a member; returns the previous block."""
        async with self._database.transaction() as db:
            async with db.execute(
                "SELECT guild_id, user_id, reason, blocked_by, blocked_at FROM blocked_members "
                "WHERE guild_id = ? AND user_id = ?",
                (guild_id, user_id),
            ) as cursor:
                row = await cursor.fetchone()
            if block is None:
                await db.execute("DELETE FROM blocked_members WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
            else:
                await db.execute(
                    "INSERT OR REPLACE INTO blocked_members (guild_id, user_id, reason, blocked_by, blocked_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (block.guild_id, block.user_id, block.reason, block.blocked_by, block.blocked_at),
                )
        return BlockedMember(*row) if row else None

    # -- roles seen --

    async def roles_seen(self) -> AsyncIterator[tuple[tuple[int, int], tuple[int, ...]]]:
        """Each member's roles as last seen, ((guild_id, user_id), role ids), the most recently seen first, read a
        row at a time: there is a row for every member who ever asked for an image, and callers keep a few."""
        async with self._database.reading() as db, db.execute(
            "SELECT guild_id, user_id, role_ids FROM member_roles_seen ORDER BY seen_at DESC"
        ) as cursor:
            async for guild_id, user_id, role_ids in cursor:
                yield (guild_id, user_id), tuple(json.loads(role_ids))

    async def remember_roles(self, guild_id: int, user_id: int, role_ids: Iterable[int]) -> None:
        async with self._database.transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO member_roles_seen (guild_id, user_id, role_ids, seen_at) VALUES (?, ?, ?, ?)",
                (guild_id, user_id, json.dumps(sorted(role_ids)), self.clock()),
            )

    # -- audit trail --

    async def record_action(
        self, guild_id: int, moderator_id: int, moderator_name: str, action: str, target: str, before: Any, after: Any
    ) -> ModAction:
        at = self.clock()
        async with self._database.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO mod_actions (guild_id, moderator_id, moderator_name, action, target, before_json, after_json, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (guild_id, moderator_id, moderator_name, action, target, _dump(before), _dump(after), at),
            )
            action_id = cursor.lastrowid
        return ModAction(int(action_id or 0), guild_id, moderator_id, moderator_name, action, target, before, after, at)

    async def actions(
        self, guild_id: int, *, limit: int = 15, offset: int = 0, moderator_id: int | None = None,
        action: str | None = None,
    ) -> list[ModAction]:
        """Newest first; `action` is an action or a family of them ("quota": quota.rules, quota.override, ...)."""
        query = ("SELECT id, guild_id, moderator_id, moderator_name, action, target, before_json, after_json, at "
                 "FROM mod_actions WHERE guild_id = ?")
        params: list[Any] = [guild_id]
        if moderator_id is not None:
            query += " AND moderator_id = ?"
            params.append(moderator_id)
        if action is not None:
            query += " AND (action = ? OR action LIKE ?)"
            params += [action, f"{action}.%"]
        async with self._database.reading() as db:
            async with db.execute(query + " ORDER BY id DESC LIMIT ? OFFSET ?", (*params, limit, offset)) as cursor:
                rows = await cursor.fetchall()
        return [
            ModAction(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else None,
                      json.loads(r[7]) if r[7] else None, r[8])
            for r in rows
        ]

    # -- usage, from the jobs table --

    async def usage_events(self, guild_id: int, *, since: float, now: float, user_id: int | None = None) -> list[UsageEvent]:
        """Jobs that count against quotas (see bot.moderation.quotas): made since `since`, or GPU time spent
        since then, or still waiting or running.

        A job counts as one of its member's jobs while it waits, runs or is done, or once cancelled by its member
        after it had run; its GPU time is every run's (bot.jobs.store adds each run's time as it ends, however
        it ends), plus the run going on now."""
        query = (
            "SELECT user_id, created_at, state, started_at, gpu_seconds, gpu_spent_at, "
            "quota_refunds.job_id IS NOT NULL FROM jobs LEFT JOIN quota_refunds ON quota_refunds.job_id = jobs.id "
            "WHERE guild_id = ? AND (created_at > ? OR gpu_spent_at > ? OR state IN ('queued', 'running'))"
        )
        params: list[Any] = [guild_id, since, since]
        if user_id is not None:
            query += " AND user_id = ?"
            params.append(user_id)
        async with self._database.reading() as db:
            async with db.execute(query, params) as cursor:
                rows = await cursor.fetchall()
        events = []
        for user, created_at, state, started_at, gpu_seconds, gpu_spent_at, refunded in rows:
            gpu, spent_at = float(gpu_seconds), gpu_spent_at
            if state == "running" and started_at is not None:
                gpu, spent_at = gpu + max(0.0, now - started_at), now
            ran = started_at is not None or gpu_seconds > 0
            counts_as_job = not refunded and (state in ("queued", "running", "done") or (state == "cancelled" and ran))
            if counts_as_job or gpu > 0:
                events.append(UsageEvent(user, created_at, state, gpu, spent_at, counts_as_job=counts_as_job))
        return events

    async def refund(self, job_id: str, moderator_id: int) -> None:
        """The job no longer counts against its member's quotas (its GPU time still counts for the server)."""
        async with self._database.transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO quota_refunds (job_id, refunded_by, at) VALUES (?, ?, ?)",
                (job_id, moderator_id, self.clock()),
            )

    async def stats_rows(self, guild_id: int, *, since: float) -> list[StatsRow]:
        async with self._database.reading() as db:
            async with db.execute(
                "SELECT user_id, user_name, state, created_at, started_at, finished_at, gpu_seconds FROM jobs "
                "WHERE guild_id = ? AND created_at >= ? ORDER BY created_at",
                (guild_id, since),
            ) as cursor:
                rows = await cursor.fetchall()
        return [StatsRow(*row) for row in rows]
