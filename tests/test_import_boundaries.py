"""The system's shape, checked: the generator never loads the bot (nor discord), the Discord side never loads
torch, the light generator modules stay light.

Each case imports modules in a fresh interpreter (this test process may already hold torch from other tests)
and lists which of the forbidden top-level packages ended up in sys.modules. An import inside a function runs
only when the function does, so the generator's source is also read for any import of the bot at all.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "every bot module": (
        # Every module under bot/, found on disk, so a new one cannot slip past this check.
        "import importlib, pkgutil, bot\n"
        "for module in pkgutil.walk_packages(bot.__path__, 'bot.'): importlib.import_module(module.name)\n"
        "import bot.jobs.parsing\n"
        # parsing loads CLIP's tokenizer lazily: that path must stay torch-free too
        "bot.jobs.parsing.parse_imagine('a bowl of cherries')",
        ("torch", "torchvision", "clip"),
    ),
    "every generator module": (
        # Every module under generator/, found on disk: the generator is a base that knows nothing of the bot.
        "import importlib, pkgutil, generator\n"
        "for module in pkgutil.walk_packages(generator.__path__, 'generator.'):\n"
        "    if module.name != 'generator.__main__': importlib.import_module(module.name)  # that one runs the CLI",
        ("bot", "discord"),
    ),
    "the generator's settings": (
        # What `bigsleep download` reads: the bot's config files, without the bot.
        "from generator.settings import load_generator_settings\nload_generator_settings()",
        ("bot", "torch", "discord"),
    ),
    "the generation client": (
        "from generator.client import GenerationClient\nfrom generator.wire import WorkerConfig\n"
        "GenerationClient(WorkerConfig(models_kind='tiny', sizes=(128,)))",
        ("torch", "torchvision", "clip", "discord", "PIL", "numpy"),
    ),
    "the weights downloader": ("import generator.weights", ("torch", "discord", "requests")),
    "the protocol and tokenizer": (
        "import generator.protocol, generator.tokens\ngenerator.tokens.count_tokens('a bowl of cherries')",
        ("torch", "discord"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_imports_stay_within_their_side(case):
    code, forbidden = CASES[case]
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{n.split('.')[0] for n in sys.modules}} & {set(forbidden)!r})))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [], f"{case} pulled in forbidden packages"


def test_no_generator_source_imports_the_bot():
    """Read, not run: also catches an import inside a function, which importing the module never executes."""
    importing_bot = re.compile(r"\b(?:import|from)\s+bot\b")
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in sorted((REPO_ROOT / "generator").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if importing_bot.search(line)
    ]
    assert offenders == [], "generator/ must not import bot/:\n" + "\n".join(offenders)
