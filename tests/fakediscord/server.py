"""``FakeDiscord``: the server, the world tests build, the triggers tests pull, and the rules it enforces."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from aiohttp import web

from . import errors, rules, sharding
from .clock import FakeClock
from .errors import (
    CommandNotFound,
    CommandNotVisible,
    ComponentNotFound,
    DiscordAPIError,
    FakeDiscordTimeout,
)
from .gateway import (
    INTENT_GUILD_MEMBERS,
    PRIVILEGED_INTENTS,
    Gateway,
    GatewayRecord,
    GatewaySession,
)
from .interactions import (
    ALLOWED_RESPONSES,
    INTERACTION_APPLICATION_COMMAND,
    INTERACTION_AUTOCOMPLETE,
    INTERACTION_MESSAGE_COMPONENT,
    INTERACTION_MODAL_SUBMIT,
    RESPONSE_AUTOCOMPLETE_RESULT,
    RESPONSE_CHANNEL_MESSAGE,
    RESPONSE_DEFERRED_CHANNEL_MESSAGE,
    RESPONSE_DEFERRED_UPDATE_MESSAGE,
    RESPONSE_MODAL,
    RESPONSE_UPDATE_MESSAGE,
    FakeInteraction,
    InteractionResponse,
    RejectedCallback,
)
from .models import (
    CHANNEL_TYPE_DM,
    MESSAGE_FLAG_COMPONENTS_V2,
    MESSAGE_FLAG_EPHEMERAL,
    MESSAGE_FLAG_LOADING,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    MessageVersion,
    PermissionOverwrite,
    Upload,
    iso_timestamp,
    walk_components,
)
from .permissions import (
    ALL_PERMISSIONS,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    Permission,
    PermissionsLike,
    apply_overwrites,
    as_bits,
    has_all,
)
from .rest import API_PREFIX, IncomingFile, RateLimitRule, RequestRecord, RestApi, build_middleware
from .sharding import DISCORD_EPOCH_MS, Shard

T = TypeVar('T')
MESSAGE_TYPE_DEFAULT = 0
MESSAGE_TYPE_CHAT_INPUT_COMMAND = 20
# Flags a bot may set on a message it sends; Discord ignores or refuses the rest.
SENDABLE_MESSAGE_FLAGS = (1 << 2) | MESSAGE_FLAG_EPHEMERAL | (1 << 12) | MESSAGE_FLAG_COMPONENTS_V2
SUPPRESS_EMBEDS = 1 << 2

ChannelRef = Union[FakeChannel, int]
MessageRef = Union[FakeMessage, int]
GuildRef = Union[FakeGuild, int]


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Positions in the fake's logs; pass as ``after=`` to wait only for what happens later."""

    messages: int
    requests: int
    gateway: int


def _id_of(value: Any) -> int:
    return value if isinstance(value, int) else value.id


class FakeDiscord:
    """A Discord stand-in for discord.py: REST under ``/api/v10`` and a gateway at ``/gateway`` on one port.

    See the package docstring for the test-facing API.
    """

    def __init__(
        self,
        *,
        token: str = 'fake-discord-bot-token',
        bot_name: str = 'BigSleep',
        host: str = '127.0.0.1',
        port: int = 0,
        interaction_deadline: float = 3.0,
        token_lifetime: float = 15 * 60,
        attachment_size_limit: int = 10 * 1024 * 1024,
        attachment_url_lifetime: float = 24 * 3600,
        clock: Optional[FakeClock] = None,
    ) -> None:
        self.token = token
        self.host = host
        self.port = port
        self.clock = clock or FakeClock()
        self.interaction_deadline = interaction_deadline
        self.token_lifetime = token_lifetime
        self.attachment_size_limit = attachment_size_limit
        self.attachment_url_lifetime = attachment_url_lifetime
        self.enabled_privileged_intents = PRIVILEGED_INTENTS
        # Sharding (see gateway.py): what GET /gateway/bot recommends and reports, and what IDENTIFY enforces.
        self.recommended_shards = 1
        self.max_concurrency = 16
        self.session_start_total = 1000
        self.sharding_required = False
        self.enforce_identify_concurrency = False

        self._last_snowflake = 0
        self._guild_cycle_start = sharding.guild_cycle_start(self.clock.time())
        self._next_guild_index = 0
        self.bot_user = FakeUser(id=self._snowflake(), name=bot_name, bot=True)
        self.application_id = self.bot_user.id
        self.users: Dict[int, FakeUser] = {self.bot_user.id: self.bot_user}
        self.guilds: Dict[int, FakeGuild] = {}
        self.channels: Dict[int, FakeChannel] = {}
        self.messages: Dict[int, FakeMessage] = {}
        self.attachments: Dict[int, FakeAttachment] = {}
        # The attachment ids the CDN route served (or refused), in order: who downloaded what.
        self.cdn_fetches: List[int] = []
        self.interactions: Dict[int, FakeInteraction] = {}
        self._interactions_by_token: Dict[str, FakeInteraction] = {}
        self._message_order: List[FakeMessage] = []
        self._dm_channels: Dict[int, FakeChannel] = {}
        self.global_command_store: Dict[int, Dict[str, Any]] = {}
        self.guild_command_store: Dict[int, Dict[int, Dict[str, Any]]] = {}
        # Per-guild command permission overwrites an administrator sets in Server Settings > Integrations:
        # {guild_id: {command name: {member, role or guild id (= @everyone): allowed}}}.
        self.command_permission_overwrites: Dict[int, Dict[str, Dict[int, bool]]] = {}
        self.requests: List[RequestRecord] = []
        self.rate_limits: List[RateLimitRule] = []
        self.internal_errors: List[str] = []

        self.gateway = Gateway(self)
        self._condition: Optional[asyncio.Condition] = None
        self._notify_task: Optional[asyncio.Task[None]] = None
        self._timers: List[asyncio.TimerHandle] = []
        self._runner: Optional[web.AppRunner] = None
        self.clock.on_advance(self._state_changed)

    # ==================================================================================================
    # lifecycle
    # ==================================================================================================

    async def start(self) -> 'FakeDiscord':
        self._condition = asyncio.Condition()
        app = web.Application(middlewares=[build_middleware(self)], client_max_size=64 * 1024 * 1024)
        RestApi(self).add_routes(app)
        app.router.add_route('GET', '/gateway', self.gateway.handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> 'FakeDiscord':
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f'http://{self.host}:{self.port}'

    @property
    def api_base(self) -> str:
        """The value for ``discord.http.Route.BASE``."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """The value for ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (wrap it in ``yarl.URL``)."""
        return f'ws://{self.host}:{self.port}/gateway'

    # ==================================================================================================
    # waiting without sleeping
    # ==================================================================================================

    def _state_changed(self) -> None:
        """Wake every ``wait_for``; called after each change (sync, so it schedules the notification)."""
        if self._condition is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._notify_task is None or self._notify_task.done():
            self._notify_task = loop.create_task(self._notify_waiters())

    async def _notify_waiters(self) -> None:
        assert self._condition is not None
        async with self._condition:
            self._condition.notify_all()

    def _wake_at(self, delay: float) -> None:
        """Re-check waiters after ``delay`` real seconds: deadlines pass without any request arriving."""
        loop = asyncio.get_running_loop()
        self._timers = [timer for timer in self._timers if not timer.cancelled() and timer.when() > loop.time()]
        self._timers.append(loop.call_later(max(0.0, delay), self._state_changed))

    async def wait_for(self, predicate: Callable[[], T], *, timeout: float = 5.0, description: Optional[str] = None) -> T:
        """Wait until ``predicate()`` returns something truthy and return it; re-checked on every change."""
        if self._condition is None:
            raise RuntimeError('start the fake before waiting on it')
        result: Any = None

        def check() -> bool:
            nonlocal result
            result = predicate()
            return bool(result)

        try:
            async with asyncio.timeout(timeout):
                async with self._condition:
                    await self._condition.wait_for(check)
        except TimeoutError:
            raise FakeDiscordTimeout(f'timed out after {timeout} s waiting for {description or predicate!r}') from None
        return result

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(messages=len(self._message_order), requests=len(self.requests), gateway=len(self.gateway.records))

    async def wait_for_message(
        self,
        channel: Optional[ChannelRef] = None,
        predicate: Optional[Callable[[FakeMessage], Any]] = None,
        *,
        after: Optional[Checkpoint] = None,
        include_ephemeral: bool = False,
        include_deleted: bool = False,
        timeout: float = 5.0,
    ) -> FakeMessage:
        """The first message (in creation order) in ``channel`` that matches ``predicate`` in its current state."""
        channel_id = _id_of(channel) if channel is not None else None
        check = predicate or (lambda message: True)
        start = after.messages if after is not None else 0

        def found() -> Optional[FakeMessage]:
            for message in self._message_order[start:]:
                if channel_id is not None and message.channel_id != channel_id:
                    continue
                if (message.ephemeral and not include_ephemeral) or (message.deleted and not include_deleted):
                    continue
                if check(message):
                    return message
            return None

        return await self.wait_for(found, timeout=timeout, description=f'a message in channel {channel_id}')

    async def wait_for_message_update(
        self, message: MessageRef, predicate: Callable[[FakeMessage], Any], *, timeout: float = 5.0
    ) -> FakeMessage:
        """Wait until a known message satisfies ``predicate`` (e.g. ``lambda m: m.edit_count >= 3``)."""
        stored = self._stored_message(message)
        return await self.wait_for(lambda: stored if predicate(stored) else None, timeout=timeout,
                                   description=f'message {stored.id} to change')

    async def wait_for_request(
        self,
        method: Optional[str] = None,
        path_contains: Optional[str] = None,
        *,
        status: Optional[int] = None,
        after: Optional[Checkpoint] = None,
        timeout: float = 5.0,
    ) -> RequestRecord:
        start = after.requests if after is not None else 0

        def found() -> Optional[RequestRecord]:
            return next((record for record in self.requests[start:] if self._request_matches(record, method, path_contains, None, status)), None)

        return await self.wait_for(found, timeout=timeout, description=f'a {method or ""} request to {path_contains}')

    async def wait_for_gateway(self, kind: str, *, after: Optional[Checkpoint] = None, timeout: float = 5.0) -> GatewayRecord:
        """Wait for a gateway happening such as 'identify', 'resumed' or 'closed' (see ``GatewayRecord``)."""
        start = after.gateway if after is not None else 0

        def found() -> Optional[GatewayRecord]:
            return next((record for record in self.gateway.records[start:] if record.kind == kind), None)

        return await self.wait_for(found, timeout=timeout, description=f'gateway {kind}')

    # ==================================================================================================
    # recorder queries
    # ==================================================================================================

    def _record_request(self, record: RequestRecord) -> None:
        self.requests.append(record)
        self._state_changed()

    def requests_matching(
        self,
        method: Optional[str] = None,
        path_contains: Optional[str] = None,
        *,
        route: Optional[str] = None,
        status: Optional[int] = None,
    ) -> List[RequestRecord]:
        return [record for record in self.requests if self._request_matches(record, method, path_contains, route, status)]

    @staticmethod
    def _request_matches(record: RequestRecord, method: Optional[str], path_contains: Optional[str], route: Optional[str],
                         status: Optional[int]) -> bool:
        return ((method is None or record.method == method)
                and (path_contains is None or path_contains in record.path)
                and (route is None or record.route == route)
                and (status is None or record.status == status))

    def messages_in(self, channel: ChannelRef, *, include_ephemeral: bool = False, include_deleted: bool = False) -> List[FakeMessage]:
        channel_id = _id_of(channel)
        return [
            message for message in self._message_order
            if message.channel_id == channel_id
            and (include_ephemeral or not message.ephemeral)
            and (include_deleted or not message.deleted)
        ]

    def message(self, message_id: int) -> FakeMessage:
        return self.messages[message_id]

    @property
    def gateway_records(self) -> List[GatewayRecord]:
        return self.gateway.records

    def gateway_sessions(self) -> List[GatewaySession]:
        return list(self.gateway.sessions.values())

    def dispatches(self, event: Optional[str] = None, *, shard_id: Optional[int] = None,
                   guild: Optional[GuildRef] = None) -> List[GatewayRecord]:
        """Dispatch records, optionally only of one event, one shard (None: any) or one guild."""
        guild_id = _id_of(guild) if guild is not None else None
        return [
            record for record in self.gateway.records
            if record.kind == 'dispatch'
            and (event is None or record.event == event)
            and (shard_id is None or record.shard_id == shard_id)
            and (guild_id is None or record.guild_id == guild_id)
        ]

    @staticmethod
    def shard_of(guild: GuildRef, shard_count: int) -> int:
        """The shard that owns a guild when the bot runs ``shard_count`` shards."""
        return sharding.shard_of(_id_of(guild), shard_count)

    # ==================================================================================================
    # building the world
    # ==================================================================================================

    def _snowflake(self) -> int:
        value = ((int(self.clock.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (1 << 17)
        self._last_snowflake = value = max(value, self._last_snowflake + 1)
        return value

    def add_guild(
        self,
        name: str = 'Test Guild',
        *,
        everyone_permissions: PermissionsLike = DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: PermissionsLike = DEFAULT_BOT_PERMISSIONS,
        bot_is_member: bool = True,
        shard: Optional[Shard] = None,
    ) -> FakeGuild:
        """A guild with an @everyone role, an owner member, and (by default) the bot as a member.

        Guilds alternate over shards in creation order (the k-th lands on shard k % n for n up to 16);
        ``shard=(shard_id, shard_count)`` picks the owning shard instead."""
        self._next_guild_index = sharding.guild_index_on_shard(self._next_guild_index, shard)
        guild_id = sharding.guild_snowflake(self._guild_cycle_start, self._next_guild_index)
        self._next_guild_index += 1
        owner = FakeUser(id=self._snowflake(), name=f'{name} owner')
        self.users[owner.id] = owner
        now = iso_timestamp(self.clock.time())
        guild = FakeGuild(id=guild_id, name=name, owner_id=owner.id, created_at=now)
        guild.roles[guild_id] = FakeRole(id=guild_id, guild_id=guild_id, name='@everyone', permissions=as_bits(everyone_permissions))
        guild.members[owner.id] = FakeMember(user=owner, guild=guild, role_ids=[], joined_at=now)
        if bot_is_member:
            bot_role = FakeRole(id=self._snowflake(), guild_id=guild_id, name=self.bot_user.name,
                                permissions=as_bits(bot_permissions), position=1, managed=True)
            guild.roles[bot_role.id] = bot_role
            guild.bot_role_id = bot_role.id
            guild.members[self.bot_user.id] = FakeMember(user=self.bot_user, guild=guild, role_ids=[bot_role.id], joined_at=now)
        self.guilds[guild_id] = guild
        if bot_is_member:
            for session in self.gateway.sessions_for_guild(guild.id):
                # A join's GUILD_CREATE has no 'unavailable' key (discord.py then dispatches guild_join, not
                # guild_available); only the GUILD_CREATEs that follow READY say unavailable: false.
                joined = self._guild_create_payload(guild, session.intents)
                del joined['unavailable']
                session.dispatch('GUILD_CREATE', joined)
        self._state_changed()
        return guild

    def add_role(self, guild: GuildRef, name: str, *, permissions: PermissionsLike = 0) -> FakeRole:
        guild = self._guild(guild)
        role = FakeRole(id=self._snowflake(), guild_id=guild.id, name=name, permissions=as_bits(permissions),
                        position=len(guild.roles))
        guild.roles[role.id] = role
        self.gateway.dispatch('GUILD_ROLE_CREATE', {'guild_id': str(guild.id), 'role': role.to_payload()})
        self._state_changed()
        return role

    def add_member(
        self,
        guild: GuildRef,
        name: str = 'user',
        *,
        permissions: PermissionsLike = 0,
        roles: Sequence[FakeRole] = (),
        user: Optional[FakeUser] = None,
        nick: Optional[str] = None,
    ) -> FakeMember:
        """A member with @everyone's permissions plus ``permissions`` (given through a role of their own)
        plus those of ``roles``. Pass ``user`` to put an existing user into another guild."""
        guild = self._guild(guild)
        if user is None:
            user = FakeUser(id=self._snowflake(), name=name)
            self.users[user.id] = user
        role_ids = [role.id for role in roles]
        extra = as_bits(permissions)
        if extra:
            own_role = self.add_role(guild, f'{user.name} permissions', permissions=extra)
            role_ids.append(own_role.id)
        member = FakeMember(user=user, guild=guild, role_ids=role_ids, joined_at=iso_timestamp(self.clock.time()), nick=nick)
        guild.members[user.id] = member
        self.gateway.dispatch('GUILD_MEMBER_ADD', {**member.to_payload(), 'guild_id': str(guild.id)})
        self._state_changed()
        return member

    def assign_role(self, member: FakeMember, role: FakeRole) -> None:
        if role.id not in member.role_ids:
            member.role_ids.append(role.id)
        self._member_updated(member)

    def remove_role(self, member: FakeMember, role: FakeRole) -> None:
        if role.id in member.role_ids:
            member.role_ids.remove(role.id)
        self._member_updated(member)

    def _member_updated(self, member: FakeMember) -> None:
        self.gateway.dispatch('GUILD_MEMBER_UPDATE', {**member.to_payload(), 'guild_id': str(member.guild.id)})
        self._state_changed()

    def add_channel(
        self,
        guild: GuildRef,
        name: str = 'general',
        *,
        bot_can_post: bool = True,
        bot_can_view: bool = True,
        topic: Optional[str] = None,
        nsfw: bool = False,
    ) -> FakeChannel:
        """A text channel; ``bot_can_post=False`` denies the bot SEND_MESSAGES there (Discord answers 50013)."""
        guild = self._guild(guild)
        channel = FakeChannel(id=self._snowflake(), name=name, guild_id=guild.id, position=len(guild.channels), topic=topic, nsfw=nsfw)
        deny = (0 if bot_can_post else Permission.SEND_MESSAGES | Permission.SEND_MESSAGES_IN_THREADS) | (0 if bot_can_view else Permission.VIEW_CHANNEL)
        if deny:
            channel.overwrites.append(PermissionOverwrite(target_id=self.bot_user.id, kind='member', deny=int(deny)))
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        self.gateway.dispatch('CHANNEL_CREATE', channel.to_payload())
        self._state_changed()
        return channel

    def set_channel_overwrite(
        self, channel: ChannelRef, target: Union[FakeMember, FakeRole, FakeUser], *, allow: PermissionsLike = 0, deny: PermissionsLike = 0
    ) -> None:
        """Replace the permission overwrite for a member or role in a channel (CHANNEL_UPDATE is dispatched)."""
        channel = self._channel(channel)
        kind = 'role' if isinstance(target, FakeRole) else 'member'
        channel.overwrites = [o for o in channel.overwrites if not (o.target_id == target.id and o.kind == kind)]
        if as_bits(allow) or as_bits(deny):
            channel.overwrites.append(PermissionOverwrite(target_id=target.id, kind=kind, allow=as_bits(allow), deny=as_bits(deny)))
        self.gateway.dispatch('CHANNEL_UPDATE', channel.to_payload())
        self._state_changed()

    def set_bot_can_post(self, channel: ChannelRef, allowed: bool) -> None:
        self.set_channel_overwrite(channel, self.bot_user, deny=0 if allowed else Permission.SEND_MESSAGES | Permission.SEND_MESSAGES_IN_THREADS)

    def delete_channel(self, channel: ChannelRef) -> None:
        """Delete a channel as an admin would; the bot then gets 10003 Unknown Channel there."""
        channel = self._channel(channel)
        channel.deleted = True
        self.gateway.dispatch('CHANNEL_DELETE', channel.to_payload())
        self._state_changed()

    def permissions_in(self, member: FakeMember, channel: ChannelRef) -> int:
        """The member's effective permission bits in the channel (roles, then overwrites; admin and owner get all)."""
        return self._channel_permissions(member, self._channel(channel))

    # ==================================================================================================
    # acting as users and moderators
    # ==================================================================================================

    async def post_user_message(self, channel: ChannelRef, member: FakeMember, content: str) -> FakeMessage:
        """A user writes in a channel (MESSAGE_CREATE is dispatched; content needs the bot's intent to be seen)."""
        channel = self._channel(channel)
        message = self._new_message(channel, member.user, {'content': content}, [], source='user', message_type=MESSAGE_TYPE_DEFAULT)
        return message

    def delete_message(self, channel: ChannelRef, message: MessageRef) -> None:
        """Delete a message as a moderator would: later edits answer 10008 and MESSAGE_DELETE is dispatched."""
        stored = self._stored_message(message)
        if stored.channel_id != _id_of(channel):
            raise KeyError(f'message {stored.id} is not in channel {_id_of(channel)}')
        self._mark_deleted(stored, source='moderator')

    def add_user_reaction(self, message: MessageRef, member: FakeMember, emoji: str) -> None:
        stored = self._stored_message(message)
        stored.reactions.setdefault(emoji, []).append(member.id)
        self.gateway.dispatch('MESSAGE_REACTION_ADD', {
            'user_id': str(member.id), 'channel_id': str(stored.channel_id), 'message_id': str(stored.id),
            'guild_id': str(stored.guild_id) if stored.guild_id else None, 'emoji': {'id': None, 'name': emoji},
            'member': member.to_payload(), 'burst': False, 'type': 0,
        })
        self._state_changed()

    def block_direct_messages(self, user: Union[FakeUser, FakeMember], blocked: bool = True) -> None:
        """The user no longer accepts DMs from the bot (sending answers 50007)."""
        target = user.user if isinstance(user, FakeMember) else user
        target.accepts_direct_messages = not blocked

    def dm_channel(self, user: Union[FakeUser, FakeMember]) -> FakeChannel:
        target = user.user if isinstance(user, FakeMember) else user
        return self._dm_channel_for(target.id)

    # ==================================================================================================
    # triggering interactions
    # ==================================================================================================

    def commands(self, guild: Optional[GuildRef] = None) -> List[Dict[str, Any]]:
        """Commands the bot synced: global ones, or those of ``guild``."""
        store = self.global_command_store if guild is None else self.guild_command_store.get(_id_of(guild), {})
        return [dict(command) for command in store.values()]

    def command(self, name: str, guild: Optional[GuildRef] = None) -> Dict[str, Any]:
        for command in self.commands(guild):
            if command['name'] == name:
                return command
        raise CommandNotFound(f'no {"global" if guild is None else "guild"} command named {name!r} was synced')

    def set_command_permissions(
        self, guild: GuildRef, command_name: str, overwrites: Mapping[Union[FakeMember, FakeRole, FakeGuild], bool]
    ) -> None:
        """What an administrator sets for one command in Server Settings > Integrations: allow (True) or deny
        (False) it for members, roles or the whole server (pass the guild for @everyone). Like Discord, the
        overwrites replace the command's ``default_member_permissions`` for whoever they name: a member's own
        overwrite wins, then their roles (one allowing role is enough), then @everyone. ``{}`` removes them all."""
        guild = self._guild(guild)
        table = self.command_permission_overwrites.setdefault(guild.id, {})
        if not overwrites:
            table.pop(command_name, None)
        else:
            table[command_name] = {target.id: bool(allowed) for target, allowed in overwrites.items()}
        self._state_changed()

    def _command_overwrite(self, command: Mapping[str, Any], member: FakeMember) -> Optional[bool]:
        """The Integrations overwrite that decides for this member, or None (``default_member_permissions`` does)."""
        overwrites = self.command_permission_overwrites.get(member.guild.id, {}).get(command['name'])
        if not overwrites:
            return None
        if member.id in overwrites:
            return overwrites[member.id]
        by_role = [overwrites[role_id] for role_id in member.role_ids if role_id in overwrites]
        if by_role:
            return any(by_role)
        return overwrites.get(member.guild.id)

    def visible_commands(self, member: FakeMember, channel: ChannelRef) -> List[str]:
        """Names of the chat-input commands ``member`` would see in ``channel``'s command picker."""
        channel = self._channel(channel)
        names = set()
        for command in self._commands_for(channel):
            if command.get('type', 1) == 1 and self._why_hidden(command, member, channel) is None:
                names.add(command['name'])
        return sorted(names)

    async def invoke_command(
        self,
        channel: ChannelRef,
        member: FakeMember,
        command: str,
        options: Optional[Mapping[str, Any]] = None,
        /,
        **named_options: Any,
    ) -> FakeInteraction:
        """Run a slash command as ``member``. ``command`` may name a subcommand path: ``'queue clear'``.

        Raises ``CommandNotVisible`` where Discord's client would not offer the command to that member.
        """
        values = {**(options or {}), **named_options}
        return await self._command_interaction(INTERACTION_APPLICATION_COMMAND, channel, member, command, values, focused=None)

    async def autocomplete(
        self,
        channel: ChannelRef,
        member: FakeMember,
        command: str,
        focused: str,
        options: Optional[Mapping[str, Any]] = None,
        /,
        **named_options: Any,
    ) -> FakeInteraction:
        """Type into option ``focused`` (its partial text is ``options[focused]``, default ''); the bot's
        suggestions arrive as ``(await interaction.wait_response()).choices``."""
        values = {**(options or {}), **named_options}
        return await self._command_interaction(INTERACTION_AUTOCOMPLETE, channel, member, command, values, focused=focused)

    async def click_button(
        self, member: FakeMember, message: MessageRef, custom_id: Optional[str] = None, *, label: Optional[str] = None
    ) -> FakeInteraction:
        """Click a button (found by ``custom_id`` or ``label``) on a message, as ``member``."""
        stored = self._stored_message(message)
        if stored.deleted:
            raise ComponentNotFound(f'message {stored.id} was deleted')
        button = next((c for c in stored.all_components() if c.get('type') == rules.COMPONENT_BUTTON
                       and (custom_id is None or c.get('custom_id') == custom_id)
                       and (label is None or c.get('label') == label)), None)
        if button is None or 'custom_id' not in button:
            raise ComponentNotFound(f'message {stored.id} has no clickable button custom_id={custom_id!r} label={label!r}; it has {stored.custom_ids()}')
        if button.get('disabled'):
            raise ComponentNotFound(f'button {button["custom_id"]!r} on message {stored.id} is disabled')
        data = {'custom_id': button['custom_id'], 'component_type': rules.COMPONENT_BUTTON}
        return self._create_interaction(INTERACTION_MESSAGE_COMPONENT, member, self._message_channel(stored), data, message=stored)

    async def select_options(self, member: FakeMember, message: MessageRef, custom_id: str, values: Sequence[str]) -> FakeInteraction:
        """Pick ``values`` in a select menu on a message, as ``member``."""
        stored = self._stored_message(message)
        if stored.deleted:
            raise ComponentNotFound(f'message {stored.id} was deleted')
        menu = next((c for c in stored.all_components() if c.get('custom_id') == custom_id and c.get('type') in rules.SELECT_COMPONENT_TYPES), None)
        if menu is None or menu.get('disabled'):
            raise ComponentNotFound(f'message {stored.id} has no enabled select menu {custom_id!r}')
        if menu['type'] == 3:
            offered = {option['value'] for option in menu.get('options', [])}
            if not set(values) <= offered:
                raise ValueError(f'values {sorted(set(values) - offered)} are not options of {custom_id!r}')
        if not menu.get('min_values', 1) <= len(values) <= menu.get('max_values', 1):
            raise ValueError(f'{len(values)} values is outside min_values/max_values of {custom_id!r}')
        data = {'custom_id': custom_id, 'component_type': menu['type'], 'values': list(values)}
        return self._create_interaction(INTERACTION_MESSAGE_COMPONENT, member, self._message_channel(stored), data, message=stored)

    async def submit_modal(self, opened_by: FakeInteraction, values: Mapping[str, Any]) -> FakeInteraction:
        """Fill and submit the modal the bot opened in answer to ``opened_by``; ``values`` maps custom_id to text."""
        response = opened_by.response
        if response is None or response.type != RESPONSE_MODAL:
            raise ComponentNotFound(f'{opened_by!r} did not open a modal')
        modal = response.data

        def submitted(component: Dict[str, Any]) -> Dict[str, Any]:
            if component.get('type') == rules.COMPONENT_ACTION_ROW:
                return {'type': 1, 'components': [submitted(child) for child in component.get('components', [])]}
            if component.get('type') == rules.COMPONENT_LABEL:
                return {'type': rules.COMPONENT_LABEL, 'component': submitted(component['component'])}
            answer: Dict[str, Any] = {'type': component.get('type'), 'custom_id': component.get('custom_id')}
            value = values.get(component.get('custom_id', ''), component.get('value', ''))
            if isinstance(value, (list, tuple)):
                answer['values'] = list(value)
            else:
                answer['value'] = value
            return answer

        known = {c.get('custom_id') for c in walk_components(modal.get('components', []))}
        unknown = set(values) - known
        if unknown:
            raise ComponentNotFound(f'the modal has no fields {sorted(unknown)}')
        data = {'custom_id': modal['custom_id'], 'components': [submitted(c) for c in modal.get('components', [])]}
        return self._create_interaction(INTERACTION_MODAL_SUBMIT, opened_by.member, opened_by.channel, data, message=opened_by.message)

    # ==================================================================================================
    # injected failures
    # ==================================================================================================

    def rate_limit_next(
        self, path_contains: str, retry_after: float = 0.5, count: int = 1, *, method: Optional[str] = None, is_global: bool = False
    ) -> RateLimitRule:
        """Answer the next ``count`` matching requests with 429 (Retry-After, X-RateLimit-* and a JSON body)."""
        rule = RateLimitRule(path_contains=path_contains, retry_after=retry_after, count=count, method=method, is_global=is_global)
        self.rate_limits.append(rule)
        return rule

    async def request_reconnect(self) -> None:
        """Gateway op 7: connected clients reconnect and RESUME."""
        await self.gateway.request_reconnect()

    async def drop_gateway_connections(self, code: int = 4000) -> None:
        """Close every gateway socket with a resumable code, as a network failure would."""
        await self.gateway.drop_connections(code)

    # ==================================================================================================
    # internal: lookups and permissions
    # ==================================================================================================

    def _guild(self, guild: GuildRef) -> FakeGuild:
        return self.guilds[_id_of(guild)]

    def _channel(self, channel: ChannelRef) -> FakeChannel:
        return self.channels[_id_of(channel)]

    def _stored_message(self, message: MessageRef) -> FakeMessage:
        return self.messages[_id_of(message)]

    def _message_channel(self, message: FakeMessage) -> FakeChannel:
        return self.channels[message.channel_id]

    def bot_guilds(self) -> List[FakeGuild]:
        return [guild for guild in self.guilds.values() if self.bot_user.id in guild.members]

    def _require_bot_guild(self, guild_id: int) -> FakeGuild:
        guild = self.guilds.get(guild_id)
        if guild is None:
            raise errors.unknown_guild()
        if self.bot_user.id not in guild.members:
            raise errors.missing_access()
        return guild

    def _require_channel(self, channel_id: int) -> FakeChannel:
        channel = self.channels.get(channel_id)
        if channel is None or channel.deleted:
            raise errors.unknown_channel()
        if channel.guild_id is not None:
            if self.bot_user.id not in self.guilds[channel.guild_id].members:
                raise errors.missing_access()
            if not self._bot_channel_permissions(channel) & Permission.VIEW_CHANNEL:
                raise errors.missing_access()
        return channel

    def _guild_permissions(self, member: FakeMember) -> int:
        guild = member.guild
        if member.id == guild.owner_id:
            return ALL_PERMISSIONS
        bits = guild.everyone_role.permissions
        for role_id in member.role_ids:
            role = guild.roles.get(role_id)
            if role is not None:
                bits |= role.permissions
        return ALL_PERMISSIONS if bits & Permission.ADMINISTRATOR else bits

    def _channel_permissions(self, member: FakeMember, channel: FakeChannel) -> int:
        base = self._guild_permissions(member)
        if member.id == member.guild.owner_id:
            return ALL_PERMISSIONS
        return apply_overwrites(base, member.guild.id, member.role_ids, member.id, channel.overwrites)

    def _bot_member(self, guild_id: int) -> FakeMember:
        return self.guilds[guild_id].members[self.bot_user.id]

    def _bot_channel_permissions(self, channel: FakeChannel) -> int:
        if channel.guild_id is None:
            return ALL_PERMISSIONS
        return self._channel_permissions(self._bot_member(channel.guild_id), channel)

    def _require_bot_can_send(self, channel: FakeChannel, *, with_files: bool) -> None:
        if channel.is_dm:
            assert channel.recipient is not None
            if not channel.recipient.accepts_direct_messages:
                raise errors.cannot_message_user()
            return
        granted = self._bot_channel_permissions(channel)
        if not granted & Permission.SEND_MESSAGES:
            raise errors.missing_permissions()
        if with_files and not granted & Permission.ATTACH_FILES:
            raise errors.missing_permissions()

    def _dm_channel_for(self, user_id: int) -> FakeChannel:
        user = self.users.get(user_id)
        if user is None or user.bot:
            raise errors.unknown_user()
        channel = self._dm_channels.get(user_id)
        if channel is None:
            channel = FakeChannel(id=self._snowflake(), name=f'dm-{user.name}', guild_id=None, type=CHANNEL_TYPE_DM, recipient=user)
            self._dm_channels[user_id] = channel
            self.channels[channel.id] = channel
        return channel

    # ==================================================================================================
    # internal: payloads
    # ==================================================================================================

    def _application_payload(self) -> Dict[str, Any]:
        owner = FakeUser(id=self.application_id + 1, name='application-owner')
        return {
            'id': str(self.application_id),
            'name': self.bot_user.name,
            'description': '',
            'icon': None,
            'bot_public': True,
            'bot_require_code_grant': False,
            'owner': owner.to_payload(),
            'team': None,
            'verify_key': '0' * 64,
            'flags': 0,
            'summary': '',
            'bot': self.bot_user.to_payload(),
            'approximate_guild_count': len(self.bot_guilds()),
        }

    def _guild_create_payload(self, guild: FakeGuild, intents: int) -> Dict[str, Any]:
        # Without GUILD_MEMBERS, Discord sends only the bot's own member in GUILD_CREATE.
        members = list(guild.members.values()) if intents & INTENT_GUILD_MEMBERS else [guild.members[self.bot_user.id]]
        bot_joined = guild.members[self.bot_user.id].joined_at
        return guild.to_payload(members=members, joined_at=bot_joined)

    def _guild_rest_payload(self, guild: FakeGuild) -> Dict[str, Any]:
        payload = guild.to_payload(members=[], joined_at=guild.created_at)
        for gateway_only in ('channels', 'members', 'threads', 'voice_states', 'presences', 'joined_at', 'large',
                             'member_count', 'stage_instances', 'guild_scheduled_events', 'soundboard_sounds', 'unavailable'):
            payload.pop(gateway_only, None)
        return payload

    def expire_attachment_links(self, status: int = 403) -> None:
        """Every attachment URL handed out so far answers ``status`` from now on (Discord's signed links expire;
        ``attachment_url_lifetime`` on the fake clock does the same with 404)."""
        for attachment in self.attachments.values():
            attachment.cdn.status = status

    def _attachment_url(self, attachment: FakeAttachment, channel_id: int) -> str:
        expires = int(self.clock.time() + self.attachment_url_lifetime)
        return f'{self.base_url}/attachments/{channel_id}/{attachment.id}/{attachment.filename}?ex={expires:x}'

    def _attachment_for_url(self, attachment_id: str, filename: str, expires_hex: Optional[str]) -> Optional[FakeAttachment]:
        try:
            attachment = self.attachments.get(int(attachment_id))
            expires = int(expires_hex or '0', 16)
        except ValueError:
            return None
        if attachment is None or attachment.filename != filename or expires < self.clock.time():
            return None
        return attachment

    def _message_payload(self, message: FakeMessage) -> Dict[str, Any]:
        member_payload = None
        if message.guild_id is not None and message.webhook_id is None:
            member = self.guilds[message.guild_id].members.get(message.author.id)
            if member is not None:
                member_payload = member.to_payload(with_user=False)
        payload = message.to_payload(member_payload=member_payload)
        # Attachment URLs are signed per fetch on Discord; hand out a fresh expiry each time.
        for attachment_payload, attachment in zip(payload['attachments'], message.attachments):
            attachment_payload['url'] = attachment_payload['proxy_url'] = self._attachment_url(attachment, message.channel_id)
        return payload

    # ==================================================================================================
    # internal: messages (the rules live here so REST and interactions share them)
    # ==================================================================================================

    def _new_attachment(self, channel_id: int, upload: Union[IncomingFile, Upload], *, filename: Optional[str] = None,
                        description: Optional[str] = None) -> FakeAttachment:
        attachment = FakeAttachment(id=self._snowflake(), filename=filename or upload.filename, data=upload.data, url='',
                                    content_type=None if isinstance(upload, IncomingFile) else upload.content_type,
                                    description=description)
        if isinstance(upload, Upload) and upload.cdn is not None:
            attachment.cdn = dataclasses.replace(upload.cdn)
        attachment.url = self._attachment_url(attachment, channel_id)
        self.attachments[attachment.id] = attachment
        return attachment

    def _attachments_from(self, channel_id: int, payload: Mapping[str, Any], files: Sequence[IncomingFile],
                          existing: Sequence[FakeAttachment]) -> Optional[List[FakeAttachment]]:
        """The message's new attachment list, or None when the request leaves attachments alone.

        With an ``attachments`` array the result is exactly that set: entries whose id is an existing
        attachment keep it, entries whose id is a ``files[i]`` index add that upload.
        """
        by_index = {file.index: file for file in files}
        kept = {attachment.id: attachment for attachment in existing}
        specs = payload.get('attachments')
        if specs is None:
            if not files:
                return None
            return list(existing) + [self._new_attachment(channel_id, file) for file in files]
        result: List[FakeAttachment] = []
        used = set()
        for position, spec in enumerate(specs):
            try:
                spec_id = int(spec['id'])
            except (KeyError, TypeError, ValueError):
                raise errors.form_error(('attachments', position, 'id'), 'BASE_TYPE_REQUIRED', 'This field is required')
            if spec_id in kept:
                result.append(kept[spec_id])
            elif spec_id in by_index:
                used.add(spec_id)
                result.append(self._new_attachment(channel_id, by_index[spec_id], filename=spec.get('filename'), description=spec.get('description')))
            else:
                raise errors.form_error(('attachments', position, 'id'), 'ATTACHMENT_NOT_FOUND', f'Unknown attachment {spec_id}')
        result.extend(self._new_attachment(channel_id, file) for file in files if file.index not in used)
        return result

    def _apply_mentions(self, message: FakeMessage, allowed_mentions: Optional[Mapping[str, Any]]) -> None:
        can_everyone = True
        if message.guild_id is not None and message.author.id in self.guilds[message.guild_id].members:
            member = self.guilds[message.guild_id].members[message.author.id]
            can_everyone = bool(self._channel_permissions(member, self.channels[message.channel_id]) & Permission.MENTION_EVERYONE)
        user_ids, role_ids, everyone = rules.resolve_mentions(message.content, allowed_mentions, can_mention_everyone=can_everyone)
        message.mentioned_users = [self.users[user_id] for user_id in user_ids if user_id in self.users]
        message.mentioned_role_ids = role_ids
        message.mention_everyone = everyone

    def _record_version(self, message: FakeMessage, kind: str, source: str, allowed_mentions: Optional[Dict[str, Any]]) -> None:
        message.versions.append(MessageVersion(
            kind=kind,
            at=self.clock.time(),
            source=source,
            content=message.content,
            embeds=tuple(dict(embed) for embed in message.embeds),
            components=tuple(message.components),
            attachments=tuple(message.attachments),
            flags=message.flags,
            allowed_mentions=allowed_mentions,
        ))

    def _new_message(
        self,
        channel: FakeChannel,
        author: FakeUser,
        payload: Mapping[str, Any],
        files: Sequence[IncomingFile],
        *,
        source: str,
        message_type: int,
        extra_flags: int = 0,
        interaction: Optional[FakeInteraction] = None,
        validate_path: Optional[Tuple[Any, ...]] = (),
    ) -> FakeMessage:
        if validate_path is not None:
            rules.check_message(payload, [len(file.data) for file in files], attachment_size_limit=self.attachment_size_limit,
                                creating=True, path=validate_path)
        message = FakeMessage(
            id=self._snowflake(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=author,
            created_at=self.clock.time(),
            content=payload.get('content') or '',
            embeds=list(payload.get('embeds') or []),
            components=list(payload.get('components') or []),
            flags=(int(payload.get('flags') or 0) & SENDABLE_MESSAGE_FLAGS) | extra_flags,
            type=message_type,
            tts=bool(payload.get('tts')),
            nonce=str(payload['nonce']) if payload.get('nonce') is not None else None,
            allowed_mentions=payload.get('allowed_mentions'),
        )
        reference = payload.get('message_reference')
        if reference:
            referenced = self.messages.get(int(reference.get('message_id', 0)))
            if (referenced is None or referenced.deleted) and reference.get('fail_if_not_exists', True):
                raise errors.form_error(('message_reference',), 'REPLIES_UNKNOWN_MESSAGE', 'Unknown message')
            message.message_reference = {'type': 0, 'message_id': str(reference.get('message_id')),
                                         'channel_id': str(channel.id), 'guild_id': str(channel.guild_id) if channel.guild_id else None}
            message.type = 19
        if interaction is not None:
            message.interaction_id = interaction.id
            message.webhook_id = self.application_id
            message.application_id = self.application_id
            message.interaction_metadata = {
                'id': str(interaction.id),
                'type': interaction.type,
                'user': interaction.member.user.to_payload(),
                'authorizing_integration_owners': {'0': str(channel.guild_id)} if channel.guild_id else {},
                **({'name': interaction.command_name} if interaction.command_name else {}),
            }
        message.attachments = self._attachments_from(channel.id, payload, files, []) or []
        self._apply_mentions(message, payload.get('allowed_mentions'))
        self._record_version(message, 'create', source, payload.get('allowed_mentions'))
        self.messages[message.id] = message
        self._message_order.append(message)
        channel.last_message_id = message.id
        if not message.ephemeral:
            self.gateway.dispatch('MESSAGE_CREATE', self._message_payload(message))
        self._state_changed()
        return message

    def _edit(self, message: FakeMessage, payload: Mapping[str, Any], files: Sequence[IncomingFile], *, source: str,
              validate_path: Tuple[Any, ...] = ()) -> FakeMessage:
        rules.check_message(payload, [len(file.data) for file in files], attachment_size_limit=self.attachment_size_limit,
                            creating=False, path=validate_path)
        attachments = self._attachments_from(message.channel_id, payload, files, message.attachments)
        content = (payload.get('content') or '') if 'content' in payload else message.content
        embeds = list(payload.get('embeds') or []) if 'embeds' in payload else message.embeds
        components = list(payload.get('components') or []) if 'components' in payload else message.components
        final_attachments = attachments if attachments is not None else message.attachments
        if not (content or embeds or components or final_attachments):
            raise errors.empty_message()
        message.content, message.embeds, message.components, message.attachments = content, embeds, components, final_attachments
        flags = message.flags & ~MESSAGE_FLAG_LOADING
        if payload.get('flags') is not None:
            requested = int(payload['flags'])
            flags = (flags & ~SUPPRESS_EMBEDS) | (requested & SUPPRESS_EMBEDS) | (requested & MESSAGE_FLAG_COMPONENTS_V2)
        message.flags = flags
        message.edited_at = self.clock.time()
        if 'allowed_mentions' in payload:
            message.allowed_mentions = payload.get('allowed_mentions')
        self._apply_mentions(message, payload.get('allowed_mentions'))
        self._record_version(message, 'edit', source, payload.get('allowed_mentions'))
        if not message.ephemeral:
            self.gateway.dispatch('MESSAGE_UPDATE', self._message_payload(message))
        self._state_changed()
        return message

    def _mark_deleted(self, message: FakeMessage, *, source: str) -> None:
        if message.deleted:
            return
        message.deleted = True
        self._record_version(message, 'delete', source, None)
        if not message.ephemeral:
            payload = {'id': str(message.id), 'channel_id': str(message.channel_id)}
            if message.guild_id is not None:
                payload['guild_id'] = str(message.guild_id)
            self.gateway.dispatch('MESSAGE_DELETE', payload)
        self._state_changed()

    def _react(self, message: FakeMessage, emoji: str, *, add: bool) -> None:
        users = message.reactions.setdefault(emoji, [])
        if add and self.bot_user.id not in users:
            users.append(self.bot_user.id)
        elif not add and self.bot_user.id in users:
            users.remove(self.bot_user.id)
        self._state_changed()

    # --- channel-message operations behind the REST routes ------------------------------------------

    def _bot_send(self, channel_id: int, payload: Mapping[str, Any], files: Sequence[IncomingFile], *, source: str) -> FakeMessage:
        channel = self._require_channel(channel_id)
        self._require_bot_can_send(channel, with_files=bool(files))
        if int(payload.get('flags') or 0) & MESSAGE_FLAG_EPHEMERAL:
            raise errors.form_error(('flags',), 'MESSAGE_FLAGS_INVALID', 'Only interaction responses can be ephemeral')
        return self._new_message(channel, self.bot_user, payload, files, source=source, message_type=MESSAGE_TYPE_DEFAULT)

    def _channel_message(self, channel_id: int, message_id: int) -> FakeMessage:
        self._require_channel(channel_id)
        message = self.messages.get(message_id)
        if message is None or message.deleted or message.channel_id != channel_id or message.ephemeral:
            raise errors.unknown_message()
        return message

    def _bot_fetch(self, channel_id: int, message_id: int) -> FakeMessage:
        channel = self._require_channel(channel_id)
        if not self._bot_channel_permissions(channel) & Permission.READ_MESSAGE_HISTORY:
            raise errors.missing_permissions()
        return self._channel_message(channel_id, message_id)

    def _list_channel_messages(self, channel_id: int, *, limit: int, before: Optional[int], after: Optional[int]) -> List[FakeMessage]:
        channel = self._require_channel(channel_id)
        if not self._bot_channel_permissions(channel) & Permission.READ_MESSAGE_HISTORY:
            return []
        visible = [m for m in self.messages_in(channel) if (before is None or m.id < before) and (after is None or m.id > after)]
        # Discord answers newest first; with only ``after`` it picks the messages closest to that id.
        picked = visible[:limit] if after is not None and before is None else visible[-limit:]
        return list(reversed(picked))

    def _bot_edit(self, channel_id: int, message_id: int, payload: Mapping[str, Any], files: Sequence[IncomingFile], *, source: str) -> FakeMessage:
        message = self._channel_message(channel_id, message_id)
        if message.author.id != self.bot_user.id:
            raise errors.not_message_author()
        return self._edit(message, payload, files, source=source)

    def _bot_delete(self, channel_id: int, message_id: int) -> None:
        message = self._channel_message(channel_id, message_id)
        if message.author.id != self.bot_user.id:
            channel = self.channels[channel_id]
            if not self._bot_channel_permissions(channel) & Permission.MANAGE_MESSAGES:
                raise errors.missing_permissions()
        self._mark_deleted(message, source='DELETE /channels/{channel_id}/messages/{message_id}')

    # ==================================================================================================
    # internal: application commands
    # ==================================================================================================

    def _command_store(self, guild_id: Optional[int]) -> Dict[int, Dict[str, Any]]:
        if guild_id is None:
            return self.global_command_store
        return self.guild_command_store.setdefault(guild_id, {})

    def _normalise_command(self, payload: Mapping[str, Any], guild_id: Optional[int], command_id: Optional[int]) -> Dict[str, Any]:
        permissions = payload.get('default_member_permissions')
        command = {
            'id': str(command_id or self._snowflake()),
            'application_id': str(self.application_id),
            'version': str(self._snowflake()),
            'type': payload.get('type', 1),
            'name': payload['name'],
            'name_localizations': payload.get('name_localizations'),
            'description': payload.get('description', ''),
            'description_localizations': payload.get('description_localizations'),
            'options': list(payload.get('options') or []),
            'default_member_permissions': None if permissions is None else str(int(permissions)),
            'dm_permission': payload.get('dm_permission', True),
            'contexts': payload.get('contexts'),
            'integration_types': payload.get('integration_types') or [0],
            'nsfw': bool(payload.get('nsfw', False)),
        }
        if guild_id is not None:
            command['guild_id'] = str(guild_id)
        return command

    def _existing_id(self, store: Mapping[int, Dict[str, Any]], payload: Mapping[str, Any]) -> Optional[int]:
        for command_id, command in store.items():
            if command['name'] == payload.get('name') and command['type'] == payload.get('type', 1):
                return command_id
        return None

    def _overwrite_commands(self, guild_id: Optional[int], payload: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        rules.check_command_set(payload)
        store = self._command_store(guild_id)
        replacement: Dict[int, Dict[str, Any]] = {}
        for item in payload:
            command = self._normalise_command(item, guild_id, self._existing_id(store, item))
            replacement[int(command['id'])] = command
        store.clear()
        store.update(replacement)
        self._state_changed()
        return [dict(command) for command in store.values()]

    def _upsert_command(self, guild_id: Optional[int], payload: Mapping[str, Any]) -> Tuple[Dict[str, Any], bool]:
        rules.check_command(payload)
        store = self._command_store(guild_id)
        existing = self._existing_id(store, payload)
        command = self._normalise_command(payload, guild_id, existing)
        store[int(command['id'])] = command
        self._state_changed()
        return dict(command), existing is None

    def _get_command(self, guild_id: Optional[int], command_id: int) -> Dict[str, Any]:
        command = self._command_store(guild_id).get(command_id)
        if command is None:
            raise errors.unknown_command()
        return dict(command)

    def _edit_command(self, guild_id: Optional[int], command_id: int, payload: Mapping[str, Any]) -> Dict[str, Any]:
        current = self._get_command(guild_id, command_id)
        merged = {**current, **payload}
        rules.check_command(merged)
        command = self._normalise_command(merged, guild_id, command_id)
        self._command_store(guild_id)[command_id] = command
        self._state_changed()
        return dict(command)

    def _delete_command(self, guild_id: Optional[int], command_id: int) -> None:
        if self._command_store(guild_id).pop(command_id, None) is None:
            raise errors.unknown_command()
        self._state_changed()

    def _commands_for(self, channel: FakeChannel) -> List[Dict[str, Any]]:
        """Guild commands first: on a name clash they are the ones a test means."""
        guild_commands = list(self.guild_command_store.get(channel.guild_id or 0, {}).values())
        return guild_commands + list(self.global_command_store.values())

    def _why_hidden(self, command: Mapping[str, Any], member: FakeMember, channel: FakeChannel) -> Optional[str]:
        contexts = command.get('contexts')
        if contexts is not None and 0 not in contexts:
            return 'the command is not usable in guilds (contexts)'
        channel_permissions = self._channel_permissions(member, channel)
        if not has_all(channel_permissions, Permission.VIEW_CHANNEL | Permission.USE_APPLICATION_COMMANDS):
            return 'the member lacks VIEW_CHANNEL or USE_APPLICATION_COMMANDS in the channel'
        if command.get('nsfw') and not channel.nsfw:
            return 'the command is age-restricted and the channel is not'
        overwrite = self._command_overwrite(command, member) if member.id != member.guild.owner_id else None
        if overwrite is not None:
            return None if overwrite else 'a server administrator denied the command to this member (Integrations)'
        required = command.get('default_member_permissions')
        if required is not None:
            required_bits = int(required)
            granted = self._guild_permissions(member)
            if required_bits == 0 and not granted & Permission.ADMINISTRATOR:
                return 'default_member_permissions is "0" (administrators only)'
            if not has_all(granted, required_bits):
                return f'default_member_permissions requires {required_bits:#x}; the member has {granted:#x}'
        return None

    # ==================================================================================================
    # internal: interactions
    # ==================================================================================================

    async def _command_interaction(self, interaction_type: int, channel: ChannelRef, member: FakeMember, command_path: str,
                                   values: Mapping[str, Any], *, focused: Optional[str]) -> FakeInteraction:
        channel = self._channel(channel)
        if channel.guild_id is None or channel.deleted:
            raise CommandNotFound('the fake invokes commands in existing guild text channels only')
        root, *path = command_path.split()
        command = next((c for c in self._commands_for(channel) if c['name'] == root and c.get('type', 1) == 1), None)
        if command is None:
            raise CommandNotFound(f'no command {root!r} was synced for guild {channel.guild_id} or globally; synced: '
                                  f'{sorted(c["name"] for c in self._commands_for(channel))}')
        reason = self._why_hidden(command, member, channel)
        if reason is not None:
            raise CommandNotVisible(f'{member.name} cannot see /{command_path}: {reason}')
        resolved: Dict[str, Dict[str, Any]] = {}
        options = self._option_payloads(command.get('options') or [], path, dict(values), member, channel, resolved,
                                        focused=focused, trail=[root])
        data: Dict[str, Any] = {'id': command['id'], 'name': root, 'type': 1}
        if options:
            data['options'] = options
        if resolved:
            data['resolved'] = resolved
        if 'guild_id' in command:
            data['guild_id'] = command['guild_id']
        return self._create_interaction(interaction_type, member, channel, data, command_name=command_path)

    def _option_payloads(self, schema: Sequence[Mapping[str, Any]], path: List[str], values: Dict[str, Any], member: FakeMember,
                         channel: FakeChannel, resolved: Dict[str, Dict[str, Any]], *, focused: Optional[str],
                         trail: List[str]) -> List[Dict[str, Any]]:
        nested = [option for option in schema if option.get('type') in (rules.OPTION_SUB_COMMAND, rules.OPTION_SUB_COMMAND_GROUP)]
        if path:
            sub = next((option for option in nested if option['name'] == path[0]), None)
            if sub is None:
                raise CommandNotFound(f'/{" ".join(trail)} has no subcommand {path[0]!r}; it has {[o["name"] for o in nested]}')
            inner = self._option_payloads(sub.get('options') or [], path[1:], values, member, channel, resolved,
                                          focused=focused, trail=trail + [path[0]])
            return [{'type': sub['type'], 'name': sub['name'], 'options': inner}]
        if nested:
            raise CommandNotFound(f'/{" ".join(trail)} needs a subcommand: one of {[o["name"] for o in nested]}')
        by_name = {option['name']: option for option in schema}
        unknown = set(values) - set(by_name)
        if unknown:
            raise ValueError(f'/{" ".join(trail)} has no options {sorted(unknown)}; it has {sorted(by_name)}')
        payloads = []
        for option in schema:
            name = option['name']
            if name == focused:
                payloads.append({'type': option['type'], 'name': name, 'value': str(values.get(name, '')), 'focused': True})
                continue
            if name not in values:
                if option.get('required') and focused is None:
                    raise ValueError(f'/{" ".join(trail)} requires option {name!r}')
                continue
            payloads.append({'type': option['type'], 'name': name,
                             'value': self._option_value(option, values[name], member, channel, resolved)})
        return payloads

    def _option_value(self, option: Mapping[str, Any], value: Any, member: FakeMember, channel: FakeChannel,
                      resolved: Dict[str, Dict[str, Any]]) -> Any:
        """Check a value as Discord's client would before sending it, and fill ``resolved`` for entities."""
        option_type, name = option['type'], option['name']
        if option_type == 3:
            if not isinstance(value, str):
                raise TypeError(f'option {name!r} takes a string')
            if not option.get('min_length', 0) <= len(value) <= option.get('max_length', 6000):
                raise ValueError(f'option {name!r}: length {len(value)} is outside min_length/max_length')
        elif option_type in (4, 10):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (option_type == 4 and not isinstance(value, int)):
                raise TypeError(f'option {name!r} takes {"an integer" if option_type == 4 else "a number"}')
            if 'min_value' in option and value < option['min_value'] or 'max_value' in option and value > option['max_value']:
                raise ValueError(f'option {name!r}: {value} is outside min_value/max_value')
        elif option_type == 5:
            if not isinstance(value, bool):
                raise TypeError(f'option {name!r} takes a bool')
        elif option_type in (6, 9) and isinstance(value, (FakeMember, FakeUser)):
            user = value.user if isinstance(value, FakeMember) else value
            resolved.setdefault('users', {})[str(user.id)] = user.to_payload()
            guild_member = self.guilds[channel.guild_id].members.get(user.id) if channel.guild_id else None
            if guild_member is not None:
                resolved.setdefault('members', {})[str(user.id)] = guild_member.to_payload(
                    with_user=False, permissions=self._channel_permissions(guild_member, channel))
            return str(user.id)
        elif option_type in (8, 9) and isinstance(value, FakeRole):
            resolved.setdefault('roles', {})[str(value.id)] = value.to_payload()
            return str(value.id)
        elif option_type == 7 and isinstance(value, FakeChannel):
            if option.get('channel_types') and value.type not in option['channel_types']:
                raise ValueError(f'option {name!r} does not accept channel type {value.type}')
            resolved.setdefault('channels', {})[str(value.id)] = value.to_payload(permissions=self._channel_permissions(member, value))
            return str(value.id)
        elif option_type == 11 and isinstance(value, (Upload, FakeAttachment)):
            if len(value.data) > self.attachment_size_limit:
                raise ValueError(f'option {name!r}: {len(value.data)} bytes is over the {self.attachment_size_limit}-byte upload limit')
            attachment = self._new_attachment(channel.id, value if isinstance(value, Upload) else Upload(value.filename, value.data, value.content_type))
            resolved.setdefault('attachments', {})[str(attachment.id)] = self._attachment_payload(attachment, channel.id)
            return str(attachment.id)
        elif option_type in (6, 7, 8, 9, 11):
            raise TypeError(f'option {name!r} (type {option_type}) needs a fake member, channel, role or Upload, not {value!r}')
        choices = option.get('choices')
        if choices and value not in [choice['value'] for choice in choices]:
            raise ValueError(f'option {name!r}: {value!r} is not one of its choices')
        return value

    def _attachment_payload(self, attachment: FakeAttachment, channel_id: int) -> Dict[str, Any]:
        payload = attachment.to_payload()
        payload['url'] = payload['proxy_url'] = self._attachment_url(attachment, channel_id)
        return payload

    def _create_interaction(self, interaction_type: int, member: FakeMember, channel: FakeChannel, data: Dict[str, Any], *,
                            message: Optional[FakeMessage] = None, command_name: Optional[str] = None) -> FakeInteraction:
        guild = self.guilds[channel.guild_id] if channel.guild_id is not None else None
        interaction_id = self._snowflake()
        token = 'aW50ZXJhY3Rpb246' + secrets.token_urlsafe(48)
        member_permissions = self._channel_permissions(member, channel)
        payload: Dict[str, Any] = {
            'id': str(interaction_id),
            'application_id': str(self.application_id),
            'type': interaction_type,
            'token': token,
            'version': 1,
            'data': data,
            'channel_id': str(channel.id),
            'channel': channel.to_payload(permissions=member_permissions),
            'locale': 'en-US',
            'app_permissions': str(self._bot_channel_permissions(channel)),
            'entitlements': [],
            'entitlement_sku_ids': [],
            'attachment_size_limit': self.attachment_size_limit,
            'context': 0,
        }
        if guild is not None:
            payload.update({
                'guild_id': str(guild.id),
                'guild': {'id': str(guild.id), 'locale': 'en-US', 'features': []},
                'guild_locale': 'en-US',
                'member': member.to_payload(permissions=member_permissions),
                'authorizing_integration_owners': {'0': str(guild.id)},
            })
        if message is not None:
            payload['message'] = self._message_payload(message)
        interaction = FakeInteraction(self, id=interaction_id, token=token, type=interaction_type, member=member, channel=channel,
                                      guild=guild, payload=payload, message=message, command_name=command_name)
        self.interactions[interaction_id] = interaction
        self._interactions_by_token[token] = interaction
        interaction.delivered = self.gateway.dispatch_interaction(payload)
        self._wake_at(interaction.deadline + 0.005)
        self._state_changed()
        return interaction

    def _interaction_callback(self, interaction_id: int, token: str, body: Mapping[str, Any], files: Sequence[IncomingFile]) -> Dict[str, Any]:
        interaction = self.interactions.get(interaction_id)
        if interaction is None or interaction.token != token:
            raise errors.unknown_interaction()
        try:
            return self._acknowledge(interaction, body, files)
        except DiscordAPIError as error:
            interaction.rejected.append(RejectedCallback(error.status, error.code, error.message, self.clock.time()))
            self._state_changed()
            raise

    def _acknowledge(self, interaction: FakeInteraction, body: Mapping[str, Any], files: Sequence[IncomingFile]) -> Dict[str, Any]:
        if interaction.response is not None:
            raise errors.already_acknowledged()
        if interaction.deadline_passed():
            raise errors.unknown_interaction()
        response_type = body.get('type')
        if response_type not in ALLOWED_RESPONSES.get(interaction.type, set()):
            raise errors.form_error(('type',), 'INTERACTION_RESPONSE_TYPE_INVALID',
                                    f'Interaction response type {response_type} is not valid for interaction type {interaction.type}')
        if response_type in (RESPONSE_DEFERRED_UPDATE_MESSAGE, RESPONSE_UPDATE_MESSAGE) and interaction.message is None:
            raise errors.form_error(('type',), 'INTERACTION_RESPONSE_TYPE_INVALID', 'There is no message to update')
        data = dict(body.get('data') or {})
        source = f'interaction callback {response_type}'
        message: Optional[FakeMessage] = None
        if response_type == RESPONSE_CHANNEL_MESSAGE:
            message = self._new_message(interaction.channel, self.bot_user, data, files, source=source,
                                        message_type=self._response_message_type(interaction), interaction=interaction,
                                        validate_path=('data',))
        elif response_type == RESPONSE_DEFERRED_CHANNEL_MESSAGE:
            flags = int(data.get('flags') or 0) & MESSAGE_FLAG_EPHEMERAL
            message = self._new_message(interaction.channel, self.bot_user, {'flags': flags}, [], source=source,
                                        message_type=self._response_message_type(interaction), interaction=interaction,
                                        extra_flags=MESSAGE_FLAG_LOADING, validate_path=None)
        elif response_type == RESPONSE_DEFERRED_UPDATE_MESSAGE:
            message = interaction.message
        elif response_type == RESPONSE_UPDATE_MESSAGE:
            assert interaction.message is not None
            if interaction.message.deleted:
                raise errors.unknown_message()
            message = self._edit(interaction.message, data, files, source=source, validate_path=('data',))
        elif response_type == RESPONSE_AUTOCOMPLETE_RESULT:
            rules.check_autocomplete_choices(data)
        elif response_type == RESPONSE_MODAL:
            rules.check_modal(data)
        interaction.response = InteractionResponse(type=response_type, data=data, at=self.clock.time(), message=message)
        if message is not None:
            interaction.original_message_id = message.id
        self._state_changed()

        summary: Dict[str, Any] = {'id': str(interaction.id), 'type': interaction.type}
        resource: Dict[str, Any] = {'type': response_type}
        if message is not None:
            summary.update(response_message_id=str(message.id), response_message_loading=message.loading,
                           response_message_ephemeral=message.ephemeral)
            resource['message'] = self._message_payload(message)
        return {'interaction': summary, 'resource': resource}

    @staticmethod
    def _response_message_type(interaction: FakeInteraction) -> int:
        return MESSAGE_TYPE_CHAT_INPUT_COMMAND if interaction.type == INTERACTION_APPLICATION_COMMAND else MESSAGE_TYPE_DEFAULT

    def _webhook_interaction(self, token: str) -> FakeInteraction:
        interaction = self._interactions_by_token.get(token)
        if interaction is None or interaction.token_expired():
            raise errors.invalid_webhook_token()
        if interaction.response is None:
            raise errors.unknown_webhook()
        return interaction

    def _create_followup(self, token: str, payload: Mapping[str, Any], files: Sequence[IncomingFile]) -> FakeMessage:
        interaction = self._webhook_interaction(token)
        original = interaction.original_message
        source = 'POST /webhooks/{application_id}/{token}'
        if (interaction.response is not None and interaction.response.type == RESPONSE_DEFERRED_CHANNEL_MESSAGE
                and original is not None and original.loading and not original.deleted):
            # Discord turns the first followup after a "thinking" defer into the deferred message itself
            # (keeping the defer's ephemerality).
            rules.check_message(payload, [len(file.data) for file in files], attachment_size_limit=self.attachment_size_limit, creating=True)
            message = self._edit(original, {key: value for key, value in payload.items() if key != 'flags'}, files, source=source)
        else:
            message = self._new_message(interaction.channel, self.bot_user, payload, files, source=source,
                                        message_type=MESSAGE_TYPE_DEFAULT, interaction=interaction)
        interaction.followup_ids.append(message.id)
        self._state_changed()
        return message

    def _webhook_target(self, interaction: FakeInteraction, message_ref: str) -> FakeMessage:
        if message_ref == '@original':
            message = interaction.original_message
        else:
            try:
                message_id = int(message_ref)
            except ValueError:
                raise errors.unknown_message()
            owned = {interaction.original_message_id, *interaction.followup_ids}
            message = self.messages.get(message_id) if message_id in owned else None
        if message is None or message.deleted:
            raise errors.unknown_message()
        return message

    def _webhook_message(self, token: str, message_ref: str) -> FakeMessage:
        return self._webhook_target(self._webhook_interaction(token), message_ref)

    def _edit_webhook_message(self, token: str, message_ref: str, payload: Mapping[str, Any], files: Sequence[IncomingFile]) -> FakeMessage:
        interaction = self._webhook_interaction(token)
        message = self._webhook_target(interaction, message_ref)
        target = '@original' if message_ref == '@original' else '{message_id}'
        return self._edit(message, payload, files, source='PATCH /webhooks/{application_id}/{token}/messages/' + target)

    def _delete_webhook_message(self, token: str, message_ref: str) -> None:
        interaction = self._webhook_interaction(token)
        message = self._webhook_target(interaction, message_ref)
        self._mark_deleted(message, source='DELETE /webhooks/{application_id}/{token}/messages/{message_id}')
