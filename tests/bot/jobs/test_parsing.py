from __future__ import annotations

import random
import unicodedata

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import bot.jobs.parsing
from bot.jobs.admission import ServerLimits
from bot.jobs.parsing import RANDOM_SEED_LIMIT, PromptTooLong, clean_text, parse_imagine
from generator.protocol import ALLOWED_SIZES, MAX_SEED, MAX_STEPS, QUALITY_PRESETS, DreamSpec, SpecError
from generator.tokens import MAX_PROMPT_TOKENS, count_tokens

ALL_CATEGORIES = ["Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi",
                  "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"]

any_char = st.characters(categories=ALL_CATEGORIES)
nasty_pieces = st.sampled_from(["|", " | ", "\n", "\r\n", "\t", "\x00", "\u202e", "\u2028", "<|endoftext|>",
                                "<|StartOfText|>", "🍒", "&amp;", "-", "1e9", "  ", "\ud800"])
words = st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=12)
texts = st.one_of(
    st.text(any_char, max_size=80),
    st.lists(st.one_of(words, nasty_pieces), max_size=120).map(" ".join),
    st.lists(st.one_of(any_char, nasty_pieces), max_size=60).map("".join),
)
option_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-10, 6000), st.sampled_from(ALLOWED_SIZES),
    st.floats(allow_nan=True, allow_infinity=True), texts, st.integers().map(str),
    st.sampled_from([" 42 ", "+7", "-1", "1,000", "1_0", "0x10", "²", "٤٢", "9" * 25, "256px", "BEST", " cpu "]),
    st.binary(max_size=8), st.lists(st.integers(), max_size=2),
)
limits_strategy = st.builds(
    ServerLimits,
    max_steps=st.integers(400, 5000),
    max_size=st.sampled_from([256, 512]),
    max_prompt_chars=st.integers(1, 1200),
    max_prompt_parts=st.integers(1, 10),
)


def assert_is_clean(text: str) -> None:
    assert text == text.strip()
    assert "  " not in text
    assert "endoftext" not in text.lower() and "startoftext" not in text.lower()
    for char in text:
        assert unicodedata.category(char) not in ("Cc", "Cs", "Zl", "Zp"), repr(char)


# ---- fuzzing -------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt=st.one_of(texts, option_values),
    negative=option_values,
    seed=option_values,
    steps=option_values,
    quality=option_values,
    size=option_values,
    limits=st.one_of(st.none(), limits_strategy),
)
def test_no_input_escapes_as_anything_but_spec_error(
    prompt: object, negative: object, seed: object, steps: object, quality: object, size: object,
    limits: ServerLimits | None,
) -> None:
    try:
        spec = parse_imagine(prompt, negative=negative, seed=seed, steps=steps, quality=quality, size=size,
                             limits=limits)
    except SpecError as error:
        event("refused")
        assert_friendly(str(error))
        return
    event("accepted")
    assert_accepted(spec, limits or ServerLimits())


@settings(max_examples=200, deadline=None)
@given(prompt=texts, negative=st.one_of(st.none(), texts), seed=st.one_of(st.none(), st.integers(-5, 2**64)))
def test_prompt_text_fuzz_is_accepted_clean_or_refused_politely(
    prompt: str, negative: str | None, seed: int | None
) -> None:
    try:
        spec = parse_imagine(prompt, negative=negative, seed=seed)
    except SpecError as error:
        event("refused")
        assert_friendly(str(error))
        return
    event("accepted")
    assert_accepted(spec, ServerLimits())


def assert_friendly(message: str) -> None:
    assert message and message[0].isupper() and message.rstrip("”").endswith("."), message
    assert "\n" not in message and "Traceback" not in message


def assert_accepted(spec: DreamSpec, effective: ServerLimits) -> None:
    assert isinstance(spec, DreamSpec)
    assert spec.validate() is spec
    assert_is_clean(spec.prompt)
    assert_is_clean(spec.negative)
    assert spec.prompt and len(spec.prompt) <= effective.max_prompt_chars
    assert 0 <= spec.seed <= MAX_SEED
    # The server's maxima are admission's to apply (tests/bot/jobs/test_admission.py); a spec stays in range.
    assert 1 <= spec.steps <= MAX_STEPS and spec.size in ALLOWED_SIZES
    assert len(spec.prompts) + len(spec.negative_prompts) <= effective.max_prompt_parts
    assert all(count_tokens(piece) <= MAX_PROMPT_TOKENS for piece in spec.prompts + spec.negative_prompts)


@settings(max_examples=200, deadline=None)
@given(st.text(any_char, max_size=200))
def test_clean_text_never_leaves_control_characters(text: str) -> None:
    try:
        cleaned = clean_text(text, "prompt", 1000)
    except SpecError:
        pytest.fail("200 characters are under the cap")
    assert_is_clean(cleaned)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, MAX_SEED))
def test_every_valid_seed_is_kept_exactly(seed: int) -> None:
    assert parse_imagine("a cat", seed=seed).seed == seed
    assert parse_imagine("a cat", seed=f" {seed} ").seed == seed


# ---- normalisation -------------------------------------------------------------------------------------------


def test_newlines_tabs_and_control_characters_are_normalised() -> None:
    spec = parse_imagine("  a bowl\nof\r\n\tcherries\x00\x07 \u202eon a table\u2028 ", negative="blurry\n\nugly")
    assert spec.prompt == "a bowl of cherries on a table"
    assert spec.negative == "blurry ugly"


def test_clip_markers_cannot_be_smuggled_into_a_prompt() -> None:
    assert parse_imagine("a cat <|endoftext|> a dog <|StartOfText|>").prompt == "a cat a dog"
    with pytest.raises(SpecError, match="empty"):
        parse_imagine("<|endoftext|>")


def test_defaults_come_from_the_server_limits() -> None:
    spec = parse_imagine("a cat", limits=ServerLimits(default_steps=300, default_size=128))
    assert (spec.steps, spec.size, spec.cutouts) == (300, 128, QUALITY_PRESETS["normal"]["cutouts"])


def test_quality_preset_then_explicit_options_override_it() -> None:
    cpu = parse_imagine("a cat", quality=" CPU ")
    assert (cpu.steps, cpu.cutouts, cpu.size) == tuple(QUALITY_PRESETS["cpu"][key] for key in ("steps", "cutouts", "size"))
    mixed = parse_imagine("a cat", quality="cpu", steps="200", size="256px")
    assert (mixed.steps, mixed.cutouts, mixed.size) == (200, 8, 256)


def test_seed_strings_users_type_are_accepted() -> None:
    assert parse_imagine("a cat", seed="1,234").seed == 1234
    assert parse_imagine("a cat", seed="+7").seed == 7
    assert parse_imagine("a cat", seed=5.0).seed == 5


def test_random_seed_is_in_range_and_injectable() -> None:
    seeds = {parse_imagine("a cat").seed for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= seed < RANDOM_SEED_LIMIT <= MAX_SEED + 1 for seed in seeds)
    assert parse_imagine("a cat", rng=random.Random(3)).seed == parse_imagine("a cat", rng=random.Random(3)).seed


# ---- friendly errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompt": ""}, "The prompt is empty"),
        ({"prompt": " \n\t "}, "The prompt is empty"),
        ({"prompt": " | | "}, "The prompt is empty"),
        ({"prompt": None}, "The prompt must be text."),
        ({"prompt": "a", "negative": 3}, "The negative prompt must be text."),
        ({"prompt": "a", "seed": "abc"}, "The seed must be a whole number from 0 to 9,223,372,036,854,775,807; “abc"),
        ({"prompt": "a", "seed": "-5"}, "The seed can't be negative"),
        ({"prompt": "a", "seed": -5}, "The seed can't be negative"),
        ({"prompt": "a", "seed": "9" * 40}, "The seed can be at most 9,223,372,036,854,775,807"),
        ({"prompt": "a", "seed": MAX_SEED + 1}, "The seed can be at most"),
        ({"prompt": "a", "seed": 1.5}, "The seed must be a whole number"),
        ({"prompt": "a", "seed": "٤٢"}, "The seed must be a whole number"),
        ({"prompt": "a", "seed": True}, "The seed must be a whole number"),
        ({"prompt": "a", "steps": 0}, "The number of steps must be at least 1"),
        ({"prompt": "a", "steps": MAX_STEPS + 1}, "The number of steps can be at most 5,000"),
        ({"prompt": "a", "steps": "lots"}, "The number of steps must be a whole number"),
        ({"prompt": "a", "quality": "ultra"}, "There is no quality “ultra”; choose one of draft, normal, best, cpu."),
        ({"prompt": "a", "quality": 3}, "There is no such quality"),
        ({"prompt": "a", "size": 300}, "The size must be one of 128, 256, 512 pixels."),
        ({"prompt": "a", "size": "huge"}, "The size must be one of"),
        ({"prompt": "a|b", "negative": "c|d|e", "limits": ServerLimits(max_prompt_parts=4)}, "Use at most 4 "),
        ({"prompt": "x" * 1001}, "The prompt is 1,001 characters long; the limit is 1,000, so shorten it by 1 "),
        ({"prompt": "a", "negative": "y" * 1500}, "The negative prompt is 1,500 characters long"),
    ],
)
def test_each_bad_input_gets_its_own_friendly_sentence(options: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_imagine(**options)
    assert str(refused.value).startswith(message)


def test_parsing_leaves_the_servers_maxima_to_admission() -> None:
    # Defaults come from the server; whether 1000 steps or 512 px may run there is bot.jobs.admission's to say.
    tight = ServerLimits(max_steps=800, max_size=256)
    assert parse_imagine("a", quality="best", limits=tight).steps == QUALITY_PRESETS["best"]["steps"]
    assert parse_imagine("a", quality="best", steps=500, limits=tight).steps == 500
    assert parse_imagine("a", size=512, limits=tight).size == 512


def test_prompt_over_clips_context_says_how_much_to_cut() -> None:
    prompt = " ".join(["cherry"] * 90)
    with pytest.raises(PromptTooLong) as refused:
        parse_imagine(prompt)
    message = str(refused.value)
    assert f"at most {MAX_PROMPT_TOKENS}" in message
    assert "90 CLIP tokens" in message and "Shorten it by about 15 words" in message
    # Each "|" piece has its own context, so the same words split in two are fine.
    assert parse_imagine(" ".join(["cherry"] * 45) + " | " + " ".join(["cherry"] * 45)).prompts


def test_negative_prompt_over_clips_context_is_refused_too() -> None:
    with pytest.raises(PromptTooLong, match="Shorten"):
        parse_imagine("a cat", negative="dog " * 80)


def test_a_megabyte_prompt_is_refused_before_any_tokenizing(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: object) -> None:
        raise AssertionError("tokenizer called")

    monkeypatch.setattr(bot.jobs.parsing, "check_prompt_lengths", must_not_run)
    with pytest.raises(PromptTooLong, match="the limit is 1,000"):
        parse_imagine("cherries " * 120_000)
    with pytest.raises(PromptTooLong):
        parse_imagine("a", negative="x" * 1_000_000)
    # Whitespace is collapsed before the cap, so padding alone does not count against the user...
    with pytest.raises(AssertionError, match="tokenizer called"):
        parse_imagine("a" + " " * 3000 + "b")


def test_misconfigured_limits_are_an_operator_error_not_a_user_one() -> None:
    for bad in ({"default_steps": 2000, "max_steps": 1000}, {"max_size": 300}, {"default_size": 512, "max_size": 256},
                {"max_steps": 0}, {"max_prompt_chars": 0}):
        with pytest.raises(ValueError) as error:
            ServerLimits(**bad)
        assert not isinstance(error.value, SpecError)


# ---- image prompts -----------------------------------------------------------------------------------------


def test_pictures_steer_with_a_weight_and_may_stand_in_for_the_prompt():
    from bot.jobs.parsing import UNFETCHED, with_pictures
    from generator.protocol import ImagePrompt

    spec = parse_imagine("| ", images=2, image_weight="2,5", seed=1)

    assert spec.prompt == "" and spec.image_prompts == (ImagePrompt(UNFETCHED, 2.5), ImagePrompt(UNFETCHED, 2.5))
    named = with_pictures(spec, ["prompts/aa/a.png", "prompts/bb/b.png"])
    assert [image.key for image in named.image_prompts] == ["prompts/aa/a.png", "prompts/bb/b.png"]
    assert named.image_prompts[1].weight == 2.5 and named.seed == 1
    assert parse_imagine("a fox", images=1).image_prompts[0].weight == 1.0
    with pytest.raises(ValueError):
        with_pictures(spec, ["prompts/aa/a.png"])


@pytest.mark.parametrize("options, says", [
    ({"images": 0, "image_weight": 2.0}, "give one with `image` or `like` too"),
    ({"images": 1, "image_weight": 0.05}, "image_weight must be a number from 0.1 to 5"),
    ({"images": 1, "image_weight": 5.5}, "image_weight must be a number from 0.1 to 5"),
    ({"images": 1, "image_weight": "lots"}, "image_weight must be a number from 0.1 to 5"),
    ({"images": 1, "image_weight": float("nan")}, "image_weight must be a number from 0.1 to 5"),
    ({"images": 1, "image_weight": True}, "image_weight must be a number from 0.1 to 5"),
    ({"images": 5}, "Give at most 4 pictures, not 5."),
])
def test_bad_picture_options_are_refused_with_a_sentence(options, says):
    with pytest.raises(SpecError) as refused:
        parse_imagine("a fox", **options)

    assert says in str(refused.value)


def test_the_hosts_choice_of_bigsleeps_options_goes_into_every_spec():
    hosted = ServerLimits(center_bias=True, save_best=True)
    spec = parse_imagine("a lighthouse", seed=1, limits=hosted)
    assert (spec.center_bias, spec.save_best) == (True, True)
    assert (parse_imagine("a lighthouse", seed=1).center_bias, parse_imagine("a lighthouse", seed=1).save_best) == (False, False)
