"""DreamSpec's stored form (to_document / from_document): versioned, JSON-ready, and open to new fields."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from generator.protocol import SPEC_DOCUMENT_VERSION, DreamSpec, SpecError

SPEC = DreamSpec("a red fox | snow", negative="blurry", seed=2**63 - 1, steps=150, size=512, cutouts=16,
                 learning_rate=0.05, ema_decay=0.98, max_classes=12, init_noise=0.3)


def stored(spec: DreamSpec) -> dict:
    """Through JSON text, as the job store keeps it."""
    return json.loads(json.dumps(spec.to_document()))


def test_every_setting_round_trips_and_transport_fields_stay_out():
    on_the_wire = SPEC.with_changes(init_latents=b"npz bytes", snapshot_every=25)

    document = stored(on_the_wire)

    assert document["version"] == SPEC_DOCUMENT_VERSION == 1
    assert "init_latents" not in document and "snapshot_every" not in document
    assert DreamSpec.from_document(document) == SPEC


@pytest.mark.parametrize("later_field", ["negative", "max_classes", "init_noise", "cutouts"])
def test_a_document_without_a_field_loads_with_its_default(later_field):
    document = stored(SPEC)
    del document[later_field]

    loaded = DreamSpec.from_document(document)

    assert getattr(loaded, later_field) == getattr(DreamSpec("x"), later_field)
    assert loaded.prompt == SPEC.prompt


def test_adding_a_field_with_a_default_needs_no_migration():
    @dataclass(frozen=True)
    class DreamSpecWithImage(DreamSpec):
        image_prompt: str = ""

    # Documents written before the field existed load with its default ...
    old = DreamSpecWithImage.from_document(stored(SPEC))
    assert old.image_prompt == "" and old.seed == SPEC.seed
    # ... new ones keep it ...
    new = DreamSpecWithImage("p", image_prompt="cat.png")
    assert stored(new)["image_prompt"] == "cat.png"
    assert DreamSpecWithImage.from_document(stored(new)) == new
    # ... and a reader that does not know the field yet ignores it rather than refusing the job.
    assert DreamSpec.from_document(stored(new)) == DreamSpec("p")


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_an_unknown_version_is_refused(version):
    document = stored(SPEC) | {"version": version}
    if version is None:
        del document["version"]

    with pytest.raises(ValueError, match=f"version {version!r}.*reads version 1"):
        DreamSpec.from_document(document)


def test_a_document_without_a_prompt_is_refused():
    document = stored(SPEC)
    del document["prompt"]

    with pytest.raises(ValueError, match="lacks prompt"):
        DreamSpec.from_document(document)


def test_image_prompts_are_stored_by_key_and_weight_and_their_bytes_filled_in_by_the_bot():
    from generator.protocol import ImagePrompt

    spec = DreamSpec(prompt="", image_prompts=(ImagePrompt("prompts/ab/ab12.png", 2.0, png=b"pixels"),)).validate()
    document = json.loads(json.dumps(spec.to_document()))
    assert document["image_prompts"] == [{"key": "prompts/ab/ab12.png", "weight": 2.0}]  # never the pixels
    stored = DreamSpec.from_document(document)
    assert stored.image_prompts[0].png is None and stored == spec
    assert stored.with_image_bytes({"prompts/ab/ab12.png": b"again"}.__getitem__).image_prompts[0].png == b"again"


def test_an_empty_prompt_needs_an_image_and_image_weights_stay_in_range():
    from generator.protocol import ImagePrompt

    with pytest.raises(SpecError, match="empty"):
        DreamSpec(prompt="").validate()
    with pytest.raises(SpecError, match="weight"):
        DreamSpec(prompt="", image_prompts=(ImagePrompt("a.png", 0.0),)).validate()
    with pytest.raises(SpecError, match="at most 4"):
        DreamSpec(prompt="x", image_prompts=tuple(ImagePrompt(f"{n}.png") for n in range(5))).validate()
