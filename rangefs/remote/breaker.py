"""HostBreaker: a host that cannot be connected to is known down for all its URLs at once.

Without it every URL of a dead host pays its own connect timeouts and retries: ``ls`` of 10,000 URLs on a
host that drops packets took about 26 minutes (a 5 s probe deadline each, 32 at a time). A connect-level
failure (connection refused, DNS failure, connect timeout, or an operation's deadline ending a connect
that was under way for seconds) trips the breaker of that origin, and requests to it then fail at once,
without a packet sent. After a cool-down one request is let through as a trial (half-open); an answer from
the host, or any sign of an established connection, closes the breaker, and a failed trial doubles the
cool-down. Cool-downs start at
2 s (a restarting server or a flapping route is often back that soon) and double up to 60 s (a host down for
longer costs one trial a minute). A read timeout or a reset on an established connection does not count:
that host is up, just slow or flaky, and retries deal with it.

Requests that were already connecting when the breaker tripped are not interrupted: each ends with its own
connect failure or deadline, and sees the breaker at its next attempt (the client never retries while the
breaker of the host is open).

States of an origin: closed (no outage), open (an outage and ``clock() < reopen_at``), half-open (an
outage whose cool-down is over; ``trial`` says whether the one trial request is under way). Pure but for
the clock, which is injectable (trio's by default, so a MockClock drives it in tests).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import trio

FIRST_COOLDOWN = 2.0
MAX_COOLDOWN = 60.0


class Admission(enum.Enum):
    GO = "go"  # the host is not known to be down
    TRIAL = "trial"  # the host is down and its cool-down is over: this request tests it
    REFUSED = "refused"  # the host is down: fail at once


@dataclass
class BreakerStatistics:
    hosts_down: int = 0
    # Times a host went from up to down.
    trips: int = 0
    # Requests failed at once because their host was known down.
    refused: int = 0


@dataclass
class _Outage:
    since: float  # clock time of the failure that marked the host down
    cause: str  # what that failure was, for the message of refused requests
    cooldown: float  # seconds from the latest failure to the next trial
    reopen_at: float  # clock time from which one trial may go
    trial: bool = False  # the one trial request is under way


class HostBreaker:
    """Per-origin circuit breaker. Origins are ``scheme://host:port`` strings chosen by the caller."""

    def __init__(
        self,
        *,
        first_cooldown: float = FIRST_COOLDOWN,
        max_cooldown: float = MAX_COOLDOWN,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.first_cooldown = first_cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._outages: dict[str, _Outage] = {}
        self._stats = BreakerStatistics()

    def __repr__(self) -> str:
        return f"<HostBreaker down: {sorted(self._outages)}>"

    def statistics(self) -> BreakerStatistics:
        self._stats.hosts_down = len(self._outages)
        return self._stats

    def is_down(self, origin: str) -> bool:
        return origin in self._outages

    def admit(self, origin: str) -> Admission:
        """Whether a request to ``origin`` may go now; a TRIAL must end in ``reached``, ``failed`` or ``abandoned``."""
        outage = self._outages.get(origin)
        if outage is None:
            return Admission.GO
        if outage.trial or self._clock() < outage.reopen_at:
            self._stats.refused += 1
            return Admission.REFUSED
        outage.trial = True
        return Admission.TRIAL

    def refusal(self, origin: str) -> str:
        """Why requests to ``origin`` are refused, for their error message."""
        outage = self._outages.get(origin)
        if outage is None:
            return f"host {origin} was down"
        now = self._clock()
        state = (
            "a trial request is under way"
            if outage.trial
            else f"retrying it after {max(0.0, outage.reopen_at - now):.1f} s"
        )
        return f"host {origin} down for {now - outage.since:.1f} s ({outage.cause}); {state}"

    def failed(self, origin: str, cause: str) -> None:
        """A connection to ``origin`` could not be made."""
        now = self._clock()
        outage = self._outages.get(origin)
        if outage is None:
            self._outages[origin] = _Outage(now, cause, self.first_cooldown, now + self.first_cooldown)
            self._stats.trips += 1
        elif now >= outage.reopen_at:
            # The trial (or a request that started before the trip and outlasted the cool-down) failed too.
            outage.cooldown = min(self.max_cooldown, 2 * outage.cooldown)
            outage.reopen_at, outage.trial, outage.cause = now + outage.cooldown, False, cause
        # Else a request that was connecting when the breaker tripped: it says nothing new.

    def reached(self, origin: str) -> None:
        """``origin`` answered or accepted a connection: it is up."""
        self._outages.pop(origin, None)

    def abandoned(self, origin: str, admission: Admission) -> None:
        """A request admitted as ``admission`` ended before saying whether ``origin`` is up (cancelled)."""
        outage = self._outages.get(origin)
        if admission is Admission.TRIAL and outage is not None:
            outage.trial = False
