"""Moderators against the fake Discord: who sees and may use the moderator commands, quotas that survive a
restart, a paused server, blocks, banned words and channels, moderator actions on jobs and the audit trail."""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import imagine, wait_for_result
from fakediscord import CommandNotVisible, FakeDiscord, Permission

MODERATOR_COMMANDS = {"settings", "modlog", "stats"}


@pytest.fixture
def boss(fake_discord: FakeDiscord, world):
    """A member with Manage Server in the first server."""
    return fake_discord.add_member(world.guilds[0], "boss", permissions=Permission.MANAGE_GUILD)


async def run(fake: FakeDiscord, channel, who, command: str, /, **options):
    interaction = await fake.invoke_command(channel, who, command, options)
    return await interaction.wait_response()


def embed_text(response) -> str:
    parts = []
    for embed in response.embeds:
        parts += [embed.get("title", ""), embed.get("description", "")]
        parts += [f"{field['name']}: {field['value']}" for field in embed.get("fields", [])]
    return "\n".join(parts)


async def test_non_moderators_neither_see_nor_can_use_moderator_commands(fake_discord, world, boss, start_bot):
    bot = await start_bot()
    assert MODERATOR_COMMANDS <= set(fake_discord.visible_commands(boss, world.channel))
    visible = set(fake_discord.visible_commands(world.alice, world.channel))
    assert not MODERATOR_COMMANDS & visible and {"imagine", "quota"} <= visible
    for command in ("settings pause", "modlog", "stats"):
        with pytest.raises(CommandNotVisible):
            await fake_discord.invoke_command(world.channel, world.alice, command)

    # An admin hands /settings to a role in Integrations: Discord now shows it, and the bot still says no.
    helpers = fake_discord.add_role(world.guilds[0], "helpers")
    fake_discord.assign_role(world.alice, helpers)
    fake_discord.set_command_permissions(world.guilds[0], "settings", {helpers: True})
    fake_discord.set_command_permissions(world.guilds[0], "modlog", {world.guilds[0]: True})
    response = await run(fake_discord, world.channel, world.alice, "settings pause")
    assert response.ephemeral and "for moderators" in response.content and "Manage Server" in response.content
    response = await run(fake_discord, world.channel, world.alice, "settings words add", words="cats")
    assert "for moderators" in response.content
    assert "for moderators" in (await run(fake_discord, world.channel, world.alice, "modlog")).content
    assert not bot.moderation.settings(world.guilds[0].id).paused
    assert bot.moderation.banned_words(world.guilds[0].id) == []

    # /quota show is everyone's, but only for their own allowance.
    own = await run(fake_discord, world.channel, world.alice, "quota show")
    assert "Your allowance" in embed_text(own)
    other = await run(fake_discord, world.channel, world.alice, "quota show", member=world.bob)
    assert other.content.startswith("Only moderators (Manage Server) can see another member's allowance")
    theirs = await run(fake_discord, world.channel, boss, "quota show", member=world.bob)
    assert "bob's allowance" in embed_text(theirs)


async def test_quota_limits_apply_across_a_restart(fake_discord, world, boss, bot_runner, make_bot):
    bot = await bot_runner.start(make_bot())
    response = await run(fake_discord, world.channel, boss, "settings quota rules", per_day=2)
    assert "Quota rules updated" in response.content and "jobs per day: 2" in embed_text(response)

    for n, left in enumerate(("1 of 2 left in the last 24 h, oldest one back in 24 h", "0 of 2 left")):
        accepted, job_id = await imagine(fake_discord, world.channel, world.alice, f"allowed {n}")
        assert job_id and f"You have {left}" in accepted.content
    refused, job_id = await imagine(fake_discord, world.channel, world.alice, "one too many")
    assert job_id is None and refused.ephemeral
    assert "used all 2 of your jobs in the last 24 hours" in refused.content and "frees up in 24 h." in refused.content
    # Bob has his own allowance; another server has none of these rules.
    assert (await imagine(fake_discord, world.channel, world.bob, "bob's"))[1]
    assert (await imagine(fake_discord, world.channels[1], world.carol, "carol's"))[1]
    await bot.progress.idle()
    await bot_runner.stop(bot)

    bot = await bot_runner.start(make_bot())
    refused, job_id = await imagine(fake_discord, world.channel, world.alice, "after the restart")
    assert job_id is None and "used all 2 of your jobs" in refused.content
    shown = embed_text(await run(fake_discord, world.channel, world.alice, "quota show"))
    assert "0 of 2 left in the last 24 h, next one back in 24 h" in shown


async def test_a_paused_servers_jobs_wait_while_other_servers_run_even_after_a_restart(
    fake_discord, world, boss, bot_runner, make_bot
):
    bot = await bot_runner.start(make_bot())
    response = await run(fake_discord, world.channel, boss, "settings pause")
    assert "Paused" in response.content
    again = await run(fake_discord, world.channel, boss, "settings pause")
    assert again.content == "This server's queue is already paused."

    answer, paused_job = await imagine(fake_discord, world.channel, world.alice, "waits politely")
    assert "paused its queue" in answer.content
    _, other_job = await imagine(fake_discord, world.channels[1], world.carol, "runs anyway")
    await wait_for_result(fake_discord, world.channels[1], other_job)
    assert (await bot.store.get(paused_job)).state == "queued"
    await bot_runner.stop(bot)

    bot = await bot_runner.start(make_bot())
    _, later_job = await imagine(fake_discord, world.channels[2], world.dave, "also runs")
    await wait_for_result(fake_discord, world.channels[2], later_job)
    assert bot.dispatcher.queue.is_paused(world.guilds[0].id)
    assert (await bot.store.get(paused_job)).state == "queued"
    queue = embed_text(await run(fake_discord, world.channel, boss, "queue"))
    assert "This server's queue (paused)" in queue and paused_job in queue

    assert "Resumed" in (await run(fake_discord, world.channel, boss, "settings resume")).content
    await wait_for_result(fake_discord, world.channel, paused_job)
    again = await run(fake_discord, world.channel, boss, "settings resume")
    assert again.content == "This server's queue is not paused."
    log = embed_text(await run(fake_discord, world.channel, boss, "modlog", action="queue"))
    # The repeated pause and resume changed nothing, so they are not in the trail.
    assert log.count("queue.resume") == 1 and log.count("queue.pause") == 1


async def test_a_blocked_member_gets_a_clear_refusal_everywhere_until_unblocked(fake_discord, world, boss, start_bot):
    bot = await start_bot()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a shared image")
    result = await wait_for_result(fake_discord, world.channel, job_id)

    response = await run(fake_discord, world.channel, boss, "settings block", member=world.bob, reason="spamming")
    assert "Blocked" in response.content
    again = await run(fake_discord, world.channel, boss, "settings block", member=world.bob, reason="spamming")
    assert "already blocked here; nothing changed" in again.content
    refused, blocked_job = await imagine(fake_discord, world.channel, world.bob, "let me in")
    assert blocked_job is None and refused.ephemeral
    assert refused.content == "The moderators of this server have blocked you from using this bot here. Reason: spamming"
    click = await fake_discord.click_button(world.bob, result, f"bs:reroll:{job_id}")
    assert "blocked you" in (await click.wait_response()).content
    # Only in that server: bob elsewhere is not blocked.
    other_guild_bob = fake_discord.add_member(world.guilds[1], user=world.bob.user)
    assert (await imagine(fake_discord, world.channels[1], other_guild_bob, "elsewhere"))[1]

    await run(fake_discord, world.channel, boss, "settings unblock", member=world.bob)
    again = await run(fake_discord, world.channel, boss, "settings unblock", member=world.bob)
    assert again.content == f"<@{world.bob.id}> was not blocked."
    assert (await imagine(fake_discord, world.channel, world.bob, "welcome back"))[1]
    entries = await bot.moderation.store.actions(world.guilds[0].id)
    assert [e.action for e in entries][:2] == ["unblock", "block"]
    assert entries[1].moderator_id == boss.id and entries[1].after == {"reason": "spamming"}


async def test_a_block_reason_with_a_banned_word_is_refused_naming_the_reason_and_blocks_nobody(
    fake_discord, world, boss, start_bot
):
    bot = await start_bot(limits={"banned_words": ("gore",)})
    log_channel = fake_discord.add_channel(world.guilds[0], "mod-log")
    await run(fake_discord, world.channel, boss, "settings log-channel", channel=log_channel)
    assert "Added 1" in (await run(fake_discord, world.channel, boss, "settings words add", words="kraken")).content
    logged_before = len(fake_discord.messages_in(log_channel))

    for reason, word in (("posting g0re", "gore"), ("calls everyone a k r a k e n", "kraken")):
        response = await run(fake_discord, world.channel, boss, "settings block", member=world.bob, reason=reason)
        assert response.ephemeral
        assert response.content == f"Your block reason contains “{word}”, which this server does not allow."

    assert bot.moderation.blocked(world.guilds[0].id, world.bob.id) is None
    assert (await imagine(fake_discord, world.channel, world.bob, "still welcome"))[1]
    assert [e.action for e in await bot.moderation.store.actions(world.guilds[0].id)][0] == "words.add"
    await bot.progress.idle()
    assert len(fake_discord.messages_in(log_channel)) == logged_before
    # A clean reason blocks as before, and is what the member is told.
    assert "Blocked" in (await run(fake_discord, world.channel, boss, "settings block", member=world.bob, reason="spam")).content
    refused, _ = await imagine(fake_discord, world.channel, world.bob, "let me in")
    assert refused.content.endswith("Reason: spam")


async def test_banned_words_channels_limits_and_spoilers_per_server(fake_discord, world, boss, start_bot):
    bot = await start_bot(limits={"banned_words": ("gore",)})
    guild = world.guilds[0]
    other = fake_discord.add_channel(guild, "chat")

    response = await run(fake_discord, world.channel, boss, "settings words add", words="cat, dog*")
    assert "Added 2" in response.content
    for prompt in ("a C.A.T on a mat", "a dogfight", "so much g0re"):
        refused, job_id = await imagine(fake_discord, world.channel, world.alice, prompt)
        assert job_id is None and "does not allow" in refused.content, prompt
    assert (await imagine(fake_discord, world.channel, world.alice, "a scattered catalogue"))[1]
    # Another server keeps only the host's list.
    assert (await imagine(fake_discord, world.channels[1], world.carol, "a cat"))[1]

    await run(fake_discord, world.channel, boss, "settings channels", action="add", channel=world.channel)
    refused, _ = await imagine(fake_discord, other, world.alice, "a bird")
    assert "can't be made in this channel" in refused.content and f"<#{world.channel.id}>" in refused.content

    bad = await run(fake_discord, world.channel, boss, "settings limits", default_steps=50, max_steps=20)
    assert "can't be more than the maximum" in bad.content
    # 512 px is a size the bot knows, but this host's worker loads only 128 and 256.
    bad = await run(fake_discord, world.channel, boss, "settings limits", default_size=512)
    assert bad.content == "This bot makes images of 128 px, 256 px; pick one of those."
    assert bot.moderation.settings(guild.id).default_size is None
    await run(fake_discord, world.channel, boss, "settings limits", max_steps=20)
    refused, _ = await imagine(fake_discord, world.channel, world.alice, "a bird", steps=30)
    assert "at most 20" in refused.content

    await run(fake_discord, world.channel, boss, "settings spoiler", enabled=True)
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a surprise")
    message = await fake_discord.wait_for_message(
        world.channel, lambda m: any(a.filename == f"SPOILER_{job_id}.png" for a in m.attachments), timeout=20
    )
    assert all("image" not in embed for embed in message.embeds)  # an embed would show it unblurred
    settings = embed_text(await run(fake_discord, world.channel, boss, "settings show"))
    assert "Spoiler by default: on" in settings and "at most 20" in settings


async def test_moderators_cancel_anyones_job_and_it_is_audited(fake_discord, world, boss, start_bot, simulated):
    bot = await start_bot(worker={"max_batch_size": 1})
    log_channel = fake_discord.add_channel(world.guilds[0], "mod-log")
    await run(fake_discord, world.channel, boss, "settings log-channel", channel=log_channel)
    simulated.hold()
    _, running = await imagine(fake_discord, world.channel, world.alice, "hogging the gpu")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)
    _, waiting = await imagine(fake_discord, world.channel, world.alice, "waiting its turn")

    queue = embed_text(await run(fake_discord, world.channel, boss, "queue"))
    assert running in queue and waiting in queue and f"<@{world.alice.id}>" in queue
    # Bob, no moderator, sees only his own (none) and can't cancel hers.
    assert "This server's queue" not in embed_text(await run(fake_discord, world.channel, world.bob, "queue"))
    assert "You have no job" in (await run(fake_discord, world.channel, world.bob, "cancel", job=waiting)).content

    assert f"Cancelled `{waiting}`" in (await run(fake_discord, world.channel, boss, "cancel", job=waiting)).content
    message = await fake_discord.wait_for_message(world.channel, lambda m: "hogging" in m.content and m.components)
    click = await fake_discord.click_button(boss, message, f"bs:cancel:{running}")
    assert "Cancelled" in (await click.wait_response()).content
    simulated.release()

    posted = await fake_discord.wait_for_message(log_channel, lambda m: any("job.cancel" in e.get("title", "") for e in m.embeds))
    assert posted.embeds[0]["title"] == "Moderator action: job.cancel"
    log = embed_text(await run(fake_discord, world.channel, boss, "modlog", moderator=boss))
    assert log.count("job.cancel") == 2 and "settings.log_channel" in log
    assert {(await bot.store.get(j)).state for j in (running, waiting)} == {"cancelled"}


async def test_stats_for_moderators(fake_discord, world, boss, start_bot):
    await start_bot()
    ids = []
    for prompt, member in (("one", world.alice), ("two", world.alice), ("__fail__ three", world.bob)):
        ids.append((await imagine(fake_discord, world.channel, member, prompt))[1])
    for job_id in ids[:2]:
        await wait_for_result(fake_discord, world.channel, job_id)
    await fake_discord.wait_for_message(world.channel, lambda m: "(Failed:" in m.content)

    stats = embed_text(await run(fake_discord, world.channel, boss, "stats", days=3))
    assert "Jobs: 3" in stats and "Failure rate: 33.3% (1 of 3)" in stats
    assert f"<@{world.alice.id}> 2" in stats and "Queue wait p95" in stats


async def test_a_moderators_cancel_gives_the_allowance_back_and_other_servers_jobs_are_out_of_reach(
    fake_discord, world, boss, start_bot, simulated
):
    bot = await start_bot(worker={"max_batch_size": 1})
    await run(fake_discord, world.channel, boss, "settings quota rules", per_day=1)
    simulated.hold()
    _, running = await imagine(fake_discord, world.channel, world.alice, "hogging the gpu")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)
    refused, _ = await imagine(fake_discord, world.channel, world.alice, "one more")
    assert "used all 1 of your jobs" in refused.content

    assert f"Cancelled `{running}`" in (await run(fake_discord, world.channel, boss, "cancel", job=running)).content
    # Stopping it was the moderator's call, so it no longer counts against her day.
    accepted, again = await imagine(fake_discord, world.channel, world.alice, "my turn again")
    assert again and "You have 0 of 1 left" in accepted.content

    # Bob also makes images in another server: a moderator here can't touch his job there.
    bob_elsewhere = fake_discord.add_member(world.guilds[1], user=world.bob.user)
    _, elsewhere = await imagine(fake_discord, world.channels[1], bob_elsewhere, "not your server")
    refused = await run(fake_discord, world.channel, boss, "cancel", job=elsewhere)
    assert refused.content == f"You have no job `{elsewhere}`."
    typing = await fake_discord.autocomplete(world.channel, boss, "cancel", "job", job=elsewhere[:4])
    assert elsewhere not in {choice["value"] for choice in (await typing.wait_response()).choices}
    assert (await bot.store.get(elsewhere)).state == "queued"
    simulated.release()

    # Bob reposts his finished image here with /show: its buttons are here, the job is still the other server's.
    await wait_for_result(fake_discord, world.channels[1], elsewhere)
    await fake_discord.invoke_command(world.channel, world.bob, "show", job=elsewhere)
    message = await fake_discord.wait_for_message(world.channel, lambda m: f"bs:delete:{elsewhere}" in str(m.components))
    click = await fake_discord.click_button(boss, message, f"bs:delete:{elsewhere}")
    assert "Only the person who asked for this image" in (await click.wait_response()).content
    assert (await bot.store.get(elsewhere)).png_path is not None
    actions = [entry.action for entry in await bot.moderation.store.actions(world.guilds[1].id)]
    assert actions == []


async def test_an_unpostable_or_deleted_log_channel_does_not_stop_the_action(fake_discord, world, boss, start_bot):
    bot = await start_bot()
    log_channel = fake_discord.add_channel(world.guilds[0], "mod-log")
    await run(fake_discord, world.channel, boss, "settings log-channel", channel=log_channel)

    fake_discord.set_bot_can_post(log_channel, False)
    checkpoint = fake_discord.checkpoint()
    assert "Paused" in (await run(fake_discord, world.channel, boss, "settings pause")).content
    await fake_discord.wait_for_request("POST", f"/channels/{log_channel.id}/messages", status=403, after=checkpoint)

    fake_discord.delete_channel(log_channel)
    checkpoint = fake_discord.checkpoint()
    assert "Resumed" in (await run(fake_discord, world.channel, boss, "settings resume")).content
    await fake_discord.wait_for_request("POST", f"/channels/{log_channel.id}/messages", status=404, after=checkpoint)

    assert not bot.moderation.settings(world.guilds[0].id).paused
    assert [e.action for e in await bot.moderation.store.actions(world.guilds[0].id)][:2] == ["queue.resume", "queue.pause"]
