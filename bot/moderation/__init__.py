"""Moderation: per-server settings, quotas, banned words, blocks and the audit trail.

Pure parts (no I/O): `wordfilter` (the banned-word matcher), `quotas` (limits, windows, overrides) and
`stats` (percentiles). `store` keeps everything in the bot's SQLite file; `service` is what the rest of the
bot asks ("may this member queue this?", "which limits apply here?"). The slash commands are in
`bot.moderation.commands`. Nothing here imports discord or torch.
"""
