"""Where ``rangefs get`` puts bytes: a file, written under a partial name until verified, or stdout.

A file download writes ``NAME.rangefs-part`` in order and, every ``_CHECKPOINT_BYTES``, makes what it wrote
durable (fsync) and records it in ``NAME.rangefs-part.json`` (URL, version, size, bytes done; replaced
atomically). A later run for the same URL finds that record and, if the origin still has the same version,
goes on from there (the bytes before it come from the disk cache or the network either way; the partial file
saves re-writing them). Only a complete download whose digest matched (when one was given) is renamed to
NAME, so a file at NAME is always complete; NAME existing already is refused without ``--force``.

A digest mismatch removes the partial file: its bytes are the origin's, but not what the user asked for.
Any other failure (network, disk full, Ctrl-C) keeps it, resumable.

The methods here block (disk I/O, hashing); the transfer calls them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rangefs.errors import DownloadError
from rangefs.remote import RemoteMetadata

PART_SUFFIX = ".rangefs-part"
# Bytes between two durable checkpoints of a partial file: an fsync per 64 MiB costs ~0.1 s at disk speed,
# a crash loses at most that much of the output (the cache usually still has it).
_CHECKPOINT_BYTES = 64 * 1024 * 1024
_HASH_READ = 8 * 1024 * 1024


@dataclass(frozen=True)
class Digest:
    """An expected digest (``--sha256`` / ``--md5``)."""

    algorithm: str
    hexdigest: str

    def new(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


class Sink(Protocol):
    """Bytes of one download, in order; ``start`` says how many the sink already has."""

    name: str

    def open(self, metadata: RemoteMetadata) -> int: ...

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class _Hasher:
    def __init__(self, digest: Digest | None) -> None:
        self.digest = digest
        self._hash = digest.new() if digest else None

    def update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)

    def mismatch(self) -> str | None:
        """What was wrong, if the bytes do not have the expected digest."""
        if self._hash is None or self.digest is None:
            return None
        actual = self._hash.hexdigest()
        if actual == self.digest.hexdigest.lower():
            return None
        return f"{self.digest.algorithm} mismatch: expected {self.digest.hexdigest.lower()}, got {actual}"


class FileSink:
    """A download into ``path`` through its partial file (see the module docstring)."""

    def __init__(self, path: Path, *, force: bool, digest: Digest | None) -> None:
        self.path = path
        self.name = str(path)
        self.partial = path.with_name(path.name + PART_SUFFIX)
        self.record = path.with_name(path.name + PART_SUFFIX + ".json")
        self._force = force
        self._hasher = _Hasher(digest)
        self._fd: int | None = None
        self._metadata: RemoteMetadata | None = None
        self._done = 0
        self._checkpointed = 0

    def check(self) -> None:
        """Refuse an output that exists (unless forced) or whose directory does not; before any request."""
        if self.path.is_dir():
            raise DownloadError(f"{self.path} is a directory")
        if self.path.exists() and not self._force:
            raise DownloadError(f"{self.path} exists; use --force to replace it")
        if not self.path.parent.is_dir():
            raise DownloadError(f"directory {self.path.parent} does not exist")

    def open(self, metadata: RemoteMetadata) -> int:
        """Open the partial file; resume where a record of the same version says, else start at 0."""
        self._metadata = metadata
        start = self._resumable(metadata)
        try:
            self._fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(self._fd, start)
            os.lseek(self._fd, start, os.SEEK_SET)
            if start:
                self._hash_existing(start)
        except OSError as error:
            raise DownloadError(f"cannot write {self.partial}: {error.strerror}") from None
        self._done = self._checkpointed = start
        return start

    def _resumable(self, metadata: RemoteMetadata) -> int:
        try:
            record = json.loads(self.record.read_text())
            done = int(record["done"])
            same = record["object_id"] == metadata.object_id and record["size"] == metadata.size
            if same and 0 <= done <= metadata.size and self.partial.stat().st_size >= done:
                return done
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return 0

    def _hash_existing(self, length: int) -> None:
        with open(self.partial, "rb") as existing:
            remaining = length
            while remaining:
                data = existing.read(min(_HASH_READ, remaining))
                if not data:
                    raise OSError(errno.EIO, "partial file shorter than its record")
                self._hasher.update(data)
                remaining -= len(data)

    def write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._hasher.update(data)
            self._done += len(data)
            if self._done - self._checkpointed >= _CHECKPOINT_BYTES:
                self._checkpoint()
        except OSError as error:
            raise DownloadError(
                f"cannot write {self.partial}: {error.strerror}; run again to resume from {self._checkpointed} bytes"
            ) from None

    def _checkpoint(self) -> None:
        assert self._fd is not None and self._metadata is not None
        os.fsync(self._fd)
        record = {
            "url": self._metadata.url,
            "object_id": self._metadata.object_id,
            "size": self._metadata.size,
            "done": self._done,
        }
        temporary = self.record.with_name(self.record.name + ".tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(self.record)
        self._checkpointed = self._done

    def finish(self) -> None:
        """Verify, make durable and rename into place; a mismatch removes the partial file."""
        assert self._fd is not None
        problem = self._hasher.mismatch()
        if problem:
            self._close()
            self._remove_partial()
            raise DownloadError(f"{problem}; removed the download")
        try:
            os.fsync(self._fd)
            self._close()
            self.partial.replace(self.path)
        except OSError as error:
            raise DownloadError(f"cannot write {self.path}: {error.strerror}") from None
        self.record.unlink(missing_ok=True)

    def abort(self) -> None:
        """Keep what was written as a resumable partial download."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self._checkpoint()
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _remove_partial(self) -> None:
        self.partial.unlink(missing_ok=True)
        self.record.unlink(missing_ok=True)


class StreamSink:
    """In order to a file descriptor (stdout); nothing to resume in it, the disk cache has the bytes."""

    def __init__(self, fd: int, *, digest: Digest | None) -> None:
        self.name = "-"
        self._fd = fd
        self._hasher = _Hasher(digest)

    def check(self) -> None:
        pass

    def open(self, metadata: RemoteMetadata) -> int:
        return 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except BrokenPipeError:
            raise  # the reader went away (| head): the caller stops quietly
        except OSError as error:
            raise DownloadError(f"cannot write to standard output: {error.strerror}") from None
        self._hasher.update(data)

    def finish(self) -> None:
        problem = self._hasher.mismatch()
        if problem:
            raise DownloadError(problem)

    def abort(self) -> None:
        pass
