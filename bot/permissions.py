"""Who counts as a moderator: the permission checks every feature's commands and buttons share."""

from __future__ import annotations

import discord


def manages_server(interaction: discord.Interaction) -> bool:
    """Manage Server (or Administrator) here: what server settings and challenges ask for."""
    permissions = interaction.permissions
    return bool(permissions.manage_guild or permissions.administrator)


def is_moderator(interaction: discord.Interaction) -> bool:
    permissions = interaction.permissions
    return bool(permissions.manage_guild or permissions.manage_messages or permissions.administrator)
