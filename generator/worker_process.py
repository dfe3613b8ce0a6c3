"""One generation process and the pipes to it: spawn it, send it messages, hear from it, reap it, kill it.

The bot imports this module (through generator.client), so it must never import torch: the process is started
with the multiprocessing "spawn" method and only imports `generator.worker` inside itself.

Each process gets its own pair of pipes, so a process that is killed mid-message can never leave a half-written
message or a held lock behind for the next one. A reader thread turns pipe messages into calls on the event
loop and, at end of pipe, reaps the process and reports its exit; a writer thread sends, so a worker busy with a
long step never blocks the event loop on a full pipe. What the messages mean, when a worker is replaced and when
one is killed is the client's business (generator.client).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_objects
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from generator.wire import WorkerConfig

log = logging.getLogger("bigsleep.client")

# How long a worker that closed its pipe may take to exit before it is killed.
EXIT_GRACE_S = 10.0

_Process = TypeVar("_Process", bound="WorkerProcess")


def use_log_formatter(log_formatter: str | None, log_level: str) -> None:
    """Shape this process's log lines with the formatter named "module:Class" (the bot's JSON one), if any."""
    if log_formatter is not None:
        # Installed before anything calls logging.basicConfig, which then finds a handler and leaves it alone.
        module_name, _, formatter_name = log_formatter.partition(":")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(getattr(importlib.import_module(module_name), formatter_name)())
        logging.basicConfig(level=log_level, handlers=[handler])


def _run_worker_process(config: WorkerConfig, requests: Connection, events: Connection) -> None:
    """Entry point of the spawned process. Lives here, torch-free, so that starting it never imports torch here."""
    use_log_formatter(config.log_formatter, config.log_level)
    from generator.worker import serve

    serve(config, requests, events)


class WorkerProcess:
    """One worker process, its pipes and its two threads. Made by `spawn`; `on_message(worker, message)` and then,
    once, `on_exit(worker, exit_code)` run on the event loop."""

    def __init__(self, number: int, process: BaseProcess, requests: Connection, events: Connection) -> None:
        self.number = number
        self.process = process
        self.pid = process.pid
        self.requests = requests
        self.events = events
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Set when it is killed on purpose (hang, silence, too slow to start), to say why.
        self.death_reason: str | None = None
        self.gone = False
        self.exited = asyncio.Event()
        self.threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def spawn(
        cls: type[_Process],
        context: SpawnContext,
        config: Any,
        number: int,
        *,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[_Process, Any], None],
        on_exit: Callable[[_Process, int | None], None],
        target: Callable[[Any, Connection, Connection], None] = _run_worker_process,
        name: str = "bigsleep-generator",
    ) -> _Process:
        """Start a generation process (or another `target(config, requests, events)`, such as the Ray bridge)
        with its own pipes, and the threads that talk to it."""
        worker_reads, client_writes = context.Pipe(duplex=False)
        client_reads, worker_writes = context.Pipe(duplex=False)
        process = context.Process(
            target=target,
            args=(config, worker_reads, worker_writes),
            name=f"{name}-{number}",
            # multiprocessing terminates daemonic children when this interpreter exits, even without stop().
            daemon=True,
        )
        try:
            process.start()
        finally:
            # The child has its own copies now (or there is no child). Closing ours is what makes the child's
            # death show as end-of-pipe.
            worker_reads.close()
            worker_writes.close()
        worker = cls(number, process, client_writes, client_reads)
        worker._loop = loop
        threads = ((worker._read_events, (on_message, on_exit), "reader"), (worker._write_requests, (), "writer"))
        for run, args, role in threads:
            thread = threading.Thread(target=run, args=args, name=f"{name}-{number}-{role}", daemon=True)
            worker.threads.append(thread)
            thread.start()
        return worker

    def send(self, message: Any) -> None:
        self.outbox.put(message)

    def kill(self, reason: str) -> None:
        """Kill it on purpose; its exit then says `reason`."""
        if self.gone:
            return
        log.error("killing generation process %d (pid %s): %s", self.number, self.pid, reason)
        self.death_reason = reason
        try:
            self.process.kill()
        except (OSError, ValueError):
            pass  # already gone or reaped

    def has_exited(self) -> bool:
        """The process has ended (without reaping it: the reader thread does)."""
        return bool(wait_for_objects([self.process.sentinel], timeout=0))

    def mark_gone(self, exit_code: int | None) -> bool:
        """Record that it is gone and let its writer thread end; False when that was known already."""
        if self.gone:
            return False
        self.gone = True
        self.send(None)  # ends the writer thread
        self.exited.set()
        if exit_code is not None:
            self.process.close()  # the reader thread has reaped it; this frees its sentinel
        return True

    async def join_threads(self) -> None:
        loop = asyncio.get_running_loop()
        for thread in self.threads:
            await loop.run_in_executor(None, thread.join, 5.0)

    def _read_events(self, on_message: Callable[..., None], on_exit: Callable[..., None]) -> None:
        """Reader thread: blocking receives, handed to the event loop; on end of pipe, reaps the process."""
        while True:
            try:
                message = self.events.recv()
            except (EOFError, OSError):
                break
            except Exception:  # a message that does not unpickle: this worker cannot be trusted any more
                log.exception("unreadable message from generation process %d; killing it", self.number)
                self.death_reason = "it sent an unreadable message"
                self.process.kill()
                break
            self._call_in_loop(on_message, self, message)
        self.events.close()
        # End of pipe means the process is gone (a death closes its pipes) or exiting after a clean stop; wait
        # for it here, off the event loop.
        self.process.join(EXIT_GRACE_S)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
        self._call_in_loop(on_exit, self, self.process.exitcode)

    def _write_requests(self) -> None:
        """Writer thread: a worker in a long step reads nothing, and a full pipe must not block the event loop."""
        while True:
            message = self.outbox.get()
            if message is None:
                break
            try:
                self.requests.send(message)
            except (OSError, ValueError):
                break  # the worker is gone; the reader thread reports it
        self.requests.close()

    def _call_in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)  # type: ignore[union-attr]
        except RuntimeError:
            pass  # the event loop is closed: nobody is left to tell


def describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "it exited"
    if exit_code < 0:
        try:
            return f"it was killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"it was killed by signal {-exit_code}"
    return f"it exited with code {exit_code}"
