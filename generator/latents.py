"""BigSleep's search space: per-block noise rows and class logits, with an EMA for the images we show."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from generator.biggan import NUM_CLASSES, Z_DIM

CLASS_LOGIT_MEAN = -3.9
CLASS_LOGIT_STD = 0.3
MAX_CLASSES_TEMPERATURE = 2.0


@dataclass
class Latents:
    """One image's optimisable inputs: z (rows, 128) and class logits (rows, 1000), both leaf tensors."""

    z: torch.Tensor
    class_logits: torch.Tensor

    @classmethod
    def random(cls, rows: int, rng: torch.Generator, device: torch.device) -> Latents:
        z = torch.randn(rows, Z_DIM, generator=rng)
        logits = torch.randn(rows, NUM_CLASSES, generator=rng) * CLASS_LOGIT_STD + CLASS_LOGIT_MEAN
        return cls(z.to(device).requires_grad_(), logits.to(device).requires_grad_())

    @classmethod
    def from_npz(cls, data: bytes, rows: int, noise: float, rng: torch.Generator, device: torch.device) -> Latents:
        """Start from saved latents, nudged by `noise` standard deviations of fresh noise (for variations)."""
        with np.load(io.BytesIO(data)) as saved:
            z = torch.from_numpy(saved["z"]).float()
            logits = torch.from_numpy(saved["class_logits"]).float()
        if z.shape != (rows, Z_DIM) or logits.shape != (rows, NUM_CLASSES):
            raise ValueError(f"saved latents have {z.shape[0]} rows; this image size needs {rows}")
        z = z + noise * torch.randn(z.shape, generator=rng)
        logits = logits + noise * CLASS_LOGIT_STD * torch.randn(logits.shape, generator=rng)
        return cls(z.to(device).requires_grad_(), logits.to(device).requires_grad_())

    def parameters(self) -> list[torch.Tensor]:
        return [self.z, self.class_logits]

    def to_npz(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, z=self.z.detach().cpu().numpy(), class_logits=self.class_logits.detach().cpu().numpy())
        return buffer.getvalue()


def class_vectors(class_logits: torch.Tensor, max_classes: int | None, temperature: float = MAX_CLASSES_TEMPERATURE) -> torch.Tensor:
    """Class mixtures from logits: independent sigmoids, or a differentiable top-k of softmax picks at `temperature`."""
    if max_classes is None:
        return torch.sigmoid(class_logits)
    return soft_top_k(class_logits, max_classes, temperature)


def soft_top_k(logits: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Pick k classes one by one, each time the softmax winner among those not yet picked; keep its probability."""
    remaining = logits
    picked = torch.zeros_like(logits)
    for _ in range(k):
        probabilities = (remaining / temperature).softmax(dim=-1)
        winner_probability, winner = probabilities.max(dim=-1, keepdim=True)
        picked = picked + torch.zeros_like(logits).scatter(-1, winner, winner_probability)
        remaining = remaining.scatter(-1, winner, float("-inf"))
    return picked


class LatentAverage:
    """Bias-corrected exponential moving average of latents: the images we show are rendered from it.

    Kept as BigSleep keeps its own: the starting latents are the first value averaged (at creation), then one
    update after every step; the zero-started sum is divided by 1 - decay^(values averaged).
    """

    def __init__(self, latents: Latents, decay: float):
        self.decay = decay
        self._decay_power = 1.0
        self._biased = [torch.zeros_like(p, requires_grad=False) for p in latents.parameters()]
        self._latents = latents
        self.update()

    @torch.no_grad()
    def update(self) -> None:
        self._decay_power *= self.decay
        for biased, current in zip(self._biased, self._latents.parameters()):
            biased.mul_(self.decay).add_(current, alpha=1 - self.decay)

    @torch.no_grad()
    def average(self) -> Latents:
        correction = 1 - self._decay_power  # above 0: decay < 1, and the start was averaged
        return Latents(*(biased / correction for biased in self._biased))
