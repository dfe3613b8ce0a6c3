"""Image prompts end to end: /imagine with `image` or `like`, /blend, every bad upload, a server that turns them
off, restarts, Reroll and Variations, against the fake Discord (its CDN serves the uploads) with the simulated
worker. The real worker's run is in test_real_worker_e2e.py."""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import imagine, wait_for_result
from fakediscord import CdnBehaviour, FakeDiscord, Permission, Upload
from pictures import picture, png_claiming, rotated_jpeg, size_of, truncated_png

from bot.jobs.simulated import SimulatedGenerationClient
from generator.protocol import ImagePrompt

MIB = 1024 * 1024


def kept_pictures(data_dir) -> list:
    folder = data_dir / "prompts"
    return sorted(folder.rglob("*.png")) if folder.exists() else []


def embed_of(message) -> dict:
    return message.embeds[0]


def field(message, name: str) -> str:
    return next((f["value"] for f in embed_of(message).get("fields", []) if f["name"] == name), "")


async def blend(fake: FakeDiscord, channel, member, *pictures: bytes, **options):
    uploads = {f"image{n}": Upload(f"p{n}.png", data) for n, data in enumerate(pictures, start=1)}
    interaction = await fake.invoke_command(channel, member, "blend", **uploads, **options)
    response = await interaction.wait_response()
    if response.deferred:
        response = await interaction.wait_original()
    return response, (response.content.split("`")[1] if "Queued" in response.content else None)


async def answer(interaction):
    """The private answer, also when the bot deferred first (a slow download)."""
    response = await interaction.wait_response()
    return (await interaction.wait_original()).content if response.deferred else response.content


# ---- an upload steers a job ---------------------------------------------------------------------------------


async def test_an_uploaded_picture_steers_the_job_and_the_worker_gets_the_bots_copy(
    fake_discord, world, start_bot, simulated, data_dir
):
    bot = await start_bot()

    interaction = await fake_discord.invoke_command(
        world.channel, world.alice, "imagine", prompt="a fox", image=Upload("holiday.jpg", rotated_jpeg(600, 300)),
        image_weight=2.5,
    )
    response = await interaction.wait_response()
    job_id = response.content.split("`")[1]
    final = await wait_for_result(fake_discord, world.channel, job_id)

    job = await bot.store.get(job_id)
    [image] = job.spec.image_prompts
    assert image == ImagePrompt(image.key, 2.5) and image.key.startswith("prompts/")
    kept = bot.files.read(image.key)
    assert size_of(kept) == (256, 512)  # upright (EXIF), at most 512 px, a PNG of the bot's own
    # The worker got the bytes of the bot's copy, which the CDN was asked for exactly once.
    [request] = simulated.requests
    assert request.spec.image_prompts[0].png == kept and request.spec.image_prompts[0].weight == 2.5
    assert fake_discord.cdn_fetches == [a.id for a in interaction.attachments]
    # The result shows the picture in its card's corner.
    assert [a.filename for a in final.attachments] == [f"{job_id}.png", f"{job_id}-prompts.png"]
    assert embed_of(final)["thumbnail"]["url"] == f"attachment://{job_id}-prompts.png"
    assert field(final, "Pictures") == "1 (weight 2.5)"
    assert final.content.startswith("**a fox** + 1 picture - ")


async def test_a_picture_alone_needs_no_words_but_a_weight_needs_a_picture(fake_discord, world, start_bot, simulated):
    await start_bot()

    response, job_id = await imagine(fake_discord, world.channel, world.alice, "|", image=Upload("cat.png", picture()))
    final = await wait_for_result(fake_discord, world.channel, job_id)

    assert simulated.requests[0].spec.prompt == "" and len(simulated.requests[0].spec.image_prompts) == 1
    assert final.content.startswith("**1 picture** - ") and embed_of(final)["title"] == "1 picture"
    empty, _ = await imagine(fake_discord, world.channel, world.alice, "|")
    assert "The prompt is empty" in empty.content
    weight, _ = await imagine(fake_discord, world.channel, world.alice, "a cat", image_weight=2.0)
    assert "give one with `image` or `like` too" in weight.content


# ---- restarts, rerolls, variations ---------------------------------------------------------------------------


async def test_after_a_restart_the_bots_own_copy_is_used_though_the_link_expired(
    fake_discord, world, bot_runner, make_bot, simulated
):
    first_bot = await bot_runner.start(make_bot())
    simulated.hold()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a lighthouse",
                              image=Upload("sea.webp", picture(64, 48, format="WEBP")))
    await asyncio.wait_for(simulated.wait_until_holding(1), 10)
    kept = first_bot.files.read((await first_bot.store.get(job_id)).spec.image_prompts[0].key)
    await bot_runner.stop(first_bot)
    fake_discord.expire_attachment_links(403)

    fresh = SimulatedGenerationClient(seconds_per_job=0.2)
    await bot_runner.start(make_bot(fresh))
    await wait_for_result(fake_discord, world.channel, job_id)

    assert fresh.requests[0].job_id == job_id and fresh.requests[0].spec.image_prompts[0].png == kept
    assert len(fake_discord.cdn_fetches) == 1  # fetched once, at /imagine


async def test_a_reroll_and_a_variation_keep_the_picture(fake_discord, world, start_bot, simulated):
    bot = await start_bot()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a tree",
                              image=Upload("tree.png", picture(80, 80, (0, 140, 0))), image_weight=0.5)
    result = await wait_for_result(fake_discord, world.channel, job_id)
    original = (await bot.store.get(job_id)).spec.image_prompts
    fake_discord.expire_attachment_links(404)

    for action in ("reroll", "vary"):
        click = await fake_discord.click_button(world.bob, result, f"bs:{action}:{job_id}")
        new_id = (await click.wait_response()).content.split("`")[1]
        made = await wait_for_result(fake_discord, world.channel, new_id)
        assert (await bot.store.get(new_id)).spec.image_prompts == original
        request = next(r for r in simulated.requests if r.job_id == new_id)
        assert request.spec.image_prompts[0].png == bot.files.read(original[0].key)
        assert request.spec.image_prompts[0].weight == 0.5
        assert f"{new_id}-prompts.png" in [a.filename for a in made.attachments]
    assert len(fake_discord.cdn_fetches) == 1


# ---- /blend ---------------------------------------------------------------------------------------------------


async def test_blend_of_three_pictures_pulls_equally_and_shows_them_in_a_strip(fake_discord, world, start_bot, simulated):
    bot = await start_bot()
    pictures = [picture(60, 60, (255, 0, 0)), picture(60, 60, (0, 255, 0), format="JPEG"),
                picture(60, 60, (0, 0, 255), format="WEBP", lossless=True)]

    response, job_id = await blend(fake_discord, world.channel, world.alice, *pictures, seed=7, size=128)
    final = await wait_for_result(fake_discord, world.channel, job_id)

    assert response.ephemeral and job_id
    job = await bot.store.get(job_id)
    assert (job.spec.prompt, job.spec.seed, job.spec.size) == ("", 7, 128)
    assert [image.weight for image in job.spec.image_prompts] == [1.0, 1.0, 1.0]
    assert [len(image.png) for image in simulated.requests[0].spec.image_prompts] == [
        len(bot.files.read(image.key)) for image in job.spec.image_prompts]
    strip = next(a for a in final.attachments if a.filename == f"{job_id}-prompts.png")
    assert strip.dimensions == (3 * 128 + 2 * 4, 128)
    assert final.content.startswith("**a blend of 3 pictures** - ") and field(final, "Pictures") == "3 (weights 1, 1, 1)"


async def test_blend_needs_two_pictures(fake_discord, world, start_bot):
    await start_bot()

    with pytest.raises(ValueError, match="requires option 'image2'"):
        await fake_discord.invoke_command(world.channel, world.alice, "blend", image1=Upload("a.png", picture()))


# ---- bad uploads ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("upload, says", [
    (Upload("notes.txt", b"not a picture", "text/plain"), "“notes.txt” is a text/plain file; an image prompt must be"),
    (Upload("big.png", picture(), cdn=CdnBehaviour(content_length=20 * MIB)), "“big.png” is 20.0 MB; an image prompt may"),
    # Discord said it was small; the CDN sends no length and 11 MiB: refused as the bytes pass the cap.
    (Upload("grows.png", picture(), cdn=CdnBehaviour(body=bytes(11 * MIB), chunked=True)), "“grows.png” is over 10.0 MB"),
    # The Content-Length is the compressed size (about 11 KB); what it unpacks to passes the cap while streaming.
    (Upload("bomb.png", picture(), cdn=CdnBehaviour(body=bytes(11 * MIB), gzip=True)), "“bomb.png” is over 10.0 MB"),
    (Upload("cat.png", b"GIF89a" + bytes(500), "image/png"), "“cat.png” is not a PNG, JPEG, WebP or GIF picture I can"),
    (Upload("cut.png", truncated_png()), "“cut.png” is damaged"),
    (Upload("old.png", picture(), cdn=CdnBehaviour(status=403)), "“old.png” from Discord any more (its link has expired)"),
    (Upload("gone.png", picture(), cdn=CdnBehaviour(status=404)), "its link has expired"),
    (Upload("huge.png", png_claiming(9000, 9000)), "“huge.png” is 9,000×9,000 pixels; an image prompt may have at most"),
])
async def test_every_bad_upload_gets_its_sentence_and_queues_nothing(
    fake_discord, world, start_bot, simulated, data_dir, upload, says
):
    bot = await start_bot()

    interaction = await fake_discord.invoke_command(world.channel, world.alice, "imagine", prompt="a cat", image=upload)
    text = await answer(interaction)

    assert says in text
    assert (await interaction.wait_response()).ephemeral
    assert await bot.store.recent_jobs(world.alice.id) == [] and simulated.requests == []
    assert kept_pictures(data_dir) == []


async def test_too_big_by_discords_own_count_is_refused_without_a_download(fake_discord, world, start_bot, data_dir):
    fake_discord.attachment_size_limit = 25 * MIB
    bot = await start_bot()

    interaction = await fake_discord.invoke_command(
        world.channel, world.alice, "imagine", prompt="a cat", image=Upload("raw.png", bytes(11 * MIB), "image/png"))

    assert "“raw.png” is 11.0 MB" in await answer(interaction)
    assert fake_discord.cdn_fetches == [] and await bot.store.recent_jobs(world.alice.id) == []


async def test_a_slow_download_is_answered_after_a_defer(fake_discord, world, start_bot, simulated, monkeypatch):
    import bot.jobs.uploads as uploads

    bot = await start_bot()
    download = uploads.download

    async def slow_download(*args):
        await asyncio.sleep(2.5)
        return await download(*args)

    monkeypatch.setattr(uploads, "download", slow_download)
    interaction = await fake_discord.invoke_command(world.channel, world.alice, "imagine", prompt="a cat",
                                                    image=Upload("cat.png", picture()))

    response = await interaction.wait_response()
    assert response.kind == "deferred_message" and response.ephemeral
    assert "Queued" in (await interaction.wait_original()).content
    assert len(await bot.store.recent_jobs(world.alice.id)) == 1


# ---- the server's say, and like: ---------------------------------------------------------------------------------


async def test_a_server_with_image_prompts_off_refuses_them_before_any_download(fake_discord, world, start_bot, simulated):
    boss = fake_discord.add_member(world.guilds[0], "boss", permissions=Permission.MANAGE_GUILD)
    bot = await start_bot()
    _, earlier = await imagine(fake_discord, world.channel, world.alice, "an earlier one")
    _, pictured = await imagine(fake_discord, world.channel, world.alice, "pictured", image=Upload("p.png", picture()))
    for job_id in (earlier, pictured):
        await wait_for_result(fake_discord, world.channel, job_id)

    turned = await fake_discord.invoke_command(world.channel, boss, "settings images", enabled=False)
    assert "Image prompts: off" in (await turned.wait_response()).content
    shown = await (await fake_discord.invoke_command(world.channel, boss, "settings show")).wait_response()
    assert {"name": "Image prompts", "value": "off", "inline": True} in shown.embeds[0]["fields"]

    off = "This server's moderators have turned image prompts off"
    upload = await fake_discord.invoke_command(world.channel, world.alice, "imagine", prompt="a cat",
                                               image=Upload("cat.png", picture()))
    assert off in await answer(upload)
    liked, _ = await imagine(fake_discord, world.channel, world.alice, "a cat", like=earlier)
    assert off in liked.content
    blended, _ = await blend(fake_discord, world.channel, world.alice, picture(), picture(8, 8))
    assert off in blended.content
    assert len(fake_discord.cdn_fetches) == 1 and len(simulated.requests) == 2  # the upload before the change
    shown = await (await fake_discord.invoke_command(world.channel, world.bob, "show", job=pictured)).wait_response()
    assert shown.content == f"`{pictured}` can't be shown here. {off}; describe what you want in words instead."
    # Words alone still work; the change is in the audit trail, and another server is not touched.
    _, words = await imagine(fake_discord, world.channel, world.alice, "a cat")
    assert words
    [action] = await bot.moderation.store.actions(world.guilds[0].id, action="settings")
    assert (action.action, action.before, action.after) == ("settings.images", {"image_prompts": True},
                                                            {"image_prompts": False})
    _, elsewhere = await imagine(fake_discord, world.channels[1], world.carol, "a cat", image=Upload("c.png", picture()))
    assert elsewhere


async def test_like_takes_your_own_image_from_this_server_only(fake_discord, world, start_bot, simulated):
    bot = await start_bot()
    _, mine = await imagine(fake_discord, world.channel, world.alice, "my red thing")
    _, bobs = await imagine(fake_discord, world.channel, world.bob, "bob's thing")
    alice_there = fake_discord.add_member(world.guilds[1], "alice", user=world.alice.user)
    _, elsewhere = await imagine(fake_discord, world.channels[1], alice_there, "made elsewhere")
    for job_id, channel in ((mine, world.channel), (bobs, world.channel), (elsewhere, world.channels[1])):
        await wait_for_result(fake_discord, channel, job_id)

    response, liked = await imagine(fake_discord, world.channel, world.alice, "the same, at night", like=f"#{mine.upper()}")
    await wait_for_result(fake_discord, world.channel, liked)
    [image] = (await bot.store.get(liked)).spec.image_prompts
    request = next(r for r in simulated.requests if r.job_id == liked)
    assert request.spec.image_prompts[0].png == bot.files.read(image.key)
    assert size_of(bot.files.read(image.key)) == size_of(bot.files.read((await bot.store.get(mine)).png_path))
    # The bot keeps its own copy: deleting the liked result leaves the new job's picture.
    await bot.store.delete_result(mine, bot.files.data_dir)
    assert bot.files.exists(image.key)

    others, _ = await imagine(fake_discord, world.channel, world.alice, "x", like=bobs)
    assert f"`{bobs}` is another member's image; `like` takes one of your own from this server." in others.content
    moved, _ = await imagine(fake_discord, world.channel, world.alice, "x", like=elsewhere)
    assert f"`{elsewhere}` was made in another server" in moved.content
    unknown, _ = await imagine(fake_discord, world.channel, world.alice, "x", like="zzzz9999")
    assert "There is no job `zzzz9999` here." in unknown.content
    deleted, _ = await imagine(fake_discord, world.channel, world.alice, "x", like=mine)
    assert f"The image of `{mine}` was deleted." in deleted.content
    assert len(simulated.requests) == 4


async def test_like_suggests_your_finished_images_from_this_server(fake_discord, world, start_bot):
    await start_bot()
    _, mine = await imagine(fake_discord, world.channel, world.alice, "a suggestion")
    await wait_for_result(fake_discord, world.channel, mine)
    await imagine(fake_discord, world.channel, world.bob, "not alice's")

    interaction = await fake_discord.autocomplete(world.channel, world.alice, "imagine", "like", prompt="x", like="")
    choices = (await interaction.wait_response()).choices

    assert [choice["value"] for choice in choices] == [mine]


async def test_a_spoiler_server_hides_the_thumbnails_too(fake_discord, world, start_bot):
    boss = fake_discord.add_member(world.guilds[0], "boss", permissions=Permission.MANAGE_GUILD)
    await start_bot()
    await (await fake_discord.invoke_command(world.channel, boss, "settings spoiler", enabled=True)).wait_response()

    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a secret", image=Upload("s.png", picture()))
    final = await fake_discord.wait_for_message(
        world.channel, lambda m: any(a.filename == f"SPOILER_{job_id}.png" for a in m.attachments))

    assert [a.filename for a in final.attachments] == [f"SPOILER_{job_id}.png", f"SPOILER_{job_id}-prompts.png"]
    assert "thumbnail" not in embed_of(final) and "image" not in embed_of(final)


async def test_show_posts_the_thumbnail_again(fake_discord, world, start_bot):
    await start_bot()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "show me", image=Upload("s.png", picture()))
    await wait_for_result(fake_discord, world.channel, job_id)

    shown = await fake_discord.invoke_command(world.channel, world.bob, "show", job=job_id)
    await shown.wait_response()
    message = await shown.wait_original(lambda m: not m.loading)

    assert [a.filename for a in message.attachments] == [f"{job_id}.png", f"{job_id}-prompts.png"]
