"""The BigSleep optimisation: many images (jobs) can share each step, each with its own everything.

A `DreamJob` owns one image's latents, Adam state, EMA, crop generator and step count. `DreamEngine.step`
advances any set of same-size jobs by one step in one batched forward and backward pass. Since every job's
loss depends only on its own latents, the gradient each job receives does not depend on which other jobs
shared the batch (up to float rounding in batched kernels). `dream()` runs one job start to finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from generator import biggan as biggan_ops
from generator import clip_model
from generator.cutouts import cut_and_resize, sample_crop_boxes
from generator.images import to_pil
from generator.latents import LatentAverage, Latents, class_vectors
from generator.losses import class_loss, latent_loss, similarity_loss
from generator.models import DreamModels
from generator.protocol import DreamSpec


class DreamCancelled(Exception):
    """The caller asked to stop; raised between steps."""


@dataclass(frozen=True)
class StepReport:
    step: int  # steps done so far, 1-based
    total: int
    loss: float
    snapshot: Image.Image | None = None


@dataclass
class DreamOutcome:
    image: Image.Image
    latents_npz: bytes
    snapshots: list[Image.Image]
    steps: int
    wall_seconds: float


@dataclass
class DreamJob:
    """One image in progress. Create with `DreamEngine.start`."""

    spec: DreamSpec
    latents: Latents
    optimizer: torch.optim.Optimizer
    average: LatentAverage
    crop_rng: torch.Generator
    positive_embeddings: torch.Tensor
    negative_embeddings: torch.Tensor
    step: int = 0
    last_loss: float = float("nan")
    # Fewer cutouts than the spec asked for: set when memory ran out and the job is retried smaller.
    cutouts_override: int | None = None
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return self.spec.size

    @property
    def cutouts(self) -> int:
        return self.cutouts_override or self.spec.cutouts

    @property
    def finished(self) -> bool:
        return self.step >= self.spec.steps

    def wants_snapshot(self) -> bool:
        """After the step just taken: every `snapshot_every` steps, and always after the last one."""
        every = self.spec.snapshot_every
        return every > 0 and (self.step % every == 0 or self.finished)


class DreamEngine:
    def __init__(self, models: DreamModels):
        self.models = models

    def start(self, spec: DreamSpec) -> DreamJob:
        """Set up a job: validates the spec, encodes its prompts, draws its initial latents from its seed."""
        spec.validate()
        models = self.models
        generator = models.generator(spec.size)
        rows = biggan_ops.latent_rows(generator.config)
        rng = torch.Generator().manual_seed(spec.seed)
        if spec.init_latents is not None:
            latents = Latents.from_npz(spec.init_latents, rows, spec.init_noise, rng, models.device)
        else:
            latents = Latents.random(rows, rng, models.device)
        return DreamJob(
            spec=spec,
            latents=latents,
            optimizer=torch.optim.Adam(latents.parameters(), lr=spec.learning_rate),
            average=LatentAverage(latents, spec.ema_decay),
            crop_rng=rng,
            positive_embeddings=clip_model.encode_texts(models.clip, spec.prompts, models.device),
            negative_embeddings=clip_model.encode_texts(models.clip, spec.negative_prompts, models.device),
        )

    def losses(self, jobs: Sequence[DreamJob]) -> torch.Tensor:
        """Each job's loss (one per job) at its current latents, differentiable with respect to them."""
        size = jobs[0].size
        if any(job.size != size for job in jobs):
            raise ValueError("jobs of different image sizes cannot share a step")
        models = self.models
        z = torch.stack([job.latents.z for job in jobs])
        classes = torch.stack([class_vectors(job.latents.class_logits, job.spec.max_classes) for job in jobs])
        images = biggan_ops.render(models.generator(size), z, classes)

        clip_size = clip_model.input_resolution(models.clip)
        crops = torch.cat(
            [
                cut_and_resize(image, sample_crop_boxes(size, job.cutouts, job.crop_rng), clip_size)
                for image, job in zip(images, jobs)
            ]
        )
        embeddings = clip_model.encode_images(models.clip, crops).split([job.cutouts for job in jobs])
        similarity = torch.stack(
            [
                similarity_loss(job_embeddings, job.positive_embeddings, job.negative_embeddings)
                for job_embeddings, job in zip(embeddings, jobs)
            ]
        )
        return similarity + latent_loss(z) + class_loss(classes)

    def step(self, jobs: Sequence[DreamJob]) -> list[float]:
        """Advance every job by one optimisation step; returns each job's loss before the step."""
        for job in jobs:
            job.optimizer.zero_grad(set_to_none=True)
        losses = self.losses(jobs)
        losses.sum().backward()
        values = losses.detach().cpu().tolist()
        for job, value in zip(jobs, values):
            job.optimizer.step()
            job.average.update()
            job.step += 1
            job.last_loss = value
        return values

    @torch.no_grad()
    def render_average(self, job: DreamJob) -> Image.Image:
        """The picture we show: rendered from the job's averaged (EMA) latents."""
        average = job.average.average()
        classes = class_vectors(average.class_logits, job.spec.max_classes)
        image = biggan_ops.render(self.models.generator(job.size), average.z[None], classes[None])[0]
        return to_pil(image)

    def average_latents_npz(self, job: DreamJob) -> bytes:
        return job.average.average().to_npz()


def dream(
    models: DreamModels,
    spec: DreamSpec,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_snapshots: bool = False,
) -> DreamOutcome:
    """Run one job to the end. `should_stop` is asked before every step; if it says yes, DreamCancelled."""
    started = time.perf_counter()
    engine = DreamEngine(models)
    job = engine.start(spec)
    snapshots: list[Image.Image] = []
    snapshot = None
    while not job.finished:
        if should_stop is not None and should_stop():
            raise DreamCancelled(f"stopped after {job.step} of {spec.steps} steps")
        (loss,) = engine.step([job])
        snapshot = engine.render_average(job) if job.wants_snapshot() else None
        if snapshot is not None and keep_snapshots:
            snapshots.append(snapshot)
        if on_step is not None:
            on_step(StepReport(job.step, spec.steps, loss, snapshot))
    # With snapshots on, the last one was taken after the last step and is the final picture already.
    final = snapshot if snapshot is not None else engine.render_average(job)
    return DreamOutcome(final, engine.average_latents_npz(job), snapshots, job.step, time.perf_counter() - started)
