"""bot.metrics without Discord: the worker's numbers come from the backend's health, the steps-per-second window."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bot.jobs.dispatcher import Dispatcher
from bot.jobs.fair_queue import FairQueue
from bot.jobs.files import ResultFiles
from bot.jobs.simulated import SimulatedGenerationClient
from bot.metrics import BotMetrics, StepRate


def sample(metrics: BotMetrics, name: str) -> float:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for found in family.samples:
            if found.name == name:
                return found.value
    raise AssertionError(f"{name} not exposed")


async def test_worker_up_and_restarts_are_the_backends_own_health(store, tmp_path):
    backend = SimulatedGenerationClient()
    dispatcher = Dispatcher(store=store, queue=FairQueue(), backend=backend, files=ResultFiles(tmp_path))
    metrics = BotMetrics()
    metrics.attach(dispatcher)

    assert sample(metrics, "bigsleep_worker_up") == 0  # not started yet
    await backend.start()
    assert (sample(metrics, "bigsleep_worker_up"), sample(metrics, "bigsleep_worker_restarts_total")) == (1, 0)
    backend.take_down("the worker died")  # between a death and its replacement
    assert sample(metrics, "bigsleep_worker_up") == 0
    backend.bring_up()  # one replacement worker: counted once
    assert (sample(metrics, "bigsleep_worker_up"), sample(metrics, "bigsleep_worker_restarts_total")) == (1, 1)
    assert dispatcher.pool_health().restarts == 1


def test_steps_per_second_is_the_last_window_only(clock):
    rate = StepRate(window=10.0, clock=clock)
    rate.add(50)
    clock.advance(5)
    rate.add(30)
    assert rate.per_second() == 8.0
    clock.advance(6)  # the first 50 fell out of the window
    assert rate.per_second() == 3.0
    clock.advance(10)
    assert rate.per_second() == 0.0
