"""The jobs feature's services in one bundle: built once in `BigSleepBot.setup_hook` and handed to the jobs
cogs. Job buttons, which discord.py creates from their custom_id, read the same bundle from the bot
(`interaction.client.job_services`)."""

from __future__ import annotations

from dataclasses import dataclass

from bot.jobs.admission import Admission
from bot.jobs.dispatcher import Dispatcher
from bot.jobs.files import ResultFiles
from bot.jobs.ports import ModeratorActions
from bot.jobs.progress import ProgressMessages
from bot.jobs.store import JobStore
from bot.settings import VariationSettings


@dataclass(frozen=True)
class JobServices:
    store: JobStore
    files: ResultFiles
    dispatcher: Dispatcher
    # The one way in for a new job (/imagine, Reroll, Variations).
    admission: Admission
    progress: ProgressMessages
    # Where a moderator's cancel or delete of someone else's job is recorded.
    moderator_actions: ModeratorActions
    variations: VariationSettings
