"""The BigSleep loop on the tiny models: reproducible, it optimises, and it stops when told."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from generator import biggan as biggan_ops
from generator import clip_model, clip_vision
from generator.cutouts import cut_into_patches, sample_crop_boxes
from generator.engine import DreamCancelled, DreamEngine, dream
from generator.latents import Latents
from generator.protocol import DreamSpec, JobProgress, JobRequest, JobResult, SpecError
from generator.wire import SubmitJob
from generator.worker import GenerationLoop

SPEC = DreamSpec(prompt="a bowl of cherries", seed=7, steps=6, size=128, cutouts=4)


def pixels(outcome) -> np.ndarray:
    return np.asarray(outcome.image, dtype=np.int16)


def test_same_seed_gives_identical_pixels(tiny_models):
    first, second = dream(tiny_models, SPEC), dream(tiny_models, SPEC)
    assert np.array_equal(pixels(first), pixels(second))
    assert first.latents_npz == second.latents_npz


def test_different_seed_gives_a_different_image(tiny_models):
    first, other = dream(tiny_models, SPEC), dream(tiny_models, SPEC.with_changes(seed=8))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_crop_positions_come_from_the_seed():
    boxes = [sample_crop_boxes(256, 16, torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(boxes[0].top, boxes[1].top) and torch.equal(boxes[0].side, boxes[1].side)
    assert not torch.equal(boxes[0].top, boxes[2].top)
    assert int(boxes[0].side.min()) >= 128 and int(boxes[0].side.max()) <= int(256 * 0.95)
    assert bool(((boxes[0].top + boxes[0].side) <= 256).all() and ((boxes[0].left + boxes[0].side) <= 256).all())


def test_one_gather_matches_slicing_resizing_and_cutting_each_crop_into_patches():
    """cut_into_patches: every image's crops of a batch, in order, as CLIP's patches of each crop resized alone."""
    images = torch.rand(2, 3, 128, 128)
    boxes = [sample_crop_boxes(128, count, torch.Generator().manual_seed(seed)) for count, seed in ((12, 3), (5, 4))]
    expected = torch.cat([
        F.interpolate(image[None, :, top:top + side, left:left + side], size=(224, 224), mode="nearest")
        for image, image_boxes in zip(images, boxes)
        for top, left, side in zip(image_boxes.top.tolist(), image_boxes.left.tolist(), image_boxes.side.tolist())
    ])
    assert torch.equal(cut_into_patches(images, boxes, 224, 32), clip_vision.image_patches(expected, 32))
    # The patch order is CLIP's: the convolution over whole crops and the product over patches agree.
    crops = expected[:3]
    convolution = F.conv2d(crops, torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), stride=32)
    weights = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)).reshape(8, 3, -1).permute(1, 2, 0)
    product = torch.bmm(clip_vision.image_patches(crops, 32).reshape(3, -1, 32 * 32), weights).sum(dim=0)
    torch.testing.assert_close(product.view(3, 7, 7, 8).permute(0, 3, 1, 2), convolution, rtol=1e-4, atol=1e-4)


def test_class_token_shortcut_matches_clips_own_image_encoder(tiny_models):
    size = clip_model.input_resolution(tiny_models.clip)
    images = torch.rand(3, 3, size, size)
    ours = clip_model.encode_images(tiny_models.clip, images)
    theirs = tiny_models.clip.encode_image(clip_model.normalize_pixels(images)).float()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_loss_goes_down_on_a_fixed_prompt(tiny_models):
    losses = []
    dream(tiny_models, DreamSpec(prompt="a red apple", seed=1, steps=20, size=128, cutouts=4, learning_rate=0.05),
          on_step=lambda report: losses.append(report.loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def similarity_to(models, outcome, prompt: str) -> float:
    size = clip_model.input_resolution(models.clip)
    image = torch.from_numpy(np.asarray(outcome.image.resize((size, size)), dtype=np.float32) / 255).permute(2, 0, 1)
    embedding = clip_model.encode_images(models.clip, image[None])
    text = clip_model.encode_texts(models.clip, [prompt], models.device)
    return F.cosine_similarity(embedding, text).item()


def test_negative_prompt_pushes_the_other_way(tiny_models):
    settings = dict(seed=2, steps=12, size=128, cutouts=4, learning_rate=0.05)
    towards = dream(tiny_models, DreamSpec(prompt="a red apple", **settings))
    away = dream(tiny_models, DreamSpec(prompt="a calm sea", negative="a red apple", **settings))
    assert similarity_to(tiny_models, towards, "a red apple") > similarity_to(tiny_models, away, "a red apple")


def test_cancellation_stops_between_steps(tiny_models):
    reports = []
    with pytest.raises(DreamCancelled):
        dream(tiny_models, SPEC.with_changes(steps=50), on_step=reports.append, should_stop=lambda: len(reports) >= 3)
    assert len(reports) == 3


def test_snapshots_come_every_n_steps_and_after_the_last(tiny_models):
    reports = []
    outcome = dream(tiny_models, SPEC.with_changes(steps=7, snapshot_every=3), on_step=reports.append, keep_snapshots=True)
    assert [r.step for r in reports if r.snapshot is not None] == [3, 6, 7]
    assert [r.step for r in reports] == list(range(1, 8))
    assert len(outcome.snapshots) == 3
    assert np.array_equal(np.asarray(outcome.snapshots[-1]), np.asarray(outcome.image))


def test_no_snapshot_work_on_steps_without_one(tiny_models, monkeypatch):
    rendered = []
    original = DreamEngine._render_average
    monkeypatch.setattr(DreamEngine, "_render_average", lambda self, job: rendered.append(job.step) or original(self, job))
    dream(tiny_models, SPEC.with_changes(steps=6, snapshot_every=4))
    assert rendered == [4, 6]


def test_prompt_longer_than_clips_context_is_refused_clearly(tiny_models):
    with pytest.raises(SpecError, match=r"CLIP reads at most 75"):
        dream(tiny_models, SPEC.with_changes(prompt="cherries " * 90))


def test_each_prompt_between_bars_is_checked_separately(tiny_models):
    long_piece = "cherries " * 40
    dream(tiny_models, SPEC.with_changes(prompt=f"{long_piece}|{long_piece}", steps=1))  # 40 tokens each: fine
    with pytest.raises(SpecError):
        dream(tiny_models, SPEC.with_changes(prompt="apple", negative="pear " * 80, steps=1))


@pytest.mark.parametrize("change", [dict(size=300), dict(steps=0), dict(seed=-1), dict(prompt=" | "), dict(ema_decay=1.0)])
def test_bad_settings_are_refused_before_any_work(tiny_models, change):
    with pytest.raises(SpecError):
        dream(tiny_models, SPEC.with_changes(**change))


def test_variation_starts_near_the_saved_latents(tiny_models):
    parent = dream(tiny_models, SPEC)
    rows = biggan_ops.latent_rows(tiny_models.generator(SPEC.size).config)
    saved = Latents.from_npz(parent.latents_npz, rows, 0.0, torch.Generator(), torch.device("cpu"))
    engine = DreamEngine(tiny_models)
    close = engine.start(SPEC.with_changes(init_latents=parent.latents_npz, init_noise=0.1, seed=99))
    far = engine.start(SPEC.with_changes(seed=99))
    distance = lambda job: (job.latents.z - saved.z).abs().mean().item()
    assert distance(close) < 0.2 < distance(far)


def test_batched_step_gives_each_job_its_own_gradient(tiny_models):
    engine = DreamEngine(tiny_models)
    # Seed 1: batch-of-one and batch-of-two gradients differ by 2e-6 of the largest entry. Some starts sit near a
    # kink of this random network, where the batch's summation order alone moves the gradient much more (seed 7,
    # since crops reach the last row and column: 2.4e-2 in the first four rows, with the same job twice too).
    spec = SPEC.with_changes(seed=1)
    alone = engine.start(spec)
    engine.step([alone])
    first, second = engine.start(spec), engine.start(SPEC.with_changes(prompt="a calm sea", seed=3))
    engine.step([first, second])
    # Gradients, not latents: Adam's first step is about lr * sign(gradient), so a rounding-level difference in
    # a near-zero gradient would flip a whole step. The tolerance is rounding-level for this loss: with random
    # weights it is ill-conditioned (scaling z by 1 + 1e-7 moves its gradient by about 2e-3 of its largest entry).
    scale = alone.latents.z.grad.abs().max().item()
    torch.testing.assert_close(first.latents.z.grad, alone.latents.z.grad, rtol=0, atol=1e-2 * scale)
    assert (second.latents.z.grad - alone.latents.z.grad).abs().max().item() > 0.2 * scale


def test_the_step_loop_reports_every_job_and_each_outcome_once_it_is_finished(tiny_models):
    engine = DreamEngine(tiny_models)
    short = engine.start(SPEC.with_changes(steps=2, snapshot_every=1), keep_frames=True)
    longer = engine.start(SPEC.with_changes(steps=3, seed=8))
    reports = []
    while not longer.finished:
        engine.advance([job for job in (short, longer) if not job.finished], lambda job, report: reports.append((job, report)))

    short_reports = [report for job, report in reports if job is short]
    assert [report.step for report in short_reports] == [1, 2] and short_reports[0].outcome is None
    outcome = short_reports[-1].outcome
    assert outcome.steps == 2 and len(outcome.snapshots) == 2 and outcome.image is short_reports[-1].snapshot
    assert Image.open(io.BytesIO(outcome.timelapse_gif())).n_frames == 2
    longer_reports = [report for job, report in reports if job is longer]
    assert [report.snapshot for report in longer_reports] == [None] * 3  # no snapshots asked for: none rendered
    assert longer_reports[-1].outcome.snapshots == [] and longer_reports[-1].outcome.steps == 3
    assert Image.open(io.BytesIO(longer_reports[-1].outcome.timelapse_gif())).n_frames == 1  # the final image alone


def test_an_error_reporting_one_job_goes_to_on_error_and_the_others_are_reported(tiny_models):
    engine = DreamEngine(tiny_models)
    failing, fine = engine.start(SPEC), engine.start(SPEC.with_changes(seed=8))
    told, failed = [], []

    def on_step(job, report):
        if job is failing:
            raise RuntimeError("the callback broke")
        told.append(report.step)

    engine.advance([failing, fine], on_step, on_error=lambda job, error: failed.append((job, str(error))))
    assert told == [1] and failed == [(failing, "the callback broke")]
    with pytest.raises(RuntimeError, match="the callback broke"):  # without on_error, the error is the caller's
        engine.advance([failing, fine], on_step)


class SentMessages(list):
    """Stands in for the worker's connection to the client: keeps what is sent."""

    def send(self, message) -> None:
        self.append(message)


def test_the_worker_and_the_command_line_run_the_same_loop_to_the_same_pixels(tiny_models):
    spec = SPEC.with_changes(snapshot_every=2)
    reference = dream(tiny_models, spec, keep_snapshots=True)
    sent = SentMessages()
    loop = GenerationLoop(DreamEngine(tiny_models), max_batch_size=2, requests=None, sender=sent)

    loop.handle(SubmitJob(JobRequest(job_id="job", spec=spec, timelapse=True)))
    while loop.jobs:
        loop.advance(spec.size)

    progress = [message for message in sent if isinstance(message, JobProgress)]
    assert [message.step for message in progress] == list(range(1, spec.steps + 1))
    assert [message.step for message in progress if message.snapshot_png] == [2, 4, 6]
    (result,) = [message for message in sent if isinstance(message, JobResult)]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.png))), np.asarray(reference.image))
    assert result.latents_npz == reference.latents_npz and result.steps == spec.steps
    assert result.timelapse_gif == reference.timelapse_gif()
