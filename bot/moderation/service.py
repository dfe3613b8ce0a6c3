"""What the rest of the bot asks moderation: a server's rules for new jobs (it is the jobs feature's
`AdmissionRules`: limits, banned words, blocks, channels, quotas, whether image prompts are allowed), its running cap for the dispatcher
(`may_start`), its spoiler setting, and every change a moderator makes, each written to the audit trail (it is
the jobs feature's `ModeratorActions`, and what challenges ask: `ChallengeRules`).

Settings, word lists, blocks and overrides are read from the store once at start and kept in memory (changes
go through here, so the copy stays true); usage for quotas is counted from the store at each check. Members'
roles are the exception: the store keeps every member's, memory only those of members with jobs in the queue
and the `roles_kept` most recently seen (see `_forget_idle_roles`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from bot.jobs.admission import Requester, ServerLimits
from bot.jobs.fair_queue import FairQueue
from bot.jobs.job import Job
from bot.jobs.ports import Actor
from bot.moderation.quotas import (
    DAY,
    Override,
    QuotaStatus,
    describe_window,
    effective_limits,
    quota_status,
    refusal,
)
from bot.moderation.store import (
    BlockedMember,
    GuildSettings,
    ModAction,
    ModerationStore,
)
from bot.moderation.wordfilter import BannedWords

log = logging.getLogger(__name__)


ActionListener = Callable[[ModAction], Awaitable[None]]

# Members whose roles stay in memory besides those with jobs in the queue: a recent member's next job needs no
# database write when their roles are unchanged. About 0.4 MB at this size (the README gives the figures).
ROLES_KEPT_IN_MEMORY = 1000


class ModerationService:
    def __init__(
        self,
        store: ModerationStore,
        *,
        base_limits: ServerLimits,
        global_banned_words: Sequence[str] = (),
        queue: FairQueue | None = None,
        wake: Callable[[], None] = lambda: None,
        roles_kept: int = ROLES_KEPT_IN_MEMORY,
    ) -> None:
        self.store = store
        self.base_limits = base_limits
        self.global_banned_words = tuple(global_banned_words)
        self.queue = queue
        self.wake = wake
        self.listeners: list[ActionListener] = []
        self._settings: dict[int, GuildSettings] = {}
        self._overrides: dict[int, list[Override]] = {}
        self._allowed_channels: dict[int, set[int]] = {}
        self._words: dict[int, list[str]] = {}
        self._matchers: dict[int, BannedWords] = {}
        self._blocked: dict[tuple[int, int], BlockedMember] = {}
        # Role ids seen with each member's last job: the dispatcher's running cap needs them, and without the
        # members intent the bot only learns roles from interactions. Kept in the store, so a restart keeps them;
        # in memory (least recently seen first) only for members with jobs in the queue and `roles_kept` others.
        self.roles_kept = roles_kept
        self._roles_seen: OrderedDict[tuple[int, int], tuple[int, ...]] = OrderedDict()

    async def load(self) -> None:
        self._settings = {s.guild_id: s for s in await self.store.all_settings()}
        self._overrides = {}
        for guild_id, override in await self.store.overrides():
            self._overrides.setdefault(guild_id, []).append(override)
        self._allowed_channels = await self.store.allowed_channels()
        self._words = await self.store.banned_words()
        self._matchers = {}
        self._blocked = {(b.guild_id, b.user_id): b for b in await self.store.blocked_members()}
        kept = []
        async for member, roles in self.store.roles_seen():  # the most recently seen first
            if len(kept) < self.roles_kept or self._has_jobs(member):
                kept.append((member, roles))
        self._roles_seen = OrderedDict(reversed(kept))
        if self.queue is not None:
            for settings in self._settings.values():
                if settings.paused:
                    self.queue.pause_guild(settings.guild_id)

    # -- reading --

    def settings(self, guild_id: int) -> GuildSettings:
        return self._settings.get(guild_id) or GuildSettings(guild_id)

    def paused_guilds(self) -> list[int]:
        return [g for g, s in self._settings.items() if s.paused]

    def overrides(self, guild_id: int) -> list[Override]:
        return list(self._overrides.get(guild_id, []))

    def allowed_channels(self, guild_id: int) -> set[int]:
        return set(self._allowed_channels.get(guild_id, set()))

    def banned_words(self, guild_id: int) -> list[str]:
        return list(self._words.get(guild_id, []))

    def blocked(self, guild_id: int, user_id: int) -> BlockedMember | None:
        return self._blocked.get((guild_id, user_id))

    def blocked_members(self, guild_id: int) -> list[BlockedMember]:
        return [b for (g, _), b in self._blocked.items() if g == guild_id]

    def spoiler_for(self, guild_id: int) -> bool:
        return self.settings(guild_id).spoiler_by_default

    def image_prompts_allowed(self, guild_id: int) -> bool:
        return self.settings(guild_id).image_prompts

    def limits_for(self, guild_id: int) -> ServerLimits:
        """The host's limits, narrowed by the server's own (a server can lower them, never raise them)."""
        base, own = self.base_limits, self.settings(guild_id)
        max_steps = min(own.max_steps or base.max_steps, base.max_steps)
        max_size = min(own.max_size or base.max_size, base.max_size)
        return ServerLimits(
            max_steps=max_steps,
            max_size=max_size,
            default_steps=min(own.default_steps or base.default_steps, max_steps),
            default_size=min(own.default_size or base.default_size, max_size),
            max_prompt_chars=base.max_prompt_chars,
            max_prompt_parts=base.max_prompt_parts,
            center_bias=base.center_bias,
            save_best=base.save_best,
        )

    def matcher_for(self, guild_id: int) -> BannedWords:
        """The host's banned words and the server's together, in one matcher."""
        matcher = self._matchers.get(guild_id)
        if matcher is None:
            matcher = self._matchers[guild_id] = BannedWords((*self.global_banned_words, *self._words.get(guild_id, [])))
        return matcher

    # -- quotas and admission --

    async def quota_status(self, guild_id: int, user_id: int, role_ids: Collection[int]) -> QuotaStatus:
        settings = self.settings(guild_id)
        now = self.store.clock()
        server_events = await self.store.usage_events(guild_id, since=now - DAY, now=now)
        return quota_status(
            member_id=user_id,
            role_ids=role_ids,
            rules=settings.rules,
            overrides=self._overrides.get(guild_id, []),
            budget=settings.budget,
            member_events=[e for e in server_events if e.user_id == user_id],
            server_events=server_events,
            now=now,
        )

    def blocked_refusal(self, guild_id: int, user_id: int) -> str | None:
        """The sentence for a member the moderators blocked from the bot in this server; None when not blocked."""
        block = self.blocked(guild_id, user_id)
        if block is None:
            return None
        because = f" Reason: {block.reason}" if block.reason else ""
        return f"The moderators of this server have blocked you from using this bot here.{because}"

    def banned_word(self, guild_id: int, text: str) -> str | None:
        """The banned word (the host's or the server's) the text contains, or None."""
        return self.matcher_for(guild_id).find(text)

    async def member_refusal(self, requester: Requester) -> str | None:
        """Why this member may not make images here (blocked, or not in one of the allowed channels), as a
        sentence for them; None when they may. It also notes the member's roles, for the running cap."""
        guild_id, user_id = requester.guild_id, requester.user_id
        member = (guild_id, user_id)
        roles = tuple(sorted(requester.role_ids))
        if self._roles_seen.get(member) != roles:
            self._roles_seen[member] = roles
            await self.store.remember_roles(guild_id, user_id, roles)
        self._roles_seen.move_to_end(member)
        self._forget_idle_roles()
        blocked = self.blocked_refusal(guild_id, user_id)
        if blocked:
            return blocked
        allowed = self._allowed_channels.get(guild_id)
        if allowed and requester.channel_id not in allowed:
            where = ", ".join(f"<#{c}>" for c in sorted(allowed)[:10])
            return f"Images can't be made in this channel on this server; try {where}."
        return None

    async def quota_refusal(self, requester: Requester, count: int = 1) -> str | None:
        """Why `count` more jobs (a grid's) would break the server's quotas, as a sentence for the member; None when
        they would not."""
        return refusal(await self.quota_status(requester.guild_id, requester.user_id, requester.role_ids), count)

    async def allowance_note(self, requester: Requester) -> str | None:
        """After a job was queued: what is left of the member's tightest job window, as one sentence
        ("You have 3 of 20 left in the last 24 h, oldest one back in 4 h."); None when no window limits them."""
        guild_id, user_id, role_ids = requester.guild_id, requester.user_id, requester.role_ids
        effective = effective_limits(self.settings(guild_id).rules, self._overrides.get(guild_id, []), user_id, role_ids)
        if effective.exempt or (effective.limits.per_day is None and effective.limits.per_hour is None):
            return None
        status = await self.quota_status(guild_id, user_id, role_ids)
        windows = [(usage, what) for usage, what in ((status.hour, "in the last hour"), (status.day, "in the last 24 h"))
                   if usage is not None]
        usage, what = min(windows, key=lambda window: window[0].remaining)
        return f"You have {describe_window(usage, what, status.now)}."

    def may_start(self, guild_id: int, user_id: int) -> bool:
        """The dispatcher's per-server gate: is the member below this server's running cap?"""
        if self.queue is None:
            return True
        settings = self._settings.get(guild_id)
        overrides = self._overrides.get(guild_id)
        if settings is None and not overrides:
            return True
        rules = settings.rules if settings is not None else GuildSettings(guild_id).rules
        effective = effective_limits(rules, overrides or [], user_id, self._roles_seen.get((guild_id, user_id), ()))
        cap = effective.limits.max_running
        if effective.exempt or cap is None:
            return True
        return self.queue.running_in(guild_id, user_id) < cap

    def _has_jobs(self, member: tuple[int, int]) -> bool:
        """Whether the member may have jobs waiting or running (counted over every server: a few more kept)."""
        user_id = member[1]
        return self.queue is not None and (self.queue.queued_count(user_id) + self.queue.running_count(user_id)) > 0

    def _forget_idle_roles(self) -> None:
        """Keep the roles of at most `roles_kept` members in memory, plus those of members with jobs in the queue
        (the running cap reads them); the least recently seen go first, the member just seen never."""
        for _ in range(len(self._roles_seen) - 1):
            if len(self._roles_seen) <= self.roles_kept:
                return
            oldest = next(iter(self._roles_seen))
            if self._has_jobs(oldest):
                self._roles_seen.move_to_end(oldest)
            else:
                del self._roles_seen[oldest]

    # -- changes (each one audited) --

    async def record(self, guild_id: int, actor: Actor, action: str, target: str, before: Any, after: Any) -> ModAction:
        entry = await self.store.record_action(guild_id, actor.id, actor.name, action, target, before, after)
        for listener in list(self.listeners):
            try:
                await listener(entry)
            except Exception:
                log.exception("a listener of moderator actions failed")
        return entry

    async def record_job_action(self, job: Job, actor: Actor, action: str, after: Any) -> ModAction:
        """A moderator acted on someone else's job. A cancelled job is given back to its member's quotas:
        stopping it was the moderator's decision, not the member's use."""
        if action == "cancel":
            await self.store.refund(job.id, actor.id)
        target = f"job {job.id} of {job.user_name or 'someone'} ({job.user_id})"
        return await self.record(job.guild_id, actor, f"job.{action}", target, {"state": job.state}, after)

    async def update_settings(self, guild_id: int, actor: Actor, action: str, **changes: Any) -> ModAction:
        before, after = await self.store.update_settings(guild_id, **changes)
        self._settings[guild_id] = after
        if self.queue is not None and before.paused != after.paused:
            (self.queue.pause_guild if after.paused else self.queue.resume_guild)(guild_id)
        self.wake()
        return await self.record(
            guild_id, actor, action, "server",
            {k: v for k, v in before.as_dict().items() if k in changes},
            {k: v for k, v in after.as_dict().items() if k in changes},
        )

    async def set_override(self, guild_id: int, actor: Actor, *, kind: str, target_id: int, target_name: str,
                           override: Override | None) -> ModAction:
        before = await self.store.set_override(guild_id, override, kind=kind, target_id=target_id)
        kept = [o for o in self._overrides.get(guild_id, []) if not (o.target_kind == kind and o.target_id == target_id)]
        self._overrides[guild_id] = kept + ([override] if override is not None else [])
        self.wake()

        def shown(o: Override | None) -> Any:
            return None if o is None else ({"exempt": True} if o.exempt else dict(o.limits))

        action = "quota.override.remove" if override is None else "quota.override"
        return await self.record(guild_id, actor, action, f"{kind} {target_name} ({target_id})", shown(before), shown(override))

    async def set_channel(self, guild_id: int, actor: Actor, channel_id: int, allowed: bool) -> ModAction | None:
        before = sorted(self.allowed_channels(guild_id))
        if not await self.store.set_channel_allowed(guild_id, channel_id, allowed):
            return None
        channels = self._allowed_channels.setdefault(guild_id, set())
        (channels.add if allowed else channels.discard)(channel_id)
        return await self.record(guild_id, actor, "channels.allow" if allowed else "channels.remove",
                                 f"<#{channel_id}>", before, sorted(channels))

    async def clear_channels(self, guild_id: int, actor: Actor) -> ModAction | None:
        before = sorted(self.allowed_channels(guild_id))
        if not before:
            return None
        await self.store.clear_allowed_channels(guild_id)
        self._allowed_channels.pop(guild_id, None)
        return await self.record(guild_id, actor, "channels.clear", "server", before, [])

    async def change_words(self, guild_id: int, actor: Actor, *, add: Sequence[str] = (), remove: Sequence[str] = ()) -> tuple[list[str], ModAction | None]:
        changed = await self.store.change_banned_words(guild_id, add=add, remove=remove)
        if not changed:
            return [], None
        self._words = await self.store.banned_words()
        self._matchers.pop(guild_id, None)
        action = "words.add" if add else "words.remove"
        # The audit trail keeps the changed words only: the full list may be long, and it is in the store.
        entry = await self.record(guild_id, actor, action, f"{len(changed)} word(s)", None, changed)
        return changed, entry

    async def block(self, guild_id: int, actor: Actor, user_id: int, user_name: str, reason: str) -> ModAction:
        block = BlockedMember(guild_id, user_id, reason, actor.id, self.store.clock())
        before = await self.store.set_blocked(guild_id, user_id, block)
        self._blocked[(guild_id, user_id)] = block
        return await self.record(guild_id, actor, "block", f"{user_name} ({user_id})",
                                 None if before is None else {"reason": before.reason}, {"reason": reason})

    async def unblock(self, guild_id: int, actor: Actor, user_id: int, user_name: str) -> ModAction | None:
        before = await self.store.set_blocked(guild_id, user_id, None)
        self._blocked.pop((guild_id, user_id), None)
        if before is None:
            return None
        return await self.record(guild_id, actor, "unblock", f"{user_name} ({user_id})", {"reason": before.reason}, None)
