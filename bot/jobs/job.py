"""A job as the bot keeps it: its record, its states and the moves between them, and its id.

This module must stay free of torch and discord imports.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal, get_args

from generator.protocol import DreamSpec

JobKind = Literal["imagine", "reroll", "variation"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]

JOB_KINDS: tuple[str, ...] = get_args(JobKind)
JOB_STATES: tuple[str, ...] = get_args(JobState)
FINISHED_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})

# Which states each state may move to. 'queued' -> 'failed' exists for jobs that can no longer run (for
# example a variation whose parent's latents were deleted); 'running' -> 'queued' is a re-queue after the
# worker stopped or the bot restarted.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"queued", "done", "failed", "cancelled"}),
    "done": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}

# No 0/1/i/l/o: ids are read off screenshots and typed back into /cancel or /show.
JOB_ID_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
JOB_ID_LENGTH = 8


def new_job_id() -> str:
    return "".join(secrets.choice(JOB_ID_ALPHABET) for _ in range(JOB_ID_LENGTH))


def normalize_job_id(text: str) -> str:
    """What a user typed (`#AB12CD34 `) to the stored form."""
    return text.strip().lstrip("#").strip().lower()


# ---- the job record ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: str
    seq: int
    guild_id: int
    channel_id: int
    user_id: int
    user_name: str
    kind: str
    parent_job_id: str | None
    state: str
    # The prompt and settings as the job was made, without a variation's starting latents (that file's path is
    # init_latents_path), with its image prompts' keys but not their pictures (files under the data dir, see
    # bot.jobs.files) and without what the dispatcher adds per run (see worker_spec).
    spec: DreamSpec
    init_latents_path: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    error: str | None
    progress_message_id: int | None
    progress_step: int
    png_path: str | None
    latents_path: str | None
    timelapse_path: str | None
    wall_seconds: float | None
    # What the worker really made the image with, kept beside `spec` (what was asked for): they differ when the
    # job ran out of memory and was made with fewer cutouts. None until done (and for jobs done before it was
    # kept). `made_with` is the one to show and to copy.
    ran_spec: DreamSpec | None
    # GPU time of every run of the job that has ended, however it ended (done, failed, cancelled, handed back),
    # and when the last one ended: what the server's GPU budget counts (bot.moderation.quotas).
    gpu_seconds: float
    gpu_spent_at: float | None
    # A grid (/imagine count:2-4) is grid_size jobs made together that share grid_id; grid_index 0 is its top
    # left image (bot.jobs.grids). A job made alone has no grid_id and is a grid of one.
    grid_id: str | None = None
    grid_index: int = 0
    grid_size: int = 1

    @property
    def prompt(self) -> str:
        return self.spec.prompt

    @property
    def negative(self) -> str:
        return self.spec.negative

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def steps(self) -> int:
        return self.spec.steps

    @property
    def size(self) -> int:
        return self.spec.size

    @property
    def cutouts(self) -> int:
        return self.spec.cutouts

    @property
    def made_with(self) -> DreamSpec:
        """The settings the image was made with: the same seed and these make the same image."""
        return self.ran_spec or self.spec

    @property
    def in_grid(self) -> bool:
        return self.grid_id is not None

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def result_paths(self) -> list[str]:
        return [p for p in (self.png_path, self.latents_path, self.timelapse_path) if p]

    def worker_spec(self, *, init_latents: bytes | None = None, snapshot_every: int = 0) -> DreamSpec:
        """The DreamSpec to send to the worker: the stored spec with a variation's starting latents and the
        snapshot interval.

        The store keeps only the path of a variation's starting latents; the caller reads that file (relative
        to its data dir) and passes the bytes, so this method does no I/O.
        """
        if self.init_latents_path is not None and init_latents is None:
            raise ValueError(
                f"Job {self.id} starts from {self.init_latents_path}; read that file and pass init_latents."
            )
        return self.spec.with_changes(snapshot_every=snapshot_every, init_latents=init_latents)
