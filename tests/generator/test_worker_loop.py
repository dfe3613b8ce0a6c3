"""The generation loop (generator.worker) in this process, fed through a pipe the way the client feeds it, for
message orders that a test through the client cannot bring about; and the memory of cancels that came early."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

from generator.engine import DreamEngine
from generator.protocol import DreamSpec, JobCancelled, JobProgress, JobRequest, JobResult
from generator.wire import CancelJob, EarlyCancels, StopWorker, SubmitJob, WorkerStopped
from generator.worker import EventSender, GenerationLoop

EVENT_TIMEOUT_S = 60.0


def test_a_cancel_that_comes_before_its_job_keeps_the_job_from_running(tiny_models):
    requests, to_loop = Pipe(duplex=False)
    from_loop, events = Pipe(duplex=False)
    loop = GenerationLoop(DreamEngine(tiny_models), 2, requests, EventSender(events))
    spec = DreamSpec("a harbour at dusk", seed=3, steps=1, size=128, cutouts=2)
    for message in (CancelJob("early"), SubmitJob(JobRequest("early", spec)), SubmitJob(JobRequest("other", spec))):
        to_loop.send(message)
    runner = threading.Thread(target=loop.run, name="generation-loop")
    runner.start()
    received = []
    try:
        while not any(isinstance(event, JobResult) for event in received):
            assert from_loop.poll(EVENT_TIMEOUT_S), f"no event within {EVENT_TIMEOUT_S:g} s; got {received}"
            received.append(from_loop.recv())
    finally:
        to_loop.send(StopWorker())
        runner.join(EVENT_TIMEOUT_S)
    while from_loop.poll(0):
        received.append(from_loop.recv())

    assert [event for event in received if getattr(event, "job_id", None) == "early"] == [JobCancelled("early")]
    assert [type(event) for event in received if getattr(event, "job_id", None) == "other"] == [JobProgress, JobResult]
    assert isinstance(received[-1], WorkerStopped) and not runner.is_alive()
    assert len(loop.early_cancels) == 0  # used up by the job it was for


def test_early_cancels_are_kept_for_a_while_and_only_so_many():
    now = 0.0
    early = EarlyCancels(capacity=2, keep_s=10.0, clock=lambda: now)
    for job_id in ("a", "b", "c"):
        early.add(job_id)
    assert len(early) == 2 and not early.take("a")  # the oldest made room
    assert early.take("b") and not early.take("b")  # used up
    now = 10.5
    assert not early.take("c")  # kept for 10 s only
    assert len(early) == 0
