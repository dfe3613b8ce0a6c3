"""`/imagine prompt:<text>`: options into a spec (bot.jobs.parsing), the spec through the one way in
(bot.jobs.admission), and the outcome into the answer (bot.jobs.queueing)."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs.parsing import parse_imagine
from bot.jobs.queueing import submit_and_answer
from bot.jobs.services import JobServices
from bot.messages import NO_MENTIONS
from generator.protocol import ALLOWED_SIZES, MAX_STEPS, QUALITY_PRESETS, SpecError

# Discord's integer options stop at 2**53 (JavaScript's safe integers); the seeds we pick are far below.
MAX_TYPED_SEED = 2**53 - 1

_PRESET_HELP = {
    "draft": "draft: quick and rough",
    "normal": "normal: the usual",
    "best": "best: slow and detailed",
    "cpu": "cpu: small and fast, for machines without a GPU",
}


class ImagineCog(commands.Cog):
    def __init__(self, services: JobServices) -> None:
        self.services = services

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
        assert interaction.guild_id is not None
        admission = self.services.admission
        try:
            # The server's defaults fill what the member left out; whether the spec may run here is admission's.
            # In a thread: CLIP's tokenizer on a long prompt would hold up the event loop.
            spec = await asyncio.to_thread(
                parse_imagine,
                prompt,
                negative=negative,
                seed=seed,
                steps=steps,
                quality=quality,
                size=size,
                limits=admission.limits_for(interaction.guild_id),
            )
        except SpecError as problem:
            await interaction.response.send_message(str(problem), ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        await submit_and_answer(interaction, admission, self.services.progress, spec)
