"""RetryPolicy: which failures are worth another attempt, and how long to wait before it.

Connection failures, timeouts, a body cut short, 408, 429 and 5xx (but 501, which will not change) are
transient; everything else, notably other 4xx and a changed file, is final. Waits grow exponentially from
``base_delay`` with full jitter (so clients that failed together do not retry together), capped at
``max_delay``; a server's ``Retry-After`` (seconds or an HTTP date) is honoured when it asks for longer.
The caller stops once the next attempt would start after its deadline, so a Retry-After longer than what is
left of an operation's deadline fails it at once rather than waiting; values are also capped at
``MAX_RETRY_AFTER`` (an hour) so an absurd one cannot overflow a timer. Pure apart from the random source.

``RetryPolicy(base_delay=0, max_delay=0)`` retries without waiting (the testing mode; only a Retry-After
still waits, which trio's MockClock makes instant).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from rangefs.errors import InvalidResponse, RemoteError, RemoteStatusError, RemoteUnreachable
from rangefs.remote.headers import parse_digits, parse_http_date

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 507, 509, 520, 522, 524})
THROTTLE_STATUSES = frozenset({429, 503})
# Seconds: the longest Retry-After taken literally. Longer than a sensible operation deadline, so it fails the
# operation at once; the cap keeps "Retry-After: 9999999999999" from overflowing a timer.
MAX_RETRY_AFTER = 3600.0


def is_transient(error: RemoteError) -> bool:
    if isinstance(error, RemoteUnreachable):
        return True
    if isinstance(error, RemoteStatusError):
        return error.status in TRANSIENT_STATUSES
    return isinstance(error, InvalidResponse) and error.transient


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), at most MAX_RETRY_AFTER.

    None if absent or invalid; never raises, whatever the text (it comes from the server)."""
    if not value:
        return None
    seconds = parse_digits(value)
    if seconds is None:
        when = parse_http_date(value)
        if when is None:
            return None
        return min(MAX_RETRY_AFTER, max(0.0, when - (time.time() if now is None else now)))
    return min(MAX_RETRY_AFTER, float(seconds))


@dataclass(frozen=True)
class RetryPolicy:
    # Seconds before the first retry; doubled for each further attempt.
    base_delay: float = 0.25
    # Longest wait between two attempts that we choose ourselves (Retry-After may ask for more).
    max_delay: float = 8.0
    # Attempts at most, whatever the deadline says: a server failing 8 times in a row is down.
    max_attempts: int = 8
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        chosen = self.rng.uniform(ceiling / 2, ceiling)  # "equal jitter": spread out, never near zero
        return max(chosen, retry_after) if retry_after is not None else chosen
