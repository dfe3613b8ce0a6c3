"""Shared pytest configuration for the bot's tests."""

# The fake Discord's fixtures: fake_discord, bot_runner, discord_error_log (see tests/fakediscord/__init__.py).
from fakediscord.fixtures import bot_runner, discord_error_log, fake_discord  # noqa: E402, F401
