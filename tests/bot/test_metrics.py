"""bot.metrics without Discord: worker restarts over replaced backends, the steps-per-second window."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from bot.jobs.dispatcher import Dispatcher
from bot.jobs.fair_queue import FairQueue
from bot.jobs.files import ResultFiles
from bot.metrics import BotMetrics, StepRate


@dataclass
class Health:
    alive: bool
    restarts: int
    state: str = "ready"


class Backend:
    """Just enough of a GenerationBackend for the health and restart bookkeeping."""

    def __init__(self, restarts: int = 0, alive: bool = True) -> None:
        self.state = Health(alive, restarts)

    def health(self) -> Health:
        return self.state


def sample(metrics: BotMetrics, name: str) -> float:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for found in family.samples:
            if found.name == name:
                return found.value
    raise AssertionError(f"{name} not exposed")


async def test_worker_restarts_add_up_over_replaced_backends(store, tmp_path):
    backends = [Backend(restarts=2), Backend(restarts=0)]
    factory = iter(backends[1:])
    dispatcher = Dispatcher(
        store=store, queue=FairQueue(), backend=backends[0], files=ResultFiles(tmp_path), backend_factory=lambda: next(factory)
    )
    metrics = BotMetrics()
    metrics.attach(dispatcher)

    assert sample(metrics, "bigsleep_worker_restarts_total") == 2
    # The client gave up; the dispatcher replaced it with a fresh one, which then restarted its process once.
    dispatcher._replace_backend()
    backends[1].state.restarts = 1

    assert dispatcher.worker_restarts == 2 + 1 + 1
    assert sample(metrics, "bigsleep_worker_restarts_total") == 4


async def test_worker_up_follows_the_backends_health(store, tmp_path):
    backend = Backend()
    dispatcher = Dispatcher(store=store, queue=FairQueue(), backend=backend, files=ResultFiles(tmp_path))
    metrics = BotMetrics()
    metrics.attach(dispatcher)

    assert sample(metrics, "bigsleep_worker_up") == 0  # not started yet
    dispatcher._backend_ready = True
    assert sample(metrics, "bigsleep_worker_up") == 1
    backend.state.alive = False  # between a death and the new process
    assert sample(metrics, "bigsleep_worker_up") == 0


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
