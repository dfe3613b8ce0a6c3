"""`/imagine prompt:<text>` and `/blend`: options into a spec (bot.jobs.parsing), the pictures they name fetched
and checked (bot.jobs.prompt_images), the spec through the one way in (bot.jobs.admission), and the outcome into
the answer (bot.jobs.queueing)."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs.admission import MAX_GRID_COUNT, Refusal, Requester
from bot.jobs.parsing import MIN_IMAGE_WEIGHT, parse_imagine
from bot.jobs.prompt_images import Pictures, Prepared
from bot.jobs.queueing import submit_and_answer
from bot.jobs.services import JobServices
from bot.jobs.uploads import AttachmentLike
from bot.messages import NO_MENTIONS, shorten
from generator.protocol import ALLOWED_SIZES, MAX_IMAGE_WEIGHT, MAX_STEPS, QUALITY_PRESETS, SpecError

# Discord's integer options stop at 2**53 (JavaScript's safe integers); the seeds we pick are far below.
MAX_TYPED_SEED = 2**53 - 1

_PRESET_HELP = {
    "draft": "draft: quick and rough",
    "normal": "normal: the usual",
    "best": "best: slow and detailed",
    "cpu": "cpu: small and fast, for machines without a GPU",
}

# The options /imagine and /blend share.
_SETTINGS_HELP = {
    "seed": "Same seed and settings give the same image (default: random)",
    "steps": "Optimisation steps: more is slower and more detailed",
    "quality": "A preset for steps and detail (steps wins if you give both)",
    "size": "Image size in pixels",
}
_QUALITY_CHOICES = [app_commands.Choice(name=_PRESET_HELP.get(name, name), value=name) for name in QUALITY_PRESETS]
_SIZE_CHOICES = [app_commands.Choice(name=f"{size} px", value=size) for size in ALLOWED_SIZES]
_AUTOCOMPLETE_CHOICES = 25


class ImagineCog(commands.Cog):
    def __init__(self, services: JobServices) -> None:
        self.services = services
        self.pictures = Pictures(services.store, services.files)

    @app_commands.command(name="imagine", description="Dream an image from a text prompt, and a picture if you like (BigGAN + CLIP)")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to see; separate several prompts with |",
        negative="What to steer away from; separate several with |",
        **_SETTINGS_HELP,
        image="A picture (PNG, JPEG, WebP or GIF) the result should look like; with it, prompt may be just |",
        image_weight=f"How strongly the picture pulls: 1 as strongly as the prompt (default), up to {MAX_IMAGE_WEIGHT:g}",
        like="One of your finished images from this server (its job id) to steer by, like an uploaded picture",
        count=f"How many images, seeds seed, seed+1, ...: 2 to {MAX_GRID_COUNT} come as one grid (default 1)",
    )
    @app_commands.choices(quality=_QUALITY_CHOICES, size=_SIZE_CHOICES)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        negative: str | None = None,
        seed: app_commands.Range[int, 0, MAX_TYPED_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        quality: str | None = None,
        size: int | None = None,
        image: discord.Attachment | None = None,
        image_weight: app_commands.Range[float, MIN_IMAGE_WEIGHT, MAX_IMAGE_WEIGHT] | None = None,
        like: str | None = None,
        count: app_commands.Range[int, 1, MAX_GRID_COUNT] = 1,
    ) -> None:
        uploads = [image] if image is not None else []
        await self._dream(
            interaction, uploads, like, prompt, negative=negative, seed=seed, steps=steps, quality=quality, size=size,
            image_weight=image_weight, count=count,
        )

    @imagine.autocomplete("like")
    async def _like_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        """The member's finished images from this server, newest first."""
        recent = await self.services.store.recent_jobs(
            interaction.user.id, limit=_AUTOCOMPLETE_CHOICES, guild_id=interaction.guild_id
        )
        typed = current.strip().lstrip("#").lower()
        return [
            app_commands.Choice(name=shorten(f"{job.id} · {job.prompt or 'pictures only'}", 100), value=job.id)
            for job in recent
            if job.state == "done" and (not typed or typed in job.id)
        ]

    @app_commands.command(name="blend", description="Dream an image that looks like 2 to 4 pictures at once")
    @app_commands.guild_only()
    @app_commands.describe(
        image1="A picture (PNG, JPEG, WebP or GIF)",
        image2="Another picture",
        image3="A third picture (optional)",
        image4="A fourth picture (optional)",
        **_SETTINGS_HELP,
    )
    @app_commands.choices(quality=_QUALITY_CHOICES, size=_SIZE_CHOICES)
    async def blend(
        self,
        interaction: discord.Interaction,
        image1: discord.Attachment,
        image2: discord.Attachment,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        seed: app_commands.Range[int, 0, MAX_TYPED_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        quality: str | None = None,
        size: int | None = None,
    ) -> None:
        # Pictures only, pulling equally: the prompt is empty and each weighs the default.
        uploads = [upload for upload in (image1, image2, image3, image4) if upload is not None]
        await self._dream(interaction, uploads, None, "", seed=seed, steps=steps, quality=quality, size=size)

    async def _dream(
        self, interaction: discord.Interaction, uploads: list[AttachmentLike], like: str | None, prompt: str,
        count: int = 1, **options,
    ) -> None:
        assert interaction.guild_id is not None
        admission = self.services.admission
        try:
            # The server's defaults fill what the member left out; whether the spec may run here is admission's.
            # In a thread: CLIP's tokenizer on a long prompt would hold up the event loop.
            spec = await asyncio.to_thread(
                parse_imagine,
                prompt,
                images=len(uploads) + (like is not None),
                limits=admission.limits_for(interaction.guild_id),
                **options,
            )
        except SpecError as problem:
            await interaction.response.send_message(str(problem), ephemeral=True, allowed_mentions=NO_MENTIONS)
            return

        async def prepare(requester: Requester) -> Prepared | Refusal:
            return await self.pictures.prepare(admission, requester, spec, uploads, like)

        await submit_and_answer(interaction, admission, self.services.progress, spec, prepare=prepare, count=count)
