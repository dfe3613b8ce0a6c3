"""The BigSleep optimisation: many images (jobs) can share each step, each with its own everything.

A `DreamJob` owns one image's latents, Adam state, EMA, crop generator and step count. `DreamEngine.step`
advances any set of same-size jobs by one step in one batched forward and backward pass. Since every job's
loss depends only on its own latents, the gradient each job receives does not depend on which other jobs
shared the batch (up to float rounding in batched kernels).

What follows a step is the same wherever jobs run (`DreamEngine.report`): a snapshot when one is due, kept as a
timelapse frame if the job keeps them, and once the job is finished its outcome (final image, latents, frames).
Each caller passes its own per-step callback: `dream()` (the command line) runs one job start to finish, the
generation worker (`generator.worker`) runs batches and sends what it is handed to the bot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from generator import biggan as biggan_ops
from generator import clip_model, clip_vision
from generator.compiled import StepNetworks
from generator.cutouts import CropBoxes, cut_into_patches, sample_crop_boxes
from generator.images import read_picture, timelapse_gif, to_pil
from generator.latents import LatentAverage, Latents, class_vectors
from generator.losses import SIMILARITY_WEIGHT, class_loss, latent_loss, similarity_loss
from generator.models import DreamModels
from generator.protocol import SCORE_EVERY, DreamSpec, SpecError


class DreamCancelled(Exception):
    """The caller asked to stop; raised between steps."""


@dataclass
class DreamOutcome:
    image: Image.Image
    latents_npz: bytes
    # The snapshots the job kept as timelapse frames (none unless it keeps frames).
    snapshots: list[Image.Image]
    steps: int
    wall_seconds: float
    # With save_best: the chosen image's score and the step it was taken after (DreamEngine.score).
    score: float | None = None
    score_step: int | None = None

    def timelapse_gif(self) -> bytes:
        """The kept snapshots as an animated GIF; just the final image when none were kept."""
        return timelapse_gif(self.snapshots or [self.image])


@dataclass(frozen=True)
class StepReport:
    step: int  # steps done so far, 1-based
    total: int
    loss: float
    snapshot: Image.Image | None = None
    # Set after the job's last step.
    outcome: DreamOutcome | None = None


@dataclass(eq=False)  # compared (and hashed) by identity: one job is one object
class DreamJob:
    """One image in progress. Create with `DreamEngine.start`."""

    spec: DreamSpec
    latents: Latents
    optimizer: torch.optim.Optimizer
    average: LatentAverage
    crop_rng: torch.Generator
    positive_embeddings: torch.Tensor
    negative_embeddings: torch.Tensor
    # How strongly each positive target pulls (its text prompts' 1s, then its pictures' weights); None: all 1.
    positive_weights: torch.Tensor | None = None
    # Keep every snapshot for a timelapse of the job.
    keeps_frames: bool = False
    frames: list[Image.Image] = field(default_factory=list)
    step: int = 0
    last_loss: float = float("nan")
    # Fewer cutouts than the spec asked for: set when memory ran out and the job is retried smaller.
    cutouts_override: int | None = None
    started_at: float = field(default_factory=time.perf_counter)
    # With save_best: the best-scored EMA image so far.
    best: ScoredImage | None = None

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

    def wants_score(self) -> bool:
        """After the step just taken, with save_best: every SCORE_EVERY steps and after the last one. Fixed steps,
        not the snapshots' (which each run picks), so the same spec picks the same image."""
        return self.spec.save_best and (self.step % SCORE_EVERY == 0 or self.finished)


@dataclass(frozen=True)
class ScoredImage:
    score: float
    step: int
    image: Image.Image
    latents_npz: bytes


StepCallback = Callable[[DreamJob, StepReport], None]
ReportErrorCallback = Callable[[DreamJob, Exception], None]


class DreamEngine:
    def __init__(self, models: DreamModels, networks: StepNetworks | None = None):
        self.models = models
        # How a step runs the two networks: eagerly, or compiled (generator.compiled).
        self.networks = networks or StepNetworks(models)

    def start(self, spec: DreamSpec, keep_frames: bool = False) -> DreamJob:
        """Set up a job: validates the spec, encodes its prompts and pictures (once per job), draws its initial latents
        from its seed.
        `keep_frames`: keep its snapshots for a timelapse."""
        spec.validate()
        models = self.models
        generator = models.generator(spec.size)
        rows = biggan_ops.latent_rows(generator.config)
        rng = torch.Generator().manual_seed(spec.seed)
        if spec.init_latents is not None:
            latents = Latents.from_npz(spec.init_latents, rows, spec.init_noise, rng, models.device)
        else:
            latents = Latents.random(rows, rng, models.device)
        texts = clip_model.encode_texts(models.clip, spec.prompts, models.device)
        pictures = clip_model.encode_pictures(models.clip, image_prompt_pictures(spec), models.device)
        # Without pictures no weights at all, so a text-only job computes exactly what it did before pictures came.
        weights = [1.0] * len(texts) + [image.weight for image in spec.image_prompts] if spec.image_prompts else None
        return DreamJob(
            spec=spec,
            latents=latents,
            # Fused: one kernel per latent tensor, not a dozen small operations each step (toy models feel them).
            optimizer=torch.optim.Adam(latents.parameters(), lr=spec.learning_rate, fused=True),
            average=LatentAverage(latents, spec.ema_decay),
            crop_rng=rng,
            positive_embeddings=torch.cat([texts, pictures]),
            negative_embeddings=clip_model.encode_texts(models.clip, spec.negative_prompts, models.device),
            positive_weights=None if weights is None else torch.tensor(weights, device=models.device),
            keeps_frames=keep_frames,
        )

    def losses(self, jobs: Sequence[DreamJob]) -> torch.Tensor:
        """Each job's loss (one per job) at its current latents, differentiable with respect to them."""
        size = jobs[0].size
        if any(job.size != size for job in jobs):
            raise ValueError("jobs of different image sizes cannot share a step")
        z = torch.stack([job.latents.z for job in jobs])
        classes = torch.stack([class_vectors(job.latents.class_logits, job.spec.max_classes, job.spec.class_temperature) for job in jobs])
        images = self.networks.render(size, z, classes)

        # Normalised before cropping: the same per-pixel arithmetic, on far fewer pixels than the crops hold.
        boxes = [sample_crop_boxes(size, job.cutouts, job.crop_rng, job.spec.center_bias) for job in jobs]
        patches = self._cut_into_patches(clip_model.normalize_pixels(images), boxes)
        embeddings = self.networks.encode(patches).split([job.cutouts for job in jobs])
        similarity = torch.stack(
            [
                similarity_loss(job_embeddings, job.positive_embeddings, job.negative_embeddings, job.positive_weights)
                for job_embeddings, job in zip(embeddings, jobs)
            ]
        )
        return similarity + latent_loss(z) + class_loss(classes)

    def _cut_into_patches(self, normalized: torch.Tensor, boxes: Sequence[CropBoxes]) -> torch.Tensor:
        clip = self.models.clip
        return cut_into_patches(normalized, boxes, clip_model.input_resolution(clip), clip_vision.patch_size(clip.visual))

    def step(self, jobs: Sequence[DreamJob]) -> list[float]:
        """Advance every job by one optimisation step; returns each job's loss before the step."""
        for job in jobs:
            job.optimizer.zero_grad(set_to_none=True)
        # Crop positions drawn by an attempt that fails must be drawn again the same for the retry below.
        crop_states = [job.crop_rng.get_state() for job in jobs] if self.networks.compiled else []
        try:
            losses = self._differentiate(jobs)
        except Exception as error:
            # A compiled graph that fails (a shape first seen now, a kernel that does not build) would fail every
            # job given to it: run the networks eagerly from here on and take the step again. Out of memory is the
            # worker's to handle (it shrinks the batch).
            if not self.networks.compiled or isinstance(error, torch.OutOfMemoryError):
                raise
            self.networks.stop_compiling(error)
            for job, crop_state in zip(jobs, crop_states):
                job.optimizer.zero_grad(set_to_none=True)
                job.crop_rng.set_state(crop_state)
            losses = self._differentiate(jobs)
        values = losses.detach().cpu().tolist()
        for job, value in zip(jobs, values):
            job.optimizer.step()
            job.average.update()
            job.step += 1
            job.last_loss = value
        return values

    def _differentiate(self, jobs: Sequence[DreamJob]) -> torch.Tensor:
        self.networks.begin_step()
        losses = self.losses(jobs)
        losses.sum().backward()
        return losses

    def warm_up(self, max_batch_size: int) -> float:
        """Compile the step for every loaded size and batch bucket before the first job (seconds taken; 0 when the
        networks run eagerly), by stepping throwaway jobs of the default settings once."""
        def step_throwaway_jobs(size: int, images: int) -> None:
            self.step([self.start(DreamSpec(prompt="a warm-up", size=size, seed=seed, steps=1)) for seed in range(images)])

        return self.networks.warm_up(step_throwaway_jobs, self.models.sizes, max_batch_size)

    def advance(self, jobs: Sequence[DreamJob], on_step: StepCallback, on_error: ReportErrorCallback | None = None) -> None:
        """One step for `jobs`, then `report` it. An error of the step itself is raised (no job was reported)."""
        self.report(jobs, self.step(jobs), on_step, on_error)

    def report(
        self,
        jobs: Sequence[DreamJob],
        losses: Sequence[float],
        on_step: StepCallback,
        on_error: ReportErrorCallback | None = None,
    ) -> None:
        """After a step (`losses` as it returned them), hand each job's StepReport to `on_step`: a snapshot when one
        is due (kept as a frame if the job keeps frames) and, after its last step, its outcome. When rendering or
        `on_step` raises for one job, `on_error` gets the job and the error and the other jobs are still reported;
        without `on_error` the error is raised."""
        for job, loss in zip(list(jobs), losses, strict=True):  # a copy: a callback may drop a finished job from `jobs`
            try:
                on_step(job, self._step_report(job, loss))
            except Exception as error:
                if on_error is None:
                    raise
                on_error(job, error)

    def _step_report(self, job: DreamJob, loss: float) -> StepReport:
        rendered = self._render_average(job) if job.wants_snapshot() or job.wants_score() else None
        snapshot = to_pil(rendered) if rendered is not None and job.wants_snapshot() else None
        if snapshot is not None and job.keeps_frames:
            job.frames.append(snapshot)
        if job.wants_score():
            self._keep_if_best(job, rendered)
        outcome = self._outcome(job, snapshot) if job.finished else None
        return StepReport(job.step, job.spec.steps, loss, snapshot, outcome)

    def _keep_if_best(self, job: DreamJob, rendered: torch.Tensor) -> None:
        score = self.score(job, rendered)
        if job.best is None or score > job.best.score:
            job.best = ScoredImage(score, job.step, to_pil(rendered), self.average_latents_npz(job))

    def _outcome(self, job: DreamJob, last_snapshot: Image.Image | None) -> DreamOutcome:
        wall_seconds = time.perf_counter() - job.started_at
        if job.best is not None:
            best = job.best
            return DreamOutcome(best.image, best.latents_npz, job.frames, job.step, wall_seconds, best.score, best.step)
        # With snapshots on, the one taken after the last step already is the final picture.
        final = last_snapshot if last_snapshot is not None else self.render_average(job)
        return DreamOutcome(final, self.average_latents_npz(job), job.frames, job.step, wall_seconds)

    @torch.no_grad()
    def score(self, job: DreamJob, image: torch.Tensor) -> float:
        """How well `image` (3, H, W) matches the job's targets, higher is better: -similarity_loss / SIMILARITY_WEIGHT,
        the sum over prompts and pictures of weight x the mean cosine of its crops to it, minus the mean cosines to
        the negative prompts (one text prompt alone: -1 to 1).
        The crops come from a generator seeded afresh from the job's seed each time (not the job's own, which must
        not depend on scoring), so every score of a job is taken on the same crops and scores compare."""
        crop_rng = torch.Generator().manual_seed(job.spec.seed)
        boxes = sample_crop_boxes(job.size, job.cutouts, crop_rng, job.spec.center_bias)
        patches = self._cut_into_patches(clip_model.normalize_pixels(image[None]), [boxes])
        embeddings = clip_vision.encode_patches(self.models.clip.visual, patches)
        loss = similarity_loss(embeddings, job.positive_embeddings, job.negative_embeddings, job.positive_weights)
        return -loss.item() / SIMILARITY_WEIGHT

    def render_average(self, job: DreamJob) -> Image.Image:
        """The picture we show: rendered from the job's averaged (EMA) latents."""
        return to_pil(self._render_average(job))

    @torch.no_grad()
    def _render_average(self, job: DreamJob) -> torch.Tensor:
        average = job.average.average()
        classes = class_vectors(average.class_logits, job.spec.max_classes, job.spec.class_temperature)
        return biggan_ops.render(self.models.generator(job.size), average.z[None], classes[None])[0]

    def average_latents_npz(self, job: DreamJob) -> bytes:
        return job.average.average().to_npz()


def image_prompt_pictures(spec: DreamSpec) -> list[Image.Image]:
    """The pictures of the spec's image prompts, decoded; SpecError for one that did not come with its bytes or
    whose bytes are not a picture."""
    pictures = []
    for number, image in enumerate(spec.image_prompts, start=1):
        if image.png is None:
            raise SpecError(f"Image prompt {number} ({image.key}) reached the image generator without its picture.")
        try:
            pictures.append(read_picture(image.png))
        except ValueError:
            raise SpecError(f"Image prompt {number} is not a picture the image generator can read.") from None
    return pictures


def dream(
    models: DreamModels,
    spec: DreamSpec,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_snapshots: bool = False,
    networks: StepNetworks | None = None,
) -> DreamOutcome:
    """Run one job to the end. `should_stop` is asked before every step; if it says yes, DreamCancelled.
    `keep_snapshots`: keep the snapshots in the outcome, for a timelapse. `networks`: how the step runs them
    (default: eagerly)."""
    engine = DreamEngine(models, networks)
    job = engine.start(spec, keep_frames=keep_snapshots)
    outcome: DreamOutcome | None = None

    def step_done(_job: DreamJob, report: StepReport) -> None:
        nonlocal outcome
        outcome = report.outcome
        if on_step is not None:
            on_step(report)

    while outcome is None:
        if should_stop is not None and should_stop():
            raise DreamCancelled(f"stopped after {job.step} of {spec.steps} steps")
        engine.advance([job], step_done)
    return outcome
