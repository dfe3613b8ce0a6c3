"""One way in for a job. Every entry point (/imagine, Reroll, Variations, and any later one) hands a DreamSpec
and who asks for it, where, to `Admission.submit`, which runs every admission rule once and returns either the
queued job (`Admitted`: with its place, ETA and notes for the answer) or a `Refusal` with its sentence. No
Discord here: the cogs turn options into a spec and the outcome into a reply (bot.jobs.queueing).

The rules, in the order they are asked (the first one broken answers):
1. the server's say over the member and the place: blocked members, the channels /imagine may be used in;
2. banned words, in every text field of the spec (the bot posts them all: the prompt in the job's message,
   the negative prompt under "Avoiding"), through `banned_text_refusal`, the check that every other piece of
   user text the bot posts goes through too (a challenge theme, a block reason); and image prompts, which are
   user content too (their thumbnails are posted with the result): a server may turn them off;
3. every image prompt's picture is kept by the bot (given with this job, or kept for an earlier one);
4. steps and size: a size the worker loads (`worker.sizes`), and steps and size within the host's `limits`
   narrowed by the server's own;
5. the server's quotas (per member, and the server's budget);
6. the member's waiting cap over all servers (the fair queue's, checked as the job is queued).
A grid (`count` 2 to 4, bot.jobs.grids) is `count` jobs with seeds seed, seed+1, ...: the rules are asked once for
all of them, quotas and the waiting cap count each, and either all are queued or none.
Cutouts above the host's `limits.max_cutouts` are lowered to it, not refused. A paused server is no refusal:
the job waits, and the answer says so. The pictures given with a job (fetched and checked by bot.jobs.uploads)
are written under the data dir only once every rule passed, right before the job is stored, and removed again
if it is not: a refusal leaves nothing behind.

A server's rules come from `AdmissionRules`, which bot.moderation's service implements; a bot without them
(tests, tools) passes `HostRules`: the host's limits and nothing else. The dispatcher, the client and the
worker keep only their own defensive checks (DreamSpec.validate, "this worker does not have that size").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

from bot.jobs.dispatcher import Dispatcher, QueueFull
from bot.jobs.job import Job, JobKind
from bot.locks import KeyedLocks
from generator.protocol import ALLOWED_SIZES, MAX_STEPS, QUALITY_PRESETS, DreamSpec

if TYPE_CHECKING:
    from bot.settings import LimitSettings

DEFAULT_MAX_PROMPT_CHARS = 1000
# The most images one /imagine makes at once (a 2x2 grid).
MAX_GRID_COUNT = 4
IMAGE_PROMPTS_OFF = "This server's moderators have turned image prompts off; describe what you want in words instead."
PICTURE_GONE = "A picture this job steers by is no longer kept by the bot; attach it again with /imagine."
# How a refusal names a text field; any other field is called by its name.
_FIELD_NAMES = {"negative": "negative prompt", "theme": "challenge theme", "reason": "block reason"}


@dataclass(frozen=True)
class ServerLimits:
    """What a server allows: the host's limits (`limits` in the settings), narrowed by the server's own."""

    max_steps: int = 1000
    max_size: int = 512
    default_steps: int = QUALITY_PRESETS["normal"]["steps"]
    default_size: int = 256
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    # Each `|`-separated piece is one more CLIP target; a handful is what anyone means.
    max_prompt_parts: int = 8
    # The host's choice of BigSleep's options for every job (worker.center_bias, worker.save_best); a job's spec
    # records them, so a Reroll repeats what ran even after the host changes them.
    center_bias: bool = False
    save_best: bool = False

    def __post_init__(self) -> None:
        # Misconfiguration is the operator's bug, not the user's: ValueError, not SpecError.
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps must be between 1 and {MAX_STEPS}")
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError("default_steps must be between 1 and max_steps")
        if self.max_size not in ALLOWED_SIZES or self.default_size not in ALLOWED_SIZES:
            raise ValueError(f"sizes must be among {ALLOWED_SIZES}")
        if self.default_size > self.max_size:
            raise ValueError("default_size must not exceed max_size")
        if self.max_prompt_chars < 1 or self.max_prompt_parts < 1:
            raise ValueError("max_prompt_chars and max_prompt_parts must be positive")

    @classmethod
    def of_host(cls, limits: LimitSettings, *, center_bias: bool = False, save_best: bool = False) -> ServerLimits:
        """The host's limits, from the settings' `[limits]`, and its choice of BigSleep's options."""
        return cls(
            max_steps=limits.max_steps,
            max_size=limits.max_size,
            default_steps=limits.default_steps,
            default_size=limits.default_size,
            max_prompt_chars=limits.max_prompt_chars,
            center_bias=center_bias,
            save_best=save_best,
        )


@dataclass(frozen=True)
class Requester:
    """Who asks for a job, and where: a member of a server, in one of its channels, with these roles."""

    guild_id: int
    channel_id: int
    user_id: int
    user_name: str = ""
    role_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """Why nothing was queued: one sentence for the member (it may quote their text: send it without mentions),
    and the spec field it is about when it is about one ("prompt", "negative", "steps", "size")."""

    sentence: str
    field: str | None = None

    def __str__(self) -> str:
        return self.sentence


@dataclass(frozen=True)
class Admitted:
    """A queued job, with what its answer needs."""

    job: Job
    position: int | None
    eta_seconds: float | None
    # What is left of the member's quota, as a sentence; None when no quota limits them.
    allowance: str | None = None
    # The server's moderators paused its queue: the job waits until they resume it.
    paused: bool = False
    # A grid's jobs in grid order (`job` is the first); empty for a job made alone.
    grid: tuple[Job, ...] = ()


class BannedWordRules(Protocol):
    """A server's banned words (bot.moderation's service, in the bot)."""

    def banned_word(self, guild_id: int, text: str) -> str | None:
        """The banned word (of the host or the server) the text contains, or None."""
        ...


def banned_text_refusal(rules: BannedWordRules, guild_id: int, texts: Iterable[tuple[str, str]]) -> Refusal | None:
    """The one check of user text that the bot may post (a job's prompts, a challenge theme, a block reason)
    against the server's banned words: a refusal naming the first field, given as (field, text), that holds
    one; None when every text passes."""
    for name, text in texts:
        word = rules.banned_word(guild_id, text)
        if word:
            what = _FIELD_NAMES.get(name, name.replace("_", " "))
            return Refusal(f"Your {what} contains “{word}”, which this server does not allow.", name)
    return None


class AdmissionRules(BannedWordRules, Protocol):
    """A server's own rules for new jobs (bot.moderation's service, in the bot)."""

    def limits_for(self, guild_id: int) -> ServerLimits:
        """The host's limits, narrowed by the server's own."""
        ...

    async def member_refusal(self, requester: Requester) -> str | None:
        """Why this member may not make images here (blocked, or not in this channel), or None."""
        ...

    async def quota_refusal(self, requester: Requester, count: int = 1) -> str | None:
        """Why `count` more jobs (a grid's) would break the server's quotas, or None."""
        ...

    async def allowance_note(self, requester: Requester) -> str | None:
        """After a job was queued: what is left of the member's quota, as one sentence, or None."""
        ...

    def image_prompts_allowed(self, guild_id: int) -> bool:
        """Whether the server lets members steer by pictures (uploads, `like:`, /blend)."""
        ...


class HostRules:
    """AdmissionRules for a bot without per-server rules (tests, tools): the host's limits, nothing else."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits

    def limits_for(self, guild_id: int) -> ServerLimits:
        return self.limits

    def banned_word(self, guild_id: int, text: str) -> str | None:
        return None

    async def member_refusal(self, requester: Requester) -> str | None:
        return None

    async def quota_refusal(self, requester: Requester, count: int = 1) -> str | None:
        return None

    async def allowance_note(self, requester: Requester) -> str | None:
        return None

    def image_prompts_allowed(self, guild_id: int) -> bool:
        return True


def size_not_offered(size: int, sizes: Collection[int]) -> str | None:
    """The sentence for a size this bot's worker does not make; None when it makes it."""
    if size in sizes:
        return None
    return f"This bot makes images of {', '.join(f'{s} px' for s in sorted(sizes))}; pick one of those."


def _texts(spec: DreamSpec) -> list[tuple[str, str]]:
    """Every text field of the spec that holds text, as (field name, text): a new one is checked without a word here."""
    return [(f.name, value) for f in fields(spec) if isinstance(value := getattr(spec, f.name), str) and value]


class Admission:
    """Runs the admission rules and queues what passes; see the module docstring."""

    def __init__(self, dispatcher: Dispatcher, rules: AdmissionRules, *, sizes: Collection[int], max_cutouts: int) -> None:
        self.dispatcher = dispatcher
        self.rules = rules
        self.sizes = tuple(sizes)
        self.max_cutouts = max_cutouts
        # One admission at a time per server: check and enqueue together, so two commands cannot both take the
        # last job of a quota.
        self._locks = KeyedLocks()
        # One admission at a time per picture: one that was refused removes the file it wrote, never one that a
        # job admitted meanwhile (from another server) uses.
        self._picture_locks = KeyedLocks()

    def limits_for(self, guild_id: int) -> ServerLimits:
        """The limits that hold in a server (its defaults fill the options a member leaves out)."""
        return self.rules.limits_for(guild_id)

    async def submit(
        self,
        requester: Requester,
        spec: DreamSpec,
        *,
        kind: JobKind = "imagine",
        parent_job_id: str | None = None,
        init_latents_path: str | None = None,
        pictures: Sequence[bytes] = (),
        count: int = 1,
    ) -> Admitted | Refusal:
        """Queue the job (`count` of them, a grid, with seeds spec.seed, spec.seed+1, ...) if every rule lets it;
        otherwise say which refused and why. `pictures` are the PNGs of image prompts new with this job
        (bot.jobs.uploads made them; the spec names each by `ResultFiles.prompt_image_key`); an image prompt not
        among them must be kept already."""
        if not 1 <= count <= MAX_GRID_COUNT:
            return Refusal(f"A grid has 1 to {MAX_GRID_COUNT} images, not {count}.", "count")
        async with self._locks(requester.guild_id):
            refusal = await self._refusal(requester, spec, pictures, count)
            if refusal is not None:
                return refusal
            spec = spec.with_changes(cutouts=min(spec.cutouts, self.max_cutouts))
            try:
                async with self._pictures_kept(pictures):
                    jobs = await self.dispatcher.enqueue_many(
                        guild_id=requester.guild_id,
                        channel_id=requester.channel_id,
                        user_id=requester.user_id,
                        user_name=requester.user_name,
                        specs=[spec.with_changes(seed=spec.seed + index) for index in range(count)],
                        kind=kind,
                        parent_job_id=parent_job_id,
                        init_latents_path=init_latents_path,
                    )
            except QueueFull as full:
                return Refusal(str(full))
        job = jobs[0]
        position = self.dispatcher.position(job.id)
        return Admitted(
            job,
            position,
            self.dispatcher.estimate_wait(position) if position is not None else None,
            allowance=await self.rules.allowance_note(requester),
            paused=self.dispatcher.queue.is_paused(job.guild_id),
            grid=tuple(jobs) if count > 1 else (),
        )

    async def posting_refusal(self, requester: Requester, spec: DreamSpec) -> Refusal | None:
        """May this member post a job of this spec where they ask (a new job, or /show of a finished one, whatever
        server it was made in): rules 1 and 2 of the server they ask in. None when they may."""
        member = await self.rules.member_refusal(requester)
        if member:
            return Refusal(member)
        if spec.image_prompts and not self.rules.image_prompts_allowed(requester.guild_id):
            return Refusal(IMAGE_PROMPTS_OFF, "image_prompts")
        return banned_text_refusal(self.rules, requester.guild_id, _texts(spec))

    async def image_prompt_refusal(self, requester: Requester) -> Refusal | None:
        """May this member steer by pictures here at all (rule 1, and the server's setting)? Asked before a picture
        is fetched, so the upload of someone who would be refused is never downloaded. None when they may."""
        member = await self.rules.member_refusal(requester)
        if member:
            return Refusal(member)
        if not self.rules.image_prompts_allowed(requester.guild_id):
            return Refusal(IMAGE_PROMPTS_OFF, "image_prompts")
        return None

    async def _refusal(
        self, requester: Requester, spec: DreamSpec, pictures: Sequence[bytes], count: int = 1
    ) -> Refusal | None:
        posting = await self.posting_refusal(requester, spec)
        if posting:
            return posting
        if spec.image_prompts and not await asyncio.to_thread(self._pictures_present, spec, pictures):
            return Refusal(PICTURE_GONE, "image_prompts")
        limits = self.rules.limits_for(requester.guild_id)
        if spec.steps > limits.max_steps:
            return Refusal(
                f"This server allows at most {limits.max_steps:,} steps per image; this one would take {spec.steps:,}.",
                "steps",
            )
        not_offered = size_not_offered(spec.size, self.sizes)
        if not_offered:
            return Refusal(not_offered, "size")
        if spec.size > limits.max_size:
            return Refusal(f"This server allows images up to {limits.max_size} pixels; this one is {spec.size}.", "size")
        quota = await self.rules.quota_refusal(requester, count)
        return Refusal(quota) if quota else None

    def _pictures_present(self, spec: DreamSpec, pictures: Sequence[bytes]) -> bool:
        """Every image prompt's picture is given or kept (blocking: file checks)."""
        files = self.dispatcher.files
        given = {files.prompt_image_key(png) for png in pictures}
        try:
            return all(image.key in given or files.exists(image.key) for image in spec.image_prompts)
        except ValueError:  # a key that is no path inside the data dir
            return False

    @contextlib.asynccontextmanager
    async def _pictures_kept(self, pictures: Sequence[bytes]) -> AsyncIterator[None]:
        """The pictures written under the data dir for the block; those it wrote are removed again if it fails."""
        files = self.dispatcher.files
        by_key = {files.prompt_image_key(png): png for png in pictures}
        async with contextlib.AsyncExitStack() as held:
            for key in sorted(by_key):  # in one order, so two admissions never wait for each other's locks
                await held.enter_async_context(self._picture_locks(key))
            written: list[str] = []
            try:
                for png in by_key.values():
                    key, created = await asyncio.to_thread(files.save_prompt_image, png)
                    if created:
                        written.append(key)
                yield
            except BaseException:
                for key in written:
                    await asyncio.to_thread(files.remove, key)
                raise
