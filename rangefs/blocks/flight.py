"""Single flight: one fetch per piece, however many readers want it, and every waiter woken exactly once.

A piece being fetched is *registered* here; readers that want it join its ``Pending`` instead of fetching it
again. Each registered piece has one *owner* (a read starting its fetches, a fetch run, a reservation, a
whole-file stream), and only its owner ends it, with ``complete`` or ``fail``, also when it is cancelled or
fails unexpectedly (in a ``finally``): a piece left registered would make every reader of it wait forever
(0.1 lost pieces that way when the cache raised between registering and starting a fetch). Ownership moves
explicitly (``take``): a range fetch that finds the server ignoring ranges hands its pieces to a stream, and
the reservation it came from must not fail them afterwards (once it did, and the stream then completed
another owner's registration of the same piece).
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from rangefs.cache import PieceKey


class Pending:
    """A piece being fetched; ``done`` is set once, after ``data`` or ``error`` is."""

    __slots__ = ("data", "done", "error", "owner")

    def __init__(self, owner: object) -> None:
        self.done = trio.Event()
        self.data: memoryview | None = None
        self.error: BaseException | None = None
        self.owner = owner

    async def wait(self, lo: int, hi: int) -> bytes:
        """Bytes ``lo`` to ``hi`` of the piece once it is in, or its fetch's error."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return bytes(self.data[lo:hi])


Entry = tuple[PieceKey, Pending]


class InFlight:
    """The registered pieces. Invariant: a key is here iff its Pending's owner will complete or fail it."""

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

    def register(self, key: PieceKey, owner: object) -> Pending:
        if key in self._pending:
            raise AssertionError(f"{key} is already being fetched")
        pending = self._pending[key] = Pending(owner)
        return pending

    def _owned(self, entry: Entry, owner: object) -> bool:
        key, pending = entry
        return self._pending.get(key) is pending and pending.owner is owner

    def take(self, entries: Iterable[Entry], old_owner: object, new_owner: object) -> list[Entry]:
        """Move the entries ``old_owner`` still owns to ``new_owner``; returns them."""
        taken = [entry for entry in entries if self._owned(entry, old_owner)]
        for _, pending in taken:
            pending.owner = new_owner
        return taken

    def complete(self, entry: Entry, data: memoryview, owner: object) -> bool:
        """End an owned piece with its bytes; False (and nothing done) if ``owner`` does not own it."""
        if not self._owned(entry, owner):
            return False
        key, pending = entry
        del self._pending[key]
        pending.data = data
        pending.done.set()
        return True

    def fail(self, entries: Iterable[Entry], error: BaseException, owner: object) -> None:
        """End the entries ``owner`` still owns with ``error`` (the others are not its to end)."""
        for entry in entries:
            if self._owned(entry, owner):
                key, pending = entry
                del self._pending[key]
                pending.error = error
                pending.done.set()
