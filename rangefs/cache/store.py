"""BlockCache: pieces on disk, one file per piece, written atomically, verified on every read, bounded in size.

Layout: ``ROOT/pieces/ab/abcdef.../<start>+<length>``, where ``abcdef...`` is the object id (a hash of URL,
validators and size, computed by the caller) and the name is the piece's byte range (key.py), and
``ROOT/index.sqlite3`` (see index.py) with sizes, last-use times and descriptions, shared by every process
using ROOT. A piece is a block, or a 64 KiB chunk of one fetched alone for a small random read.

Crash safety comes from write ordering and checksums, not fsync (an fsync per block costs 1.2-1.7 ms and
halves throughput, STACK.md): a block is written to a temporary file and renamed into place, so a reader sees
either no file or a whole one; if a crash loses data that was renamed but never reached the disk, the
chunk CRCs catch it and the block is dropped and fetched again. Temporary files of dead processes are
removed, and the index is reconciled with the files, when a cache is opened.

The size limit is hard: a piece is counted as soon as it is written, and the least recently used blocks are
deleted in the same step, so the directory exceeds the limit by at most the blocks being written.

All methods are synchronous: page-cache reads and writes are faster inline than through a thread (STACK.md),
and nothing here waits on the network. None of them raises on a disk or database failure except
``store_files`` (OSError, for its caller to account): the cache is an optimisation, and a failure in it must
only ever make a piece a miss.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rangefs.cache import blockfile
from rangefs.cache.claims import CLAIM_LEASE, Liveness, Owner, PieceState, owner_alive
from rangefs.cache.index import CacheIndex, ObjectUsage
from rangefs.cache.key import PieceKey
from rangefs.ranges import ByteRange, merged

log = logging.getLogger(__name__)

# After a write fails for lack of space or permission, try again this many seconds later rather than on
# every block (each failure costs a syscall and would flood the log).
_RETRY_WRITES_AFTER = 30.0
# Space is accounted in filesystem blocks, as du counts it.
_DISK_BLOCK = 4096
# Where version 0.1 kept blocks named by index alone; removed when a cache is opened.
_OLD_LAYOUT = "blocks"


@dataclass
class CacheStatistics:
    hits: int = 0
    misses: int = 0
    corrupt_blocks: int = 0
    blocks_written: int = 0
    bytes_written: int = 0
    write_failures: int = 0
    blocks_evicted: int = 0
    usage_bytes: int = 0
    limit_bytes: int = 0
    claims_taken_over: int = 0  # pieces claimed from a process that died or whose lease ran out


def disk_size(file_size: int) -> int:
    return -(-file_size // _DISK_BLOCK) * _DISK_BLOCK


class BlockCache:
    """Pieces keyed by PieceKey under ``root``, at most ``size_limit`` bytes (None: unbounded)."""

    def __init__(
        self,
        root: Path,
        *,
        size_limit: int | None = None,
        clock: Callable[[], float] = time.time,
        claim_owner: Owner | None = None,
        alive: Liveness = owner_alive,
    ) -> None:
        self.root = Path(root)
        self._clock = clock
        self._claim_owner, self._owner_alive = claim_owner, alive
        self.size_limit = size_limit
        self._pieces_dir = self.root / "pieces"
        self._index: CacheIndex | None = None
        self._described: set[str] = set()
        self._writes_paused_until = 0.0
        self._temporary_names = itertools.count()
        self._writer_token = secrets.token_hex(4)
        self._unlink_failure_logged = False
        self.stats = CacheStatistics(limit_bytes=size_limit or 0)

    def __repr__(self) -> str:
        return f"<BlockCache {self.root} {self.stats}>"

    def statistics(self) -> CacheStatistics:
        if self._index is not None:
            with contextlib.suppress(sqlite3.Error):
                self.stats.usage_bytes = self._index.usage()
            self.stats.claims_taken_over = self._index.claims.taken_over
        return self.stats

    def open(self) -> str | None:
        """Prepare the directory and index; None when ready, else why the mount must run uncached."""
        try:
            self._pieces_dir.mkdir(parents=True, exist_ok=True)
            probe = self._pieces_dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            shutil.rmtree(self.root / _OLD_LAYOUT, ignore_errors=True)
            self._index = CacheIndex(
                self.root / "index.sqlite3", self._clock, owner=self._claim_owner, alive=self._owner_alive
            )
            self._unlink(self._index.reconcile(self._scan_and_clean(), self.size_limit, self._exists))
            cleared = self._index.clear_stale_claims()
            if cleared:
                log.info("cache: cleared %d claims of fetches whose process is gone", cleared)
            if self.size_limit is not None:
                self._index.set_setting("size_limit", str(self.size_limit))
        except (OSError, sqlite3.Error) as error:
            self._index = None
            reason = error.strerror if isinstance(error, OSError) else str(error)
            return f"cache directory {self.root} cannot be used ({reason}); reading without a cache"
        return None

    def close(self) -> None:
        if self._index is not None:
            with contextlib.suppress(sqlite3.Error):
                self._index.close()
            self._index = None

    def _scan_and_clean(self) -> dict[PieceKey, tuple[int, float]]:
        """Every piece file on disk with its (disk size, mtime); removes temporary files of dead processes.

        Another mount may evict pieces (and remove directories) while this scans: what vanishes is skipped."""
        found: dict[PieceKey, tuple[int, float]] = {}
        for prefix in _entries(self._pieces_dir):
            for obj in _entries(prefix.path):
                for entry in _entries(obj.path):
                    key = PieceKey.from_file_name(obj.name, entry.name)
                    if key is not None:
                        try:
                            info = entry.stat()
                        except FileNotFoundError:
                            continue
                        found[key] = (disk_size(info.st_size), info.st_mtime)
                    elif entry.name.endswith(".tmp") and not _writer_alive(entry.name):
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
        return found

    def _object_dir(self, object_id: str) -> Path:
        return self._pieces_dir / object_id[:2] / object_id

    def _piece_path(self, key: PieceKey) -> Path:
        return self._object_dir(key.object_id) / key.file_name

    def _exists(self, key: PieceKey) -> bool:
        try:
            return self._piece_path(key).exists()
        except OSError:  # e.g. a directory this user cannot search
            return False

    def read(self, key: PieceKey, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` inside a cached piece, or None if it is not (validly) cached."""
        if self._index is None:
            return None
        path = self._piece_path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except OSError as error:
            log.warning("cache: cannot open %s: %s", path, error.strerror)
            self.stats.misses += 1
            return None
        try:
            crcs = blockfile.parse_header(os.pread(fd, blockfile.header_size(key.length), 0), key.length)
            chunks = blockfile.chunks_for(offset, length)
            chunk_start = chunks.start * blockfile.CHUNK_SIZE
            chunk_stop = min(chunks.stop * blockfile.CHUNK_SIZE, key.length)
            data = os.pread(fd, chunk_stop - chunk_start, blockfile.header_size(key.length) + chunk_start)
            if len(data) != chunk_stop - chunk_start:
                raise blockfile.CorruptBlock("file truncated")
            blockfile.verify_chunks(crcs, chunks.start, data)
        except blockfile.CorruptBlock as error:
            self._drop_corrupt(key, str(error))
            return None
        except OSError as error:
            log.warning("cache: cannot read %s: %s", path, error.strerror)
            self.stats.misses += 1
            return None
        finally:
            os.close(fd)
        self.stats.hits += 1
        with contextlib.suppress(sqlite3.Error):
            self._index.touch(key)
        skip = offset - chunk_start
        return data[skip : skip + length]

    def will_need(self, keys: Sequence[PieceKey]) -> None:
        """Ask the kernel to start reading these pieces' files into its page cache: a stream is about to read
        them, and ``read`` (on the event loop) then finds them there instead of waiting for the disk. Blocks
        on opening the files (call it in a thread); a piece that is gone is skipped."""
        for key in keys:
            try:
                fd = os.open(self._piece_path(key), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # a filesystem without readahead: reads just wait for the disk
            finally:
                os.close(fd)

    def contains(self, key: PieceKey) -> bool:
        """Whether a piece file exists (not verified: a cheap test for readahead planning)."""
        return self._index is not None and self._exists(key)

    def _drop_corrupt(self, key: PieceKey, reason: str) -> None:
        self.stats.corrupt_blocks += 1
        self.stats.misses += 1
        log.warning("cache: dropping corrupt piece %s (%s); it will be fetched again", self._piece_path(key), reason)
        self._forget([key])

    def write(self, key: PieceKey, data: memoryview, describe: dict[str, object]) -> bool:
        """Store one piece and account for it: ``store_files`` and ``record`` in one step."""
        if not self.accepts_writes():
            return False
        try:
            written = self.store_files([(key, data)])
        except OSError as error:
            self.write_failed(error)
            return False
        return self.record(written, describe)

    def accepts_writes(self) -> bool:
        return self._index is not None and time.monotonic() >= self._writes_paused_until

    def store_files(self, pieces: list[tuple[PieceKey, memoryview]]) -> dict[PieceKey, int]:
        """Write piece files atomically; returns each piece's size on disk. Raises OSError.

        Touches only the filesystem, so it may run in a worker thread: checksumming and copying 1 MiB costs
        ~0.6 ms of CPU that then overlaps with the event loop."""
        written: dict[PieceKey, int] = {}
        for key, data in pieces:
            if len(data) != key.length:
                raise ValueError(f"piece {key} given {len(data)} bytes")
            directory = str(self._object_dir(key.object_id))
            path = f"{directory}/{key.file_name}"
            # Unique without a syscall: pid for other processes, a token for other caches of this process (two
            # engines on one directory: the model-based test found their counters colliding, EEXIST), a counter
            # for this cache's threads.
            number = next(self._temporary_names)
            temporary = f"{directory}/.{key.file_name}.{os.getpid()}.{self._writer_token}-{number}.tmp"
            header = blockfile.encode_header(data)
            for attempt in range(3):
                try:
                    _write_atomically(path, temporary, header, data)
                    break
                except FileNotFoundError:
                    # First piece of this object, or its directory was just removed (`cache clear`, or a
                    # drop of its version racing this write: found by the model-based test).
                    if attempt == 2:
                        raise
                    os.makedirs(directory, exist_ok=True)
            written[key] = disk_size(len(header) + len(data))
        return written

    def record(self, written: dict[PieceKey, int], describe: dict[str, object]) -> bool:
        """Account for pieces ``store_files`` wrote (of one object, ``describe``), evicting to stay within the
        limit (event-loop thread)."""
        if self._index is None or not written:
            return False
        try:
            evicted = self._index.add_pieces(written, self.size_limit)
            for object_id in {key.object_id for key in written} - self._described:
                self._index.describe(object_id, describe)
                self._described.add(object_id)
        except sqlite3.Error as error:
            self._unlink(list(written), evicted=False)  # unaccounted bytes must not stay on disk
            self.write_failed(error)
            return False
        self._unlink(evicted)
        self.stats.blocks_written += len(written)
        self.stats.bytes_written += sum(written.values())
        if self._writes_paused_until:
            log.warning("cache: writing blocks to %s again", self.root)
            self._writes_paused_until = 0.0
        return True

    def drop_object(self, object_id: str) -> int:
        """Delete every cached piece of an object (a version that changed, or `cache clear`); returns how many."""
        keys = self._pieces_of(object_id)
        if keys is None or self._index is None:
            # Left to the LRU: the pieces cannot be served for another version, the object id names the version.
            return 0
        self._forget(keys)
        with contextlib.suppress(sqlite3.Error):
            self._index.forget_object(object_id)
        self._described.discard(object_id)
        with contextlib.suppress(OSError):
            self._object_dir(object_id).rmdir()
        return len(keys)

    def cached_bytes(self, object_id: str) -> int:
        """Bytes of an object held on disk, as the index knows them: pieces of several sizes may overlap (a
        4 KiB page inside a block), each byte counts once. Pieces still being written are not in yet."""
        return sum(piece.length for piece in self.cached_ranges(object_id))

    def cached_ranges(self, object_id: str) -> list[ByteRange]:
        """The byte ranges of an object held on disk (sorted, disjoint), as the index knows them."""
        keys = self._pieces_of(object_id) or []
        return merged(ByteRange(key.start, key.stop) for key in keys)

    def _pieces_of(self, object_id: str) -> list[PieceKey] | None:
        """The object's pieces the index lists; None when there is no index or it cannot be read."""
        if self._index is None:
            return None
        try:
            return self._index.pieces_of(object_id)
        except sqlite3.Error as error:
            log.warning("cache: cannot find the pieces of %s: %s", object_id, error)
            return None

    def prune(self, limit: int) -> int:
        """Evict least recently used pieces until at most ``limit`` bytes remain; returns how many."""
        if self._index is None:
            return 0
        evicted = self._index.evict_to(limit)
        self._unlink(evicted)
        return len(evicted)

    def objects(self) -> list[ObjectUsage]:
        return [] if self._index is None else self._index.objects()

    def usage(self) -> int:
        return 0 if self._index is None else self._index.usage()

    def last_limit(self) -> int | None:
        """The size limit the most recent mount of this directory used."""
        value = None if self._index is None else self._index.setting("size_limit")
        return None if value is None else int(value)

    # Claims of pieces being fetched, shared with the other processes on this directory (claims.py) ----------

    def claim(self, keys: list[PieceKey], token: str, lease: float = CLAIM_LEASE) -> dict[PieceKey, PieceState]:
        """Claim pieces for a fetch by ``token``: each is OURS to fetch, CLAIMED by another live fetch (wait for
        it) or ON_DISK. Without a usable index every piece is OURS: the cache cannot coordinate, so fetch."""
        if self._index is None:
            return dict.fromkeys(keys, PieceState.OURS)
        try:
            return self._index.claim_pieces(keys, token, lease)
        except sqlite3.Error as error:
            log.warning("cache: cannot claim pieces: %s", error)
            return dict.fromkeys(keys, PieceState.OURS)

    def piece_states(self, keys: list[PieceKey]) -> dict[PieceKey, PieceState]:
        """ON_DISK, CLAIMED or FREE for each key (FREE when the index cannot tell: the caller claims and fetches)."""
        if self._index is None:
            return dict.fromkeys(keys, PieceState.FREE)
        try:
            return self._index.piece_states(keys)
        except sqlite3.Error as error:
            log.warning("cache: cannot read claims: %s", error)
            return dict.fromkeys(keys, PieceState.FREE)

    def renew_claims(self, token: str, lease: float = CLAIM_LEASE) -> None:
        if self._index is not None:
            with contextlib.suppress(sqlite3.Error):  # a claim that runs out costs a duplicate fetch, no more
                self._index.renew_claims(token, lease)

    def release_claims(self, token: str, keys: list[PieceKey]) -> None:
        if self._index is not None and keys:
            with contextlib.suppress(sqlite3.Error):  # left to its lease
                self._index.release_claims(token, keys)

    def get_records(self, keys: list[str]) -> dict[str, tuple[str, float]]:
        """Small opaque records stored beside the pieces (the engine keeps probe results there)."""
        if self._index is None:
            return {}
        try:
            return self._index.get_records(keys)
        except sqlite3.Error as error:
            log.warning("cache: cannot read records: %s", error)
            return {}

    def put_records(self, records: dict[str, str]) -> None:
        if self._index is not None and records:
            try:
                self._index.put_records(records)
            except sqlite3.Error as error:
                log.warning("cache: cannot store %d records: %s", len(records), error)

    def _forget(self, keys: list[PieceKey]) -> None:
        """Remove pieces from the index first, then from disk (see index.py for why in this order)."""
        if self._index is not None:
            with contextlib.suppress(sqlite3.Error):
                self._index.remove_pieces(keys)
        self._unlink(keys, evicted=False)

    def _unlink(self, keys: list[PieceKey], *, evicted: bool = True) -> None:
        for key in keys:
            try:
                self._piece_path(key).unlink()
            except FileNotFoundError:
                pass
            except OSError as error:  # EROFS, EACCES: the file stays; its object id keeps it from misuse
                if not self._unlink_failure_logged:
                    log.warning("cache: cannot delete %s: %s", self._piece_path(key), error.strerror)
                    self._unlink_failure_logged = True
        if evicted:
            self.stats.blocks_evicted += len(keys)

    def write_failed(self, error: OSError | sqlite3.Error) -> None:
        """Pause writes after the disk refused one (logged once per pause)."""
        self.stats.write_failures += 1
        if not self._writes_paused_until:  # the first failure of a pause is logged
            full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = "disk full" if full else (error.strerror if isinstance(error, OSError) else str(error))
            log.warning(
                "cache: cannot write to %s (%s); serving from the network uncached, retrying in %.0f s",
                self.root,
                reason,
                _RETRY_WRITES_AFTER,
            )
        self._writes_paused_until = time.monotonic() + _RETRY_WRITES_AFTER


def _entries(path: str | Path) -> list[os.DirEntry[str]]:
    """The subdirectories and files of ``path``; none when it vanished (another mount evicted it)."""
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _writer_alive(temporary_name: str) -> bool:
    """Temporary files are named ``.INDEX.PID.RANDOM.tmp``: is that process still running?"""
    try:
        pid = int(temporary_name.split(".")[2])
        os.kill(pid, 0)
    except (IndexError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _write_atomically(path: str, temporary: str, header: bytes, data: memoryview) -> None:
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            written = os.writev(fd, [header, data])
            if written < len(header) + len(data):  # short writes happen only near a full disk
                rest = (header + bytes(data))[written:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
