"""Results as posted, through the fake Discord: the cutouts a job was really made with (on its card, in /show,
and in its Reroll), and /show posting under the rules of the server it is used in, wherever the job was made."""

from __future__ import annotations

from e2e_helpers import imagine, wait_for_result
from fakediscord import FakeDiscord, FakeMessage, Permission


async def run(fake: FakeDiscord, channel, who, command: str, /, **options):
    interaction = await fake.invoke_command(channel, who, command, options)
    return await interaction.wait_response()


async def show(fake: FakeDiscord, channel, who, job_id: str) -> FakeMessage:
    interaction = await fake.invoke_command(channel, who, "show", job=job_id)
    return await interaction.wait_original(lambda m: not m.loading)


def card_field(message: FakeMessage, name: str) -> str:
    return next(field["value"] for embed in message.embeds for field in embed.get("fields", []) if field["name"] == name)


async def test_a_result_made_with_fewer_cutouts_says_so_and_its_reroll_is_made_like_it(
    fake_discord, world, start_bot, simulated
):
    simulated.cutouts_that_fit = 16  # 32 (the "normal" quality) runs out of memory; half of them fit
    bot = await start_bot()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a lighthouse in a storm")
    result = await wait_for_result(fake_discord, world.channel, job_id)

    shortened = "16 (32 asked; the generator ran short of memory)"
    assert card_field(result, "Cutouts") == shortened
    job = await bot.store.require(job_id)
    assert (job.spec.cutouts, job.made_with.cutouts) == (32, 16)
    assert card_field(await show(fake_discord, world.channel, world.bob, job_id), "Cutouts") == shortened

    click = await fake_discord.click_button(world.bob, result, f"bs:reroll:{job_id}")
    reroll_id = (await click.wait_response()).content.split("`")[1]
    reroll = await wait_for_result(fake_discord, world.channel, reroll_id)
    # Made with the 16 cutouts the image above really had, so nothing ran short this time.
    assert simulated.requests[-1].spec.cutouts == 16 and card_field(reroll, "Cutouts") == "16"
    assert (await bot.store.require(reroll_id)).spec.cutouts == 16


async def test_show_posts_under_the_rules_of_the_server_it_is_used_in(fake_discord, world, start_bot):
    await start_bot()
    painters, painters_art = world.guilds[1], world.channels[1]
    boss = fake_discord.add_member(painters, "boss", permissions=Permission.MANAGE_GUILD)
    bob_there = fake_discord.add_member(painters, user=world.bob.user)
    made = {}
    for name, prompt, options in (("kite", "a red kite", {}), ("avoiding", "a calm sea", {"negative": "kites"}),
                                  ("plain", "a quiet field", {})):
        made[name] = (await imagine(fake_discord, world.channel, world.bob, prompt, **options))[1]
        await wait_for_result(fake_discord, world.channel, made[name])
    await run(fake_discord, painters_art, boss, "settings words add", words="kite*")

    # Bob made them in Dreamers, which bans nothing; Painters bans kites, in the prompt and the negative prompt.
    refused = await run(fake_discord, painters_art, bob_there, "show", job=made["kite"])
    assert refused.ephemeral
    assert refused.content == f"`{made['kite']}` can't be shown here. Your prompt contains “kite*”, which this server does not allow."
    refused = await run(fake_discord, painters_art, bob_there, "show", job=made["avoiding"])
    assert "Your negative prompt contains “kite*”" in refused.content
    assert (await show(fake_discord, world.channel, world.bob, made["kite"])).attachments  # still fine at home

    # Painters' allowed channels.
    chat = fake_discord.add_channel(painters, "chat")
    await run(fake_discord, painters_art, boss, "settings channels", action="add", channel=painters_art)
    refused = await run(fake_discord, chat, bob_there, "show", job=made["plain"])
    assert refused.ephemeral and f"<#{painters_art.id}>" in refused.content

    # Painters' spoiler setting, not Dreamers'.
    await run(fake_discord, painters_art, boss, "settings spoiler", enabled=True)
    shown = await show(fake_discord, painters_art, bob_there, made["plain"])
    assert [a.filename for a in shown.attachments] == [f"SPOILER_{made['plain']}.png"]
    assert all("image" not in embed for embed in shown.embeds)  # an embed would show it unblurred
    posted = fake_discord.messages_in(painters_art) + fake_discord.messages_in(chat)
    assert [m.id for m in posted if m.attachments] == [shown.id]
