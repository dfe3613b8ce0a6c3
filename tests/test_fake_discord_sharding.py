"""The fake Discord speaks sharded IDENTIFY as Discord does, tested with discord.py's AutoShardedClient."""

from __future__ import annotations

import asyncio
import json
import types
from typing import Any, Dict, List, Optional

import aiohttp
import discord
import pytest
from discord.ext import commands
from fakediscord import FakeDiscord

# discord.py 2.7.1 waits 5 s before every IDENTIFY but the first (Client.before_identify_hook) and never reads
# max_concurrency; a sharded client that did not override the hook would take this long to be ready.
DEFAULT_IDENTIFY_WAIT = 5.0


class NoIdentifyWait:
    """Identify every shard at once. The fake reports max_concurrency 16, so shards 0 and 1 are in separate
    rate-limit buckets (shard_id % max_concurrency) and Discord would accept both IDENTIFYs together."""

    async def before_identify_hook(self, shard_id: Optional[int], *, initial: bool = False) -> None:
        return None


class ShardedClient(NoIdentifyWait, discord.AutoShardedClient):
    def __init__(self, shard_count: Optional[int]) -> None:
        super().__init__(intents=discord.Intents.default(), shard_count=shard_count, guild_ready_timeout=0.01)
        self.ready_shards: List[int] = []
        self.available_guilds: List[discord.Guild] = []
        self.joined_guilds: List[discord.Guild] = []

    async def on_shard_ready(self, shard_id: int) -> None:
        self.ready_shards.append(shard_id)

    async def on_guild_available(self, guild: discord.Guild) -> None:
        self.available_guilds.append(guild)

    async def on_guild_join(self, guild: discord.Guild) -> None:
        self.joined_guilds.append(guild)


class WhereButton(discord.ui.DynamicItem[discord.ui.Button], template=r'where:again'):
    def __init__(self) -> None:
        super().__init__(discord.ui.Button(label='Again', custom_id='where:again'))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: Any) -> 'WhereButton':
        return cls()

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f'clicked on shard {interaction.guild.shard_id}', ephemeral=True)


class ShardedBot(NoIdentifyWait, commands.AutoShardedBot):
    def __init__(self, shard_count: Optional[int]) -> None:
        super().__init__(command_prefix='!', intents=discord.Intents.default(), shard_count=shard_count,
                         guild_ready_timeout=0.01)

    async def setup_hook(self) -> None:
        @self.tree.command(description='Says which shard serves this server')
        async def where(interaction: discord.Interaction) -> None:
            view = discord.ui.View(timeout=None)
            view.add_item(WhereButton())
            await interaction.response.send_message(f'shard {interaction.guild.shard_id}', view=view)

        self.add_dynamic_items(WhereButton)
        await self.tree.sync()


class GatewayClient:
    """A bare websocket client, for IDENTIFY payloads discord.py would never send."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake

    async def __aenter__(self) -> 'GatewayClient':
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.fake.gateway_url)
        hello = await self.ws.receive_json(timeout=5)
        assert hello['op'] == 10
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.ws.close()
        await self.session.close()

    async def send_identify(self, **extra: Any) -> None:
        await self.ws.send_json({'op': 2, 'd': {'token': self.fake.token, 'intents': 1, 'properties': {}, **extra}})

    async def identify(self, **extra: Any) -> Dict[str, Any]:
        """IDENTIFY and return READY's data."""
        await self.send_identify(**extra)
        frame = await self.next_frame()
        assert frame.get('t') == 'READY', frame
        return frame['d']

    async def next_frame(self) -> Dict[str, Any]:
        message = await self.ws.receive(timeout=5)
        if message.type != aiohttp.WSMsgType.TEXT:
            return {'closed': self.ws.close_code}
        return json.loads(message.data)


@pytest.fixture
def world(fake_discord: FakeDiscord) -> types.SimpleNamespace:
    """Four servers: with 2 shards, the first and third land on shard 0, the others on shard 1."""
    guilds = [fake_discord.add_guild(f'server {index}') for index in range(4)]
    return types.SimpleNamespace(
        guilds=guilds,
        channels=[fake_discord.add_channel(guild, 'art') for guild in guilds],
        members=[fake_discord.add_member(guild, 'alice') for guild in guilds],
    )


# --- where guilds land ----------------------------------------------------------------------------------


async def test_guilds_alternate_over_shards_in_creation_order(fake_discord):
    guilds = [fake_discord.add_guild(f'server {index}') for index in range(6)]

    assert [fake_discord.shard_of(guild, 2) for guild in guilds] == [0, 1, 0, 1, 0, 1]
    assert [fake_discord.shard_of(guild, 3) for guild in guilds] == [0, 1, 2, 0, 1, 2]
    assert [fake_discord.shard_of(guild, 16) for guild in guilds] == [0, 1, 2, 3, 4, 5]
    assert len({guild.id for guild in guilds}) == 6


async def test_add_guild_on_a_chosen_shard(fake_discord):
    first = fake_discord.add_guild('first', shard=(1, 2))
    second = fake_discord.add_guild('second', shard=(1, 2))
    third = fake_discord.add_guild('third', shard=(2, 4))

    assert [fake_discord.shard_of(first, 2), fake_discord.shard_of(second, 2), fake_discord.shard_of(third, 4)] == [1, 1, 2]
    assert first.id != second.id
    with pytest.raises(ValueError):
        fake_discord.add_guild('nowhere', shard=(2, 2))
    assert len(fake_discord.guilds) == 3


# --- GET /gateway/bot -----------------------------------------------------------------------------------


async def test_gateway_bot_reports_recommended_shards_and_session_start_limit(fake_discord, world, bot_runner):
    fake_discord.recommended_shards = 2
    fake_discord.max_concurrency = 4
    client = await bot_runner.start(ShardedClient(shard_count=2))

    shards, url, limits = await client.http.get_bot_gateway()
    session_limits = await client.fetch_session_start_limits()

    assert (shards, url) == (2, fake_discord.gateway_url)
    assert limits['total'] == 1000 and limits['remaining'] == 1000 - 2  # one start per shard's IDENTIFY
    assert limits['max_concurrency'] == session_limits.max_concurrency == 4
    assert limits['reset_after'] > 0


# --- a 2-shard client end to end ------------------------------------------------------------------------


# shard_count=None is discord.py's auto mode: it asks GET /gateway/bot, which recommends 2 here.
@pytest.mark.parametrize('shard_count', [2, None], ids=['two-shards', 'auto'])
async def test_sharded_client_gets_each_guild_once_on_its_own_shard(fake_discord, world, bot_runner, shard_count):
    fake_discord.recommended_shards = 2
    client = await bot_runner.start(ShardedClient(shard_count), timeout=DEFAULT_IDENTIFY_WAIT - 1)

    assert client.shard_count == 2
    assert sorted(client.ready_shards) == [0, 1]
    assert bool(fake_discord.requests_matching('GET', '/gateway/bot')) == (shard_count is None)
    identified = [record.shard for record in fake_discord.gateway_records if record.kind == 'identify']
    assert sorted(identified) == [(0, 2), (1, 2)]
    sessions = {session.shard: session for session in fake_discord.gateway_sessions()}
    assert set(sessions) == {(0, 2), (1, 2)} and all(session.connected for session in sessions.values())

    # Each guild arrives once, through the shard Discord assigns it, and discord.py agrees on the shard.
    assert sorted(guild.id for guild in client.available_guilds) == sorted(guild.id for guild in world.guilds)
    for guild in world.guilds:
        owner = fake_discord.shard_of(guild, 2)
        assert [record.shard_id for record in fake_discord.dispatches('GUILD_CREATE', guild=guild)] == [owner]
        assert client.get_guild(guild.id).shard_id == owner
    assert [fake_discord.shard_of(guild, 2) for guild in world.guilds] == [0, 1, 0, 1]


async def test_ready_lists_only_the_guilds_of_its_shard(fake_discord, world):
    ready = {}
    for shard_id in (0, 1):
        async with GatewayClient(fake_discord) as gateway:
            ready[shard_id] = await gateway.identify(shard=[shard_id, 2])

    assert ready[0]['shard'] == [0, 2] and ready[1]['shard'] == [1, 2]
    assert [int(stub['id']) for stub in ready[0]['guilds']] == [world.guilds[0].id, world.guilds[2].id]
    assert [int(stub['id']) for stub in ready[1]['guilds']] == [world.guilds[1].id, world.guilds[3].id]


async def test_guild_events_go_only_to_the_owning_shard(fake_discord, world, bot_runner):
    client = await bot_runner.start(ShardedClient(shard_count=2))
    checkpoint = fake_discord.checkpoint()
    # discord.py's wait_for registers its listener at once, so none of these events can be missed.
    seen = asyncio.gather(*(client.wait_for(event, timeout=5) for event in ('guild_channel_create', 'guild_role_create', 'guild_join')))

    channel = fake_discord.add_channel(world.guilds[1], 'news')
    fake_discord.add_role(world.guilds[2], 'painters')
    joined = fake_discord.add_guild('late server')
    await seen

    later = [record for record in fake_discord.gateway_records[checkpoint.gateway:] if record.kind == 'dispatch']
    assert [(record.event, record.shard_id) for record in later] == [
        ('CHANNEL_CREATE', 1), ('GUILD_ROLE_CREATE', 0), ('GUILD_CREATE', fake_discord.shard_of(joined, 2))]
    assert [guild.id for guild in client.joined_guilds] == [joined.id]
    assert client.get_channel(channel.id).guild.shard_id == 1


async def test_direct_messages_go_to_shard_zero(fake_discord, world, bot_runner):
    await bot_runner.start(ShardedClient(shard_count=2))
    alice = world.members[1]  # a member of a guild on shard 1

    message = await fake_discord.post_user_message(fake_discord.dm_channel(alice), alice, 'hello bot')

    created = fake_discord.dispatches('MESSAGE_CREATE')
    assert [(record.shard_id, record.guild_id) for record in created] == [(0, None)]
    assert message.guild_id is None


@pytest.mark.parametrize('shard_count', [2, None], ids=['two-shards', 'auto'])
async def test_slash_command_and_button_reach_the_bot_through_the_guilds_shard(fake_discord, world, bot_runner, shard_count):
    fake_discord.recommended_shards = 2
    await bot_runner.start(ShardedBot(shard_count), timeout=DEFAULT_IDENTIFY_WAIT - 1)

    for guild, channel, member in zip(world.guilds[:2], world.channels, world.members):
        owner = fake_discord.shard_of(guild, 2)
        command = await fake_discord.invoke_command(channel, member, 'where')
        response = await command.wait_response()
        click = await fake_discord.click_button(member, response.message, 'where:again')
        clicked = await click.wait_response()

        assert (response.content, clicked.content) == (f'shard {owner}', f'clicked on shard {owner}')
        delivered = fake_discord.dispatches('INTERACTION_CREATE', guild=guild)
        assert [record.shard_id for record in delivered] == [owner, owner]
    assert [fake_discord.shard_of(guild, 2) for guild in world.guilds[:2]] == [0, 1]


# --- what Discord refuses -------------------------------------------------------------------------------


@pytest.mark.parametrize('shard', [[2, 2], [0, 0], [-1, 2], [0], '0,2', [True, 2]])
async def test_an_invalid_shard_is_closed_with_4010(fake_discord, world, shard):
    async with GatewayClient(fake_discord) as gateway:
        await gateway.send_identify(shard=shard)
        assert await gateway.next_frame() == {'closed': 4010}

    assert fake_discord.gateway_sessions() == []


async def test_a_shard_count_that_disagrees_with_connected_shards_gets_4010(fake_discord, world, bot_runner):
    two_shards = await bot_runner.start(ShardedClient(shard_count=2))

    with pytest.raises(discord.ConnectionClosed) as closed:
        await bot_runner.start(ShardedClient(shard_count=3))

    assert closed.value.code == 4010
    assert sorted(session.shard for session in fake_discord.gateway_sessions()) == [(0, 2), (1, 2)]
    assert not two_shards.is_closed()

    # Once the 2-shard client is gone, a 3-shard one may connect.
    await bot_runner.stop(two_shards)
    three_shards = await bot_runner.start(ShardedClient(shard_count=3))
    assert sorted(three_shards.ready_shards) == [0, 1, 2]


@pytest.mark.parametrize('client_factory', [
    lambda: discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.01),
    lambda: ShardedClient(shard_count=1),
], ids=['unsharded', 'one-shard'])
async def test_sharding_required_refuses_unsharded_identify_with_4011(fake_discord, world, bot_runner, client_factory):
    fake_discord.sharding_required = True

    with pytest.raises(discord.ConnectionClosed) as closed:
        await bot_runner.start(client_factory())

    assert closed.value.code == 4011
    sharded = await bot_runner.start(ShardedClient(shard_count=2))
    assert sorted(sharded.ready_shards) == [0, 1]


async def test_identify_pacing_per_bucket_is_enforced_when_asked(fake_discord, world):
    fake_discord.enforce_identify_concurrency = True
    fake_discord.max_concurrency = 2

    async with GatewayClient(fake_discord) as shard_0, GatewayClient(fake_discord) as shard_1:
        await shard_0.identify(shard=[0, 4])
        await shard_1.identify(shard=[1, 4])  # another bucket: accepted at once
    async with GatewayClient(fake_discord) as shard_2:
        await shard_2.send_identify(shard=[2, 4])  # bucket 0 again within 5 s
        refused = await shard_2.next_frame()

    assert refused == {'op': 9, 'd': False}
    assert [record.kind for record in fake_discord.gateway_records].count('invalid_session') == 1
