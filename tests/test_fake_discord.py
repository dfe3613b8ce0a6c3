"""The fake Discord works with the real discord.py over real sockets, and refuses what Discord refuses."""

from __future__ import annotations

import asyncio
import io
import struct
import types
import zlib
from typing import Any, List

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from discord.http import Route
from fakediscord import (
    CdnBehaviour,
    CommandNotVisible,
    FakeDiscord,
    InteractionFailed,
    Permission,
    Upload,
)
from PIL import Image

OUTCOME_TIMEOUT = 5.0


def make_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = b''.join(b'\x00' + bytes(rgb) * width for _ in range(height))
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b'')


# --- a minimal bot: just enough surface to exercise the fake ---------------------------------------------


class RerollButton(discord.ui.DynamicItem[discord.ui.Button], template=r'job:(?P<job_id>\d+):reroll'):
    def __init__(self, job_id: int) -> None:
        super().__init__(discord.ui.Button(label='Reroll', style=discord.ButtonStyle.primary, custom_id=f'job:{job_id}:reroll'))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: Any) -> 'RerollButton':
        return cls(int(match['job_id']))

    async def callback(self, interaction: discord.Interaction) -> None:
        interaction.client.clicks.append(self.job_id)
        await interaction.response.send_message(f'rerolling job {self.job_id}', ephemeral=True)


class FeedbackModal(discord.ui.Modal, title='Feedback'):
    text = discord.ui.TextInput(label='Your feedback', custom_id='feedback_text')

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f'thanks: {self.text.value}', ephemeral=True)


class PickView(discord.ui.View):
    @discord.ui.select(custom_id='pick', options=[discord.SelectOption(label='a'), discord.SelectOption(label='b')])
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        await interaction.response.edit_message(content=f'picked {select.values[0]}', view=None)


STYLES = ['impressionist', 'impasto', 'cubist', 'pixel art']


class DreamCog(commands.Cog):
    def __init__(self, bot: 'ExampleBot') -> None:
        self.bot = bot

    @app_commands.command(description='Answers at once')
    async def ping(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message('pong')

    @app_commands.command(description='Defers, then answers with a reroll button')
    async def imagine(self, interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.defer(thinking=True)
        view = discord.ui.View(timeout=None)
        view.add_item(RerollButton(7))
        await interaction.followup.send(f'dreaming of {prompt}', view=view)

    @app_commands.command(description='Waits for the test before answering at all')
    async def stall(self, interaction: discord.Interaction) -> None:
        await self.bot.release.wait()
        try:
            await interaction.response.send_message('finally')
        except discord.HTTPException as error:
            self.bot.outcomes.put_nowait(error)

    @app_commands.command(description='Defers, then waits for the test before following up')
    async def slowdream(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await self.bot.release.wait()
        try:
            await interaction.followup.send('done at last')
        except discord.HTTPException as error:
            self.bot.outcomes.put_nowait(error)

    @app_commands.command(description='Picks a style')
    async def style(self, interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(f'style {name}')

    @style.autocomplete('name')
    async def style_suggestions(self, interaction: discord.Interaction, current: str) -> List[app_commands.Choice[str]]:
        return [app_commands.Choice(name=style, value=style) for style in STYLES if style.startswith(current)]

    @app_commands.command(description='Walks the interaction webhook routes')
    async def lifecycle(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message('step 1')
        original = await interaction.original_response()
        await interaction.edit_original_response(content='step 2')
        extra = await interaction.followup.send('extra', wait=True)
        await extra.edit(content='extra edited')
        await extra.delete()
        self.bot.outcomes.put_nowait(original)

    @app_commands.command(description='Reads entity options, then offers a choice')
    async def describe(self, interaction: discord.Interaction, who: discord.Member, image: discord.Attachment) -> None:
        size = len(await image.read())
        await interaction.response.send_message(f'{who.display_name} sent {size} bytes', view=PickView())

    @app_commands.command(description='Fails on purpose')
    async def broken(self, interaction: discord.Interaction) -> None:
        raise RuntimeError('the broken command broke')

    @app_commands.command(description='Opens a feedback form')
    async def feedback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(FeedbackModal())


class AdminCommands(app_commands.Group):
    queue = app_commands.Group(name='queue', description='Queue administration')

    @queue.command(description='Clears the queue')
    async def clear(self, interaction: discord.Interaction, confirm: bool) -> None:
        await interaction.response.send_message(f'queue cleared (confirm={confirm})', ephemeral=True)


class ExampleBot(commands.Bot):
    def __init__(self, guild_id: int) -> None:
        super().__init__(command_prefix='!', intents=discord.Intents.default(), guild_ready_timeout=0.01)
        self.guild_id = guild_id
        self.clicks: List[int] = []
        self.release = asyncio.Event()
        self.outcomes: asyncio.Queue[Exception] = asyncio.Queue()
        self.raw_deletes: asyncio.Queue[discord.RawMessageDeleteEvent] = asyncio.Queue()
        self.seen_messages: asyncio.Queue[discord.Message] = asyncio.Queue()

    async def setup_hook(self) -> None:
        guild = discord.Object(self.guild_id)
        await self.add_cog(DreamCog(self), guild=guild)
        admin = AdminCommands(name='admin', description='Moderator tools',
                              default_permissions=discord.Permissions(manage_guild=True))
        self.tree.add_command(admin, guild=guild)
        self.add_dynamic_items(RerollButton)
        await self.tree.sync(guild=guild)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.raw_deletes.put_nowait(payload)

    async def on_message(self, message: discord.Message) -> None:
        if message.author != self.user:
            self.seen_messages.put_nowait(message)

    async def next_outcome(self) -> Exception:
        return await asyncio.wait_for(self.outcomes.get(), OUTCOME_TIMEOUT)


@pytest.fixture
def world(fake_discord: FakeDiscord) -> types.SimpleNamespace:
    guild = fake_discord.add_guild('Dreamers')
    return types.SimpleNamespace(
        guild=guild,
        channel=fake_discord.add_channel(guild, 'art'),
        alice=fake_discord.add_member(guild, 'alice'),
        moderator=fake_discord.add_member(guild, 'mod', permissions=Permission.MANAGE_GUILD),
    )


@pytest.fixture
async def bot(bot_runner, world) -> ExampleBot:
    return await bot_runner.start(ExampleBot(world.guild.id))


# --- login, sync, responses ---------------------------------------------------------------------------


async def test_bot_logs_in_syncs_guild_commands_and_answers_at_once(fake_discord, world, bot):
    assert bot.user.id == fake_discord.bot_user.id
    assert bot.get_guild(world.guild.id).get_channel(world.channel.id).name == 'art'
    synced = {command['name'] for command in fake_discord.commands(world.guild)}
    assert synced == {'ping', 'imagine', 'stall', 'slowdream', 'style', 'lifecycle', 'describe', 'broken', 'feedback', 'admin'}
    assert fake_discord.command('admin', world.guild)['default_member_permissions'] == str(Permission.MANAGE_GUILD.value)

    interaction = await fake_discord.invoke_command(world.channel, world.alice, 'ping')
    response = await interaction.wait_response()

    assert (response.kind, response.content, response.ephemeral) == ('message', 'pong', False)
    assert fake_discord.messages_in(world.channel)[-1].content == 'pong'
    callback = fake_discord.requests_matching('POST', f'/interactions/{interaction.id}/')
    assert [record.status for record in callback] == [200]


async def test_defer_then_followup_fills_the_thinking_message(fake_discord, world, bot):
    interaction = await fake_discord.invoke_command(world.channel, world.alice, 'imagine', prompt='a lighthouse')

    response = await interaction.wait_response()
    message = await interaction.wait_original()

    assert response.kind == 'deferred_message'
    assert message.content == 'dreaming of a lighthouse'
    assert message.custom_ids() == ['job:7:reroll']
    assert [version.kind for version in message.versions] == ['create', 'edit']
    assert message.versions[0].flags & 128  # created as "thinking"


async def test_original_response_and_followup_can_be_fetched_edited_and_deleted(fake_discord, world, bot):
    interaction = await fake_discord.invoke_command(world.channel, world.alice, 'lifecycle')

    original = await bot.next_outcome()
    stored_original = fake_discord.message(original.id)
    (followup,) = interaction.followups

    assert [(v.kind, v.content) for v in stored_original.versions] == [('create', 'step 1'), ('edit', 'step 2')]
    assert [(v.kind, v.content) for v in followup.versions] == [
        ('create', 'extra'), ('edit', 'extra edited'), ('delete', 'extra edited')]
    assert fake_discord.requests_matching('GET', '/messages/@original', status=200)


async def test_channel_history_and_fetch(fake_discord, world, bot):
    channel = bot.get_channel(world.channel.id)
    sent = [await channel.send(f'message {number}') for number in range(3)]

    newest_first = [message.content async for message in channel.history(limit=10)]
    after_first = [message.content async for message in channel.history(after=sent[0], oldest_first=True)]
    fetched = await channel.fetch_message(sent[1].id)

    assert newest_first == ['message 2', 'message 1', 'message 0']
    assert after_first == ['message 1', 'message 2']
    assert fetched.content == 'message 1'


async def test_message_content_needs_the_intent_unless_the_bot_is_mentioned(fake_discord, world, bot):
    await fake_discord.post_user_message(world.channel, world.alice, 'a private prompt')
    hidden = await asyncio.wait_for(bot.seen_messages.get(), OUTCOME_TIMEOUT)
    await fake_discord.post_user_message(world.channel, world.alice, f'{fake_discord.bot_user.mention} hello')
    mentioned = await asyncio.wait_for(bot.seen_messages.get(), OUTCOME_TIMEOUT)

    assert (hidden.author.id, hidden.content) == (world.alice.id, '')
    assert mentioned.content.endswith('hello')


async def test_command_errors_logged_by_discord_py_are_caught(fake_discord, world, bot, discord_error_log):
    fake_discord.interaction_deadline = 0.2
    interaction = await fake_discord.invoke_command(world.channel, world.alice, 'broken')

    with pytest.raises(InteractionFailed):
        await interaction.wait_response()

    assert 'the broken command broke' in discord_error_log.report()
    discord_error_log.allow('the broken command broke')
    assert discord_error_log.unexpected() == []


# --- files ----------------------------------------------------------------------------------------------


async def test_png_upload_then_edit_replaces_and_keeps_attachments(fake_discord, world, bot):
    red, green, blue = make_png(4, 3, (255, 0, 0)), make_png(8, 8, (0, 255, 0)), make_png(2, 2, (0, 0, 255))
    channel = bot.get_channel(world.channel.id)

    sent = await channel.send('preview', file=discord.File(io.BytesIO(red), 'preview.png'))
    stored = fake_discord.message(sent.id)
    assert stored.attachments[0].data == red
    assert (sent.attachments[0].width, sent.attachments[0].height) == (4, 3)

    edited = await sent.edit(content='final', attachments=[discord.File(io.BytesIO(green), 'final.png')])
    assert [attachment.filename for attachment in stored.attachments] == ['final.png']
    assert Image.open(io.BytesIO(stored.attachments[0].data)).getpixel((0, 0)) == (0, 255, 0)
    assert await edited.attachments[0].read() == green  # the URL is served by the fake

    kept_id = edited.attachments[0].id
    await edited.edit(attachments=[edited.attachments[0], discord.File(io.BytesIO(blue), 'extra.png')])
    assert [(a.id == kept_id, a.filename) for a in stored.attachments] == [(True, 'final.png'), (False, 'extra.png')]
    assert [[a.filename for a in version.attachments] for version in stored.versions] == [
        ['preview.png'], ['final.png'], ['final.png', 'extra.png']]


async def test_upload_over_the_size_limit_is_refused(fake_discord, world, bot):
    fake_discord.attachment_size_limit = 1024
    channel = bot.get_channel(world.channel.id)

    with pytest.raises(discord.HTTPException) as refused:
        await channel.send(file=discord.File(io.BytesIO(b'x' * 1025), 'big.bin'))

    assert (refused.value.status, refused.value.code) == (413, 40005)
    assert fake_discord.messages_in(world.channel) == []


# --- components and restarts ----------------------------------------------------------------------------


async def test_dynamic_button_works_after_the_bot_restarts(fake_discord, world, bot_runner):
    first_bot = await bot_runner.start(ExampleBot(world.guild.id))
    command = await fake_discord.invoke_command(world.channel, world.alice, 'imagine', prompt='a fox')
    message = await command.wait_original()

    click = await fake_discord.click_button(world.alice, message, 'job:7:reroll')
    response = await click.wait_response()
    assert (response.content, response.ephemeral, first_bot.clicks) == ('rerolling job 7', True, [7])

    await bot_runner.stop(first_bot)
    second_bot = await bot_runner.start(ExampleBot(world.guild.id))
    click = await fake_discord.click_button(world.alice, message, label='Reroll')
    response = await click.wait_response()

    assert (response.content, second_bot.clicks, first_bot.clicks) == ('rerolling job 7', [7], [7])
    assert [record.kind for record in fake_discord.gateway_records].count('identify') == 2
    assert [session.connected for session in fake_discord.gateway_sessions()] == [False, True]


async def test_modal_round_trip(fake_discord, world, bot):
    opened = await fake_discord.invoke_command(world.channel, world.alice, 'feedback')
    assert (await opened.wait_response()).modal['custom_id']

    submitted = await fake_discord.submit_modal(opened, {'feedback_text': 'lovely dreams'})

    assert (await submitted.wait_response()).content == 'thanks: lovely dreams'


async def test_entity_options_and_a_select_menu(fake_discord, world, bot):
    command = await fake_discord.invoke_command(world.channel, world.alice, 'describe',
                                                who=world.moderator, image=Upload('sketch.png', make_png(2, 2, (9, 9, 9))))
    offered = await command.wait_response()

    choice = await fake_discord.select_options(world.alice, offered.message, 'pick', ['b'])
    updated = await choice.wait_response()

    assert offered.content == f'mod sent {len(make_png(2, 2, (9, 9, 9)))} bytes'
    assert (updated.kind, updated.message.content, updated.message.components) == ('update_message', 'picked b', [])
    assert updated.message is offered.message and offered.message.edit_count == 1


def make_jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', (width, height), (200, 120, 40)).save(buffer, format='JPEG')
    return buffer.getvalue()


async def test_an_attachment_option_resolves_as_discord_sends_it_and_its_url_is_served(fake_discord, world, bot):
    photo = make_jpeg(6, 4)

    command = await fake_discord.invoke_command(world.channel, world.alice, 'describe', who=world.moderator,
                                                image=Upload('photo.jpg', photo))
    answer = await command.wait_response()

    (option_id, resolved), = command.data['resolved']['attachments'].items()
    assert {key: resolved[key] for key in ('filename', 'size', 'content_type', 'width', 'height')} == {
        'filename': 'photo.jpg', 'size': len(photo), 'content_type': 'image/jpeg', 'width': 6, 'height': 4}
    assert resolved['url'] == resolved['proxy_url'] and resolved['url'].startswith(fake_discord.base_url)
    # discord.py parsed the payload as it is and read the bytes from the fake's CDN.
    assert answer.content == f'mod sent {len(photo)} bytes'
    assert [a.id for a in command.attachments] == [int(option_id)] and fake_discord.cdn_fetches == [int(option_id)]


async def cdn_get(url: str, **options: Any) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, **options) as response:
        return response.status, response.headers, await response.read()


async def test_the_cdn_expires_links_with_403_and_with_the_clock_with_404(fake_discord, world, bot):
    sent = await bot.get_channel(world.channel.id).send(file=discord.File(io.BytesIO(b'abc'), 'a.png'))
    url = sent.attachments[0].url
    assert (await cdn_get(url))[::2] == (200, b'abc')

    fake_discord.expire_attachment_links()
    assert (await cdn_get(url))[0] == 403

    fake_discord.message(sent.id).attachments[0].cdn = CdnBehaviour()
    fake_discord.clock.advance(fake_discord.attachment_url_lifetime + 1)
    assert (await cdn_get(url))[0] == 404


@pytest.mark.parametrize('cdn, announced, received', [
    (CdnBehaviour(content_length=3), '3', b'012'),  # too small: the body is cut where the header says
    (CdnBehaviour(chunked=True), None, bytes(range(200)) * 1000),  # no length at all: every byte, in chunks
])
async def test_the_cdn_can_announce_a_wrong_length_or_none(fake_discord, world, bot, cdn, announced, received):
    data = bytes(range(200)) * 1000 if cdn.chunked else b'0123456789'
    sent = await bot.get_channel(world.channel.id).send(file=discord.File(io.BytesIO(data), 'f.bin'))
    fake_discord.message(sent.id).attachments[0].cdn = cdn

    status, headers, body = await cdn_get(sent.attachments[0].url)

    assert (status, headers.get('Content-Length'), body) == (200, announced, received)
    assert ('Transfer-Encoding' in headers) == cdn.chunked


async def test_the_cdn_can_promise_more_than_it_sends_send_it_compressed_or_send_other_bytes(fake_discord, world, bot):
    data = b'\0' * 1_000_000
    sent = await bot.get_channel(world.channel.id).send(file=discord.File(io.BytesIO(data), 'f.bin'))
    stored = fake_discord.message(sent.id).attachments[0]

    stored.cdn = CdnBehaviour(content_length=len(data) + 10)
    with pytest.raises(aiohttp.ClientPayloadError):
        await cdn_get(sent.attachments[0].url)

    stored.cdn = CdnBehaviour(gzip=True)
    status, headers, body = await cdn_get(sent.attachments[0].url)
    assert (status, headers['Content-Encoding'], body) == (200, 'gzip', data)
    assert int(headers['Content-Length']) < len(data) // 100

    # Other bytes than the attachment's (more than its payload's size said): the payload is unchanged.
    stored.cdn = CdnBehaviour(body=b'swapped behind its back')
    assert (await cdn_get(sent.attachments[0].url))[2] == b'swapped behind its back'
    assert stored.to_payload()['size'] == len(data)


async def test_direct_messages_and_users_who_block_them(fake_discord, world, bot):
    user = await bot.fetch_user(world.alice.id)

    sent = await user.send('your dream is ready')
    fake_discord.block_direct_messages(world.alice)
    with pytest.raises(discord.Forbidden) as refused:
        await user.send('another one')

    assert [m.id for m in fake_discord.messages_in(fake_discord.dm_channel(world.alice))] == [sent.id]
    assert refused.value.code == 50007


async def test_autocomplete_returns_the_bots_choices(fake_discord, world, bot):
    typing = await fake_discord.autocomplete(world.channel, world.alice, 'style', 'name', name='imp')

    response = await typing.wait_response()

    assert response.kind == 'autocomplete'
    assert [choice['value'] for choice in response.choices] == ['impressionist', 'impasto']


# --- Discord's rules ------------------------------------------------------------------------------------


async def test_missing_the_first_response_deadline_gives_10062(fake_discord, world, bot):
    fake_discord.interaction_deadline = 0.2
    interaction = await fake_discord.invoke_command(world.channel, world.alice, 'stall')

    with pytest.raises(InteractionFailed):
        await interaction.wait_response()
    bot.release.set()
    error = await bot.next_outcome()

    assert isinstance(error, discord.NotFound) and error.code == 10062
    assert [rejected.code for rejected in interaction.rejected] == [10062]


async def test_followup_after_token_expiry_gives_50027(fake_discord, world, bot):
    interaction = await fake_discord.invoke_command(world.channel, world.alice, 'slowdream')
    assert (await interaction.wait_response()).deferred

    fake_discord.clock.advance(15 * 60 + 1)
    bot.release.set()
    error = await bot.next_outcome()

    assert (error.status, error.code) == (401, 50027)


async def test_double_acknowledgement_and_followup_before_acknowledgement(fake_discord, world, bot):
    interaction = await fake_discord.invoke_command(world.channel, world.alice, 'stall')
    base = fake_discord.api_base
    async with aiohttp.ClientSession() as session:
        async with session.post(f'{base}/webhooks/{fake_discord.application_id}/{interaction.token}?wait=1',
                                json={'content': 'too early'}) as early:
            assert (early.status, (await early.json())['code']) == (404, 10015)
        async with session.post(f'{base}/interactions/{interaction.id}/{interaction.token}/callback?with_response=1',
                                json={'type': 4, 'data': {'content': 'someone else answered'}}) as first:
            assert first.status == 200 and first.headers['Content-Type'] == 'application/json'

    bot.release.set()
    error = await bot.next_outcome()

    assert (error.status, error.code) == (400, 40060)


async def test_429_is_retried_after_retry_after(fake_discord, world, bot):
    path = f'/channels/{world.channel.id}/messages'
    rule = fake_discord.rate_limit_next(path, retry_after=0.05)
    callback_rule = fake_discord.rate_limit_next('/callback', retry_after=0.05)

    await bot.get_channel(world.channel.id).send('after a 429')
    interaction = await fake_discord.invoke_command(world.channel, world.alice, 'ping')
    response = await interaction.wait_response()

    attempts = fake_discord.requests_matching('POST', path)
    assert [record.status for record in attempts] == [429, 200]
    assert attempts[1].monotonic - attempts[0].monotonic >= 0.05
    assert (rule.hits, callback_rule.hits, response.content) == (1, 1, 'pong')
    assert [m.content for m in fake_discord.messages_in(world.channel)] == ['after a 429', 'pong']


async def test_editing_a_deleted_message_gives_10008(fake_discord, world, bot):
    sent = await bot.get_channel(world.channel.id).send('progress 10%')

    fake_discord.delete_message(world.channel, sent.id)
    deleted = await asyncio.wait_for(bot.raw_deletes.get(), OUTCOME_TIMEOUT)
    with pytest.raises(discord.NotFound) as refused:
        await sent.edit(content='progress 20%')

    assert deleted.message_id == sent.id
    assert refused.value.code == 10008
    assert [version.kind for version in fake_discord.message(sent.id).versions] == ['create', 'delete']


async def test_default_member_permissions_hide_moderator_commands(fake_discord, world, bot):
    assert 'admin' not in fake_discord.visible_commands(world.alice, world.channel)
    assert 'admin' in fake_discord.visible_commands(world.moderator, world.channel)
    with pytest.raises(CommandNotVisible):
        await fake_discord.invoke_command(world.channel, world.alice, 'admin queue clear', confirm=True)

    interaction = await fake_discord.invoke_command(world.channel, world.moderator, 'admin queue clear', confirm=True)
    response = await interaction.wait_response()

    assert (response.content, response.ephemeral) == ('queue cleared (confirm=True)', True)
    assert interaction.data['options'][0]['type'] == 2  # a subcommand group wrapping the subcommand


async def test_integrations_overwrites_replace_default_member_permissions(fake_discord, world, bot):
    helpers = fake_discord.add_role(world.guild, 'helpers')
    bob = fake_discord.add_member(world.guild, 'bob', roles=[helpers])

    fake_discord.set_command_permissions(world.guild, 'admin', {helpers: True, world.moderator: False})

    # Allowed through a role although bob lacks Manage Server; the moderator's own deny beats his permission.
    assert 'admin' in fake_discord.visible_commands(bob, world.channel)
    assert 'admin' not in fake_discord.visible_commands(world.moderator, world.channel)
    assert 'admin' not in fake_discord.visible_commands(world.alice, world.channel)
    interaction = await fake_discord.invoke_command(world.channel, bob, 'admin queue clear', confirm=False)
    assert (await interaction.wait_response()).content == 'queue cleared (confirm=False)'
    # The interaction still carries bob's real permissions, so a bot can check them itself.
    assert not int(interaction.payload['member']['permissions']) & Permission.MANAGE_GUILD

    fake_discord.set_command_permissions(world.guild, 'admin', {world.guild: True})
    assert 'admin' in fake_discord.visible_commands(world.alice, world.channel)
    fake_discord.set_command_permissions(world.guild, 'admin', {})
    assert 'admin' not in fake_discord.visible_commands(world.alice, world.channel)


async def test_overlong_content_is_refused(fake_discord, world, bot):
    channel = bot.get_channel(world.channel.id)

    with pytest.raises(discord.HTTPException) as refused:
        await channel.send('x' * 2001)
    await channel.send('x' * 2000)

    assert (refused.value.status, refused.value.code) == (400, 50035)
    assert 'content' in refused.value.text
    assert [len(m.content) for m in fake_discord.messages_in(world.channel)] == [2000]


@pytest.mark.parametrize('components, field', [
    ([{'type': 1, 'components': [{'type': 2, 'style': 1, 'label': str(i), 'custom_id': f'b{i}'} for i in range(6)]}],
     'components.0.components'),
    ([{'type': 1, 'components': [{'type': 2, 'style': 1, 'label': 'x', 'custom_id': f'r{i}'}]} for i in range(6)],
     'components'),
    ([{'type': 1, 'components': [{'type': 2, 'style': 1, 'label': 'x', 'custom_id': 'c' * 101}]}],
     'components.0.components.0.custom_id'),
])
async def test_component_limits_are_enforced(fake_discord, world, bot, components, field):
    route = Route('POST', '/channels/{channel_id}/messages', channel_id=world.channel.id)

    with pytest.raises(discord.HTTPException) as refused:
        await bot.http.request(route, json={'content': 'buttons', 'components': components})

    assert refused.value.code == 50035
    assert field in refused.value.text


async def test_channel_permissions_and_unknown_channels(fake_discord, world, bot):
    read_only = fake_discord.add_channel(world.guild, 'announcements', bot_can_post=False)
    gone = fake_discord.add_channel(world.guild, 'old')
    fake_discord.delete_channel(gone)

    with pytest.raises(discord.Forbidden) as forbidden:
        await bot.get_partial_messageable(read_only.id).send('hello')
    with pytest.raises(discord.NotFound) as unknown:
        await bot.get_partial_messageable(gone.id).send('hello')
    with pytest.raises(discord.NotFound) as no_route:
        await bot.http.request(Route('GET', '/no/such/route'))

    assert (forbidden.value.code, unknown.value.code, no_route.value.status) == (50013, 10003, 404)


async def test_allowed_mentions_are_recorded_and_applied(fake_discord, world, bot):
    channel = bot.get_channel(world.channel.id)
    text = f'{world.alice.mention} @everyone look'

    quiet = await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
    loud = await channel.send(text)

    quiet_stored, loud_stored = fake_discord.message(quiet.id), fake_discord.message(loud.id)
    assert quiet_stored.allowed_mentions == {'parse': []}
    assert (quiet_stored.mentioned_user_ids, quiet_stored.mention_everyone) == ([], False)
    assert loud_stored.allowed_mentions is None and loud_stored.mentioned_user_ids == [world.alice.id]


# --- gateway --------------------------------------------------------------------------------------------


async def test_events_missed_during_a_reconnect_are_replayed_on_resume(fake_discord, world, bot):
    sent = await bot.get_channel(world.channel.id).send('will vanish')
    checkpoint = fake_discord.checkpoint()

    await fake_discord.drop_gateway_connections()
    fake_discord.delete_message(world.channel, sent.id)
    await fake_discord.wait_for_gateway('resumed', after=checkpoint)
    deleted = await asyncio.wait_for(bot.raw_deletes.get(), OUTCOME_TIMEOUT)

    assert deleted.message_id == sent.id
    assert [r.kind for r in fake_discord.gateway_records[checkpoint.gateway:]].count('identify') == 0
    interaction = await fake_discord.invoke_command(world.channel, world.alice, 'ping')
    assert (await interaction.wait_response()).content == 'pong'


async def test_wait_for_message_sees_only_later_messages(fake_discord, world, bot):
    channel = bot.get_channel(world.channel.id)
    await channel.send('old news')
    checkpoint = fake_discord.checkpoint()

    waiter = asyncio.ensure_future(fake_discord.wait_for_message(world.channel, after=checkpoint))
    await channel.send('fresh news')

    assert (await waiter).content == 'fresh news'
