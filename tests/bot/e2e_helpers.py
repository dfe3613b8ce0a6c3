"""Small helpers shared by the end-to-end tests: run /imagine, find a job's messages, read results."""

from __future__ import annotations

import asyncio
import io
import re
import signal
from typing import Any

from fakediscord import FakeDiscord, FakeMessage
from PIL import Image

JOB_ID = re.compile(r"`([0-9a-z]{8})`")


async def imagine(fake: FakeDiscord, channel, member, prompt: str, **options: Any):
    """Run /imagine and return (interaction response, job id or None)."""
    interaction = await fake.invoke_command(channel, member, "imagine", prompt=prompt, **options)
    response = await interaction.wait_response()
    found = JOB_ID.search(response.content or "")
    return response, (found.group(1) if found and "Queued" in response.content else None)


def job_field(message: FakeMessage) -> str:
    for embed in message.embeds:
        for field in embed.get("fields", []):
            if field.get("name") == "Job":
                return field.get("value", "")
    return ""


def result_of(job_id: str):
    """Predicate: the message shows job_id's finished image."""

    def check(message: FakeMessage) -> bool:
        return f"`{job_id}`" in job_field(message) and any(a.filename == f"{job_id}.png" for a in message.attachments)

    return check


async def wait_for_result(fake: FakeDiscord, channel, job_id: str, timeout: float = 20.0) -> FakeMessage:
    return await fake.wait_for_message(channel, result_of(job_id), timeout=timeout)


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def result_png(message: FakeMessage, job_id: str) -> bytes:
    return next(a.data for a in message.attachments if a.filename == f"{job_id}.png")


async def stop_gracefully(process: asyncio.subprocess.Process, timeout: float = 60.0) -> int:
    """SIGTERM (what a service manager sends), then the exit code; killed if it does not stop in time."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        return await process.wait()
