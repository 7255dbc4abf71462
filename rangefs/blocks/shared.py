"""SharedFlight: single flight across the processes that share a cache directory (the cache's claims.py).

flight.py keeps one fetch per piece inside a process; this keeps one per piece across mounts, ``rangefs get -``
and ``rangefs.open`` on one cache dir. A fetch run first claims its pieces (``claim``): the ones it gets are
its to fetch; for the ones another process fetches, it *watches* the index until each one is on disk (then
reads it from the cache, checksums verified) or its claim is no longer live (its owner died or stalled past
its lease: then it claims and fetches that piece itself).

One poller task per store reads the state of every watched piece every ``poll_interval`` (5 ms: a waiting
reader learns of a piece at most that late; two indexed SELECTs per object per poll, measured 260 us for 64
watched pieces, so about 5 % of a core while a mount waits) and only while something is watched. A piece
watched for longer than ``max_wait`` is handed back to be fetched without a claim, so a reader never waits
forever on a live owner that makes no progress yet renews.

Attributes and their invariants:
- ``_watched``: a key is here iff a fetch run waits for another process's fetch of it, and that run's
  channel has room for its answer (one slot per key it watches);
- ``_polling``: True iff the poller task runs (it ends once nothing is watched).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable

import trio

from rangefs.cache import CLAIM_LEASE, BlockCache, PieceKey, PieceState

# Seconds between two reads of the watched pieces' states (see the module docstring).
POLL_INTERVAL = 0.005
# Seconds a piece may be watched before it is fetched regardless.
MAX_WAIT = 60.0

Answer = tuple[PieceKey, PieceState]


class ClaimLease:
    """The claims of one fetch, renewed as its bytes arrive (a stalled fetch's claims run out)."""

    def __init__(self, cache: BlockCache, token: str, lease: float) -> None:
        self._cache = cache
        self.token = token
        self._lease = lease
        self._renewed = trio.current_time()

    def progress(self) -> None:
        """Bytes arrived or were written: renew the claims if a quarter of the lease has passed."""
        now = trio.current_time()
        if now - self._renewed >= self._lease / 4:
            self._renewed = now
            self._cache.renew_claims(self.token, self._lease)

    def release(self, keys: list[PieceKey]) -> None:
        self._cache.release_claims(self.token, keys)


class SharedFlight:
    def __init__(
        self,
        cache: BlockCache,
        *,
        nursery: trio.Nursery,
        lease: float = CLAIM_LEASE,
        poll_interval: float = POLL_INTERVAL,
        max_wait: float = MAX_WAIT,
    ) -> None:
        self._cache = cache
        self._nursery = nursery
        self.lease = lease
        self._poll_interval = poll_interval
        self._max_wait = max_wait
        self._watched: dict[PieceKey, tuple[float, trio.MemorySendChannel[Answer]]] = {}
        self._polling = False

    def __repr__(self) -> str:
        return f"<SharedFlight {len(self._watched)} watched>"

    def claim(self, keys: list[PieceKey]) -> tuple[ClaimLease, dict[PieceKey, PieceState]]:
        """Claim pieces for a new fetch: its lease, and each piece's state (OURS, CLAIMED or ON_DISK)."""
        lease = ClaimLease(self._cache, secrets.token_hex(8), self.lease)
        return lease, self._cache.claim(keys, lease.token, self.lease)

    def unclaimed(self, keys: list[PieceKey]) -> tuple[ClaimLease, dict[PieceKey, PieceState]]:
        """For a fetch that claims nothing (a piece waited for too long): a lease that holds no claim."""
        return ClaimLease(self._cache, secrets.token_hex(8), self.lease), dict.fromkeys(keys, PieceState.OURS)

    def watch(self, keys: Iterable[PieceKey], answers: trio.MemorySendChannel[Answer]) -> None:
        """Send ``(key, state)`` to ``answers`` once each piece is ON_DISK or FREE (OURS: waited too long, fetch
        it without a claim). The channel must have room for one answer per key watched."""
        now = trio.current_time()
        for key in keys:
            self._watched[key] = (now, answers)
        if self._watched and not self._polling:
            self._polling = True
            try:
                self._nursery.start_soon(self._poll)
            except BaseException:
                self._polling = False
                raise

    def unwatch(self, keys: Iterable[PieceKey]) -> None:
        for key in keys:
            self._watched.pop(key, None)

    async def _poll(self) -> None:
        try:
            while self._watched:
                await trio.sleep(self._poll_interval)
                if not self._watched:
                    break
                states = self._cache.piece_states(list(self._watched))
                now = trio.current_time()
                for key, (since, answers) in list(self._watched.items()):
                    state = states.get(key, PieceState.FREE)
                    if state is PieceState.CLAIMED:
                        if now - since < self._max_wait:
                            continue
                        state = PieceState.OURS
                    del self._watched[key]
                    # A run that ended (cancelled) between two polls closed its channel: nobody waits any more.
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        answers.send_nowait((key, state))
        finally:
            self._polling = False
