"""BlockStore: every byte comes from the disk cache or from exactly one fetch per block.

A read is cut into blocks. Each block is served from the cache, or joins the fetch already in flight for it,
or is fetched; adjacent missing blocks of one read share a single range request.
A source whose server ignores ranges (``streams_whole``) is instead streamed once, in order, from its first
missing block's start of file: every block not yet cached is registered as in flight at once, and each is
completed as the stream passes it, so readers anywhere in the file wait for the one stream. Fetches run in the service
nursery, not in the reader's task, so a reader that gives up (Ctrl-C, a cancelled FUSE request) does not abort
a fetch that other readers wait for. Fetched blocks go to the cache before their waiters wake.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import trio

from rangefs.cache import BlockCache
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

    async def fetch(self, wanted: ByteRange, *, demand: bool) -> bytearray: ...

    def stream(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


class FetchAborted(RangefsError):
    """The fetch a reader waited for was cancelled (the mount is shutting down)."""


class _PendingBlock:
    """A block being fetched; waiters wake when ``done`` is set, with either ``data`` or ``error``."""

    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: memoryview | None = None
        self.error: BaseException | None = None


@dataclass
class StoreStatistics:
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

    def __init__(self, cache: BlockCache, *, block_size: int, max_request_size: int, nursery: trio.Nursery) -> None:
        self.cache = cache
        self.block_size = block_size
        self._blocks_per_request = max(1, max_request_size // block_size)
        self._nursery = nursery
        self._in_flight: dict[tuple[str, int], _PendingBlock] = {}
        self._streaming: set[str] = set()  # object ids being streamed whole
        self.stats = StoreStatistics()

    def __repr__(self) -> str:
        return f"<BlockStore {len(self._in_flight)} blocks in flight {self.stats}>"

    def statistics(self) -> StoreStatistics:
        return self.stats

    async def read(self, source: RangeSource, offset: int, size: int) -> bytes:
        """The bytes of ``source`` at ``offset``: ``size`` of them, fewer only at end of file."""
        for attempt in range(_READ_ATTEMPTS):
            try:
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
        pieces: list[bytes | _PendingBlock | None] = []  # None: missing, to be fetched
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

    def start_fetches(self, source: RangeSource, indices: list[int], *, demand: bool) -> dict[int, _PendingBlock]:
        """Start fetching the given blocks (sorted) in the service nursery, joining those already in flight.

        Synchronous: never waits. Returns the pending block for every index."""
        pending_by_index: dict[int, _PendingBlock] = {}
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

    async def fetch_blocks(self, source: RangeSource, indices: list[int]) -> None:
        """Fetch the given blocks (sorted) into the cache in this task, skipping cached and in-flight ones.

        For prefetching: cancelling the caller cancels the fetch, and readers that joined it fetch again."""
        if source.streams_whole:
            return  # the stream brings every block anyway
        for planned in runs(indices, self._blocks_per_request):
            # Checked again per run: while an earlier run was fetched, others may have taken some blocks.
            fresh = [i for i in planned if not self.is_cached_or_in_flight(source, i)]
            for run in runs(fresh, self._blocks_per_request):
                pending = {index: self._register(source, index) for index in run}
                await self._fetch_run(source, run, pending, False)

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

    async def _run_stream(self, source: RangeSource, pending: dict[int, _PendingBlock]) -> None:
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

    def _register(self, source: RangeSource, index: int) -> _PendingBlock:
        pending = _PendingBlock()
        self._in_flight[(source.object_id, index)] = pending
        return pending

    def is_cached_or_in_flight(self, source: RangeSource, index: int) -> bool:
        return (source.object_id, index) in self._in_flight or self.cache.contains(source.object_id, index)

    async def _wait(self, piece: bytes | _PendingBlock, lo: int, hi: int) -> bytes:
        if isinstance(piece, bytes):
            return piece
        await piece.done.wait()
        if piece.error is not None:
            raise piece.error
        assert piece.data is not None
        return bytes(piece.data[lo:hi])

    async def _fetch_run(
        self, source: RangeSource, run: range, pending: dict[int, _PendingBlock], demand: bool
    ) -> None:
        wanted = run_bytes(run, self.block_size, source.size)
        log.debug("fetch blocks %d-%d (%s)", run.start, run.stop - 1, "demand" if demand else "prefetch")
        self.stats.requests += 1
        self.stats.bytes_in_flight += wanted.length
        data: memoryview | None = None
        error: BaseException = FetchAborted(f"fetch of {wanted.header_value()} was cancelled")
        try:
            data = memoryview(await source.fetch(wanted, demand=demand))
            self.stats.bytes_fetched += wanted.length
        except RangefsError as failure:
            error = failure
            self.stats.fetch_errors += 1
        except Exception as failure:  # a bug must fail the readers, not the whole mount
            log.exception("unexpected error fetching %s of %s", wanted.header_value(), source.describe())
            error = failure
            self.stats.fetch_errors += 1
        finally:
            self.stats.bytes_in_flight -= wanted.length
            self._complete(source, run, pending, data, error)

    def _complete(
        self,
        source: RangeSource,
        run: range,
        pending: dict[int, _PendingBlock],
        data: memoryview | None,
        error: BaseException,
    ) -> None:
        """Cache the blocks, then wake their waiters; blocks leave the in-flight map only once cached."""
        for index in run:
            block = pending[index]
            if data is not None:
                start = (index - run.start) * self.block_size
                block_length = block_range(index, self.block_size, source.size).length
                block.data = data[start : start + block_length]
                self.cache.write(source.object_id, index, block.data, source.describe())
                self.stats.blocks_fetched += 1
            else:
                block.error = error
            del self._in_flight[(source.object_id, index)]
            block.done.set()
