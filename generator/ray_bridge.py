"""The Ray bridge: a process of its own, spawned by the bot's RayPool (generator.ray_pool), that is the Ray driver.

Why a process: a Ray driver that loses the cluster's control store ends its own process about a minute later, and
that must never be the bot. So the bot never imports ray; this process connects, keeps one actor
(generator.ray_actor.GenerationActor) per GPU the cluster offers (up to cluster.max_workers; more as GPU machines
join), forwards the pool's submits and cancels to them and their events back, and watches them:

- an actor that dies (its process, or its node) is found by the failed call (RayActorError) within a poll;
- one that does not answer for `silence_timeout_s` (a node cut off) and one whose jobs make no progress for the
  worker's hang_timeout_s (a hung step, as with a local worker) are killed;
- either way the pool hears WorkerLeft, and the jobs the actor held go back to the bot's fair queue.

When the cluster cannot be reached (at start, or its control store stops answering), the bridge says why
(ClusterState) and exits; the pool starts another after a pause. DISCORD_TOKEN is removed from this process's
environment first thing, and no runtime_env is ever given to Ray, so nothing of the bot's reaches an actor.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from generator.protocol import FINAL_EVENTS, JobProgress
from generator.wire import (
    CancelJob,
    ClientGone,
    ClusterState,
    EventSender,
    FromWorker,
    StepDone,
    StopWorker,
    SubmitJob,
    ToWorker,
    WorkerJoined,
    WorkerLeft,
    WorkerReady,
    WorkerStartFailed,
    WorkerStopped,
    send_heartbeats,
)
from generator.worker_process import use_log_formatter

log = logging.getLogger("bigsleep.ray")

# How long one take_events call waits for news: the actor answers at least this often while it is alive.
POLL_S = 1.0
# What one question to the cluster's control store may take before it counts as unanswered.
CLUSTER_QUESTION_S = 5.0


def run_bridge_process(config: Any, requests: Connection, events: Connection) -> None:
    """Entry point of the bridge process (config: generator.ray_pool.RayPoolConfig)."""
    os.environ.pop("DISCORD_TOKEN", None)
    use_log_formatter(config.worker.log_formatter, config.worker.log_level)
    logging.basicConfig(level=config.worker.log_level, stream=sys.stderr,
                        format="%(asctime)s ray-bridge[%(process)d] %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool decides when this process stops
    sender = EventSender(events)
    stop_heartbeats = threading.Event()
    threading.Thread(target=send_heartbeats, args=(sender, 1.0, stop_heartbeats), name="heartbeat", daemon=True).start()
    exit_code = 0
    try:
        exit_code = Bridge(config, requests, sender).run()
    except ClientGone:
        log.warning("the bot went away; exiting")
    except BaseException:
        log.critical("the Ray bridge failed", exc_info=True)
        exit_code = 1
    finally:
        stop_heartbeats.set()
        logging.shutdown()
        sys.stderr.flush()
        # Ray's own teardown can wait on a cluster that is gone; the actors this driver owns die with it anyway.
        os._exit(exit_code)


def reachability_problem(address: str, timeout: float = 3.0) -> str | None:
    """Why nothing answers at the cluster's address (host:port), or None if something does."""
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        return f"{address!r} is not host:port"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as error:
        return error.strerror or str(error)


def ask_cluster(question: Any, timeout: float = CLUSTER_QUESTION_S) -> Any:
    """`question()` (a call to Ray's control store) on a side thread; raises TimeoutError if it does not answer,
    since a lost control store makes such calls wait instead of failing."""
    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            answer["value"] = question()
        except BaseException as error:  # handed to the caller
            answer["error"] = error

    thread = threading.Thread(target=ask, name="cluster-question", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in answer:
        raise answer["error"]
    if "value" not in answer:
        raise TimeoutError(f"no answer within {timeout:g} s")
    return answer["value"]


@dataclass(eq=False)
class _Actor:
    worker_id: str
    handle: Any
    created_at: float = field(default_factory=time.monotonic)
    answered: bool = False
    ready: bool = False
    last_heard: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    held: set[str] = field(default_factory=set)
    gone: bool = False


class Bridge:
    def __init__(self, config: Any, requests: Connection, sender: EventSender) -> None:
        self.config = config
        self.requests = requests
        self.sender = sender
        self.actors: dict[str, _Actor] = {}
        self.lock = threading.Lock()
        self.numbers = iter(range(config.first_worker_number, 1 << 62))
        self.stopping = threading.Event()
        self.next_create_at = 0.0
        self.failed_starts = 0
        self.last_state: ClusterState | None = None

    # ---- connecting -------------------------------------------------------------------------------------

    def run(self) -> int:
        address = self.config.address
        problem = reachability_problem(address)
        if problem is not None:
            self.sender.send(ClusterState(False, problem))
            return 2
        connected = threading.Event()
        threading.Thread(target=self._give_up_connecting, args=(connected,), name="connect-timeout", daemon=True).start()
        import ray

        try:
            ray.init(address=address, namespace=self.config.namespace, logging_level=logging.WARNING,
                     log_to_driver=True)
        except Exception as error:
            self.sender.send(ClusterState(False, f"{type(error).__name__}: {error}"))
            return 2
        connected.set()
        log.info("connected to the Ray cluster at %s", address)
        self.remote_actor = ray.remote(_actor_class())
        threading.Thread(target=self._read_requests, name="requests", daemon=True).start()
        return self._watch_cluster(ray)

    def _give_up_connecting(self, connected: threading.Event) -> None:
        if not connected.wait(self.config.connect_timeout_s):
            timeout = self.config.connect_timeout_s
            self.sender.send(ClusterState(False, f"it did not answer within {timeout:g} s"))
            logging.shutdown()
            os._exit(2)

    # ---- the cluster: how many workers, and whether it still answers ------------------------------------

    def _watch_cluster(self, ray: Any) -> int:
        unanswered_since: float | None = None
        while not self.stopping.is_set():
            now = time.monotonic()
            try:
                resources = ask_cluster(ray.cluster_resources)
            except Exception as error:
                unanswered_since = unanswered_since or now
                # Nothing listening any more (the head crashed or was stopped) needs no waiting out.
                gone = reachability_problem(self.config.address, timeout=1.0)
                if gone is not None or time.monotonic() - unanswered_since >= self.config.silence_timeout_s:
                    why = gone or f"it stopped answering ({type(error).__name__}: {error})"
                    self.sender.send(ClusterState(False, why))
                    return 3
            else:
                unanswered_since = None
                self._scale(ray, resources)
            self.stopping.wait(self.config.poll_interval_s)
        return self._stop_actors(ray)

    def _scale(self, ray: Any, resources: dict[str, float]) -> None:
        config = self.config
        gpus = float(resources.get("GPU", 0.0))
        if config.gpus_per_worker > 0:
            room = int(gpus // config.gpus_per_worker)
        else:
            room = int(float(resources.get("CPU", 0.0)) // config.cpus_per_worker)
        wanted = room if config.max_workers == 0 else min(config.max_workers, room)
        state = ClusterState(True, None, gpus=gpus, wanted_workers=wanted)
        if state != self.last_state:
            self.last_state = state
            self.sender.send(state)
        with self.lock:
            missing = wanted - sum(1 for actor in self.actors.values() if not actor.gone)
        if missing > 0 and time.monotonic() >= self.next_create_at:
            self._create_actor(ray)

    def _create_actor(self, ray: Any) -> None:
        config = self.config
        worker_id = f"ray-{next(self.numbers)}"
        on_gpu = config.gpus_per_worker > 0
        worker_config = replace(
            config.worker,
            worker_id=worker_id,
            # Ray makes the actor's GPU its only visible one, so "cuda" is that GPU.
            device="cuda" if on_gpu else "cpu",
            torch_threads=config.worker.torch_threads if on_gpu else max(1, int(config.cpus_per_worker)),
        )
        try:
            handle = self.remote_actor.options(
                name=worker_id,
                num_gpus=config.gpus_per_worker,
                num_cpus=config.cpus_per_worker,
                # take_events waits up to a second: other calls must not queue behind it.
                max_concurrency=4,
                max_restarts=0,
            ).remote(worker_config)
        except Exception:
            log.exception("could not create worker %s", worker_id)
            self.next_create_at = time.monotonic() + self._pause()
            return
        actor = _Actor(worker_id, handle)
        with self.lock:
            self.actors[worker_id] = actor
        log.info("created worker %s (%g GPU, %g CPU)", worker_id, config.gpus_per_worker, config.cpus_per_worker)
        self.sender.send(WorkerJoined(worker_id))
        threading.Thread(target=self._watch_actor, args=(ray, actor), name=f"watch-{worker_id}", daemon=True).start()

    def _pause(self) -> float:
        pauses = self.config.worker.start_retry_pauses_s
        pause = pauses[min(self.failed_starts, len(pauses) - 1)]
        self.failed_starts += 1
        return pause

    # ---- one actor ----------------------------------------------------------------------------------------

    def _watch_actor(self, ray: Any, actor: _Actor) -> None:
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        timeouts = self.config.worker
        pending = None
        while not actor.gone:
            if pending is None:
                pending = actor.handle.take_events.remote(POLL_S)
            messages: list[Any] = []
            try:
                messages = ray.get(pending, timeout=POLL_S + 1.0)
                pending = None
                actor.answered = True
                actor.last_heard = time.monotonic()
            except GetTimeoutError:
                pass  # no answer yet: the same call is still on its way
            except ActorUnavailableError:
                pending = None  # its node does not answer now: ask again, while the silence clock runs
                self.stopping.wait(POLL_S / 2)
            except RayActorError as error:
                self._left(ray, actor, _death(error))
                return
            except Exception as error:
                self._left(ray, actor, f"{type(error).__name__}: {error}")
                return
            now = time.monotonic()
            for message in messages:
                self._forward(ray, actor, message, now)
                if actor.gone:
                    return
            if not actor.answered:
                continue  # not placed yet (no free GPU) or still starting its process: no clock runs
            if not actor.ready and now - actor.created_at > timeouts.startup_timeout_s:
                self._left(ray, actor, f"it did not load its models within {timeouts.startup_timeout_s:g} s")
            elif actor.ready and now - actor.last_heard > self.config.silence_timeout_s:
                self._left(ray, actor, f"it stopped answering for {now - actor.last_heard:.0f} s")
            elif actor.held and now - actor.last_progress > timeouts.hang_timeout_s:
                self._left(ray, actor, f"a step hung: no progress for {now - actor.last_progress:.0f} s")

    def _forward(self, ray: Any, actor: _Actor, message: Any, now: float) -> None:
        if isinstance(message, WorkerReady):
            actor.ready = True
            actor.last_progress = now
            self.failed_starts = 0
        elif isinstance(message, WorkerStartFailed):
            self.sender.send(FromWorker(actor.worker_id, message))
            self.next_create_at = time.monotonic() + self._pause()
            self._left(ray, actor, f"its models did not load: {message.reason}")
            return
        elif isinstance(message, WorkerStopped):
            self._left(ray, actor, "it stopped", died=False)
            return
        elif isinstance(message, (StepDone, JobProgress)):
            actor.last_progress = now
        elif isinstance(message, FINAL_EVENTS):
            actor.last_progress = now
            with self.lock:
                actor.held.discard(message.job_id)
        self.sender.send(FromWorker(actor.worker_id, message))

    def _left(self, ray: Any, actor: _Actor, reason: str, *, died: bool = True) -> None:
        with self.lock:
            if actor.gone:
                return
            actor.gone = True
            self.actors.pop(actor.worker_id, None)
        if died:
            log.error("worker %s is gone: %s", actor.worker_id, reason)
        try:
            ray.kill(actor.handle, no_restart=True)
        except Exception:
            pass  # already gone
        self.sender.send(WorkerLeft(actor.worker_id, reason, died=died))

    # ---- the pool's requests --------------------------------------------------------------------------------

    def _read_requests(self) -> None:
        while True:
            try:
                message = self.requests.recv()
            except (EOFError, OSError):
                message = StopWorker()  # the bot is gone: nobody to work for
            if isinstance(message, StopWorker):
                self.stopping.set()
                return
            if isinstance(message, ToWorker):
                self._to_actor(message)

    def _to_actor(self, message: ToWorker) -> None:
        with self.lock:
            actor = self.actors.get(message.worker_id)
            if actor is None:
                return  # gone already: its WorkerLeft is on its way, and ends its jobs
            inner = message.message
            if isinstance(inner, SubmitJob):
                if not actor.held:
                    actor.last_progress = time.monotonic()  # the hang clock starts when an idle worker gets work
                actor.held.add(inner.request.job_id)
        if isinstance(inner, SubmitJob):
            actor.handle.submit.remote(inner.request)
        elif isinstance(inner, CancelJob):
            actor.handle.cancel.remote(inner.job_id)
        elif isinstance(inner, StopWorker):
            actor.handle.stop.remote()

    def _stop_actors(self, ray: Any) -> int:
        """Each worker finishes its step and hands its jobs back; those that take too long are killed."""
        with self.lock:
            actors = [actor for actor in self.actors.values() if not actor.gone]
        for actor in actors:
            try:
                actor.handle.stop.remote()
            except Exception:
                pass
        deadline = time.monotonic() + self.config.stop_timeout_s
        while time.monotonic() < deadline and any(not actor.gone for actor in actors):
            time.sleep(0.05)
        for actor in actors:
            self._left(ray, actor, "the bot stopped it", died=False)
        self.sender.send(WorkerStopped())
        return 0


def _actor_class() -> type:
    from generator.ray_actor import GenerationActor

    return GenerationActor


def _death(error: BaseException) -> str:
    """A readable reason from Ray's error about a dead actor (its first line says what happened)."""
    text = str(error).strip().splitlines()
    return f"its actor died ({type(error).__name__}: {text[0] if text else 'no details'})"


def describe_cluster(address: str) -> dict[str, Any]:
    """Connect as a driver and say what the cluster offers: {"nodes", "gpus", "cpus"}. For `bigsleep-bot doctor`,
    run in a process of its own (`python -m generator.ray_bridge ADDRESS`), since a driver may end its process."""
    import ray

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        resources = ray.cluster_resources()
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        return {"nodes": len(nodes), "gpus": float(resources.get("GPU", 0.0)), "cpus": float(resources.get("CPU", 0.0))}
    finally:
        ray.shutdown()


if __name__ == "__main__":
    import json

    print(json.dumps(describe_cluster(sys.argv[1])))
