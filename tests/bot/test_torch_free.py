from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import bot.store, bot.fair_queue, bot.parsing
# Parsing loads CLIP's tokenizer lazily; make it load too, since that path must stay torch-free as well.
bot.parsing.parse_imagine("a bowl of cherries")
heavy = ("torch", "torchvision", "clip", "discord")
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in heavy)))
"""


def test_bot_modules_never_import_torch() -> None:
    # A fresh interpreter: this test process may already hold torch from other test files.
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert heavy == [], f"importing the bot modules pulled in {heavy}"
