"""Grids (`/imagine count:2-4`, bot.jobs.grids) through the fake Discord with the simulated worker: one message for
the grid, U and V buttons per image that work after a restart, quotas and the waiting cap counting every image,
/cancel, /show, /queue and /history of a grid."""

from __future__ import annotations

import asyncio
import io

import pytest
from e2e_helpers import imagine, result_of
from fakediscord import FakeDiscord, FakeMessage, Permission
from PIL import Image

from bot.jobs.simulated import SimulatedGenerationClient, colour_for

GRID_ID = r"grid of \d `([0-9a-z]{8})`"


async def run(fake: FakeDiscord, channel, who, command: str, /, **options):
    interaction = await fake.invoke_command(channel, who, command, options)
    return await interaction.wait_response()


async def answer(interaction) -> str:
    """The text a member finally sees (after a 'thinking' defer, the filled-in message)."""
    response = await interaction.wait_response()
    if response.deferred:
        return (await interaction.wait_original(lambda m: not m.loading)).content
    return response.content or ""


async def imagine_grid(fake: FakeDiscord, world, prompt: str, count: int = 4, **options) -> tuple[str, list[str]]:
    """Run /imagine count:<count>; returns the grid id and its job ids in grid order."""
    response, _ = await imagine(fake, world.channel, world.alice, prompt, count=count, **options)
    assert f"Queued a grid of {count}" in response.content, response.content
    ids = [part for part in response.content.split("`")[1::2]]
    return ids[0], ids[1:]


def grid_png(message: FakeMessage, grid_id: str) -> bytes | None:
    return next((a.data for a in message.attachments if a.filename == f"{grid_id}.png"), None)


async def wait_for_grid(fake: FakeDiscord, channel, grid_id: str, timeout: float = 20.0) -> FakeMessage:
    """The grid's message once it shows the finished grid (its U buttons)."""
    return await fake.wait_for_message(
        channel, lambda m: grid_png(m, grid_id) and any(c.startswith("bs:upscale:") for c in m.custom_ids()), timeout=timeout
    )


def quadrant_colours(png: bytes, count: int = 4) -> list[tuple[int, int, int]]:
    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size
        tile = width // 2
        return [image.convert("RGB").getpixel(((i % 2) * tile + tile // 2, (i // 2) * tile + tile // 2)) for i in range(count)]


async def test_imagine_count_4_queues_four_jobs_and_posts_one_grid_with_u_and_v_buttons(fake_discord, world, start_bot):
    bot = await start_bot()
    grid_id, job_ids = await imagine_grid(fake_discord, world, "four foxes", seed=1000)

    final = await wait_for_grid(fake_discord, world.channel, grid_id)
    await bot.progress.idle()
    jobs = [await bot.store.require(job_id) for job_id in job_ids]
    assert [job.seed for job in jobs] == [1000, 1001, 1002, 1003]
    assert {job.grid_id for job in jobs} == {grid_id} and [job.grid_index for job in jobs] == [0, 1, 2, 3]
    assert all(job.state == "done" and job.progress_message_id == final.id for job in jobs)
    # One message for the whole grid: no job posted its own.
    assert [m.id for m in fake_discord.messages_in(world.channel) if "four foxes" in m.content] == [final.id]
    assert not any(result_of(job_id)(final) for job_id in job_ids)
    assert final.custom_ids() == [f"bs:upscale:{j}" for j in job_ids] + [f"bs:vary:{j}" for j in job_ids]
    assert [b["label"] for b in final.buttons()] == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4"]
    # 2x2, each image (a solid colour from its prompt and seed) in its place, at the job's size.
    png = grid_png(final, grid_id)
    assert Image.open(io.BytesIO(png)).size == (256, 256)
    assert quadrant_colours(png) == [colour_for("four foxes", seed) for seed in (1000, 1001, 1002, 1003)]
    # While it ran, the same message showed the previews composed (before the final version).
    assert any(grid_png_in_version(v, grid_id) for v in final.versions[:-1])


def grid_png_in_version(version, grid_id: str) -> bool:
    return any(a.filename == f"{grid_id}.png" for a in getattr(version, "attachments", []))


async def test_u_and_v_buttons_work_after_a_restart(fake_discord, world, bot_runner, make_bot, simulated):
    first_bot = await bot_runner.start(make_bot())
    grid_id, job_ids = await imagine_grid(fake_discord, world, "a grid of owls", seed=7)
    grid = await wait_for_grid(fake_discord, world.channel, grid_id)
    await bot_runner.stop(first_bot)

    bot = await bot_runner.start(make_bot())

    # U2: image 2 alone, at full size, with the usual buttons.
    click = await fake_discord.click_button(world.bob, grid, f"bs:upscale:{job_ids[1]}")
    alone = await click.wait_original(lambda m: not m.loading)
    assert result_of(job_ids[1])(alone)
    second = await bot.store.require(job_ids[1])
    assert next(a.data for a in alone.attachments if a.filename == f"{job_ids[1]}.png") == bot.files.read(second.png_path)
    assert {f"bs:reroll:{job_ids[1]}", f"bs:vary:{job_ids[1]}", f"bs:delete:{job_ids[1]}"} <= set(alone.custom_ids())

    # V3: a variation of image 3, from its latents.
    vary = await fake_discord.click_button(world.alice, grid, f"bs:vary:{job_ids[2]}")
    vary_id = (await vary.wait_response()).content.split("`")[1]
    variation = await bot.store.require(vary_id)
    assert (variation.kind, variation.parent_job_id, variation.grid_id) == ("variation", job_ids[2], None)
    await fake_discord.wait_for_message(world.channel, result_of(vary_id), timeout=20)
    request = next(r for r in simulated.requests if r.job_id == vary_id)
    assert request.spec.init_latents == bot.files.read((await bot.store.require(job_ids[2])).latents_path)


async def test_a_grid_counts_as_four_against_quotas(fake_discord, world, start_bot):
    bot = await start_bot()
    boss = fake_discord.add_member(world.guilds[0], "boss", permissions=Permission.MANAGE_GUILD)
    await run(fake_discord, world.channel, boss, "settings quota rules", per_day=4)
    assert (await imagine(fake_discord, world.channel, world.alice, "one first"))[1]

    refused, job_id = await imagine(fake_discord, world.channel, world.alice, "four more", count=4)

    assert job_id is None and refused.ephemeral
    assert "A grid of 4 counts as 4 jobs, and you have 3 of 4 left" in refused.content
    assert [job.prompt for job in await bot.store.recent_jobs(world.alice.id)] == ["one first"]
    # Three fit.
    response, _ = await imagine(fake_discord, world.channel, world.alice, "three more", count=3)
    assert "Queued a grid of 3" in response.content and "You have 0 of 4 left" in response.content
    await bot.progress.idle()


async def test_a_grid_needs_room_for_all_its_images_under_the_waiting_cap(fake_discord, world, start_bot, simulated):
    bot = await start_bot(queue={"max_queued_per_user": 5})
    simulated.hold()
    await imagine_grid(fake_discord, world, "first grid")
    await asyncio.wait_for(simulated.wait_until_holding(2), 10)  # two run (the worker's batch), two wait

    refused, job_id = await imagine(fake_discord, world.channel, world.alice, "second grid", count=4)

    assert job_id is None and "A grid of 4 needs 4 places in the queue; you have 3 left" in refused.content
    assert len(await bot.store.active_jobs(world.alice.id)) == 4
    simulated.release()


@pytest.mark.parametrize("count", [0, 5])
async def test_a_count_outside_1_to_4_is_refused_before_the_bot_sees_it(fake_discord, world, start_bot, count):
    bot = await start_bot()
    with pytest.raises(ValueError, match="outside min_value/max_value"):
        await fake_discord.invoke_command(world.channel, world.alice, "imagine", prompt="too many", count=count)
    assert await bot.store.recent_jobs(world.alice.id) == []


async def test_cancel_of_a_grid_cancels_all_its_jobs_and_its_message_says_so(fake_discord, world, start_bot, simulated):
    bot = await start_bot()
    simulated.hold()
    grid_id, job_ids = await imagine_grid(fake_discord, world, "never finished")
    await asyncio.wait_for(simulated.wait_until_holding(2), 10)

    queue = await run(fake_discord, world.channel, world.alice, "queue")
    listing = str(queue.embeds)
    assert f"grid `{grid_id}` (4 images: 2 generating, 2 waiting)" in listing
    assert not any(job_id in listing for job_id in job_ids)
    answer = await run(fake_discord, world.channel, world.alice, "cancel", job=grid_id)

    assert answer.content == "Cancelled " + ", ".join(f"`{j}`" for j in job_ids) + "."
    assert {(await bot.store.require(j)).state for j in job_ids} == {"cancelled"}
    message = await fake_discord.wait_for_message(
        world.channel, lambda m: grid_id in m.content and m.content.count("cancelled") == 4
    )
    assert "bs:upscale" not in str(message.custom_ids())
    simulated.release()


async def test_show_and_history_of_a_grid(fake_discord, world, start_bot):
    bot = await start_bot()
    grid_id, job_ids = await imagine_grid(fake_discord, world, "shown again", count=2)
    await wait_for_grid(fake_discord, world.channel, grid_id)
    await bot.progress.idle()

    shown = await (await fake_discord.invoke_command(world.channel, world.bob, "show", job=grid_id)).wait_original(
        lambda m: not m.loading
    )
    assert grid_png(shown, grid_id) and shown.custom_ids() == [
        f"bs:upscale:{job_ids[0]}", f"bs:upscale:{job_ids[1]}", f"bs:vary:{job_ids[0]}", f"bs:vary:{job_ids[1]}"
    ]
    one = await (await fake_discord.invoke_command(world.channel, world.bob, "show", job=job_ids[1])).wait_original(
        lambda m: not m.loading
    )
    assert result_of(job_ids[1])(one)
    history = str((await run(fake_discord, world.channel, world.alice, "history")).embeds)
    assert f"grid `{grid_id}` (2 images: 2 done)" in history and job_ids[0] not in history


async def test_the_four_images_of_a_grid_start_together_in_one_batch(fake_discord, world, start_bot, simulated):
    # The member may run 3 jobs at once; the worker holds 4: the grid's images start together all the same.
    bot = await start_bot(worker={"max_batch_size": 4}, queue={"max_running_per_user": 3})
    simulated.hold()
    _, job_ids = await imagine_grid(fake_discord, world, "all at once")

    await asyncio.wait_for(simulated.wait_until_holding(4), 10)

    assert {request.job_id for request in simulated.requests} == set(job_ids)
    assert {(await bot.store.require(j)).state for j in job_ids} == {"running"}
    # The worker is full: her next job waits.
    _, later = await imagine(fake_discord, world.channel, world.alice, "after the grid")
    assert (await bot.store.require(later)).state == "queued"
    simulated.release()
    await fake_discord.wait_for_message(world.channel, result_of(later), timeout=20)


async def test_a_grid_running_when_the_bot_stops_ends_in_its_one_message_after_the_restart(
    fake_discord, world, bot_runner, make_bot, simulated
):
    first_bot = await bot_runner.start(make_bot())
    simulated.hold()
    grid_id, job_ids = await imagine_grid(fake_discord, world, "interrupted grid", seed=50)
    await asyncio.wait_for(simulated.wait_until_holding(2), 10)
    waiting = await fake_discord.wait_for_message(world.channel, lambda m: grid_id in m.content)
    await bot_runner.stop(first_bot)

    fresh = SimulatedGenerationClient(seconds_per_job=0.2)
    bot = await bot_runner.start(make_bot(fresh))
    final = await wait_for_grid(fake_discord, world.channel, grid_id)

    assert final.id == waiting.id
    assert [m.id for m in fake_discord.messages_in(world.channel) if grid_id in m.content] == [final.id]
    assert len(final.buttons()) == 8
    assert quadrant_colours(grid_png(final, grid_id)) == [colour_for("interrupted grid", s) for s in (50, 51, 52, 53)]
    assert {(await bot.store.require(j)).state for j in job_ids} == {"done"}


async def test_a_challenge_entry_from_a_grid_is_one_image_chosen_with_its_u_button(fake_discord, world, start_bot):
    await start_bot()
    boss = fake_discord.add_member(world.guilds[0], "boss", permissions=Permission.MANAGE_GUILD)
    started = await fake_discord.invoke_command(world.channel, boss, "challenge start", theme="Owls", duration="1d")
    await started.wait_original(lambda m: not m.loading)
    grid_id, job_ids = await imagine_grid(fake_discord, world, "owl grid", count=2)
    grid = await wait_for_grid(fake_discord, world.channel, grid_id)
    assert not any(cid.startswith("bs:enter:") for cid in grid.custom_ids())

    text = await answer(await fake_discord.invoke_command(world.channel, world.alice, "challenge submit", job=grid_id))
    assert f"`{grid_id}` is a grid of 2; an entry is one image" in text and job_ids[1] in text

    alone = await (await fake_discord.click_button(world.alice, grid, f"bs:upscale:{job_ids[1]}")).wait_original(
        lambda m: not m.loading
    )
    entered = await answer(await fake_discord.click_button(world.alice, alone, f"bs:enter:{job_ids[1]}"))
    assert "#1" in entered
    entry = await fake_discord.wait_for_message(world.channel, lambda m: m.content.startswith("**Entry #1**"))
    assert any(a.data == alone.attachments[0].data for a in entry.attachments)
