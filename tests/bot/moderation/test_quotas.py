"""Quota arithmetic: rolling windows, when allowance comes back, overrides and their precedence."""

from __future__ import annotations

import pytest

from bot.moderation.quotas import (
    DAY,
    HOUR,
    MemberLimits,
    Override,
    ServerBudget,
    UsageEvent,
    count_in_window,
    describe_duration,
    describe_window,
    effective_limits,
    quota_status,
    refusal,
    sum_in_window,
)

NOW = 1_750_000_000.0
ALICE = 1
HELPERS, NEWCOMERS, PATRONS = 100, 101, 102


# ---- windows ------------------------------------------------------------------------------------------------


def test_a_job_counts_for_exactly_one_window_after_it_was_made():
    usage = count_in_window([NOW - DAY, NOW - DAY + 1, NOW], limit=5, window=DAY, now=NOW)
    # The job made exactly 24 h ago has left; the one made 24 h - 1 s ago still counts.
    assert usage.used == 2 and usage.remaining == 3 and not usage.exhausted
    assert usage.frees_at == NOW + 1  # the oldest counting job leaves in one second


def test_at_the_limit_the_next_job_frees_up_when_the_oldest_leaves():
    times = [NOW - 10 * HOUR, NOW - 3 * HOUR, NOW - HOUR]
    usage = count_in_window(times, limit=3, window=DAY, now=NOW)
    assert usage.exhausted and usage.frees_at == NOW + 14 * HOUR
    # One second before, still exhausted; at that moment, one job is back.
    assert count_in_window(times, limit=3, window=DAY, now=NOW + 14 * HOUR - 1).exhausted
    later = count_in_window(times, limit=3, window=DAY, now=NOW + 14 * HOUR)
    assert later.used == 2 and later.remaining == 1


def test_over_the_limit_after_lowering_it_waits_for_enough_jobs_to_leave():
    times = [NOW - 5 * HOUR, NOW - 4 * HOUR, NOW - 3 * HOUR, NOW - 2 * HOUR]
    usage = count_in_window(times, limit=2, window=DAY, now=NOW)
    # Four count, the limit is two: three must leave before one is free again.
    assert usage.frees_at == NOW - 3 * HOUR + DAY


def test_hour_window_and_future_events_are_ignored():
    usage = count_in_window([NOW - 61 * 60, NOW - 59 * 60, NOW + 5], limit=1, window=HOUR, now=NOW)
    assert usage.used == 1 and usage.exhausted and usage.frees_at == NOW + 60


def test_gpu_minutes_come_back_when_enough_old_work_has_left():
    events = [(NOW - 20 * HOUR, 30.0), (NOW - 10 * HOUR, 20.0), (NOW - HOUR, 15.0)]
    usage = sum_in_window(events, limit=40.0, window=DAY, now=NOW)
    assert usage.used == 65.0 and usage.exhausted
    # Dropping the 30-minute job leaves 35 < 40.
    assert usage.frees_at == NOW - 20 * HOUR + DAY
    assert not sum_in_window(events, limit=40.0, window=DAY, now=NOW + 4 * HOUR).exhausted


def test_describe_duration_rounds_up():
    assert describe_duration(0) == "0 s"
    assert describe_duration(59.2) == "1 min"
    assert describe_duration(61) == "2 min"
    assert describe_duration(4 * HOUR) == "4 h"
    assert describe_duration(4 * HOUR + 1) == "4 h 1 min"


def test_describe_window_reads_like_the_issue_asks():
    usage = count_in_window([NOW - 20 * HOUR] + [NOW - 60] * 16, limit=20, window=DAY, now=NOW)
    assert describe_window(usage, "today", NOW) == "3 of 20 left today, oldest one back in 4 h"
    assert describe_window(None, "per hour", NOW) == "no limit per hour"


# ---- overrides --------------------------------------------------------------------------------------------

SERVER = MemberLimits(per_day=20, per_hour=5, max_queued=3, max_running=1)


def test_no_override_means_the_server_rules():
    effective = effective_limits(SERVER, [Override("role", PATRONS, limits={"per_day": 50})], ALICE, [HELPERS])
    assert effective.limits == SERVER and not effective.exempt and effective.source == "the server's rules"


def test_a_role_override_replaces_only_the_limits_it_sets():
    effective = effective_limits(SERVER, [Override("role", NEWCOMERS, limits={"per_day": 2})], ALICE, [NEWCOMERS])
    assert effective.limits == MemberLimits(per_day=2, per_hour=5, max_queued=3, max_running=1)


def test_among_roles_the_most_generous_value_wins_and_none_is_unlimited():
    overrides = [
        Override("role", NEWCOMERS, limits={"per_day": 2, "per_hour": 1}),
        Override("role", PATRONS, limits={"per_day": 50, "max_queued": None}),
    ]
    effective = effective_limits(SERVER, overrides, ALICE, [NEWCOMERS, PATRONS])
    assert effective.limits == MemberLimits(per_day=50, per_hour=1, max_queued=None, max_running=1)
    assert effective.role_ids == (NEWCOMERS, PATRONS)


def test_an_exempt_role_beats_other_roles():
    overrides = [Override("role", NEWCOMERS, limits={"per_day": 1}), Override("role", HELPERS, exempt=True)]
    effective = effective_limits(SERVER, overrides, ALICE, [NEWCOMERS, HELPERS])
    assert effective.exempt and effective.limits == MemberLimits()


def test_a_member_override_beats_their_roles_even_an_exempt_one():
    overrides = [Override("role", HELPERS, exempt=True), Override("member", ALICE, limits={"per_day": 1})]
    effective = effective_limits(SERVER, overrides, ALICE, [HELPERS])
    assert not effective.exempt and effective.limits.per_day == 1 and effective.limits.per_hour == 5
    assert effective.source == "a member override"


# ---- the check --------------------------------------------------------------------------------------------


def _events(*ages_and_states: tuple[float, str], user: int = ALICE) -> list[UsageEvent]:
    return [UsageEvent(user, NOW - age, state) for age, state in ages_and_states]


def _status(member_events, server_events=None, *, rules=SERVER, overrides=(), budget=ServerBudget(), roles=()):
    return quota_status(
        member_id=ALICE, role_ids=roles, rules=rules, overrides=overrides, budget=budget,
        member_events=member_events, server_events=server_events if server_events is not None else member_events,
        now=NOW,
    )


def test_hourly_limit_refuses_with_when_it_frees_up():
    events = _events(*[(50 * 60 - i, "done") for i in range(5)])
    message = refusal(_status(events))
    assert message == "You've used all 5 of your jobs in the last hour on this server; the next one frees up in 10 min."


def test_daily_limit_refuses_after_the_hourly_one_passes():
    events = _events(*[(23 * HOUR, "done")] * 20)
    message = refusal(_status(events))
    assert message is not None and "all 20 of your jobs in the last 24 hours" in message and "1 h" in message


def test_waiting_cap_counts_queued_jobs():
    events = _events((60 * 60 * 2, "queued"), (60 * 60 * 2, "queued"), (60 * 60 * 2, "queued"))
    assert "3 job(s) waiting" in refusal(_status(events))


def test_exempt_members_skip_member_limits_but_not_the_server_budget():
    events = _events(*[(60, "done")] * 30)
    exempt = [Override("member", ALICE, exempt=True)]
    assert refusal(_status(events, overrides=exempt)) is None
    budget = ServerBudget(jobs_per_day=30)
    assert refusal(_status(events, overrides=exempt, budget=budget)) == (
        "This server has used its whole budget (30 of 30 jobs in the last 24 hours); more frees up in 23 h 59 min."
    )


@pytest.mark.parametrize("budget_minutes, refused", [(10.0, True), (11.0, False)])
def test_gpu_budget(budget_minutes, refused):
    spent = [UsageEvent(2, NOW - HOUR, "done", gpu_seconds=600.0, spent_at=NOW - HOUR)]
    status = _status([], spent, budget=ServerBudget(gpu_minutes_per_day=budget_minutes))
    assert (refusal(status) is not None) is refused
    assert status.server_gpu.used == 10.0


def test_no_rules_no_refusal():
    assert refusal(_status(_events(*[(1, "done")] * 500), rules=MemberLimits())) is None


def test_a_job_given_back_counts_only_its_gpu_time():
    refunded = UsageEvent(ALICE, NOW - 60, "cancelled", gpu_seconds=120.0, spent_at=NOW - 60, counts_as_job=False)
    kept = UsageEvent(ALICE, NOW - 60, "done", gpu_seconds=60.0, spent_at=NOW - 60)
    status = _status([refunded, kept], budget=ServerBudget(jobs_per_day=10, gpu_minutes_per_day=10.0))
    assert status.day.used == 1 and status.hour.used == 1 and status.server_jobs.used == 1
    assert status.server_gpu.used == 3.0
