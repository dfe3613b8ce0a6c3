"""Challenge lengths as people type them: "2d", "36h", "1d12h", "90m", "1w", "1d 6h"."""

from __future__ import annotations

import re

UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60}
_UNIT_WORDS = {"w": "week", "d": "day", "h": "hour", "m": "minute"}
_PART = re.compile(r"(\d+)\s*([wdhm])", re.IGNORECASE)


class DurationError(ValueError):
    """What was typed is not a usable duration; the message says how to write one."""


def parse_duration(text: str, *, minimum_seconds: float = 0, maximum_seconds: float | None = None) -> int:
    """Seconds in `text`, which is one or more <number><unit> parts (units w, d, h, m, each at most once)."""
    cleaned = text.strip().lower()
    if not cleaned:
        raise DurationError("Give a duration such as `2d`, `36h`, `1d12h` or `90m`.")
    position = 0
    seen: set[str] = set()
    total = 0
    for part in _PART.finditer(cleaned):
        between = cleaned[position:part.start()]
        if between.strip(" ,"):
            raise _not_understood(text)
        number, unit = int(part.group(1)), part.group(2)
        if unit in seen:
            raise DurationError(f"`{text.strip()}` names {_UNIT_WORDS[unit]}s twice; write each unit once, e.g. `1d12h`.")
        seen.add(unit)
        total += number * UNIT_SECONDS[unit]
        position = part.end()
    if not seen or cleaned[position:].strip(" ,"):
        if cleaned.isdigit():
            raise DurationError(f"`{text.strip()}` has no unit; add one: `{cleaned}d`, `{cleaned}h` or `{cleaned}m`.")
        raise _not_understood(text)
    if total < minimum_seconds:
        raise DurationError(f"A challenge must last at least {describe_duration(minimum_seconds)}.")
    if maximum_seconds is not None and total > maximum_seconds:
        raise DurationError(f"A challenge may last at most {describe_duration(maximum_seconds)}.")
    return total


def describe_duration(seconds: float) -> str:
    """`129600` -> "1 day 12 hours"; minutes are the smallest unit shown."""
    remaining = max(0, round(seconds / 60)) * 60
    if remaining == 0:
        return "less than a minute"
    words = []
    for unit in ("d", "h", "m"):
        count, remaining = divmod(remaining, UNIT_SECONDS[unit])
        if count:
            words.append(f"{count} {_UNIT_WORDS[unit]}{'' if count == 1 else 's'}")
    return " ".join(words)


def _not_understood(text: str) -> DurationError:
    return DurationError(
        f"I can't read `{text.strip()[:40]}` as a duration. Use a number and a unit (w, d, h, m): "
        "`2d`, `36h`, `1d12h` or `90m`."
    )
