"""Slash commands, one cog per theme: `imagine` (making images) and `jobs` (/queue, /cancel, /show, /history)."""
