"""The one way in for a job (bot.jobs.admission), without Discord: every rule refuses with its own sentence and
field and queues nothing; what passes is stored and queued with its place, ETA and notes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.jobs.admission import (
    IMAGE_PROMPTS_OFF,
    PICTURE_GONE,
    Admission,
    Admitted,
    HostRules,
    Refusal,
    Requester,
    ServerLimits,
)
from bot.jobs.dispatcher import Dispatcher, DispatchSettings
from bot.jobs.fair_queue import FairQueue, UserCaps
from bot.jobs.files import ResultFiles
from bot.jobs.simulated import SimulatedGenerationClient
from bot.jobs.store import JobStore
from generator.protocol import DreamSpec, ImagePrompt

GUILD, CHANNEL, ALICE = 10, 100, 1
ALICE_HERE = Requester(GUILD, CHANNEL, ALICE, "alice", role_ids=(7,))


class Rules:
    """AdmissionRules with each answer set by the test; it notes which questions were asked."""

    def __init__(self, limits: ServerLimits = ServerLimits(), *, banned: tuple[str, ...] = (),
                 member: str | None = None, quota: str | None = None, allowance: str | None = None,
                 images: bool = True) -> None:
        self.limits, self.banned, self.member, self.quota, self.allowance = limits, banned, member, quota, allowance
        self.images = images
        self.asked: list[str] = []

    def limits_for(self, guild_id: int) -> ServerLimits:
        return self.limits

    def banned_word(self, guild_id: int, text: str) -> str | None:
        self.asked.append(f"words: {text}")
        return next((word for word in self.banned if word in text.split()), None)

    async def member_refusal(self, requester: Requester) -> str | None:
        self.asked.append("member")
        return self.member

    async def quota_refusal(self, requester: Requester, count: int = 1) -> str | None:
        self.asked.append("quota")
        return self.quota

    async def allowance_note(self, requester: Requester) -> str | None:
        return self.allowance

    def image_prompts_allowed(self, guild_id: int) -> bool:
        self.asked.append("images")
        return self.images


@pytest.fixture
def queue() -> FairQueue:
    return FairQueue()


@pytest.fixture
def dispatcher(store: JobStore, queue: FairQueue, tmp_path: Path) -> Dispatcher:
    # Never started: admission only stores and queues.
    return Dispatcher(store=store, queue=queue, backend=SimulatedGenerationClient(), files=ResultFiles(tmp_path),
                      settings=DispatchSettings(caps=UserCaps(queued=2)))


def admission(dispatcher: Dispatcher, rules: object, *, sizes=(128, 256, 512), max_cutouts: int = 64) -> Admission:
    return Admission(dispatcher, rules, sizes=sizes, max_cutouts=max_cutouts)  # type: ignore[arg-type]


async def test_a_job_that_breaks_no_rule_is_stored_and_queued_with_what_its_answer_needs(dispatcher, store, queue):
    way_in = admission(dispatcher, Rules(allowance="You have 4 of 5 left."), max_cutouts=16)

    admitted = await way_in.submit(ALICE_HERE, DreamSpec("a lake", seed=3, cutouts=64), kind="imagine")

    assert isinstance(admitted, Admitted)
    assert (admitted.position, admitted.allowance, admitted.paused) == (1, "You have 4 of 5 left.", False)
    assert admitted.eta_seconds == dispatcher.estimate_wait(1)
    stored = await store.require(admitted.job.id)
    assert (stored.guild_id, stored.channel_id, stored.user_id, stored.user_name) == (GUILD, CHANNEL, ALICE, "alice")
    assert stored.cutouts == 16  # capped by limits.max_cutouts, not refused
    assert admitted.job.id in queue


@pytest.mark.parametrize(
    ("rules", "spec", "sentence", "field"),
    [
        (Rules(banned=("gore",)), DreamSpec("gore at dawn"),
         "Your prompt contains “gore”, which this server does not allow.", "prompt"),
        (Rules(banned=("gore",)), DreamSpec("a calm lake", negative="gore"),
         "Your negative prompt contains “gore”, which this server does not allow.", "negative"),
        (Rules(ServerLimits(max_steps=800)), DreamSpec("a lake", steps=1000),
         "This server allows at most 800 steps per image; this one would take 1,000.", "steps"),
        (Rules(), DreamSpec("a lake", size=512, steps=10),
         "This bot makes images of 128 px, 256 px; pick one of those.", "size"),
        (Rules(ServerLimits(max_size=128, default_size=128)), DreamSpec("a lake", size=256),
         "This server allows images up to 128 pixels; this one is 256.", "size"),
        (Rules(member="The moderators of this server have blocked you from using this bot here."), DreamSpec("a lake"),
         "The moderators of this server have blocked you from using this bot here.", None),
        (Rules(quota="You've used all 1 of your jobs in the last 24 hours on this server."), DreamSpec("a lake"),
         "You've used all 1 of your jobs in the last 24 hours on this server.", None),
    ],
)
async def test_each_rule_refuses_with_its_sentence_and_field_and_queues_nothing(
    dispatcher, store, queue, rules, spec, sentence, field
):
    refused = await admission(dispatcher, rules, sizes=(128, 256)).submit(ALICE_HERE, spec)

    assert refused == Refusal(sentence, field) and str(refused) == sentence
    assert await store.recent_jobs(ALICE) == [] and len(queue) == 0


async def test_the_member_is_asked_first_and_quotas_last(dispatcher):
    blocked = Rules(banned=("gore",), member="Blocked.")
    assert (await admission(dispatcher, blocked).submit(ALICE_HERE, DreamSpec("gore"))).sentence == "Blocked."
    assert blocked.asked == ["member"]

    too_long = Rules(ServerLimits(max_steps=10, default_steps=10), quota="No more today.")
    refused = await admission(dispatcher, too_long).submit(ALICE_HERE, DreamSpec("a lake", negative="fog", steps=20))
    assert refused.field == "steps"
    # Every text field was checked for banned words; the quota was never counted.
    assert too_long.asked == ["member", "words: a lake", "words: fog"]


async def test_the_waiting_cap_refuses_like_any_other_rule(dispatcher, store):
    way_in = admission(dispatcher, HostRules(ServerLimits()))
    for prompt in ("one", "two"):
        assert isinstance(await way_in.submit(ALICE_HERE, DreamSpec(prompt)), Admitted)

    refused = await way_in.submit(ALICE_HERE, DreamSpec("three"))

    assert isinstance(refused, Refusal) and "2 jobs waiting" in refused.sentence and refused.field is None
    assert len(await store.recent_jobs(ALICE)) == 2


async def test_a_paused_server_queues_the_job_and_says_so(dispatcher, queue):
    queue.pause_guild(GUILD)

    admitted = await admission(dispatcher, HostRules(ServerLimits())).submit(ALICE_HERE, DreamSpec("a lake"))

    assert isinstance(admitted, Admitted) and admitted.paused and admitted.job.id in queue


async def test_a_bot_without_server_rules_applies_the_host_limits_only(dispatcher):
    way_in = admission(dispatcher, HostRules(ServerLimits(max_steps=50, default_steps=50)))
    assert way_in.limits_for(GUILD).max_steps == 50
    assert (await way_in.submit(ALICE_HERE, DreamSpec("gore", steps=51))).field == "steps"
    assert isinstance(await way_in.submit(ALICE_HERE, DreamSpec("gore", steps=50)), Admitted)


async def test_two_submissions_in_one_server_cannot_both_take_the_last_allowance(dispatcher, store):
    class OneJobQuota(Rules):
        async def quota_refusal(self, requester: Requester, count: int = 1) -> str | None:
            # Counted from the store, as bot.moderation does: the awaits let another submission run in between.
            return "One job at a time." if await store.active_jobs(requester.user_id) else None

    way_in = admission(dispatcher, OneJobQuota())

    outcomes = await asyncio.gather(*(way_in.submit(ALICE_HERE, DreamSpec(f"lake {n}")) for n in range(3)))

    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["Admitted", "Refusal", "Refusal"]
    assert len(await store.recent_jobs(ALICE)) == 1


# ---- image prompts ---------------------------------------------------------------------------------------------


def with_picture(png: bytes, prompt: str = "a lake") -> DreamSpec:
    return DreamSpec(prompt, image_prompts=(ImagePrompt(ResultFiles.prompt_image_key(png), 1.5),))


async def test_a_server_that_turned_image_prompts_off_refuses_them_before_anything_is_written(dispatcher, store, tmp_path):
    rules = Rules(images=False)
    way_in = admission(dispatcher, rules)

    refused = await way_in.submit(ALICE_HERE, with_picture(b"png"), pictures=[b"png"])

    assert refused == Refusal(IMAGE_PROMPTS_OFF, "image_prompts")
    assert not (tmp_path / "prompts").exists() and await store.recent_jobs(ALICE) == []
    assert await way_in.image_prompt_refusal(ALICE_HERE) == refused  # asked before a download, too
    assert isinstance(await way_in.submit(ALICE_HERE, DreamSpec("words only")), Admitted)


async def test_pictures_are_kept_only_for_a_job_admitted_and_a_later_refusal_keeps_them(dispatcher, store, tmp_path):
    files = dispatcher.files
    key = files.prompt_image_key(b"first")
    assert isinstance(await admission(dispatcher, Rules(quota="No more.")).submit(
        ALICE_HERE, with_picture(b"first"), pictures=[b"first"]), Refusal)
    assert not files.exists(key)  # refused by the quota: never written

    way_in = admission(dispatcher, Rules())
    admitted = await way_in.submit(ALICE_HERE, with_picture(b"first"), pictures=[b"first"])
    assert isinstance(admitted, Admitted) and files.read(key) == b"first"
    assert (await store.require(admitted.job.id)).spec.image_prompts == (ImagePrompt(key, 1.5),)

    # The waiting cap (2) refuses after the rules passed: the picture it wrote goes, the one kept before stays.
    assert isinstance(await way_in.submit(ALICE_HERE, DreamSpec("two")), Admitted)
    full = await way_in.submit(ALICE_HERE, DreamSpec("three", image_prompts=(
        ImagePrompt(key), ImagePrompt(files.prompt_image_key(b"second")))), pictures=[b"first", b"second"])
    assert isinstance(full, Refusal) and "waiting" in full.sentence
    assert files.exists(key) and not files.exists(files.prompt_image_key(b"second"))


async def test_an_image_prompt_whose_picture_is_not_kept_is_refused(dispatcher, store):
    way_in = admission(dispatcher, Rules())

    refused = await way_in.submit(ALICE_HERE, with_picture(b"never written"))

    assert refused == Refusal(PICTURE_GONE, "image_prompts") and await store.recent_jobs(ALICE) == []
    outside = DreamSpec("x", image_prompts=(ImagePrompt("../../etc/passwd"),))
    assert (await way_in.submit(ALICE_HERE, outside)).sentence == PICTURE_GONE
