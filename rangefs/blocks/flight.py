"""Single flight: one fetch per piece, however many readers want it, and every waiter woken exactly once.

A piece being fetched is *registered* here; readers that want it join its ``Pending`` instead of fetching it
again. Whoever registered a piece owns its completion and must end it with ``complete`` or ``fail``, also when
it is cancelled or fails unexpectedly (in a ``finally``): a piece left registered would make every reader of
it wait forever (0.1 lost pieces that way when the cache raised between registering and starting a fetch).
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from rangefs.cache import PieceKey


class Pending:
    """A piece being fetched; ``done`` is set once, after ``data`` or ``error`` is."""

    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: memoryview | None = None
        self.error: BaseException | None = None

    async def wait(self, lo: int, hi: int) -> bytes:
        """Bytes ``lo`` to ``hi`` of the piece once it is in, or its fetch's error."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return bytes(self.data[lo:hi])


class InFlight:
    """The registered pieces. Invariant: a key is here iff one owner will complete or fail it."""

    def __init__(self) -> None:
        self._pending: dict[PieceKey, Pending] = {}

    def __repr__(self) -> str:
        return f"<InFlight {len(self._pending)} pieces>"

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: PieceKey) -> bool:
        return key in self._pending

    def get(self, key: PieceKey) -> Pending | None:
        return self._pending.get(key)

    def register(self, key: PieceKey) -> Pending:
        if key in self._pending:
            raise AssertionError(f"{key} is already being fetched")
        pending = self._pending[key] = Pending()
        return pending

    def complete(self, key: PieceKey, data: memoryview) -> None:
        pending = self._pending.pop(key)
        pending.data = data
        pending.done.set()

    def fail(self, keys: Iterable[PieceKey], error: BaseException) -> None:
        """Fail those of ``keys`` still registered (the others completed already)."""
        for key in keys:
            pending = self._pending.pop(key, None)
            if pending is not None:
                pending.error = error
                pending.done.set()
