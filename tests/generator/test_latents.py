"""The latents' moving average, kept as BigSleep keeps it: the starting latents are its first value."""

from __future__ import annotations

import pytest
import torch

from generator.latents import LatentAverage, Latents

CPU = torch.device("cpu")


def bigsleeps_average(history: list[torch.Tensor], decay: float) -> torch.Tensor:
    """BigSleep's EMA, written out: a zero-started average updated once at creation (with the starting value) and
    once after every step, divided by 1 - decay^(updates) to remove the bias of the zero start."""
    biased = torch.zeros_like(history[0], dtype=torch.float64)
    for value in history:
        biased = decay * biased + (1 - decay) * value.double()
    return biased / (1 - decay ** len(history))


@pytest.mark.parametrize("decay", [0.99, 0.5, 0.0])
def test_the_average_counts_the_starting_latents_as_its_first_value(decay):
    rng = torch.Generator().manual_seed(0)
    latents = Latents.random(3, rng, CPU)
    average = LatentAverage(latents, decay)
    history = [torch.cat([latents.z, latents.class_logits], dim=1).detach().clone()]
    snapshot = average.average()  # before any step: the starting latents (to rounding: (1 - decay) x / (1 - decay))
    torch.testing.assert_close(snapshot.z, latents.z.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(snapshot.class_logits, latents.class_logits.detach(), rtol=1e-6, atol=1e-6)
    for _ in range(5):
        with torch.no_grad():
            latents.z.add_(torch.randn(latents.z.shape, generator=rng))
            latents.class_logits.add_(torch.randn(latents.class_logits.shape, generator=rng))
        average.update()
        history.append(torch.cat([latents.z, latents.class_logits], dim=1).detach().clone())
        snapshot = average.average()
        expected = bigsleeps_average(history, decay).float()
        # Float32 updates against a float64 sum: rounding only.
        torch.testing.assert_close(torch.cat([snapshot.z, snapshot.class_logits], dim=1), expected, rtol=1e-5, atol=1e-5)


def test_after_one_step_the_start_still_weighs_in():
    latents = Latents(torch.zeros(1, 128, requires_grad=True), torch.zeros(1, 1000, requires_grad=True))
    average = LatentAverage(latents, 0.9)
    with torch.no_grad():
        latents.z.fill_(1.0)
    average.update()
    # (0.9 * 0.1 * 0 + 0.1 * 1) / (1 - 0.9^2): the start (0) holds 0.09 / 0.19 of the weight.
    torch.testing.assert_close(average.average().z, torch.full((1, 128), 0.1 / 0.19))
