"""Where BigSleep's model weights come from, and making sure the ones on disk are the right ones.

This module must stay light: the `doctor` and `download` commands import it, so it never imports torch
(nor discord). pooch (and through it requests) is imported only when a download actually starts.

Rules it keeps:
- No network request when every file is present and verified: the reference loader sends a HEAD request on
  every load and so fails offline even with a full cache.
- A file appears at its final path only once it is complete and verified: it is streamed into a temporary
  file beside its destination and renamed into place afterwards; on any failure the temporary file is removed.
- CLIP has a published SHA-256 (the second-to-last segment of its URL). BigGAN files have none, so they are
  trusted on first use: the SHA-256 of the first good download is recorded in `<cache_dir>/checksums.json`
  and every later use is checked against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import platformdirs

from generator.protocol import ALLOWED_SIZES, CLIP_MODELS, DEFAULT_CLIP_MODEL
from generator.settings import WeightsSettings

log = logging.getLogger(__name__)

# Named in messages; generator.settings.WeightsSettings reads them.
CACHE_DIR_ENV = WeightsSettings.variable("cache_dir")
WEIGHTS_DIR_ENV = WeightsSettings.variable("weights_dir")
OFFLINE_ENV = WeightsSettings.variable("offline")
MIRROR_ENV = WeightsSettings.variable("weights_mirror")

CHECKSUMS_FILE_NAME = "checksums.json"
_CHECKSUMS_FORMAT = 1

_BIGGAN_URL = "https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-{size}-{name}"
# Only BigGAN-deep-256's weights have a size we know to the byte; the others are left to trust-on-first-use.
_BIGGAN_WEIGHTS_SIZES = {256: 234_411_737}

# OpenAI's URLs (the clip package's _MODELS) carry each file's SHA-256 as their second-to-last segment.
_CLIP_URL = "https://openaipublic.azureedge.net/clip/models/{sha256}/{name}.pt"
# name: (SHA-256, size in bytes where we know it to the byte; otherwise the SHA-256 alone decides).
_CLIP_CHECKPOINTS = {
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", 353_976_522),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", None),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", None),
}
assert tuple(_CLIP_CHECKPOINTS) == CLIP_MODELS

# pooch's default chunk is 1 KiB with a flush after each one: hundreds of thousands of writes for CLIP.
_DOWNLOAD_CHUNK_BYTES = 1024 * 1024
_DOWNLOAD_TIMEOUT_S = 60
# A download that was killed leaves its partial file behind; a live one touches its file every chunk, so a
# partial file untouched this long belongs to nobody and can go.
_STALE_PARTIAL_AGE_S = 3600
# Filesystem timestamps are coarse (a clock tick, or 2 s on FAT). A file modified in the same tick as our last
# hash of it could keep its (size, mtime) while its bytes changed, so a stat record only stands in for hashing
# when the file's mtime is older than the moment we hashed it by more than this (git's "racy clean" rule).
_RACY_MARGIN_NS = 2_000_000_000


@dataclass(frozen=True)
class WeightFile:
    """One file a model needs: `key` is its path relative to the cache (or to a local weights folder)."""

    key: str
    url: str
    sha256: str | None
    size: int | None


def _url(key: str, canonical_url: str, mirror: str | None) -> str:
    return f"{mirror.rstrip('/')}/{key}" if mirror else canonical_url


def biggan_files(size: int, mirror: str | None = None) -> list[WeightFile]:
    """config.json and pytorch_model.bin for BigGAN-deep at `size` px, laid out as `from_pretrained` wants."""
    if size not in ALLOWED_SIZES:
        allowed = ", ".join(str(s) for s in ALLOWED_SIZES)
        raise ValueError(f"BigGAN-deep comes in sizes {allowed}, not {size}.")
    folder = f"biggan-deep-{size}"
    config_key = f"{folder}/config.json"
    weights_key = f"{folder}/pytorch_model.bin"
    return [
        WeightFile(config_key, _url(config_key, _BIGGAN_URL.format(size=size, name="config.json"), mirror), None, None),
        WeightFile(
            weights_key,
            _url(weights_key, _BIGGAN_URL.format(size=size, name="pytorch_model.bin"), mirror),
            None,
            _BIGGAN_WEIGHTS_SIZES.get(size),
        ),
    ]


def clip_files(mirror: str | None = None, model: str = DEFAULT_CLIP_MODEL) -> list[WeightFile]:
    """OpenAI's checkpoint of the CLIP `model` (one of CLIP_MODELS)."""
    if model not in _CLIP_CHECKPOINTS:
        raise ValueError(f"CLIP comes as {', '.join(CLIP_MODELS)} here, not {model!r}.")
    sha256, size = _CLIP_CHECKPOINTS[model]
    name = model.replace("/", "-")
    key = f"clip/{name}.pt"
    return [WeightFile(key, _url(key, _CLIP_URL.format(sha256=sha256, name=name), mirror), sha256, size)]


def files_for_sizes(sizes: Iterable[int], mirror: str | None = None, clip_model: str = DEFAULT_CLIP_MODEL) -> list[WeightFile]:
    """Everything needed to dream at each of `sizes`: CLIP once, and one BigGAN per distinct size."""
    files: dict[str, WeightFile] = {}
    for weight_file in clip_files(mirror, clip_model) + [f for size in sizes for f in biggan_files(size, mirror)]:
        files.setdefault(weight_file.key, weight_file)
    return list(files.values())


def default_cache_dir(settings: WeightsSettings | None = None) -> Path:
    """$BIGSLEEP_CACHE_DIR if set, else the platform's per-user cache folder."""
    configured = (settings or WeightsSettings.from_env()).cache_dir
    if configured is not None:
        return configured.expanduser()
    return Path(platformdirs.user_cache_dir("bigsleep-bot", appauthor=False)) / "weights"


@dataclass(frozen=True)
class WeightsSource:
    """Where weights are found: a local folder (never downloads), or the cache (downloads unless offline)."""

    cache_dir: Path
    local_dir: Path | None = None
    offline: bool = False
    mirror: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        # Callers and tests pass plain strings too; everything below relies on Path.
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())
        if self.local_dir is not None:
            object.__setattr__(self, "local_dir", Path(self.local_dir).expanduser())

    @classmethod
    def from_env(cls) -> WeightsSource:
        """From $BIGSLEEP_CACHE_DIR, $BIGSLEEP_WEIGHTS_DIR, $BIGSLEEP_OFFLINE and $BIGSLEEP_WEIGHTS_MIRROR; a value
        that makes no sense raises ValueError naming its variable."""
        settings = WeightsSettings.from_env()
        return cls(
            cache_dir=default_cache_dir(settings),
            local_dir=settings.weights_dir,
            offline=settings.offline,
            mirror=settings.weights_mirror,
        )


class MissingWeightsError(RuntimeError):
    """Weight files are missing and may not (offline, local folder) or could not (no network) be downloaded."""


class WeightsDownloadError(RuntimeError):
    """A weight file failed to download or to verify; the message names it, says why, and what to do."""


# ---- the checksum record -------------------------------------------------------------------------------


class _ChecksumRecord:
    """`<cache_dir>/checksums.json`: SHA-256s trusted on first use, and the last verification of each path.

    "files" maps a key to the SHA-256 and size of its first good download. "verified" maps an absolute path to
    the (size, mtime_ns) it had when it last hashed to a given SHA-256, so an unchanged file is not hashed
    again on every start (hashing CLIP alone reads 350 MB).
    """

    def __init__(self, cache_dir: Path) -> None:
        self.path = cache_dir / CHECKSUMS_FILE_NAME
        self.files: dict[str, dict[str, Any]] = {}
        self.verified: dict[str, dict[str, Any]] = {}
        self._changed_files: dict[str, dict[str, Any]] = {}
        self._changed_verified: dict[str, dict[str, Any]] = {}
        stored = self._read()
        self.files.update(stored.get("files", {}))
        self.verified.update(stored.get("verified", {}))

    def _read(self) -> dict[str, Any]:
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("Ignoring unreadable %s (%s); checksums will be recorded afresh.", self.path, error)
            return {}
        return stored if isinstance(stored, dict) else {}

    def recorded_file(self, key: str) -> dict[str, Any] | None:
        return self.files.get(key)

    def record_file(self, key: str, sha256: str, size: int, url: str) -> None:
        entry = {"sha256": sha256, "size": size, "url": url, "recorded_at": datetime.now(timezone.utc).isoformat()}
        self.files[key] = self._changed_files[key] = entry

    def still_verified(self, path: Path, sha256: str, stat: os.stat_result) -> bool:
        entry = self.verified.get(os.path.abspath(path))
        return (
            entry is not None
            and entry.get("sha256") == sha256
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
            and stat.st_mtime_ns < entry.get("checked_at_ns", 0) - _RACY_MARGIN_NS
        )

    def record_verified(self, path: Path, sha256: str, stat: os.stat_result, checked_at_ns: int) -> None:
        entry = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "checked_at_ns": checked_at_ns}
        self.verified[os.path.abspath(path)] = self._changed_verified[os.path.abspath(path)] = entry

    def save(self) -> None:
        if not self._changed_files and not self._changed_verified:
            return
        # Another process (the bot and a CLI run, say) may have recorded other files since we read: merge.
        stored = self._read()
        files = {**stored.get("files", {}), **self._changed_files}
        verified = {**stored.get("verified", {}), **self._changed_verified}
        document = {"format": _CHECKSUMS_FORMAT, "files": files, "verified": verified}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{CHECKSUMS_FILE_NAME}.", suffix=".part")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=2, sort_keys=True)
            os.replace(temporary, self.path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        self._changed_files.clear()
        self._changed_verified.clear()


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(_DOWNLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# ---- verification --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Expectation:
    sha256: str | None
    size: int | None
    sha256_origin: str  # how we know the SHA-256, for error messages


def _expectation(weight_file: WeightFile, record: _ChecksumRecord) -> _Expectation:
    if weight_file.sha256:
        return _Expectation(weight_file.sha256.lower(), weight_file.size, "published")
    recorded = record.recorded_file(weight_file.key)
    if recorded:
        origin = f"recorded in {record.path} when it was first downloaded ({recorded.get('recorded_at', '?')})"
        return _Expectation(recorded.get("sha256"), weight_file.size or recorded.get("size"), origin)
    return _Expectation(None, weight_file.size, "")


def _verify_present_file(
    weight_file: WeightFile, path: Path, record: _ChecksumRecord, *, in_cache: bool, url: str
) -> None:
    """Raise WeightsDownloadError unless the file at `path` is what `weight_file` should be."""
    expected = _expectation(weight_file, record)
    stat = path.stat()
    if in_cache:
        advice = f"Delete {path} and run again to download it again."
    else:
        advice = f"Delete or replace {path} with a good copy (it can be downloaded from {url})."
    if expected.size is not None and stat.st_size != expected.size:
        raise WeightsDownloadError(
            f"The weight file {weight_file.key} at {path} is {stat.st_size:,} bytes but should be "
            f"{expected.size:,}: it is incomplete or a different file. {advice}"
        )
    if expected.sha256 is None and not in_cache:
        return  # nothing to check a user's own file against; the cache record only describes our downloads
    if expected.sha256 is not None and record.still_verified(path, expected.sha256, stat):
        return
    checked_at_ns = time.time_ns()
    actual = _sha256_of_file(path)
    if expected.sha256 is None:
        # First sight of a file in the cache (placed by hand, or the record was lost): trust it from now on.
        record.record_file(weight_file.key, actual, stat.st_size, url)
    elif actual != expected.sha256:
        raise WeightsDownloadError(
            f"The weight file {weight_file.key} at {path} is corrupted or was changed: its SHA-256 is {actual}, "
            f"but the SHA-256 {expected.sha256_origin} is {expected.sha256}. {advice}"
        )
    record.record_verified(path, actual, stat, checked_at_ns)


# ---- downloading ---------------------------------------------------------------------------------------


class _HashingWriter:
    """A file-like sink for pooch's downloader that hashes and counts bytes as they arrive (one pass, no re-read)."""

    def __init__(self, out) -> None:
        self._out = out
        self._digest = hashlib.sha256()
        self.bytes_written = 0

    def write(self, chunk: bytes) -> int:
        self._out.write(chunk)
        self._digest.update(chunk)
        self.bytes_written += len(chunk)
        return len(chunk)

    def flush(self) -> None:
        self._out.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class _ProgressBar:
    """The part of tqdm's interface pooch uses, opening the real bar only once the server has answered.

    pooch sets `total` from Content-Length when the response arrives; a bar drawn before that would leave an
    empty "0%" line behind whenever the server cannot be reached.
    """

    def __init__(self, description: str) -> None:
        self._description = description
        self._bar = None

    def __bool__(self) -> bool:
        return True  # pooch only feeds a bar that is truthy (tqdm's truth is "total > 0")

    @property
    def total(self) -> int | None:
        return self._bar.total if self._bar is not None else None

    @total.setter
    def total(self, size: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            desc=self._description,
            total=size or None,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            leave=True,
        )

    def update(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def reset(self) -> None:
        if self._bar is not None:
            self._bar.reset()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Unreachable(Exception):
    """The server could not be reached at all: no byte of the file arrived."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _remove_stale_partials(destination: Path) -> None:
    now = time.time()
    for partial in destination.parent.glob(f".{destination.name}.*.part"):
        try:
            if now - partial.stat().st_mtime > _STALE_PARTIAL_AGE_S:
                partial.unlink()
        except OSError:
            pass  # gone already, or not ours to remove; it does not block this download


def _download(
    weight_file: WeightFile, url: str, destination: Path, record: _ChecksumRecord, *, progress: bool
) -> None:
    """Download to a temporary file beside `destination`, verify it, and only then rename it into place.

    pooch.retrieve does the same dance, but with no known hash it re-reads the whole file afterwards only to
    log its hash (on a logger that prints by default, with advice about pooch's own API), and its check before
    the rename is the hash alone; so we drive pooch's HTTPDownloader ourselves, hash while the bytes stream
    in, and check size and hash before the rename.
    """
    import pooch  # deferred: pooch pulls in requests, which the no-download paths never need
    import requests

    expected = _expectation(weight_file, record)
    destination.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(destination)
    bar = _ProgressBar(weight_file.key) if progress else None
    downloader = pooch.HTTPDownloader(
        progressbar=bar or False,
        chunk_size=_DOWNLOAD_CHUNK_BYTES,
        timeout=_DOWNLOAD_TIMEOUT_S,
    )
    fd, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _HashingWriter(out)
            try:
                downloader(url, sink, None)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                if sink.bytes_written == 0 and isinstance(error, requests.ConnectionError):
                    raise _Unreachable(_describe_network_error(error)) from error
                # A cut-off transfer of a file whose size and checksum we do not know yet is caught only by
                # urllib3 comparing the bytes received with Content-Length (ChunkedEncodingError).
                reason = f"the connection broke before the whole file arrived ({_describe_network_error(error)})"
                raise _download_error(weight_file, url, destination, reason) from error
            except requests.HTTPError as error:
                status = error.response.status_code if error.response is not None else "an error"
                reason = error.response.reason if error.response is not None else ""
                raise _download_error(
                    weight_file, url, destination, f"the server answered {status} {reason}".rstrip()
                ) from error
            except requests.RequestException as error:
                reason = f"the request failed ({_describe_network_error(error)})"
                raise _download_error(weight_file, url, destination, reason) from error
            except OSError as error:
                raise _download_error(weight_file, url, destination, f"writing it failed ({error})") from error
            out.flush()
            os.fsync(out.fileno())  # the rename below must never publish a file whose bytes are not on disk
        if expected.size is not None and sink.bytes_written != expected.size:
            raise _download_error(
                weight_file,
                url,
                destination,
                f"{sink.bytes_written:,} bytes arrived but the file has {expected.size:,} bytes "
                "(the server sent a different or truncated file)",
            )
        actual = sink.hexdigest()
        if expected.sha256 is not None and actual != expected.sha256:
            detail = f"its SHA-256 is {actual} but the SHA-256 {expected.sha256_origin} is {expected.sha256}"
            hint = ""
            if expected.sha256_origin != "published":
                hint = (
                    f" If the file really changed upstream and you trust the new one, remove the entry for "
                    f"{weight_file.key} from {record.path}."
                )
            raise _download_error(weight_file, url, destination, detail + " (corrupted, or a different file)", hint)
        os.chmod(temporary, 0o644)  # mkstemp makes files private; weights are no secret and may be shared
        checked_at_ns = time.time_ns()
        os.replace(temporary, destination)
    finally:
        if bar is not None:
            bar.close()
        if os.path.exists(temporary):
            os.unlink(temporary)
    stat = destination.stat()
    if expected.sha256 is None:
        record.record_file(weight_file.key, actual, stat.st_size, url)
    record.record_verified(destination, actual, stat, checked_at_ns)


def _describe_network_error(error: Exception) -> str:
    # requests wraps urllib3's errors, which wrap the socket's: the innermost readable message says most.
    inner = error.args[0] if error.args else error
    inner = getattr(inner, "reason", None) or inner  # urllib3's MaxRetryError keeps the cause there
    if isinstance(inner, Exception) and inner.args and isinstance(inner.args[0], str):
        inner = inner.args[0]  # urllib3's ProtocolError: (message, underlying exception)
    return str(inner)


def _download_error(
    weight_file: WeightFile, url: str, destination: Path, what_went_wrong: str, hint: str = ""
) -> WeightsDownloadError:
    return WeightsDownloadError(
        f"Downloading the weight file {weight_file.key} from {url} failed: {what_went_wrong}. Nothing was kept. "
        f"Run again to retry; if it keeps failing, download the file yourself and put it at {destination}, "
        f"or set {WEIGHTS_DIR_ENV} to a folder that holds it as {weight_file.key}.{hint}"
    )


# ---- the entry point -----------------------------------------------------------------------------------


def _missing_error(
    missing: list[tuple[WeightFile, str, Path]], why: str, what_to_do: str
) -> MissingWeightsError:
    listing = "; ".join(f"{wf.key} (from {url}, to put at {path})" for wf, url, path in missing)
    count = "a weight file" if len(missing) == 1 else f"{len(missing)} weight files"
    return MissingWeightsError(f"BigSleep needs {count} that {why}: {listing}. {what_to_do}")


def weights_root(source: WeightsSource) -> Path:
    """The folder the files are looked for in: the weights folder when one is set, else the cache."""
    return source.cache_dir if source.local_dir is None else source.local_dir


def _plan(
    files: list[WeightFile], source: WeightsSource
) -> tuple[_ChecksumRecord, bool, Path, list[tuple[WeightFile, str, Path]]]:
    unique = list({f.key: f for f in files}.values())
    root = weights_root(source)
    planned = [(f, _url(f.key, f.url, source.mirror), root / f.key) for f in unique]
    return _ChecksumRecord(source.cache_dir), source.local_dir is None, root, planned


@dataclass(frozen=True)
class FileStatus:
    """What `inspect_files` found for one file: `problem` is None when it is present and verified."""

    weight_file: WeightFile
    path: Path
    url: str
    missing: bool
    problem: str | None


def inspect_files(files: list[WeightFile], source: WeightsSource) -> list[FileStatus]:
    """Check every file where `ensure_files` would look for it, verifying the present ones; never downloads."""
    record, in_cache, _root, planned = _plan(files, source)
    statuses = []
    for weight_file, url, path in planned:
        if not path.is_file():
            statuses.append(FileStatus(weight_file, path, url, missing=True, problem=f"{path} is missing"))
            continue
        try:
            _verify_present_file(weight_file, path, record, in_cache=in_cache, url=url)
        except (WeightsDownloadError, OSError) as error:
            statuses.append(FileStatus(weight_file, path, url, missing=False, problem=str(error)))
        else:
            statuses.append(FileStatus(weight_file, path, url, missing=False, problem=None))
    try:
        record.save()
    except OSError as error:
        log.warning("Could not save %s (%s).", record.path, error)
    return statuses


def ensure_files(files: list[WeightFile], source: WeightsSource) -> dict[str, Path]:
    """Return key -> path of each file, verified; download missing ones into the cache when allowed.

    Makes no network request when every file is already present and verified.
    """
    record, in_cache, root, planned = _plan(files, source)
    present = [item for item in planned if item[2].is_file()]
    missing = [item for item in planned if not item[2].is_file()]

    if missing and not in_cache:
        raise _missing_error(
            missing,
            f"the weights folder {root} (set by {WEIGHTS_DIR_ENV}) lacks",
            "BigSleep never downloads when a weights folder is set: download the files and put them there, "
            f"or unset {WEIGHTS_DIR_ENV} to have them downloaded into the cache {source.cache_dir}.",
        )
    if missing and source.offline:
        raise _missing_error(
            missing,
            f"are not in the cache {source.cache_dir}, and BigSleep is offline ({OFFLINE_ENV}=1) so it did not "
            "download them",
            "Download them on a machine with internet access and copy each to the path shown, or set "
            f"{WEIGHTS_DIR_ENV} to a folder that holds them under the same relative paths, or unset "
            f"{OFFLINE_ENV} to let BigSleep download them.",
        )

    try:
        # Check what is here before any long download, so a corrupted file is reported at once.
        for weight_file, url, path in present:
            _verify_present_file(weight_file, path, record, in_cache=in_cache, url=url)
        for index, (weight_file, url, path) in enumerate(missing):
            log.info("Downloading %s from %s to %s", weight_file.key, url, path)
            try:
                _download(weight_file, url, path, record, progress=source.progress)
            except _Unreachable as unreachable:
                raise _missing_error(
                    missing[index:],
                    f"are not in the cache {source.cache_dir} and could not be downloaded, because the server "
                    f"could not be reached ({unreachable.reason})",
                    "Check the network (or the mirror set by "
                    f"{MIRROR_ENV}) and run again, or download the files on another machine and copy each to "
                    f"the path shown, or set {WEIGHTS_DIR_ENV} to a folder that holds them under the same "
                    "relative paths.",
                ) from None
    finally:
        # Keep what was learnt (files downloaded before a failure stay, and stay verified) whatever happens.
        try:
            record.save()
        except OSError as error:
            # Only costs a re-hash (or a fresh first-use record) next time; never worth failing the run for.
            log.warning("Could not save %s (%s).", record.path, error)
    return {weight_file.key: path for weight_file, _url_used, path in planned}
