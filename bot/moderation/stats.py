"""/stats for moderators: what their server used over the last days. Pure: rows in, numbers out."""

from __future__ import annotations

import datetime
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bot.moderation.store import StatsRow


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The value below which `fraction` of the values lie (linear interpolation between ranks), or None."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    index = round(fraction * 100) - 1
    if index < 0:
        return float(min(values))
    if index >= len(cuts):
        return float(max(values))
    return cuts[index]


@dataclass(frozen=True)
class ServerStats:
    days: int
    jobs: int
    # (UTC date, jobs made that day), oldest first, days without jobs included.
    per_day: list[tuple[datetime.date, int]]
    gpu_seconds: float
    # (user id, latest name, jobs), most jobs first.
    top_users: list[tuple[int, str, int]]
    done: int
    failed: int
    cancelled: int
    waiting_or_running: int
    wait_p50: float | None
    wait_p95: float | None

    @property
    def failure_rate(self) -> float | None:
        """Failed among the jobs that ended done or failed (a cancel is the member's choice, not a failure)."""
        ended = self.done + self.failed
        return self.failed / ended if ended else None


def _first_day(now: float, days: int) -> datetime.date:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).date() - datetime.timedelta(days=days - 1)


def period_start(now: float, days: int) -> float:
    """Midnight UTC starting the first of the last `days` calendar days (today included): the rows to
    summarize are those made since then, so the jobs per day add up to the total."""
    first = _first_day(now, days)
    return datetime.datetime(first.year, first.month, first.day, tzinfo=datetime.UTC).timestamp()


def summarize(rows: Sequence[StatsRow], *, now: float, days: int, top: int = 5) -> ServerStats:
    """`rows`: the server's jobs made since period_start(now, days)."""
    first = _first_day(now, days)
    per_day_counts: Counter[datetime.date] = Counter()
    users: Counter[int] = Counter()
    names: dict[int, str] = {}
    states: Counter[str] = Counter()
    waits: list[float] = []
    gpu = 0.0
    for row in rows:
        day = datetime.datetime.fromtimestamp(row.created_at, datetime.UTC).date()
        per_day_counts[day] += 1
        users[row.user_id] += 1
        names[row.user_id] = row.user_name or names.get(row.user_id, "")
        states[row.state] += 1
        if row.started_at is not None:
            waits.append(max(0.0, row.started_at - row.created_at))
        gpu += row.gpu_seconds
    span = [first + datetime.timedelta(days=offset) for offset in range(days)]
    return ServerStats(
        days=days,
        jobs=len(rows),
        per_day=[(day, per_day_counts[day]) for day in span],
        gpu_seconds=gpu,
        top_users=[(user, names.get(user, ""), count) for user, count in users.most_common(top)],
        done=states["done"],
        failed=states["failed"],
        cancelled=states["cancelled"],
        waiting_or_running=states["queued"] + states["running"],
        wait_p50=percentile(waits, 0.5),
        wait_p95=percentile(waits, 0.95),
    )
