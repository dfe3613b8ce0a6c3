"""The generation worker as a Ray actor: today's generation loop (generator.worker.GenerationLoop, models loaded
once, continuous batching), fed through in-memory queues instead of pipes.

The Ray bridge (generator.ray_bridge) creates one per GPU with `ray.remote(GenerationActor).options(num_gpus=1)`,
hands it jobs with submit/cancel/stop and collects what it says with take_events (a long poll, so an answer
every second is also the sign of life). Images, progress snapshots and variation latents are bytes inside those
messages: nothing here assumes a disk shared with the bot. The models load as in a local worker, on the actor's
own machine: weights there are fetched and verified on first start (or ahead with `bigsleep download`).

Neither torch nor ray is imported here at import time: the bridge only names this class, and the actor's own
process imports generator.worker (torch) when it builds its engine.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import deque
from typing import Any

from generator.wire import CancelJob, StopWorker, SubmitJob, WorkerConfig, WorkerStartFailed
from generator.worker_process import use_log_formatter

log = logging.getLogger("bigsleep.worker")


class Inbox:
    """What the generation loop reads instead of a pipe: recv() blocks, poll(timeout) says whether one waits."""

    def __init__(self) -> None:
        self._messages: deque[Any] = deque()
        self._arrived = threading.Condition()

    def put(self, message: Any) -> None:
        with self._arrived:
            self._messages.append(message)
            self._arrived.notify_all()

    def recv(self) -> Any:
        with self._arrived:
            self._arrived.wait_for(lambda: bool(self._messages))
            return self._messages.popleft()

    def poll(self, timeout: float | None = 0.0) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: bool(self._messages), timeout)


class Outbox:
    """What the generation loop sends to, kept until the bridge takes it (take: everything, or wait for some)."""

    def __init__(self) -> None:
        self._messages: list[Any] = []
        self._arrived = threading.Condition()

    def send(self, message: Any) -> None:
        with self._arrived:
            self._messages.append(message)
            self._arrived.notify_all()

    def take(self, timeout: float) -> list[Any]:
        with self._arrived:
            self._arrived.wait_for(lambda: bool(self._messages), timeout)
            taken, self._messages = self._messages, []
            return taken


def node_name() -> str:
    """The machine this actor runs on, as the cluster knows it (its node's address), else its host name."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:
        return socket.gethostname()


class GenerationActor:
    """One worker on one GPU (or CPU) of the cluster. Its methods run on Ray's threads (max_concurrency > 1),
    so a long poll never holds up a submit; the generation loop has its own thread."""

    def __init__(self, config: WorkerConfig) -> None:
        use_log_formatter(config.log_formatter, config.log_level)
        logging.basicConfig(level=config.log_level, format="%(asctime)s generator %(levelname)s %(name)s: %(message)s")
        self.config = config
        self.inbox = Inbox()
        self.outbox = Outbox()
        self._loop = threading.Thread(target=self._run, name="generation-loop", daemon=True)
        self._loop.start()

    def _run(self) -> None:
        from generator.worker import GenerationLoop, ready_message, start_engine

        try:
            engine, batch_size = start_engine(self.config)
        except Exception as error:
            log.exception("could not load the models")
            self.outbox.send(WorkerStartFailed(f"{type(error).__name__}: {error}"))
            return
        self.outbox.send(ready_message(engine, node_name(), batch_size))
        try:
            GenerationLoop(engine, batch_size, self.inbox, self.outbox, self.config.batch_wait_s).run()
        except BaseException:
            # A bug in the loop, not in a job: end the actor, so the bridge sees it die and its jobs run elsewhere.
            log.critical("the generation loop failed", exc_info=True)
            logging.shutdown()
            os._exit(1)

    def submit(self, request: Any) -> None:
        self.inbox.put(SubmitJob(request))

    def cancel(self, job_id: str) -> None:
        self.inbox.put(CancelJob(job_id))

    def stop(self) -> None:
        self.inbox.put(StopWorker())

    def take_events(self, timeout: float) -> list[Any]:
        """What the worker said since the last call; waits up to `timeout` for something to say."""
        return self.outbox.take(timeout)

    def sees_variable(self, name: str) -> bool:
        """Whether this actor's process has the environment variable (the tests check DISCORD_TOKEN never arrives)."""
        return name in os.environ
