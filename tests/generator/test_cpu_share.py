"""A generation process on the CPU lowers its own priority, so the bot on the same machine keeps answering."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from generator.cpu_share import GENERATION_NICENESS

# In a child process: renicing is for good, and the test process must keep its priority.
PROBE = """
import json, os
from generator.cpu_share import yield_cpu_to_bot
before = os.nice(0)
returned = yield_cpu_to_bot({device!r})
print(json.dumps({{"before": before, "returned": returned, "after": os.nice(0)}}))
"""


def run_probe(device_type: str) -> dict:
    output = subprocess.run([sys.executable, "-c", PROBE.format(device=device_type)], check=True, capture_output=True,
                            text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__)))).stdout
    return json.loads(output.strip().splitlines()[-1])


def test_a_cpu_process_lowers_its_priority():
    niceness = run_probe("cpu")
    assert niceness["after"] == niceness["returned"] == min(19, niceness["before"] + GENERATION_NICENESS)


def test_a_gpu_process_keeps_its_priority():
    niceness = run_probe("cuda")
    assert niceness["returned"] is None
    assert niceness["after"] == niceness["before"]
