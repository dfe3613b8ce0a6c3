"""Images made with models that draw noise (tiny, random) say so in every progress and result message, /show's
too (issue 11 item 16); the real models' messages carry no such line. The simulated worker stands in, reporting
the models kind a real worker would (tests/bot/jobs/test_real_worker_e2e.py checks the real worker on tiny models)."""

from __future__ import annotations

import dataclasses

import pytest
from e2e_helpers import imagine, wait_for_result

from bot.jobs.simulated import SimulatedGenerationClient
from generator.wire import WorkerHealth

NOTES = {
    "tiny": "Made with the tiny test models: this is noise, not your prompt.",
    "random": "Made with random real-size models: this is noise, not your prompt.",
}


class ReportsModels(SimulatedGenerationClient):
    """The simulated worker, saying in its health that it runs these models (as GenerationClient does)."""

    def __init__(self, models_kind: str) -> None:
        super().__init__(seconds_per_job=0.6, progress_events=3)
        self.models_kind = models_kind

    def health(self) -> WorkerHealth:
        return dataclasses.replace(super().health(), models_kind=self.models_kind)


@pytest.mark.parametrize("models_kind", ["tiny", "random", "full"])
async def test_progress_and_results_made_with_noise_models_say_so(fake_discord, world, start_bot, models_kind):
    await start_bot(ReportsModels(models_kind))
    _, job_id = await imagine(fake_discord, world.channel, world.alice, "a bowl of cherries")
    result = await wait_for_result(fake_discord, world.channel, job_id)
    shown = await fake_discord.invoke_command(world.channel, world.alice, "show", job=job_id)
    await shown.wait_response()
    reposted = await shown.wait_original(lambda m: not m.loading)

    progress = [version.content for version in result.versions if "%) step" in version.content]
    assert progress, [version.content for version in result.versions]
    note = NOTES.get(models_kind)
    for content in [*progress, result.content, reposted.content]:
        if note is None:
            assert "noise" not in content, content
        else:
            assert note in content, content
