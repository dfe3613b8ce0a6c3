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
import functools
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
from bot.jobs.files import ResultFiles
from bot.jobs.grids import GridBoard, compose, grid_key
from bot.jobs.job import Job
from bot.jobs.pacing import ChannelBudgets, Pacer
from bot.jobs.prompt_images import thumbnail_strip
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
    """What a job's message should look like. `file` (and `thumbnail` beside it) replaces the attachments;
    `clear_files` removes them; neither keeps what the message has."""

    content: str
    embed: discord.Embed | None = None
    file: tuple[str, bytes] | None = None
    clear_files: bool = False
    view: discord.ui.View | None = None
    final: bool = False
    # For a result that cannot be posted: tell the owner by DM.
    notify_owner_if_unreachable: bool = False
    # A result's image prompts, shown as a strip of thumbnails (its attachment name, then the pictures' keys);
    # `thumbnail` holds the strip once ProgressMessages.load_thumbnail made it.
    thumbnail_of: tuple[str, tuple[str, ...]] | None = None
    thumbnail: tuple[str, bytes] | None = None
    # A picture to make off the event loop before it is sent (a grid's, bot.jobs.grids): its name and its maker;
    # `file` once ProgressMessages.load_picture made it.
    picture_of: tuple[str, Callable[[], bytes]] | None = None

    def merged_over(self, older: Render | None) -> Render:
        """This render, keeping the older pending one's picture when this one brings none."""
        if older is not None and self.file is None and self.picture_of is None and not self.clear_files:
            self.file, self.picture_of = older.file, older.picture_of
        return self

    def message_kwargs(self, *, editing: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"content": self.content, "allowed_mentions": NO_MENTIONS, "view": self.view}
        if editing or self.embed is not None:
            kwargs["embed"] = self.embed
        if self.file is not None:
            shown = [self.file, *([self.thumbnail] if self.thumbnail else [])]
            uploads = [discord.File(io.BytesIO(data), filename=name) for name, data in shown]
            if editing:
                kwargs["attachments"] = uploads
            else:
                kwargs["files"] = uploads
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
    `result_buttons` are other features' buttons under finished images (bot.challenges: "Submit to challenge");
    `files` keeps the pictures of image prompts, which results show as a strip of thumbnails (without it, none).
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
        files: ResultFiles | None = None,
    ) -> None:
        self.client = client
        self.files = files
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
        # What each grid's message shows (bot.jobs.grids), until it shows the grid's ending.
        self._grids = GridBoard()

    # -- the ProgressSink interface --

    def announce(self, job: Job) -> None:
        """Post a new job's "(Waiting to start)" message, unless the job already moved on (it may start before
        the command's answer is even sent; then its progress message is the first one)."""
        if grid_key(job) not in self._trackers and grid_key(job) not in self._recently_ended:
            self.waiting(job)

    def waiting(self, job: Job, note: str = "") -> None:
        if job.in_grid:
            self._show_grid(job)
            return
        self._set(job, Render(texts.waiting_text(job, note), clear_files=True, view=active_view(job)))

    def running(self, job: Job, step: int, total: int, snapshot_png: bytes | None) -> None:
        if job.in_grid:
            self._show_grid(job, step=(step, total), picture=snapshot_png)
            return
        spoiler = self.spoiler_for(job.guild_id)
        file = (texts.snapshot_filename(job, spoiler=spoiler), snapshot_png) if snapshot_png else None
        text = texts.progress_text(job, step, total) + texts.models_note(self.models_kind())
        self._set(job, Render(text, file=file, view=active_view(job)))

    def done(self, job: Job, png: bytes) -> None:
        if job.in_grid:
            self._show_grid(job, picture=png)
            return
        self._set(job, self.result_render(job, png))

    def _show_grid(self, job: Job, **change: Any) -> None:
        """One image of a grid changed: the grid's one message shows them all (bot.jobs.grids)."""
        self._set(job, self.grid_render(self._grids, job, posted_in=job.guild_id, **change))

    def grid_render(self, board: GridBoard, job: Job, *, posted_in: int, **change: Any) -> Render:
        """What the grid's message shows after this change to one of its images (see GridBoard.update); also how
        /show posts a finished grid, fed every image of it on a board of its own (then `load_picture`)."""
        shown = board.update(job, spoiler=self.spoiler_for(posted_in), **change)
        render = Render(
            shown.text + texts.models_note(self.models_kind()), embed=shown.embed, view=shown.view,
            final=shown.final, notify_owner_if_unreachable=shown.final, clear_files=shown.picture is None,
        )
        if shown.picture is not None:
            name, slots, tile = shown.picture
            render.picture_of = (name, functools.partial(compose, slots, tile))
        return render

    async def load_picture(self, render: Render) -> None:
        """Make the render's picture, if it is one to make (off the event loop)."""
        if render.picture_of is not None:
            name, make = render.picture_of
            render.file, render.picture_of = (name, await asyncio.to_thread(make)), None

    def result_render(self, job: Job, png: bytes, *, posted_in: int | None = None) -> Render:
        """A finished job's image with its card and buttons: its message's last state, and what /show posts
        (after `load_thumbnail`). `posted_in`: the server it is posted in, whose spoiler setting applies (default:
        the job's own)."""
        spoiler = self.spoiler_for(job.guild_id if posted_in is None else posted_in)
        name = texts.result_filename(job, spoiler=spoiler)
        keys = tuple(image.key for image in job.spec.image_prompts)
        thumbnail_name = texts.pictures_filename(job, spoiler=spoiler) if keys and self.files is not None else None
        return Render(
            texts.done_text(job) + texts.models_note(self.models_kind()),
            # An embed shows its images unblurred, so spoilered ones stay plain attachments.
            embed=texts.result_embed(
                job, attachment_name=None if spoiler else name, thumbnail_name=None if spoiler else thumbnail_name
            ),
            file=(name, png),
            view=result_view(job, self.result_buttons),
            final=True,
            notify_owner_if_unreachable=True,
            thumbnail_of=(thumbnail_name, keys) if thumbnail_name else None,
        )

    async def load_thumbnail(self, render: Render) -> None:
        """Make the strip of the render's image prompts (off the event loop). A picture no longer kept leaves the
        strip out, and the card without it."""
        if render.thumbnail_of is None or render.thumbnail is not None or self.files is None:
            return
        name, keys = render.thumbnail_of
        files = self.files

        def strip() -> bytes:
            return thumbnail_strip([files.read(key) for key in keys])

        try:
            render.thumbnail = (name, await asyncio.to_thread(strip))
        except (OSError, ValueError) as error:
            log.warning("could not show the image prompts of a result: %s", error)
            render.thumbnail_of = None
            if render.embed is not None:
                render.embed.set_thumbnail(url=None)

    def failed(self, job: Job, reason: str) -> None:
        if job.in_grid:
            self._show_grid(job, reason=reason)
            return
        self._set(job, Render(texts.failed_text(job, reason), clear_files=True, final=True))

    def cancelled(self, job: Job) -> None:
        if job.in_grid:
            self._show_grid(job)
            return
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
        # The jobs of a grid share one message, and so one tracker.
        key = grid_key(job)
        tracker = self._trackers.get(key)
        if tracker is None:
            pacer = Pacer(self.settings.edit_interval_seconds)
            if job.progress_message_id is not None:
                # The message may have been changed by the previous process moments ago.
                pacer.stamp()
            tracker = self._trackers[key] = _Tracker(job=job, message_id=job.progress_message_id, pacer=pacer)
        if tracker.finalised:
            return
        tracker.job = job
        tracker.pending = render.merged_over(tracker.pending)
        tracker.finalised = render.final
        if render.final:
            self._recently_ended[key] = None
            if len(self._recently_ended) > _RECENTLY_ENDED_KEPT:
                self._recently_ended.popitem(last=False)
        if self._closing:
            return
        if tracker.task is None or tracker.task.done():
            tracker.task = asyncio.create_task(self._deliver(tracker), name=f"bigsleep-progress-{key}")

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
                    await self.load_picture(render)
                    await self.load_thumbnail(render)
                    settled = await self._apply(tracker, render)
                if render.final and settled:
                    await self.store.mark_final_shown(tracker.job.id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: could not update its message", tracker.job.id)
        finally:
            if tracker.finalised and tracker.pending is None:
                self._trackers.pop(grid_key(tracker.job), None)

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
        what = "grid" if job.in_grid else "image"
        text = (
            f"Your {what} `{grid_key(job)}` is ready, but I can't post in <#{job.channel_id}>. "
            f"Use `/show job:{grid_key(job)}` there (or in any channel) to see it."
        )
        try:
            channel = await self.client.create_dm(discord.Object(job.user_id))
            await channel.send(text, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as error:
            log.info("job %s: could not tell its owner by DM either (%s)", job.id, error.code)
