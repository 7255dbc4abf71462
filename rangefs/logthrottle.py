"""Keep a flood of identical failures from flooding the log: one line per key per interval."""

from __future__ import annotations

import time
from collections.abc import Callable


class LogThrottle:
    """``admit(key)`` says whether to log now, and how many lines for that key were held back since."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str) -> tuple[bool, int]:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)
