"""`bigsleep dream` as a user runs it: a real subprocess with the tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from generator.cli import build_parser, spec_from_args
from generator.protocol import SpecError


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "BIGSLEEP_CACHE_DIR": str(cwd / "cache"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "generator", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=240)


def test_help_documents_every_option():
    dream_parser = build_parser()._subparsers._group_actions[0].choices["dream"]
    help_text = dream_parser.format_help()
    for action in dream_parser._actions:
        for flag in action.option_strings:
            assert flag in help_text
        if action.dest != "help":
            assert action.help, f"{action.dest} has no help text"
    # Defaults are shown where there is one, once: never "(default: None)", never twice.
    flat = " ".join(help_text.split())
    assert "(default: None)" not in flat and "(default: 0.07)" in flat
    assert "(default 400)" in flat and "(default 400) (default" not in flat


def test_tiny_dream_writes_image_snapshots_and_timelapse(tmp_path):
    result = run_cli("dream", "a bowl of cherries", "--models", "tiny", "--size", "128", "--steps", "6", "--cutouts", "2",
                     "--seed", "7", "--out", "cherries.png", "--save-every", "3", "--timelapse", "cherries.gif", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "noise" in result.stderr  # the tiny preset says plainly what it is
    assert Image.open(tmp_path / "cherries.png").size == (128, 128)
    assert sorted(p.name for p in (tmp_path / "cherries-snapshots").iterdir()) == ["step-00003.png", "step-00006.png"]
    gif = Image.open(tmp_path / "cherries.gif")
    assert gif.n_frames == 2


def test_bad_options_get_one_line_and_no_traceback(tmp_path):
    for args in (["dream", "x", "--steps", "-3"], ["dream", "x", "--size", "300"], ["dream", "x", "--seed", "abc"],
                 ["dream", "x", "--bogus"], ["dream", "x", "--models", "tiny", "--out", "x.jpg"],
                 ["dream", "word " * 100, "--models", "tiny"]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_tiny_dream_toward_a_picture_with_bigsleeps_options(tmp_path):
    Image.new("RGB", (90, 60), (200, 40, 40)).save(tmp_path / "red.png")
    result = run_cli("dream", "--image", "red.png", "--image-weight", "2", "--save-best", "--center-bias",
                     "--clip-model", "ViT-B/16", "--max-classes", "3", "--class-temperature", "1.5", "--models", "tiny",
                     "--size", "128", "--steps", "3", "--cutouts", "2", "--seed", "1", "--out", "red-dream.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "toward 1 picture(s)" in result.stderr
    assert "The best-scored image came after step" in result.stdout
    assert Image.open(tmp_path / "red-dream.png").size == (128, 128)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "missing.png"], "cannot read it"),
        (["--image", "a.png", "--image-weight", "1", "--image-weight", "2"], "once per --image"),
        (["x", "--image-weight", "2"], "needs an --image"),
        (["--image", "a.png", "--image-weight", "9"], "at most 5"),
        ([], "prompt is empty"),
    ],
)
def test_bad_image_options_are_refused_clearly(tmp_path, monkeypatch, args, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match=message):
        spec_from_args(build_parser().parse_args(["dream", *args]))


def test_an_image_option_error_is_one_line(tmp_path):
    result = run_cli("dream", "--image", "missing.png", "--models", "tiny", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "bigsleep dream: --image missing.png: cannot read it (No such file or directory)"


def test_offline_without_weights_explains_what_to_download(tmp_path):
    result = run_cli("dream", "a lighthouse", "--offline", "--size", "128", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "ViT-B-32.pt" in result.stderr and "biggan-deep-128" in result.stderr and "https://" in result.stderr


def test_dream_takes_models_and_device_from_the_configuration(tmp_path):
    config = tmp_path / "bot.toml"
    # The bot's keys share the file; the generator passes them over.
    config.write_text('models = "tiny"\ndevice = "cpu"\ndata_dir = "data"\n[queue]\nmax_queued_per_user = 2\n')
    result = run_cli("dream", "a bowl of cherries", "--config", str(config), "--size", "128", "--steps", "1", "--cutouts", "2",
                     "--out", "cherries.png", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "noise" in result.stderr and "on cpu" in result.stderr
    assert Image.open(tmp_path / "cherries.png").size == (128, 128)

    config.write_text('device = "cpu"\n[worker]\nclip_precision = "fp8"\n')
    result = run_cli("dream", "x", "--config", str(config), "--models", "tiny", cwd=tmp_path)
    assert result.returncode == 2 and "worker.clip_precision" in result.stderr and "Traceback" not in result.stderr
