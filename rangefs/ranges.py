"""Pure byte-range maths: blocks, spans and runs.

Offsets are byte positions, ``stop`` values are exclusive. A file of ``file_size`` bytes is cut into blocks of
``block_size`` bytes; only the last block may be shorter. No I/O and no trio here, so everything is
property-tested.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The bytes ``start`` up to, not including, ``stop``."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"invalid byte range {self.start}-{self.stop}")

    @property
    def length(self) -> int:
        return self.stop - self.start

    def header_value(self) -> str:
        """The value of an HTTP ``Range`` header asking for exactly these bytes (non-empty ranges only)."""
        return f"bytes={self.start}-{self.stop - 1}"


def block_count(file_size: int, block_size: int) -> int:
    return -(-file_size // block_size)


def block_range(index: int, block_size: int, file_size: int) -> ByteRange:
    """The bytes of block ``index`` (the last block is cut at end of file)."""
    start = index * block_size
    if not 0 <= start < file_size:
        raise ValueError(f"block {index} is outside a file of {file_size} bytes")
    return ByteRange(start, min(start + block_size, file_size))


def clamp_read(offset: int, size: int, file_size: int) -> ByteRange:
    """What a read of ``size`` bytes at ``offset`` can return: empty at or past EOF, short near it."""
    start = min(max(offset, 0), file_size)
    return ByteRange(start, min(start + max(size, 0), file_size))


def blocks_covering(wanted: ByteRange, block_size: int) -> range:
    """Indices of the blocks that hold any byte of ``wanted`` (empty for an empty range)."""
    if wanted.length == 0:
        return range(0)
    return range(wanted.start // block_size, (wanted.stop - 1) // block_size + 1)


def runs(indices: Iterable[int], max_run: int) -> Iterator[range]:
    """Group sorted, distinct block indices into runs of consecutive indices, each at most ``max_run`` long."""
    if max_run < 1:
        raise ValueError("max_run must be at least 1")
    first = last = None
    for index in indices:
        if first is not None and last is not None and index == last + 1 and index - first < max_run:
            last = index
            continue
        if first is not None and last is not None:
            yield range(first, last + 1)
        first = last = index
    if first is not None and last is not None:
        yield range(first, last + 1)


def run_bytes(run: range, block_size: int, file_size: int) -> ByteRange:
    """The bytes of a run of consecutive blocks."""
    return ByteRange(run.start * block_size, min(run.stop * block_size, file_size))


def merged(ranges: Iterable[ByteRange]) -> list[ByteRange]:
    """The union of the ranges as sorted, disjoint, non-adjacent, non-empty ranges."""
    union: list[ByteRange] = []
    for piece in sorted(ranges, key=lambda r: r.start):
        if piece.length == 0:
            continue
        if union and piece.start <= union[-1].stop:
            if piece.stop > union[-1].stop:
                union[-1] = ByteRange(union[-1].start, piece.stop)
            continue
        union.append(piece)
    return union


def covered_bytes(ranges: Iterable[ByteRange]) -> int:
    """How many distinct bytes the ranges cover together (overlaps counted once)."""
    return sum(piece.length for piece in merged(ranges))


def missing(wanted: ByteRange, present: Iterable[ByteRange]) -> list[ByteRange]:
    """The bytes of ``wanted`` that none of ``present`` covers, as sorted disjoint ranges."""
    holes, position = [], wanted.start
    for piece in merged(present):
        if piece.stop <= position:
            continue
        if piece.start >= wanted.stop:
            break
        if piece.start > position:
            holes.append(ByteRange(position, piece.start))
        position = max(position, piece.stop)
    if position < wanted.stop:
        holes.append(ByteRange(position, wanted.stop))
    return holes
