"""One asyncio.Lock per key (a user, a server, a challenge), for code that must not interleave per key.

This module must stay free of torch and discord imports.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Hashable


class KeyedLocks:
    """`locks(key)` is the lock for that key. Held weakly: a key's lock lives only while some task holds it or
    waits for it, so a bot that has seen a million users keeps no million locks."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, key: Hashable) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock
