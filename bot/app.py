"""The bot: a commands.Bot, and the one place where the services of every feature are built and joined.

Start-up (setup_hook, which runs at login, before the gateway connects; nothing here waits for the gateway):
open the database, put jobs a previous process left running back at the front of the queue, rebuild the
FairQueue from the store, build every service (moderation, challenges, progress messages, dispatcher,
admission) with what each needs passed in, hand them to the cogs, register the restart-proof buttons, re-show
every waiting job's message, and start the dispatcher (which starts the worker in the background). No cog
wires another's hooks: what one feature asks of another is a constructor argument here. Shutdown (close) hands
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

from bot.challenges.buttons import ChallengeButton
from bot.challenges.commands import ChallengesCog
from bot.challenges.service import ChallengeService
from bot.challenges.store import ChallengeStore
from bot.database import Database
from bot.health import HealthServer
from bot.jobs.admission import Admission, ServerLimits
from bot.jobs.buttons import JobButton
from bot.jobs.commands import JobsCog
from bot.jobs.dispatcher import Dispatcher, DispatchSettings, settings_from
from bot.jobs.fair_queue import FairQueue
from bot.jobs.files import ResultFiles
from bot.jobs.imagine import ImagineCog
from bot.jobs.ports import GenerationBackend, WorkerPool
from bot.jobs.progress import ProgressMessages
from bot.jobs.services import JobServices
from bot.jobs.store import JobStore
from bot.messages import NO_MENTIONS, reply_privately
from bot.metrics import BotMetrics
from bot.moderation.commands import ModerationCog
from bot.moderation.service import ModerationService
from bot.moderation.store import ModerationStore
from bot.settings import BotSettings
from bot.sharding import IdentifyPacer
from generator.tokens import count_tokens
from generator.wire import AUTO_BATCH_SIZE, WorkerConfig

log = logging.getLogger(__name__)

BackendFactory = Callable[[BotSettings], WorkerPool | GenerationBackend]
SyncTarget = Literal["global"] | int | None


def generation_backend_for(settings: BotSettings) -> WorkerPool:
    """The real workers, as worker.backend says: local processes (one per device of worker.devices), or actors on
    the Ray cluster at cluster.address. Imported here so tests can run without them."""
    config = worker_config_for(settings)
    if settings.worker.backend == "ray":
        from generator.ray_pool import RayPool, RayPoolConfig

        cluster = settings.cluster
        return RayPool(RayPoolConfig(
            address=cluster.address, worker=config, gpus_per_worker=cluster.gpus_per_worker,
            cpus_per_worker=cluster.cpus_per_worker, max_workers=cluster.max_workers, namespace=cluster.namespace,
            connect_timeout_s=cluster.connect_timeout_seconds, silence_timeout_s=cluster.silence_timeout_seconds,
            stop_timeout_s=settings.worker.stop_timeout_seconds,
        ))
    from generator.pool import local_devices, local_pool

    return local_pool(config, local_devices(settings.worker.devices, settings.device), settings.worker.cpu_threads)


def worker_config_for(settings: BotSettings) -> WorkerConfig:
    """Every worker's configuration (the pool gives each its device and name)."""
    return WorkerConfig(
        models_kind=settings.models,
        sizes=tuple(settings.worker.sizes),
        device=settings.device,
        max_batch_size=AUTO_BATCH_SIZE if settings.worker.max_batch_size == "auto" else settings.worker.max_batch_size,
        clip_precision=settings.worker.clip_precision,
        clip_model=settings.worker.clip_model,
        compile=settings.worker.compile,
        hang_timeout_s=settings.worker.hang_timeout_seconds,
        startup_timeout_s=settings.worker.startup_timeout_seconds,
        log_level=settings.log_level,
        # The bot's own formatters, so the generation process's lines are shaped and redacted like the bot's.
        log_formatter="bot.logs:JsonLineFormatter" if settings.log_format == "json" else "bot.logs:TextLineFormatter",
    )


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
    """One gateway connection (discord.py's Bot). With settings.discord.shards "auto" or above 1, constructing a
    BigSleepBot gives a ShardedBigSleepBot instead, so every caller (the entry point, tests, benchmarks) gets
    sharding from the settings alone. A single shard keeps the plain Bot: its connection, reconnects and
    errors stay exactly as they were, where AutoShardedClient handles each of them its own way."""

    def __new__(cls, settings: BotSettings, *args: Any, **kwargs: Any) -> BigSleepBot:
        if cls is BigSleepBot and settings.discord.sharded:
            cls = ShardedBigSleepBot
        return super().__new__(cls)

    # Built in setup_hook. Buttons, which discord.py creates from their custom_id, read the services they need
    # from here (job_services, challenges); the rest is for health checks, metrics and tests.
    database: Database
    store: JobStore
    files: ResultFiles
    dispatcher: Dispatcher
    progress: ProgressMessages
    moderation: ModerationService
    admission: Admission
    job_services: JobServices
    challenges: ChallengeService

    def __init__(
        self,
        settings: BotSettings,
        *,
        backend_factory: BackendFactory = generation_backend_for,
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
        await self._build_services(queue, dispatch_settings)
        self.metrics.attach(self.dispatcher, self)
        self._started_services = True
        if settings.health.enabled:
            # Before the worker starts: a taken port stops the start at once, without loading models first,
            # and /healthz answers (503, "starting") while they load.
            self.health = HealthServer(self, settings.health)
            await self.health.start()
        await self.add_cog(ImagineCog(self.job_services))
        await self.add_cog(JobsCog(self.job_services))
        await self.add_cog(ModerationCog(self, self.moderation, sizes=settings.worker.sizes))
        await self.add_cog(ChallengesCog(self.challenges))
        self.add_dynamic_items(JobButton, ChallengeButton)
        await self.challenges.start()
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

    async def _build_services(self, queue: FairQueue, dispatch_settings: DispatchSettings) -> None:
        """Every feature's services, each given what it needs from the others (as the protocols bot.jobs
        declares): moderation's rules go to admission, the dispatcher's lane gate and the progress messages'
        spoilers; challenges' button goes under results; moderation records what moderators do to jobs."""
        settings = self.settings
        self.moderation = moderation = ModerationService(
            ModerationStore(self.database),
            base_limits=ServerLimits.of_host(
                settings.limits, center_bias=settings.worker.center_bias, save_best=settings.worker.save_best
            ),
            global_banned_words=settings.limits.banned_words,
            queue=queue,
            # The dispatcher is built below; moderation only wakes it once the bot runs.
            wake=lambda: self.dispatcher.wake(),
        )
        await moderation.load()  # applies paused servers to the queue before anything is dispatched
        self.challenges = ChallengeService(
            self,
            ChallengeStore(self.database, clock=self.clock),
            jobs=self.store,
            files=self.files,
            rules=moderation,
            moderator_actions=moderation,
            settings=settings.challenges,
            clock=self.clock,
        )
        self.progress = ProgressMessages(
            self,
            self.store,
            settings.progress,
            spoiler_for=moderation.spoiler_for,
            # The dispatcher is built below; the kind is read as each message is made.
            models_kind=lambda: self.dispatcher.pool_health().models_kind,
            result_buttons=[self.challenges.submit_button_for],
            files=self.files,
        )
        self.dispatcher = Dispatcher(
            store=self.store,
            queue=queue,
            backend=self._backend_factory(settings),
            files=self.files,
            progress=self.progress,
            settings=dispatch_settings,
            recent_durations=await self.store.recent_durations(dispatch_settings.eta_history),
            metrics=self.metrics,
            lane_gate=moderation.may_start,
        )
        self.admission = Admission(
            self.dispatcher, moderation, sizes=settings.worker.sizes, max_cutouts=settings.limits.max_cutouts
        )
        self.job_services = JobServices(
            store=self.store,
            files=self.files,
            dispatcher=self.dispatcher,
            admission=self.admission,
            progress=self.progress,
            moderator_actions=moderation,
            variations=settings.variations,
        )

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
            await self.challenges.stop()
            await self.dispatcher.stop()
            await self.progress.close()
        await super().close()
        if self._started_services and self._closed_services and getattr(self, "database", None) is not None:
            database, self.database = self.database, None  # type: ignore[assignment]
            await database.close()


class ShardedBigSleepBot(BigSleepBot, commands.AutoShardedBot):
    """The bot over several gateway connections (discord.py's AutoShardedBot), one process still. Everything
    else works unchanged: messages go out over REST, which needs no shard, and interactions arrive on whichever
    shard owns their server. The shards IDENTIFY as fast as Discord's max_concurrency allows (bot.sharding)."""

    def __init__(self, settings: BotSettings, **options: Any) -> None:
        # None (shards = "auto"): discord.py asks GET /gateway/bot how many Discord recommends.
        options.setdefault("shard_count", settings.discord.shard_count)
        super().__init__(settings, **options)
        self.identify_pacer = IdentifyPacer()
        self._max_concurrency: int | None = None

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        await self.identify_pacer.wait_turn(shard_id or 0, await self._identify_concurrency())

    async def launch_shard(self, gateway: Any, shard_id: int, *, initial: bool = False) -> None:
        # discord.py 2.7 retries a shard that failed to connect every 5 s, and never asks whether the bot was
        # closed meanwhile: a stop while shards were still connecting (waiting for their IDENTIFY turn) would
        # keep the bot from ever stopping. Its retry calls this method again.
        if not self.is_closed():
            await super().launch_shard(gateway, shard_id, initial=initial)

    async def _identify_concurrency(self) -> int:
        """max_concurrency of GET /gateway/bot, asked once; 1 (one IDENTIFY per 5 s, always allowed) when the
        answer does not come."""
        if self._max_concurrency is None:
            try:
                _, _, limits = await self.http.get_bot_gateway()
                self._max_concurrency = max(1, int(limits["max_concurrency"]))
            except (discord.GatewayNotFound, discord.HTTPException, OSError, KeyError, TypeError, ValueError) as error:
                log.warning("cannot read max_concurrency from Discord (%s): shards identify 5 s apart", error)
                return 1
        return self._max_concurrency
