"""The message protocol between the bot and the generation process.

Plain, picklable dataclasses only: this module must never import torch (the bot imports it) nor discord
(the generator imports it). `DreamSpec` is also what the engine and the command line take, so a job means
the same thing wherever it is run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

ALLOWED_SIZES = (128, 256, 512)
MAX_STEPS = 5000
MAX_CUTOUTS = 256
MAX_SEED = 2**63 - 1
PROMPT_SEPARATOR = "|"
# full: the real weights. tiny: toy-width random models (tests, checking a setup). random: the real-size
# architectures with random weights (benchmarks, real-size checks). Both random kinds draw noise.
MODEL_KINDS = ("full", "tiny", "random")
# CLIP's weight precision by name; "auto" lets the device decide (generator.models.clip_dtype_for).
CLIP_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Whether the step runs torch.compile'd: "auto" on CUDA only (generator.compiled.should_compile).
COMPILE_CHOICES = ("auto", "on", "off")
# OpenAI CLIPs a host may judge with (worker.clip_model): ViT-B/32 is BigSleep's; the larger ones see finer detail
# at several times the cost per step (README, "BigSleep's options here").
CLIP_MODELS = ("ViT-B/32", "ViT-B/16", "ViT-L/14")
DEFAULT_CLIP_MODEL = "ViT-B/32"
# The stored form of a DreamSpec (DreamSpec.to_document). Adding a field with a default keeps the version: older
# documents load with the default. Bump it only for a change older documents cannot be read by.
SPEC_DOCUMENT_VERSION = 1
# Fields sent to the worker with a job but never stored: a variation's latents live in a file the bot keeps, and
# the snapshot interval is worked out for each run. (Image prompts are stored by key only: see ImagePrompt.)
_TRANSPORT_ONLY_FIELDS = frozenset({"init_latents", "snapshot_every"})
# Image prompts per job (/blend takes up to four), and how strongly one may pull compared with a text prompt (1.0).
MAX_IMAGE_PROMPTS = 4
DEFAULT_IMAGE_WEIGHT = 1.0
MAX_IMAGE_WEIGHT = 5.0
# save_best scores the EMA image every this many steps and after the last one.
SCORE_EVERY = 25


class SpecError(ValueError):
    """A dream setting a user chose is out of range; the message is written for that user."""


@dataclass(frozen=True)
class ImagePrompt:
    """A picture the result should look like: CLIP's embedding of it becomes a target beside the text prompts.

    The contract between the bot and the generator:
    - `key` names the bot's own copy of the image (a path relative to the bot's data dir, written by the bot after
      it fetched and checked the upload, or the path of an earlier result for `like:`). The stored spec document
      keeps `key` and `weight` only, never the pixels.
    - `png` carries the image's bytes (PNG, RGB, already checked and bounded in size by whoever made it) to the
      worker. It is transport only: the bot reads the file named by `key` and fills `png` in right before it
      submits a job (as it does for a variation's `init_latents`); the worker refuses an image prompt without it.
    - `weight` scales its pull: 1.0 pulls as strongly as one text prompt.
    """

    key: str
    weight: float = DEFAULT_IMAGE_WEIGHT
    png: bytes | None = field(default=None, repr=False, compare=False)

    def to_document(self) -> dict[str, Any]:
        return {"key": self.key, "weight": self.weight}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ImagePrompt:
        return cls(key=str(document["key"]), weight=float(document.get("weight", DEFAULT_IMAGE_WEIGHT)))


@dataclass(frozen=True)
class DreamSpec:
    """Everything that decides the image: the same spec (and machine) gives the same pixels."""

    prompt: str
    negative: str = ""
    seed: int = 0
    steps: int = 400
    size: int = 256
    cutouts: int = 32
    learning_rate: float = 0.07
    ema_decay: float = 0.99
    max_classes: int | None = None
    # 0 means no snapshots; otherwise one snapshot every N steps and one at the end.
    snapshot_every: int = 0
    # Latents (an .npz written by the engine for an earlier result) to start from, for variations.
    init_latents: bytes | None = field(default=None, repr=False)
    init_noise: float = 0.0
    # Pictures to steer toward (see ImagePrompt for who fills in their bytes); with one, the text prompt may be empty.
    image_prompts: tuple[ImagePrompt, ...] = ()
    # Crops gather around the image's centre (BigSleep's center_bias; generator.cutouts.sample_crop_boxes).
    center_bias: bool = False
    # The result is the EMA image CLIP scored best (every SCORE_EVERY steps and after the last), not the last one.
    save_best: bool = False
    # The softmax temperature of the max_classes picks (BigSleep's class_temperature); no effect without max_classes.
    class_temperature: float = 2.0

    @property
    def prompts(self) -> list[str]:
        return split_prompts(self.prompt)

    @property
    def negative_prompts(self) -> list[str]:
        return split_prompts(self.negative)

    def with_changes(self, **changes) -> DreamSpec:
        return replace(self, **changes)

    def to_document(self) -> dict[str, Any]:
        """The spec as a JSON-ready document for storing: a version and every field but the transport-only ones."""
        document: dict[str, Any] = {"version": SPEC_DOCUMENT_VERSION}
        for spec_field in fields(self):
            if spec_field.name not in _TRANSPORT_ONLY_FIELDS:
                document[spec_field.name] = getattr(self, spec_field.name)
        document["image_prompts"] = [image.to_document() for image in self.image_prompts]
        return document

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> DreamSpec:
        """A spec from a stored document. A field the document lacks (added after it was written) takes its
        default; a key this version does not know (written by a newer one) is ignored, as a setting it cannot
        apply; a document version other than this one's is refused."""
        version = document.get("version")
        if version != SPEC_DOCUMENT_VERSION:
            raise ValueError(
                f"the spec document has version {version!r}, but this version reads version "
                f"{SPEC_DOCUMENT_VERSION} only; upgrade to the version that wrote it"
            )
        stored = [f for f in fields(cls) if f.name not in _TRANSPORT_ONLY_FIELDS]
        missing = [f.name for f in stored if f.name not in document and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"the spec document lacks {', '.join(missing)}, which have no default")
        values = {f.name: document[f.name] for f in stored if f.name in document}
        if "image_prompts" in values:
            values["image_prompts"] = tuple(ImagePrompt.from_document(image) for image in values["image_prompts"])
        return cls(**values)

    def with_image_bytes(self, read: Callable[[str], bytes]) -> DreamSpec:
        """The spec with every image prompt's bytes filled in from `read(key)` (the bot, before submitting)."""
        if not self.image_prompts:
            return self
        return replace(self, image_prompts=tuple(replace(image, png=read(image.key)) for image in self.image_prompts))

    def validate(self) -> DreamSpec:
        """Check ranges that do not need the models (prompt length against CLIP needs the tokenizer)."""
        if not self.prompts and not self.image_prompts:
            raise SpecError("The prompt is empty: describe what you want to see, or give an image to steer by.")
        if len(self.image_prompts) > MAX_IMAGE_PROMPTS:
            raise SpecError(f"Use at most {MAX_IMAGE_PROMPTS} image prompts, not {len(self.image_prompts)}.")
        for image in self.image_prompts:
            if not 0.0 < image.weight <= MAX_IMAGE_WEIGHT:
                raise SpecError(f"An image prompt's weight must be above 0 and at most {MAX_IMAGE_WEIGHT:g}, not {image.weight:g}.")
        if self.size not in ALLOWED_SIZES:
            raise SpecError(f"Size must be one of {', '.join(map(str, ALLOWED_SIZES))} pixels, not {self.size}.")
        if not 1 <= self.steps <= MAX_STEPS:
            raise SpecError(f"Steps must be between 1 and {MAX_STEPS}, not {self.steps}.")
        if not 1 <= self.cutouts <= MAX_CUTOUTS:
            raise SpecError(f"Cutouts must be between 1 and {MAX_CUTOUTS}, not {self.cutouts}.")
        if not 0 <= self.seed <= MAX_SEED:
            raise SpecError(f"The seed must be a whole number from 0 to {MAX_SEED}, not {self.seed}.")
        if not 0.0 < self.learning_rate <= 1.0:
            raise SpecError(f"The learning rate must be above 0 and at most 1, not {self.learning_rate}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise SpecError(f"The EMA decay must be at least 0 and below 1, not {self.ema_decay}.")
        if self.max_classes is not None and not 1 <= self.max_classes <= 1000:
            raise SpecError(f"max_classes must be between 1 and 1000, not {self.max_classes}.")
        if not 0.01 <= self.class_temperature <= 100.0:
            raise SpecError(f"The class temperature must be between 0.01 and 100, not {self.class_temperature:g}.")
        if self.snapshot_every < 0:
            raise SpecError(f"snapshot_every must be 0 (never) or a positive number of steps, not {self.snapshot_every}.")
        if not 0.0 <= self.init_noise <= 2.0:
            raise SpecError(f"init_noise must be between 0 and 2, not {self.init_noise}.")
        return self


def split_prompts(text: str) -> list[str]:
    """Prompts are separated by `|`; blank pieces are dropped."""
    return [piece.strip() for piece in text.split(PROMPT_SEPARATOR) if piece.strip()]


# Named settings a user can pick instead of numbers. "cpu" finishes a 128 px image in minutes on a laptop CPU.
QUALITY_PRESETS: dict[str, dict[str, int]] = {
    "draft": {"steps": 150, "cutouts": 16},
    "normal": {"steps": 400, "cutouts": 32},
    "best": {"steps": 1000, "cutouts": 64},
    "cpu": {"steps": 160, "cutouts": 8, "size": 128},
}


# ---- messages across the process boundary ---------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    job_id: str
    spec: DreamSpec
    # Keep every snapshot and return an animated GIF of them with the result.
    timelapse: bool = False


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    step: int
    total: int
    loss: float
    snapshot_png: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class JobResult:
    job_id: str
    png: bytes = field(repr=False)
    seed: int
    steps: int
    wall_seconds: float
    # The EMA latents of the final image (.npz), so a variation can start from them.
    latents_npz: bytes = field(repr=False)
    # The cutouts the image was made with: fewer than the spec asked for when the job ran out of memory alone,
    # in which case it was made from the start with these (see generator.worker), so a spec with them and the
    # same seed makes the same image.
    cutouts: int
    timelapse_gif: bytes | None = field(default=None, repr=False)
    # With save_best: the image's score (generator.engine.DreamEngine.score: -similarity_loss / 100, higher is better)
    # and the step it was taken after. None otherwise.
    score: float | None = None
    score_step: int | None = None


@dataclass(frozen=True)
class JobFailed:
    job_id: str
    reason: str


@dataclass(frozen=True)
class JobCancelled:
    job_id: str


@dataclass(frozen=True)
class JobInterrupted:
    """The job did not finish and should be queued again (at the front).

    `worker_death` is None when the job is not to blame: a clean stop, or the job never reached a worker (none
    was ready). Otherwise it says how the worker that was running the job died (killed, hung, crashed): that
    run counts as one of the job's attempts, so a job that kills every worker it meets is found."""

    job_id: str
    worker_death: str | None = None


JobEvent = JobProgress | JobResult | JobFailed | JobCancelled | JobInterrupted
FINAL_EVENTS = (JobResult, JobFailed, JobCancelled, JobInterrupted)
