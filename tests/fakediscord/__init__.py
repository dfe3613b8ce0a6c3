"""A fake Discord for end-to-end tests: the real, unmodified discord.py talks to it over 127.0.0.1.

One aiohttp server answers REST under ``/api/v10`` and runs the gateway websocket at ``/gateway``. It
enforces the Discord rules a bot is most likely to break, answering with Discord's own status codes and
``{"code", "message"}`` bodies, and it records everything for assertions. The fake, the bot and the test
share one event loop, so a test may also call the bot's own objects (``bot.get_channel(id).send(...)``).

Fixtures (``tests/fakediscord/fixtures.py``, loaded by ``tests/conftest.py``)
-----------------------------------------------------------------------------
- ``fake_discord``: a started ``FakeDiscord``; ``discord.http.Route.BASE`` and
  ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` point at it for the test's duration.
- ``bot_runner``: ``await bot_runner.start(bot)`` logs in with ``fake_discord.token`` (running
  ``setup_hook``, e.g. command sync) and returns once ``on_ready`` fired; ``await bot_runner.stop(bot)``
  closes it. Bots still running are closed at teardown, before the fake stops.
- ``discord_error_log``: fails the test if the ``discord`` logger logged ERROR (discord.py logs command
  and view errors instead of raising them); ``discord_error_log.allow('text' or predicate)`` accepts
  expected ones, ``.records`` / ``.unexpected()`` / ``.report()`` inspect them.
Create bots with ``guild_ready_timeout=0.01``, or ``on_ready`` comes 2 s late.

Building the world (plain methods)
----------------------------------
- ``guild = fake.add_guild(name, everyone_permissions=..., bot_permissions=..., shard=None)``; ``guild.owner``.
  Guilds alternate over shards in creation order (the k-th is on shard k % n, for n up to 16);
  ``shard=(1, 2)`` puts one on shard 1 of 2. ``fake.shard_of(guild, shard_count)`` says which shard owns it.
- ``channel = fake.add_channel(guild, name, bot_can_post=True, bot_can_view=True, nsfw=False)``.
- ``member = fake.add_member(guild, name, permissions=Permission.MANAGE_GUILD, roles=[role])``.
- ``role = fake.add_role(guild, name, permissions=...)``; ``fake.assign_role(member, role)``, ``remove_role``.
- ``fake.set_bot_can_post(channel, False)``, ``fake.set_channel_overwrite(channel, member_or_role, allow=, deny=)``,
  ``fake.delete_channel(channel)``, ``fake.block_direct_messages(member)``, ``fake.permissions_in(member, channel)``.
- ``fake.set_command_permissions(guild, 'settings', {member_or_role_or_guild: True/False})``: an admin's
  per-command overwrites (Server Settings > Integrations); they replace ``default_member_permissions``.
Permission values may be ints, ``Permission`` flags or ``discord.Permissions``. Changes made while a bot
is connected are dispatched on the gateway (CHANNEL_CREATE, GUILD_MEMBER_ADD, ...).

Acting as users (coroutines returning a ``FakeInteraction``)
-------------------------------------------------------------
- ``await fake.invoke_command(channel, member, 'imagine', prompt='a cat')``: subcommands by path
  (``'queue clear'``); options as keywords or a dict passed positionally. USER/CHANNEL/ROLE options take
  fake objects, ATTACHMENT options take ``Upload(filename, data)``. Raises ``CommandNotVisible`` where
  Discord would hide the command (``default_member_permissions``, channel permissions, contexts, nsfw),
  ``CommandNotFound`` for unsynced names, ``ValueError``/``TypeError`` for options Discord's client refuses.
- ``await fake.autocomplete(channel, member, 'imagine', 'style', style='imp')`` (focused option, partial text).
- ``await fake.click_button(member, message, custom_id)`` or ``label=...``;
  ``await fake.select_options(member, message, custom_id, ['a'])``;
  ``await fake.submit_modal(interaction_that_opened_it, {'field_custom_id': 'text'})``.
Other user and moderator actions: ``await fake.post_user_message(channel, member, 'hi')``,
``fake.add_user_reaction(message, member, '👍')``, ``fake.delete_message(channel, message)`` (ids or
objects; later edits get 10008 and MESSAGE_DELETE is dispatched).

``FakeInteraction`` (``id``, ``token``, ``payload``, ``data``, ``member``, ``channel``, ``response``,
``original_message``, ``followups``, ``rejected``):
``await i.wait_response()`` -> ``InteractionResponse`` (``type``, ``kind`` in 'message',
'deferred_message', 'deferred_update', 'update_message', 'autocomplete', 'modal'; ``content``,
``ephemeral``, ``embeds``, ``components``, ``choices``, ``modal``, ``message``, ``deferred``), or raises
``InteractionFailed`` once the deadline passed without one; ``await i.wait_original(pred)`` (default: no
longer "thinking"), ``await i.wait_followup(pred)``, ``await i.wait_message(pred)``. As on Discord, the
first followup after a thinking defer fills the deferred message (it appears in both places).

Observing
---------
- ``fake.messages_in(channel, include_ephemeral=False, include_deleted=False)``, ``fake.message(id)``:
  ``FakeMessage`` with ``content``, ``embeds``, ``components`` (``buttons()``, ``custom_ids()``,
  ``find_component()``), ``attachments`` (``FakeAttachment.data`` holds the bytes, ``dimensions`` for pictures;
  its URL is served by the fake's CDN route and expires after ``fake.attachment_url_lifetime`` on the fake
  clock),
  ``allowed_mentions``, ``mentioned_user_ids``, ``mention_everyone``, ``ephemeral``, ``loading``,
  ``deleted``, ``versions`` (``MessageVersion`` per create/edit/delete with fake-clock ``at`` and ``source``),
  ``edit_count``, ``edit_times``.
- ``fake.requests`` / ``fake.requests_matching(method, path_contains, route=, status=)``: ``RequestRecord``
  (``method``, ``path``, ``route`` template, ``status``, ``error_code``, ``at``, ``monotonic``, ``json``, ``files``).
- ``fake.commands(guild=None)``, ``fake.command(name, guild)``, ``fake.visible_commands(member, channel)``.
- ``fake.gateway_records`` (``GatewayRecord``: identify, ready, resume, resumed, dispatch, closed, ...; each
  with ``shard`` = (shard_id, shard_count) or None, ``shard_id``, and ``guild_id`` for dispatches),
  ``fake.gateway_sessions()`` (``session.shard``, ``session.connected``),
  ``fake.dispatches(event=None, shard_id=None, guild=None)``: which shard received which dispatch.
- Waits, woken by every change (no polling), raising ``FakeDiscordTimeout``: ``await fake.wait_for(fn)``
  returns ``fn()``'s first truthy value; ``wait_for_message(channel, pred, after=fake.checkpoint())``,
  ``wait_for_message_update(message, pred)``, ``wait_for_request(method, path_contains, status=, after=)``,
  ``wait_for_gateway('resumed', after=)``.

Failure injection and time
--------------------------
The CDN (``/attachments/...``, the URLs in attachment payloads): ``fake.cdn_fetches`` lists the attachment ids
it was asked for; ``Upload(name, data, cdn=CdnBehaviour(...))`` serves one file another way: ``status=403`` (an
expired or revoked link), ``content_length=N`` (a wrong Content-Length), ``chunked=True`` (none at all),
``gzip=True`` (compressed: the announced length is far below what a client unpacks), ``body=...`` (other bytes
than the attachment's: more than its payload's ``size`` said);
``fake.expire_attachment_links(403)`` expires every link handed out so far; ``interaction.attachments`` are the
``FakeAttachment`` objects of a command's ATTACHMENT options (set ``.cdn`` on one to change it later).

``fake.rate_limit_next(path_contains, retry_after=0.5, count=1, method=None, is_global=False)`` answers
429 as Discord does; ``fake.clock.advance(seconds)`` (15 minutes expires interaction tokens: 50027);
``fake.interaction_deadline`` (3.0: set 0.2 to test the 3 s rule quickly); ``fake.attachment_size_limit``
(10 MiB, also sent in interaction payloads); ``fake.enabled_privileged_intents``;
``await fake.request_reconnect()`` (op 7) and ``await fake.drop_gateway_connections()`` (then RESUME).

Sharding (as Discord does it; see gateway.py)
---------------------------------------------
IDENTIFY may carry ``shard: [shard_id, shard_count]``; that session gets only its shard's guilds (READY's
list, GUILD_CREATE, every guild event and interaction: shard ``(guild_id >> 22) % shard_count``) and direct
messages go to shard 0. Unsharded clients get everything, as before. Knobs: ``fake.recommended_shards`` (1,
``shards`` of ``GET /gateway/bot``, which discord.py's ``AutoShardedClient(shard_count=None)`` uses),
``fake.max_concurrency`` (16) and ``fake.session_start_total`` (1000) for its ``session_start_limit``
(``remaining`` drops by one per IDENTIFY); ``fake.sharding_required`` (False: when True an IDENTIFY without
shards, or with 1, is closed with 4011); an invalid shard or a count that disagrees with connected shards is
closed with 4010; ``fake.enforce_identify_concurrency`` (False: when True a second IDENTIFY in a bucket
``shard_id % max_concurrency`` within 5 s gets op 9). discord.py 2.7.1 ignores max_concurrency and waits 5 s
before each IDENTIFY but the first (``Client.before_identify_hook``): override that hook in sharded test bots.

Example::

    async def test_ping(fake_discord, bot_runner):
        guild = fake_discord.add_guild('Dreamers')
        channel = fake_discord.add_channel(guild, 'art')
        alice = fake_discord.add_member(guild, 'alice')
        await bot_runner.start(MyBot(guild_ready_timeout=0.01))
        interaction = await fake_discord.invoke_command(channel, alice, 'ping')
        response = await interaction.wait_response()
        assert response.kind == 'message' and response.content == 'pong'
"""

from .clock import FakeClock
from .errors import (
    CommandNotFound,
    CommandNotVisible,
    ComponentNotFound,
    FakeDiscordError,
    FakeDiscordTimeout,
    InteractionFailed,
)
from .gateway import GatewayRecord
from .interactions import FakeInteraction, InteractionResponse, RejectedCallback
from .models import (
    CdnBehaviour,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    MessageVersion,
    Upload,
)
from .permissions import Permission
from .rest import RateLimitRule, RequestRecord
from .server import Checkpoint, FakeDiscord

__all__ = [
    'CdnBehaviour',
    'Checkpoint',
    'CommandNotFound',
    'CommandNotVisible',
    'ComponentNotFound',
    'FakeAttachment',
    'FakeChannel',
    'FakeClock',
    'FakeDiscord',
    'FakeDiscordError',
    'FakeDiscordTimeout',
    'FakeGuild',
    'FakeInteraction',
    'FakeMember',
    'FakeMessage',
    'FakeRole',
    'FakeUser',
    'GatewayRecord',
    'InteractionFailed',
    'InteractionResponse',
    'MessageVersion',
    'Permission',
    'RateLimitRule',
    'RejectedCallback',
    'RequestRecord',
    'Upload',
]
