"""RetryPolicy: which failures are worth another attempt, and how long to wait before it.

Connection failures, timeouts, a body cut short, 408, 429 and 5xx (but 501, which will not change) are
transient; everything else, notably other 4xx and a changed file, is final. Waits grow exponentially from
``base_delay`` with full jitter (so clients that failed together do not retry together), capped at
``max_delay``; a server's ``Retry-After`` (seconds or an HTTP date) is honoured when it asks for longer.
The caller stops once the next attempt would start after its deadline. Pure apart from the random source.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from rangefs.errors import InvalidResponse, RemoteError, RemoteStatusError, RemoteUnreachable

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 507, 509, 520, 522, 524})
THROTTLE_STATUSES = frozenset({429, 503})


def is_transient(error: RemoteError) -> bool:
    if isinstance(error, RemoteUnreachable):
        return True
    if isinstance(error, RemoteStatusError):
        return error.status in TRANSIENT_STATUSES
    return isinstance(error, InvalidResponse) and error.transient


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


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
