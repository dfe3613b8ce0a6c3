"""Each job's own channel message: "(Waiting to start)", then percent, step and the latest snapshot, then the
final image with its embed and buttons.

The message is an ordinary bot-owned channel message (its id is kept in the store), never the interaction's,
whose token dies after 15 minutes. Changes are paced twice (bot.jobs.pacing): at most one change per message
every `edit_interval_seconds`, then a budget per channel shared by every job there. Updates that arrive while a
change waits are merged: only the latest state goes out (its snapshot, or the last one sent).

Discord's refusals are part of the job's life, not errors: a deleted message (10008, or 30046 for too many
edits of an old one) gets a new message; a channel the bot cannot use (403: 50001/50013; 10003 deleted) is
left alone for a while, and the job carries on; its owner can fetch the result with /show.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

from bot.jobs import texts
from bot.jobs.buttons import ResultButton, active_view, result_view
from bot.jobs.job import Job
from bot.jobs.pacing import ChannelBudgets, Pacer
from bot.jobs.store import JobStore
from bot.logs import bind_job
from bot.messages import NO_MENTIONS

if TYPE_CHECKING:
    from bot.settings import ProgressSettings

log = logging.getLogger(__name__)

UNKNOWN_MESSAGE = 10008
UNKNOWN_CHANNEL = 10003
MISSING_ACCESS = 50001
MISSING_PERMISSIONS = 50013
OLD_MESSAGE_EDIT_LIMIT = 30046
_RECENTLY_ENDED_KEPT = 10_000


@dataclass
class Render:
    """What a job's message should look like. `file` replaces the attachments; `clear_files` removes them;
    neither keeps what the message has."""

    content: str
    embed: discord.Embed | None = None
    file: tuple[str, bytes] | None = None
    clear_files: bool = False
    view: discord.ui.View | None = None
    final: bool = False
    # For a result that cannot be posted: tell the owner by DM.
    notify_owner_if_unreachable: bool = False

    def merged_over(self, older: Render | None) -> Render:
        """This render, keeping the older pending one's picture when this one brings none."""
        if older is not None and self.file is None and not self.clear_files and older.file is not None:
            self.file = older.file
        return self

    def message_kwargs(self, *, editing: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"content": self.content, "allowed_mentions": NO_MENTIONS, "view": self.view}
        if editing or self.embed is not None:
            kwargs["embed"] = self.embed
        if self.file is not None:
            name, data = self.file
            upload = discord.File(io.BytesIO(data), filename=name)
            if editing:
                kwargs["attachments"] = [upload]
            else:
                kwargs["file"] = upload
        elif self.clear_files and editing:
            kwargs["attachments"] = []
        if not editing and self.view is None:
            del kwargs["view"]
        return kwargs


@dataclass
class _Tracker:
    job: Job
    message_id: int | None
    pacer: Pacer
    pending: Render | None = None
    task: asyncio.Task[None] | None = None
    finalised: bool = False


class ProgressMessages:
    """The bot's ProgressSink (see bot.jobs.ports): every method returns at once; Discord calls run behind.

    `spoiler_for(guild_id)` says whether a server wants its images behind spoilers (bot.moderation decides);
    `models_kind()` is the generation worker's (generator.wire.WorkerHealth): progress and results made with
    models that draw noise (tiny, random) say so;
    `result_buttons` are other features' buttons under finished images (bot.challenges: "Submit to challenge").
    """

    def __init__(
        self,
        client: discord.Client,
        store: JobStore,
        settings: ProgressSettings,
        *,
        spoiler_for: Callable[[int], bool] = lambda guild_id: False,
        models_kind: Callable[[], str] = lambda: "full",
        result_buttons: Sequence[ResultButton] = (),
    ) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.spoiler_for = spoiler_for
        self.models_kind = models_kind
        self.result_buttons = tuple(result_buttons)
        self._trackers: dict[str, _Tracker] = {}
        # Jobs whose ending was shown lately: a late announce() must not post "(Waiting to start)" after it.
        self._recently_ended: OrderedDict[str, None] = OrderedDict()
        poll = max(0.005, min(0.05, settings.edit_interval_seconds / 20))
        self._channel_budgets = ChannelBudgets(settings.channel_edits_per_window, settings.channel_window_seconds, poll)
        # Channels that refused the bot, until when they are left alone; marks past their time are dropped as new
        # ones come, so only channels refused within the last `unreachable_retry_seconds` are remembered.
        self._unreachable_until: dict[int, float] = {}
        self._closing = False

    # -- the ProgressSink interface --

    def announce(self, job: Job) -> None:
        """Post a new job's "(Waiting to start)" message, unless the job already moved on (it may start before
        the command's answer is even sent; then its progress message is the first one)."""
        if job.id not in self._trackers and job.id not in self._recently_ended:
            self.waiting(job)

    def waiting(self, job: Job, note: str = "") -> None:
        self._set(job, Render(texts.waiting_text(job, note), clear_files=True, view=active_view(job)))

    def running(self, job: Job, step: int, total: int, snapshot_png: bytes | None) -> None:
        spoiler = self.spoiler_for(job.guild_id)
        file = (texts.snapshot_filename(job, spoiler=spoiler), snapshot_png) if snapshot_png else None
        text = texts.progress_text(job, step, total) + texts.models_note(self.models_kind())
        self._set(job, Render(text, file=file, view=active_view(job)))

    def done(self, job: Job, png: bytes) -> None:
        self._set(job, self.result_render(job, png))

    def result_render(self, job: Job, png: bytes, *, posted_in: int | None = None) -> Render:
        """A finished job's image with its card and buttons: its message's last state, and what /show posts.
        `posted_in`: the server it is posted in, whose spoiler setting applies (default: the job's own)."""
        spoiler = self.spoiler_for(job.guild_id if posted_in is None else posted_in)
        name = texts.result_filename(job, spoiler=spoiler)
        return Render(
            texts.done_text(job) + texts.models_note(self.models_kind()),
            # An embed shows its image unblurred, so a spoilered image stays a plain attachment.
            embed=texts.result_embed(job, attachment_name=None if spoiler else name),
            file=(name, png),
            view=result_view(job, self.result_buttons),
            final=True,
            notify_owner_if_unreachable=True,
        )

    def failed(self, job: Job, reason: str) -> None:
        self._set(job, Render(texts.failed_text(job, reason), clear_files=True, final=True))

    def cancelled(self, job: Job) -> None:
        self._set(job, Render(texts.cancelled_text(job), clear_files=True, final=True))

    # -- channels --

    def mark_unreachable(self, channel_id: int) -> None:
        now = time.monotonic()
        for channel, until in list(self._unreachable_until.items()):
            if now >= until:
                del self._unreachable_until[channel]
        self._unreachable_until[channel_id] = now + self.settings.unreachable_retry_seconds

    def is_unreachable(self, channel_id: int) -> bool:
        until = self._unreachable_until.get(channel_id)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self._unreachable_until[channel_id]
            return False
        return True

    # -- lifecycle --

    async def close(self) -> None:
        """Stop every pending change. An ending not shown yet is shown by the next start (see final_shown)."""
        self._closing = True
        tasks = [t.task for t in self._trackers.values() if t.task is not None and not t.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self) -> None:
        """For tests and tools: until every change asked for so far reached Discord (or was dropped)."""
        while True:
            busy = [t.task for t in self._trackers.values() if t.task is not None and not t.task.done()]
            if not busy:
                return
            await asyncio.wait(busy)

    # -- internals --

    def _set(self, job: Job, render: Render) -> None:
        tracker = self._trackers.get(job.id)
        if tracker is None:
            pacer = Pacer(self.settings.edit_interval_seconds)
            if job.progress_message_id is not None:
                # The message may have been changed by the previous process moments ago.
                pacer.stamp()
            tracker = self._trackers[job.id] = _Tracker(job=job, message_id=job.progress_message_id, pacer=pacer)
        if tracker.finalised:
            return
        tracker.job = job
        tracker.pending = render.merged_over(tracker.pending)
        tracker.finalised = render.final
        if render.final:
            self._recently_ended[job.id] = None
            if len(self._recently_ended) > _RECENTLY_ENDED_KEPT:
                self._recently_ended.popitem(last=False)
        if self._closing:
            return
        if tracker.task is None or tracker.task.done():
            tracker.task = asyncio.create_task(self._deliver(tracker), name=f"bigsleep-progress-{job.id}")

    async def _deliver(self, tracker: _Tracker) -> None:
        bind_job(tracker.job.id)  # this task's own context: its lines (discord.py's too) name the job
        try:
            while tracker.pending is not None:
                channel_id = tracker.job.channel_id
                if self.is_unreachable(channel_id):
                    render, tracker.pending = tracker.pending, None
                    if render.final:
                        await self._tell_owner_unreachable(tracker.job, render)
                        await self.store.mark_final_shown(tracker.job.id)
                    break
                # The message's pace first, then the channel's slot (see bot.jobs.pacing).
                async with tracker.pacer, self._channel_budgets.slot(channel_id):
                    render, tracker.pending = tracker.pending, None
                    if render is None:
                        break
                    settled = await self._apply(tracker, render)
                if render.final and settled:
                    await self.store.mark_final_shown(tracker.job.id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: could not update its message", tracker.job.id)
        finally:
            if tracker.finalised and tracker.pending is None:
                self._trackers.pop(tracker.job.id, None)

    async def _apply(self, tracker: _Tracker, render: Render) -> bool:
        """Show the render; False when Discord refused it for a reason that may pass (try again on restart)."""
        job = tracker.job
        channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            if tracker.message_id is not None:
                try:
                    await channel.get_partial_message(tracker.message_id).edit(**render.message_kwargs(editing=True))
                    return True
                except discord.HTTPException as error:
                    if error.code not in (UNKNOWN_MESSAGE, OLD_MESSAGE_EDIT_LIMIT):
                        raise
                    log.info("job %s: its message %s is gone (%s); posting a new one", job.id, tracker.message_id, error.code)
            message = await channel.send(**render.message_kwargs(editing=False))
            tracker.message_id = message.id
            await self.store.set_progress_message(job.id, message.id)
            return True
        except discord.HTTPException as error:
            if isinstance(error, discord.Forbidden) or error.code in (UNKNOWN_CHANNEL, MISSING_ACCESS, MISSING_PERMISSIONS):
                log.info("job %s: channel %s refuses the bot (%s); the job goes on", job.id, job.channel_id, error.code)
                self.mark_unreachable(job.channel_id)
                if render.final:
                    await self._tell_owner_unreachable(job, render)
                return True
            log.warning("job %s: Discord refused a message change: %s", job.id, error)
            return False

    async def _tell_owner_unreachable(self, job: Job, render: Render) -> None:
        if not (render.notify_owner_if_unreachable and self.settings.dm_when_unreachable):
            return
        text = (
            f"Your image `{job.id}` is ready, but I can't post in <#{job.channel_id}>. "
            f"Use `/show job:{job.id}` there (or in any channel) to see it."
        )
        try:
            channel = await self.client.create_dm(discord.Object(job.user_id))
            await channel.send(text, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as error:
            log.info("job %s: could not tell its owner by DM either (%s)", job.id, error.code)
