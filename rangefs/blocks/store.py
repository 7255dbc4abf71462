"""BlockStore: every byte comes from memory, the disk cache or exactly one fetch per piece.

A read is cut into blocks of ``block_size`` bytes. Each is served from the memory tier or the disk cache, or
joins the fetch in flight for it (flight.py), or is fetched; adjacent missing pieces of one read share a
single range request of at most ``max_request_size`` bytes. Fetches run in the service nursery, not in the
reader's task, so a reader that gives up (Ctrl-C, a cancelled FUSE request) does not abort a fetch that other
readers wait for. A fetch wakes its readers first, then awaits its cache write (writer.py: backpressure).
Other processes on the cache directory see the fetch: a run claims its pieces first and waits for those
another process is fetching instead of repeating them, taking over any whose fetch dies (shared.py).

A small random read (a SQLite page, a zip signature check) asks for ``piece_size``: of blocks that are not at
hand it fetches only the pieces of that size it touches, cached as pieces of their own. The engine asks for
4 KiB pages (``SMALL_READ_PIECE``): a 4 KiB read then costs one round trip, like a bare range request, where
0.1's 64 KiB chunk cost about 1.5 at 40 ms (slow start carries ~14 KiB in the first round trip, and a pacing
sender such as BBR spreads even that); format-aware index reads ask for 64 KiB pieces (fewer files, one
request either way).

A source whose server ignores ranges (``streams_whole``, an explicit state of the source) is read by streams
of the whole file (stream.py): a miss registers every block of the file that is not at hand (the stream
carries them anyway), and the stream completes each as it passes; a piece behind every running stream (evicted
since, or never written to a full disk) starts a new one. A range fetch that finds out the server ignores
ranges hands its pieces to such a stream instead of failing its readers.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

from rangefs.blocks.assembler import RunAssembler
from rangefs.blocks.flight import Entry, InFlight, Pending
from rangefs.blocks.memory import MemoryTier
from rangefs.blocks.shared import Answer, ClaimLease, SharedFlight
from rangefs.blocks.stream import StreamOverrun, WholeFileStream
from rangefs.blocks.writer import CacheWriter
from rangefs.cache import BlockCache, PieceKey, PieceState
from rangefs.counters import ReadTally
from rangefs.errors import FetchAborted, InvalidResponse, RangefsError, RangesUnsupported, RemoteError
from rangefs.ranges import ByteRange, block_count, block_range, blocks_covering, clamp_read

log = logging.getLogger(__name__)

# A read retries when a fetch it joined was aborted; more than a couple in a row means the mount is stopping.
_READ_ATTEMPTS = 3
# Claims of one piece a fetch run waits out (owners that die or stall one after another) before it fetches the
# piece without a claim.
_TAKEOVERS = 3

Run = list[Entry]  # registered pieces, with their Pendings
Part = bytes | tuple[Pending, int, int]  # bytes at hand, or bytes lo to hi of a piece being fetched
# Piece size of small random reads: the page size, so what is fetched is what was asked for, rounded to pages
# (measured at 40 ms RTT, 4 KiB preads: 64.5 ms per read with 64 KiB chunks, 54.6 ms with 12 KiB pieces;
# a bare 4 KiB range request takes 42.5 ms).
SMALL_READ_PIECE = 4 * 1024
# Piece size of format-aware index reads (prefetcher.py): one request either way, fewer files than pages.
INDEX_PIECE = 64 * 1024
# The piece sizes in use besides blocks: a small read joins pieces of any of them that hold its bytes.
PIECE_GRIDS = (INDEX_PIECE, SMALL_READ_PIECE)
# Bytes of fetched pieces not yet through their cache write above which prefetch parts wait to start
# (``wait_for_disk``). Each part holds the mount's prefetch budget (256 MiB) until its pieces are on disk, but
# the pieces wait in memory meanwhile: when the cache writes fall behind the network (a cold `dd` at 40 ms RTT on
# two cores), a budget's worth piled up and the daemon's peak RSS reached 330-377 MiB. Parts in flight (a
# window) come on top; the read is then paced by the disk a little earlier, which the budget did anyway.
MAX_UNWRITTEN_BYTES = 64 * 1024 * 1024
# How many pieces asked to be read ahead from disk are remembered, not to ask again as a window moves on.
_ADVISED_REMEMBERED = 4096
# Owner of reserved pieces until a fetch takes them (the Pending objects tell reservations apart).
_RESERVED = object()
_UNREGISTERED = Pending(owner=None)


def _within(piece: PieceKey, start: int, stop: int) -> tuple[int, int]:
    """The bytes ``start`` to ``stop`` of the file, as offsets inside ``piece`` (clipped to it)."""
    return max(start, piece.start) - piece.start, min(stop, piece.stop) - piece.start


@asynccontextmanager
async def _closing(chunks: AsyncIterator[bytes]) -> AsyncIterator[None]:
    """Close an async generator we stop reading early (trio warns about, and leaks, unclosed ones)."""
    try:
        yield
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()


class RangeSource(Protocol):
    """One immutable version of a remote file, able to fetch validated byte ranges of itself."""

    @property
    def object_id(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def streams_whole(self) -> bool:
        """True once ranges cannot be fetched and the file has to be read as one stream."""

    def ranges_unsupported(self) -> None:
        """A fetch found that the server ignores ranges: from now on ``streams_whole``."""

    def describe(self) -> dict[str, object]: ...

    async def fetch_into(self, wanted: ByteRange, sink: Callable[[bytes], None], *, demand: bool) -> None:
        """Pass exactly the ``wanted`` bytes to ``sink``, in order, as they arrive; or raise (what ``sink`` got
        is then a correct prefix)."""

    def stream(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


@dataclass
class StoreStatistics(ReadTally):
    """The store's totals (bytes served and hit: ReadTally's), format-aware index reads included."""

    blocks_from_memory: int = 0
    blocks_from_cache: int = 0
    blocks_joined: int = 0
    blocks_fetched: int = 0
    requests: int = 0
    bytes_fetched: int = 0
    bytes_in_flight: int = 0
    bytes_waiting_for_disk: int = 0
    pieces_not_cached: int = 0  # demand pieces the disk was too far behind to take
    fetch_errors: int = 0
    blocks_from_others: int = 0  # pieces another process on the cache dir fetched while this one waited
    pieces_taken_over: int = 0  # pieces whose other fetcher died, stalled or released them unwritten


class BlockStore:
    """Cache-or-fetch for blocks of ``block_size`` bytes; single flight per piece.

    Attributes and their invariants:
    - ``unwritten_bytes``: the bytes of fetched pieces handed to a cache write that has not ended yet;
      ``_disk_caught_up`` is set whenever that is at most ``max_unwritten_bytes``;
    - ``in_flight``: a piece is registered iff one task (a fetch run, a stream, a reservation's owner) will
      complete or fail it;
    - ``memory``: pieces of versions still current (``drop_object`` removes a changed version's);
    - ``_streams``: per object id, the whole-file streams running for it.
    """

    def __init__(
        self,
        cache: BlockCache,
        *,
        block_size: int,
        max_request_size: int,
        nursery: trio.Nursery,
        hot_bytes: int = 64 * 1024 * 1024,
        max_unwritten_bytes: int = MAX_UNWRITTEN_BYTES,
    ) -> None:
        self.cache = cache
        self.block_size = block_size
        self.max_request_size = max(max_request_size, block_size)
        self._nursery = nursery
        # Pieces the kernel was lately asked to read ahead from disk (``_read_ahead_on_disk``), oldest first.
        self._advised: OrderedDict[PieceKey, None] = OrderedDict()
        self._advising = trio.CapacityLimiter(1)
        self.in_flight = InFlight()
        self.memory = MemoryTier(hot_bytes)
        self.writer = CacheWriter(cache)
        self._streams: dict[str, list[WholeFileStream]] = {}
        self.shared = SharedFlight(cache, nursery=nursery)
        self._busy = 0  # fetch runs and streams under way, their cache writes included
        self.unwritten_bytes = 0
        self.max_unwritten_bytes = max_unwritten_bytes
        self._disk_caught_up = trio.Event()
        self._disk_caught_up.set()
        self._idle = trio.Event()
        self._idle.set()
        self.stats = StoreStatistics()

    def __repr__(self) -> str:
        return f"<BlockStore {self.in_flight} {self.memory} {self.writer}>"

    def statistics(self) -> StoreStatistics:
        writer = self.writer.statistics()
        self.stats.bytes_waiting_for_disk, self.stats.pieces_not_cached = writer.waiting_bytes, writer.pieces_skipped
        return self.stats

    # Keys ------------------------------------------------------------------------------------------------

    def block_key(self, source: RangeSource, index: int) -> PieceKey:
        block = block_range(index, self.block_size, source.size)
        return PieceKey(source.object_id, block.start, block.length)

    @staticmethod
    def _small_keys(block: PieceKey, lo: int, hi: int, piece_size: int) -> list[PieceKey]:
        """The pieces of ``piece_size`` of ``block`` that hold its bytes ``lo`` to ``hi``."""
        starts = range(block.start + lo // piece_size * piece_size, block.start + hi, piece_size)
        return [PieceKey(block.object_id, start, min(piece_size, block.stop - start)) for start in starts]

    # Reading ---------------------------------------------------------------------------------------------

    async def read(
        self, source: RangeSource, offset: int, size: int, *, piece_size: int = 0, tallies: Sequence[ReadTally] = ()
    ) -> bytes:
        """The bytes of ``source`` at ``offset``: ``size`` of them, fewer only at end of file.

        ``piece_size``: a small random read; of blocks that are not at hand fetch only the pieces of this size
        it touches (0: whole blocks). The bytes served, and those of them at hand, are counted in the store's
        statistics and in each of ``tallies``."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                return await self._read_once(source, offset, size, piece_size=piece_size, tallies=tallies)
            except FetchAborted:
                # A prefetch this read had joined was cancelled (its stream was abandoned): fetch it ourselves.
                if attempt == _READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _read_once(
        self, source: RangeSource, offset: int, size: int, *, piece_size: int, tallies: Sequence[ReadTally]
    ) -> bytes:
        wanted = clamp_read(offset, size, source.size)
        parts: list[Part] = []
        missing: Run = []
        owner = object()  # this read owns what it registers until _start hands it on
        # No await from here to _start: the tiers and the in-flight map are consulted and changed atomically.
        try:
            for index in blocks_covering(wanted, self.block_size):
                block = self.block_key(source, index)
                lo, hi = max(wanted.start, block.start) - block.start, min(wanted.stop, block.stop) - block.start
                found = self._lookup(block, lo, hi)
                if found is not None:
                    parts.append(found)
                    continue
                # Pieces of another size may hold these bytes already (a format-aware index prefetch is cut
                # in 64 KiB pieces, a small read in 4 KiB ones): join those rather than fetch again.
                grids = () if source.streams_whole else sorted({*PIECE_GRIDS, piece_size} - {0}, reverse=True)
                held = next((h for g in grids if (h := self._lookup_grid(block, lo, hi, g)) is not None), None)
                if held is not None:
                    parts.extend(held)
                elif not source.streams_whole and (grid := piece_size or self._index_grid_in_use(block)):
                    for chunk in self._small_keys(block, lo, hi, grid):
                        c_lo, c_hi = _within(chunk, block.start + lo, block.start + hi)
                        piece = self._lookup(chunk, c_lo, c_hi)
                        if piece is None:
                            # Pieces of another size may hold this one's bytes (a zip's last pages, fetched
                            # before its directory's 64 KiB pieces): join those, fetch only what none holds.
                            sub = chunk.start - block.start + c_lo, chunk.start - block.start + c_hi
                            held = self._lookup_other_grids(block, *sub, grid)
                            if held is not None:
                                parts.extend(held)
                                continue
                            pending = self.in_flight.register(chunk, owner)
                            missing.append((chunk, pending))
                            piece = (pending, c_lo, c_hi)
                        parts.append(piece)
                else:
                    pending = self.in_flight.register(block, owner)
                    missing.append((block, pending))
                    parts.append((pending, lo, hi))
        except BaseException as error:
            self.in_flight.fail(missing, error, owner)
            raise
        self._start(source, missing, owner, demand=True)
        hit = sum(len(part) for part in parts if isinstance(part, bytes))
        if all(isinstance(part, bytes) for part in parts):
            await trio.lowlevel.checkpoint()  # a run of hits must still let the loop breathe (and be cancelled)
        result = [part if isinstance(part, bytes) else await part[0].wait(part[1], part[2]) for part in parts]
        for tally in (self.stats, *tallies):
            tally.bytes_served += wanted.length
            tally.bytes_hit += hit
        return b"".join(result)

    def _held_in_other_sizes(self, block: PieceKey, key: PieceKey, size: int) -> bool:
        """Whether pieces of one size other than ``size`` at hand hold all of ``key``'s bytes."""
        lo, hi = key.start - block.start, key.stop - block.start
        others = (other for other in PIECE_GRIDS if other != size)
        return any(all(map(self.is_at_hand, self._small_keys(block, lo, hi, other))) for other in others)

    def _lookup_other_grids(self, block: PieceKey, lo: int, hi: int, grid: int) -> list[Part] | None:
        """Bytes ``lo`` to ``hi`` of ``block`` from pieces of one size other than ``grid``, if some size holds them."""
        others = (other for other in PIECE_GRIDS if other != grid)
        return next((held for g in others if (held := self._lookup_grid(block, lo, hi, g)) is not None), None)

    def _lookup_grid(
        self, block: PieceKey, lo: int, hi: int, grid: int
    ) -> list[bytes | tuple[Pending, int, int]] | None:
        """Bytes ``lo`` to ``hi`` of ``block`` from pieces of size ``grid`` if every one of them is at hand."""
        found: list[bytes | tuple[Pending, int, int]] = []
        for key in self._small_keys(block, lo, hi, grid):
            if not self.is_at_hand(key):
                return None
            piece = self._lookup(key, *_within(key, block.start + lo, block.start + hi))
            if piece is None:  # on disk but unreadable (corrupt, dropped): fetch at the reader's own size
                return None
            found.append(piece)
        return found

    def _index_grid_in_use(self, block: PieceKey) -> int:
        """INDEX_PIECE if some index piece of the block is at hand (a zip's directory, a member): what is missing
        of it is fetched as index pieces too, not as the whole block again; else 0."""
        keys = self._small_keys(block, 0, block.length, INDEX_PIECE)
        return INDEX_PIECE if any(self.is_at_hand(key) for key in keys) else 0

    def _lookup(self, key: PieceKey, lo: int, hi: int) -> Part | None:
        """Bytes ``lo`` to ``hi`` of a piece from a tier, or the fetch to join for them, or None."""
        pending = self.in_flight.get(key)
        if pending is not None:
            self.stats.blocks_joined += 1
            return (pending, lo, hi)
        data = self.memory.read(key, lo, hi - lo)
        if data is not None:
            self.stats.blocks_from_memory += 1
            return data
        data = self.cache.read(key, lo, hi - lo)
        if data is not None:
            self.stats.blocks_from_cache += 1
        return data

    def is_at_hand(self, key: PieceKey) -> bool:
        """In flight, in memory or (unverified) on disk: nothing to fetch for it now."""
        return key in self.in_flight or self.memory.contains(key) or self.cache.contains(key)

    def drop_object(self, object_id: str) -> int:
        """Forget every piece of a version that changed at the origin, in memory and on disk."""
        return self.memory.drop_object(object_id) + self.cache.drop_object(object_id)

    # Fetching --------------------------------------------------------------------------------------------

    def start_fetches(self, source: RangeSource, wanted: ByteRange, *, piece_size: int = 0, demand: bool) -> None:
        """Start fetching the pieces (blocks, or pieces of ``piece_size``) of ``wanted`` that are not at hand, in
        the service nursery. Never waits."""
        if not wanted.length:
            return
        keys: list[PieceKey] = []
        for index in blocks_covering(wanted, self.block_size):
            block = self.block_key(source, index)
            lo, hi = _within(block, wanted.start, wanted.stop)
            whole = (lo, hi) == (0, block.length) and not self._index_grid_in_use(block)
            if piece_size and not source.streams_whole and not whole:
                pieces = self._small_keys(block, lo, hi, piece_size)
                keys += [key for key in pieces if not self._held_in_other_sizes(block, key, piece_size)]
            else:
                keys.append(block)
        owner = object()
        # Every lookup before the first registration: one that raises must leave nothing registered that no
        # fetch owns (its readers would wait forever).
        absent = [key for key in keys if not self.is_at_hand(key)]
        self._start(source, [(key, self.in_flight.register(key, owner)) for key in absent], owner, demand=demand)

    def reserve(self, source: RangeSource, indices: Iterable[int]) -> Run:
        """Register the given blocks that are not at hand, for a prefetch to fetch later with
        ``fetch_reserved``; readers that want them meanwhile join instead of fetching them again. The caller
        owns them: it must pass them to ``fetch_reserved`` or ``abandon``. Never waits."""
        if source.streams_whole:
            return []  # a stream brings every block anyway
        keys = [self.block_key(source, index) for index in indices]
        absent = [key for key in keys if not self.is_at_hand(key)]  # every lookup first, as in start_fetches
        # The hint before the registrations: it starts a task, which a closing nursery refuses, and blocks
        # registered before that would be owned by nobody (their readers would wait forever).
        missing = set(absent)
        on_disk = [k for k in keys if k not in missing and k not in self.in_flight and not self.memory.contains(k)]
        self._read_ahead_on_disk(on_disk)
        return [(key, self.in_flight.register(key, _RESERVED)) for key in absent]

    def _read_ahead_on_disk(self, keys: list[PieceKey]) -> None:
        """The kernel starts reading the cached pieces a prefetch found on disk, in a thread: read on the event
        loop one 256 KiB kernel read at a time, each waited for the disk (a re-read from the disk cache after
        drop_caches ran at 0.66x the local disk)."""
        fresh = [key for key in keys if key not in self._advised]
        if not fresh:
            return
        for key in fresh:
            self._advised[key] = None
        while len(self._advised) > _ADVISED_REMEMBERED:
            self._advised.popitem(last=False)
        self._nursery.start_soon(self._advise, fresh)

    async def _advise(self, keys: list[PieceKey]) -> None:
        try:
            await trio.to_thread.run_sync(self.cache.will_need, keys, limiter=self._advising)
        except Exception:  # a hint: reads work without it, and a service task must not end the mount
            log.debug("cache: reading ahead %d pieces from disk failed", len(keys), exc_info=True)

    async def fetch_reserved(self, source: RangeSource, reserved: Run) -> None:
        """Fetch reserved blocks in this task (cancelling it cancels the fetch); see ``abandon``."""
        for run in self._runs(reserved):
            token = object()
            taken = self.in_flight.take(run, _RESERVED, token)
            if taken:
                await self._fetch_run(source, taken, token, demand=False)

    def abandon(self, reserved: Run) -> None:
        """Fail reserved blocks that no fetch took: readers that joined them fetch them themselves."""
        self.in_flight.fail(reserved, FetchAborted("prefetch cancelled"), _RESERVED)

    def _not_at_hand(self, source: RangeSource, indices: Iterable[int]) -> list[PieceKey]:
        keys = (self.block_key(source, index) for index in indices)
        return [key for key in keys if not self.is_at_hand(key)]

    def _start(self, source: RangeSource, missing: Run, owner: object, *, demand: bool) -> None:
        """Hand registered pieces on from ``owner``: each to a fetch run started here, or to a stream."""
        if not missing:
            return
        if source.streams_whole:
            self._stream(source, missing, owner)
            return
        runs = self._runs(missing)
        for number, run in enumerate(runs):
            token = object()
            taken = self.in_flight.take(run, owner, token)
            try:
                self._nursery.start_soon(self._fetch_run, source, taken, token, demand)
            except BaseException as error:  # the nursery is closing: the mount stops
                aborted = FetchAborted(f"cannot start a fetch: {error!r}")
                self.in_flight.fail(taken, aborted, token)
                for later in runs[number + 1 :]:
                    self.in_flight.fail(later, aborted, owner)
                raise

    def _runs(self, pieces: Run) -> list[Run]:
        """Adjacent pieces grouped into requests of at most ``max_request_size`` bytes."""
        runs: list[Run] = []
        for key, pending in sorted(pieces, key=lambda entry: entry[0].start):
            last = runs[-1] if runs else None
            if last and last[-1][0].stop == key.start and key.stop - last[0][0].start <= self.max_request_size:
                last.append((key, pending))
            else:
                runs.append([(key, pending)])
        return runs

    async def _fetch_run(self, source: RangeSource, run: Run, owner: object, demand: bool) -> None:
        """Fetch adjacent pieces ``owner`` owns, those another process sharing the cache dir is not fetching
        already; wait for the others to reach the disk, and take over those whose fetch dies (shared.py)."""
        with self._working():
            async with trio.open_nursery() as fetches:
                waiting = self._claim_and_start(source, run, owner, demand, fetches)
                if waiting:
                    await self._wait_for_others(source, waiting, owner, demand, fetches)

    def _claim_and_start(
        self, source: RangeSource, run: Run, owner: object, demand: bool, fetches: trio.Nursery, *, claim: bool = True
    ) -> Run:
        """Claim the pieces of ``run`` and start fetching those that are now ours; serve those another process
        put on disk meanwhile; return those another process is fetching. Never waits."""
        if not run:
            return []
        keys = [key for key, _ in run]
        lease, states = self.shared.claim(keys) if claim else self.shared.unclaimed(keys)
        ours: Run = []
        theirs: Run = []
        for entry in run:
            state = states[entry[0]]
            if state is PieceState.CLAIMED:
                theirs.append(entry)
            elif state is not PieceState.ON_DISK or not self._serve_from_disk(entry, owner):
                ours.append(entry)  # ON_DISK but unreadable (evicted, corrupt): fetched, under no claim of ours
        mine = [key for key, state in states.items() if state is PieceState.OURS]
        subruns = self._runs(ours)
        started = 0
        try:
            for subrun in subruns:
                fetches.start_soon(self._fetch_claimed, source, subrun, owner, demand, lease)
                started += 1
        except BaseException as error:  # the nursery is closing: the mount stops
            lease.release(mine)
            self.in_flight.fail([e for later in subruns[started:] for e in later], FetchAborted(repr(error)), owner)
            raise
        return theirs

    def _serve_from_disk(self, entry: Entry, owner: object) -> bool:
        """Complete a piece another process fetched from the disk cache (verified there); False if unreadable."""
        key = entry[0]
        data = self.cache.read(key, 0, key.length)
        if data is None:
            return False
        self.memory.put(key, memoryview(data))
        if self.in_flight.complete(entry, memoryview(data), owner):
            self.stats.blocks_from_others += 1
        return True

    async def _wait_for_others(
        self, source: RangeSource, waiting: Run, owner: object, demand: bool, fetches: trio.Nursery
    ) -> None:
        """Wait for pieces other processes are fetching; each is answered as soon as it is on disk, and fetched
        here (claimed first) once its claim is no longer live. At most ``_TAKEOVERS`` claims per piece are
        waited for; then it is fetched without one."""
        pending = dict(waiting)
        rounds = dict.fromkeys(pending, 0)
        answers, arrivals = trio.open_memory_channel[Answer](len(pending))
        self.shared.watch(pending, answers)
        try:
            while pending:
                batch = [await arrivals.receive()]
                with contextlib.suppress(trio.WouldBlock):
                    while True:
                        batch.append(arrivals.receive_nowait())
                free: Run = []
                unclaimed: Run = []
                for key, state in batch:
                    entry = (key, pending.pop(key))
                    if state is PieceState.ON_DISK and self._serve_from_disk(entry, owner):
                        continue
                    rounds[key] += 1
                    (unclaimed if state is PieceState.OURS or rounds[key] > _TAKEOVERS else free).append(entry)
                self.stats.pieces_taken_over += len(free) + len(unclaimed)
                self._claim_and_start(source, unclaimed, owner, demand, fetches, claim=False)
                again = self._claim_and_start(source, free, owner, demand, fetches)
                pending.update(again)
                self.shared.watch(dict(again), answers)
        finally:
            self.shared.unwatch(pending)
            self.in_flight.fail(list(pending.items()), FetchAborted("wait for another process's fetch ended"), owner)

    async def _fetch_claimed(
        self, source: RangeSource, run: Run, owner: object, demand: bool, lease: ClaimLease
    ) -> None:
        """One request for adjacent pieces ``owner`` owns; each is completed as its bytes arrive, and written
        to the cache one by one; on an error the rest fail (or go to a stream if the server ignores ranges).
        The pieces' claims are renewed as bytes arrive and dropped once their fetch and writes are over."""
        wanted = ByteRange(run[0][0].start, run[-1][0].stop)
        send, receive = trio.open_memory_channel[list[tuple[PieceKey, memoryview]]](len(run))
        try:
            async with trio.open_nursery() as writes:
                writes.start_soon(self._write_pieces, receive, source.describe(), not demand, lease)
                with send:
                    await self._receive_run(source, run, owner, wanted, demand, send, lease)
        finally:
            lease.release([key for key, _ in run])  # written pieces' claims went with their rows already

    @contextmanager
    def _working(self) -> Iterator[None]:
        self._busy += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            yield
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no fetch or stream is under way and every piece they brought has been written (or
        skipped): what a caller about to close waits for, so another process finds the bytes on disk."""
        while self._busy:
            await self._idle.wait()

    async def _receive_run(  # noqa: PLR0917
        self,
        source: RangeSource,
        run: Run,
        owner: object,
        wanted: ByteRange,
        demand: bool,
        written: trio.MemorySendChannel[list[tuple[PieceKey, memoryview]]],
        lease: ClaimLease,
    ) -> None:
        url = str(source.describe().get("url"))
        log.debug("fetch %s of %s (%s)", wanted.header_value(), url, "demand" if demand else "prefetch")
        assembler = RunAssembler(run)
        error: BaseException | None = FetchAborted(f"fetch of {wanted.header_value()} was cancelled")

        def arrived(chunk: bytes) -> None:
            pieces = assembler.feed(chunk)
            self.stats.bytes_fetched += len(chunk)
            lease.progress()
            if pieces:
                self._deliver(pieces, owner)
                written.send_nowait([(entry[0], data) for entry, data in pieces])  # room: one slot per piece
                self._unwritten(sum(len(data) for _, data in pieces))
            gathering = assembler.gathering()
            if gathering is not None:  # readers of its first bytes need not wait for the rest of it
                gathering[0][1].progress(gathering[1], gathering[2])

        self.stats.requests += 1
        self.stats.bytes_in_flight += wanted.length
        try:
            await source.fetch_into(wanted, arrived, demand=demand)
            if not assembler.done:
                raise InvalidResponse(url, f"got {assembler.received} of {wanted.length} bytes")
            error = None
        except RangesUnsupported:
            source.ranges_unsupported()
            error = None  # not an error for the readers: a stream takes the pieces over
            self._stream(source, assembler.missing(), owner)
        except RangefsError as failure:
            error = failure
            self.stats.fetch_errors += 1
        except Exception as failure:  # a bug must fail the readers, not the whole mount
            log.exception("unexpected error fetching %s of %s", wanted.header_value(), url)
            error = RemoteError(url, f"unexpected error: {failure!r}")
            self.stats.fetch_errors += 1
        finally:
            self.stats.bytes_in_flight -= wanted.length
            if error is not None:
                self.in_flight.fail(assembler.missing(), error, owner)

    async def _write_pieces(
        self,
        arriving: trio.MemoryReceiveChannel[list[tuple[PieceKey, memoryview]]],
        describe: dict[str, object],
        wait: bool,
        lease: ClaimLease,
    ) -> None:
        # Shielded: bytes that arrived are written even when the fetch is cancelled (a closed file's readahead,
        # an unmount); the writer's wait is bounded by the disk, which the shield cannot make stall.
        with trio.CancelScope(shield=True):
            async with arriving:
                async for pieces in arriving:
                    try:
                        await self.writer.write(pieces, describe, wait=wait)
                    finally:
                        self._unwritten(-sum(len(data) for _, data in pieces))
                    lease.progress()

    def _unwritten(self, change: int) -> None:
        self.unwritten_bytes += change
        if self.unwritten_bytes <= self.max_unwritten_bytes:
            self._disk_caught_up.set()
        elif self._disk_caught_up.is_set():
            self._disk_caught_up = trio.Event()

    async def wait_for_disk(self) -> None:
        """Return once at most ``max_unwritten_bytes`` of fetched pieces wait for their cache writes (what a
        prefetch about to start waits for: memory stays bounded when the disk is slower than the network)."""
        await trio.lowlevel.checkpoint()
        while not self._disk_caught_up.is_set():
            await self._disk_caught_up.wait()

    def _deliver(self, pieces: list[tuple[Entry, memoryview]], owner: object) -> None:
        """Fetched pieces into memory, then to their waiters (so no reader misses them in between)."""
        for entry, data in pieces:
            self.memory.put(entry[0], data)
            if self.in_flight.complete(entry, data, owner):
                self.stats.blocks_fetched += 1

    # Whole-file streams ----------------------------------------------------------------------------------

    def _stream(self, source: RangeSource, registered: Run, owner: object) -> None:
        """Hand pieces ``owner`` owns to a whole-file stream that will still pass them, with every other block
        that is not at hand (the stream carries them anyway); start a stream if none will pass them."""
        if not registered:
            return
        streams = self._streams.setdefault(source.object_id, [])
        entries = list(registered)
        try:
            blocks = range(block_count(source.size, self.block_size))
            entries += [(key, self.in_flight.register(key, owner)) for key in self._not_at_hand(source, blocks)]
            stream = next((s for s in streams if all(s.wants(key) for key, _ in entries)), None)
            if stream is None:
                stream = WholeFileStream(source.size)
                self._nursery.start_soon(self._run_stream, source, stream)
                streams.append(stream)
            for key, _ in self.in_flight.take(entries, owner, stream):
                stream.add(key)
        except BaseException as error:
            self.in_flight.fail(entries, FetchAborted(f"cannot start a stream: {error!r}"), owner)
            raise

    async def _run_stream(self, source: RangeSource, stream: WholeFileStream) -> None:
        url = str(source.describe().get("url", "?"))
        error: BaseException = FetchAborted("stream of the whole file was cancelled")
        self.stats.requests += 1
        try:
            with self._working():
                await self._stream_into(source, stream, url)
        except StreamOverrun as overrun:
            error = InvalidResponse(url, str(overrun))
            self.stats.fetch_errors += 1
        except RangefsError as failure:
            error = failure
            self.stats.fetch_errors += 1
        except Exception as failure:
            log.exception("unexpected error streaming %s", source.describe())
            error = RemoteError(url, f"unexpected error: {failure!r}")
        finally:
            streams = self._streams.get(source.object_id, [])
            if stream in streams:
                streams.remove(stream)
            if not streams:
                self._streams.pop(source.object_id, None)
            self.in_flight.fail([self._entry(key) for key in stream.waiting], error, stream)

    async def _stream_into(self, source: RangeSource, stream: WholeFileStream, url: str) -> None:
        async with source.stream() as chunks, _closing(chunks):
            async for chunk in chunks:
                self.stats.bytes_fetched += len(chunk)
                completed = stream.feed(chunk)
                if completed:
                    self._deliver([(self._entry(key), data) for key, data in completed], stream)
                    # The stream is read ahead for everyone: let it wait for the disk, like a prefetch.
                    await self.writer.write(completed, source.describe(), wait=True)
                if not stream.waiting:
                    break
        if stream.waiting:
            raise InvalidResponse(url, f"stream ended after {stream.position} of {source.size} bytes", transient=True)

    def _entry(self, key: PieceKey) -> Entry:
        """A registered piece with its Pending (a stand-in nobody owns if it is no longer registered)."""
        return key, self.in_flight.get(key) or _UNREGISTERED
