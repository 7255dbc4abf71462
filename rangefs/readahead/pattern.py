"""AccessPattern: decide, from the reads of one open file, what to prefetch. Pure: no I/O, no trio, no clock.

The model is a small set of *streams* per open file. A stream is a run of reads that follow each other; it
remembers where it ends (the highest byte read), how many of its reads arrived in order, how much readahead
it has earned (its *window*) and how far it has already been prefetched.

- A read continues a stream when it starts near that stream's end: at most ``behind_tolerance`` before it
  (the kernel sends readahead requests concurrently, so they arrive slightly out of order) and at most one
  block after it. Once a stream is confirmed sequential, a jump of up to ``ahead_tolerance`` forward still
  continues it: the kernel may have several reads in flight and answer order is not request order.
- Any other read starts a new stream. A stream that is not confirmed earns no readahead, so a reader that
  jumps around (a zip listing, SQLite pages, a video seek) fetches only the blocks it reads.
- After ``confirm_reads`` in-order reads of at least ``confirm_bytes`` together, the stream keeps its window
  prefetched ahead of its end, as long as it reads at least half of the bytes it passes over. The window
  starts at one block and doubles with every further read of the stream, up to ``max_window``. (A player
  decoding one frame after a seek reads a few hundred KiB in order; SQLite walking a B-tree reads 4 KiB pages
  in increasing order with megabytes between them: neither is a stream worth reading ahead.)
- The window never exceeds what the stream consumes in ``rate_horizon`` seconds (at least one block): ``cat``
  reading hundreds of MiB/s reaches ``max_window`` at once, a video player reading 0.6 MiB/s keeps a few MiB
  ahead instead of 64 MiB that a seek would throw away. The rate is measured over the stream's life, and over
  no less than ``rate_floor`` seconds, so an opening burst counts as a fast reader only briefly. Callers pass
  the time (``now``); without it the window is not rate-limited. The window
  starts at one block and doubles each time a prefetch is issued, up to ``max_window``. Prefetches are whole
  multiples of ``request_size`` (while the window is smaller than that, whatever it allows), so a streaming
  reader causes a steady series of equal, large requests rather than a tail of small ones.
- At most ``max_streams`` streams are kept per file; the least recently used is dropped and reported, so the
  prefetcher can cancel what it was fetching for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1024 * 1024


@dataclass(frozen=True)
class ReadaheadConfig:
    """Knobs of the readahead policy; all sizes in bytes."""

    # The unit of fetching and caching; prefetch ranges are aligned to it.
    block_size: int = MiB
    # Largest readahead window of one stream. 64 MiB keeps 8 parts of 8 MiB in flight: enough to fill a
    # 1 Gbit/s link at 500 ms of latency, and a bounded waste when the reader stops.
    max_window: int = 64 * MiB
    # The kernel's concurrent readahead requests arrive out of order: a read this far behind a stream's end
    # (mountpoint-s3 found 1 MiB enough) still continues it instead of starting a new stream.
    behind_tolerance: int = MiB
    # ...and a confirmed stream tolerates a forward jump this large (several kernel reads in flight).
    ahead_tolerance: int = 16 * MiB
    # Prefetches come in multiples of this (one request each, fetched in parallel); see MountSettings.
    request_size: int = 8 * MiB
    # In-order reads before a stream earns readahead: one adjacent read could be chance, two rarely are.
    confirm_reads: int = 2
    # ...and bytes the stream must have covered: a block, so a short in-order burst stays unprefetched.
    confirm_bytes: int = MiB
    # Concurrent streams per open file: a video player reads video and audio at two offsets, some formats more.
    max_streams: int = 8
    # Seconds of the stream's own consumption the window may hold (see above).
    rate_horizon: float = 1.0
    # Shortest time over which that rate is measured. Shorter ramps a cold stream faster: the window must grow
    # with its own throughput, so a 1 s floor cost a 40 ms-RTT link 30 % of its first seconds (measured).
    rate_floor: float = 0.25

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.max_window < 0 or self.max_streams < 1 or self.confirm_reads < 0:
            raise ValueError("invalid readahead configuration")
        if self.request_size < self.block_size or self.request_size % self.block_size:
            raise ValueError("invalid readahead configuration")


@dataclass(frozen=True, slots=True)
class Prefetch:
    """Fetch bytes ``start`` to ``stop`` (block-aligned, except ``stop`` at end of file) for stream ``stream_id``."""

    stream_id: int
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class Decision:
    prefetch: Prefetch | None = None
    dropped_streams: tuple[int, ...] = ()
    # The read is not (yet) part of a sequential stream: as far as anyone knows, a random access.
    random_access: bool = False
    # The stream the read belongs to (None: past end of file), for ``AccessPattern.waited``.
    stream_id: int | None = None


@dataclass(slots=True)
class _Stream:
    stream_id: int
    start: int
    end: int
    prefetched_until: int
    last_used: int
    started_at: float | None
    read_bytes: int = 0
    in_order_reads: int = 0
    window: int = 0
    waited: float = 0.0  # seconds its reads waited for fetches (``AccessPattern.waited``)


@dataclass
class PatternStatistics:
    reads: int = 0
    streams_created: int = 0
    streams_dropped: int = 0
    prefetches: int = 0
    prefetched_bytes: int = 0
    window_growths: int = 0


@dataclass
class AccessPattern:
    """The readahead policy for one open file of ``file_size`` bytes."""

    config: ReadaheadConfig
    file_size: int
    stats: PatternStatistics = field(default_factory=PatternStatistics)
    _streams: list[_Stream] = field(default_factory=list)
    _clock: int = 0

    def __repr__(self) -> str:
        streams = ", ".join(f"#{s.stream_id}@{s.end}+{s.window}" for s in self._streams)
        return f"<AccessPattern size={self.file_size} streams=[{streams}]>"

    @property
    def stream_ids(self) -> list[int]:
        return [stream.stream_id for stream in self._streams]

    def on_read(self, offset: int, size: int, now: float | None = None) -> Decision:
        """Record a read of ``size`` bytes at ``offset`` at time ``now`` (seconds, any monotonic clock); say
        what to prefetch and which streams were dropped."""
        end = min(offset + size, self.file_size)
        if size <= 0 or offset >= self.file_size:
            return Decision()
        self._clock += 1
        self.stats.reads += 1
        stream = self._stream_continued_by(offset)
        if stream is None:
            dropped = self._start_stream(offset, end, now)
            return Decision(dropped_streams=dropped, random_access=True, stream_id=self._streams[-1].stream_id)
        stream.last_used = self._clock
        if offset <= stream.end + self.config.block_size:
            stream.in_order_reads += 1
        stream.end = max(stream.end, end)
        stream.read_bytes += end - offset
        stream.prefetched_until = max(stream.prefetched_until, self._block_ceiling(end))
        return Decision(
            prefetch=self._prefetch_for(stream, now),
            random_access=not self._is_sequential(stream),
            stream_id=stream.stream_id,
        )

    def waited(self, stream_id: int | None, seconds: float) -> None:
        """The read of a stream waited ``seconds`` for its bytes: time the reader did not spend reading."""
        for stream in self._streams:
            if stream.stream_id == stream_id:
                stream.waited += max(0.0, seconds)

    def _stream_continued_by(self, offset: int) -> _Stream | None:
        best: _Stream | None = None
        for stream in self._streams:
            confirmed = stream.in_order_reads >= self.config.confirm_reads
            ahead = self.config.ahead_tolerance if confirmed else self.config.block_size
            if stream.end - self.config.behind_tolerance <= offset <= stream.end + ahead and (
                best is None or abs(offset - stream.end) < abs(offset - best.end)
            ):
                best = stream
        return best

    def _start_stream(self, offset: int, end: int, now: float | None) -> tuple[int, ...]:
        self.stats.streams_created += 1
        # The demand read fetches whole blocks: count them as already fetched for this stream.
        stream = _Stream(
            self.stats.streams_created, offset, end, self._block_ceiling(end), self._clock, now, end - offset
        )
        self._streams.append(stream)
        dropped: list[int] = []
        while len(self._streams) > self.config.max_streams:
            oldest = min(self._streams, key=lambda candidate: candidate.last_used)
            self._streams.remove(oldest)
            dropped.append(oldest.stream_id)
        self.stats.streams_dropped += len(dropped)
        return tuple(dropped)

    def _is_sequential(self, stream: _Stream) -> bool:
        """Confirmed: enough in-order reads, enough bytes, and dense (not a sparse walk through the file)."""
        return (
            stream.in_order_reads >= self.config.confirm_reads
            and stream.read_bytes >= self.config.confirm_bytes
            and 2 * stream.read_bytes >= stream.end - stream.start
        )

    def _window_cap(self, stream: _Stream, now: float | None) -> int:
        if now is None or stream.started_at is None:
            return self.config.max_window
        # The reader's own pace: time it spent waiting for our fetches is not time it took to read. Counted
        # in, a cold `cat` looks as slow as the network lets it be, and its window stays what the last round
        # trips delivered, not what it could take; a slow consumer reading what is already here (a video
        # player) waits for nothing and keeps its small window. Only past two requests' worth: a player that
        # decodes one frame after a seek also waits for its first few MiB, and then stops.
        waited = stream.waited if stream.read_bytes >= 2 * self.config.request_size else 0.0
        elapsed = max(now - stream.started_at - waited, self.config.rate_floor)
        per_horizon = stream.read_bytes * self.config.rate_horizon / elapsed
        return max(self.config.block_size, min(self.config.max_window, int(per_horizon)))

    def _prefetch_for(self, stream: _Stream, now: float | None) -> Prefetch | None:
        if not self._is_sequential(stream) or self.config.max_window == 0:
            return None
        if stream.window == 0:
            stream.window = min(self.config.block_size, self.config.max_window)
        elif stream.window < self.config.max_window:
            # Doubled by every confirmed read, not every prefetch: on a 40 ms link the window is at full size
            # after a few reads instead of after several round trips; the rate cap restrains slow readers.
            stream.window = min(stream.window * 2, self.config.max_window)
            self.stats.window_growths += 1
        start = stream.prefetched_until
        window = min(stream.window, self._window_cap(stream, now))
        target = min(self._block_ceiling(stream.end + window), self.file_size)
        gap = target - start
        if gap <= 0:
            return None
        unit = self.config.request_size
        if gap >= unit and target < self.file_size:
            stop = start + gap // unit * unit
        elif gap >= min(unit, window // 2) or target == self.file_size:
            stop = target
        else:
            return None  # wait until a whole request's worth is missing
        stream.prefetched_until = stop
        self.stats.prefetches += 1
        self.stats.prefetched_bytes += stop - start
        return Prefetch(stream.stream_id, start, stop)

    def _block_ceiling(self, offset: int) -> int:
        block = self.config.block_size
        return min(-(-offset // block) * block, self.file_size)
