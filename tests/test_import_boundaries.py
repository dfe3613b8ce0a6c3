"""The system's shape, checked: the generator never loads the bot (nor discord), the Discord side never loads
torch, the light generator modules stay light, and the bot's features import one way only (README, "How it is
built"): core <- jobs <- moderation, challenges, with bot.app joining them all.

Each case imports modules in a fresh interpreter (this test process may already hold torch from other tests)
and lists which of the forbidden top-level packages ended up in sys.modules. An import inside a function runs
only when the function does, so the generator's source is also read for any import of the bot at all, and the
features' sources are read for every import statement they hold (TYPE_CHECKING blocks and functions included).
"""

from __future__ import annotations

import ast
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
        # Nor ray: a Ray driver ends its process when its cluster goes away, so only the bridge process is one.
        ("torch", "torchvision", "clip", "ray"),
    ),
    "the worker pools": (
        "from generator.pool import local_pool\nfrom generator.ray_pool import RayPool, RayPoolConfig\n"
        "from generator.wire import WorkerConfig\nconfig = WorkerConfig(models_kind='tiny', sizes=(128,))\n"
        "local_pool(config, ['cpu', 'cpu'])\nRayPool(RayPoolConfig(address='head:6379', worker=config))",
        ("torch", "ray", "discord", "bot"),
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


# Which packages each feature of the bot must never import. Features meet through the protocols bot.jobs
# defines (bot.jobs.ports, bot.jobs.admission) and are joined in bot.app, which none of them imports.
FORBIDDEN_FEATURE_IMPORTS = {
    "bot/jobs": ("bot.moderation", "bot.challenges", "bot.app"),
    "bot/moderation": ("bot.challenges", "bot.app"),
    "bot/challenges": ("bot.moderation", "bot.app"),
}


def imported_modules(source: str) -> set[str]:
    """Every module an import statement anywhere in the source names (`from a import b` names a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_imported_modules_sees_every_kind_of_import():
    source = (
        "import bot.jobs.store\nfrom bot import challenges\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from bot.app import BigSleepBot\n"
        "def later():\n    import bot.moderation.service as service\n"
        "# import bot.challenges (a comment is no import)\n"
    )
    names = imported_modules(source)
    assert {"bot.jobs.store", "bot.challenges", "bot.app", "bot.moderation.service"} <= names
    assert "bot.challenges.commands" not in names


@pytest.mark.parametrize("feature", sorted(FORBIDDEN_FEATURE_IMPORTS))
def test_features_import_one_way_only(feature):
    forbidden = FORBIDDEN_FEATURE_IMPORTS[feature]
    offenders = [
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in sorted((REPO_ROOT / feature).rglob("*.py"))
        for name in sorted(imported_modules(path.read_text(encoding="utf-8")))
        if any(name == package or name.startswith(f"{package}.") for package in forbidden)
    ]
    assert offenders == [], f"{feature} must not import {', '.join(forbidden)}:\n" + "\n".join(offenders)
