"""Prefetcher: carries out AccessPattern decisions within the mount's bounds. It decides nothing itself.

A decision's byte range is cut into parts of ``part_size`` bytes, each fetched by its own task, so one stream
is read over several connections at once (a download accelerator inside the filesystem). Each part holds
its bytes in the shared ByteBudget while in flight, so memory stays bounded however many files are open;
connection limits per host are applied below, where requests are made, and demand reads have their own.
Parts belong to (handle, stream): when the pattern drops a stream or the file is closed, its parts are
cancelled, and a reader waiting on a cancelled block simply fetches it itself.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import trio

from rangefs.blocks import BlockStore, RangeSource, Run
from rangefs.blocks.store import INDEX_PIECE
from rangefs.budget import ByteBudget
from rangefs.errors import RangefsError
from rangefs.ranges import ByteRange
from rangefs.readahead.formats import Planner
from rangefs.readahead.pattern import Prefetch

log = logging.getLogger(__name__)

StreamKey = tuple[int, int]  # (open handle, stream id)
# Prefetches of format indexes belong to no open handle: closing the file does not cancel them.
_INDEX_KEY: StreamKey = (0, 0)
# Index reads and prefetches up to this size fetch only the INDEX_PIECE pieces they cover (one request each).
_SMALL_INDEX = 256 * 1024


@dataclass
class PrefetcherStatistics:
    parts_started: int = 0
    parts_cancelled: int = 0
    blocks_skipped: int = 0  # already cached or in flight when the part was planned
    index_plans: int = 0  # format-aware first opens (zip, MP4, Parquet)


class Prefetcher:
    def __init__(self, store: BlockStore, *, max_inflight_bytes: int, part_size: int, nursery: trio.Nursery) -> None:
        self.store = store
        self.budget = ByteBudget(max_inflight_bytes)
        self._blocks_per_part = max(1, part_size // store.block_size)
        self._nursery = nursery
        self._scopes: defaultdict[StreamKey, set[trio.CancelScope]] = defaultdict(set)
        self.stats = PrefetcherStatistics()

    def __repr__(self) -> str:
        return f"<Prefetcher {sum(map(len, self._scopes.values()))} parts pending, {self.budget}>"

    def statistics(self) -> PrefetcherStatistics:
        return self.stats

    def submit(self, source: RangeSource, handle: int, prefetch: Prefetch) -> None:
        """Start fetching the decision's blocks that are neither cached nor in flight (never waits)."""
        block_size = self.store.block_size
        wanted = range(prefetch.start // block_size, -(-prefetch.stop // block_size))
        # Reserved now, not when each part starts: a reader arriving meanwhile joins instead of fetching.
        reserved = self.store.reserve(source, wanted)
        self.stats.blocks_skipped += len(wanted) - len(reserved)
        for first in range(0, len(reserved), self._blocks_per_part):
            part = reserved[first : first + self._blocks_per_part]
            try:
                self._nursery.start_soon(self._fetch_part, source, (handle, prefetch.stream_id), part)
            except BaseException:  # the mount is stopping: nobody will fetch the rest
                self.store.abandon(reserved[first:])
                raise

    def plan_index(self, source: RangeSource, planner: Planner) -> None:
        """Fetch the index structures a format planner finds (zip directory, MP4 moov), in the background."""
        self.stats.index_plans += 1
        first = planner.next_range()
        if first is not None and first.length:
            # Registered before the open returns, so the tool's own first read joins this fetch. Whole blocks:
            # the tool's first reads land around this range too (unzip's 8 KiB reads before a zip's last 64 KiB).
            self.store.start_fetches(source, first, demand=True)
        self._nursery.start_soon(self._run_plan, source, planner)

    async def _run_plan(self, source: RangeSource, planner: Planner) -> None:
        try:
            while (need := planner.next_range()) is not None:
                # A cached read returns without a checkpoint: a plan that kept asking would hold the event loop.
                await trio.lowlevel.checkpoint()
                # Box headers are a few bytes: fetch their chunk, not a whole block.
                small = need.length <= _SMALL_INDEX
                piece_size = INDEX_PIECE if small else 0
                planner.feed(need.start, await self.store.read(source, need.start, need.length, piece_size=piece_size))
        except RangefsError as error:
            log.debug("format-aware prefetch of %s stopped: %s", source.describe().get("url"), error)
            return
        except Exception:
            # A bug (most likely a planner's): contained here, so the prefetch is lost but the mount stays up.
            log.warning("format-aware prefetch of %s failed", source.describe().get("url"), exc_info=True)
            return
        for wanted in planner.wanted():
            log.debug("prefetching the index of %s: %s", source.describe().get("url"), wanted)
            if wanted.length <= _SMALL_INDEX:
                self._nursery.start_soon(self._fetch_small_index, source, wanted)
            else:
                self.submit(source, _INDEX_KEY[0], Prefetch(_INDEX_KEY[1], wanted.start, wanted.stop))

    async def _fetch_small_index(self, source: RangeSource, wanted: ByteRange) -> None:
        """A small index (a typical moov box) as the chunks it occupies rather than whole blocks."""
        try:
            await self.store.read(source, wanted.start, wanted.length, piece_size=INDEX_PIECE)
        except RangefsError as error:
            log.debug("prefetch of the index of %s failed: %s", source.describe().get("url"), error)
        except Exception:  # a service task: a bug costs this prefetch, not the mount
            log.warning("prefetch of the index of %s failed", source.describe().get("url"), exc_info=True)

    def cancel(self, handle: int, stream_ids: tuple[int, ...] | None = None) -> None:
        """Cancel the parts of the given streams of ``handle`` (all its streams when None)."""
        keys = [key for key in self._scopes if key[0] == handle and (stream_ids is None or key[1] in stream_ids)]
        for key in keys:
            for scope in self._scopes.pop(key):
                scope.cancel()
                self.stats.parts_cancelled += 1

    def cancel_all(self) -> None:
        """Cancel every part in flight (the mount or session is closing)."""
        for handle in {key[0] for key in self._scopes}:
            self.cancel(handle)

    async def _fetch_part(self, source: RangeSource, key: StreamKey, part: Run) -> None:
        """Fetch one part; its budget is held until its blocks are written to the cache (backpressure)."""
        size = sum(piece.length for piece, _ in part)
        with trio.CancelScope() as scope:
            self._scopes[key].add(scope)
            try:
                async with self.budget.hold(size):
                    self.stats.parts_started += 1
                    await self.store.fetch_reserved(source, part)
            finally:
                self.store.abandon(part)
                scopes = self._scopes.get(key)
                if scopes is not None:
                    scopes.discard(scope)
                    if not scopes:
                        del self._scopes[key]
