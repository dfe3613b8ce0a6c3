"""Issue 14 on the tiny models: pictures as targets, save_best, centre-biased crops."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from generator import clip_model
from generator.cutouts import sample_crop_boxes
from generator.engine import DreamEngine, dream
from generator.images import png_bytes
from generator.losses import similarity_loss
from generator.protocol import DreamSpec, ImagePrompt, JobFailed, JobRequest, JobResult, SpecError
from generator.wire import SubmitJob
from generator.worker import GenerationLoop

with_warnings_ignored = pytest.mark.filterwarnings("ignore::UserWarning")


def striped_picture(width: int = 96, height: int = 72) -> Image.Image:
    """A picture with structure in both directions, so that resizing and cropping matter."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 7) % 256, (y * 11) % 256, ((x + y) * 5) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def image_prompt(picture: Image.Image, weight: float = 1.0, key: str = "prompts/a.png") -> ImagePrompt:
    return ImagePrompt(key=key, weight=weight, png=png_bytes(picture))


# ---- CLIP's preprocessing, and the picture targets ------------------------------------------------------


@with_warnings_ignored
@pytest.mark.parametrize("size", [(96, 72), (72, 96), (64, 64), (40, 50)])
def test_pictures_are_prepared_exactly_as_clips_own_preprocessing_prepares_them(size):
    from clip.clip import _transform  # the reference: clip.load's preprocess, torchvision under it

    picture = striped_picture(*size)
    ours = clip_model.normalize_pixels(clip_model.preprocess_picture(picture, 64))
    theirs = _transform(64)(picture)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_a_picture_of_weight_one_pulls_as_a_text_prompt_does_and_weights_scale_its_pull():
    torch.manual_seed(0)
    crops, targets = torch.randn(5, 16), torch.randn(2, 16)
    none = torch.zeros(0, 16)
    unweighted = similarity_loss(crops, targets, none)
    assert torch.equal(similarity_loss(crops, targets, none, torch.ones(2)), unweighted)
    alone = [similarity_loss(crops, targets[i:i + 1], none) for i in range(2)]
    torch.testing.assert_close(similarity_loss(crops, targets, none, torch.tensor([1.0, 3.0])), alone[0] + 3 * alone[1])


def test_an_image_target_pulls_the_result_toward_the_picture(tiny_models):
    """The engine test: CLIP's embedding of the EMA image grows more similar to the picture's over the steps."""
    picture = striped_picture()
    target = clip_model.encode_pictures(tiny_models.clip, [picture], tiny_models.device)
    # 40 steps: the tiny generator (one block per resolution) moves its picture by about 0.03 in 40 steps, 0.003 in 12.
    spec = DreamSpec(prompt="", image_prompts=(image_prompt(picture),), seed=3, steps=40, size=128, cutouts=4,
                     learning_rate=0.1, snapshot_every=10)
    similarities = []

    def record(report) -> None:
        if report.snapshot is not None:
            embedding = clip_model.encode_pictures(tiny_models.clip, [report.snapshot], tiny_models.device)
            similarities.append(F.cosine_similarity(embedding, target).item())

    dream(tiny_models, spec, on_step=record)
    assert len(similarities) == 4
    assert similarities[-1] > similarities[0] + 0.02, similarities


def test_the_image_weight_decides_between_a_picture_and_the_text(tiny_models):
    picture = striped_picture()
    target = clip_model.encode_pictures(tiny_models.clip, [picture], tiny_models.device)

    def similarity(weight: float) -> float:
        spec = DreamSpec(prompt="a calm sea", image_prompts=(image_prompt(picture, weight),), seed=5, steps=8,
                         size=128, cutouts=4, learning_rate=0.1)
        outcome = dream(tiny_models, spec)
        embedding = clip_model.encode_pictures(tiny_models.clip, [outcome.image], tiny_models.device)
        return F.cosine_similarity(embedding, target).item()

    assert similarity(5.0) > similarity(0.1)


def test_a_text_only_job_is_unchanged_by_the_picture_machinery(tiny_models):
    engine = DreamEngine(tiny_models)
    job = engine.start(DreamSpec(prompt="a red apple", size=128, cutouts=2))
    assert job.positive_weights is None and job.positive_embeddings.shape[0] == 1


def test_image_targets_stay_reproducible(tiny_models):
    spec = DreamSpec(prompt="a house", image_prompts=(image_prompt(striped_picture(), 2.0),), seed=4, steps=3,
                     size=128, cutouts=3)
    first, second = dream(tiny_models, spec), dream(tiny_models, spec)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))


@pytest.mark.parametrize(
    ("png", "message"),
    [(None, "without its picture"), (b"not a picture", "not a picture the image generator can read")],
)
def test_an_image_prompt_without_a_readable_picture_fails_the_job_clearly(tiny_models, png, message):
    spec = DreamSpec(prompt="", image_prompts=(ImagePrompt(key="prompts/x.png", png=png),), steps=2, size=128, cutouts=2)
    with pytest.raises(SpecError, match=message):
        DreamEngine(tiny_models).start(spec)


class SentMessages(list):
    def send(self, message) -> None:
        self.append(message)


def run_in_worker(models, spec: DreamSpec) -> list:
    sent = SentMessages()
    loop = GenerationLoop(DreamEngine(models), max_batch_size=2, requests=None, sender=sent)
    loop.handle(SubmitJob(JobRequest(job_id="job", spec=spec)))
    while loop.jobs:
        loop.advance(spec.size)
    return sent


def test_the_worker_steers_by_the_pictures_the_bot_sent(tiny_models):
    """As the bot submits it: the stored document, the bytes filled back in from the bot's files."""
    picture_bytes = png_bytes(striped_picture())
    stored = DreamSpec(prompt="", image_prompts=(ImagePrompt("prompts/j1/1.png", 2.5),), seed=2, steps=3, size=128,
                       cutouts=2).to_document()
    spec = DreamSpec.from_document(stored).with_image_bytes({"prompts/j1/1.png": picture_bytes}.__getitem__)
    sent = run_in_worker(tiny_models, spec)
    (result,) = [message for message in sent if isinstance(message, JobResult)]
    expected = dream(tiny_models, spec)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.png))), np.asarray(expected.image))
    assert result.score is None and result.score_step is None


def test_the_worker_fails_a_job_whose_picture_did_not_come(tiny_models):
    spec = DreamSpec(prompt="", image_prompts=(ImagePrompt("prompts/j1/1.png"),), steps=3, size=128, cutouts=2)
    sent = run_in_worker(tiny_models, spec)
    (failure,) = [message for message in sent if isinstance(message, JobFailed)]
    assert "without its picture" in failure.reason


# ---- save_best ------------------------------------------------------------------------------------------


def test_save_best_returns_the_best_scored_snapshot_with_its_score(tiny_models, monkeypatch):
    monkeypatch.setattr("generator.engine.SCORE_EVERY", 2)
    spec = DreamSpec(prompt="a red apple", seed=1, steps=7, size=128, cutouts=3, learning_rate=0.3, save_best=True)
    engine = DreamEngine(tiny_models)
    job = engine.start(spec)
    scored: dict[int, tuple[float, Image.Image]] = {}
    original = engine.score

    def remember(scored_job, image):
        score = original(scored_job, image)
        scored[scored_job.step] = (score, engine.render_average(scored_job))
        return score

    engine.score = remember
    outcomes = []
    while not job.finished:
        engine.advance([job], lambda _job, report: outcomes.append(report.outcome))
    outcome = outcomes[-1]
    assert sorted(scored) == [2, 4, 6, 7]
    best_step = max(scored, key=lambda step: scored[step][0])
    assert (outcome.score_step, outcome.score) == (best_step, scored[best_step][0])
    assert np.array_equal(np.asarray(outcome.image), np.asarray(scored[best_step][1]))


def test_save_best_scores_are_comparable_and_do_not_change_the_optimisation(tiny_models, monkeypatch):
    monkeypatch.setattr("generator.engine.SCORE_EVERY", 2)
    spec = DreamSpec(prompt="a red apple", seed=1, steps=3, size=128, cutouts=3)
    plain, best = dream(tiny_models, spec), dream(tiny_models, spec.with_changes(save_best=True))
    # The last step is always scored; the trajectory (its EMA latents at the end) is the same with scoring on.
    engine = DreamEngine(tiny_models)
    job = engine.start(spec)
    for _ in range(spec.steps):
        engine.step([job])
    assert engine.average_latents_npz(job) == plain.latents_npz
    assert best.score_step in (2, 3) and -1.0 <= best.score <= 1.0
    final = engine._render_average(job)
    assert engine.score(job, final) == engine.score(job, final)  # the same crops every time
    if best.score_step == spec.steps:
        assert best.latents_npz == plain.latents_npz


def test_save_best_result_carries_the_score_from_the_worker(tiny_models):
    spec = DreamSpec(prompt="a red apple", seed=1, steps=4, size=128, cutouts=2, save_best=True)
    (result,) = [message for message in run_in_worker(tiny_models, spec) if isinstance(message, JobResult)]
    assert result.score_step == 4 and isinstance(result.score, float)


# ---- center_bias ----------------------------------------------------------------------------------------


def test_centre_biased_crops_gather_around_the_middle_and_stay_inside():
    count, size = 4000, 256
    plain = sample_crop_boxes(size, count, torch.Generator().manual_seed(9))
    centred = sample_crop_boxes(size, count, torch.Generator().manual_seed(9), center_bias=True)
    assert torch.equal(plain.side, centred.side)  # the sizes are drawn as before; only positions change

    def distance_from_middle(boxes) -> float:
        middle = (size - boxes.side).double() / 2
        return float(((boxes.top - middle).abs() + (boxes.left - middle).abs()).mean())

    # A normal of sd = a quarter of the range lies 0.2 of it from the middle on average; uniform offsets lie 0.25.
    assert distance_from_middle(centred) < 0.85 * distance_from_middle(plain)
    assert bool((centred.top >= 0).all() and (centred.left >= 0).all())
    assert bool(((centred.top + centred.side) <= size).all() and ((centred.left + centred.side) <= size).all())
    again = sample_crop_boxes(size, count, torch.Generator().manual_seed(9), center_bias=True)
    assert torch.equal(again.top, centred.top) and torch.equal(again.left, centred.left)


def test_center_bias_changes_the_image_and_stays_reproducible(tiny_models):
    spec = DreamSpec(prompt="a bowl of cherries", seed=7, steps=4, size=128, cutouts=4)
    centred = spec.with_changes(center_bias=True)
    first, second, plain = dream(tiny_models, centred), dream(tiny_models, centred), dream(tiny_models, spec)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(plain.image))


def test_new_spec_fields_are_stored_and_read_back():
    spec = DreamSpec(prompt="x", center_bias=True, save_best=True)
    document = spec.to_document()
    assert document["center_bias"] is True and document["save_best"] is True
    assert DreamSpec.from_document(document) == spec
    older = {key: value for key, value in document.items() if key not in ("center_bias", "save_best")}
    assert DreamSpec.from_document(older) == DreamSpec(prompt="x")


# ---- larger CLIPs ---------------------------------------------------------------------------------------


@with_warnings_ignored
@pytest.mark.parametrize(("architecture", "patch"), [("ViT-B/32", 32), ("ViT-B/16", 16), ("ViT-L/14", 14)])
def test_each_clip_loads_from_a_torchscript_archive_written_like_openais(tmp_path, architecture, patch):
    model = clip_model.random_clip("tiny", architecture=architecture)
    clip_model.save_torchscript_archive(model, tmp_path / "clip.pt")
    loaded = clip_model.load_clip(tmp_path / "clip.pt")
    resolution = clip_model.input_resolution(loaded)
    assert resolution == clip_model.input_resolution(model) and loaded.visual.conv1.kernel_size == (patch, patch)
    images = torch.rand(2, 3, resolution, resolution)
    torch.testing.assert_close(clip_model.encode_images(loaded, images), clip_model.encode_images(model, images))


@pytest.mark.parametrize(("architecture", "parameters"), [("ViT-B/16", 149.6e6), ("ViT-L/14", 427.6e6)])
def test_the_random_larger_clips_have_the_real_sizes(architecture, parameters):
    model = clip_model.random_clip("full", architecture=architecture)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(parameters, rel=0.01)


def test_the_clip_is_a_host_setting_passed_to_the_worker():
    from generator.settings import WorkerSettings
    from generator.wire import WorkerConfig

    assert WorkerSettings(clip_model="ViT-L/14").clip_model == "ViT-L/14"
    with pytest.raises(ValueError, match="ViT-B/16"):
        WorkerSettings(clip_model="RN50")
    assert WorkerConfig(clip_model="ViT-B/16").clip_model == "ViT-B/16"
    with pytest.raises(ValueError, match="clip_model"):
        WorkerConfig(clip_model="RN50")
