"""Real-size architectures (BigGAN-deep-512 + CLIP ViT-B/32, random weights) take a step on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from generator.engine import DreamEngine
from generator.models import load_models
from generator.protocol import DreamSpec

pytestmark = pytest.mark.slow


def test_one_step_at_512_px_with_real_size_models():
    models = load_models("random", [512], torch.device("cpu"))
    assert sum(p.numel() for p in models.clip.parameters()) > 140_000_000
    engine = DreamEngine(models)
    job = engine.start(DreamSpec(prompt="a bowl of cherries", size=512, cutouts=2, steps=1))
    (loss,) = engine.step([job])
    assert math.isfinite(loss)
    assert job.latents.z.shape == (15, 128) and job.step == 1
    assert engine.render_average(job).size == (512, 512)
