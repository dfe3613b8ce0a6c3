"""The bot's own copies of results under the data dir.

Discord's attachment URLs are signed and expire, so /show, variations and the history read these files, never
Discord. Paths handed to the store are relative to the data dir (the dir may move); files are written to a
temporary name and renamed, so a crash never leaves half an image behind a path the store points at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

RESULTS_DIR = "results"


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

    def absolute(self, relative: str | PurePosixPath) -> Path:
        path = PurePosixPath(relative)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"{relative!r} is not a path inside the data dir")
        return self.data_dir.joinpath(*path.parts)

    def write(self, relative: str | PurePosixPath, data: bytes) -> None:
        target = self.absolute(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, target)

    def read(self, relative: str | PurePosixPath) -> bytes:
        """The file's bytes; FileNotFoundError when it was deleted."""
        return self.absolute(relative).read_bytes()

    def exists(self, relative: str | PurePosixPath | None) -> bool:
        return relative is not None and self.absolute(relative).is_file()
