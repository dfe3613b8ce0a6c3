"""Quota arithmetic: which limits apply to a member, how much of each is used, and when allowance comes back.
Pure: the caller passes the jobs (from the store) and the time, so restarts and tests change nothing.

Windows are rolling, not calendar days: "per hour" is the last 60 minutes and "per day" the last 24 hours,
counted back from now. A calendar reset lets a member spend two days' allowance within minutes around
midnight, and UTC midnight falls in the middle of someone's evening. So "resets in" is exact: it is when the
oldest job that still counts leaves the window, giving back one job (for a budget in GPU-minutes: when enough
old work has left the window to be under the budget again).

Which jobs count is decided by the store (see ModerationStore.usage_events): jobs queued, running, done, or
cancelled by their member after they started. A job cancelled before it started, one that failed (a generator
problem, not the member's doing), or one a moderator cancelled gives its allowance back. The server's GPU budget
counts every run of every job, whatever became of it, since the GPU did the work: each run from its start until
it ended (done, failed, cancelled, or handed back because its worker died or the bot stopped), so a job run
three times costs three runs and one that kills the worker costs what it ran. Only a run cut short by the bot
itself crashing is left out: nobody saw when it ended.

Overrides, for one member or one role, replace the server's value of each limit they set (to more, less, or
no limit); limits they leave unset stay the server's. Precedence: a member's own override beats their roles'
overrides; among roles, `exempt` beats everything, then the most generous value of each limit wins (as
Discord's role permissions add up). `exempt` lifts every per-member limit; the server's daily budget, which
protects the host's GPU, still applies to everyone.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

HOUR = 3600.0
DAY = 24 * HOUR

LIMIT_NAMES: tuple[str, ...] = ("per_day", "per_hour", "max_queued", "max_running")
LIMIT_LABELS = {
    "per_day": "jobs per day",
    "per_hour": "jobs per hour",
    "max_queued": "jobs waiting at once",
    "max_running": "jobs generating at once",
}


@dataclass(frozen=True)
class MemberLimits:
    """Limits for one member in one server; None is no limit."""

    per_day: int | None = None
    per_hour: int | None = None
    max_queued: int | None = None
    max_running: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in LIMIT_NAMES}


@dataclass(frozen=True)
class ServerBudget:
    """What the whole server may use per rolling 24 hours; None is no limit."""

    jobs_per_day: int | None = None
    gpu_minutes_per_day: float | None = None


@dataclass(frozen=True)
class Override:
    target_kind: Literal["member", "role"]
    target_id: int
    exempt: bool = False
    # Only the limits this override sets; a value of None there means "no limit".
    limits: Mapping[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class EffectiveLimits:
    limits: MemberLimits
    exempt: bool
    # Where they come from, for /quota show: "the server's rules", "your own override", "the role override(s)".
    source: str
    role_ids: tuple[int, ...] = ()


def _more_generous(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return None
    return max(a, b)


def effective_limits(
    server: MemberLimits, overrides: Iterable[Override], member_id: int, role_ids: Collection[int]
) -> EffectiveLimits:
    overrides = list(overrides)
    own = next((o for o in overrides if o.target_kind == "member" and o.target_id == member_id), None)
    if own is not None:
        if own.exempt:
            return EffectiveLimits(MemberLimits(), True, "a member override")
        return EffectiveLimits(replace(server, **dict(own.limits)), False, "a member override")
    roles = [o for o in overrides if o.target_kind == "role" and o.target_id in role_ids]
    if not roles:
        return EffectiveLimits(server, False, "the server's rules")
    matched = tuple(o.target_id for o in roles)
    if any(o.exempt for o in roles):
        return EffectiveLimits(MemberLimits(), True, "a role override", matched)
    values: dict[str, int | None] = {}
    for name in LIMIT_NAMES:
        setting = [o.limits[name] for o in roles if name in o.limits]
        if setting:
            best = setting[0]
            for value in setting[1:]:
                best = _more_generous(best, value)
            values[name] = best
    return EffectiveLimits(replace(server, **values), False, "a role override", matched)


# ---- windows --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowUsage:
    used: float
    limit: float
    # When one more job's worth comes back (None: nothing counts, so nothing will).
    frees_at: float | None

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.used)

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit


def count_in_window(times: Iterable[float], *, limit: int, window: float, now: float) -> WindowUsage:
    """Jobs at `times` against `limit` per `window` seconds ending now. A job counts while now - t < window."""
    inside = sorted(t for t in times if now - window < t <= now)
    if not inside:
        return WindowUsage(0, limit, None)
    # Below the limit, the next job back is the oldest; at or over it, enough must leave to get one under.
    leaving = max(0, len(inside) - limit)
    frees_at = inside[min(leaving, len(inside) - 1)] + window
    return WindowUsage(len(inside), limit, frees_at)


def sum_in_window(events: Iterable[tuple[float, float]], *, limit: float, window: float, now: float) -> WindowUsage:
    """Amounts (time, amount) against `limit` per `window`: when is the total under the limit again?"""
    inside = sorted((t, amount) for t, amount in events if now - window < t <= now)
    used = sum(amount for _, amount in inside)
    if not inside:
        return WindowUsage(0.0, limit, None)
    frees_at = inside[0][0] + window
    if used >= limit:
        left = used
        for t, amount in inside:
            left -= amount
            if left < limit:
                frees_at = t + window
                break
    return WindowUsage(used, limit, frees_at)


# ---- the check ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageEvent:
    """One job that counts against quotas (from the store)."""

    user_id: int
    created_at: float
    state: str
    # Every run's GPU time, the one going on included.
    gpu_seconds: float = 0.0
    # When its GPU time was spent (its last run's end, or now while it runs): the budget's window uses this.
    spent_at: float | None = None
    # False for a job that gave its allowance back (it failed, or a moderator cancelled it): only its GPU time counts.
    counts_as_job: bool = True


@dataclass(frozen=True)
class QuotaStatus:
    """Everything /quota show and the enqueue check need for one member."""

    effective: EffectiveLimits
    day: WindowUsage | None
    hour: WindowUsage | None
    queued: int
    running: int
    server_jobs: WindowUsage | None
    server_gpu: WindowUsage | None
    now: float


def quota_status(
    *,
    member_id: int,
    role_ids: Collection[int],
    rules: MemberLimits,
    overrides: Iterable[Override],
    budget: ServerBudget,
    member_events: Sequence[UsageEvent],
    server_events: Sequence[UsageEvent],
    now: float,
) -> QuotaStatus:
    """`member_events`: the member's counting jobs in this server over the last day (at least);
    `server_events`: everyone's in this server."""
    effective = effective_limits(rules, overrides, member_id, role_ids)
    limits = effective.limits
    created = [e.created_at for e in member_events if e.counts_as_job]
    day = None if limits.per_day is None else count_in_window(created, limit=limits.per_day, window=DAY, now=now)
    hour = None if limits.per_hour is None else count_in_window(created, limit=limits.per_hour, window=HOUR, now=now)
    server_jobs = None
    if budget.jobs_per_day is not None:
        server_jobs = count_in_window(
            [e.created_at for e in server_events if e.counts_as_job], limit=budget.jobs_per_day, window=DAY, now=now
        )
    server_gpu = None
    if budget.gpu_minutes_per_day is not None:
        server_gpu = sum_in_window(
            [(e.spent_at, e.gpu_seconds / 60) for e in server_events if e.spent_at is not None and e.gpu_seconds > 0],
            limit=budget.gpu_minutes_per_day,
            window=DAY,
            now=now,
        )
    return QuotaStatus(
        effective=effective,
        day=day,
        hour=hour,
        queued=sum(1 for e in member_events if e.state == "queued"),
        running=sum(1 for e in member_events if e.state == "running"),
        server_jobs=server_jobs,
        server_gpu=server_gpu,
        now=now,
    )


def describe_duration(seconds: float) -> str:
    """Exact enough to plan by: "4 h 5 min", "12 min", "40 s" (rounded up: never promise too early)."""
    seconds = max(0, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" if minutes == 0 else f"{hours} h {minutes} min"


def refusal(status: QuotaStatus, count: int = 1) -> str | None:
    """Why this member may not queue `count` more jobs now (a grid's: each image counts; one sentence, with when
    it changes), or None."""
    limits, now = status.effective.limits, status.now
    if not status.effective.exempt:
        for usage, what in ((status.hour, "in the last hour"), (status.day, "in the last 24 hours")):
            if usage is not None and usage.exhausted:
                when = f"; the next one frees up in {describe_duration(usage.frees_at - now)}" if usage.frees_at else ""
                return f"You've used all {int(usage.limit)} of your jobs {what} on this server{when}."
            if usage is not None and usage.remaining < count:
                return (f"A grid of {count} counts as {count} jobs, and you have {_number(usage.remaining)} of "
                        f"{int(usage.limit)} left {what} on this server; ask for fewer images.")
        if limits.max_queued is not None and status.queued + count > limits.max_queued:
            if limits.max_queued == 0:
                return "This server doesn't let you queue jobs right now."
            if status.queued < limits.max_queued:
                return (f"A grid of {count} needs {count} places in this server's queue; you have "
                        f"{limits.max_queued - status.queued} left (the limit is {limits.max_queued}).")
            return (
                f"You already have {status.queued} job(s) waiting on this server (the limit is {limits.max_queued}). "
                "Wait for one to start or /cancel one."
            )
    for usage, what in ((status.server_jobs, "jobs"), (status.server_gpu, "GPU minutes")):
        if usage is not None and usage.exhausted:
            when = f"; more frees up in {describe_duration(usage.frees_at - now)}" if usage.frees_at else ""
            spent = f"{_number(usage.used)} of {_number(usage.limit)} {what} in the last 24 hours"
            return f"This server has used its whole budget ({spent}){when}."
    jobs_budget = status.server_jobs
    if jobs_budget is not None and jobs_budget.remaining < count:
        return (f"A grid of {count} counts as {count} jobs, and this server's budget has {_number(jobs_budget.remaining)} "
                "left for the last 24 hours; ask for fewer images.")
    return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def describe_window(usage: WindowUsage | None, what: str, now: float) -> str:
    """One line for /quota show: "3 of 20 left in the last 24 h, oldest one back in 4 h"."""
    if usage is None:
        return f"no limit {what}"
    text = f"{_number(usage.remaining)} of {_number(usage.limit)} left {what}"
    if usage.frees_at is not None:
        verb = "next one back" if usage.exhausted else "oldest one back"
        text += f", {verb} in {describe_duration(usage.frees_at - now)}"
    return text
