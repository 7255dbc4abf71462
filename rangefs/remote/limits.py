"""Connections per host, with separate limits for demand reads and prefetch so demand never queues behind it."""

from __future__ import annotations

import trio


class HostLimits:
    """Two CapacityLimiters per host (scheme, host, port): one for demand fetches, one for prefetch."""

    def __init__(self, connections_per_host: int) -> None:
        if connections_per_host < 1:
            raise ValueError("connections per host must be at least 1")
        self.connections_per_host = connections_per_host
        self._limiters: dict[tuple[str, bool], trio.CapacityLimiter] = {}

    def __repr__(self) -> str:
        busy = {key: limiter.borrowed_tokens for key, limiter in self._limiters.items() if limiter.borrowed_tokens}
        return f"<HostLimits {self.connections_per_host} per host, busy {busy}>"

    def limiter(self, origin: str, *, demand: bool) -> trio.CapacityLimiter:
        key = (origin, demand)
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = trio.CapacityLimiter(self.connections_per_host)
        return limiter
