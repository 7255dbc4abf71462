"""Connections per host: separate limits for demand reads and prefetch, adapted to how the host copes.

Demand fetches (a reader waits), prefetches and probes have a CapacityLimiter each per origin, so demand
never queues behind prefetch, nor a listing's probes behind either. Probes are bounded too: httpcore's pool
costs CPU per request in proportion to its connections to the host (10,000 HEADs to one host: 32 at once
took 20 CPU-s, 8 at once 9). Both follow one AIMD allowance per origin: a 429 or 503 halves it (at least 1), each
success adds 1/allowance (about one more connection per allowance's worth of successes), never above the
configured connections. A throttling origin thus sees fewer, not more, requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio


@dataclass
class _HostState:
    allowance: float
    demand: trio.CapacityLimiter
    prefetch: trio.CapacityLimiter
    probe: trio.CapacityLimiter


class HostLimits:
    def __init__(self, connections_per_host: int) -> None:
        if connections_per_host < 1:
            raise ValueError("connections per host must be at least 1")
        self.connections_per_host = connections_per_host
        self._hosts: dict[str, _HostState] = {}

    def __repr__(self) -> str:
        allowances = {origin: round(state.allowance, 2) for origin, state in self._hosts.items()}
        return f"<HostLimits max {self.connections_per_host}, allowances {allowances}>"

    def _state(self, origin: str) -> _HostState:
        state = self._hosts.get(origin)
        if state is None:
            full = self.connections_per_host
            state = self._hosts[origin] = _HostState(
                float(full), trio.CapacityLimiter(full), trio.CapacityLimiter(full), trio.CapacityLimiter(full)
            )
        return state

    def limiter(self, origin: str, *, demand: bool) -> trio.CapacityLimiter:
        state = self._state(origin)
        return state.demand if demand else state.prefetch

    def probe_limiter(self, origin: str) -> trio.CapacityLimiter:
        return self._state(origin).probe

    def allowance(self, origin: str) -> int:
        return int(self._state(origin).allowance)

    def throttled(self, origin: str) -> None:
        """The origin said it is overloaded: halve the connections it gets."""
        state = self._state(origin)
        self._set(state, max(1.0, state.allowance / 2))

    def succeeded(self, origin: str) -> None:
        state = self._state(origin)
        if state.allowance < self.connections_per_host:
            self._set(state, min(float(self.connections_per_host), state.allowance + 1 / state.allowance))

    @staticmethod
    def _set(state: _HostState, allowance: float) -> None:
        state.allowance = allowance
        # Lowering total_tokens below what is borrowed is allowed: it takes effect as tokens come back.
        state.demand.total_tokens = state.prefetch.total_tokens = state.probe.total_tokens = int(allowance)
