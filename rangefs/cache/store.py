"""BlockCache: blocks on disk, one file per block, written atomically, verified on every read, bounded in size.

Layout: ``ROOT/blocks/ab/abcdef.../<index>``, where ``abcdef...`` is the object id (a hash of URL, validator and
size, computed by the caller), and ``ROOT/index.sqlite3`` (see index.py) with sizes, last-use times and
descriptions, shared by every process using ROOT.

Crash safety comes from write ordering and checksums, not fsync (an fsync per block costs 1.2-1.7 ms and
halves throughput, STACK.md): a block is written to a temporary file and renamed into place, so a reader sees
either no file or a whole one; if a crash loses data that was renamed but never reached the disk, the
chunk CRCs catch it and the block is dropped and fetched again. Temporary files of dead processes are
removed, and the index is reconciled with the files, when a cache is opened.

The size limit is hard: a block is counted as soon as it is written, and the least recently used blocks are
deleted in the same step, so the directory exceeds the limit by at most the blocks being written.

All methods are synchronous: page-cache reads and writes are faster inline than through a thread (STACK.md),
and nothing here waits on the network.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rangefs.cache import blockfile
from rangefs.cache.index import BlockKey, CacheIndex, ObjectUsage

log = logging.getLogger(__name__)

# After a write fails for lack of space or permission, try again this many seconds later rather than on
# every block (each failure costs a syscall and would flood the log).
_RETRY_WRITES_AFTER = 30.0
# Space is accounted in filesystem blocks, as du counts it.
_DISK_BLOCK = 4096
# A piece of a block (one 64 KiB chunk, fetched alone for a small random read) is stored under a negative
# index: -(block * _CHUNKS_PER_BLOCK + chunk) - 1, in a file named "BLOCK@CHUNK". Blocks hold at most 1,024.
_CHUNKS_PER_BLOCK = 1024


def chunk_key(block: int, chunk: int) -> int:
    """The cache index of one chunk of a block, stored apart from the whole block."""
    return -(block * _CHUNKS_PER_BLOCK + chunk) - 1


def _piece_name(index: int) -> str:
    if index >= 0:
        return str(index)
    block, chunk = divmod(-index - 1, _CHUNKS_PER_BLOCK)
    return f"{block}@{chunk}"


def _piece_index(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    block, at, chunk = name.partition("@")
    return chunk_key(int(block), int(chunk)) if at and block.isdigit() and chunk.isdigit() else None


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


def disk_size(file_size: int) -> int:
    return -(-file_size // _DISK_BLOCK) * _DISK_BLOCK


class BlockCache:
    """Blocks keyed by (object id, block index) under ``root``, at most ``size_limit`` bytes (None: unbounded)."""

    def __init__(self, root: Path, *, size_limit: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self._clock = clock
        self.size_limit = size_limit
        self._blocks_dir = self.root / "blocks"
        self._index: CacheIndex | None = None
        self._described: set[str] = set()
        self._writes_paused_until = 0.0
        self._temporary_names = itertools.count()
        self.stats = CacheStatistics(limit_bytes=size_limit or 0)

    def __repr__(self) -> str:
        return f"<BlockCache {self.root} {self.stats}>"

    def statistics(self) -> CacheStatistics:
        if self._index is not None:
            with contextlib.suppress(sqlite3.Error):
                self.stats.usage_bytes = self._index.usage()
        return self.stats

    def open(self) -> str | None:
        """Prepare the directory and index; None when ready, else why the mount must run uncached."""
        try:
            self._blocks_dir.mkdir(parents=True, exist_ok=True)
            probe = self._blocks_dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            self._index = CacheIndex(self.root / "index.sqlite3", self._clock)
            self._unlink(self._index.reconcile(self._scan_and_clean(), self.size_limit))
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

    def _scan_and_clean(self) -> dict[BlockKey, tuple[int, float]]:
        """Every block file on disk with its (disk size, mtime); removes temporary files of dead processes."""
        found: dict[BlockKey, tuple[int, float]] = {}
        for prefix in os.scandir(self._blocks_dir):
            if not prefix.is_dir():
                continue
            for obj in os.scandir(prefix.path):
                if not obj.is_dir():
                    continue
                for entry in os.scandir(obj.path):
                    index = _piece_index(entry.name)
                    if index is not None:
                        info = entry.stat()
                        found[(obj.name, index)] = (disk_size(info.st_size), info.st_mtime)
                    elif entry.name.endswith(".tmp") and not _writer_alive(entry.name):
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
        return found

    def _object_dir(self, object_id: str) -> Path:
        return self._blocks_dir / object_id[:2] / object_id

    def _block_path(self, key: BlockKey) -> Path:
        return self._object_dir(key[0]) / _piece_name(key[1])

    def read(self, object_id: str, index: int, block_length: int, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` inside a cached block, or None if it is not (validly) cached."""
        if self._index is None:
            return None
        path = self._block_path((object_id, index))
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
            crcs = blockfile.parse_header(os.pread(fd, blockfile.header_size(block_length), 0), block_length)
            chunks = blockfile.chunks_for(offset, length)
            chunk_start = chunks.start * blockfile.CHUNK_SIZE
            chunk_stop = min(chunks.stop * blockfile.CHUNK_SIZE, block_length)
            data = os.pread(fd, chunk_stop - chunk_start, blockfile.header_size(block_length) + chunk_start)
            if len(data) != chunk_stop - chunk_start:
                raise blockfile.CorruptBlock("file truncated")
            blockfile.verify_chunks(crcs, chunks.start, data)
        except blockfile.CorruptBlock as error:
            self._drop_corrupt((object_id, index), str(error))
            return None
        except OSError as error:
            log.warning("cache: cannot read %s: %s", path, error.strerror)
            self.stats.misses += 1
            return None
        finally:
            os.close(fd)
        self.stats.hits += 1
        with contextlib.suppress(sqlite3.Error):
            self._index.touch((object_id, index))
        skip = offset - chunk_start
        return data[skip : skip + length]

    def contains(self, object_id: str, index: int) -> bool:
        """Whether a block file exists (not verified: a cheap test for readahead planning)."""
        return self._index is not None and self._block_path((object_id, index)).exists()

    def _drop_corrupt(self, key: BlockKey, reason: str) -> None:
        self.stats.corrupt_blocks += 1
        self.stats.misses += 1
        log.warning("cache: dropping corrupt block %s (%s); it will be fetched again", self._block_path(key), reason)
        self._forget([key])

    def write(self, object_id: str, index: int, data: memoryview, describe: dict[str, object]) -> bool:
        """Store one block and account for it: ``store_files`` and ``record`` in one step."""
        if not self.accepts_writes():
            return False
        try:
            written = self.store_files(object_id, [(index, data)])
        except OSError as error:
            self.write_failed(error)
            return False
        return self.record(object_id, written, describe)

    def accepts_writes(self) -> bool:
        return self._index is not None and time.monotonic() >= self._writes_paused_until

    def store_files(self, object_id: str, blocks: list[tuple[int, memoryview]]) -> dict[int, int]:
        """Write block files atomically; returns each block's size on disk. Raises OSError.

        Touches only the filesystem, so it may run in a worker thread: checksumming and copying 1 MiB costs
        ~0.6 ms of CPU that then overlaps with the event loop."""
        written: dict[int, int] = {}
        directory = str(self._object_dir(object_id))
        for index, data in blocks:
            name = _piece_name(index)
            path = f"{directory}/{name}"
            # Unique without a syscall: pid for other processes, a counter for this one's threads.
            temporary = f"{directory}/.{name}.{os.getpid()}.{next(self._temporary_names)}.tmp"
            header = blockfile.encode_header(data)
            try:
                _write_atomically(path, temporary, header, data)
            except FileNotFoundError:  # first block of this object, or `cache clear` removed its directory
                os.makedirs(directory, exist_ok=True)
                _write_atomically(path, temporary, header, data)
            written[index] = disk_size(len(header) + len(data))
        return written

    def record(self, object_id: str, written: dict[int, int], describe: dict[str, object]) -> bool:
        """Account for blocks ``store_files`` wrote, evicting to stay within the limit (event-loop thread)."""
        if self._index is None:
            return False
        keys = {(object_id, index): size for index, size in written.items()}
        try:
            evicted = self._index.add_blocks(keys, self.size_limit)
            if object_id not in self._described:
                self._index.describe(object_id, describe)
                self._described.add(object_id)
        except sqlite3.Error as error:
            self._unlink(list(keys), evicted=False)  # unaccounted bytes must not stay on disk
            self.write_failed(error)
            return False
        self._unlink(evicted)
        self.stats.blocks_written += len(keys)
        self.stats.bytes_written += sum(written.values())
        if self._writes_paused_until:
            log.warning("cache: writing blocks to %s again", self.root)
            self._writes_paused_until = 0.0
        return True

    def drop_object(self, object_id: str) -> int:
        """Delete every cached block of an object (a version that changed, or `cache clear`); returns how many."""
        if self._index is None:
            return 0
        keys = self._index.blocks_of(object_id)
        self._forget(keys)
        self._index.forget_object(object_id)
        self._described.discard(object_id)
        with contextlib.suppress(OSError):
            self._object_dir(object_id).rmdir()
        return len(keys)

    def prune(self, limit: int) -> int:
        """Evict least recently used blocks until at most ``limit`` bytes remain; returns how many."""
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

    def get_records(self, keys: list[str]) -> dict[str, tuple[str, float]]:
        """Small opaque records stored beside the blocks (the engine keeps probe results there)."""
        if self._index is None:
            return {}
        try:
            return self._index.get_records(keys)
        except sqlite3.Error as error:
            log.warning("cache: cannot read records: %s", error)
            return {}

    def put_record(self, key: str, value: str) -> None:
        if self._index is not None:
            try:
                self._index.put_record(key, value)
            except sqlite3.Error as error:
                log.warning("cache: cannot store a record: %s", error)

    def _forget(self, keys: list[BlockKey]) -> None:
        """Remove blocks from the index first, then from disk (see index.py for why in this order)."""
        if self._index is not None:
            with contextlib.suppress(sqlite3.Error):
                self._index.remove_blocks(keys)
        self._unlink(keys, evicted=False)

    def _unlink(self, keys: list[BlockKey], *, evicted: bool = True) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self._block_path(key).unlink()
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
