"""An injectable clock so tests can jump past Discord's deadlines without waiting for them."""

from __future__ import annotations

import datetime
import time
from typing import Callable, List


class FakeClock:
    """Real time plus an offset that tests can push forward.

    Real elapsed time keeps counting, because a bot that simply takes too long must still miss the 3 s
    interaction deadline; ``advance`` adds to that, which is how a test expires a 15-minute token at once.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._listeners: List[Callable[[], None]] = []

    @property
    def offset(self) -> float:
        return self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError('the fake clock only moves forward')
        self._offset += seconds
        for listener in list(self._listeners):
            listener()

    def monotonic(self) -> float:
        """Seconds for measuring intervals (deadlines, token lifetimes)."""
        return time.monotonic() + self._offset

    def time(self) -> float:
        """Unix seconds, for timestamps and snowflakes."""
        return time.time() + self._offset

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.time(), datetime.timezone.utc)

    def on_advance(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)
