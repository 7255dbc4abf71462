"""Which bytes each connection of a file download fetches: even segments first, then halves of the longest.

This is the downloader's split (aria2c's, HydraStream's), not the readahead's: a download to a file may write
anywhere, so each connection streams one long range straight to its place in the file instead of one 8 MiB part
after another through the block store, which cost a round trip per part and held every part in memory until
it was written in order. The missing bytes are cut into one segment per connection; a connection that finishes
while another still has far to go takes the second half of the segment with the most bytes left (its owner
stops where the taken half begins), so the connections finish together even when their rates differ.

Pure bookkeeping, no I/O: the transfer moves ``Segment.position`` as bytes are written, and asks
``outstanding()`` what is not written yet when it records its progress.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from rangefs.ranges import ByteRange


@dataclass(eq=False)
class Segment:
    """Bytes ``start`` to ``stop`` of the file for one connection; ``position`` is the next byte to write.
    ``stop`` moves down when another connection takes the segment's end."""

    start: int
    stop: int
    position: int

    @property
    def remaining(self) -> int:
        return self.stop - self.position

    @property
    def finished(self) -> bool:
        return self.position >= self.stop


class SegmentPlan:
    """Segments of the ``holes`` (the missing bytes) for ``workers`` connections. A segment is split only when
    both halves have at least ``min_split`` bytes: a new request costs a round trip, a new connection also
    its handshake and slow start, which a short half would not repay."""

    def __init__(self, holes: list[ByteRange], workers: int, min_split: int) -> None:
        if workers < 1 or min_split < 1:
            raise ValueError("workers and min_split must be at least 1")
        self._min_split = min_split
        self._waiting: deque[Segment] = deque(_even_segments(holes, workers, min_split))
        self._taken: list[Segment] = []

    def __repr__(self) -> str:
        return f"<SegmentPlan {len(self._waiting)} waiting, {len(self._taken)} taken>"

    def take(self) -> Segment | None:
        """The next segment for a connection that is free: a waiting one, else the second half of the taken
        segment with the most bytes left; None when nothing is left worth a connection of its own."""
        self._taken = [segment for segment in self._taken if not segment.finished]
        if self._waiting:
            segment = self._waiting.popleft()
        else:
            longest = max(self._taken, key=lambda taken: taken.remaining, default=None)
            if longest is None or longest.remaining < 2 * self._min_split:
                return None
            middle = longest.position + longest.remaining // 2
            segment = Segment(middle, longest.stop, middle)
            longest.stop = middle
        self._taken.append(segment)
        return segment

    def outstanding(self) -> list[ByteRange]:
        """The bytes not written yet: every waiting segment and the rest of every taken one."""
        rest = [ByteRange(segment.position, segment.stop) for segment in self._taken if not segment.finished]
        rest += [ByteRange(segment.start, segment.stop) for segment in self._waiting]
        return sorted(rest, key=lambda piece: piece.start)


def _even_segments(holes: list[ByteRange], workers: int, min_split: int) -> list[Segment]:
    """The holes cut into about ``workers`` segments of even length (none shorter than ``min_split`` unless
    its hole is), in file order."""
    total = sum(hole.length for hole in holes)
    target = max(min_split, -(-total // workers))
    segments = []
    for hole in holes:
        count = max(1, round(hole.length / target))
        for number in range(count):
            start = hole.start + hole.length * number // count
            stop = hole.start + hole.length * (number + 1) // count
            if stop > start:
                segments.append(Segment(start, stop, start))
    return segments


def bridged(holes: list[ByteRange], gap: int) -> list[ByteRange]:
    """The holes (sorted, disjoint), with every space shorter than ``gap`` between two of them filled in."""
    joined: list[ByteRange] = []
    for hole in holes:
        if joined and hole.start - joined[-1].stop < gap:
            joined[-1] = ByteRange(joined[-1].start, hole.stop)
        else:
            joined.append(hole)
    return joined
