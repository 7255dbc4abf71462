"""CacheWriter: fetched pieces to the disk cache, off the event loop, with backpressure.

The fetch that brought a piece awaits its write (after waking its readers), so a prefetch part holds its share
of the mount's byte budget until its bytes are on disk: when the network is faster than the cache disk the
budget fills and readahead waits, instead of queueing write tasks that each hold their data (0.1 released the
budget on arrival, and memory grew without bound under a slow disk). Writes run in worker threads, at most
``concurrency`` at once: file writes overlap with the loop, and a slow disk is not made slower by a crowd.
"""

from __future__ import annotations

import logging

import trio

from rangefs.cache import BlockCache, PieceKey

log = logging.getLogger(__name__)


class CacheWriter:
    def __init__(self, cache: BlockCache, *, concurrency: int = 2) -> None:
        self.cache = cache
        self._limiter = trio.CapacityLimiter(concurrency)
        self.waiting_bytes = 0  # bytes whose write has not finished (queued or being written)

    def __repr__(self) -> str:
        return f"<CacheWriter {self.waiting_bytes} bytes waiting, {self._limiter.borrowed_tokens} writing>"

    async def write(self, pieces: list[tuple[PieceKey, memoryview]], describe: dict[str, object]) -> None:
        """Store pieces and account for them; a disk that refuses is logged by the cache, never raised."""
        if not pieces or not self.cache.accepts_writes():
            return
        size = sum(len(data) for _, data in pieces)
        self.waiting_bytes += size
        try:
            async with self._limiter:
                written = await trio.to_thread.run_sync(self.cache.store_files, pieces)
        except OSError as error:
            self.cache.write_failed(error)
            return
        except Exception:  # a bug here must cost the cache entry, not the fetch that waits for it
            log.exception("cache: unexpected error writing %d pieces of %s", len(pieces), describe.get("url"))
            return
        finally:
            self.waiting_bytes -= size
        self.cache.record(written, describe)
