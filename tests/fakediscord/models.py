"""The fake's world: users, guilds, roles, channels, messages and attachments, plus their JSON shapes.

Objects here are what tests receive back from ``FakeDiscord``; they are plain data, and their
``to_payload`` methods build the JSON that discord.py parses.
"""

from __future__ import annotations

import dataclasses
import datetime
import mimetypes
import struct
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

MESSAGE_FLAG_EPHEMERAL = 1 << 6
MESSAGE_FLAG_LOADING = 1 << 7
MESSAGE_FLAG_COMPONENTS_V2 = 1 << 15

CHANNEL_TYPE_TEXT = 0
CHANNEL_TYPE_DM = 1


def iso_timestamp(unix_seconds: float) -> str:
    return datetime.datetime.fromtimestamp(unix_seconds, datetime.timezone.utc).isoformat()


@dataclasses.dataclass(eq=False)
class FakeUser:
    id: int
    name: str
    bot: bool = False
    global_name: Optional[str] = None
    accepts_direct_messages: bool = True

    @property
    def mention(self) -> str:
        return f'<@{self.id}>'

    def to_payload(self) -> Dict[str, Any]:
        return {
            'id': str(self.id),
            'username': self.name,
            'discriminator': '0',
            'global_name': self.global_name,
            'avatar': None,
            'bot': self.bot,
            'public_flags': 0,
        }


@dataclasses.dataclass(eq=False)
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False

    @property
    def mention(self) -> str:
        return f'<@&{self.id}>'

    def to_payload(self) -> Dict[str, Any]:
        return {
            'id': str(self.id),
            'name': self.name,
            'permissions': str(self.permissions),
            'position': self.position,
            'color': 0,
            'colors': {'primary_color': 0, 'secondary_color': None, 'tertiary_color': None},
            'hoist': False,
            'managed': self.managed,
            'mentionable': False,
            'icon': None,
            'unicode_emoji': None,
            'flags': 0,
        }


@dataclasses.dataclass(eq=False)
class FakeMember:
    user: FakeUser
    guild: 'FakeGuild'
    role_ids: List[int]
    joined_at: str
    nick: Optional[str] = None

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def mention(self) -> str:
        return self.user.mention

    def to_payload(self, *, with_user: bool = True, permissions: Optional[int] = None) -> Dict[str, Any]:
        payload: Dict[str, Any] = {
            'roles': [str(role_id) for role_id in self.role_ids],
            'nick': self.nick,
            'avatar': None,
            'joined_at': self.joined_at,
            'premium_since': None,
            'deaf': False,
            'mute': False,
            'flags': 0,
            'pending': False,
            'communication_disabled_until': None,
        }
        if with_user:
            payload['user'] = self.user.to_payload()
        if permissions is not None:
            payload['permissions'] = str(permissions)
        return payload


@dataclasses.dataclass
class PermissionOverwrite:
    target_id: int
    kind: str  # 'role' or 'member'
    allow: int = 0
    deny: int = 0

    def to_payload(self) -> Dict[str, Any]:
        return {
            'id': str(self.target_id),
            'type': 0 if self.kind == 'role' else 1,
            'allow': str(self.allow),
            'deny': str(self.deny),
        }


@dataclasses.dataclass(eq=False)
class FakeChannel:
    id: int
    name: str
    guild_id: Optional[int]
    type: int = CHANNEL_TYPE_TEXT
    position: int = 0
    topic: Optional[str] = None
    nsfw: bool = False
    overwrites: List[PermissionOverwrite] = dataclasses.field(default_factory=list)
    recipient: Optional[FakeUser] = None
    deleted: bool = False
    last_message_id: Optional[int] = None

    @property
    def mention(self) -> str:
        return f'<#{self.id}>'

    @property
    def is_dm(self) -> bool:
        return self.type == CHANNEL_TYPE_DM

    def to_payload(self, *, include_guild_id: bool = True, permissions: Optional[int] = None) -> Dict[str, Any]:
        if self.is_dm:
            assert self.recipient is not None
            return {
                'id': str(self.id),
                'type': CHANNEL_TYPE_DM,
                'recipients': [self.recipient.to_payload()],
                'last_message_id': str(self.last_message_id) if self.last_message_id else None,
                'flags': 0,
            }
        payload: Dict[str, Any] = {
            'id': str(self.id),
            'type': self.type,
            'name': self.name,
            'position': self.position,
            'topic': self.topic,
            'nsfw': self.nsfw,
            'parent_id': None,
            'rate_limit_per_user': 0,
            'permission_overwrites': [overwrite.to_payload() for overwrite in self.overwrites],
            'last_message_id': str(self.last_message_id) if self.last_message_id else None,
            'flags': 0,
        }
        if include_guild_id:
            payload['guild_id'] = str(self.guild_id)
        if permissions is not None:
            payload['permissions'] = str(permissions)
        return payload


@dataclasses.dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    created_at: str
    roles: Dict[int, FakeRole] = dataclasses.field(default_factory=dict)
    channels: Dict[int, FakeChannel] = dataclasses.field(default_factory=dict)
    members: Dict[int, FakeMember] = dataclasses.field(default_factory=dict)
    bot_role_id: Optional[int] = None

    @property
    def everyone_role(self) -> FakeRole:
        return self.roles[self.id]

    @property
    def owner(self) -> FakeMember:
        return self.members[self.owner_id]

    def to_payload(self, *, members: Sequence[FakeMember], joined_at: str) -> Dict[str, Any]:
        """The GUILD_CREATE body (and the GET /guilds/{id} body, which ignores the gateway-only keys)."""
        return {
            'id': str(self.id),
            'name': self.name,
            'icon': None,
            'splash': None,
            'discovery_splash': None,
            'banner': None,
            'description': None,
            'owner_id': str(self.owner_id),
            'afk_channel_id': None,
            'afk_timeout': 300,
            'verification_level': 0,
            'default_message_notifications': 0,
            'explicit_content_filter': 0,
            'mfa_level': 0,
            'nsfw_level': 0,
            'premium_tier': 0,
            'premium_subscription_count': 0,
            'preferred_locale': 'en-US',
            'system_channel_id': None,
            'system_channel_flags': 0,
            'features': [],
            'roles': [role.to_payload() for role in self.roles.values()],
            'emojis': [],
            'stickers': [],
            'channels': [channel.to_payload(include_guild_id=False) for channel in self.channels.values() if not channel.deleted],
            'threads': [],
            'members': [member.to_payload() for member in members],
            'member_count': len(self.members),
            'large': False,
            'unavailable': False,
            'joined_at': joined_at,
            'voice_states': [],
            'presences': [],
            'stage_instances': [],
            'guild_scheduled_events': [],
            'soundboard_sounds': [],
            'premium_progress_bar_enabled': False,
        }


@dataclasses.dataclass
class CdnBehaviour:
    """How the fake's CDN serves one attachment's URL. The default is Discord's: the bytes, with their true
    ``Content-Length``."""

    # Answer this status instead (403 or 404: a link that expired or was revoked), with Discord's text.
    status: Optional[int] = None
    # Announce this Content-Length instead of the true one. Larger: the body ends early (the connection closes);
    # smaller: the body is cut at the announced length, as any HTTP server does.
    content_length: Optional[int] = None
    # Announce no length at all: the body comes in chunks (Transfer-Encoding: chunked), the whole of it.
    chunked: bool = False
    # Send the body gzip-compressed (Content-Encoding: gzip): its Content-Length is the compressed size, far
    # below what a client that unpacks it (aiohttp does) ends up reading.
    gzip: bool = False
    # Serve these bytes instead of the attachment's (the payload's size and dimensions stay the attachment's):
    # a file bigger than Discord said, to test a client that must not trust the size it was told.
    body: Optional[bytes] = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class Upload:
    """A file a simulated user attaches to an ATTACHMENT command option; ``cdn`` says how the CDN serves it."""

    filename: str
    data: bytes
    content_type: Optional[str] = None
    cdn: Optional[CdnBehaviour] = None


def image_dimensions(data: bytes) -> Optional[Tuple[int, int]]:
    """Width and height of a picture, as Discord reports them for images: from the PNG header, or Pillow's."""
    dimensions = png_dimensions(data)
    if dimensions is not None:
        return dimensions
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # not a picture Pillow knows: Discord sends no width and height either
        return None


def png_dimensions(data: bytes) -> Optional[Tuple[int, int]]:
    """Width and height from a PNG's IHDR chunk (Discord reports both for images)."""
    if len(data) >= 24 and data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR':
        width, height = struct.unpack('>II', data[16:24])
        return width, height
    return None


@dataclasses.dataclass(eq=False)
class FakeAttachment:
    id: int
    filename: str
    data: bytes
    url: str
    content_type: Optional[str] = None
    description: Optional[str] = None
    cdn: CdnBehaviour = dataclasses.field(default_factory=CdnBehaviour)

    def __post_init__(self) -> None:
        if self.content_type is None:
            self.content_type = mimetypes.guess_type(self.filename)[0]

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def dimensions(self) -> Optional[Tuple[int, int]]:
        return image_dimensions(self.data)

    def to_payload(self) -> Dict[str, Any]:
        payload: Dict[str, Any] = {
            'id': str(self.id),
            'filename': self.filename,
            'size': self.size,
            'url': self.url,
            'proxy_url': self.url,
            'content_type': self.content_type,
            'title': self.filename.rsplit('.', 1)[0],
        }
        if self.description is not None:
            payload['description'] = self.description
        dimensions = self.dimensions
        if dimensions is not None:
            payload['width'], payload['height'] = dimensions
        return payload


@dataclasses.dataclass(frozen=True)
class MessageVersion:
    """One state of a message: its creation, each edit, and its deletion, stamped with the fake clock."""

    kind: str  # 'create', 'edit' or 'delete'
    at: float  # fake-clock unix seconds
    source: str  # e.g. 'PATCH /channels/{channel_id}/messages/{message_id}' or 'interaction callback 7'
    content: str
    embeds: Tuple[Dict[str, Any], ...]
    components: Tuple[Dict[str, Any], ...]
    attachments: Tuple[FakeAttachment, ...]
    flags: int
    allowed_mentions: Optional[Dict[str, Any]]


def walk_components(components: Sequence[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """Every component, depth first, through action rows, containers, sections and labels."""
    for component in components:
        yield component
        yield from walk_components(component.get('components', []))
        for key in ('accessory', 'component'):
            child = component.get(key)
            if isinstance(child, dict):
                yield from walk_components([child])


@dataclasses.dataclass(eq=False)
class FakeMessage:
    id: int
    channel_id: int
    guild_id: Optional[int]
    author: FakeUser
    created_at: float
    content: str = ''
    embeds: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    components: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    attachments: List[FakeAttachment] = dataclasses.field(default_factory=list)
    flags: int = 0
    type: int = 0
    tts: bool = False
    nonce: Optional[str] = None
    allowed_mentions: Optional[Dict[str, Any]] = None
    mentioned_users: List[FakeUser] = dataclasses.field(default_factory=list)
    mentioned_role_ids: List[int] = dataclasses.field(default_factory=list)
    mention_everyone: bool = False
    message_reference: Optional[Dict[str, Any]] = None
    interaction_id: Optional[int] = None
    interaction_metadata: Optional[Dict[str, Any]] = None
    webhook_id: Optional[int] = None
    application_id: Optional[int] = None
    edited_at: Optional[float] = None
    deleted: bool = False
    reactions: Dict[str, List[int]] = dataclasses.field(default_factory=dict)
    versions: List[MessageVersion] = dataclasses.field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & MESSAGE_FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while the message is a deferred "Bot is thinking..." placeholder."""
        return bool(self.flags & MESSAGE_FLAG_LOADING)

    @property
    def mentioned_user_ids(self) -> List[int]:
        """Users this message actually pinged, after ``allowed_mentions`` was applied."""
        return [user.id for user in self.mentioned_users]

    @property
    def edits(self) -> List[MessageVersion]:
        return [version for version in self.versions if version.kind == 'edit']

    @property
    def edit_count(self) -> int:
        return len(self.edits)

    @property
    def edit_times(self) -> List[float]:
        return [version.at for version in self.edits]

    def all_components(self) -> List[Dict[str, Any]]:
        return list(walk_components(self.components))

    def buttons(self) -> List[Dict[str, Any]]:
        return [component for component in self.all_components() if component.get('type') == 2]

    def custom_ids(self) -> List[str]:
        return [component['custom_id'] for component in self.all_components() if 'custom_id' in component]

    def find_component(self, custom_id: Optional[str] = None, *, label: Optional[str] = None) -> Dict[str, Any]:
        for component in self.all_components():
            if custom_id is not None and component.get('custom_id') != custom_id:
                continue
            if label is not None and component.get('label') != label:
                continue
            return component
        raise KeyError(f'message {self.id} has no component with custom_id={custom_id!r} label={label!r}')

    def attachment(self, filename: str) -> FakeAttachment:
        for attachment in self.attachments:
            if attachment.filename == filename:
                return attachment
        raise KeyError(f'message {self.id} has no attachment named {filename!r}')

    def find_versions(self, predicate: Callable[[MessageVersion], bool]) -> List[MessageVersion]:
        return [version for version in self.versions if predicate(version)]

    def to_payload(self, *, member_payload: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        payload: Dict[str, Any] = {
            'id': str(self.id),
            'channel_id': str(self.channel_id),
            'type': self.type,
            'author': self.author.to_payload(),
            'content': self.content,
            'timestamp': iso_timestamp(self.created_at),
            'edited_timestamp': iso_timestamp(self.edited_at) if self.edited_at is not None else None,
            'tts': self.tts,
            'mention_everyone': self.mention_everyone,
            'mentions': [user.to_payload() for user in self.mentioned_users],
            'mention_roles': [str(role_id) for role_id in self.mentioned_role_ids],
            'attachments': [attachment.to_payload() for attachment in self.attachments],
            'embeds': [dict(embed) for embed in self.embeds],
            'components': list(self.components),
            'pinned': False,
            'flags': self.flags,
            'reactions': [
                {'emoji': {'id': None, 'name': emoji}, 'count': len(user_ids), 'me': False,
                 'count_details': {'burst': 0, 'normal': len(user_ids)}, 'burst_colors': [], 'me_burst': False}
                for emoji, user_ids in self.reactions.items() if user_ids
            ],
        }
        if self.guild_id is not None:
            payload['guild_id'] = str(self.guild_id)
        if member_payload is not None:
            payload['member'] = member_payload
        if self.nonce is not None:
            payload['nonce'] = self.nonce
        if self.message_reference is not None:
            payload['message_reference'] = self.message_reference
        if self.webhook_id is not None:
            payload['webhook_id'] = str(self.webhook_id)
        if self.application_id is not None:
            payload['application_id'] = str(self.application_id)
        if self.interaction_metadata is not None:
            payload['interaction_metadata'] = self.interaction_metadata
        return payload
