"""WholeFileStream: the pieces waiting for one GET of a whole file, from a server that ignores Range.

Such a server can only send the file from its first byte, so each piece is completed as the stream passes
it. A piece the stream has already passed (a block evicted since, or never written because the disk was
full) needs a new stream: ``wants`` says whether this one will still pass a piece. Pure bookkeeping, fed
chunk by chunk: bytes are kept only from the start of the earliest waiting piece, so the buffer holds about
one piece, however long the file, and a server that sends more than the size it announced is an error.
"""

from __future__ import annotations

import heapq

from rangefs.cache import PieceKey


class StreamOverrun(Exception):
    """The server sent more bytes than the size the file was probed with."""


class WholeFileStream:
    def __init__(self, file_size: int) -> None:
        self.file_size = file_size
        self.position = 0  # bytes of the file received so far
        self._waiting: list[tuple[int, int, PieceKey]] = []  # heap by (start, stop)
        self._keys: set[PieceKey] = set()
        self._buffer = bytearray()
        self._buffer_start = 0  # file offset of the buffer's first byte

    def __repr__(self) -> str:
        return f"<WholeFileStream at {self.position}/{self.file_size}, {len(self._keys)} pieces waiting>"

    @property
    def waiting(self) -> frozenset[PieceKey]:
        return frozenset(self._keys)

    def wants(self, key: PieceKey) -> bool:
        """Whether this stream will still pass all of ``key`` (it has not started it yet)."""
        return key.start >= self.position and key.stop <= self.file_size

    def add(self, key: PieceKey) -> None:
        if not self.wants(key):
            raise ValueError(f"{key} is behind the stream at {self.position}")
        if key not in self._keys:
            self._keys.add(key)
            heapq.heappush(self._waiting, (key.start, key.stop, key))

    def feed(self, chunk: bytes) -> list[tuple[PieceKey, memoryview]]:
        """Take the next bytes of the file; returns the pieces they completed."""
        start, self.position = self.position, self.position + len(chunk)
        if self.position > self.file_size:
            raise StreamOverrun(f"the server sent more than the {self.file_size} bytes it announced")
        if not self._waiting:
            self._buffer_start = self.position
            return []
        first_wanted = self._waiting[0][0]
        if not self._buffer:
            self._buffer_start = max(start, first_wanted)
        skip = max(0, self._buffer_start - start)
        self._buffer += memoryview(chunk)[skip:]
        completed: list[tuple[PieceKey, memoryview]] = []
        while self._waiting and self._waiting[0][1] <= self.position:
            piece_start, _, key = heapq.heappop(self._waiting)
            self._keys.discard(key)
            lo = piece_start - self._buffer_start
            completed.append((key, memoryview(bytes(self._buffer[lo : lo + key.length]))))
        keep_from = self._waiting[0][0] if self._waiting else self.position
        if keep_from > self._buffer_start:
            del self._buffer[: min(keep_from, self.position) - self._buffer_start]
            self._buffer_start = min(keep_from, self.position)
        return completed
