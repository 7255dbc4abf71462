"""ByteBudget: a limit on bytes held at once (prefetches in flight, and their cache writes), shared by a mount."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class ByteBudget:
    """``async with budget.hold(n)`` waits until ``n`` more bytes fit under ``limit``, then holds them.

    A request larger than the whole limit is admitted alone, so an oversized part waits but never deadlocks.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.in_use = 0
        self._changed = trio.Condition()

    def __repr__(self) -> str:
        return f"<ByteBudget {self.in_use}/{self.limit} bytes in use>"

    def fits(self, size: int) -> bool:
        """Whether ``hold(size)`` would be admitted now without waiting."""
        return self.in_use == 0 or self.in_use + size <= self.limit

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        async with self._changed:
            while self.in_use > 0 and self.in_use + size > self.limit:
                await self._changed.wait()
            self.in_use += size
        try:
            yield
        finally:
            self.in_use -= size
            # Waking waiters needs the lock; a cancelled holder must still release, so shield the hand-over.
            with trio.CancelScope(shield=True):
                async with self._changed:
                    self._changed.notify_all()
