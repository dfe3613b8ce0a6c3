"""Discord permission bits and the resolution order Discord applies (roles, then channel overwrites)."""

from __future__ import annotations

import enum
from typing import Any, Iterable, Union


class Permission(enum.IntFlag):
    """The permission bits tests are likely to need (values from Discord's documentation)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_AUDIT_LOG = 1 << 7
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    MODERATE_MEMBERS = 1 << 40
    SEND_MESSAGES_IN_THREADS = 1 << 38


ALL_PERMISSIONS = (1 << 51) - 1

DEFAULT_EVERYONE_PERMISSIONS = (
    Permission.CREATE_INSTANT_INVITE
    | Permission.ADD_REACTIONS
    | Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.SEND_MESSAGES_IN_THREADS
)

DEFAULT_BOT_PERMISSIONS = (
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.ADD_REACTIONS
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.SEND_MESSAGES_IN_THREADS
)

PermissionsLike = Union[int, Permission, Any]


def as_bits(value: PermissionsLike) -> int:
    """Accepts an int, a ``Permission`` flag or a ``discord.Permissions`` (anything with ``.value``)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return int(value)
    bits = getattr(value, 'value', None)
    if isinstance(bits, int):
        return bits
    raise TypeError(f'not a permission value: {value!r}')


def has_all(granted: int, required: int) -> bool:
    if granted & Permission.ADMINISTRATOR:
        return True
    return granted & required == required


def apply_overwrites(base: int, everyone_role_id: int, role_ids: Iterable[int], member_id: int, overwrites: Iterable[Any]) -> int:
    """Channel permissions from guild-level ``base``, in Discord's order: @everyone, roles together, member."""
    if base & Permission.ADMINISTRATOR:
        return ALL_PERMISSIONS
    overwrites = list(overwrites)
    role_ids = set(role_ids)
    permissions = base
    for overwrite in overwrites:
        if overwrite.target_id == everyone_role_id:
            permissions = (permissions & ~overwrite.deny) | overwrite.allow
    role_allow = role_deny = 0
    for overwrite in overwrites:
        if overwrite.kind == 'role' and overwrite.target_id in role_ids and overwrite.target_id != everyone_role_id:
            role_allow |= overwrite.allow
            role_deny |= overwrite.deny
    permissions = (permissions & ~role_deny) | role_allow
    for overwrite in overwrites:
        if overwrite.kind == 'member' and overwrite.target_id == member_id:
            permissions = (permissions & ~overwrite.deny) | overwrite.allow
    # Without VIEW_CHANNEL every other channel permission is moot, as on Discord.
    if not permissions & Permission.VIEW_CHANNEL:
        return 0
    return permissions
