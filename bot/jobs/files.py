"""The bot's own copies of results and image prompts under the data dir.

Discord's attachment URLs are signed and expire, so /show, variations and the history read these files, never
Discord; so does the dispatcher for a job's image prompts (the pictures members gave, checked and made into a
bounded PNG by bot.jobs.uploads). Paths handed to the store are relative to the data dir (the dir may move).
`write` is the one way the bot writes such a file (results, challenge entries, image prompts): to a temporary
name, synced to the disk, renamed, and the folder synced, so neither a crash nor a power cut leaves an empty or
half image behind a path the store points at.

An image prompt's file is named by its content (`prompts/<2 hex>/<SHA-256>.png`): the same picture is kept once
however many jobs use it (a Reroll, a Variation, `like:` of the same result), and its name is its key in the
job's spec (generator.protocol.ImagePrompt.key).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

RESULTS_DIR = "results"
PROMPTS_DIR = "prompts"


@dataclass(frozen=True)
class SavedResult:
    png_path: str
    latents_path: str
    timelapse_path: str | None


class ResultFiles:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def _folder_for(self, job_id: str) -> PurePosixPath:
        # Two-character buckets keep any one folder small after years of jobs.
        return PurePosixPath(RESULTS_DIR) / job_id[:2]

    def save_result(self, job_id: str, png: bytes, latents_npz: bytes, timelapse_gif: bytes | None = None) -> SavedResult:
        folder = self._folder_for(job_id)
        png_path = folder / f"{job_id}.png"
        latents_path = folder / f"{job_id}.latents.npz"
        self.write(png_path, png)
        self.write(latents_path, latents_npz)
        timelapse_path = None
        if timelapse_gif:
            timelapse_path = folder / f"{job_id}.timelapse.gif"
            self.write(timelapse_path, timelapse_gif)
        return SavedResult(str(png_path), str(latents_path), str(timelapse_path) if timelapse_path else None)

    @staticmethod
    def prompt_image_key(png: bytes) -> str:
        """Where an image prompt's PNG is kept, relative to the data dir: named by its SHA-256."""
        digest = hashlib.sha256(png).hexdigest()
        return str(PurePosixPath(PROMPTS_DIR) / digest[:2] / f"{digest}.png")

    def save_prompt_image(self, png: bytes) -> tuple[str, bool]:
        """Keep an image prompt's PNG (durably, see `write`); returns its key and whether this call wrote it (False:
        the same picture was already kept)."""
        key = self.prompt_image_key(png)
        if self.exists(key):
            return key, False
        self.write(key, png)
        return key, True

    def remove(self, relative: str | PurePosixPath) -> None:
        """Delete a file the bot keeps; nothing happens when it is already gone."""
        self.absolute(relative).unlink(missing_ok=True)

    def absolute(self, relative: str | PurePosixPath) -> Path:
        path = PurePosixPath(relative)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"{relative!r} is not a path inside the data dir")
        return self.data_dir.joinpath(*path.parts)

    def write(self, relative: str | PurePosixPath, data: bytes) -> None:
        """Put `data` at `relative` durably: once this returns, a power cut leaves the whole file there; if it
        raises, the file is as it was (absent, or its old bytes)."""
        target = self.absolute(relative)
        _make_folders_durably(target.parent)
        partial = target.with_name(target.name + ".partial")
        try:
            with open(partial, "wb") as file:
                file.write(data)
                file.flush()
                # Without this the rename can reach the disk before the bytes: after a power cut, an empty file.
                os.fsync(file.fileno())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _fsync_folder(target.parent)

    def read(self, relative: str | PurePosixPath) -> bytes:
        """The file's bytes; FileNotFoundError when it was deleted."""
        return self.absolute(relative).read_bytes()

    def exists(self, relative: str | PurePosixPath | None) -> bool:
        return relative is not None and self.absolute(relative).is_file()


def _fsync_folder(folder: Path) -> None:
    """Make the folder's entries (a rename, a new file or folder in it) survive a power cut."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _make_folders_durably(folder: Path) -> None:
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        _fsync_folder(created.parent)
