"""Weights: catalogue, downloads against a local HTTP server, trust-on-first-use checksums, offline use.

Payloads are a few bytes: these tests are about getting files safely, not about models.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from generator import weights
from generator.weights import (
    MissingWeightsError,
    WeightFile,
    WeightsDownloadError,
    WeightsSource,
    biggan_files,
    clip_files,
    default_cache_dir,
    ensure_files,
    files_for_sizes,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def recorded(cache_dir: Path) -> dict:
    return json.loads((cache_dir / weights.CHECKSUMS_FILE_NAME).read_text())


def age(path: Path, seconds: float) -> None:
    """Set the file's mtime in the past, as a file downloaded on an earlier day would have."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# ---- the catalogue --------------------------------------------------------------------------------------


def test_clip_checksum_is_the_urls_second_to_last_segment():
    (clip,) = clip_files()
    assert clip.key == "clip/ViT-B-32.pt"
    assert clip.url.startswith("https://openaipublic.azureedge.net/clip/models/")
    assert clip.url.split("/")[-2] == clip.sha256 == "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    assert clip.size == 353_976_522


@pytest.mark.parametrize(
    ("model", "key", "sha256"),
    [
        ("ViT-B/16", "clip/ViT-B-16.pt", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"),
        ("ViT-L/14", "clip/ViT-L-14.pt", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),
    ],
)
def test_larger_clips_are_openais_files_checked_by_the_sha256_in_their_urls(model, key, sha256):
    import clip  # its table of OpenAI's URLs, which ours must match

    (file,) = clip_files(model=model)
    assert file.key == key and file.sha256 == sha256 == file.url.split("/")[-2]
    assert file.url == clip.clip._MODELS[model]
    assert [f.key for f in files_for_sizes([128], clip_model=model) if f.key.startswith("clip/")] == [key]
    with pytest.raises(ValueError, match="ViT-B/32, ViT-B/16, ViT-L/14"):
        clip_files(model="RN50")


def test_biggan_catalogue_lays_files_out_for_from_pretrained():
    config, model = biggan_files(256)
    assert config.key == "biggan-deep-256/config.json"
    assert config.url == "https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-256-config.json"
    assert model.key == "biggan-deep-256/pytorch_model.bin"
    assert model.url == "https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-256-pytorch_model.bin"
    assert model.size == 234_411_737
    assert model.sha256 is None and config.sha256 is None  # none published: trusted on first use
    assert biggan_files(128)[1].size is None
    with pytest.raises(ValueError, match="300"):
        biggan_files(300)


def test_mirror_replaces_urls_by_mirror_plus_key():
    assert [f.url for f in biggan_files(512, mirror="http://mirror.lan/w/")] == [
        "http://mirror.lan/w/biggan-deep-512/config.json",
        "http://mirror.lan/w/biggan-deep-512/pytorch_model.bin",
    ]
    assert clip_files(mirror="http://mirror.lan/w")[0].url == "http://mirror.lan/w/clip/ViT-B-32.pt"
    assert clip_files(mirror="http://mirror.lan/w")[0].sha256 == clip_files()[0].sha256


def test_files_for_sizes_has_clip_once_and_each_size_once():
    keys = [f.key for f in files_for_sizes([256, 128, 256])]
    assert keys == [
        "clip/ViT-B-32.pt",
        "biggan-deep-256/config.json",
        "biggan-deep-256/pytorch_model.bin",
        "biggan-deep-128/config.json",
        "biggan-deep-128/pytorch_model.bin",
    ]


def test_cache_dir_and_source_from_environment(monkeypatch, tmp_path):
    for name in ("BIGSLEEP_CACHE_DIR", "BIGSLEEP_WEIGHTS_DIR", "BIGSLEEP_OFFLINE", "BIGSLEEP_WEIGHTS_MIRROR"):
        monkeypatch.delenv(name, raising=False)
    assert default_cache_dir().parts[-2:] == ("bigsleep-bot", "weights")
    assert WeightsSource.from_env() == WeightsSource(cache_dir=default_cache_dir())

    monkeypatch.setenv("BIGSLEEP_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("BIGSLEEP_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("BIGSLEEP_OFFLINE", "1")
    monkeypatch.setenv("BIGSLEEP_WEIGHTS_MIRROR", "http://mirror.lan")
    assert default_cache_dir() == tmp_path / "c"
    assert WeightsSource.from_env() == WeightsSource(
        cache_dir=tmp_path / "c", local_dir=tmp_path / "w", offline=True, mirror="http://mirror.lan"
    )
    monkeypatch.setenv("BIGSLEEP_OFFLINE", "perhaps")
    with pytest.raises(ValueError, match="BIGSLEEP_OFFLINE"):
        WeightsSource.from_env()


# ---- downloading ----------------------------------------------------------------------------------------


def test_download_records_checksum_and_second_call_makes_no_request(server, cache):
    config, model = b'{"output_dim": 128}', b"fake biggan weights " * 100
    server.serve("biggan-deep-128/config.json", config)
    server.serve("biggan-deep-128/pytorch_model.bin", model)
    files = biggan_files(128, mirror=server.url)
    source = WeightsSource(cache_dir=cache, progress=False)

    paths = ensure_files(files, source)

    assert paths == {
        "biggan-deep-128/config.json": cache / "biggan-deep-128/config.json",
        "biggan-deep-128/pytorch_model.bin": cache / "biggan-deep-128/pytorch_model.bin",
    }
    assert paths["biggan-deep-128/pytorch_model.bin"].read_bytes() == model
    assert paths["biggan-deep-128/config.json"].read_bytes() == config
    record = recorded(cache)["files"]
    assert record["biggan-deep-128/pytorch_model.bin"]["sha256"] == sha256(model)
    assert record["biggan-deep-128/pytorch_model.bin"]["size"] == len(model)
    assert record["biggan-deep-128/config.json"]["sha256"] == sha256(config)
    assert len(server.requests) == 2
    assert files_under(cache) == sorted([*paths, weights.CHECKSUMS_FILE_NAME])  # no temporary files left

    assert ensure_files(files, source) == paths
    assert ensure_files(files, WeightsSource(cache_dir=cache, offline=True, progress=False)) == paths
    assert len(server.requests) == 2, "files present and verified must not cause any request (not even HEAD)"


def test_only_missing_files_are_downloaded(server, cache):
    server.serve("biggan-deep-512/config.json", b"{}")
    server.serve("biggan-deep-512/pytorch_model.bin", b"weights")
    (cache / "biggan-deep-512").mkdir(parents=True)
    (cache / "biggan-deep-512/config.json").write_bytes(b'{"placed": "by hand"}')

    ensure_files(biggan_files(512, mirror=server.url), WeightsSource(cache_dir=cache, progress=False))

    assert server.requests == [("GET", "/biggan-deep-512/pytorch_model.bin")]
    # A file placed by hand in the cache is trusted on first sight, and checked from then on.
    assert recorded(cache)["files"]["biggan-deep-512/config.json"]["sha256"] == sha256(b'{"placed": "by hand"}')


def test_source_mirror_overrides_the_files_urls(server, cache, unreachable_url):
    server.serve("biggan-deep-128/config.json", b"{}")
    server.serve("biggan-deep-128/pytorch_model.bin", b"weights")
    files = biggan_files(128, mirror=unreachable_url)

    ensure_files(files, WeightsSource(cache_dir=cache, mirror=server.url + "/", progress=False))

    assert sorted(path for _method, path in server.requests) == [
        "/biggan-deep-128/config.json",
        "/biggan-deep-128/pytorch_model.bin",
    ]


def test_progress_bar_names_the_file_on_stderr(server, cache, capsys):
    server.serve("biggan-deep-128/config.json", b"{}")
    ensure_files(biggan_files(128, mirror=server.url)[:1], WeightsSource(cache_dir=cache, progress=True))
    assert "biggan-deep-128/config.json" in capsys.readouterr().err


def test_checksum_mismatch_keeps_nothing(server, cache):
    server.serve("clip/ViT-B-32.pt", b"not the checkpoint you are looking for")
    wanted = WeightFile("clip/ViT-B-32.pt", server.url + "/clip/ViT-B-32.pt", sha256(b"the real checkpoint"), None)

    with pytest.raises(WeightsDownloadError) as caught:
        ensure_files([wanted], WeightsSource(cache_dir=cache, progress=False))

    message = str(caught.value)
    assert "clip/ViT-B-32.pt" in message
    assert sha256(b"the real checkpoint") in message
    assert "Nothing was kept" in message
    assert files_under(cache) == []


def test_published_checksum_of_the_catalogue_is_enforced(server, cache):
    server.serve("clip/ViT-B-32.pt", b"x" * 1000)
    with pytest.raises(WeightsDownloadError, match="353,976,522"):
        ensure_files(clip_files(mirror=server.url), WeightsSource(cache_dir=cache, progress=False))
    assert files_under(cache) == []


def test_known_size_mismatch_keeps_nothing(server, cache):
    # BigGAN-deep-256's weights have a known size; a short file is refused even with no checksum to compare.
    server.serve("biggan-deep-256/config.json", b"{}")
    server.serve("biggan-deep-256/pytorch_model.bin", b"far too short")

    with pytest.raises(WeightsDownloadError) as caught:
        ensure_files(biggan_files(256, mirror=server.url), WeightsSource(cache_dir=cache, progress=False))

    message = str(caught.value)
    assert "biggan-deep-256/pytorch_model.bin" in message and "234,411,737" in message
    # config.json, downloaded before, is complete and verified, so it stays.
    assert files_under(cache) == ["biggan-deep-256/config.json", weights.CHECKSUMS_FILE_NAME]


def test_interrupted_download_keeps_nothing(server, cache):
    server.serve("biggan-deep-128/pytorch_model.bin", b"half of a file", truncated=True)
    files = [f for f in biggan_files(128, mirror=server.url) if f.key.endswith(".bin")]
    assert files[0].sha256 is None and files[0].size is None  # only the transfer itself can reveal the cut
    seen_mid_transfer: list[list[str]] = []
    server.during_transfer = lambda: seen_mid_transfer.append(files_under(cache))

    with pytest.raises(WeightsDownloadError) as caught:
        ensure_files(files, WeightsSource(cache_dir=cache, progress=False))

    message = str(caught.value)
    assert "biggan-deep-128/pytorch_model.bin" in message and "Nothing was kept" in message
    assert "connection broke" in message
    # Mid-transfer the bytes go to a temporary file beside the destination, never to the final path.
    ((partial,),) = seen_mid_transfer
    assert partial.startswith("biggan-deep-128/.pytorch_model.bin.") and partial.endswith(".part")
    assert files_under(cache) == []


def test_http_error_is_reported_with_the_status(server, cache):
    with pytest.raises(WeightsDownloadError, match="404") as caught:
        ensure_files(biggan_files(128, mirror=server.url), WeightsSource(cache_dir=cache, progress=False))
    assert "biggan-deep-128/config.json" in str(caught.value)
    assert files_under(cache) == []


def test_redownload_that_differs_from_the_first_use_record_is_refused(server, cache):
    server.serve("biggan-deep-128/config.json", b'{"v": 1}')
    files = biggan_files(128, mirror=server.url)[:1]
    source = WeightsSource(cache_dir=cache, progress=False)
    ensure_files(files, source)
    (cache / "biggan-deep-128/config.json").unlink()
    server.serve("biggan-deep-128/config.json", b'{"v": 2}')

    with pytest.raises(WeightsDownloadError, match="recorded") as caught:
        ensure_files(files, source)

    assert sha256(b'{"v": 1}') in str(caught.value)
    assert not (cache / "biggan-deep-128/config.json").exists()


def test_stale_partial_download_from_a_killed_run_is_removed(server, cache):
    folder = cache / "biggan-deep-128"
    folder.mkdir(parents=True)
    stale = folder / ".config.json.abc123.part"
    fresh = folder / ".config.json.def456.part"  # maybe another process downloading right now: left alone
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    age(stale, 2 * 3600)
    server.serve("biggan-deep-128/config.json", b"{}")

    ensure_files(biggan_files(128, mirror=server.url)[:1], WeightsSource(cache_dir=cache, progress=False))

    assert not stale.exists() and fresh.exists()


# ---- offline, unreachable, local folder -------------------------------------------------------------------


def test_offline_with_missing_files_names_each_file_url_and_destination(server, cache):
    server.serve("biggan-deep-128/config.json", b"{}")
    files = biggan_files(128, mirror=server.url)

    with pytest.raises(MissingWeightsError) as caught:
        ensure_files(files, WeightsSource(cache_dir=cache, offline=True, progress=False))

    message = str(caught.value)
    for weight_file in files:
        assert weight_file.key in message
        assert weight_file.url in message
        assert str(cache / weight_file.key) in message
    assert "BIGSLEEP_WEIGHTS_DIR" in message and "BIGSLEEP_OFFLINE" in message
    assert "\n" not in message
    assert server.requests == []


def test_unreachable_server_names_the_missing_files(cache, unreachable_url):
    files = biggan_files(128, mirror=unreachable_url)

    with pytest.raises(MissingWeightsError) as caught:
        ensure_files(files, WeightsSource(cache_dir=cache, progress=False))

    message = str(caught.value)
    assert "could not be reached" in message and "Connection refused" in message
    for weight_file in files:
        assert weight_file.key in message and weight_file.url in message and str(cache / weight_file.key) in message
    assert files_under(cache) == []


def test_local_dir_with_all_files_never_touches_the_network(tmp_path, cache, unreachable_url):
    local = tmp_path / "weights"
    payloads = {"biggan-deep-128/config.json": b"{}", "biggan-deep-128/pytorch_model.bin": b"weights"}
    for key, body in payloads.items():
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(body)
    checked = WeightFile("clip/ViT-B-32.pt", unreachable_url + "/clip", sha256(b"clip"), 4)
    (local / "clip").mkdir()
    (local / "clip/ViT-B-32.pt").write_bytes(b"clip")
    files = biggan_files(128, mirror=unreachable_url) + [checked]

    paths = ensure_files(files, WeightsSource(cache_dir=cache, local_dir=local, mirror=unreachable_url))

    assert paths == {key: local / key for key in [*payloads, "clip/ViT-B-32.pt"]}
    assert not (cache / "biggan-deep-128").exists() and not (cache / "clip").exists()


def test_local_dir_missing_files_are_reported_not_downloaded(tmp_path, cache, server):
    local = tmp_path / "weights"
    local.mkdir()
    server.serve("biggan-deep-128/config.json", b"{}")
    server.serve("biggan-deep-128/pytorch_model.bin", b"weights")
    files = biggan_files(128, mirror=server.url)

    with pytest.raises(MissingWeightsError) as caught:
        ensure_files(files, WeightsSource(cache_dir=cache, local_dir=local))

    message = str(caught.value)
    assert str(local / "biggan-deep-128/pytorch_model.bin") in message and server.url in message
    assert server.requests == []


def test_local_dir_file_is_checked_against_the_published_checksum(tmp_path, cache, unreachable_url):
    local = tmp_path / "weights"
    (local / "clip").mkdir(parents=True)
    (local / "clip/ViT-B-32.pt").write_bytes(b"clap")
    checked = WeightFile("clip/ViT-B-32.pt", unreachable_url + "/clip", sha256(b"clip"), None)

    with pytest.raises(WeightsDownloadError) as caught:
        ensure_files([checked], WeightsSource(cache_dir=cache, local_dir=local))

    assert str(local / "clip/ViT-B-32.pt") in str(caught.value) and "corrupted" in str(caught.value)
    assert (local / "clip/ViT-B-32.pt").exists(), "a user's own file is never deleted"


# ---- a cached file that changed -------------------------------------------------------------------------


def test_cached_file_changed_right_after_download_is_detected(server, cache):
    original = b"fake biggan weights"
    server.serve("biggan-deep-128/pytorch_model.bin", original)
    files = [f for f in biggan_files(128, mirror=server.url) if f.key.endswith(".bin")]
    source = WeightsSource(cache_dir=cache, progress=False)
    (path,) = ensure_files(files, source).values()

    # Same length, written within the same clock tick as the download: size and mtime look unchanged.
    before = path.stat()
    path.write_bytes(b"FAKE biggan weights")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    with pytest.raises(WeightsDownloadError) as caught:
        ensure_files(files, source)
    message = str(caught.value)
    assert "biggan-deep-128/pytorch_model.bin" in message and str(path) in message
    assert sha256(original) in message and "Delete" in message
    assert len(server.requests) == 1


def test_unchanged_file_is_not_hashed_again_but_a_changed_one_is(server, cache, monkeypatch):
    server.serve("biggan-deep-128/pytorch_model.bin", b"fake biggan weights")
    files = [f for f in biggan_files(128, mirror=server.url) if f.key.endswith(".bin")]
    source = WeightsSource(cache_dir=cache, progress=False)
    (path,) = ensure_files(files, source).values()
    age(path, 86_400)
    ensure_files(files, source)  # hashes once more, and records the (size, mtime) that the hash vouches for

    hashed: list[Path] = []
    real_hash = weights._sha256_of_file
    monkeypatch.setattr(weights, "_sha256_of_file", lambda p: hashed.append(p) or real_hash(p))
    ensure_files(files, source)
    assert hashed == []

    path.write_bytes(b"FAKE biggan weights")
    age(path, 3600)
    with pytest.raises(WeightsDownloadError, match="corrupted"):
        ensure_files(files, source)
    assert hashed == [path]
