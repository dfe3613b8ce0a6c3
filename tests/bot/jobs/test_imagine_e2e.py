"""The real bot against the fake Discord, with the in-process simulated worker (fast and controllable).

The fake enforces Discord's rules (3 s acknowledgement, token expiry, limits, 10008, 429), so a test fails
where real Discord would refuse. The end-to-end runs with the real worker process are in test_real_worker.py.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from e2e_helpers import imagine, result_of, result_png, wait_for_result
from fakediscord import FakeDiscord

from bot.jobs.simulated import SimulatedGenerationClient, colour_for

# ---- /imagine from several servers -------------------------------------------------------------------------


async def test_imagine_acknowledges_at_once_then_waiting_message_then_result(fake_discord: FakeDiscord, world, start_bot):
    bot = await start_bot()

    response, job_id = await imagine(fake_discord, world.channel, world.alice, "a bowl of cherries")

    assert response.kind == "message" and response.ephemeral
    assert "position 1" in response.content and "starting in" in response.content
    first = await fake_discord.wait_for_message(world.channel, lambda m: "cherries" in m.content)
    # "(Waiting to start)", unless the job started before the message went out.
    assert first.versions[0].content.endswith(("(Waiting to start)", "(0%) step 0/8"))
    final = await wait_for_result(fake_discord, world.channel, job_id)
    assert final.id == first.id  # the same bot-owned message, edited to the result
    assert set(final.custom_ids()) == {f"bs:reroll:{job_id}", f"bs:vary:{job_id}", f"bs:delete:{job_id}"}
    await bot.progress.idle()
    job = await bot.store.get(job_id)
    assert job.state == "done" and job.progress_message_id == final.id
    assert bot.files.read(job.png_path) == result_png(final, job_id)
    # Nothing about the job went through the interaction token after the acknowledgement.
    assert fake_discord.requests_matching(path_contains="/webhooks/") == []


async def test_jobs_from_three_servers_run_in_round_robin_order(fake_discord, world, start_bot, simulated):
    await start_bot(worker={"max_batch_size": 1})
    simulated.hold()
    _, first = await imagine(fake_discord, world.channels[0], world.alice, "a1")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)

    submitted = {"a1": first}
    for channel, member, prompt in [
        (world.channels[0], world.alice, "a2"),
        (world.channels[0], world.alice, "a3"),
        (world.channels[0], world.bob, "b1"),
        (world.channels[1], world.carol, "c1"),
        (world.channels[1], world.carol, "c2"),
        (world.channels[2], world.dave, "d1"),
    ]:
        response, job_id = await imagine(fake_discord, channel, member, prompt)
        assert job_id, response.content
        submitted[prompt] = job_id
    simulated.release()

    channel_of = {"a": 0, "b": 0, "c": 1, "d": 2}
    for prompt, job_id in submitted.items():
        await wait_for_result(fake_discord, world.channels[channel_of[prompt[0]]], job_id)
    # Servers take turns, then users within a server: the quiet server's job is not stuck behind the busy one.
    assert [request.spec.prompt for request in simulated.requests] == ["a1", "a2", "c1", "d1", "b1", "c2", "a3"]


async def test_queue_position_and_eta_in_the_acknowledgement(fake_discord, world, start_bot, simulated):
    await start_bot(worker={"max_batch_size": 1})
    simulated.hold()
    await imagine(fake_discord, world.channel, world.alice, "running one")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)

    second, _ = await imagine(fake_discord, world.channel, world.alice, "second")
    third, _ = await imagine(fake_discord, world.channels[1], world.carol, "third")

    assert "position 1" in second.content and "position 2" in third.content
    simulated.release()


async def test_a_slow_database_still_gets_an_answer_within_three_seconds(fake_discord, world, start_bot):
    bot = await start_bot()
    store_jobs = bot.store.create_jobs

    async def slow_create_jobs(**options):
        await asyncio.sleep(2.5)
        return await store_jobs(**options)

    bot.store.create_jobs = slow_create_jobs
    interaction = await fake_discord.invoke_command(world.channel, world.alice, "imagine", prompt="a slow disk")

    response = await interaction.wait_response()
    answer = await interaction.wait_original(lambda m: not m.loading)
    assert response.kind == "deferred_message" and response.ephemeral
    assert "Queued" in answer.content


async def test_a_failed_job_says_why_in_its_message(fake_discord, world, start_bot):
    bot = await start_bot()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a __fail__ on purpose")

    message = await fake_discord.wait_for_message(world.channel, lambda m: "(Failed:" in m.content)

    assert "asked to fail" in message.content and message.attachments == [] and message.components == []
    assert (await bot.store.get(job_id)).state == "failed"


# ---- progress messages -------------------------------------------------------------------------------------


async def test_progress_edits_show_percent_and_snapshots_and_respect_the_interval(fake_discord, world, start_bot, data_dir):
    slow = SimulatedGenerationClient(seconds_per_job=1.6, progress_events=16)
    interval = 0.3
    await start_bot(slow, progress={"edit_interval_seconds": interval})

    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a slow sunrise")
    final = await wait_for_result(fake_discord, world.channel, job_id)

    contents = [version.content for version in final.versions]
    assert any("%) step" in content for content in contents), contents
    assert any(any(a.filename.endswith("-progress.png") for a in v.attachments) for v in final.versions)
    # 16 updates in 1.6 s were merged: never two changes of the message closer than the interval.
    times = [version.at for version in final.versions]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) >= 3 and min(gaps) >= interval * 0.95, gaps
    assert final.edit_count < 16


@pytest.mark.parametrize(
    "edit_interval, window, per_window",
    [
        pytest.param(0.05, 1.0, 3, id="shared-by-every-job"),
        # Each message may change only every 0.4 s, nearly the channel's window: a change that took its channel
        # slot before waiting for its message's pace would go out late, beside the next window's, over the cap.
        pytest.param(0.4, 0.5, 2, id="pace-before-slot"),
    ],
)
async def test_channel_budget_is_shared_by_every_job_in_the_channel(
    fake_discord, world, start_bot, edit_interval, window, per_window
):
    slow = SimulatedGenerationClient(seconds_per_job=2.0, progress_events=40)
    await start_bot(
        slow,
        worker={"max_batch_size": 3},
        progress={"edit_interval_seconds": edit_interval, "channel_edits_per_window": per_window,
                  "channel_window_seconds": window},
    )

    jobs = [(await imagine(fake_discord, world.channel, member, f"budget {n}"))[1]
            for n, member in enumerate([world.alice, world.bob, world.mod])]
    for job_id in jobs:
        await wait_for_result(fake_discord, world.channel, job_id)

    changes = sorted(
        version.at for message in fake_discord.messages_in(world.channel) for version in message.versions
    )
    assert len(changes) > 2 * per_window
    for earlier, later in zip(changes, changes[per_window:]):
        assert later - earlier >= window * 0.95, changes


async def test_deleted_progress_message_gets_a_new_message(fake_discord, world, start_bot, simulated, data_dir):
    bot = await start_bot()
    simulated.hold()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a lighthouse")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)
    progress = await fake_discord.wait_for_message(world.channel, lambda m: "%) step" in m.content)

    fake_discord.delete_message(world.channel, progress)
    simulated.release()
    final = await wait_for_result(fake_discord, world.channel, job_id)

    assert final.id != progress.id
    assert fake_discord.requests_matching("PATCH", f"/messages/{progress.id}", status=404)
    await bot.progress.idle()
    assert (await bot.store.get(job_id)).progress_message_id == final.id


async def test_result_arrives_after_the_interaction_token_expired(fake_discord, world, start_bot, simulated):
    await start_bot()
    simulated.hold()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a long night")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)

    fake_discord.clock.advance(15 * 60 + 1)
    simulated.release()
    final = await wait_for_result(fake_discord, world.channel, job_id)

    assert final.attachments
    assert fake_discord.requests_matching(status=401) == []


async def test_429_with_retry_after_is_waited_out(fake_discord, world, start_bot):
    await start_bot()
    post_rule = fake_discord.rate_limit_next(f"/channels/{world.channel.id}/messages", retry_after=0.2, method="POST")
    edit_rule = fake_discord.rate_limit_next(f"/channels/{world.channel.id}/messages/", retry_after=0.2, method="PATCH")

    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a rate limited river")
    await wait_for_result(fake_discord, world.channel, job_id)

    assert post_rule.hits == 1 and edit_rule.hits == 1
    posts = fake_discord.requests_matching("POST", f"/channels/{world.channel.id}/messages")
    assert [record.status for record in posts[:2]] == [429, 200]
    assert posts[1].monotonic - posts[0].monotonic >= 0.2


async def test_a_channel_the_bot_cannot_post_in_keeps_the_job_for_show(fake_discord, world, start_bot):
    bot = await start_bot()
    closed = fake_discord.add_channel(world.guilds[0], "read-only", bot_can_post=False)

    response, job_id = await imagine(fake_discord, closed, world.alice, "a hidden garden")
    assert "can't post" in response.content and "/show" in response.content

    dm = await fake_discord.wait_for_message(fake_discord.dm_channel(world.alice), lambda m: job_id in m.content, timeout=20)
    assert "/show" in dm.content
    assert (await bot.store.get(job_id)).state == "done"
    assert fake_discord.requests_matching(status=403) == []  # it knew from the interaction; it never tried

    shown = await fake_discord.invoke_command(closed, world.alice, "show", job=job_id)
    message = await shown.wait_original(lambda m: not m.loading)
    assert result_of(job_id)(message) and f"bs:reroll:{job_id}" in message.custom_ids()


async def test_a_channel_deleted_mid_job_does_not_lose_the_job(fake_discord, world, start_bot, simulated):
    bot = await start_bot()
    doomed = fake_discord.add_channel(world.guilds[0], "doomed")
    simulated.hold()
    _, job_id = await imagine(fake_discord, doomed, world.alice, "a vanishing act")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)

    fake_discord.delete_channel(doomed)
    simulated.release()
    await fake_discord.wait_for_message(fake_discord.dm_channel(world.alice), lambda m: job_id in m.content, timeout=20)

    assert (await bot.store.get(job_id)).state == "done"
    shown = await fake_discord.invoke_command(world.channel, world.alice, "show", job=job_id)
    message = await shown.wait_original(lambda m: not m.loading)
    assert result_of(job_id)(message)


# ---- validation and caps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, says",
    [
        ({"prompt": "a " * 90 + "cat"}, "CLIP tokens"),
        ({"prompt": "   "}, "empty"),
        ({"prompt": "a cat", "steps": 2000}, "at most 1,000"),
        ({"prompt": "a gory cat scene with gore"}, "Your prompt contains “gore”, which this server does not allow."),
        # The negative prompt is posted too (under "Avoiding"), so it passes the same check.
        ({"prompt": "a calm lake", "negative": "gore"}, "Your negative prompt contains “gore”, which this server does not allow."),
        ({"prompt": "a cat", "size": 512}, "128 px, 256 px"),
    ],
)
async def test_bad_input_gets_a_friendly_ephemeral_error_and_queues_nothing(fake_discord, world, start_bot, options, says):
    bot = await start_bot(limits={"banned_words": ("gore",)})

    interaction = await fake_discord.invoke_command(world.channel, world.alice, "imagine", **options)
    response = await interaction.wait_response()

    assert response.ephemeral and says in response.content, response.content
    assert await bot.store.recent_jobs(world.alice.id) == []
    assert fake_discord.messages_in(world.channel) == []


async def test_past_the_waiting_cap_the_user_is_told_and_nothing_is_queued(fake_discord, world, start_bot, simulated):
    bot = await start_bot(worker={"max_batch_size": 1}, queue={"max_queued_per_user": 2})
    simulated.hold()
    await imagine(fake_discord, world.channel, world.alice, "one")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)
    await imagine(fake_discord, world.channel, world.alice, "two")
    await imagine(fake_discord, world.channel, world.alice, "three")

    refused, job_id = await imagine(fake_discord, world.channel, world.alice, "four")
    _, other_id = await imagine(fake_discord, world.channel, world.bob, "bob's")

    assert job_id is None and "2 jobs waiting" in refused.content and refused.ephemeral
    assert other_id is not None
    assert len(await bot.store.recent_jobs(world.alice.id)) == 3
    simulated.release()


async def test_prompts_never_ping_anyone(fake_discord, world, start_bot):
    await start_bot()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, f"@everyone and {world.bob.mention} in a field")
    final = await wait_for_result(fake_discord, world.channel, job_id)

    for version in final.versions:
        assert version.allowed_mentions == {"parse": []}
    assert final.mentioned_user_ids == [] and not final.mention_everyone


# ---- buttons -----------------------------------------------------------------------------------------------


async def test_buttons_work_after_a_restart(fake_discord, world, bot_runner, make_bot, simulated, data_dir):
    first_bot = await bot_runner.start(make_bot())
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a fox in snow")
    result = await wait_for_result(fake_discord, world.channel, job_id)
    await bot_runner.stop(first_bot)

    bot = await bot_runner.start(make_bot())

    reroll = await fake_discord.click_button(world.bob, result, f"bs:reroll:{job_id}")
    reroll_ack = await reroll.wait_response()
    reroll_id = reroll_ack.content.split("`")[1]
    rerolled = await wait_for_result(fake_discord, world.channel, reroll_id)
    reroll_job = await bot.store.get(reroll_id)
    original = await bot.store.get(job_id)
    assert (reroll_job.kind, reroll_job.parent_job_id, reroll_job.user_id) == ("reroll", job_id, world.bob.id)
    assert reroll_job.prompt == original.prompt and reroll_job.seed != original.seed
    assert result_png(rerolled, reroll_id) != result_png(result, job_id) or reroll_job.seed != original.seed

    vary = await fake_discord.click_button(world.alice, result, f"bs:vary:{job_id}")
    vary_id = (await vary.wait_response()).content.split("`")[1]
    await wait_for_result(fake_discord, world.channel, vary_id)
    request = next(r for r in simulated.requests if r.job_id == vary_id)
    assert request.spec.init_latents == bot.files.read(original.latents_path)
    assert request.spec.init_noise == pytest.approx(0.3)
    assert request.spec.steps == round(original.steps * 0.4)
    assert "variation of" in str(fake_discord.messages_in(world.channel)[-1].embeds)


async def test_cancel_button_is_for_the_owner_or_a_moderator(fake_discord, world, start_bot, simulated):
    bot = await start_bot()
    simulated.hold()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a long walk")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)
    message = await fake_discord.wait_for_message(world.channel, lambda m: f"bs:cancel:{job_id}" in m.custom_ids())

    refused = await (await fake_discord.click_button(world.bob, message, f"bs:cancel:{job_id}")).wait_response()
    assert refused.ephemeral and "Only the person" in refused.content
    assert (await bot.store.get(job_id)).state == "running"

    done = await (await fake_discord.click_button(world.alice, message, f"bs:cancel:{job_id}")).wait_response()
    assert "Cancelled" in done.content
    await fake_discord.wait_for_message_update(message, lambda m: m.content.endswith("(Cancelled)"))
    assert (await bot.store.get(job_id)).state == "cancelled"
    simulated.release()


async def test_delete_button_removes_message_and_files_for_owner_or_moderator(fake_discord, world, start_bot):
    bot = await start_bot()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a sandcastle")
    result = await wait_for_result(fake_discord, world.channel, job_id)
    png_path = (await bot.store.get(job_id)).png_path

    refused = await (await fake_discord.click_button(world.bob, result, f"bs:delete:{job_id}")).wait_response()
    assert "Only the person" in refused.content and not result.deleted

    await (await fake_discord.click_button(world.mod, result, f"bs:delete:{job_id}")).wait_response()
    await fake_discord.wait_for_message_update(result, lambda m: m.deleted)
    assert not bot.files.exists(png_path)
    assert (await bot.store.get(job_id)).png_path is None


# ---- restarts ----------------------------------------------------------------------------------------------


async def test_a_job_running_when_the_bot_stops_runs_again_after_the_restart(fake_discord, world, bot_runner, make_bot, simulated):
    first_bot = await bot_runner.start(make_bot())
    simulated.hold()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a phoenix")
    _, waiting_id = await imagine(fake_discord, world.channel, world.bob, "waiting behind")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)
    progress = await fake_discord.wait_for_message(world.channel, lambda m: "phoenix" in m.content and "%" in m.content)

    await bot_runner.stop(first_bot)
    assert (await first_bot_store_state(make_bot, job_id)) == "queued"

    fresh = SimulatedGenerationClient(seconds_per_job=0.2)
    bot = await bot_runner.start(make_bot(fresh))
    final = await wait_for_result(fake_discord, world.channel, job_id)
    await wait_for_result(fake_discord, world.channel, waiting_id)

    assert final.id == progress.id  # found again, not re-posted
    assert fresh.requests[0].job_id == job_id  # re-run first
    # A clean stop is not the job's fault: only the run that finished counts, so restarts never use up attempts.
    assert (await bot.store.get(job_id)).attempts == 1


async def first_bot_store_state(make_bot, job_id: str) -> str:
    from bot.database import Database
    from bot.jobs.store import JobStore

    settings = make_bot().settings
    async with Database.open(settings.database_path) as database:
        return (await JobStore(database).require(job_id)).state


class _WorkerThatNeverAnswersStop(SimulatedGenerationClient):
    """As if the process died: stop() hands nothing back, so the store still says 'running'."""

    async def stop(self, timeout: float = 10.0) -> None:
        return None


async def test_a_job_left_running_by_a_crash_is_requeued_at_the_front_on_start(fake_discord, world, bot_runner, make_bot):
    crashing = _WorkerThatNeverAnswersStop(seconds_per_job=0.2)
    first_bot = await bot_runner.start(make_bot(crashing, worker={"stop_timeout_seconds": 0.3}))
    crashing.hold()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a crash landing")
    await asyncio.wait_for(crashing.wait_until_holding(1), 10)
    progress = await fake_discord.wait_for_message(world.channel, lambda m: "crash" in m.content and "%" in m.content)
    await bot_runner.stop(first_bot)
    assert (await first_bot_store_state(make_bot, job_id)) == "running"

    fresh = SimulatedGenerationClient(seconds_per_job=0.2)
    bot = await bot_runner.start(make_bot(fresh))
    final = await wait_for_result(fake_discord, world.channel, job_id)

    assert final.id == progress.id
    assert (await bot.store.get(job_id)).attempts == 2


async def test_a_result_not_yet_shown_when_the_bot_stopped_is_shown_after_the_restart(fake_discord, world, bot_runner, make_bot, simulated):
    # A long edit interval holds the finished job's last message change back when the bot stops.
    first_bot = await bot_runner.start(make_bot(progress={"edit_interval_seconds": 60.0}))
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a late result")
    waiting = await fake_discord.wait_for_message(world.channel, lambda m: "late result" in m.content)
    await asyncio.wait_for(simulated.wait_until_completed(1), 10)
    await bot_runner.stop(first_bot)  # waits for the job's end to be stored
    assert (await first_bot_store_state(make_bot, job_id)) == "done"
    assert not result_of(job_id)(waiting)

    await bot_runner.start(make_bot())
    final = await wait_for_result(fake_discord, world.channel, job_id)

    assert final.id == waiting.id


# ---- /queue, /cancel, /show, /history ----------------------------------------------------------------------


async def test_queue_cancel_and_history_commands(fake_discord, world, start_bot, simulated):
    bot = await start_bot(worker={"max_batch_size": 1})
    simulated.hold()
    _, running_id = await imagine(fake_discord, world.channel, world.alice, "first")
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)
    _, second_id = await imagine(fake_discord, world.channel, world.alice, "second")
    _, third_id = await imagine(fake_discord, world.channel, world.alice, "third")

    queue = await (await fake_discord.invoke_command(world.channel, world.alice, "queue")).wait_response()
    listing = str(queue.embeds)
    assert queue.ephemeral and running_id in listing and "position 1" in listing and "position 2" in listing

    which = await (await fake_discord.invoke_command(world.channel, world.alice, "cancel")).wait_response()
    assert "say which" in which.content
    others = await (await fake_discord.invoke_command(world.channel, world.bob, "cancel", job=second_id)).wait_response()
    assert "no job" in others.content
    cancelled = await (await fake_discord.invoke_command(world.channel, world.alice, "cancel", job=second_id)).wait_response()
    assert "Cancelled" in cancelled.content
    assert (await bot.store.get(second_id)).state == "cancelled"
    suggestions = await (await fake_discord.autocomplete(world.channel, world.alice, "cancel", "job", job="")).wait_response()
    assert {choice["value"] for choice in suggestions.choices} == {running_id, third_id}

    simulated.release()
    await wait_for_result(fake_discord, world.channel, third_id)
    history = await (await fake_discord.invoke_command(world.channel, world.alice, "history")).wait_response()
    text = str(history.embeds)
    assert all(job_id in text for job_id in (running_id, second_id, third_id)) and "cancelled" in text


async def test_show_reposts_a_result_with_fresh_buttons(fake_discord, world, start_bot):
    await start_bot()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a red kite")
    original = await wait_for_result(fake_discord, world.channel, job_id)

    shown = await fake_discord.invoke_command(world.channels[0], world.bob, "show", job=job_id)
    message = await shown.wait_original(lambda m: not m.loading)

    assert message.id != original.id and result_png(message, job_id) == result_png(original, job_id)
    assert f"bs:vary:{job_id}" in message.custom_ids()
    elsewhere = await (await fake_discord.invoke_command(world.channels[1], world.carol, "show", job=job_id)).wait_response()
    assert "no job" in elsewhere.content


async def test_simulated_results_differ_by_prompt_and_seed() -> None:
    assert colour_for("a", 1) != colour_for("a", 2) != colour_for("b", 1)
