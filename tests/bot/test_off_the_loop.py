"""Blocking work stays off the event loop (issue 11 item 13): CLIP's tokenizer on a long prompt, the checks that a
result file is still there, and deleting files all run in a worker thread, through the real bot and the fake
Discord. Each blocking call is wrapped to note whether it ran on the thread of a running event loop."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from e2e_helpers import imagine, wait_for_result
from fakediscord import Permission

import bot.jobs.parsing
from bot.jobs.files import ResultFiles


class BlockingCalls:
    """Wraps `owner.name`; `on_loop` and `off_loop` count the calls made on an event loop's thread and elsewhere."""

    def __init__(self, monkeypatch, owner: object, name: str, only=lambda *args, **kwargs: True) -> None:
        self.on_loop = 0
        self.off_loop = 0
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if only(*args, **kwargs):
                try:
                    asyncio.get_running_loop()
                    self.on_loop += 1
                except RuntimeError:
                    self.off_loop += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    def assert_only_off_the_loop(self) -> None:
        assert self.off_loop > 0 and self.on_loop == 0, (self.on_loop, self.off_loop)


def unlinks_under(folder: Path, monkeypatch) -> BlockingCalls:
    return BlockingCalls(monkeypatch, Path, "unlink", only=lambda path, *args, **kwargs: folder in Path(path).parents)


async def test_imagine_tokenises_the_prompt_off_the_loop(fake_discord, world, start_bot, monkeypatch):
    tokenising = BlockingCalls(monkeypatch, bot.jobs.parsing, "check_prompt_lengths")
    await start_bot()

    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a lighthouse " * 20, negative="fog | rain")
    too_long, none = await imagine(fake_discord, world.channel, world.alice, "a very long prompt " * 30)

    assert job_id and none is None and "CLIP tokens" in too_long.content
    tokenising.assert_only_off_the_loop()


async def test_result_files_are_checked_and_deleted_off_the_loop(fake_discord, world, start_bot, monkeypatch, data_dir):
    checks = BlockingCalls(monkeypatch, ResultFiles, "exists")
    deletes = unlinks_under(data_dir, monkeypatch)
    await start_bot()
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a bowl of cherries")
    result = await wait_for_result(fake_discord, world.channel, job_id)

    shown = await fake_discord.invoke_command(world.channel, world.alice, "show", job=job_id)
    await shown.wait_response()
    varied = await fake_discord.click_button(world.alice, result, f"bs:vary:{job_id}")
    assert "Queued" in (await varied.wait_response()).content
    deleted = await fake_discord.click_button(world.alice, result, f"bs:delete:{job_id}")
    assert "Deleted" in (await deleted.wait_response()).content

    checks.assert_only_off_the_loop()
    deletes.assert_only_off_the_loop()
    assert not any((data_dir / "results").rglob(f"{job_id}.*"))


async def test_challenge_entries_are_checked_and_deleted_off_the_loop(fake_discord, world, start_bot, monkeypatch, data_dir):
    checks = BlockingCalls(monkeypatch, ResultFiles, "exists")
    deletes = unlinks_under(data_dir, monkeypatch)
    await start_bot()
    boss = fake_discord.add_member(world.guilds[0], "boss", permissions=Permission.MANAGE_GUILD)
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a lighthouse")
    await wait_for_result(fake_discord, world.channel, job_id)
    started = await fake_discord.invoke_command(world.channel, boss, "challenge start", theme="Lighthouses", duration="2d")
    await started.wait_response()
    await started.wait_original(lambda m: not m.loading)

    submitted = await fake_discord.invoke_command(world.channel, world.alice, "challenge submit", job=job_id)
    await submitted.wait_response()
    assert "entry #1" in (await submitted.wait_original(lambda m: not m.loading)).content
    withdrawn = await fake_discord.invoke_command(world.channel, world.alice, "challenge withdraw")
    assert "Withdrew entry #1" in (await withdrawn.wait_response()).content

    checks.assert_only_off_the_loop()
    deletes.assert_only_off_the_loop()
    assert not any((data_dir / "challenges").rglob("*.png"))
