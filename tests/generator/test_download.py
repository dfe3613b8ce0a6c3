"""`bigsleep download`: every configured weight file fetched (from a local mirror) and verified ahead of time.

CLIP's published checksum and size are swapped for those of a small stand-in file: these tests are about
which files are fetched and how failures read, not about 350 MB of CLIP.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from generator import weights
from generator.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_CLIP = b"a stand-in for CLIP ViT-B/32 " * 50


@pytest.fixture(autouse=True)
def weights_environment(monkeypatch, tmp_path, server):
    for name in list(os.environ):
        if name.startswith(("BIGSLEEP_", "DISCORD_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BIGSLEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BIGSLEEP_WEIGHTS_MIRROR", server.url)
    monkeypatch.setitem(weights._CLIP_CHECKPOINTS, "ViT-B/32", (hashlib.sha256(FAKE_CLIP).hexdigest(), len(FAKE_CLIP)))


def serve_everything(server, sizes=(128, 256, 512)) -> None:
    server.serve("clip/ViT-B-32.pt", FAKE_CLIP)
    for size in sizes:
        server.serve(f"biggan-deep-{size}/config.json", b'{"output_dim": %d}' % size)
        # BigGAN-deep-256's real size is known to the byte: tests that fetch its stand-in clear the known sizes.
        server.serve(f"biggan-deep-{size}/pytorch_model.bin", b"biggan weights %d " % size * 40)


def config_with_sizes(tmp_path: Path, *sizes: int) -> str:
    config = tmp_path / "bot.toml"
    config.write_text(f"[worker]\nsizes = {list(sizes)}\n[limits]\ndefault_size = {sizes[0]}\n")
    return str(config)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_fetches_and_verifies_every_configured_file_once(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(weights, "_BIGGAN_WEIGHTS_SIZES", {})
    serve_everything(server)
    config = config_with_sizes(tmp_path, 128, 512)

    assert main(["download", "--config", config]) == 0

    cache = tmp_path / "cache"
    assert files_under(cache) == [
        "biggan-deep-128/config.json", "biggan-deep-128/pytorch_model.bin",
        "biggan-deep-512/config.json", "biggan-deep-512/pytorch_model.bin",
        "checksums.json", "clip/ViT-B-32.pt",
    ]
    assert (cache / "clip/ViT-B-32.pt").read_bytes() == FAKE_CLIP
    output = capsys.readouterr()
    for key in ("clip/ViT-B-32.pt", "biggan-deep-128/pytorch_model.bin", "biggan-deep-512/config.json"):
        assert f"ok  {key}" in output.out
        assert key in output.err  # the progress bar names the file it is fetching
    assert "present and verified" in output.out and "biggan-deep-256" not in output.out
    assert len(server.requests) == 5

    # A second run verifies what is there and asks the server nothing.
    assert main(["download", "--config", config, "--quiet"]) == 0
    assert len(server.requests) == 5
    assert "All 5 weight files are present and verified" in capsys.readouterr().out


def test_sizes_option_overrides_the_configuration(server, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_BIGGAN_WEIGHTS_SIZES", {})
    serve_everything(server)

    assert main(["download", "--config", config_with_sizes(tmp_path, 512), "--sizes", "256", "--quiet"]) == 0

    assert sorted(path for _method, path in server.requests) == [
        "/biggan-deep-256/config.json", "/biggan-deep-256/pytorch_model.bin", "/clip/ViT-B-32.pt"]


def test_a_missing_file_on_the_server_fails_naming_it_and_keeps_no_partial_file(server, tmp_path, capsys):
    serve_everything(server, sizes=())
    server.serve("biggan-deep-128/config.json", b"{}")  # but not its pytorch_model.bin

    assert main(["download", "--config", config_with_sizes(tmp_path, 128), "--quiet"]) == 1

    error = capsys.readouterr().err
    assert "biggan-deep-128/pytorch_model.bin" in error and "404" in error and "Run again to retry" in error
    assert "Traceback" not in error
    assert not [name for name in files_under(tmp_path / "cache") if name.endswith(".part")]


def test_a_corrupted_download_fails_on_its_checksum(server, tmp_path, capsys):
    serve_everything(server, sizes=(128,))
    server.serve("clip/ViT-B-32.pt", FAKE_CLIP[:-5] + b"xxxxx")  # right size, wrong bytes

    assert main(["download", "--config", config_with_sizes(tmp_path, 128), "--quiet"]) == 1

    error = capsys.readouterr().err
    assert "clip/ViT-B-32.pt" in error and "SHA-256" in error
    assert not (tmp_path / "cache/clip/ViT-B-32.pt").exists()


def test_offline_download_only_checks_and_names_what_is_missing(tmp_path, capsys, monkeypatch, server):
    monkeypatch.setenv("BIGSLEEP_OFFLINE", "1")

    assert main(["download", "--config", config_with_sizes(tmp_path, 128), "--quiet"]) == 1

    error = capsys.readouterr().err
    assert "clip/ViT-B-32.pt" in error and "biggan-deep-128/pytorch_model.bin" in error and "BIGSLEEP_OFFLINE" in error
    assert server.requests == []


def test_tiny_models_need_nothing_and_a_bad_setting_stops_with_its_name(tmp_path, capsys, monkeypatch, server):
    monkeypatch.setenv("BIGSLEEP_MODELS", "tiny")
    assert main(["download", "--config", config_with_sizes(tmp_path, 128)]) == 0
    assert "Nothing to download" in capsys.readouterr().out and server.requests == []

    monkeypatch.setenv("BIGSLEEP_WORKER__SIZES", "[100]")
    assert main(["download", "--config", config_with_sizes(tmp_path, 128)]) == 2
    assert "BIGSLEEP_WORKER__SIZES" in capsys.readouterr().err


def test_the_command_stays_light_and_fails_without_a_traceback(tmp_path, unreachable_url):
    """As a user runs it: a real process; it never imports torch (nor discord) just to download."""
    probe = ("import sys\nfrom generator.cli import main\ncode = main(['download', '--sizes', '128', '--quiet'])\n"
             "print(code, sorted({'torch', 'discord'} & set(sys.modules)))")
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("BIGSLEEP_")},
                   "BIGSLEEP_CACHE_DIR": str(tmp_path / "cache"), "BIGSLEEP_WEIGHTS_MIRROR": unreachable_url}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=environment, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.stdout.strip().splitlines()[-1] == "1 []", result.stderr
    assert "could not be reached" in result.stderr and "Traceback" not in result.stderr
