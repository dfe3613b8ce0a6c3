"""The Docker image, checked where no Docker engine runs: hadolint on the Dockerfile, and the Dockerfile held to
what the README installs (the same package, pins and entry point) and to what the bot expects at run time."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def arguments_of(keyword: str) -> list[str]:
    return [rest for instruction, rest in instructions() if instruction == keyword]


def environment() -> dict[str, str]:
    env = {}
    for rest in arguments_of("ENV"):
        for name, value in re.findall(r"(\w+)=(\S+)", rest):
            env[name] = value
    return env


def hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: install the test extras (scripts/setup-venv test)"
    return found


def test_dockerfile_passes_hadolint_at_its_strictest():
    # No rule is ignored, and even style and info findings fail the test.
    result = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_really_lints(tmp_path):
    """The check above must be able to fail: a Dockerfile with well-known mistakes gets findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nCMD bigsleep-bot\n")
    result = subprocess.run([hadolint(), "--no-color", "--format", "json", str(bad)], capture_output=True, text=True,
                            timeout=60, check=False)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3006", "DL3013", "DL3025"} <= codes and result.returncode != 0


def pins() -> dict[str, str]:
    return dict(re.fullmatch(r"([\w.-]+)==([\w.]+)", requirement.split(";")[0].strip()).groups()
                for requirement in PYPROJECT["project"]["dependencies"] if "==" in requirement)


def test_base_is_an_official_python_image_with_a_python_the_package_allows():
    (base,) = arguments_of("FROM")
    # The official image's naming: python:<major.minor>-slim-<Debian release>. A named release, so a rebuild
    # does not move to another Debian under the same tag's meaning.
    match = re.fullmatch(r"python:(3\.\d+)-slim-(bookworm|trixie)", base)
    assert match, base
    assert match.group(1) in SpecifierSet(PYPROJECT["project"]["requires-python"]), (match.group(1), PYPROJECT["project"]["requires-python"])


def test_the_pinned_torch_brings_its_own_cuda_libraries_to_a_plain_linux_image():
    """Why no CUDA base image is needed: the pinned torch's wheel for Linux requires the CUDA runtime and cuDNN as
    pip packages. Checked on the torch installed here (the pin itself), for the image's Linux and Python."""
    assert version("torch") == pins()["torch"]
    python_version = re.search(r"python:(3\.\d+)", arguments_of("FROM")[0]).group(1)
    image = {"platform_system": "Linux", "sys_platform": "linux", "platform_machine": "x86_64", "python_version": python_version}
    on_linux = [Requirement(text) for text in requires("torch")]
    on_linux = [r for r in on_linux if r.marker is None or r.marker.evaluate({**image, "extra": ""})]
    names = {r.name for r in on_linux}
    assert any(name.startswith("nvidia-cudnn") for name in names), names
    (toolkit,) = [r for r in on_linux if r.name == "cuda-toolkit"]
    assert "cudart" in toolkit.extras and "cublas" in toolkit.extras
    # The CUDA version the Dockerfile and the README name (and so the driver they ask for) is the wheel's.
    cuda = re.fullmatch(r"==(\d+\.\d+)\.\d+", str(toolkit.specifier)).group(1)
    assert f"CUDA {cuda}" in DOCKERFILE.read_text() and f"CUDA {cuda}" in (REPO_ROOT / "README.md").read_text()


def test_image_installs_the_package_as_the_readme_does_and_runs_its_entry_point():
    installs = [rest for rest in arguments_of("RUN") if "pip install" in rest]
    # Two layers: the dependencies, read from pyproject.toml's own list (no second list to drift), then this
    # package on top of them. Nothing else is installed.
    dependencies, package = installs
    assert "['project']['dependencies']" in dependencies and "pip install --no-cache-dir -r /tmp/requirements.txt" in dependencies
    assert re.search(r"pip install --no-cache-dir --no-deps \.(\s|$)", package) and "pip check" in package, package
    # scripts/setup-venv (what the README's scripts/bot runs) installs the same target: this checkout, ".".
    assert 'target="."' in (REPO_ROOT / "scripts/setup-venv").read_text()
    scripts = PYPROJECT["project"]["scripts"]
    assert json.loads(arguments_of("CMD")[-1]) == ["bigsleep-bot"] and "bigsleep-bot" in scripts
    assert "bigsleep" in scripts  # `docker compose run ... bigsleep download` (README) needs it on PATH


def test_everything_the_package_is_built_from_is_copied_and_builds(tmp_path):
    """Build a wheel from only what the Dockerfile copies: a package file left out of the image fails here."""
    copied = []
    for rest in arguments_of("COPY"):
        *sources, _destination = rest.split()
        copied += sources
    dockerignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    context = tmp_path / "context"
    for source in copied:
        assert f"!{source}" in dockerignore or f"!{source}/" in dockerignore, f"{source} is left out of the build context"
        if (REPO_ROOT / source).is_dir():
            shutil.copytree(REPO_ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO_ROOT / source, context / source)
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert package.rstrip("*") in copied, f"the package {package} is not copied into the image"
    assert "config" in copied  # config/default.toml, which BIGSLEEP_CONFIG_DIR points at

    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path / "wheels"),
         str(context)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("bigsleep_bot-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"bot/__main__.py", "generator/cli.py", "generator/doctor.py"} <= names
    # Data files too: the database migrations (bot/<feature>/migrations/*.sql) come from package-data.
    migrations = {path.relative_to(REPO_ROOT).as_posix() for path in REPO_ROOT.glob("bot/*/migrations/*.sql")}
    assert migrations and migrations <= names, migrations - names
    assert "bigsleep-bot = bot.__main__:main" in entry_points and "bigsleep = generator.cli:main" in entry_points


def test_runs_unprivileged_with_volumes_for_data_and_weights_and_no_baked_token():
    env = environment()
    volumes = json.loads(arguments_of("VOLUME")[-1])
    assert env["BIGSLEEP_DATA_DIR"] in volumes and env["BIGSLEEP_CACHE_DIR"] in volumes
    user = arguments_of("USER")[-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    assert (REPO_ROOT / env["BIGSLEEP_CONFIG_DIR"].replace("/opt/bigsleep-bot/", "")).joinpath("default.toml").is_file()
    text = DOCKERFILE.read_text()
    assert not re.search(r"^\s*(ENV|ARG)\b[^\n]*DISCORD_TOKEN", text, re.MULTILINE), "the token must come from the environment"


def test_healthcheck_asks_the_bots_health_endpoint():
    (healthcheck,) = arguments_of("HEALTHCHECK")
    env = environment()
    assert "CMD" in healthcheck and "/healthz" in healthcheck and "127.0.0.1" in healthcheck
    assert env["BIGSLEEP_HEALTH__ENABLED"] == "true" and env["BIGSLEEP_HEALTH__PORT"] in arguments_of("EXPOSE")[-1].split()


@pytest.mark.parametrize("needle", [
    "docker compose", "driver: nvidia", "capabilities: [gpu]", "DISCORD_TOKEN", "bigsleep download", "bigsleep-bot doctor",
    "/data", "/weights",
])
def test_readme_shows_the_compose_example_with_gpu_access(needle):
    assert needle in (REPO_ROOT / "README.md").read_text()
