"""The bot's side of the generation worker must not import torch (nor discord)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import generator.client
from generator.client import GenerationClient, WorkerConfig
GenerationClient(WorkerConfig(models_kind="tiny", sizes=(128,)))
heavy = ("torch", "torchvision", "clip", "discord", "PIL", "numpy")
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in heavy)))
"""


def test_importing_the_client_imports_no_torch() -> None:
    # A fresh interpreter: this test process may already hold torch from other test files.
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert heavy == [], f"importing generator.client pulled in {heavy}"
