"""BlockStore: every byte comes from memory, the disk cache or exactly one fetch per block.

A read is cut into blocks. Each block is served from memory or the cache, or joins the fetch already in flight
for it, or is fetched; adjacent missing blocks of one read share a single range request. Fetches run in the
service nursery, not in the reader's task, so a reader that gives up (Ctrl-C, a cancelled FUSE request) does
not abort a fetch that other readers wait for.

Fetched blocks stay in a small in-memory LRU (``hot_bytes``): a sequential reader usually reads a block soon
after readahead brought it, and taking it from memory saves reopening, re-reading and re-checksumming the file
just written (measured: 300-500 of 512 blocks of a cold `cat` were read back that way). The cache files are
written by a worker thread, off the event loop; until a block is on disk the LRU serves it.

A small random read (a SQLite page, a zip signature check) asks for ``sparse``: only the 64 KiB chunks it
touches are fetched, not the whole block, and cached as pieces of their
own. At 20 MiB/s per connection that is 3 ms of transfer instead of 50 ms for a 1 MiB block.

A source whose server ignores ranges (``streams_whole``) is instead streamed once, in order, from the start of
the file: every block not yet cached is registered as in flight at once, and each is completed as the stream
passes it, so readers anywhere in the file wait for the one stream.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import trio

from rangefs.cache import CHUNK_SIZE, BlockCache, chunk_key
from rangefs.errors import InvalidResponse, RangefsError
from rangefs.ranges import ByteRange, block_count, block_range, blocks_covering, clamp_read, run_bytes, runs

log = logging.getLogger(__name__)

# A read retries when a fetch it joined was cancelled; more than a couple in a row means the mount is stopping.
_READ_ATTEMPTS = 3


class RangeSource(Protocol):
    """One immutable version of a remote file, able to fetch validated byte ranges of itself."""

    @property
    def object_id(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def streams_whole(self) -> bool:
        """True when ranges cannot be fetched and the file has to be read as one stream."""

    def describe(self) -> dict[str, object]: ...

    async def fetch(self, wanted: ByteRange, *, demand: bool) -> bytes: ...

    def stream(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


class FetchAborted(RangefsError):
    """The fetch a reader waited for was cancelled (the mount is shutting down)."""


class PendingBlock:
    """A block being fetched; waiters wake when ``done`` is set, with either ``data`` or ``error``."""

    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: memoryview | None = None
        self.error: BaseException | None = None


class _Outcome:
    """What became of one fetch: its bytes, or the error its waiting readers get."""

    __slots__ = ("data", "error")

    def __init__(self, wanted: ByteRange) -> None:
        self.data: memoryview | None = None
        self.error: BaseException = FetchAborted(f"fetch of {wanted.header_value()} was cancelled")


@dataclass
class StoreStatistics:
    blocks_from_memory: int = 0
    blocks_from_cache: int = 0
    blocks_joined: int = 0
    blocks_fetched: int = 0
    requests: int = 0
    bytes_fetched: int = 0
    bytes_served: int = 0
    bytes_in_flight: int = 0
    fetch_errors: int = 0


class BlockStore:
    """Cache-or-fetch for blocks of ``block_size`` bytes; single flight per block."""

    def __init__(
        self,
        cache: BlockCache,
        *,
        block_size: int,
        max_request_size: int,
        nursery: trio.Nursery,
        hot_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.cache = cache
        self.block_size = block_size
        self._blocks_per_request = max(1, max_request_size // block_size)
        self._nursery = nursery
        self._in_flight: dict[tuple[str, int], PendingBlock] = {}
        self._hot: OrderedDict[tuple[str, int], memoryview] = OrderedDict()
        self._hot_bytes = 0
        self._hot_limit = hot_bytes
        self._streaming: set[str] = set()  # object ids being streamed whole
        self.stats = StoreStatistics()

    def __repr__(self) -> str:
        return f"<BlockStore {len(self._in_flight)} blocks in flight {self.stats}>"

    def statistics(self) -> StoreStatistics:
        return self.stats

    async def read(self, source: RangeSource, offset: int, size: int, *, sparse: bool = False) -> bytes:
        """The bytes of ``source`` at ``offset``: ``size`` of them, fewer only at end of file.

        ``sparse``: a random read; fetch only the chunks it touches of blocks that are not cached."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                if sparse and not source.streams_whole:
                    return await self._read_sparse(source, offset, size)
                return await self._read_once(source, offset, size)
            except FetchAborted:
                # A prefetch this read had joined was cancelled (its stream was abandoned): fetch it ourselves.
                if attempt == _READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _read_once(self, source: RangeSource, offset: int, size: int) -> bytes:
        wanted = clamp_read(offset, size, source.size)
        if wanted.length == 0:
            await trio.lowlevel.checkpoint()
            return b""
        pieces: list[bytes | PendingBlock | None] = []  # None: missing, to be fetched
        slices: list[tuple[int, int]] = []
        missing: list[int] = []
        # No await from here to start_fetches: the in-flight map and the cache are consulted atomically.
        for index in blocks_covering(wanted, self.block_size):
            block = block_range(index, self.block_size, source.size)
            lo, hi = max(wanted.start, block.start) - block.start, min(wanted.stop, block.stop) - block.start
            slices.append((lo, hi))
            pending = self._in_flight.get((source.object_id, index))
            if pending is not None:
                self.stats.blocks_joined += 1
                pieces.append(pending)
                continue
            hot = self._hot.get((source.object_id, index))
            if hot is not None:
                self._hot.move_to_end((source.object_id, index))
                self.stats.blocks_from_memory += 1
                pieces.append(bytes(hot[lo:hi]))
                continue
            data = self.cache.read(source.object_id, index, block.length, lo, hi - lo)
            if data is not None:
                self.stats.blocks_from_cache += 1
                pieces.append(data)
            else:
                missing.append(index)
                pieces.append(None)
        if missing and source.streams_whole:
            self._start_stream(source)  # registers every missing block, these included
        started = iter(self.start_fetches(source, missing, demand=True).values())
        ready = [next(started) if piece is None else piece for piece in pieces]
        result = [await self._wait(piece, lo, hi) for piece, (lo, hi) in zip(ready, slices, strict=True)]
        self.stats.bytes_served += wanted.length
        return b"".join(result)

    async def _read_sparse(self, source: RangeSource, offset: int, size: int) -> bytes:
        """A small random read: whole blocks when they are at hand, else just the chunks it needs."""
        wanted = clamp_read(offset, size, source.size)
        covering = blocks_covering(wanted, self.block_size)
        if wanted.length == 0 or any(self.is_cached_or_in_flight(source, index) for index in covering):
            return await self._read_once(source, offset, size)
        parts: list[tuple[bytes | PendingBlock, int, int]] = []  # in file order: data, or a chunk to wait for
        # No await until every missing chunk is registered (as in _read_once).
        for index in covering:
            block = block_range(index, self.block_size, source.size)
            missing: dict[int, PendingBlock] = {}
            for chunk in range((max(wanted.start, block.start) - block.start) // CHUNK_SIZE,
                               (min(wanted.stop, block.stop) - block.start - 1) // CHUNK_SIZE + 1):  # fmt: skip
                start = block.start + chunk * CHUNK_SIZE
                length = min(CHUNK_SIZE, block.stop - start)
                lo, hi = max(wanted.start, start) - start, min(wanted.stop, start + length) - start
                key = chunk_key(index, chunk)
                pending = self._in_flight.get((source.object_id, key))
                hot = self._hot.get((source.object_id, key))
                if pending is None and hot is not None:
                    parts.append((bytes(hot[lo:hi]), lo, hi))
                    continue
                data = None if pending is not None else self.cache.read(source.object_id, key, length, lo, hi - lo)
                if data is not None:
                    parts.append((data, lo, hi))
                    continue
                if pending is None:
                    pending = missing[chunk] = self._register(source, key)
                parts.append((pending, lo, hi))
            for run in runs(sorted(missing), len(missing) or 1):
                self._nursery.start_soon(self._fetch_chunks, source, index, run, {c: missing[c] for c in run})
        result = [await self._wait(piece, lo, hi) for piece, lo, hi in parts]
        self.stats.bytes_served += wanted.length
        return b"".join(result)

    async def _fetch_chunks(
        self, source: RangeSource, index: int, chunks: range, pending: dict[int, PendingBlock]
    ) -> None:
        """Fetch some chunks of one block in one request; they are cached as pieces of their own."""
        block = block_range(index, self.block_size, source.size)
        wanted = ByteRange(
            block.start + chunks.start * CHUNK_SIZE, min(block.start + chunks.stop * CHUNK_SIZE, block.stop)
        )
        outcome = _Outcome(wanted)
        try:
            await self._fetch_range(source, wanted, outcome, demand=True)
        finally:
            data, error = outcome.data, outcome.error
            fetched: list[tuple[int, memoryview]] = []
            for chunk in chunks:
                key, piece = chunk_key(index, chunk), pending[chunk]
                if data is not None:
                    start = (chunk - chunks.start) * CHUNK_SIZE
                    piece.data = data[start : start + CHUNK_SIZE]
                    self._remember((source.object_id, key), piece.data)
                    fetched.append((key, piece.data))
                else:
                    piece.error = error
                del self._in_flight[(source.object_id, key)]
                piece.done.set()
            if fetched and self.cache.accepts_writes():
                self._nursery.start_soon(self._persist, source, fetched)

    def start_fetches(self, source: RangeSource, indices: list[int], *, demand: bool) -> dict[int, PendingBlock]:
        """Start fetching the given blocks (sorted) in the service nursery, joining those already in flight.

        Synchronous: never waits. Returns the pending block for every index."""
        pending_by_index: dict[int, PendingBlock] = {}
        new: list[int] = []
        for index in indices:
            existing = self._in_flight.get((source.object_id, index))
            if existing is not None:
                pending_by_index[index] = existing
            else:
                pending_by_index[index] = self._register(source, index)
                new.append(index)
        for run in runs(new, self._blocks_per_request):
            self._nursery.start_soon(self._fetch_run, source, run, {i: pending_by_index[i] for i in run}, demand)
        return pending_by_index

    def reserve(self, source: RangeSource, indices: list[int]) -> dict[int, PendingBlock]:
        """Mark blocks (sorted) that are neither cached nor in flight as in flight, for a prefetch to fetch
        later with ``fetch_reserved``; readers that want them meanwhile join instead of fetching them again.
        Synchronous: never waits."""
        if source.streams_whole:
            return {}  # the stream brings every block anyway
        return {
            index: self._register(source, index) for index in indices if not self.is_cached_or_in_flight(source, index)
        }

    async def fetch_reserved(self, source: RangeSource, pending: dict[int, PendingBlock]) -> None:
        """Fetch reserved blocks in this task (cancelling it cancels the fetch); see ``abandon``."""
        for run in runs(sorted(pending), self._blocks_per_request):
            await self._fetch_run(source, run, pending, False)

    def abandon(self, source: RangeSource, pending: dict[int, PendingBlock]) -> None:
        """Complete reserved blocks that were not fetched: readers that joined them fetch them themselves."""
        for index, block in pending.items():
            if not block.done.is_set():
                self._complete(source, range(index, index + 1), pending, None, FetchAborted("prefetch cancelled"))

    def _start_stream(self, source: RangeSource) -> None:
        if source.object_id in self._streaming:
            return
        pending = {
            index: self._register(source, index)
            for index in range(block_count(source.size, self.block_size))
            if not self.is_cached_or_in_flight(source, index)
        }
        self._streaming.add(source.object_id)
        self._nursery.start_soon(self._run_stream, source, pending)

    async def _run_stream(self, source: RangeSource, pending: dict[int, PendingBlock]) -> None:
        """Read the whole file once, completing each registered block as the stream passes it."""
        total = block_count(source.size, self.block_size)
        buffer = bytearray()
        index = 0
        error: BaseException = FetchAborted("stream of the whole file was cancelled")
        self.stats.requests += 1
        try:
            async with source.stream() as chunks:
                async for chunk in chunks:
                    buffer += chunk
                    self.stats.bytes_fetched += len(chunk)
                    while index < total and len(buffer) >= block_range(index, self.block_size, source.size).length:
                        length = block_range(index, self.block_size, source.size).length
                        if index in pending:
                            self._complete(
                                source, range(index, index + 1), pending, memoryview(bytes(buffer[:length])), error
                            )
                            del pending[index]
                        del buffer[:length]
                        index += 1
            if index < total or buffer:
                url = str(source.describe().get("url", "?"))
                raise InvalidResponse(
                    url, f"stream of the whole file ended at block {index} of {total}", transient=True
                )
        except RangefsError as failure:
            error = failure
            self.stats.fetch_errors += 1
        except Exception as failure:
            log.exception("unexpected error streaming %s", source.describe())
            error = failure
        finally:
            self._streaming.discard(source.object_id)
            for left in sorted(pending):
                self._complete(source, range(left, left + 1), pending, None, error)

    def _register(self, source: RangeSource, index: int) -> PendingBlock:
        pending = PendingBlock()
        self._in_flight[(source.object_id, index)] = pending
        return pending

    def is_cached_or_in_flight(self, source: RangeSource, index: int) -> bool:
        key = (source.object_id, index)
        return key in self._in_flight or key in self._hot or self.cache.contains(source.object_id, index)

    async def _wait(self, piece: bytes | PendingBlock, lo: int, hi: int) -> bytes:
        if isinstance(piece, bytes):
            return piece
        await piece.done.wait()
        if piece.error is not None:
            raise piece.error
        assert piece.data is not None
        return bytes(piece.data[lo:hi])

    async def _fetch_run(self, source: RangeSource, run: range, pending: dict[int, PendingBlock], demand: bool) -> None:
        wanted = run_bytes(run, self.block_size, source.size)
        log.debug("fetch blocks %d-%d (%s)", run.start, run.stop - 1, "demand" if demand else "prefetch")
        outcome = _Outcome(wanted)
        try:
            await self._fetch_range(source, wanted, outcome, demand=demand)
        finally:
            self._complete(source, run, pending, outcome.data, outcome.error)

    async def _fetch_range(self, source: RangeSource, wanted: ByteRange, outcome: _Outcome, *, demand: bool) -> None:
        """One request, its statistics, and its result or error in ``outcome`` (errors are not raised: the
        caller hands them to the waiting readers; a cancellation leaves the outcome's FetchAborted)."""
        self.stats.requests += 1
        self.stats.bytes_in_flight += wanted.length
        try:
            outcome.data = memoryview(await source.fetch(wanted, demand=demand))
            self.stats.bytes_fetched += wanted.length
        except RangefsError as failure:
            outcome.error = failure
            self.stats.fetch_errors += 1
        except Exception as failure:  # a bug must fail the readers, not the whole mount
            log.exception("unexpected error fetching %s of %s", wanted.header_value(), source.describe())
            outcome.error = failure
            self.stats.fetch_errors += 1
        finally:
            self.stats.bytes_in_flight -= wanted.length

    def _complete(
        self,
        source: RangeSource,
        run: range,
        pending: dict[int, PendingBlock],
        data: memoryview | None,
        error: BaseException,
    ) -> None:
        """Wake the blocks' waiters; fetched blocks go to memory now and to the cache files soon after.

        A block leaves the in-flight map only once it is in the memory LRU, so no reader misses it between."""
        fetched: list[tuple[int, memoryview]] = []
        for index in run:
            block = pending[index]
            if data is not None:
                start = (index - run.start) * self.block_size
                block_length = block_range(index, self.block_size, source.size).length
                block.data = data[start : start + block_length]
                self._remember((source.object_id, index), block.data)
                fetched.append((index, block.data))
                self.stats.blocks_fetched += 1
            else:
                block.error = error
            del self._in_flight[(source.object_id, index)]
            block.done.set()
        if fetched and self.cache.accepts_writes():
            self._nursery.start_soon(self._persist, source, fetched)

    def _remember(self, key: tuple[str, int], data: memoryview) -> None:
        previous = self._hot.pop(key, None)
        if previous is not None:
            self._hot_bytes -= len(previous)
        self._hot[key] = data
        self._hot_bytes += len(data)
        while self._hot_bytes > self._hot_limit and len(self._hot) > 1:
            _, oldest = self._hot.popitem(last=False)
            self._hot_bytes -= len(oldest)

    async def _persist(self, source: RangeSource, blocks: list[tuple[int, memoryview]]) -> None:
        """Write blocks to the cache files in a worker thread, then account for them here."""
        try:
            written = await trio.to_thread.run_sync(self.cache.store_files, source.object_id, blocks)
        except OSError as error:
            self.cache.write_failed(error)
            return
        self.cache.record(source.object_id, written, source.describe())
