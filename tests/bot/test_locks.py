"""KeyedLocks: one lock per key while it is in use, none kept once nobody needs it."""

from __future__ import annotations

import asyncio
import gc

from bot.locks import KeyedLocks


async def test_a_key_has_one_lock_while_held_and_keys_do_not_block_each_other() -> None:
    locks = KeyedLocks()
    async with locks("alice"):
        assert locks("alice").locked()
        assert not locks("bob").locked()


async def test_waiters_on_a_key_take_turns() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    holding, release_first = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with locks(1):
            order.append("first in")
            holding.set()
            await release_first.wait()
            order.append("first out")

    async def second() -> None:
        await holding.wait()
        async with locks(1):
            order.append("second in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await holding.wait()
    assert locks(1).locked() and order == ["first in"]
    release_first.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "first out", "second in"]


async def test_a_lock_nobody_holds_is_not_kept() -> None:
    locks = KeyedLocks()
    async with locks("carol"):
        pass
    gc.collect()
    assert len(locks._locks) == 0
