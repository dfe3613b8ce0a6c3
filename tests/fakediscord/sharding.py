"""Which shard owns what, as Discord computes it, and guild ids that spread evenly over shards.

Discord routes a guild's events to shard ``(guild_id >> 22) % shard_count``; direct-message events go to
shard 0. The fake gives the k-th guild it creates a snowflake whose timestamp is ``k`` ms after a multiple of
``SHARD_CYCLE_MS``, so that guild k lands on shard ``k % n`` for every shard count ``n`` that divides the cycle
(every count up to 16, among others). Real snowflakes made within one millisecond share their timestamp,
so guilds created back to back would otherwise all land on one shard.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

Shard = Tuple[int, int]  # (shard_id, shard_count), as in IDENTIFY's ``shard`` field

DISCORD_EPOCH_MS = 1420070400000
SHARD_CYCLE_MS = 720720  # lcm(1, ..., 16)
# Guild ids use their own worker id in the snowflake, so they never collide with the fake's other ids.
GUILD_SNOWFLAKE_WORKER = 2 << 17


def shard_of(guild_id: Optional[int], shard_count: int) -> int:
    """The shard that receives a guild's events; None (a direct message) goes to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


def owns(shard: Optional[Shard], guild_id: Optional[int]) -> bool:
    """Whether a session identified with ``shard`` (None: unsharded, which owns everything) gets this guild."""
    return shard is None or shard_of(guild_id, shard[1]) == shard[0]


def parse_identify_shard(value: Any) -> Optional[Shard]:
    """IDENTIFY's ``shard`` as a tuple, or None when absent; ValueError for what Discord closes with 4010."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(part, int) and not isinstance(part, bool) for part in value)):
        raise ValueError(f'shard must be [shard_id, shard_count], not {value!r}')
    shard_id, shard_count = value
    if shard_count < 1 or not 0 <= shard_id < shard_count:
        raise ValueError(f'shard id {shard_id} is not in 0..{shard_count - 1}')
    return shard_id, shard_count


def guild_cycle_start(unix_seconds: float) -> int:
    """Milliseconds since Discord's epoch of the last cycle start before ``unix_seconds``."""
    since_epoch = int(unix_seconds * 1000) - DISCORD_EPOCH_MS
    return since_epoch - since_epoch % SHARD_CYCLE_MS


def guild_index_on_shard(next_index: int, shard: Optional[Shard]) -> int:
    """The first guild index from ``next_index`` on that lands on ``shard`` (any index when None)."""
    if shard is None:
        return next_index
    shard_id, shard_count = parse_identify_shard(list(shard)) or (0, 1)
    if SHARD_CYCLE_MS % shard_count:
        raise ValueError(f'the fake places guilds on shards only for shard counts that divide {SHARD_CYCLE_MS}')
    return next_index + (shard_id - next_index) % shard_count


def guild_snowflake(cycle_start_ms: int, index: int) -> int:
    return ((cycle_start_ms + index) << 22) | GUILD_SNOWFLAKE_WORKER
