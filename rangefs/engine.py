"""FileEngine: open handles and reads over remote files, independent of FUSE.

Each entry of the urls file becomes a RemoteFile. Its metadata is probed in the background when the engine
starts (bounded concurrency), and whoever needs it (getattr, open) waits for that probe. A file whose probe
failed is probed again on open, so a host that comes back is picked up without a remount.

Consistency is close-to-open: an open revalidates a file whose metadata is older than ``revalidate_after``
seconds (one HEAD, run concurrently with the format-aware first fetch), so an open that starts more than that
long after the origin changed sees the new version. Listings only need sizes: they use probe results stored
with the cache (``records``) for up to ``metadata_ttl`` seconds, also across remounts, without a request.

Only an answer that proves a new version changes anything: its old blocks are dropped from memory and disk,
the kernel is told to forget the file's pages and attributes, and handles still open on the old version fail
their reads from then on (a read answered from old bytes would put them back into the kernel's page cache,
where a new handle would find them). A failed revalidation (5xx, timeout, unreachable host) keeps the version
known, readable from the cache, as when the host is offline.

An open handle pins the version (size and validators) it was opened with: every read through it is either
bytes of that version or an error, never a mix of two versions.

Offline (``offline=True``, the mount's ``--offline``) nothing is probed or revalidated: every stored probe result
serves, whatever its age, and a file without one fails. The client sends no request either, so only cached bytes
can be read. A mount with its origin down behaves the same from its first failed probe on, without the flag.

Files come and go at run time (``add_entry``, ``retire``: a reload of the urls file). File indices are never
reused; a retired file stays known (``known``) while handles are open on it, and those go on reading.

Traffic is counted per file and for the whole engine (``FileTraffic``): reads here, bytes served and hits by
the block store, requests, bytes fetched, retries and errors by the HTTP client, each given both tallies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TypeVar

import trio

from rangefs.blocks import BlockStore
from rangefs.blocks.store import SMALL_READ_PIECE
from rangefs.config import Entry
from rangefs.counters import FileTraffic
from rangefs.errors import RangesUnsupported, RemoteChanged, RemoteError, RemoteUnreachable
from rangefs.ranges import ByteRange, clamp_read
from rangefs.readahead import AccessPattern, ReadaheadConfig
from rangefs.readahead.formats import planner_for
from rangefs.readahead.pattern import Prefetch
from rangefs.readahead.prefetcher import Prefetcher
from rangefs.remote import Credentials, RemoteClient, RemoteMetadata
from rangefs.remote.retry import is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")

# Reads at most this large that are not part of a sequential stream fetch only the small pieces they touch
# (a SQLite page, a zip header) instead of whole blocks. Larger ones (a video player after a seek) are likely
# to go on reading, and get whole blocks.
_SPARSE_READ = 32 * 1024
# Stream id of explicit prefetches (``FileEngine.prefetch``): the access pattern's ids start at 1, so its
# decisions to drop streams never cancel these; releasing the handle does.
_EXPLICIT_STREAM = 0
# Why a file without a stored probe result fails offline.
_NOTHING_STORED = "--offline, and nothing is stored about it: mount once without --offline to learn its size"
# Files listed one by one in ``statistics()``: the busiest. The statistics are a root xattr, which the kernel
# limits to 64 KiB (a file's entry is its path and ~230 bytes of counters), and a table of more does not fit
# a terminal anyway.
BUSIEST_FILES = 20
# Seconds between two stores of probe results while probes run, each one transaction: a commit per result
# cost ~0.1 ms, 10 % of a 10,000-URL listing's CPU, and batches of 500 random keys into an index of 100,000
# still rewrote most of its pages each time (8 %). A crash loses at most this long's results (each costs one
# probe on the next mount).
_RECORD_INTERVAL = 2.0
# Files from which listing probes take the lighter HEAD path (see FileEngine._many_files): 100 probes through
# httpx cost ~0.08 s of CPU.
_LIGHTER_PROBES_FROM = 100
# Seconds between the "probing N of M files" log lines of a long probe run.
_PROGRESS_INTERVAL = 5.0


@dataclass
class ProbeProgress:
    """How far the probes of ``run_probes`` got: files queued (those without a fresh stored result) and ended
    (failed ones included), and how long the runs took. ``under_way`` while a run lasts."""

    queued: int = 0
    ended: int = 0
    failed: int = 0
    under_way: bool = False
    started_at: float = 0.0  # trio.current_time() the current (or last) run began
    seconds: float = 0.0  # how long the last finished run took

    def describe(self) -> str:
        return f"probing {self.ended:,} of {self.queued:,} files..."


class RemoteVersion:
    """One version of a remote file as a RangeSource for the BlockStore."""

    def __init__(self, client: RemoteClient, metadata: RemoteMetadata, file: RemoteFile, engine: FileEngine):
        self.metadata = metadata
        self._client = client
        self._credentials = file.credentials
        self._file = file
        self._engine = engine
        self._tallies = (file.traffic, engine.traffic)
        self.object_id = metadata.object_id
        self.size = metadata.size

    @property
    def streams_whole(self) -> bool:
        current = self._file.metadata
        return not self.metadata.accepts_ranges or (
            current is not None and current.same_version(self.metadata) and not current.accepts_ranges
        )

    def stream(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._client.stream_whole(self.metadata, self._credentials, tallies=self._tallies)

    def describe(self) -> dict[str, object]:
        meta = self.metadata
        return {"url": meta.url, "size": meta.size, "etag": meta.etag, "last_modified": meta.last_modified}

    def ranges_unsupported(self) -> None:
        self._engine.ranges_unsupported(self._file)

    async def fetch_into(self, wanted: ByteRange, sink: Callable[[bytes], None], *, demand: bool) -> None:
        await self._client.fetch_into(
            self.metadata, wanted, sink, self._credentials, demand=demand, tallies=self._tallies
        )


class RemoteFile:
    """An entry of the urls file and what the last probe learned of it."""

    def __init__(self, entry: Entry, index: int) -> None:
        self.entry = entry
        self.index = index
        # Shared by every request for the entry, so a refresh of its commands serves all of them.
        self.credentials = Credentials(
            entry.url, entry.headers, header_command=entry.header_command, url_command=entry.url_command
        )
        self.metadata: RemoteMetadata | None = None  # the version last seen (kept when a later probe failed)
        self.failure: RemoteError | None = None  # why the last probe failed: opens fail with it
        self.stale = False  # a read saw the file change: probe again before the next open
        self.probed_at = 0.0  # wall-clock time of the probe that produced ``metadata``
        self.attempted_at = 0.0  # wall-clock time the last probe ended, whether it succeeded or failed
        self.index_planned_for: str | None = None  # object id whose format index was prefetched
        self.kernel_version: str | None = None  # object id whose pages the kernel may hold for this file
        self.revalidation_failing = False  # a failed revalidation was logged; cleared by a probe that succeeds
        self.traffic = FileTraffic()  # what reading this file cost, across its versions, since the engine began
        self.stored_looked_up = False  # its stored probe result (if any) was loaded (``_load_stored_probes``)
        self._probed = trio.Event()
        self._probing = False

    def __repr__(self) -> str:
        state = self.failure or (self.metadata and f"{self.metadata.size} bytes") or "probing"
        return f"<RemoteFile {self.entry.path} {state}>"

    @property
    def url(self) -> str:
        return self.entry.url

    @property
    def record_key(self) -> str:
        """Key of this entry's stored probe result: the headers can change what the server answers."""
        identity = json.dumps([self.entry.url, self.entry.headers])
        return "probe:" + hashlib.sha256(identity.encode()).hexdigest()


@dataclass
class OpenFile:
    file: RemoteFile
    version: RemoteVersion
    pattern: AccessPattern
    keep_cache: bool
    read_end: int = 0  # where the last read ended: a read elsewhere is a seek (a handle starts at 0)


class FileEngine:
    """Open, read and release remote files; the layer both FUSE and Python file objects sit on."""

    def __init__(
        self,
        entries: Sequence[Entry],
        client: RemoteClient,
        store: BlockStore,
        *,
        prefetcher: Prefetcher | None = None,
        readahead: ReadaheadConfig | None = None,
        probe_concurrency: int = 32,
        metadata_ttl: float = 300.0,
        revalidate_after: float = 1.0,
        format_prefetch: bool = True,
        offline: bool = False,
        on_metadata_changed: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        # Index -> file, for the files being served; retired ones stay in _retired while handles use them.
        self.files = {index: RemoteFile(entry, index) for index, entry in enumerate(entries)}
        self._retired: dict[int, RemoteFile] = {}
        self._next_index = len(entries)
        self.client = client
        self.store = store
        self.prefetcher = prefetcher
        self.readahead = readahead or ReadaheadConfig(block_size=store.block_size)
        self._probe_concurrency = probe_concurrency
        self._probe_limiter = trio.CapacityLimiter(probe_concurrency)
        self.metadata_ttl = metadata_ttl
        self.revalidate_after = min(revalidate_after, metadata_ttl)
        self.format_prefetch = format_prefetch
        self.offline = offline
        self.on_metadata_changed = on_metadata_changed
        self._handles: dict[int, OpenFile] = {}
        self._handle_numbers = itertools.count(1)
        self.traffic = FileTraffic()  # every file's traffic, summed as it is counted
        # Files opened at least once (an ordered set): only these can have traffic, so ranking them is cheap
        # however many files the mount lists.
        self._opened: dict[RemoteFile, None] = {}
        # Probe results not yet stored with the cache, while ``run_probes`` runs (``_probe_runs`` of them):
        # stored every _RECORD_INTERVAL seconds (``_records_stored_at``: time.monotonic()), and the rest as the
        # run ends (or the engine closes).
        self._unstored_records: dict[str, str] = {}
        self._records_stored_at = 0.0
        self._probe_runs = 0
        self.probe_progress = ProbeProgress()

    def __repr__(self) -> str:
        return f"<FileEngine {len(self.files)} files, {len(self._handles)} open>"

    @property
    def _many_files(self) -> bool:
        """Whether listing probes take the lighter HEAD path (``RemoteClient.probe``'s ``bulk``): for a few files
        their CPU does not matter, and the connection a probe leaves in httpx's pool spares the first read
        after the mount a handshake (a round trip: +40 ms for a cold `unzip -l` at 40 ms RTT)."""
        return len(self.files) >= _LIGHTER_PROBES_FROM

    async def run_probes(self, indices: Sequence[int] | None = None) -> None:
        """Give every file (or those of ``indices``) its metadata: from a fresh stored probe result, else by
        probing (concurrently)."""
        wanted = None if indices is None else set(indices)
        files = [file for index, file in self.files.items() if wanted is None or index in wanted]
        self._load_stored_probes([file for file in files if not file.stored_looked_up])
        # A few workers share one queue, not a task per file: 100,000 waiting tasks held ~300 MiB. A file
        # someone asks for before its turn is probed at once by ``metadata`` (and skipped here).
        queued = [file for file in files if not file._probed.is_set()]
        queue = iter(queued)
        progress = self.probe_progress
        if not progress.under_way:
            progress.queued = progress.ended = progress.failed = 0
            progress.started_at = trio.current_time()
        progress.queued += len(queued)

        logged_at = [trio.current_time()]

        async def worker() -> None:
            for file in queue:
                if not file._probing and not file._probed.is_set():
                    await self._probe(file, bulk=self._many_files)
                progress.ended += 1
                progress.failed += file.failure is not None
                # Logged from here, not by a task that sleeps: that would wake a test's autojump clock.
                if trio.current_time() - logged_at[0] >= _PROGRESS_INTERVAL:
                    logged_at[0] = trio.current_time()
                    log.info("%s", progress.describe())

        self._probe_runs += 1
        progress.under_way = True
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self._probe_concurrency):
                    nursery.start_soon(worker)
        finally:
            self._probe_runs -= 1
            self.store_records()
            if not self._probe_runs:
                progress.under_way = False
                progress.seconds = trio.current_time() - progress.started_at
                if progress.seconds >= 1.0:
                    log.info("probed %d files in %.1f s (%d failed)", progress.ended, progress.seconds, progress.failed)

    async def add(self, entry: Entry) -> int:
        """Serve one more file (a URL given at run time, not in the urls file) and give it its metadata as
        ``run_probes`` would; returns its index for ``open``. A failed probe is kept, as for any file: the open
        probes again and fails with it."""
        file = self.files[self.add_entry(entry)]
        self._load_stored_probes([file])
        if not file._probed.is_set():
            await self._probe(file)
        return file.index

    def add_entry(self, entry: Entry) -> int:
        """Serve one more file, not probed yet (``run_probes`` or the first ``metadata``/``open`` wait for
        that); returns its index."""
        index, self._next_index = self._next_index, self._next_index + 1
        self.files[index] = RemoteFile(entry, index)
        return index

    def retire(self, index: int) -> None:
        """Stop serving a file: handles open on it go on reading their version until released."""
        file = self.files.pop(index)
        if any(opened.file is file for opened in self._handles.values()):
            self._retired[index] = file
        else:
            self._opened.pop(file, None)

    def known(self, index: int) -> bool:
        """Whether the file is served, or retired but still open."""
        return index in self.files or index in self._retired

    def _file(self, index: int) -> RemoteFile:
        file = self.files.get(index) or self._retired.get(index)
        if file is None:
            raise KeyError(f"no file {index}: retired and closed")
        return file

    def _load_stored_probes(self, files: Sequence[RemoteFile]) -> None:
        # Each key computed once (a JSON and a SHA-256 each) and not kept: 100,000 of them are 12 MiB.
        keys = [file.record_key for file in files]
        records = self.store.cache.get_records(keys)
        now = time.time()
        for file, key in zip(files, keys, strict=True):
            file.stored_looked_up = True
            record = records.get(key)
            if record is None:
                continue
            value, stored_at = record
            try:
                file.metadata = RemoteMetadata(**json.loads(value))
            except (TypeError, ValueError):
                continue
            file.probed_at = stored_at
            if now - stored_at < self.metadata_ttl or self.offline:
                file._probed.set()  # fresh: no request at all
        if self.offline:
            for file in files:
                if file.metadata is None:
                    log.warning("cannot serve %s offline: no size or version of it is stored", file.url)
                    file.failure = RemoteUnreachable(file.url, _NOTHING_STORED)
                    file._probed.set()

    def _needs_probe(self, file: RemoteFile) -> bool:
        """Before an open: the last probe failed, a read saw the file change, or what is known is too old."""
        if self.offline:
            return False
        now = time.time()
        if file.failure is not None:
            # Tried again at most once per revalidate_after: a stat and the open after it cost one request.
            return now - file.attempted_at >= self.revalidate_after
        return file.stale or now - file.probed_at >= self.revalidate_after

    def probed(self, file_index: int) -> RemoteFile | None:
        """The file if its first probe has ended, else None (without waiting)."""
        file = self._file(file_index)
        return file if file._probed.is_set() else None

    async def metadata(self, file_index: int, *, reading: bool = False) -> RemoteFile:
        """The file, once its first probe has ended (its ``metadata`` is None if that probe failed). A probe
        started here is a listing's (lighter, see ``RemoteClient.probe``) unless ``reading`` follows."""
        file = self._file(file_index)
        if not file.stored_looked_up:
            self._load_stored_probes([file])
        if not file._probed.is_set():
            # Its turn in run_probes' queue may be far off (or this joins the probe under way).
            await self._probe(file, bulk=self._many_files and not reading)
        return file

    async def recheck(self, file_index: int) -> RemoteFile:
        """The file once its first probe has ended; if that or a later probe failed, probed again first (at
        most once per ``revalidate_after``), so a stat sees a server that came back. Only a failed file is."""
        file = await self.metadata(file_index)
        if file.failure is not None and self._needs_probe(file):
            await self._reprobe(file)
        return file

    async def _reprobe(self, file: RemoteFile) -> None:
        """Probe a file whose first probe has ended again, or join the probe under way."""
        if not file._probing:
            file._probed = trio.Event()
        await self._probe(file)

    async def _probe(self, file: RemoteFile, *, bulk: bool = False) -> None:
        """Probe the file (``bulk``: one of ``run_probes``'), or wait for the probe under way."""
        if file._probing:
            await file._probed.wait()
            return
        file._probing = True
        done = file._probed
        previous, previously_failed = file.metadata, file.failure is not None
        try:
            await self._probe_once(file, bulk)
            # The kernel may hold attributes or pages of what it saw before: another version, or what it was
            # shown while the file failed. (A first successful probe needs nothing: the kernel saw nothing yet.)
            current = file.metadata
            changed = previous is not None and current is not None and not previous.same_version(current)
            if changed and previous is not None:
                self._drop_version(file, previous)
            recovered = previously_failed and file.failure is None
            if (changed or recovered) and self.on_metadata_changed is not None:
                await self.on_metadata_changed(file.index)
        finally:
            # Only now do opens waiting for this probe go on: the kernel has forgotten what no longer holds.
            file._probing = False
            done.set()

    def _drop_version(self, file: RemoteFile, previous: RemoteMetadata) -> None:
        """Forget a replaced version's pieces. The cache contains its own failures; anything else that escapes
        costs the space (the LRU reclaims it), never the probe: its object id keeps it from being served."""
        try:
            dropped = self.store.drop_object(previous.object_id)
        except Exception:
            log.warning("cannot drop the cached pieces of the old version of %s", file.url, exc_info=True)
            return
        log.info("%s changed on the server; dropped %d cached pieces of the old version", file.url, dropped)

    async def _probe_once(self, file: RemoteFile, bulk: bool) -> None:
        """Probe, and record what was learnt (or what failed) in ``file``; never raises a RangefsError."""
        try:
            async with self._probe_limiter:
                metadata = await self.client.probe(file.url, file.credentials, bulk=bulk)
            expected = file.entry.expected_size
            if expected is not None and metadata.size != expected:
                raise RemoteChanged(file.url, f"size is {metadata.size} bytes, the urls file says {expected}")
            file.metadata, file.failure, file.stale, file.probed_at = metadata, None, False, time.time()
            if file.revalidation_failing:
                log.info("%s answers again", file.url)
                file.revalidation_failing = False
            self._store_probe(file)
        except RemoteError as error:
            self._probe_failed(file, error)
        except Exception as error:  # a bug must fail this file, not the engine (probes are service tasks)
            log.exception("unexpected error probing %s", file.url)
            self._probe_failed(file, RemoteError(file.url, f"unexpected error: {error!r}"))
        finally:
            file.attempted_at = time.time()

    def _probe_failed(self, file: RemoteFile, error: RemoteError) -> None:
        """Keep the known version through a failure that proves nothing (a 5xx, a timeout, a host down);
        a definite answer (404, 403, a size the urls file contradicts) or a version known to be gone fails it.
        Its cached blocks stay either way: only a new version drops them."""
        if file.metadata is not None and not file.stale and is_transient(error):
            # Once per outage: with the host down, every open of the file fails to revalidate.
            level = logging.DEBUG if file.revalidation_failing else logging.WARNING
            log.log(level, "cannot revalidate %s (%s); serving the version known", file.url, error.cause)
            file.revalidation_failing = True
            return
        log.warning("cannot probe %s: %s", file.url, error.cause)
        # Opens fail from now on; what was known stays for attributes, so the kernel does not cut the file short
        # under handles still open on that version (their reads go on being checked against it).
        file.failure = error

    async def open(self, file_index: int) -> int:
        """A handle for reading the file; revalidates first when what is known of it may be out of date."""
        file = await self.metadata(file_index, reading=True)
        self._opened[file] = None
        if self._needs_probe(file):
            if file.metadata is not None and not file.stale:
                # The index prefetch of the version known overlaps the revalidation; if the file changed,
                # its range requests are refused (If-Range, validators) and cost nothing but a round trip.
                self._plan_index(file, RemoteVersion(self.client, file.metadata, file, self))
            await self._reprobe(file)
        if file.failure is not None:
            raise file.failure
        assert file.metadata is not None
        handle = next(self._handle_numbers)
        version = RemoteVersion(self.client, file.metadata, file, self)
        keep_cache = file.kernel_version == version.object_id
        file.kernel_version = version.object_id
        self._handles[handle] = OpenFile(file, version, AccessPattern(self.readahead, file.metadata.size), keep_cache)
        self._plan_index(file, version)
        return handle

    def keeps_kernel_cache(self, handle: int) -> bool:
        """Whether the kernel's cached pages of the handle's file are of the handle's version (False on the
        first open and the first after a change: the kernel then drops them)."""
        return self._handles[handle].keep_cache

    async def read(self, handle: int, offset: int, size: int, *, readahead: bool = True) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at end of file) of the version opened. Without
        ``readahead`` the access pattern does not see the read, so it starts no prefetch (a download copying
        what the cache holds must not set off fetches of what lies beyond)."""
        opened = self._handles[handle]
        tallies = (opened.file.traffic, self.traffic)
        for tally in tallies:
            tally.reads += 1
        try:
            if not readahead:
                return await self._checked(opened, self.store.read(opened.version, offset, size, tallies=tallies))
            return await self._read(opened, handle, offset, size, tallies)
        except BaseException:
            for tally in tallies:
                tally.read_errors += 1
            raise

    async def _read(
        self, opened: OpenFile, handle: int, offset: int, size: int, tallies: tuple[FileTraffic, ...]
    ) -> bytes:
        decision = opened.pattern.on_read(offset, size, trio.current_time())
        if log.isEnabledFor(logging.DEBUG):
            log.debug("read %d+%d of %s: %s", offset, size, opened.file.url, decision)
        if self.prefetcher is not None:
            if decision.dropped_streams:
                self.prefetcher.cancel(handle, decision.dropped_streams)
            if decision.prefetch is not None:
                self.prefetcher.submit(opened.version, handle, decision.prefetch)
            elif decision.random_access and offset != opened.read_end:
                wanted = clamp_read(offset, size, opened.version.size)
                # A seek that lands on a zip member's header: its data follows (a reader going through the
                # file from the start, as bsdtar does, is left to the readahead).
                self.prefetcher.fetch_member(opened.version, wanted)
                if size > _SPARSE_READ:
                    # A large read after a seek (a player's or ffmpeg's jump to a frame): from its own bytes to
                    # the end of their block, rather than the whole block, which sent the bytes before them first.
                    self.prefetcher.fetch_rest_of_block(opened.version, wanted.start)
        opened.read_end = offset + size
        small = decision.random_access and size <= _SPARSE_READ
        piece_size = SMALL_READ_PIECE if small else 0
        started = trio.current_time()
        try:
            return await self._checked(
                opened, self.store.read(opened.version, offset, size, piece_size=piece_size, tallies=tallies)
            )
        finally:
            opened.pattern.waited(decision.stream_id, trio.current_time() - started)

    async def _checked(self, opened: OpenFile, reading: Awaitable[T]) -> T:
        """What ``reading`` returns, if the handle's version is still the file's as it does."""
        try:
            result = await reading
        except RemoteChanged:
            opened.file.stale = True
            raise
        # No await from here to the return: the version is checked as the bytes leave.
        current = opened.file.metadata
        if current is not None and not current.same_version(opened.version.metadata):
            raise RemoteChanged(opened.file.url, "the file changed at the origin since it was opened")
        return result

    async def fetch_direct(self, handle: int, wanted: ByteRange, sink: Callable[[bytes], None]) -> None:
        """Stream ``wanted`` bytes of the handle's version from the origin into ``sink`` as they arrive, past
        the block store: neither the memory tier nor the disk cache keeps them, and there is no single flight
        with other readers (a download to a file, which is its own copy). Prefetch connections; the sink may
        end it early with FetchStopped."""
        opened = self._handles[handle]
        try:
            await self._checked(opened, opened.version.fetch_into(wanted, sink, demand=False))
        except RangesUnsupported:
            opened.version.ranges_unsupported()  # remembered: the file is read as a whole stream from now on
            raise

    def streams_whole(self, handle: int) -> bool:
        """Whether the handle's version can only be read as one whole-file stream (its server ignores Range)."""
        return self._handles[handle].version.streams_whole

    def cached_ranges(self, handle: int) -> list[ByteRange]:
        """The bytes of the handle's version that the disk cache holds, as its index lists them now."""
        return self.store.cache.cached_ranges(self._handles[handle].version.object_id)

    def prefetch(self, handle: int, offset: int, size: int) -> None:
        """Fetch up to ``size`` bytes at ``offset`` of the handle's version in the background, within the
        readahead's budget and connections; cancelled when the handle is released. Never waits."""
        opened = self._handles[handle]
        wanted = clamp_read(offset, size, opened.version.size)
        if self.prefetcher is not None and wanted.length:
            self.prefetcher.submit(opened.version, handle, Prefetch(_EXPLICIT_STREAM, wanted.start, wanted.stop))

    def _plan_index(self, file: RemoteFile, version: RemoteVersion) -> None:
        """On the first open of a version, prefetch the index its format's readers start with."""
        if not self.format_prefetch or self.prefetcher is None or version.streams_whole:
            return
        if file.index_planned_for == version.object_id:
            return
        file.index_planned_for = version.object_id
        planner = planner_for(file.entry.path.name, version.size)
        if planner is not None:
            self.prefetcher.plan_index(version, planner)

    def _store_probe(self, file: RemoteFile) -> None:
        """Keep what is known of the file with the cache, for remounts within the metadata TTL: at once, or
        with the next batch while ``run_probes`` runs."""
        if file.metadata is not None:
            self._unstored_records[file.record_key] = json.dumps(dataclasses.asdict(file.metadata))
            if not self._probe_runs or time.monotonic() - self._records_stored_at >= _RECORD_INTERVAL:
                self.store_records()

    def store_records(self) -> None:
        """Store the probe results not stored yet (a batch ends, the engine closes)."""
        if not self._unstored_records:
            return
        records, self._unstored_records = self._unstored_records, {}
        self._records_stored_at = time.monotonic()
        try:
            self.store.cache.put_records(records)
        except Exception:  # the cache contains its own failures; a record lost costs one probe, never more
            log.warning("cannot store what is known of %d files", len(records), exc_info=True)

    def ranges_unsupported(self, file: RemoteFile) -> None:
        """The server ignores Range for this file: remember it (across mounts) and say so once."""
        if file.metadata is None or not file.metadata.accepts_ranges:
            return
        log.warning("%s: the server ignores range requests; reading the file whole, once, into the cache", file.url)
        file.metadata = dataclasses.replace(file.metadata, accepts_ranges=False)
        self._store_probe(file)

    def release(self, handle: int) -> None:
        """Forget the handle and cancel the prefetching done for it (and a retired file's last handle, the
        file)."""
        opened = self._handles.pop(handle, None)
        if self.prefetcher is not None:
            self.prefetcher.cancel(handle)
        file = opened.file if opened is not None else None
        if file is not None and file.index in self._retired and all(o.file is not file for o in self._handles.values()):
            del self._retired[file.index]
            self._opened.pop(file, None)

    def file_index(self, handle: int) -> int:
        return self._handles[handle].file.index

    @property
    def open_handles(self) -> int:
        return len(self._handles)

    def cached_bytes(self, file_index: int) -> int:
        """Bytes of the file's current version in the disk cache (0 while its version is unknown)."""
        metadata = self._file(file_index).metadata
        return 0 if metadata is None else self.store.cache.cached_bytes(metadata.object_id)

    def busiest_files(self, count: int = BUSIEST_FILES) -> list[RemoteFile]:
        """The ``count`` files that moved the most bytes, those with bytes in flight first; none idle."""
        active = (file for file in self._opened if file.traffic.volume or file.traffic.bytes_in_flight)
        return heapq.nlargest(count, active, key=lambda file: (file.traffic.bytes_in_flight > 0, file.traffic.volume))

    def statistics(self) -> dict[str, object]:
        """Everything countable about the engine and the parts below it, as plain data (README: "rangefs
        stats" documents the schema)."""
        parts: dict[str, object] = {
            "files": len(self.files),
            "files_failed": sum(file.failure is not None for file in self.files.values()),
            "probes": dataclasses.asdict(self.probe_progress),
            "open_handles": self.open_handles,
            "traffic": dataclasses.asdict(self.traffic),
            "busiest_files": [
                {"path": str(file.entry.path), **dataclasses.asdict(file.traffic)} for file in self.busiest_files()
            ],
            "blocks": dataclasses.asdict(self.store.statistics()),
            "cache": dataclasses.asdict(self.store.cache.statistics()),
            "http": dataclasses.asdict(self.client.statistics()),
        }
        if self.prefetcher is not None:
            parts["prefetch"] = {
                **dataclasses.asdict(self.prefetcher.statistics()),
                "budget_in_use": self.prefetcher.budget.in_use,
                "budget_limit": self.prefetcher.budget.limit,
            }
        return parts
