"""The banned-word matcher: finds a banned word in a prompt despite simple evasion, without flagging the
innocent words that merely contain one ("Scunthorpe", "cocktail", "assassin").

How a prompt is read:
- Unicode look-alikes become the letters they imitate: compatibility forms (fullwidth `ｆ`, mathematical `𝐟`)
  through NFKC; accents are dropped (`ü` -> `u`); other scripts' look-alikes (Cyrillic `с`, Greek `ο`) through
  the Unicode confusables table that `confusable-homoglyphs` ships. Case is ignored.
- Digits and symbols that stand in for letters (`sh1t`, `$hit`, `@ss`, `sh!t`) match those letters.
- Invisible characters (zero-width space, soft hyphen) are ignored altogether.
- A letter repeated any number of times matches it once (`fuuuck`), but a word's own double letters still
  need two (`ass` does not match `as`).
- Words broken up with punctuation inside (`f.u.c.k`, `pe-nis`, `s_h_i_t`) or spelled out as single letters
  with spaces (`f u c k`) are read joined together.

What counts as a match: by default a banned word must be a whole word, which is what keeps "Scunthorpe"
innocent. A word list entry may use `*` at either end, as Discord's AutoMod does: `fuck*` also catches words
that start with it (`fuckface`), `*fuck` words that end with it, `*fuck*` any word containing it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from confusable_homoglyphs import confusables

# Stand-ins people type for letters; each letter's class in a pattern accepts them.
_LEET: dict[str, str] = {
    "a": "4@", "b": "8", "e": "3€", "g": "9", "i": "1!|", "l": "1|", "o": "0", "s": "5$", "t": "7+", "z": "2",
}
_ENTRY_LEET = {"4": "a", "@": "a", "8": "b", "3": "e", "€": "e", "9": "g", "1": "i", "!": "i", "|": "l", "0": "o",
               "5": "s", "$": "s", "7": "t", "+": "t", "2": "z"}
_LEET_SYMBOLS = frozenset(ch for chars in _LEET.values() for ch in chars if not ch.isalnum())
# Punctuation between letters that joins them into one word ("f.u.c.k"); an apostrophe is left out on
# purpose: "he'll" is two pieces of English, not an evasion of "hell".
_JOINERS = frozenset(".-_*~·•/\\^=")
MAX_WORD_LENGTH = 64
# Look-alikes Unicode's confusables table leaves out (it lists only near-identical glyphs).
_EXTRA_LOOKALIKES = {"к": "k", "κ": "k", "т": "t", "ƒ": "f", "ı": "i", "ł": "l", "đ": "d", "ø": "o"}


@functools.cache
def _confusable_letter(char: str) -> str | None:
    """The ASCII letter or digit a character imitates, from Unicode's confusables data, or None."""
    for glyph in confusables.confusables_data.get(char, ()):
        candidate = glyph["c"]
        if len(candidate) == 1 and candidate.isascii() and candidate.isalnum():
            return candidate.lower()
    return None


def _skeleton_char(char: str) -> str:
    """One input character as the lowercase ASCII it stands for: '' when invisible, or itself if unknown."""
    if unicodedata.category(char) in ("Cf", "Mn", "Me"):
        return ""
    if not char.isascii():
        # The character as typed first: compatibility folding can turn a look-alike into another letter's
        # (lunate sigma "Ϲ", which looks like C, becomes Σ, whose small form σ looks like o).
        direct = _EXTRA_LOOKALIKES.get(char) or _confusable_letter(char)
        if direct:
            return direct
    out = []
    for piece in unicodedata.normalize("NFKC", char):
        if piece.isascii():
            out.append(piece.lower())
            continue
        bare = "".join(c for c in unicodedata.normalize("NFKD", piece) if not unicodedata.combining(c))
        if bare.isascii() and bare:
            out.append(bare.lower())
            continue
        folded = piece.casefold()
        out.append(
            _EXTRA_LOOKALIKES.get(piece) or _confusable_letter(piece)
            or _EXTRA_LOOKALIKES.get(folded) or _confusable_letter(folded) or folded
        )
    return "".join(out)


def skeleton(text: str) -> str:
    """The text as the matcher reads it (look-alikes to ASCII, lowercase, invisible characters gone)."""
    return "".join(_skeleton_char(char) for char in text)


def _is_letterish(char: str) -> bool:
    return char.isalnum() or char in _LEET_SYMBOLS


@dataclass(frozen=True)
class _Group:
    """Tokens read as one word: their letters joined, with where each token starts and ends."""

    text: str
    starts: frozenset[int]
    ends: frozenset[int]


def _groups(text: str) -> list[_Group]:
    """Split the skeleton into tokens (runs of letter-like characters) and join the tokens an evader split."""
    tokens: list[tuple[str, str]] = []  # (token, separator before it)
    separator = ""
    current = ""
    for char in skeleton(text):
        if _is_letterish(char):
            current += char
        else:
            if current:
                tokens.append((current, separator))
                current, separator = "", ""
            separator += char
    if current:
        tokens.append((current, separator))

    groups: list[_Group] = []
    pieces: list[str] = []

    def close() -> None:
        if not pieces:
            return
        starts, ends, offset = set(), set(), 0
        for piece in pieces:
            # A symbol at a token's edge may be punctuation ("hello!") or a letter ("$hit"): allow both readings.
            lead = len(piece) - len(piece.lstrip("".join(_LEET_SYMBOLS)))
            trail = len(piece) - len(piece.rstrip("".join(_LEET_SYMBOLS)))
            starts.update({offset, offset + lead})
            ends.update({offset + len(piece), offset + len(piece) - trail})
            offset += len(piece)
        groups.append(_Group("".join(pieces), frozenset(starts), frozenset(ends)))
        pieces.clear()

    previous = ""
    for token, before in tokens:
        spaced = any(c.isspace() for c in before)
        punctuation = "".join(c for c in before if not c.isspace())
        joined = (
            bool(pieces)
            and set(punctuation) <= _JOINERS
            and len(punctuation) <= 3
            # Across spaces only when spelled out letter by letter: "pen is" stays two words.
            and (not spaced or len(previous) == 1 or len(token) == 1)
        )
        if not joined:
            close()
        pieces.append(token)
        previous = token
    close()
    return groups


def _letter_class(letter: str) -> str:
    accepted = letter + _LEET.get(letter, "")
    return "[" + "".join(re.escape(c) for c in accepted) + "]" if len(accepted) > 1 else re.escape(letter)


def _pattern_for(word: str) -> str:
    """A regex for one banned word: each run of a letter matches that many or more of it (or its stand-ins)."""
    runs = [(m.group(0)[0], len(m.group(0))) for m in re.finditer(r"(.)\1*", word)]
    return "".join(_letter_class(letter) + ("+" if count == 1 else f"{{{count},}}") for letter, count in runs)


def normalize_entry(entry: str) -> str:
    """A word list entry as stored: its letters' skeleton, with a leading/trailing `*` kept. '' if unusable."""
    text = entry.strip()
    prefix = "*" if text.startswith("*") else ""
    suffix = "*" if text.endswith("*") and len(text) > 1 else ""
    # Leet stand-ins in the list itself mean their letters ("b4d" -> "bad").
    core = "".join(_ENTRY_LEET.get(c, c) for c in skeleton(text.strip("*")) if _is_letterish(c))
    if not core:
        return ""
    return prefix + core[:MAX_WORD_LENGTH] + suffix


class BannedWords:
    """Compiled once per word list; `find(prompt)` returns the entry that matched, or None."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries: dict[str, str] = {}  # normalised -> as the moderator typed it
        for entry in entries:
            normalised = normalize_entry(entry)
            if normalised and normalised not in self.entries:
                self.entries[normalised] = entry.strip()
        self._whole = self._compile([e for e in self.entries if not e.startswith("*") and not e.endswith("*")])
        self._prefix = self._compile([e[:-1] for e in self.entries if e.endswith("*") and not e.startswith("*")])
        # Suffix entries are matched backwards, from a token's end, on the reversed text.
        self._suffix = [
            (re.compile(_pattern_for(e[1:][::-1])), e[1:])
            for e in self.entries
            if e.startswith("*") and not e.endswith("*")
        ]
        self._anywhere = self._compile([e[1:-1] for e in self.entries if e.startswith("*") and e.endswith("*")])

    @staticmethod
    def _compile(words: list[str]) -> list[tuple[re.Pattern[str], str]]:
        return [(re.compile(_pattern_for(word)), word) for word in words]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def find(self, text: str) -> str | None:
        if not self.entries:
            return None
        for group in _groups(text):
            found = self._find_in(group)
            if found is not None:
                return found
        return None

    def _find_in(self, group: _Group) -> str | None:
        text = group.text
        for pattern, word in self._anywhere:
            if pattern.search(text):
                return self._shown(f"*{word}*")
        for start in sorted(group.starts):
            for pattern, word in self._prefix:
                if pattern.match(text, start):
                    return self._shown(f"{word}*")
            for pattern, word in self._whole:
                longest = pattern.match(text, start)
                if longest is None:
                    continue
                # The greedy match usually ends at the word's end; letters shared by neighbouring classes
                # ("1" is both i and l) can make it overshoot, so shorter ends are tried too.
                if any(
                    end in group.ends and pattern.fullmatch(text, start, end)
                    for end in range(longest.end(), start, -1)
                ):
                    return self._shown(word)
        if self._suffix:
            reversed_text = text[::-1]
            for end in group.ends:
                for pattern, word in self._suffix:
                    if pattern.match(reversed_text, len(text) - end):
                        return self._shown(f"*{word}")
        return None

    def _shown(self, normalised: str) -> str:
        return self.entries.get(normalised, normalised.strip("*"))

