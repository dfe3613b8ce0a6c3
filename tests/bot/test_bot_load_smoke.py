"""benchmarks/bot_load.py stays runnable: a tiny load run, and its ideal-scheduler model on known cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bot_load import (
    LoadConfig,
    describe,
    measure_queue_ops,
    measure_store_ops,
    run_load,
    simulate_first_waits,
)


async def test_a_small_load_run_acknowledges_everything_and_reports(tmp_path: Path) -> None:
    config = LoadConfig(commands=24, servers=3, users=6, seconds=1.0, job_seconds=0.05, batch=2,
                        edit_interval=0.1, channel_edits_per_window=100)
    report = await run_load(config, tmp_path / "data")
    report.queue_ops_us = measure_queue_ops(queued=300, servers=3, users=6, repeats=50)
    report.store_ops_ms = await measure_store_ops(tmp_path, queued=50, servers=3, users=6)

    assert report.not_acknowledged == 0
    assert report.acknowledged + report.refused_queue_full == 24
    assert report.jobs_done == report.acknowledged
    assert 0 < report.ack_p50_ms <= report.ack_p99_ms <= report.ack_max_ms < 3000
    assert "acknowledgement latency" in describe(report)


def test_ideal_round_robin_serves_servers_then_users_in_turn() -> None:
    # Server 1: a heavy user with four jobs at t=0; server 2: a light user arriving at t=0.5. One slot, 1 s jobs.
    arrivals = [(0.0, 1, 100)] * 4 + [(0.5, 2, 200)]

    assert simulate_first_waits(arrivals, 1, 1.0, "servers then users")[200] == pytest.approx(1.5)
    assert simulate_first_waits(arrivals, 1, 1.0, "users")[200] == pytest.approx(1.5)
    assert simulate_first_waits(arrivals, 1, 1.0, "fifo")[200] == pytest.approx(3.5)


def test_busy_servers_take_turns_with_quiet_ones() -> None:
    # Server 1 has three users waiting; server 2's one user arrives last but goes before server 1's third.
    arrivals = [(0.0, 1, 1), (0.0, 1, 2), (0.0, 1, 3), (0.1, 2, 4)]

    waits = simulate_first_waits(arrivals, 1, 1.0, "servers then users")

    assert waits[4] == pytest.approx(1.9) and waits[3] == pytest.approx(3.0)
    assert simulate_first_waits(arrivals, 1, 1.0, "fifo")[4] == pytest.approx(2.9)
