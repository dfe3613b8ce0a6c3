"""Prompt challenges end to end: the real bot against the fake Discord, the simulated worker, and a challenge clock
the test moves (the bot's `clock`), so deadlines pass without waiting for them."""

from __future__ import annotations

import asyncio
import io
import re
import types

import pytest
from e2e_helpers import imagine, wait_for_result
from fakediscord import FakeDiscord, Permission
from PIL import Image

from bot.challenges.contact_sheet import geometry_for

DAY = 86400.0
ENTRY_NUMBER = re.compile(r"entry #(\d+)")


class MovableClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def people(fake_discord: FakeDiscord, world) -> types.SimpleNamespace:
    guild = world.guilds[0]
    return types.SimpleNamespace(
        alice=world.alice,
        bob=world.bob,
        erin=fake_discord.add_member(guild, "erin"),
        boss=fake_discord.add_member(guild, "boss", permissions=Permission.MANAGE_GUILD),
        channel=world.channel,
        guild=guild,
    )


@pytest.fixture
def start_challenge_bot(bot_runner, make_bot, clock):
    async def start(**overrides):
        bot = make_bot(**overrides)
        bot.clock = clock
        return await bot_runner.start(bot)

    return start


async def answer(interaction) -> str:
    """The text a member finally sees (after a 'thinking' defer, the filled-in message)."""
    response = await interaction.wait_response()
    assert response.ephemeral
    if response.deferred:
        message = await interaction.wait_original(lambda m: not m.loading)
        return message.content
    return response.content or ""


async def finished_job(fake: FakeDiscord, channel, member, prompt: str):
    _, job_id = await imagine(fake, channel, member, prompt)
    return job_id, await wait_for_result(fake, channel, job_id)


async def start_challenge(fake, people, duration: str = "2d", **options) -> str:
    return await answer(await fake.invoke_command(
        people.channel, people.boss, "challenge start", theme="Lighthouses at night", duration=duration, **options
    ))


def entry_message(fake, channel, number: int):
    return next(m for m in fake.messages_in(channel) if m.content.startswith(f"**Entry #{number}**"))


async def submit(fake, people, member, job_id: str) -> str:
    return await answer(await fake.invoke_command(people.channel, member, "challenge submit", job=job_id))


async def vote(fake, member, message) -> str:
    button = next(cid for cid in message.custom_ids() if cid.startswith("bs:vote:"))
    return await answer(await fake.click_button(member, message, button))


def dominant_colour(png: bytes) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(png)).convert("RGB").getpixel((0, 0))


async def test_a_full_challenge_from_start_to_results(fake_discord, people, start_challenge_bot, clock):
    bot = await start_challenge_bot()
    cog = bot.challenges
    alice_job, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse in a storm")
    alice_second, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse in the fog")

    # Only moderators start challenges; the deadline is shown as a Discord timestamp.
    refused = await answer(await fake_discord.invoke_command(
        people.channel, people.bob, "challenge start", theme="mine", duration="1d"))
    assert "Manage Server" in refused
    bad = await start_challenge(fake_discord, people, duration="2 weeks")
    assert "can't read" in bad
    started = await start_challenge(fake_discord, people)
    assert "Challenge #1 is on" in started
    deadline = int(clock() + 2 * DAY)
    announcement = await fake_discord.wait_for_message(people.channel, lambda m: "new challenge" in m.content)
    assert f"<t:{deadline}:F>" in str(announcement.embeds) and "Lighthouses at night" in str(announcement.embeds)

    # Three entries: by command (alice, erin) and by the button under a result made during the challenge (bob).
    autocomplete = await (await fake_discord.autocomplete(
        people.channel, people.alice, "challenge submit", "job", job="")).wait_response()
    assert [choice["value"] for choice in autocomplete.choices] == [alice_second, alice_job]
    assert "entry #1" in await submit(fake_discord, people, people.alice, alice_job)
    bob_job, bob_result = await finished_job(fake_discord, people.channel, people.bob, "a lighthouse keeper's cat")
    assert f"bs:enter:{bob_job}" in bob_result.custom_ids()
    assert "entry #2" in await answer(await fake_discord.click_button(people.bob, bob_result, f"bs:enter:{bob_job}"))
    erin_job, _ = await finished_job(fake_discord, people.channel, people.erin, "a lighthouse made of glass")
    assert "entry #3" in await submit(fake_discord, people, people.erin, erin_job)
    assert "most allowed" in await submit(fake_discord, people, people.alice, alice_second)
    assert "only your own" in await submit(fake_discord, people, people.alice, erin_job)
    entries = {number: entry_message(fake_discord, people.channel, number) for number in (1, 2, 3)}
    assert entries[1].attachments and entries[1].attachments[0].data == bot.files.read((await bot.store.get(alice_job)).png_path)

    # Votes: one per member per entry, none for yourself, counts hidden until the end.
    assert "is in" in await vote(fake_discord, people.bob, entries[1])
    second = await fake_discord.click_button(people.bob, entries[1], next(c for c in entries[1].custom_ids()))
    assert "already voted" in await answer(second)
    assert "own entry" in await vote(fake_discord, people.alice, entries[1])
    for voter, number in [(people.erin, 1), (people.boss, 1), (people.alice, 2), (people.erin, 2), (people.boss, 2),
                          (people.alice, 3)]:
        assert "is in" in await vote(fake_discord, voter, entries[number])
    # Boss changes their mind: the answer to a second press offers to take the vote back.
    again = await fake_discord.click_button(people.boss, entries[2], next(c for c in entries[2].custom_ids()))
    await again.wait_response()
    offer = await again.wait_original()
    taken_back = await fake_discord.click_button(people.boss, offer, next(c for c in offer.custom_ids()))
    assert "took back" in (await taken_back.wait_response()).content
    assert all(button["label"] == "Vote" for m in entries.values() for button in m.buttons())
    shown = (await (await fake_discord.invoke_command(people.channel, people.alice, "challenge show")).wait_response()).embeds[0]
    assert "#3" in shown["description"] and "vote" not in shown["description"] and "hidden" in shown["footer"]["text"]

    # The deadline passes: voting closes, results with the top three and a contact sheet, archived.
    clock.advance(2 * DAY + 1)
    cog.scheduler.wake()
    results = await fake_discord.wait_for_message(people.channel, lambda m: "has ended" in m.content, timeout=15)
    text = str(results.embeds)
    assert "1st" in text and "2nd" in text and "3rd" in text
    assert text.index("#1") < text.index("#2") < text.index("#3")  # 3 votes, 2, 1
    assert set(results.mentioned_user_ids) == {people.alice.id, people.bob.id, people.erin.id}
    sheet = next(a for a in results.attachments if a.filename.endswith(".jpg"))
    assert len(sheet.data) <= fake_discord.attachment_size_limit
    image = Image.open(io.BytesIO(sheet.data))
    geometry = geometry_for(3, image.size)  # raises unless the sheet has exactly the layout of 3 tiles
    expected = [dominant_colour(bot.files.read((await bot.store.get(job)).png_path)) for job in (alice_job, bob_job, erin_job)]
    for index, colour in enumerate(expected):
        left, top, right, bottom = geometry.image_box(index)
        got = image.convert("RGB").getpixel(((left + right) // 2, (top + bottom) // 2))
        assert all(abs(a - b) <= 16 for a, b in zip(got, colour)), (index, got, colour)
    await asyncio.wait_for(cog.scheduler.wait_fired(1), 10)
    challenge = await cog.store.get(1)
    assert challenge.state == "ended" and challenge.results_message_id == results.id

    await fake_discord.wait_for_message_update(entries[1], lambda m: "Voting closed" in m.content and not m.buttons())
    assert "1st place, 3 votes" in entries[1].content
    await fake_discord.wait_for_message_update(entries[3], lambda m: not m.buttons())
    assert bob_result.custom_ids()  # untouched; its Submit button now answers that nothing is running
    closed = await answer(await fake_discord.click_button(people.alice, bob_result, f"bs:enter:{bob_job}"))
    assert "No challenge is taking entries" in closed

    board = await (await fake_discord.invoke_command(people.channel, people.erin, "challenge leaderboard")).wait_response()
    assert f"<@{people.alice.id}>: 1 win" in str(board.embeds)
    listing = await (await fake_discord.invoke_command(people.channel, people.erin, "challenge list")).wait_response()
    assert "ended" in str(listing.embeds) and "3 entries" in str(listing.embeds)

    # The archive keeps its own copies: deleting a job's result later does not break the gallery.
    await bot.store.delete_result(alice_job, bot.files.data_dir)
    archived = await fake_discord.invoke_command(people.channel, people.erin, "challenge show", id=1)
    await archived.wait_response()
    gallery = await archived.wait_original(lambda m: not m.loading)
    again_sheet = Image.open(io.BytesIO(gallery.attachments[0].data))
    box = geometry_for(3, again_sheet.size).image_box(0)
    got = again_sheet.convert("RGB").getpixel(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2))
    assert all(abs(a - b) <= 16 for a, b in zip(got, expected[0]))


async def test_withdrawing_an_entry(fake_discord, people, start_challenge_bot):
    bot = await start_challenge_bot()
    cog = bot.challenges
    job_id, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse")
    other_job, _ = await finished_job(fake_discord, people.channel, people.alice, "another lighthouse")
    await start_challenge(fake_discord, people)
    assert "entry #1" in await submit(fake_discord, people, people.alice, job_id)
    posted = entry_message(fake_discord, people.channel, 1)
    assert "is in" in await vote(fake_discord, people.bob, posted)
    [entry] = await cog.store.entries(1)
    copy = bot.files.absolute(entry.image_path)
    assert copy.is_file()

    assert "no entries" in await answer(await fake_discord.invoke_command(people.channel, people.bob, "challenge withdraw"))
    assert "no entry #1" in await answer(await fake_discord.invoke_command(
        people.channel, people.bob, "challenge withdraw", entry=1))
    withdrawn = await answer(await fake_discord.invoke_command(people.channel, people.alice, "challenge withdraw"))

    assert "Withdrew entry #1" in withdrawn
    await fake_discord.wait_for_message_update(posted, lambda m: m.deleted)
    assert await cog.store.entries(1) == [] and not copy.exists()
    # The slot is free again, and the number is not reused.
    assert "entry #2" in await submit(fake_discord, people, people.alice, other_job)


async def test_a_deadline_that_passes_while_the_bot_is_stopped_fires_on_the_next_start(
    fake_discord, people, bot_runner, make_bot, clock
):
    first = make_bot()
    first.clock = clock
    await bot_runner.start(first)
    alice_job, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse at dawn")
    bob_job, _ = await finished_job(fake_discord, people.channel, people.bob, "a lighthouse at dusk")
    await start_challenge(fake_discord, people, duration="1h")
    await submit(fake_discord, people, people.alice, alice_job)
    await submit(fake_discord, people, people.bob, bob_job)
    await vote(fake_discord, people.bob, entry_message(fake_discord, people.channel, 1))
    await bot_runner.stop(first)

    clock.advance(2 * 3600)
    assert not [m for m in fake_discord.messages_in(people.channel) if "has ended" in m.content]
    second = make_bot()
    second.clock = clock
    bot = await bot_runner.start(second)

    results = await fake_discord.wait_for_message(people.channel, lambda m: "has ended" in m.content, timeout=15)
    assert "1st" in str(results.embeds) and f"<@{people.alice.id}>" in str(results.embeds)
    assert len([m for m in fake_discord.messages_in(people.channel) if "has ended" in m.content]) == 1
    await asyncio.wait_for(bot.challenges.scheduler.wait_fired(1), 10)
    assert (await bot.challenges.store.get(1)).state == "ended"


async def test_an_ending_interrupted_by_a_stop_is_finished_once_on_the_next_start(
    fake_discord, people, bot_runner, make_bot, clock
):
    first = make_bot()
    first.clock = clock
    await bot_runner.start(first)
    job_id, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse")
    await start_challenge(fake_discord, people, duration="1h")
    await submit(fake_discord, people, people.alice, job_id)
    cog = first.challenges
    await cog.store.begin_closing(1)  # as if the bot stopped right after voting closed
    await bot_runner.stop(first)

    second = make_bot()
    second.clock = clock
    await bot_runner.start(second)

    await fake_discord.wait_for_message(people.channel, lambda m: "has ended" in m.content, timeout=15)
    await asyncio.wait_for(second.challenges.scheduler.wait_fired(1), 10)
    assert (await second.challenges.store.get(1)).state == "ended"


async def test_moderators_end_or_cancel_early_and_members_cannot(fake_discord, people, start_challenge_bot):
    bot = await start_challenge_bot()
    cog = bot.challenges
    await start_challenge(fake_discord, people)
    assert "already has a challenge" in await start_challenge(fake_discord, people)
    assert "Manage Server" in await answer(await fake_discord.invoke_command(people.channel, people.alice, "challenge end"))
    assert "Manage Server" in await answer(await fake_discord.invoke_command(people.channel, people.alice, "challenge cancel"))

    assert "cancelled" in await answer(await fake_discord.invoke_command(people.channel, people.boss, "challenge cancel"))
    assert (await cog.store.get(1)).state == "cancelled"
    await fake_discord.wait_for_message(people.channel, lambda m: "was cancelled" in m.content)

    await start_challenge(fake_discord, people, hide_votes=False)
    assert "results will be posted" in await answer(await fake_discord.invoke_command(
        people.channel, people.boss, "challenge end"))
    results = await fake_discord.wait_for_message(people.channel, lambda m: "has ended" in m.content, timeout=15)
    assert "Nobody entered" in str(results.embeds) and results.attachments == []
    await asyncio.wait_for(cog.scheduler.wait_fired(1), 10)
    assert (await cog.store.get(2)).state == "ended"


async def test_visible_counts_show_on_the_vote_button(fake_discord, people, start_challenge_bot):
    await start_challenge_bot()
    job_id, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse")
    await start_challenge(fake_discord, people, hide_votes=False)
    await submit(fake_discord, people, people.alice, job_id)
    posted = entry_message(fake_discord, people.channel, 1)
    assert [b["label"] for b in posted.buttons()] == ["Vote (0)"]

    await vote(fake_discord, people.bob, posted)

    await fake_discord.wait_for_message_update(posted, lambda m: [b["label"] for b in m.buttons()] == ["Vote (1)"])


async def test_vote_buttons_work_after_a_restart(fake_discord, people, bot_runner, make_bot, clock):
    first = make_bot()
    first.clock = clock
    await bot_runner.start(first)
    job_id, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse")
    await start_challenge(fake_discord, people)
    await submit(fake_discord, people, people.alice, job_id)
    await bot_runner.stop(first)

    second = make_bot()
    second.clock = clock
    bot = await bot_runner.start(second)

    assert "is in" in await vote(fake_discord, people.bob, entry_message(fake_discord, people.channel, 1))
    assert (await bot.challenges.store.entries(1))[0].votes == 1



async def test_the_contact_sheet_shrinks_to_the_servers_upload_limit(fake_discord, people, start_challenge_bot, clock):
    bot = await start_challenge_bot()
    jobs = [(await finished_job(fake_discord, people.channel, member, f"a lighthouse by {member.name}"))[0]
            for member in (people.alice, people.bob, people.erin)]
    fake_discord.attachment_size_limit = 5000  # what Discord says in the /challenge start interaction
    await start_challenge(fake_discord, people, duration="1h")
    for member, job_id in zip((people.alice, people.bob, people.erin), jobs):
        assert "is in" in await submit(fake_discord, people, member, job_id)

    clock.advance(3600)
    bot.challenges.scheduler.wake()
    results = await fake_discord.wait_for_message(people.channel, lambda m: "has ended" in m.content, timeout=15)

    sheet = results.attachments[0]
    assert len(sheet.data) <= 5000
    geometry = geometry_for(3, Image.open(io.BytesIO(sheet.data)).size)
    assert geometry.tile_px < 256
    assert "no votes, so no winner" in str(results.embeds)


async def test_a_challenge_channel_the_bot_cannot_post_in_starts_nothing(fake_discord, people, start_challenge_bot):
    bot = await start_challenge_bot()
    closed = fake_discord.add_channel(people.guild, "closed", bot_can_post=False)

    said = await start_challenge(fake_discord, people, channel=closed)

    assert "can't post" in said and "did not start" in said
    cog = bot.challenges
    assert await cog.store.running(people.guild.id) is None and people.guild.id not in cog.running_guilds
    assert "Challenge #" in await start_challenge(fake_discord, people)


async def test_a_theme_with_a_banned_word_is_refused_naming_the_theme_and_starts_nothing(
    fake_discord, people, world, start_challenge_bot
):
    bot = await start_challenge_bot(limits={"banned_words": ("gore",)})
    added = await answer(await fake_discord.invoke_command(people.channel, people.boss, "settings words add", words="kraken"))
    assert "Added 1" in added
    posted_before = len(fake_discord.messages_in(people.channel))

    for theme, word in (("Lighthouses and g0re", "gore"), ("The K.R.A.K.E.N rises", "kraken")):
        said = await answer(await fake_discord.invoke_command(
            people.channel, people.boss, "challenge start", theme=theme, duration="2d"))
        assert said == f"Your challenge theme contains “{word}”, which this server does not allow.", said

    cog = bot.challenges
    assert await cog.store.running(people.guild.id) is None and people.guild.id not in cog.running_guilds
    assert len(fake_discord.messages_in(people.channel)) == posted_before
    # Another server keeps only the host's words.
    other_boss = fake_discord.add_member(world.guilds[1], "other boss", permissions=Permission.MANAGE_GUILD)
    started = await answer(await fake_discord.invoke_command(
        world.channels[1], other_boss, "challenge start", theme="The kraken rises", duration="2d"))
    assert "Challenge #" in started


async def test_only_the_members_own_finished_jobs_of_this_server_can_be_entered(
    fake_discord, people, world, start_challenge_bot
):
    bot = await start_challenge_bot()
    here_job, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse here")
    alice_elsewhere = fake_discord.add_member(world.guilds[1], user=people.alice.user)
    other_server_job, _ = await finished_job(fake_discord, world.channels[1], alice_elsewhere, "a lighthouse there")
    _, failed_job = await imagine(fake_discord, people.channel, people.alice, "a lighthouse __fail__")
    await fake_discord.wait_for_message(people.channel, lambda m: "(Failed" in m.content, timeout=20)
    bob_job, _ = await finished_job(fake_discord, people.channel, people.bob, "bob's lighthouse")
    await start_challenge(fake_discord, people)

    autocomplete = await (await fake_discord.autocomplete(
        people.channel, people.alice, "challenge submit", "job", job="")).wait_response()
    assert [choice["value"] for choice in autocomplete.choices] == [here_job]
    assert "another server" in await submit(fake_discord, people, people.alice, other_server_job)
    assert "no finished image" in await submit(fake_discord, people, people.alice, failed_job)
    assert "only your own" in await submit(fake_discord, people, people.alice, bob_job)
    assert "only your own" in await submit(fake_discord, people, people.alice, "zzzzzzzz")
    assert await bot.challenges.store.entries(1) == []
    assert "entry #1" in await submit(fake_discord, people, people.alice, here_job)


async def test_a_member_blocked_by_moderators_can_neither_enter_nor_vote(fake_discord, people, start_challenge_bot):
    bot = await start_challenge_bot()
    alice_job, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse")
    bob_job, _ = await finished_job(fake_discord, people.channel, people.bob, "bob's lighthouse")
    await start_challenge(fake_discord, people)
    assert "entry #1" in await submit(fake_discord, people, people.alice, alice_job)
    blocked = await fake_discord.invoke_command(
        people.channel, people.boss, "settings block", member=people.bob, reason="spam")
    assert "Blocked" in (await blocked.wait_response()).content

    assert "blocked you" in await submit(fake_discord, people, people.bob, bob_job)
    entry = entry_message(fake_discord, people.channel, 1)
    assert "blocked you" in await vote(fake_discord, people.bob, entry)
    cog = bot.challenges
    assert [e.user_id for e in await cog.store.entries(1)] == [people.alice.id]
    assert (await cog.store.entries(1))[0].votes == 0
    # Others are not affected.
    assert "is in" in await vote(fake_discord, people.erin, entry)


async def test_after_the_deadline_nothing_is_accepted_even_before_the_scheduler_fired(
    fake_discord, people, start_challenge_bot, clock
):
    bot = await start_challenge_bot()
    alice_job, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse")
    await start_challenge(fake_discord, people, duration="1h")
    bob_job, bob_result = await finished_job(fake_discord, people.channel, people.bob, "bob's lighthouse")
    assert "entry #1" in await submit(fake_discord, people, people.alice, alice_job)
    cog = bot.challenges

    clock.advance(3600)  # the deadline, to the second; the scheduler has not been woken

    assert "No challenge is taking entries" in await submit(fake_discord, people, people.bob, bob_job)
    closed = await answer(await fake_discord.click_button(people.bob, bob_result, f"bs:enter:{bob_job}"))
    assert "No challenge is taking entries" in closed
    assert "closed" in await vote(fake_discord, people.bob, entry_message(fake_discord, people.channel, 1))
    withdrawn = await answer(await fake_discord.invoke_command(people.channel, people.alice, "challenge withdraw"))
    assert "closed" in withdrawn
    assert cog.scheduler.fired == 0 and (await cog.store.get(1)).state == "open"
    [entry] = await cog.store.entries(1)
    assert entry.votes == 0


async def test_a_challenge_whose_channel_was_deleted_still_ends_and_is_archived(
    fake_discord, people, start_challenge_bot, clock
):
    bot = await start_challenge_bot()
    arena = fake_discord.add_channel(people.guild, "arena")
    alice_job, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse")
    await start_challenge(fake_discord, people, duration="1h", channel=arena)
    assert "entry #1" in await submit(fake_discord, people, people.alice, alice_job)
    entry = entry_message(fake_discord, arena, 1)
    assert "is in" in await vote(fake_discord, people.bob, entry)
    fake_discord.delete_channel(arena)

    clock.advance(3600)
    cog = bot.challenges
    cog.scheduler.wake()
    await asyncio.wait_for(cog.scheduler.wait_fired(1), 10)

    ended = await cog.store.get(1)
    assert ended.state == "ended" and ended.results_message_id is None
    assert [(e.place, e.final_votes) for e in await cog.store.entries(1)] == [(1, 1)]
    board = await (await fake_discord.invoke_command(people.channel, people.erin, "challenge leaderboard")).wait_response()
    assert f"<@{people.alice.id}>: 1 win" in str(board.embeds)
    # A new challenge can start (in a channel that exists).
    assert "Challenge #2 is on" in await start_challenge(fake_discord, people)


async def test_themes_cannot_ping_or_format_and_results_ping_only_the_winners(
    fake_discord, people, start_challenge_bot, clock
):
    bot = await start_challenge_bot()
    role = fake_discord.add_role(people.guild, "artists")
    alice_job, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse @everyone")
    theme = f"@everyone **loud** <@&{role.id}> <@{people.bob.id}> " + "very long theme " * 20
    started = await answer(await fake_discord.invoke_command(
        people.channel, people.boss, "challenge start", theme=theme[:200], duration="1h"))
    assert "Challenge #1 is on" in started
    announcement = await fake_discord.wait_for_message(people.channel, lambda m: "new challenge" in m.content)
    assert not announcement.mention_everyone and not announcement.mentioned_user_ids
    assert "\\*\\*loud\\*\\*" in announcement.content
    assert len(announcement.embeds[0]["title"]) <= 256
    assert "<t:" in str(announcement.embeds) and ":F>" in str(announcement.embeds) and ":R>" in str(announcement.embeds)
    assert "entry #1" in await submit(fake_discord, people, people.alice, alice_job)
    await vote(fake_discord, people.bob, entry_message(fake_discord, people.channel, 1))

    clock.advance(3600)
    bot.challenges.scheduler.wake()
    results = await fake_discord.wait_for_message(people.channel, lambda m: "has ended" in m.content, timeout=15)

    assert results.mentioned_user_ids == [people.alice.id]
    assert not results.mention_everyone and not results.mentioned_role_ids
    assert results.allowed_mentions.get("parse") == [] and [int(u) for u in results.allowed_mentions["users"]] == [people.alice.id]


async def test_a_server_that_spoilers_its_images_gets_spoilered_entries_and_contact_sheets(
    fake_discord, people, start_challenge_bot, clock
):
    bot = await start_challenge_bot()
    await (await fake_discord.invoke_command(people.channel, people.boss, "settings spoiler", enabled=True)).wait_response()
    _, alice_job = await imagine(fake_discord, people.channel, people.alice, "a secret lighthouse")
    await fake_discord.wait_for_message(
        people.channel, lambda m: any(a.filename == f"SPOILER_{alice_job}.png" for a in m.attachments), timeout=20)
    await start_challenge(fake_discord, people, duration="1h")
    assert "entry #1" in await submit(fake_discord, people, people.alice, alice_job)

    posted = entry_message(fake_discord, people.channel, 1)
    assert [a.filename for a in posted.attachments] == ["SPOILER_entry-1.png"]
    assert all("image" not in embed for embed in posted.embeds)  # an embed would show it unblurred
    clock.advance(3600)
    bot.challenges.scheduler.wake()
    results = await fake_discord.wait_for_message(people.channel, lambda m: "has ended" in m.content, timeout=15)
    assert [a.filename for a in results.attachments] == ["SPOILER_contact-sheet.jpg"]
    assert all("image" not in embed for embed in results.embeds)


async def test_results_still_go_out_when_the_upload_limit_fell_during_the_challenge(
    fake_discord, people, start_challenge_bot, clock
):
    bot = await start_challenge_bot()
    alice_job, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse")
    await start_challenge(fake_discord, people, duration="1h")
    assert "entry #1" in await submit(fake_discord, people, people.alice, alice_job)
    fake_discord.attachment_size_limit = 2000  # the server lost its boosts: even a tiny sheet is too big now

    clock.advance(3600)
    cog = bot.challenges
    cog.scheduler.wake()
    await asyncio.wait_for(cog.scheduler.wait_fired(1), 10)

    results = fake_discord.message((await cog.store.get(1)).results_message_id)
    assert "has ended" in results.content and results.attachments == []
    assert "/challenge show" in str(results.embeds)


async def test_a_moderator_takes_out_someones_entry_and_it_is_audited(fake_discord, people, world, start_challenge_bot):
    bot = await start_challenge_bot()
    alice_job, _ = await finished_job(fake_discord, people.channel, people.alice, "a rule-breaking lighthouse")
    await start_challenge(fake_discord, people)
    assert "entry #1" in await submit(fake_discord, people, people.alice, alice_job)
    posted = entry_message(fake_discord, people.channel, 1)

    # world.mod has Manage Messages, as for deleting anyone's image.
    said = await answer(await fake_discord.invoke_command(people.channel, world.mod, "challenge withdraw", entry=1))

    assert "Withdrew entry #1" in said
    await fake_discord.wait_for_message_update(posted, lambda m: m.deleted)
    [action] = await bot.moderation.store.actions(people.guild.id, action="challenge")
    assert (action.action, action.moderator_id) == ("challenge.withdraw", world.mod.id)
    assert f"{people.alice.id}" in action.target


async def test_a_count_shown_late_never_brings_the_vote_button_back(fake_discord, people, start_challenge_bot, clock):
    bot = await start_challenge_bot()
    job_id, _ = await finished_job(fake_discord, people.channel, people.alice, "a lighthouse")
    await start_challenge(fake_discord, people, hide_votes=False, duration="1h")
    await submit(fake_discord, people, people.alice, job_id)
    posted = entry_message(fake_discord, people.channel, 1)
    cog = bot.challenges
    # What a vote's follow-up holds if it was pressed just before the deadline: the challenge as it was then.
    stale_challenge = await cog.store.get(1)
    (stale_entry,) = await cog.store.entries(1)

    clock.advance(3600)
    cog.scheduler.wake()
    await fake_discord.wait_for_message(people.channel, lambda m: "has ended" in m.content, timeout=15)
    await fake_discord.wait_for_message_update(posted, lambda m: not m.buttons())
    edits = posted.edit_count

    await cog.show_count(stale_challenge, stale_entry)

    assert posted.buttons() == [] and posted.edit_count == edits
