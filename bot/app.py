"""The bot: a commands.Bot that owns the job store, the fair queue, the worker client and the progress messages.

Start-up (setup_hook, which runs at login, before the gateway connects; nothing here waits for the gateway):
open the store, put jobs a previous process left running back at the front of the queue, rebuild the
FairQueue from the store, start the dispatcher (which starts the worker in the background), register the
commands and the restart-proof buttons, and re-show every waiting job's message. Shutdown (close) hands
running jobs back to the queue before the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.challenges.commands import ChallengesCog
from bot.database import Database
from bot.health import HealthServer
from bot.jobs.buttons import JobButton
from bot.jobs.commands import JobsCog
from bot.jobs.dispatcher import Dispatcher, GenerationBackend, settings_from
from bot.jobs.fair_queue import FairQueue
from bot.jobs.files import ResultFiles
from bot.jobs.imagine import ImagineCog
from bot.jobs.progress import ProgressMessages
from bot.jobs.store import JobStore
from bot.messages import NO_MENTIONS, reply_privately
from bot.metrics import BotMetrics
from bot.moderation.commands import ModerationCog
from bot.moderation.service import ModerationService
from bot.settings import BotSettings
from generator.tokens import count_tokens

log = logging.getLogger(__name__)

BackendFactory = Callable[[BotSettings], GenerationBackend]
SyncTarget = Literal["global"] | int | None


def generation_client_for(settings: BotSettings) -> GenerationBackend:
    """The real worker client (one generation process). Imported here so tests can run without it."""
    from generator.client import GenerationClient
    from generator.wire import WorkerConfig

    config = WorkerConfig(
        models_kind=settings.models,
        sizes=tuple(settings.worker.sizes),
        device=settings.device,
        max_batch_size=settings.worker.max_batch_size,
        clip_precision=settings.worker.clip_precision,
        hang_timeout_s=settings.worker.hang_timeout_seconds,
        startup_timeout_s=settings.worker.startup_timeout_seconds,
        log_level=settings.log_level,
        # The bot's own formatters, so the generation process's lines are shaped and redacted like the bot's.
        log_formatter="bot.logs:JsonLineFormatter" if settings.log_format == "json" else "bot.logs:TextLineFormatter",
    )
    return GenerationClient(config)


class BigSleepTree(app_commands.CommandTree):
    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        if isinstance(error, app_commands.NoPrivateMessage):
            text = "This command works in servers only."
        elif isinstance(error, app_commands.MissingPermissions):
            needed = ", ".join(name.replace("_", " ").replace("guild", "server").title() for name in error.missing_permissions)
            text = f"This command is for moderators: it needs the {needed} permission."
        elif isinstance(error, app_commands.CheckFailure):
            text = "You can't use this command here."
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            log.error("/%s failed", command, exc_info=error)
            text = "Something went wrong on my side; please try again in a moment."
        try:
            await reply_privately(interaction, text)
        except discord.HTTPException:
            pass


class BigSleepBot(commands.Bot):
    database: Database
    store: JobStore
    files: ResultFiles
    dispatcher: Dispatcher
    progress: ProgressMessages
    moderation: ModerationService

    def __init__(
        self,
        settings: BotSettings,
        *,
        backend_factory: BackendFactory = generation_client_for,
        sync: SyncTarget = None,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        # The bot never joins voice; discord.py would warn at every start that voice libraries are missing.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        # Slash commands and buttons arrive as interactions; the guilds intent is all the cache needs.
        intents = discord.Intents.none()
        intents.guilds = True
        options.setdefault("allowed_mentions", NO_MENTIONS)
        metrics = BotMetrics()
        # Counts Discord's error answers (and 429s) on discord.py's own HTTP session.
        options.setdefault("http_trace", metrics.discord_trace())
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            tree_cls=BigSleepTree,
            **options,
        )
        self.settings = settings
        self.metrics = metrics
        self.health: HealthServer | None = None
        self._backend_factory = backend_factory
        self._sync = sync
        # Wall-clock time for challenge deadlines; tests pass one they can move.
        self.clock = clock
        self._started_services = False
        self._closed_services = False

    async def setup_hook(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.files = ResultFiles(settings.data_dir)
        self.database = await Database.open(settings.database_path)
        self.store = JobStore(self.database)
        recovered = await self.store.recover_after_restart(max_attempts=settings.worker.max_attempts)
        queued = await self.store.list_queued()
        dispatch_settings = settings_from(settings)
        queue = FairQueue.rebuild(queued, dispatch_settings.caps)
        self.progress = ProgressMessages(self, self.store, settings.progress)
        self.dispatcher = Dispatcher(
            store=self.store,
            queue=queue,
            backend=self._backend_factory(settings),
            files=self.files,
            progress=self.progress,
            settings=dispatch_settings,
            recent_durations=await self.store.recent_durations(dispatch_settings.eta_history),
            metrics=self.metrics,
        )
        self.metrics.attach(self.dispatcher, self)
        self._started_services = True
        if settings.health.enabled:
            # Before the worker starts: a taken port stops the start at once, without loading models first,
            # and /healthz answers (503, "starting") while they load.
            self.health = HealthServer(self, settings.health)
            await self.health.start()
        await self.add_cog(ImagineCog(self))
        await self.add_cog(JobsCog(self))
        await self.add_cog(ModerationCog(self))  # sets self.moderation; applies paused servers before dispatch
        await self.add_cog(ChallengesCog(self, clock=self.clock))
        self.add_dynamic_items(JobButton)
        # CLIP's tokenizer takes a moment to load; load it now rather than during someone's first /imagine.
        await asyncio.to_thread(count_tokens, "warm up")

        await self._show_unshown_endings()
        for job in queued:
            if job.attempts > 0:
                # It ran before (handed back at shutdown, or found 'running' after a crash): its message
                # still shows old progress; edit it back (or post a new one if it was deleted).
                self.progress.waiting(job, " again: the bot restarted")
            elif job.progress_message_id is None:
                self.progress.announce(job)
        requeued = sum(1 for job in recovered if job.state == "queued")
        if recovered:
            log.info(
                "%d job(s) were running when the bot last stopped: %d re-queued at the front, %d given up",
                len(recovered), requeued, len(recovered) - requeued,
            )
        log.info("%d job(s) waiting", len(queue))
        self.dispatcher.start()

        if self._sync == "global":
            synced = await self.tree.sync()
            log.info("synced %d global commands (they can take up to an hour to appear)", len(synced))
        elif isinstance(self._sync, int):
            guild = discord.Object(self._sync)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to server %s", len(synced), self._sync)

    async def _show_unshown_endings(self) -> None:
        """Jobs that ended while their message still showed progress (the bot stopped or crashed before the
        last change went out; or given up by recover_after_restart): show how they ended now."""
        for job in await self.store.unshown_finished():
            if job.state == "done":
                try:
                    png = await asyncio.to_thread(self.files.read, job.png_path or "")
                except (FileNotFoundError, IsADirectoryError, ValueError):
                    await self.store.mark_final_shown(job.id)
                    continue
                self.progress.done(job, png)
            elif job.state == "failed":
                self.progress.failed(job, job.error or "The job could not be finished.")
            else:
                self.progress.cancelled(job)

    async def close(self) -> None:
        if self.health is not None:
            health, self.health = self.health, None
            await health.stop()
        if self._started_services and not self._closed_services:
            self._closed_services = True
            await self.dispatcher.stop()
            await self.progress.close()
        await super().close()
        if self._started_services and self._closed_services and getattr(self, "database", None) is not None:
            database, self.database = self.database, None  # type: ignore[assignment]
            await database.close()
