"""One way in for a job. Every entry point (/imagine, Reroll, Variations, and any later one) hands a DreamSpec
and who asks for it, where, to `Admission.submit`, which runs every admission rule once and returns either the
queued job (`Admitted`: with its place, ETA and notes for the answer) or a `Refusal` with its sentence. No
Discord here: the cogs turn options into a spec and the outcome into a reply (bot.jobs.queueing).

The rules, in the order they are asked (the first one broken answers):
1. the server's say over the member and the place: blocked members, the channels /imagine may be used in;
2. banned words, in every text field of the spec (the bot posts them all: the prompt in the job's message,
   the negative prompt under "Avoiding"), through `banned_text_refusal`, the check that every other piece of
   user text the bot posts goes through too (a challenge theme, a block reason);
3. steps and size: a size the worker loads (`worker.sizes`), and steps and size within the host's `limits`
   narrowed by the server's own;
4. the server's quotas (per member, and the server's budget);
5. the member's waiting cap over all servers (the fair queue's, checked as the job is queued).
Cutouts above the host's `limits.max_cutouts` are lowered to it, not refused. A paused server is no refusal:
the job waits, and the answer says so.

A server's rules come from `AdmissionRules`, which bot.moderation's service implements; a bot without them
(tests, tools) passes `HostRules`: the host's limits and nothing else. The dispatcher, the client and the
worker keep only their own defensive checks (DreamSpec.validate, "this worker does not have that size").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

from bot.jobs.dispatcher import Dispatcher, QueueFull
from bot.jobs.job import Job, JobKind
from bot.locks import KeyedLocks
from generator.protocol import ALLOWED_SIZES, MAX_STEPS, QUALITY_PRESETS, DreamSpec

if TYPE_CHECKING:
    from bot.settings import LimitSettings

DEFAULT_MAX_PROMPT_CHARS = 1000
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
    def of_host(cls, limits: LimitSettings) -> ServerLimits:
        """The host's limits, from the settings' `[limits]`."""
        return cls(
            max_steps=limits.max_steps,
            max_size=limits.max_size,
            default_steps=limits.default_steps,
            default_size=limits.default_size,
            max_prompt_chars=limits.max_prompt_chars,
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

    async def quota_refusal(self, requester: Requester) -> str | None:
        """Why one more job would break the server's quotas, or None."""
        ...

    async def allowance_note(self, requester: Requester) -> str | None:
        """After a job was queued: what is left of the member's quota, as one sentence, or None."""
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

    async def quota_refusal(self, requester: Requester) -> str | None:
        return None

    async def allowance_note(self, requester: Requester) -> str | None:
        return None


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
    ) -> Admitted | Refusal:
        """Queue the job if every rule lets it; otherwise say which refused and why."""
        async with self._locks(requester.guild_id):
            refusal = await self._refusal(requester, spec)
            if refusal is not None:
                return refusal
            try:
                job = await self.dispatcher.enqueue(
                    guild_id=requester.guild_id,
                    channel_id=requester.channel_id,
                    user_id=requester.user_id,
                    user_name=requester.user_name,
                    spec=spec.with_changes(cutouts=min(spec.cutouts, self.max_cutouts)),
                    kind=kind,
                    parent_job_id=parent_job_id,
                    init_latents_path=init_latents_path,
                )
            except QueueFull as full:
                return Refusal(str(full))
        position = self.dispatcher.position(job.id)
        return Admitted(
            job,
            position,
            self.dispatcher.estimate_wait(position) if position is not None else None,
            allowance=await self.rules.allowance_note(requester),
            paused=self.dispatcher.queue.is_paused(job.guild_id),
        )

    async def posting_refusal(self, requester: Requester, spec: DreamSpec) -> Refusal | None:
        """May this member post a job of this spec where they ask (a new job, or /show of a finished one, whatever
        server it was made in): rules 1 and 2 of the server they ask in. None when they may."""
        member = await self.rules.member_refusal(requester)
        if member:
            return Refusal(member)
        return banned_text_refusal(self.rules, requester.guild_id, _texts(spec))

    async def _refusal(self, requester: Requester, spec: DreamSpec) -> Refusal | None:
        posting = await self.posting_refusal(requester, spec)
        if posting:
            return posting
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
        quota = await self.rules.quota_refusal(requester)
        return Refusal(quota) if quota else None
