"""A download to a file over several connections at once, each streaming its segment straight into place.

What the partial file already holds is skipped, what the disk cache holds (a mount or the API read it) is
copied from there, and the rest is cut into segments (segments.py), one per connection. A connection asks for
its segment in requests sized to its rate: the first is one readahead part (8 MiB), each next about a sixth
of ``--timeout`` at the rate the last one came (a request must end within the timeout, retries included)
and at most 64 MiB, so a fast link makes a few requests per connection. A request that fails after it got
bytes (the rate fell, it outlasted the timeout) keeps them, and the rest is asked for again. Bytes go to the
file as they arrive (a pwrite into the page cache), not through the block store: no part waits in memory for
the ones before it, and the download, which is its own copy, does not also fill the cache. When a connection
is done and another still has far to go, it takes the second half of that one's segment; the owner stops
its request where the taken half begins (``FetchStopped``: its connection closes, its body unread).

Every 64 MiB of the sink or every few seconds, the ranges written so far are made durable and recorded (in a
worker thread, while the connections go on); a failure, Ctrl-C or SIGTERM records them too, so a run that
stops resumes where every connection was.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import trio

from rangefs.download.output import Sink
from rangefs.download.segments import Segment, SegmentPlan, bridged
from rangefs.errors import DownloadError
from rangefs.library import AsyncRemoteFile
from rangefs.ranges import ByteRange, merged, missing
from rangefs.remote import FetchStopped

log = logging.getLogger(__name__)

# A request is sized to take about this share of the timeout at the rate the connection's last one came.
_TIMEOUT_SHARE = 1 / 6
# Halves shorter than this are not taken from a busy connection: a request costs a round trip, and the
# connection the owner loses costs a handshake and slow start when it is needed again.
_MIN_SPLIT = 2 * 1024 * 1024
# ...and never larger than this, so a rate that falls sharply rarely makes one outlast the timeout.
_LONGEST_REQUEST = 64 * 1024 * 1024
# Bytes copied from the disk cache per read.
_COPY_READ = 8 * 1024 * 1024
# Cached bytes between two missing ranges that are fetched again rather than copied, so that a cache holding
# scattered small pieces (SQLite pages, zip headers) does not cut the download into a request per gap.
_BRIDGE = 1024 * 1024
# Seconds between two checkpoints at most (besides one every _CHECKPOINT_BYTES of the sink): a download that
# is killed keeps what it had written a few seconds before, not only what the last 64 MiB mark held.
_CHECKPOINT_SECONDS = 5.0


class _RangesIgnored(Exception):
    """The server sent a whole file to a range request: nothing was written, the download goes in order."""


class SegmentedDownload:
    """One file's download into a random-access sink (a partial file) over ``connections`` connections."""

    def __init__(
        self,
        file: AsyncRemoteFile,
        sink: Sink,
        done: list[ByteRange],
        *,
        connections: int,
        first_request: int,
        timeout: float,
        progress: Callable[[int], None],
    ) -> None:
        self._file = file
        self._sink = sink
        self._whole = ByteRange(0, file.size)
        self._first_request = first_request
        self._request_seconds = timeout * _TIMEOUT_SHARE
        self._progress = progress
        # Short cached runs between missing ones are fetched again; what the partial file has, never.
        bridges = bridged(missing(self._whole, [*done, *file.cached_ranges()]), _BRIDGE)
        to_fetch = [piece for bridge in bridges for piece in missing(bridge, done)]
        self._copies = [
            Segment(piece.start, piece.stop, piece.start) for piece in missing(self._whole, [*done, *to_fetch])
        ]
        self._plan = SegmentPlan(to_fetch, connections, _MIN_SPLIT)
        self._connections = connections
        self._failure: OSError | DownloadError | None = None
        self._checkpointing = False
        self._checkpointed_at = trio.current_time()
        self._ranges_ignored = False
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"<SegmentedDownload {self._file.url} {self._plan!r}, {len(self._copies)} cached ranges>"

    def done(self) -> list[ByteRange]:
        """The bytes in the sink now (resumed, copied or fetched)."""
        rest = [ByteRange(copy.position, copy.stop) for copy in self._copies if not copy.finished]
        return missing(self._whole, merged([*self._plan.outstanding(), *rest]))

    async def run(self) -> bool:
        """Fetch and copy everything missing; the first failure (OSError, DownloadError) stops the rest.
        False when the server turned out to ignore Range: the file can only be read front to back."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._guarded, self._copy_cached)
            for _ in range(self._connections):
                nursery.start_soon(self._guarded, self._connection)
        self._nursery = None
        if self._failure is not None:
            raise self._failure
        return not self._ranges_ignored

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except (OSError, DownloadError, _RangesIgnored) as error:
            if isinstance(error, _RangesIgnored):
                self._ranges_ignored = True
            elif self._failure is None:
                self._failure = error
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()

    async def _copy_cached(self) -> None:
        for copy in self._copies:
            while not copy.finished:
                data = await self._file.read_at(copy.position, min(_COPY_READ, copy.remaining), readahead=False)
                if not data:
                    raise OSError(errno.EIO, f"{self._file.url}: the cache ended before byte {copy.position}")
                self._wrote(copy, data)

    async def _connection(self) -> None:
        request_size = self._first_request
        while (segment := self._plan.take()) is not None:
            while not segment.finished:
                wanted = ByteRange(segment.position, min(segment.stop, segment.position + request_size))
                began, before = trio.current_time(), segment.position
                try:
                    await self._fetch(segment, wanted)
                except OSError as error:
                    if segment.position == before:
                        raise  # it got nothing: the error is the answer (404, a host down, a changed file)
                    # It got bytes and then failed (the rate fell and the request outlasted --timeout, say):
                    # what arrived is kept, and the rest is asked for again, smaller.
                    log.info("%s: request %s stopped at %d (%s); going on from there", self._file.url,
                             wanted.header_value(), segment.position, error)  # fmt: skip
                    request_size = self._first_request
                    continue
                rate = (segment.position - before) / max(trio.current_time() - began, 1e-3)
                request_size = min(_LONGEST_REQUEST, max(self._first_request, int(rate * self._request_seconds)))

    async def _fetch(self, segment: Segment, wanted: ByteRange) -> None:
        def arrived(chunk: bytes) -> None:
            usable = min(len(chunk), segment.stop - segment.position)
            if usable > 0:
                self._wrote(segment, memoryview(chunk)[:usable])
            if segment.stop < wanted.stop and segment.position >= segment.stop:
                raise FetchStopped  # another connection took the rest of this request's range

        try:
            if not await self._file.fetch_direct(wanted, arrived):
                raise _RangesIgnored
        except FetchStopped:
            log.debug("%s: segment ends at %d, another connection took the rest", self._file.url, segment.stop)

    def _wrote(self, segment: Segment, data: bytes | memoryview) -> None:
        self._sink.write_at(segment.position, data)
        segment.position += len(data)
        self._progress(len(data))
        due = self._sink.checkpoint_due or trio.current_time() - self._checkpointed_at > _CHECKPOINT_SECONDS
        if due and not self._checkpointing and self._nursery is not None:
            self._checkpointing = True
            self._nursery.start_soon(self._guarded, self._checkpoint)

    async def _checkpoint(self) -> None:
        try:
            # What is done now was written already (pwrite returned), so the fsync that follows covers it.
            await trio.to_thread.run_sync(self._sink.checkpoint, self.done())
        finally:
            self._checkpointing = False
            self._checkpointed_at = trio.current_time()
