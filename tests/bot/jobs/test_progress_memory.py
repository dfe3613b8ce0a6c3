"""What the progress messages keep per channel stays bounded by recent activity, not by every channel the bot has
ever posted in (issue 11 item 11): channel budgets go once their window passed, "unreachable" marks once their
retry time passed."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from bot.jobs.job import Job
from bot.jobs.progress import ProgressMessages
from bot.settings import ProgressSettings
from generator.protocol import DreamSpec

WINDOW = 0.05


@dataclass
class _Message:
    id: int

    async def edit(self, **kwargs) -> None:
        pass


@dataclass
class _Channel:
    ids: itertools.count

    async def send(self, **kwargs) -> _Message:
        return _Message(next(self.ids))

    def get_partial_message(self, message_id: int) -> _Message:
        return _Message(message_id)


@dataclass
class _Client:
    """Just what ProgressMessages asks of discord.Client to post in a channel."""

    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def get_partial_messageable(self, channel_id: int, *, guild_id: int | None = None) -> _Channel:
        return _Channel(self.ids)


class _Store:
    async def set_progress_message(self, job_id: str, message_id: int) -> None:
        pass

    async def mark_final_shown(self, job_id: str) -> None:
        pass


def job_in(channel_id: int) -> Job:
    return Job(
        id=f"job{channel_id:05d}", seq=channel_id, guild_id=1, channel_id=channel_id, user_id=7, user_name="alice",
        kind="imagine", parent_job_id=None, state="queued", spec=DreamSpec("a lake"), init_latents_path=None,
        created_at=0.0, started_at=None, finished_at=None, attempts=0, error=None, progress_message_id=None,
        progress_step=0, png_path=None, latents_path=None, timelapse_path=None, wall_seconds=None, ran_spec=None,
        gpu_seconds=0.0, gpu_spent_at=None,
    )


def progress_messages() -> ProgressMessages:
    settings = ProgressSettings(
        edit_interval_seconds=0.01, channel_edits_per_window=5, channel_window_seconds=WINDOW,
        unreachable_retry_seconds=WINDOW,
    )
    return ProgressMessages(_Client(), _Store(), settings)  # type: ignore[arg-type]


async def test_channel_budgets_of_channels_quiet_for_a_window_are_dropped():
    progress = progress_messages()
    for channel in range(1, 501):
        progress.waiting(job_in(channel))
    await progress.idle()
    assert len(progress._channel_budgets) == 500

    await asyncio.sleep(WINDOW * 2.5)
    progress.waiting(job_in(9999))
    await progress.idle()
    assert len(progress._channel_budgets) == 1


async def test_unreachable_marks_past_their_retry_time_are_dropped():
    progress = progress_messages()
    for channel in range(1, 501):
        progress.mark_unreachable(channel)
    assert len(progress._unreachable_until) == 500 and progress.is_unreachable(1)

    await asyncio.sleep(WINDOW * 1.5)
    progress.mark_unreachable(9999)
    assert list(progress._unreachable_until) == [9999]
