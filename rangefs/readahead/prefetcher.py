"""Prefetcher: carries out AccessPattern decisions within the mount's bounds. It decides nothing itself.

A decision's byte range is cut into parts of ``part_size`` bytes, each fetched by its own task, so one stream
is read over several connections at once (a download accelerator inside the filesystem). Each part holds
its bytes in the shared ByteBudget while in flight, so memory stays bounded however many files are open;
connection limits per host are applied below, where requests are made, and demand reads have their own.
Parts belong to (handle, stream): when the pattern drops a stream or the file is closed, its parts are
cancelled, and a reader waiting on a cancelled block simply fetches it itself.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import trio

from rangefs.blocks import BlockStore, RangeSource, Run
from rangefs.blocks.store import INDEX_PIECE, SMALL_READ_PIECE
from rangefs.budget import ByteBudget
from rangefs.errors import RangefsError
from rangefs.ranges import ByteRange, blocks_covering
from rangefs.readahead.formats import Planner
from rangefs.readahead.pattern import Prefetch

log = logging.getLogger(__name__)

StreamKey = tuple[int, int]  # (open handle, stream id)
# Prefetches of format indexes belong to no open handle: closing the file does not cancel them.
_INDEX_KEY: StreamKey = (0, 0)
# Index reads and prefetches up to this size fetch only the INDEX_PIECE pieces they cover (one request each).
_SMALL_INDEX = 256 * 1024
# A read that starts a zip member fetches the member (up to this much) in its own request: unzip -p reads a
# member's local header (8 KiB), then its data (32 KiB, 64 KiB, ...), each a round trip of its own before.
_MEMBER_FETCH_MAX = 4 * 1024 * 1024
# ... and this much past its end: the kernel's readahead rounds the tool's last read of it up (unzip -p of a
# 60 KB member at 40 ms RTT: its last read, 64 KiB, ended 46 KiB past the member, which cost a 1 MiB block).
_MEMBER_SLACK = 128 * 1024
# Files whose member extents are kept (the most recently planned); a 3,000-member zip's take ~200 KB.
_EXTENT_FILES = 16


@dataclass
class PrefetcherStatistics:
    parts_started: int = 0
    parts_cancelled: int = 0
    blocks_skipped: int = 0  # already cached or in flight when the part was planned
    index_plans: int = 0  # format-aware first opens (zip, MP4, Parquet)
    member_fetches: int = 0  # reads that started a zip member and fetched it whole


class Prefetcher:
    def __init__(self, store: BlockStore, *, max_inflight_bytes: int, part_size: int, nursery: trio.Nursery) -> None:
        self.store = store
        self.budget = ByteBudget(max_inflight_bytes)
        self._blocks_per_part = max(1, part_size // store.block_size)
        self._nursery = nursery
        self._scopes: defaultdict[StreamKey, set[trio.CancelScope]] = defaultdict(set)
        # Per object id: the starts of its members' extents, and the extents, in file order (formats.py).
        self._extents: OrderedDict[str, tuple[list[int], list[ByteRange]]] = OrderedDict()
        self._member_fetched: dict[str, ByteRange] = {}  # per object id in _extents: the last member fetch
        # Per object id: blocks of which the plans and member fetches here fetched pieces, not whole blocks.
        self._pieced: OrderedDict[str, set[int]] = OrderedDict()
        # Object ids whose format plan is running, with the last read that may have started a zip member.
        self._planning: dict[str, ByteRange | None] = {}
        self.stats = PrefetcherStatistics()

    def __repr__(self) -> str:
        return f"<Prefetcher {sum(map(len, self._scopes.values()))} parts pending, {self.budget}>"

    def statistics(self) -> PrefetcherStatistics:
        return self.stats

    def submit(self, source: RangeSource, handle: int, prefetch: Prefetch) -> None:
        """Start fetching the decision's blocks that are neither cached nor in flight (never waits)."""
        block_size = self.store.block_size
        wanted = range(prefetch.start // block_size, -(-prefetch.stop // block_size))
        pieced = self._pieced.get(source.object_id, set()).intersection(wanted)
        for index in sorted(pieced):
            # Blocks this prefetcher fetched pieces of (a zip's directory, a member): what is missing of them,
            # as pieces too; their whole-block keys are not at hand, and a reservation would fetch it all again.
            block = self.store.block_key(source, index)
            self.store.start_fetches(source, ByteRange(block.start, block.stop), piece_size=INDEX_PIECE, demand=False)
        # Reserved now, not when each part starts: a reader arriving meanwhile joins instead of fetching.
        reserved = self.store.reserve(source, [index for index in wanted if index not in pieced])
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
            # Registered before the open returns, so the tool's own first read joins this fetch: exactly its
            # pages (a zip's end records), or whole blocks where the tool reads around it (an MP4's start).
            piece_size = SMALL_READ_PIECE if planner.first_read_exact else 0
            self._fetch_pieces(source, first, piece_size)
        self._planning.setdefault(source.object_id, None)
        self._nursery.start_soon(self._run_plan, source, planner)

    async def _run_plan(self, source: RangeSource, planner: Planner) -> None:
        try:
            await self._carry_out(source, planner)
        finally:
            self._planning.pop(source.object_id, None)

    async def _carry_out(self, source: RangeSource, planner: Planner) -> None:
        try:
            first = True
            read: list[ByteRange] = []
            while (need := planner.next_range()) is not None:
                # Box headers are a few bytes: fetch their chunk, not a whole block.
                small = need.length <= _SMALL_INDEX
                piece_size = INDEX_PIECE if small else 0
                if not first:
                    # Registered before yielding: the tool read the bytes that led here too (a zip's end
                    # records, then its directory) and asks for these next; it must join, not fetch again.
                    self._register(source, need, piece_size)
                first = False
                # A cached read returns without a checkpoint: a plan that kept asking would hold the event loop.
                await trio.lowlevel.checkpoint()
                planner.feed(need.start, await self.store.read(source, need.start, need.length, piece_size=piece_size))
                read.append(need)
        except RangefsError as error:
            log.debug("format-aware prefetch of %s stopped: %s", source.describe().get("url"), error)
            return
        except Exception:
            # A bug (most likely a planner's): contained here, so the prefetch is lost but the mount stays up.
            log.warning("format-aware prefetch of %s failed", source.describe().get("url"), exc_info=True)
            return
        if extents := planner.extents():
            self._extents[source.object_id] = ([extent.start for extent in extents], extents)
            while len(self._extents) > _EXTENT_FILES:
                self._member_fetched.pop(self._extents.popitem(last=False)[0], None)
            # A tool reads the directory as it arrives and may seek to a member before this task has parsed it.
            if (early := self._planning.pop(source.object_id, None)) is not None:
                self.fetch_member(source, early, started=True)
        for wanted in planner.wanted():
            if _covered(wanted, read):  # the plan read it (a zip's directory): at hand, in its own pieces
                continue
            log.debug("prefetching the index of %s: %s", source.describe().get("url"), wanted)
            if wanted.length <= _SMALL_INDEX:
                self._nursery.start_soon(self._fetch_small_index, source, wanted)
            else:
                self.submit(source, _INDEX_KEY[0], Prefetch(_INDEX_KEY[1], wanted.start, wanted.stop))

    def _register(self, source: RangeSource, need: ByteRange, piece_size: int) -> None:
        """Start fetching ``need`` unless a block of it is at hand (then the plan's read joins or hits it)."""
        blocks = blocks_covering(need, self.store.block_size)
        if not any(self.store.is_at_hand(self.store.block_key(source, index)) for index in blocks):
            self._fetch_pieces(source, need, piece_size)

    def _fetch_pieces(self, source: RangeSource, wanted: ByteRange, piece_size: int) -> None:
        """A demand fetch of ``wanted`` as pieces of ``piece_size`` (whole blocks if 0), remembered by block."""
        if piece_size:
            self._note_pieced(source, wanted)
        self.store.start_fetches(source, wanted, piece_size=piece_size, demand=True)

    def _note_pieced(self, source: RangeSource, wanted: ByteRange) -> None:
        pieced = self._pieced.setdefault(source.object_id, set())
        pieced.update(blocks_covering(wanted, self.store.block_size))
        self._pieced.move_to_end(source.object_id)
        while len(self._pieced) > _EXTENT_FILES:
            self._pieced.popitem(last=False)

    async def _fetch_small_index(self, source: RangeSource, wanted: ByteRange) -> None:
        """A small index (a typical moov box) as the chunks it occupies rather than whole blocks."""
        self._note_pieced(source, wanted)
        try:
            await self.store.read(source, wanted.start, wanted.length, piece_size=INDEX_PIECE)
        except RangefsError as error:
            log.debug("prefetch of the index of %s failed: %s", source.describe().get("url"), error)
        except Exception:  # a service task: a bug costs this prefetch, not the mount
            log.warning("prefetch of the index of %s failed", source.describe().get("url"), exc_info=True)

    def fetch_member(self, source: RangeSource, wanted: ByteRange, *, started: bool = False) -> None:
        """If the read ``wanted`` holds the start of a member (its local header), fetch the member whole now, in
        the request this read needs anyway: the tool reads the rest of it next (``started``: the read has
        fetched its own bytes already; the rest follows them). Never waits."""
        found = self._extents.get(source.object_id)
        if found is None:
            if source.object_id in self._planning:  # the directory is still being parsed: look once it is
                self._planning[source.object_id] = wanted
            return
        starts, extents = found
        # A later read of the member fetched last (its data, reaching into the next member) does not count.
        last = self._member_fetched.get(source.object_id)
        if last is not None and last.start <= wanted.start < last.stop:
            return
        number = bisect.bisect_left(starts, wanted.start)
        if number == len(starts) or starts[number] >= wanted.stop:
            return
        extent = extents[number]
        stop = min(extent.stop + _MEMBER_SLACK, wanted.start + _MEMBER_FETCH_MAX, source.size)
        if stop > wanted.stop:
            self.stats.member_fetches += 1
            self._member_fetched[source.object_id] = ByteRange(wanted.start, stop)
            self._fetch_pieces(source, ByteRange(wanted.stop if started else wanted.start, stop), INDEX_PIECE)

    def fetch_rest_of_block(self, source: RangeSource, offset: int) -> None:
        """Fetch from ``offset`` (its 64 KiB piece) to the end of its block as index pieces, unless the block is at
        hand: the reader's bytes come first. Never waits."""
        block = self.store.block_key(source, offset // self.store.block_size)
        start = block.start + (offset - block.start) // INDEX_PIECE * INDEX_PIECE
        if start > block.start:  # from the block's start, a whole block is the same request
            self._register(source, ByteRange(start, block.stop), INDEX_PIECE)

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
                await self.store.wait_for_disk()
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


def _covered(wanted: ByteRange, ranges: list[ByteRange]) -> bool:
    """Whether ``ranges`` together cover every byte of ``wanted``."""
    position = wanted.start
    for covering in sorted(ranges, key=lambda r: r.start):
        if covering.start > position:
            break
        position = max(position, covering.stop)
    return position >= wanted.stop
