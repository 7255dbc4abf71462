"""CacheWriter: fetched pieces to the disk cache, off the event loop, with backpressure.

At most ``max_waiting_bytes`` wait for the disk (queued or being written), so memory stays bounded when the
network is faster than the cache disk (0.1 started a write task per fetch, each holding its data, and
released the prefetch budget on arrival: memory grew without bound under a slow disk). A prefetch waits for
room, holding its share of the mount's prefetch budget until its bytes are on disk, so readahead slows to
what the disk takes. A demand fetch never makes its reader wait for the disk: when there is no room its
pieces are not cached (they stay in the memory tier for a while), and ``statistics().pieces_skipped``
counts them. Writes run in worker threads, at most ``concurrency`` at once.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

import trio

from rangefs.budget import ByteBudget
from rangefs.cache import BlockCache, PieceKey

Pieces = list[tuple[PieceKey, memoryview]]

log = logging.getLogger(__name__)


@dataclass
class WriterStatistics:
    waiting_bytes: int = 0
    pieces_skipped: int = 0  # demand pieces not cached because the disk was behind


class CacheWriter:
    def __init__(self, cache: BlockCache, *, max_waiting_bytes: int = 32 * 1024 * 1024, concurrency: int = 2) -> None:
        self.cache = cache
        self._waiting = ByteBudget(max_waiting_bytes)
        self._limiter = trio.CapacityLimiter(concurrency)
        self.stats = WriterStatistics()

    def __repr__(self) -> str:
        return f"<CacheWriter {self._waiting}, {self._limiter.borrowed_tokens} writing>"

    def statistics(self) -> WriterStatistics:
        self.stats.waiting_bytes = self._waiting.in_use
        return self.stats

    async def write(
        self, pieces: list[tuple[PieceKey, memoryview]], describe: dict[str, object], *, wait: bool
    ) -> None:
        """Store pieces and account for them; ``wait`` for room (a prefetch) or skip them when there is none
        (a demand fetch). A disk that refuses is logged by the cache, never raised."""
        if not pieces or not self.cache.accepts_writes():
            await trio.lowlevel.checkpoint()
            return
        size = sum(len(data) for _, data in pieces)
        if not wait and not self._waiting.fits(size):
            self.stats.pieces_skipped += len(pieces)
            await trio.lowlevel.checkpoint()
            return
        async with self._waiting.hold(size):
            try:
                async with self._limiter:
                    written = await trio.to_thread.run_sync(self.cache.store_files, pieces)
            except OSError as error:
                self.cache.write_failed(error)
                return
            except Exception:  # a bug here must cost the cache entry, not the fetch that waits for it
                log.exception("cache: unexpected error writing %d pieces of %s", len(pieces), describe.get("url"))
                return
        try:
            self.cache.record(written, describe)
        except sqlite3.Error as error:  # record contains its own; a wrapper's or a future one's must not escape
            self.cache.write_failed(error)
        except Exception:
            log.exception("cache: unexpected error recording %d pieces of %s", len(pieces), describe.get("url"))
