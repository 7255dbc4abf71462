"""BlockCache: blocks on disk, one file per block, written atomically and verified on every read.

Layout: ``ROOT/blocks/ab/abcdef.../<index>``, where ``abcdef...`` is the object id (a hash of URL, validator and
size, computed by the caller), and ``object.json`` in the same directory says which URL it was, for humans
and ``rangefs cache info``.

Crash safety comes from write ordering and checksums, not fsync (an fsync per block costs 1.2-1.7 ms and
halves throughput, STACK.md): a block is written to a temporary file and renamed into place, so a reader sees
either no file or a whole one; if a crash loses data that was renamed but never reached the disk, the
chunk CRCs catch it and the block is dropped and fetched again.

All methods are synchronous: page-cache reads and writes are faster inline than through a thread (STACK.md),
and nothing here waits on the network.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from rangefs.cache import blockfile

log = logging.getLogger(__name__)

# After a write fails for lack of space or permission, try again this many seconds later rather than on
# every block (each failure costs a syscall and would flood the log).
_RETRY_WRITES_AFTER = 30.0


@dataclass
class CacheStatistics:
    hits: int = 0
    misses: int = 0
    corrupt_blocks: int = 0
    blocks_written: int = 0
    bytes_written: int = 0
    write_failures: int = 0


class BlockCache:
    """Blocks keyed by (object id, block index) under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blocks_dir = self.root / "blocks"
        self._known_dirs: set[str] = set()
        self._writes_paused_until = 0.0
        self.stats = CacheStatistics()

    def __repr__(self) -> str:
        return f"<BlockCache {self.root} {self.stats}>"

    def statistics(self) -> CacheStatistics:
        return self.stats

    def check_writable(self) -> str | None:
        """None if blocks can be stored, else why not (the mount still works, uncached)."""
        try:
            self._blocks_dir.mkdir(parents=True, exist_ok=True)
            probe = self._blocks_dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            return f"cache directory {self.root} is not writable ({error.strerror}); reading without a cache"
        return None

    def _object_dir(self, object_id: str) -> Path:
        return self._blocks_dir / object_id[:2] / object_id

    def read(self, object_id: str, index: int, block_length: int, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` inside a cached block, or None if it is not (validly) cached."""
        path = self._object_dir(object_id) / str(index)
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
            self._drop_corrupt(path, str(error))
            return None
        except OSError as error:
            log.warning("cache: cannot read %s: %s", path, error.strerror)
            self.stats.misses += 1
            return None
        finally:
            os.close(fd)
        self.stats.hits += 1
        skip = offset - chunk_start
        return data[skip : skip + length]

    def contains(self, object_id: str, index: int) -> bool:
        """Whether a block file exists (not verified: a cheap test for readahead planning)."""
        return (self._object_dir(object_id) / str(index)).exists()

    def _drop_corrupt(self, path: Path, reason: str) -> None:
        self.stats.corrupt_blocks += 1
        self.stats.misses += 1
        log.warning("cache: dropping corrupt block %s (%s); it will be fetched again", path, reason)
        with contextlib.suppress(OSError):
            path.unlink()

    def write(self, object_id: str, index: int, data: memoryview, describe: dict[str, object]) -> bool:
        """Store a block atomically; False (logged once per pause) when the disk refuses."""
        if time.monotonic() < self._writes_paused_until:
            return False
        directory = self._object_dir(object_id)
        try:
            if object_id not in self._known_dirs:
                self._create_object_dir(directory, describe)
                self._known_dirs.add(object_id)
            _write_atomically(directory / str(index), blockfile.encode_header(data), data)
        except OSError as error:
            self._pause_writes(error)
            return False
        self.stats.blocks_written += 1
        self.stats.bytes_written += len(data)
        if self._writes_paused_until:
            log.warning("cache: writing blocks to %s again", self.root)
            self._writes_paused_until = 0.0
        return True

    def _create_object_dir(self, directory: Path, describe: dict[str, object]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        info = directory / "object.json"
        if not info.exists():
            _write_atomically(info, json.dumps(describe, sort_keys=True).encode(), memoryview(b""))

    def _pause_writes(self, error: OSError) -> None:
        self.stats.write_failures += 1
        if not self._writes_paused_until:
            reason = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror
            log.warning(
                "cache: cannot write to %s (%s); serving from the network uncached, retrying in %.0f s",
                self.root,
                reason,
                _RETRY_WRITES_AFTER,
            )
        self._writes_paused_until = time.monotonic() + _RETRY_WRITES_AFTER


def _write_atomically(path: Path, header: bytes, data: memoryview) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_all(fd, header)
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
