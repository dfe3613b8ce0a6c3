"""The websocket gateway: HELLO, heartbeats, IDENTIFY/READY, RESUME, and event dispatch with intents.

Sessions outlive their sockets so a client can RESUME and receive the events it missed; a session ends
when its client closes with 1000/1001, as on Discord. (discord.py's ``Client.close()`` races its own
receive loop and usually sends 4000, so a closed bot's session normally stays resumable, as it would on
Discord.) A new client (a restarted bot with the same token) simply IDENTIFYs and gets a fresh session;
interactions go to the newest session only.

Sharding works as on Discord: IDENTIFY may carry ``shard: [shard_id, shard_count]``; such a session gets only
the guilds of its shard (READY, GUILD_CREATE, every guild event and interaction; direct messages go to shard
0). An invalid shard, or a count that disagrees with another connected shard, closes with 4010; an unsharded
IDENTIFY closes with 4011 while ``fake.sharding_required`` is set. IDENTIFY pacing (one per 5 s per bucket
``shard_id % max_concurrency``) is checked only when ``fake.enforce_identify_concurrency`` is set: discord.py
2.7.1 ignores ``max_concurrency`` and paces in ``Client.before_identify_hook`` (5 s by default).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import secrets
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Set

from aiohttp import WSMsgType, web

from .sharding import Shard, owns, parse_identify_shard

if TYPE_CHECKING:
    from .server import FakeDiscord


OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE_UPDATE = 3
OP_VOICE_STATE_UPDATE = 4
OP_RESUME = 6
OP_RECONNECT = 7
OP_REQUEST_GUILD_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_DIRECT_MESSAGE_REACTIONS = 1 << 13
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

CLOSE_NOT_AUTHENTICATED = 4003
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005
CLOSE_INVALID_SHARD = 4010
CLOSE_SHARDING_REQUIRED = 4011
CLOSE_DISALLOWED_INTENTS = 4014
IDENTIFY_WINDOW_SECONDS = 5.0
# Closes with these codes end the session; any other close leaves it resumable.
SESSION_ENDING_CLOSE_CODES = {1000, 1001}

_GUILD_EVENTS = {
    'GUILD_CREATE', 'GUILD_UPDATE', 'GUILD_DELETE', 'CHANNEL_CREATE', 'CHANNEL_UPDATE', 'CHANNEL_DELETE',
    'GUILD_ROLE_CREATE', 'GUILD_ROLE_UPDATE', 'GUILD_ROLE_DELETE',
}
_MEMBER_EVENTS = {'GUILD_MEMBER_ADD', 'GUILD_MEMBER_UPDATE', 'GUILD_MEMBER_REMOVE'}
_MESSAGE_EVENTS = {'MESSAGE_CREATE', 'MESSAGE_UPDATE', 'MESSAGE_DELETE', 'MESSAGE_DELETE_BULK'}
_REACTION_EVENTS = {'MESSAGE_REACTION_ADD', 'MESSAGE_REACTION_REMOVE'}
# Events whose payload is the guild itself; the others name theirs in ``guild_id``.
_GUILD_PAYLOAD_EVENTS = {'GUILD_CREATE', 'GUILD_UPDATE', 'GUILD_DELETE'}


def guild_id_of(event: str, data: Dict[str, Any]) -> Optional[int]:
    """The guild an event belongs to, which decides its shard; None for direct messages."""
    value = data.get('id') if event in _GUILD_PAYLOAD_EVENTS else data.get('guild_id')
    return int(value) if value is not None else None


@dataclasses.dataclass(frozen=True)
class GatewayRecord:
    """One gateway happening, for tests: 'identify', 'resume', 'ready', 'resumed', 'invalid_session',
    'dispatch' (with ``event`` and ``guild_id``), 'reconnect_requested', 'closed' (with ``close_code`` and who
    closed). ``shard`` is the session's (shard_id, shard_count), None for an unsharded one."""

    kind: str
    session_id: Optional[str]
    at: float
    event: Optional[str] = None
    close_code: Optional[int] = None
    closed_by_server: Optional[bool] = None
    shard: Optional[Shard] = None
    guild_id: Optional[int] = None

    @property
    def shard_id(self) -> Optional[int]:
        return self.shard[0] if self.shard is not None else None


class GatewayConnection:
    """One websocket. Frames go through a queue so sync code can dispatch and order is preserved."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.session: Optional[GatewaySession] = None
        # Set when the fake closes the socket: the client's echo of a close frame says nothing about
        # whether the client meant to end its session.
        self.server_close_code: Optional[int] = None
        self._queue: asyncio.Queue[Optional[str]] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_frames(), name='fake-discord-gateway-writer')

    def send(self, frame: Dict[str, Any]) -> None:
        self.send_text(json.dumps(frame))

    def send_text(self, text: str) -> None:
        self._queue.put_nowait(text)

    async def _write_frames(self) -> None:
        while True:
            text = await self._queue.get()
            if text is None or self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def close(self, code: int, message: bytes = b'') -> None:
        if self.server_close_code is None:
            self.server_close_code = code
        await self.flush()
        await self.ws.close(code=code, message=message)

    async def flush(self) -> None:
        """Let queued frames reach the socket before closing it."""
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), timeout=2)
        except asyncio.TimeoutError:
            self._writer.cancel()

    def stop_writer(self) -> None:
        if not self._writer.done():
            self._queue.put_nowait(None)


class GatewaySession:
    def __init__(self, gateway: 'Gateway', *, intents: int, shard: Optional[Shard]) -> None:
        self.gateway = gateway
        self.session_id = secrets.token_hex(16)
        self.intents = intents
        self.shard = shard
        self.sequence = 0
        self.replay: Deque[tuple[int, str]] = collections.deque(maxlen=5000)
        self.connection: Optional[GatewayConnection] = None
        self.ended = False
        self.order = 0

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.ended

    def owns(self, guild_id: Optional[int]) -> bool:
        return owns(self.shard, guild_id)

    def _wants(self, event: str, data: Dict[str, Any]) -> bool:
        if event in _GUILD_EVENTS:
            return bool(self.intents & INTENT_GUILDS)
        if event in _MEMBER_EVENTS:
            return bool(self.intents & INTENT_GUILD_MEMBERS)
        if event in _MESSAGE_EVENTS:
            in_guild = data.get('guild_id') is not None
            return bool(self.intents & (INTENT_GUILD_MESSAGES if in_guild else INTENT_DIRECT_MESSAGES))
        if event in _REACTION_EVENTS:
            in_guild = data.get('guild_id') is not None
            return bool(self.intents & (INTENT_GUILD_MESSAGE_REACTIONS if in_guild else INTENT_DIRECT_MESSAGE_REACTIONS))
        return True

    def _redact_content(self, event: str, data: Dict[str, Any]) -> Dict[str, Any]:
        """Without MESSAGE_CONTENT a bot sees content only of its own messages, DMs and messages mentioning it."""
        if event not in ('MESSAGE_CREATE', 'MESSAGE_UPDATE') or self.intents & INTENT_MESSAGE_CONTENT:
            return data
        bot_id = str(self.gateway.fake.bot_user.id)
        if data.get('guild_id') is None or data.get('author', {}).get('id') == bot_id:
            return data
        if any(user.get('id') == bot_id for user in data.get('mentions', [])):
            return data
        return {**data, 'content': '', 'embeds': [], 'attachments': [], 'components': []}

    def dispatch(self, event: str, data: Dict[str, Any]) -> bool:
        """Queue an event; returns whether it went straight to a connected socket."""
        if self.ended or not self._wants(event, data):
            return False
        self.sequence += 1
        text = json.dumps({'op': OP_DISPATCH, 't': event, 's': self.sequence, 'd': self._redact_content(event, data)})
        self.replay.append((self.sequence, text))
        self.gateway.record('dispatch', self.session_id, event=event, guild_id=guild_id_of(event, data))
        if self.connection is not None:
            self.connection.send_text(text)
            return True
        return False


class Gateway:
    def __init__(self, fake: 'FakeDiscord') -> None:
        self.fake = fake
        self.sessions: Dict[str, GatewaySession] = {}
        self.connections: Set[GatewayConnection] = set()
        self.records: List[GatewayRecord] = []
        self.heartbeat_interval_ms = 41250
        self._session_counter = 0
        # Monotonic times of accepted IDENTIFYs per rate-limit bucket (shard_id % max_concurrency).
        self._identified_at: Dict[int, float] = {}

    # --- bookkeeping ---------------------------------------------------------------------------------

    def record(self, kind: str, session_id: Optional[str], **extra: Any) -> None:
        session = self.sessions.get(session_id or '')
        shard = extra.pop('shard', None)  # given only for what happens before a session exists
        if session is not None:
            shard = session.shard
        self.records.append(GatewayRecord(kind=kind, session_id=session_id, at=self.fake.clock.time(), shard=shard, **extra))
        self.fake._state_changed()

    def live_sessions(self) -> List[GatewaySession]:
        return [session for session in self.sessions.values() if not session.ended]

    def connected_sessions(self) -> List[GatewaySession]:
        return [session for session in self.live_sessions() if session.connected]

    def sessions_for_guild(self, guild_id: Optional[int]) -> List[GatewaySession]:
        """Live sessions that receive this guild's events (its shard's, and unsharded ones)."""
        return [session for session in self.live_sessions() if session.owns(guild_id)]

    def session_start_limit(self) -> Dict[str, int]:
        """What ``GET /gateway/bot`` reports; each IDENTIFY uses one start, as on Discord."""
        identifies = sum(1 for record in self.records if record.kind == 'identify')
        return {
            'total': self.fake.session_start_total,
            'remaining': max(0, self.fake.session_start_total - identifies),
            'reset_after': 24 * 3600 * 1000,
            'max_concurrency': self.fake.max_concurrency,
        }

    # --- dispatch ------------------------------------------------------------------------------------

    def dispatch(self, event: str, data: Dict[str, Any]) -> None:
        for session in self.sessions_for_guild(guild_id_of(event, data)):
            session.dispatch(event, data)

    def dispatch_interaction(self, data: Dict[str, Any]) -> bool:
        """Interactions go to one session only, the newest live one of the guild's shard, so a stale bot
        cannot race a new one."""
        sessions = sorted(self.sessions_for_guild(guild_id_of('INTERACTION_CREATE', data)), key=lambda session: session.order)
        if not sessions:
            return False
        return sessions[-1].dispatch('INTERACTION_CREATE', data)

    # --- control from tests --------------------------------------------------------------------------

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT to every connected client; discord.py then reconnects and RESUMEs."""
        for session in self.connected_sessions():
            assert session.connection is not None
            session.connection.send({'op': OP_RECONNECT, 'd': None})
            self.record('reconnect_requested', session.session_id)

    async def drop_connections(self, code: int = 4000) -> None:
        """Close every socket with a resumable code, as a network hiccup would."""
        for connection in list(self.connections):
            await connection.close(code)

    async def close(self) -> None:
        for connection in list(self.connections):
            await connection.close(1001)

    # --- the websocket handler -----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        connection = GatewayConnection(ws)
        self.connections.add(connection)
        connection.send({'op': OP_HELLO, 'd': {'heartbeat_interval': self.heartbeat_interval_ms}})
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(message.data)
                except ValueError:
                    await connection.close(4002, b'Decode error')
                    break
                if not await self._handle_frame(connection, frame):
                    break
        finally:
            self.connections.discard(connection)
            connection.stop_writer()
            session = connection.session
            closed_by_server = connection.server_close_code is not None
            close_code = connection.server_close_code if closed_by_server else ws.close_code
            if session is not None and session.connection is connection:
                session.connection = None
                if not closed_by_server and close_code in SESSION_ENDING_CLOSE_CODES:
                    session.ended = True
            self.record('closed', session.session_id if session else None, close_code=close_code,
                        closed_by_server=closed_by_server)
        return ws

    async def _handle_frame(self, connection: GatewayConnection, frame: Dict[str, Any]) -> bool:
        op = frame.get('op')
        data = frame.get('d')
        if op == OP_HEARTBEAT:
            connection.send({'op': OP_HEARTBEAT_ACK})
            return True
        if op == OP_IDENTIFY:
            return await self._identify(connection, data or {})
        if op == OP_RESUME:
            return await self._resume(connection, data or {})
        if connection.session is None:
            await connection.close(CLOSE_NOT_AUTHENTICATED, b'Not authenticated.')
            return False
        if op == OP_REQUEST_GUILD_MEMBERS:
            self._send_member_chunk(connection.session, data or {})
        # Presence and voice updates need no answer from the fake.
        return True

    async def _identify(self, connection: GatewayConnection, data: Dict[str, Any]) -> bool:
        if connection.session is not None:
            await connection.close(CLOSE_ALREADY_AUTHENTICATED, b'Already authenticated.')
            return False
        if data.get('token') != self.fake.token:
            await connection.close(CLOSE_AUTHENTICATION_FAILED, b'Authentication failed.')
            return False
        intents = int(data.get('intents', 0))
        if intents & PRIVILEGED_INTENTS & ~self.fake.enabled_privileged_intents:
            await connection.close(CLOSE_DISALLOWED_INTENTS, b'Disallowed intent(s).')
            return False
        try:
            shard = self._check_shard(data.get('shard'))
        except ValueError:
            await connection.close(CLOSE_INVALID_SHARD, b'Invalid shard.')
            return False
        if self.fake.sharding_required and (shard is None or shard[1] == 1):
            await connection.close(CLOSE_SHARDING_REQUIRED, b'Sharding required.')
            return False
        if not self._identify_allowed(shard):
            # Discord answers an IDENTIFY over the bucket's limit with op 9, d=false: identify again later.
            connection.send({'op': OP_INVALID_SESSION, 'd': False})
            self.record('invalid_session', None, shard=shard)
            return True
        session = GatewaySession(self, intents=intents, shard=shard)
        self._session_counter += 1
        session.order = self._session_counter
        self.sessions[session.session_id] = session
        session.connection = connection
        connection.session = session
        self.record('identify', session.session_id)
        bot_user = self.fake.bot_user.to_payload()
        bot_user.update(verified=True, mfa_enabled=False, flags=0, locale='en-US')
        guilds = [guild for guild in self.fake.bot_guilds() if session.owns(guild.id)]
        ready: Dict[str, Any] = {
            'v': 10,
            'user': bot_user,
            'guilds': [{'id': str(guild.id), 'unavailable': True} for guild in guilds],
            'session_id': session.session_id,
            'session_type': 'normal',
            'resume_gateway_url': self.fake.gateway_url,
            'application': {'id': str(self.fake.application_id), 'flags': 0},
            'private_channels': [],
            'relationships': [],
            'user_settings': {},
            'geo_ordered_rtc_regions': [],
        }
        if session.shard is not None:
            ready['shard'] = list(session.shard)
        session.dispatch('READY', ready)
        self.record('ready', session.session_id)
        for guild in guilds:
            session.dispatch('GUILD_CREATE', self.fake._guild_create_payload(guild, session.intents))
        return True

    def _check_shard(self, value: Any) -> Optional[Shard]:
        """The IDENTIFY's shard, or ValueError where Discord closes with 4010 Invalid shard."""
        shard = parse_identify_shard(value)
        if shard is not None:
            counts = {session.shard[1] for session in self.connected_sessions() if session.shard is not None}
            if counts - {shard[1]}:
                raise ValueError(f'shard count {shard[1]} disagrees with connected shards of count {sorted(counts)}')
        return shard

    def _identify_allowed(self, shard: Optional[Shard]) -> bool:
        """Whether this IDENTIFY fits the bucket's one-per-5-s limit (always, unless the fake enforces it)."""
        if not self.fake.enforce_identify_concurrency:
            return True
        bucket = (shard[0] if shard is not None else 0) % self.fake.max_concurrency
        now = self.fake.clock.monotonic()
        last = self._identified_at.get(bucket)
        if last is not None and now - last < IDENTIFY_WINDOW_SECONDS:
            return False
        self._identified_at[bucket] = now
        return True

    async def _resume(self, connection: GatewayConnection, data: Dict[str, Any]) -> bool:
        session = self.sessions.get(data.get('session_id') or '')
        if data.get('token') != self.fake.token:
            await connection.close(CLOSE_AUTHENTICATION_FAILED, b'Authentication failed.')
            return False
        if session is None or session.ended:
            # d=false: the client must IDENTIFY afresh.
            connection.send({'op': OP_INVALID_SESSION, 'd': False})
            self.record('invalid_session', data.get('session_id'))
            return True
        if session.connection is not None and session.connection is not connection:
            await session.connection.close(4009, b'Session taken over.')
        session.connection = connection
        connection.session = session
        self.record('resume', session.session_id)
        last_seen = int(data.get('seq') or 0)
        for sequence, text in list(session.replay):
            if sequence > last_seen:
                connection.send_text(text)
        session.dispatch('RESUMED', {})
        self.record('resumed', session.session_id)
        return True

    def _send_member_chunk(self, session: GatewaySession, data: Dict[str, Any]) -> None:
        guild = self.fake.guilds.get(int(data.get('guild_id', 0)))
        if guild is None:
            return
        members = list(guild.members.values())
        user_ids = data.get('user_ids')
        query = data.get('query')
        if user_ids:
            wanted = {int(user_id) for user_id in user_ids}
            members = [member for member in members if member.id in wanted]
        elif query:
            members = [member for member in members if member.name.lower().startswith(query.lower())]
        limit = int(data.get('limit') or 0)
        if limit:
            members = members[:limit]
        chunk: Dict[str, Any] = {
            'guild_id': str(guild.id),
            'members': [member.to_payload() for member in members],
            'chunk_index': 0,
            'chunk_count': 1,
            'not_found': [],
        }
        if data.get('nonce'):
            chunk['nonce'] = data['nonce']
        session.dispatch('GUILD_MEMBERS_CHUNK', chunk)
