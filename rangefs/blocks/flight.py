"""Single flight: one fetch per piece, however many readers want it, and every waiter woken exactly once.

A piece being fetched is *registered* here; readers that want it join its ``Pending`` instead of fetching it
again. Each registered piece has one *owner* (a read starting its fetches, a fetch run, a reservation, a
whole-file stream), and only its owner ends it, with ``complete`` or ``fail``, also when it is cancelled or
fails unexpectedly (in a ``finally``): a piece left registered would make every reader of it wait forever
(0.1 lost pieces that way when the cache raised between registering and starting a fetch). Ownership moves
explicitly (``take``): a range fetch that finds the server ignoring ranges hands its pieces to a stream, and
the reservation it came from must not fail them afterwards (once it did, and the stream then completed
another owner's registration of the same piece).

A reader is answered as soon as its own bytes of a piece are in, not when the whole piece is: the fetch hands
each piece's growing prefix to its ``Pending`` (``progress``) as the response streams in. At 40 ms RTT a 1 MiB
block on a connection that idled arrives over ~6 round trips of slow start; a tool's 64 KiB read at its start
(ffprobe's first read, the format-aware prefetch's MP4 box headers) is in after ~2-3 of them.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from rangefs.cache import PieceKey


class Pending:
    """A piece being fetched; ``done`` is set once, after ``data`` or ``error`` is.

    - ``prefix``: the buffer the piece is gathered in, whose first ``received`` bytes are in (a correct prefix:
      the response was validated before its body was read), or None; dropped once ``done``;
    - ``_advanced``: set, and replaced, whenever ``prefix`` grows or the piece ends; None while nobody waits.
    """

    __slots__ = ("_advanced", "data", "done", "error", "owner", "prefix", "received")

    def __init__(self, owner: object) -> None:
        self.done = trio.Event()
        self.data: memoryview | None = None
        self.error: BaseException | None = None
        self.owner = owner
        self.prefix: bytearray | None = None
        self.received = 0
        self._advanced: trio.Event | None = None

    async def wait(self, lo: int, hi: int) -> bytes:
        """Bytes ``lo`` to ``hi`` of the piece once they are in (the rest of the piece may still be on its way),
        or its fetch's error if it ends before them."""
        while not self.done.is_set():
            prefix = self.prefix
            if prefix is not None and self.received >= hi:
                return bytes(prefix[lo:hi])
            if self._advanced is None:
                self._advanced = trio.Event()
            await self._advanced.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return bytes(self.data[lo:hi])

    def progress(self, buffer: bytearray, received: int) -> None:
        """The first ``received`` bytes of the piece are in ``buffer`` (the fetch's own, which it goes on filling):
        wake readers waiting for them."""
        if not self.done.is_set():
            self.prefix, self.received = buffer, received
            self._wake()

    def _end(self, data: memoryview | None, error: BaseException | None) -> None:
        self.data, self.error, self.prefix = data, error, None
        self.done.set()
        self._wake()

    def _wake(self) -> None:
        if self._advanced is not None:
            self._advanced.set()
            self._advanced = None


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
        pending._end(data, None)
        return True

    def fail(self, entries: Iterable[Entry], error: BaseException, owner: object) -> None:
        """End the entries ``owner`` still owns with ``error`` (the others are not its to end)."""
        for entry in entries:
            if self._owned(entry, owner):
                key, pending = entry
                del self._pending[key]
                pending._end(None, error)
