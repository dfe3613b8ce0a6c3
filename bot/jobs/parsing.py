"""Turn `/imagine` options into a DreamSpec: text into numbers, a preset into its settings, the server's
defaults into what a member left out.

Only input that makes no spec at all is refused here (text where a number belongs, an unknown preset or size,
an over-long prompt, too many CLIP tokens): every problem raises `SpecError` (or `PromptTooLong`, a subclass)
whose message is one friendly sentence the bot can show as is (send it with mentions disabled: it may quote
the user's text). Nothing else escapes for bad input. Whether the spec may be made here (limits, sizes, banned
words, quotas) is for `bot.jobs.admission`, which every way in shares.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import replace

from bot.jobs.admission import DEFAULT_MAX_PROMPT_CHARS, ServerLimits
from generator.protocol import (
    ALLOWED_SIZES,
    DEFAULT_IMAGE_WEIGHT,
    MAX_IMAGE_PROMPTS,
    MAX_IMAGE_WEIGHT,
    MAX_SEED,
    MAX_STEPS,
    QUALITY_PRESETS,
    DreamSpec,
    ImagePrompt,
    SpecError,
    split_prompts,
)
from generator.tokens import check_prompt_lengths

# The key of an image prompt whose picture is not fetched yet, in the spec parse_imagine returns: the command
# fetches and checks the pictures after the options passed, and `with_pictures` names each by its own key.
UNFETCHED = "unfetched"
# The least pull an image prompt may have: below it the picture changes nothing one could see.
MIN_IMAGE_WEIGHT = 0.1
# Seeds we pick are below 2**32: short enough to read off an image and type back, still plenty of variety.
RANDOM_SEED_LIMIT = 2**32
# Texts this many times over the character cap are refused before any normalisation work at all.
_HARD_LENGTH_FACTOR = 4
_QUOTE_LIMIT = 40

# CLIP's tokenizer turns these literal strings into its start/end markers; a prompt must not smuggle them in.
_CLIP_MARKERS = re.compile(r"<\|(?:startoftext|endoftext)\|>", re.IGNORECASE)
_WHITESPACE_RUN = re.compile(r"\s+")
# Bidirectional overrides and isolates can make the echoed prompt display as something else.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class PromptTooLong(SpecError):
    """The prompt is longer than the character cap or CLIP's context."""


def parse_imagine(
    prompt: object,
    *,
    negative: object = None,
    seed: object = None,
    steps: object = None,
    quality: object = None,
    size: object = None,
    images: int = 0,
    image_weight: object = None,
    limits: ServerLimits | None = None,
    rng: random.Random | None = None,
) -> DreamSpec:
    """/imagine (and /blend) options as a DreamSpec, or SpecError with a sentence for the user.

    Options take Discord's types (str, int, float) but also strings typed by hand. A quality preset sets steps,
    cutouts and maybe size; explicit `steps`/`size` override it. `limits` gives the defaults for options left
    out and the prompt's caps (characters, `|` pieces); its maxima are admission's to apply. `images` pictures
    steer too, each pulling with `image_weight` (default 1: as strongly as a text prompt); with one, the prompt
    may be empty. Their image prompts are keyed UNFETCHED until `with_pictures` names them.
    """
    limits = limits or ServerLimits()
    clean_prompt = clean_text(prompt, "prompt", limits.max_prompt_chars)
    if not split_prompts(clean_prompt):
        if not images:
            raise SpecError("The prompt is empty: describe what you want to see.")
        clean_prompt = ""  # only separators: the pictures alone steer
    if images > MAX_IMAGE_PROMPTS:
        raise SpecError(f"Give at most {MAX_IMAGE_PROMPTS} pictures, not {images}.")
    if image_weight is not None and not images:
        raise SpecError("image_weight says how strongly a picture pulls: give one with `image` or `like` too.")
    weight = DEFAULT_IMAGE_WEIGHT if image_weight is None else _image_weight(image_weight)
    clean_negative = "" if negative is None else clean_text(negative, "negative prompt", limits.max_prompt_chars)
    parts = len(split_prompts(clean_prompt)) + len(split_prompts(clean_negative))
    if parts > limits.max_prompt_parts:
        raise SpecError(
            f"Use at most {limits.max_prompt_parts} prompts separated by “|” in total, not {parts}."
        )

    settings = {**QUALITY_PRESETS["normal"], "steps": limits.default_steps, "size": limits.default_size}
    if quality is not None:
        settings.update(_preset(quality))
    if steps is not None:
        settings["steps"] = _whole_number(steps, "The number of steps", 1, MAX_STEPS)
    if size is not None:
        settings["size"] = _size(size)
    chosen_seed = (
        (rng or random.SystemRandom()).randrange(RANDOM_SEED_LIMIT)
        if seed is None
        else _whole_number(seed, "The seed", 0, MAX_SEED)
    )

    # CLIP can only read 75 tokens of each piece; the message says how much to cut.
    try:
        check_prompt_lengths(clean_prompt, clean_negative)
    except SpecError as error:
        raise PromptTooLong(str(error)) from None
    return DreamSpec(
        prompt=clean_prompt,
        negative=clean_negative,
        seed=chosen_seed,
        steps=settings["steps"],
        size=settings["size"],
        cutouts=settings["cutouts"],
        image_prompts=tuple(ImagePrompt(UNFETCHED, weight) for _ in range(images)),
        center_bias=limits.center_bias,
        save_best=limits.save_best,
    ).validate()


def with_pictures(spec: DreamSpec, keys: Sequence[str]) -> DreamSpec:
    """The spec from parse_imagine with its image prompts named, in order, by the keys of their fetched pictures."""
    if len(keys) != len(spec.image_prompts):
        raise ValueError(f"{len(spec.image_prompts)} image prompts, but {len(keys)} pictures")
    return spec.with_changes(
        image_prompts=tuple(replace(image, key=key) for image, key in zip(spec.image_prompts, keys))
    )


def clean_text(text: object, what: str, max_chars: int = DEFAULT_MAX_PROMPT_CHARS) -> str:
    """Normalise user text: newlines and tabs become spaces, control characters go, spaces collapse.

    The length is checked on the raw text first (a megabyte of input costs nothing) and again after cleaning.
    """
    if not isinstance(text, str):
        raise SpecError(f"The {what} must be text.")
    if len(text) > max_chars * _HARD_LENGTH_FACTOR:
        raise _too_many_chars(what, len(text), max_chars)
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Zl", "Zp") or char in "\t\n\r\v\f":
            kept.append(" ")
        elif category in ("Cc", "Cs", "Co", "Cn") or char in _BIDI_CONTROLS:
            # Control, lone surrogate (cannot even be stored as UTF-8), private-use and unassigned characters.
            continue
        else:
            kept.append(char)
    cleaned = _CLIP_MARKERS.sub(" ", "".join(kept))
    cleaned = _WHITESPACE_RUN.sub(" ", cleaned).strip()
    if len(cleaned) > max_chars:
        raise _too_many_chars(what, len(cleaned), max_chars)
    return cleaned


def _too_many_chars(what: str, length: int, max_chars: int) -> PromptTooLong:
    return PromptTooLong(
        f"The {what} is {length:,} characters long; the limit is {max_chars:,}, "
        f"so shorten it by {length - max_chars:,} characters."
    )


def _quote(text: str) -> str:
    text = _WHITESPACE_RUN.sub(" ", "".join(c for c in text if unicodedata.category(c)[0] != "C")).strip()
    return text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 1] + "…"


def _preset(name: object) -> dict[str, int]:
    key = name.strip().lower() if isinstance(name, str) else None
    if key is None or key not in QUALITY_PRESETS:
        shown = f"quality “{_quote(name)}”" if isinstance(name, str) and _quote(name) else "such quality"
        raise SpecError(f"There is no {shown}; choose one of {', '.join(QUALITY_PRESETS)}.")
    return QUALITY_PRESETS[key]


def _whole_number(value: object, what: str, low: int, high: int) -> int:
    """An int from Discord, or a string a user typed; refuse anything that is not a plain whole number."""
    number: int | None = None
    if isinstance(value, bool):
        pass  # True is an int to Python, but never a number a user meant
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = int(value) if value.is_integer() else None
    elif isinstance(value, str):
        text = value.strip().replace(",", "").replace("_", "")
        digits = text[1:] if text[:1] in "+-" else text
        # Only ASCII digits ('²' and other Unicode digits are refused); the length check keeps int() cheap.
        if digits and digits.isascii() and digits.isdigit():
            number = int(text) if len(digits) <= 30 else (-1 if text.startswith("-") else 1) * 10**30
    if number is None:
        shown = f" “{_quote(value)}” is not one" if isinstance(value, str) and _quote(value) else ""
        raise SpecError(f"{what} must be a whole number from {low} to {high:,}{';' if shown else ''}{shown}.")
    if number < low:
        if number < 0:
            raise SpecError(f"{what} can't be negative; use a whole number from {low} to {high:,}.")
        raise SpecError(f"{what} must be at least {low}, not {number}.")
    if number > high:
        raise SpecError(f"{what} can be at most {high:,}; {number if number < 10**30 else 'yours'} is too large.")
    return number


def _image_weight(value: object) -> float:
    """A weight from Discord (a float), or a number a user typed."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip().replace(",", "."))
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or not MIN_IMAGE_WEIGHT <= number <= MAX_IMAGE_WEIGHT:
        raise SpecError(
            f"image_weight must be a number from {MIN_IMAGE_WEIGHT:g} to {MAX_IMAGE_WEIGHT:g} "
            f"(1 pulls as strongly as a text prompt)."
        )
    return number


def _size(value: object) -> int:
    text = value.strip().lower().removesuffix("px").strip() if isinstance(value, str) else value
    try:
        number = _whole_number(text, "The size", 1, max(ALLOWED_SIZES))
    except SpecError:
        number = None
    if number not in ALLOWED_SIZES:
        raise SpecError(f"The size must be one of {', '.join(map(str, ALLOWED_SIZES))} pixels.")
    return number
