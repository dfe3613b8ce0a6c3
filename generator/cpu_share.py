"""A generation process computing on the CPU leaves the bot a share of it.

On the bot's own machine the generation process would otherwise take every core for as long as a job runs, and
the bot's event loop (Discord's gateway heartbeat, interaction replies within 3 s) would wait behind it: on a
2-core host the heartbeat ran 41 s late. A lower scheduling priority lets the bot run the moment it has work,
while the generation process still gets every idle cycle; so the thread count stays as it was (fewer threads
would cost a job time even when the bot is idle). A process on a GPU is left alone: its CPU work is feeding the
GPU, and slowing that slows every job.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("bigsleep.worker")

# Added to the process's niceness: at +10 the kernel gives an equally busy nice-0 process (the bot) about nine
# times its share of a contended core.
GENERATION_NICENESS = 10


def yield_cpu_to_bot(device_type: str) -> int | None:
    """Lower this process's priority when it computes on the CPU; its niceness afterwards (None: unchanged)."""
    if device_type != "cpu":
        return None
    try:
        niceness = os.nice(GENERATION_NICENESS)
    except (OSError, AttributeError):  # no os.nice (Windows), or not allowed
        log.warning("could not lower the generation process's priority; the bot may answer late while it computes")
        return None
    log.info("generating on the CPU at niceness %d, so that the bot keeps answering", niceness)
    return niceness
