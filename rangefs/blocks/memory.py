"""MemoryTier: recently fetched pieces within a byte limit; those a reader has read through leave first.

A sequential reader usually reads a block soon after readahead brought it; serving it from memory saves
reopening, re-reading and re-checksumming the file just written (measured in 0.1: 300-500 of the 512 blocks
of a cold `cat` were read back that way), and it serves pieces whose cache write is still queued. Same
reading interface as the disk tier (``read``, ``contains``, ``drop_object``).

Which pieces go when the limit is reached: a piece whose last byte a reader has read is *passed*: a stream
moved on past it, the kernel's page cache holds what it read, and a reader coming back finds it on disk.
Passed pieces leave first, in the order they were passed; only then the least recently used of the others,
the prefetched pieces no reader has reached yet. With plain LRU the tier had to hold two readahead windows
(the one just read and the one ahead) for a `cat` not to lose prefetched blocks before reading them (a tier of
one window plus two parts let a 256 MiB `cat` make 53 requests where 40 suffice); passed-first, one window
plus what is in flight does, which is most of a sequential read's memory.
"""

from __future__ import annotations

from collections import OrderedDict

from rangefs.cache import PieceKey


class MemoryTier:
    """Attributes and their invariants:

    - ``_ahead``: pieces no read has reached the end of, least recently used first;
    - ``_passed``: pieces a read reached the end of, in the order that happened (a key is in one of the two);
    - ``bytes``: the sum of the lengths of the pieces in both."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._ahead: OrderedDict[PieceKey, memoryview] = OrderedDict()
        self._passed: OrderedDict[PieceKey, memoryview] = OrderedDict()
        self.bytes = 0

    def __repr__(self) -> str:
        return (
            f"<MemoryTier {len(self._ahead)} ahead, {len(self._passed)} passed, {self.bytes}/{self.limit_bytes} bytes>"
        )

    def read(self, key: PieceKey, offset: int, length: int) -> bytes | None:
        data = self._ahead.get(key)
        if data is None:
            data = self._passed.get(key)
            if data is None:
                return None
        if offset + length >= len(data):
            self._ahead.pop(key, None)
            self._passed[key] = data
            self._passed.move_to_end(key)
        elif key in self._ahead:
            self._ahead.move_to_end(key)
        return bytes(data[offset : offset + length])

    def contains(self, key: PieceKey) -> bool:
        return key in self._ahead or key in self._passed

    def put(self, key: PieceKey, data: memoryview) -> None:
        self._forget(key)
        self._ahead[key] = data
        self.bytes += len(data)
        while self.bytes > self.limit_bytes and len(self._ahead) + len(self._passed) > 1:
            _, oldest = (self._passed or self._ahead).popitem(last=False)
            self.bytes -= len(oldest)

    def drop_object(self, object_id: str) -> int:
        """Forget every piece of one object version (it changed at the origin); returns how many."""
        keys = [key for key in (*self._ahead, *self._passed) if key.object_id == object_id]
        for key in keys:
            self._forget(key)
        return len(keys)

    def _forget(self, key: PieceKey) -> None:
        previous = self._ahead.pop(key, None)
        if previous is None:
            previous = self._passed.pop(key, None)
        if previous is not None:
            self.bytes -= len(previous)
