"""The banned-word matcher: evasions it must catch, innocent words it must leave alone."""

from __future__ import annotations

import pytest

from bot.moderation.wordfilter import BannedWords, normalize_entry, skeleton

WORDS = ["fuck", "shit", "cunt", "ass", "penis", "hell", "cock", "sex", "rape", "dick", "nazi*", "*porn*", "*hole"]


@pytest.fixture(scope="module")
def matcher() -> BannedWords:
    return BannedWords(WORDS)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("FUCK this", "fuck"),  # case
        ("a Shit painting", "shit"),
        ("f u c k", "fuck"),  # spaced out letter by letter
        ("f.u.c.k", "fuck"),  # punctuation inside
        ("f. u. c. k", "fuck"),
        ("f-u-c-k", "fuck"),
        ("f_u_c_k", "fuck"),
        ("f*u*c*k", "fuck"),
        ("pe.nis", "penis"),
        ("fuuuuuck", "fuck"),  # repeated letters
        ("shiiiiit", "shit"),
        ("asssss", "ass"),
        ("fück", "fuck"),  # accents
        ("ｆｕｃｋ", "fuck"),  # fullwidth
        ("𝐟𝐮𝐜𝐤", "fuck"),  # mathematical bold
        ("shіt", "shit"),  # Cyrillic і
        ("сunt", "cunt"),  # Cyrillic с
        ("fucк", "fuck"),  # Cyrillic к
        ("sh1t", "shit"),  # leetspeak
        ("$hit", "shit"),
        ("5hit", "shit"),
        ("sh!t", "shit"),
        ("@ss", "ass"),
        ("s3x", "sex"),
        ("fu\u200bck", "fuck"),  # zero-width space
        ("sh\u00adit", "shit"),  # soft hyphen
        ("f\u0336u\u0336c\u0336k\u0336", "fuck"),  # combining strikethrough
        ("Shit!", "shit"),  # trailing punctuation
        ("what the hell.", "hell"),
        ("a s s", "ass"),
        ("nazism", "nazi*"),  # prefix entry
        ("pornography", "*porn*"),  # anywhere entry
        ("softp0rn", "*porn*"),
        ("butthole", "*hole"),  # suffix entry
    ],
)
def test_catches_evasions(matcher, prompt, expected):
    assert matcher.find(prompt) == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "Scunthorpe at dawn",
        "Essex and Sussex",
        "a cocktail on the beach",
        "an assassin in the dark",
        "a classic passage",
        "Penistone station",
        "a therapist's office",
        "shiitake mushrooms",
        "a Dickens novel",
        "hello!",
        "as above, so below",
        "the pen is mightier than the sword",
        "he'll come home",
        "a grape skill",
        "a cat in a hat",
        "holes in the road",
        "I am a sushi chef",
        "class of 1999, costs $5",
    ],
)
def test_leaves_innocent_words_alone(matcher, prompt):
    assert matcher.find(prompt) is None


def test_double_letters_of_the_word_itself_still_need_two():
    assert BannedWords(["ass"]).find("as") is None
    assert BannedWords(["ass"]).find("ass") == "ass"


def test_entries_are_normalised_and_returned_as_typed():
    matcher = BannedWords(["  Gore ", "GORE", "b4d"])
    assert list(matcher.entries.values()) == ["Gore", "b4d"]
    assert matcher.find("so gory, much g0re") == "Gore"
    assert matcher.find("a bad idea") == "b4d"
    assert normalize_entry("***") == ""
    assert normalize_entry(" *Gore* ") == "*gore*"


def test_empty_list_matches_nothing():
    assert not BannedWords([]) and BannedWords([" ", "*"]).find("anything") is None


def test_skeleton_folds_look_alikes():
    assert skeleton("ＣＡＴ Ϲаt ćat") == "cat cat cat"


def test_a_long_adversarial_prompt_is_still_cheap(matcher):
    # Thousands of single letters form one long spelled-out group; the matcher must not go quadratic in it.
    assert matcher.find("a " * 500) is None
    assert matcher.find("s " * 300 + "f u c k") == "fuck"
