"""`/imagine prompt:<text>`: validate, queue, answer with position and ETA."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs.parsing import parse_imagine
from bot.jobs.queueing import queue_from_interaction
from bot.messages import NO_MENTIONS
from generator.protocol import ALLOWED_SIZES, MAX_STEPS, QUALITY_PRESETS, SpecError

if TYPE_CHECKING:
    from bot.app import BigSleepBot

# Discord's integer options stop at 2**53 (JavaScript's safe integers); the seeds we pick are far below.
MAX_TYPED_SEED = 2**53 - 1

_PRESET_HELP = {
    "draft": "draft: quick and rough",
    "normal": "normal: the usual",
    "best": "best: slow and detailed",
    "cpu": "cpu: small and fast, for machines without a GPU",
}


class ImagineCog(commands.Cog):
    def __init__(self, bot: BigSleepBot) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Dream an image from a text prompt (BigGAN + CLIP)")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to see; separate several prompts with |",
        negative="What to steer away from; separate several with |",
        seed="Same seed and settings give the same image (default: random)",
        steps="Optimisation steps: more is slower and more detailed",
        quality="A preset for steps and detail (steps wins if you give both)",
        size="Image size in pixels",
    )
    @app_commands.choices(
        quality=[app_commands.Choice(name=_PRESET_HELP.get(name, name), value=name) for name in QUALITY_PRESETS],
        size=[app_commands.Choice(name=f"{size} px", value=size) for size in ALLOWED_SIZES],
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        negative: str | None = None,
        seed: app_commands.Range[int, 0, MAX_TYPED_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        quality: str | None = None,
        size: int | None = None,
    ) -> None:
        # The host's limits narrowed by this server's settings, and the host's banned words plus the server's.
        moderation = self.bot.moderation
        assert interaction.guild_id is not None
        try:
            spec = parse_imagine(
                prompt,
                negative=negative,
                seed=seed,
                steps=steps,
                quality=quality,
                size=size,
                limits=moderation.limits_for(interaction.guild_id),
                banned_word=moderation.matcher_for(interaction.guild_id).find,
            )
            spec = spec.with_changes(cutouts=min(spec.cutouts, self.bot.settings.limits.max_cutouts))
            sizes = self.bot.settings.worker.sizes
            if spec.size not in sizes:
                raise SpecError(f"This bot makes images of {', '.join(f'{s} px' for s in sizes)}; pick one of those.")
        except SpecError as problem:
            await interaction.response.send_message(str(problem), ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        await queue_from_interaction(interaction, spec, kind="imagine")
