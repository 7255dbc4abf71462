"""Where ``rangefs get`` puts bytes: a file, written under a partial name until verified, or stdout.

A file download writes ``NAME.rangefs-part`` wherever its connections' bytes belong and, every
``_CHECKPOINT_BYTES``, makes what it wrote durable (fsync) and records which byte ranges that is in
``NAME.rangefs-part.json`` (URL, version, size, ranges done; replaced atomically). A later run for the same
URL finds that record and, if the origin still has the same version, fetches only the rest. Only a complete
download whose digest matched (when one was given) is renamed to NAME, so a file at NAME is always complete;
NAME existing already is refused without ``--force``.

A digest mismatch removes the partial file: its bytes are the origin's, but not what the user asked for.
Any other failure (network, disk full, Ctrl-C) keeps it, resumable.

The methods here block (disk I/O, hashing). ``write_at`` of a file is a pwrite into the page cache, done
where the bytes arrive; the rest runs in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rangefs.errors import DownloadError
from rangefs.ranges import ByteRange, merged
from rangefs.remote import RemoteMetadata

PART_SUFFIX = ".rangefs-part"
# Bytes between two durable checkpoints of a partial file (the download also checkpoints every few seconds):
# an fsync per 64 MiB costs ~0.1 s at disk speed, a crash loses at most that much of the output.
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
    """Where one download's bytes go. ``open`` says which bytes it has already (a resumed partial file);
    ``write_at`` puts bytes at their offset (a stream takes them only in order); ``checkpoint`` makes what is
    ``done`` durable when ``checkpoint_due``; ``abort`` keeps what is done for a later run."""

    name: str
    random_access: bool  # write_at may go anywhere (a file), not only on from the last byte (a stream)

    def open(self, metadata: RemoteMetadata) -> list[ByteRange]: ...

    def write_at(self, offset: int, data: bytes | memoryview) -> None: ...

    @property
    def checkpoint_due(self) -> bool: ...

    def checkpoint(self, done: list[ByteRange]) -> None: ...

    def finish(self) -> None: ...

    def abort(self, done: list[ByteRange]) -> None: ...


class _Hasher:
    def __init__(self, digest: Digest | None) -> None:
        self.digest = digest
        self._hash = digest.new() if digest else None

    def update(self, data: bytes | memoryview) -> None:
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

    random_access = True

    def __init__(self, path: Path, *, force: bool, digest: Digest | None) -> None:
        self.path = path
        self.name = str(path)
        self.partial = path.with_name(path.name + PART_SUFFIX)
        self.record = path.with_name(path.name + PART_SUFFIX + ".json")
        self._force = force
        self._digest = digest
        self._fd: int | None = None
        self._metadata: RemoteMetadata | None = None
        self._unrecorded = 0  # bytes written since the last checkpoint
        self._fsync_failed = False

    def check(self) -> None:
        """Refuse an output that exists (unless forced) or whose directory does not; before any request."""
        if self.path.is_dir():
            raise DownloadError(f"{self.path} is a directory")
        if self.path.exists() and not self._force:
            raise DownloadError(f"{self.path} exists; use --force to replace it")
        if not self.path.parent.is_dir():
            raise DownloadError(f"directory {self.path.parent} does not exist")

    def open(self, metadata: RemoteMetadata) -> list[ByteRange]:
        """Open the partial file; the bytes a record of the same version says it holds, else none."""
        self._metadata = metadata
        try:
            self._fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as error:
            raise DownloadError(f"cannot write {self.partial}: {error.strerror}") from None
        try:
            # Two runs writing one partial file would rename a mix of their bytes into place.
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._close()
            raise DownloadError(f"{self.partial} is being written by another rangefs get") from None
        done = self._resumable(metadata)
        try:
            if not done:
                os.ftruncate(self._fd, 0)
        except OSError as error:
            raise DownloadError(f"cannot write {self.partial}: {error.strerror}") from None
        return done

    def _resumable(self, metadata: RemoteMetadata) -> list[ByteRange]:
        try:
            record = json.loads(self.record.read_text())
            if record["object_id"] != metadata.object_id or record["size"] != metadata.size:
                return []
            done = merged(ByteRange(int(start), int(stop)) for start, stop in record["done"])
            if done and (done[-1].stop > metadata.size or self.partial.stat().st_size < done[-1].stop):
                return []
            return done
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as error:
            raise DownloadError(f"cannot write {self.partial}: {error.strerror}; run again to resume") from None
        self._unrecorded += len(data)

    @property
    def checkpoint_due(self) -> bool:
        return self._unrecorded >= _CHECKPOINT_BYTES

    def checkpoint(self, done: list[ByteRange]) -> None:
        """Make the ``done`` bytes durable (fsync), then record them: a crash loses at most what came since."""
        assert self._fd is not None and self._metadata is not None
        if self._fsync_failed:
            # Linux reports a failed writeback once: a second fsync "succeeds" with the pages lost. The last
            # record written stays the last word.
            raise OSError(errno.EIO, "an earlier fsync failed; not recording more", str(self.partial))
        self._unrecorded = 0  # reset here, counted in the event loop's thread: at worst a checkpoint early
        try:
            os.fsync(self._fd)
        except OSError:
            self._fsync_failed = True
            raise
        record = {
            "url": self._metadata.url,
            "object_id": self._metadata.object_id,
            "size": self._metadata.size,
            "done": [[piece.start, piece.stop] for piece in merged(done)],
        }
        temporary = self.record.with_name(self.record.name + ".tmp")
        with open(temporary, "w") as written:
            written.write(json.dumps(record))
            written.flush()
            os.fsync(written.fileno())  # or a crash can leave an empty record in place of the last good one
        temporary.replace(self.record)

    def finish(self) -> None:
        """Verify, make durable and rename into place; a mismatch removes the partial file."""
        assert self._fd is not None and self._metadata is not None
        try:
            os.ftruncate(self._fd, self._metadata.size)  # a file ending in a hole of zeros is not a short one
            problem = self._mismatch()
        except OSError as error:
            raise DownloadError(f"cannot read back {self.partial}: {error.strerror}") from None
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

    def _mismatch(self) -> str | None:
        """The digest checked over the whole file, read back: its parts were written in any order (the
        page cache still holds them, so this costs the hash, not a disk read)."""
        if self._digest is None:
            return None
        hasher = _Hasher(self._digest)
        with open(self.partial, "rb") as written:
            while data := written.read(_HASH_READ):
                hasher.update(data)
        return hasher.mismatch()

    def abort(self, done: list[ByteRange]) -> None:
        """Keep what was written as a resumable partial download."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.checkpoint(done)
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
        self._position = 0

    def check(self) -> None:
        pass

    def open(self, metadata: RemoteMetadata) -> list[ByteRange]:
        return []

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        if offset != self._position:
            raise ValueError(f"a stream is written in order: {offset} is not {self._position}")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except BrokenPipeError:
            raise  # the reader went away (| head): the caller stops quietly
        except OSError as error:
            raise DownloadError(f"cannot write to standard output: {error.strerror}") from None
        self._hasher.update(data)
        self._position += len(data)

    random_access = False
    checkpoint_due = False

    def checkpoint(self, done: list[ByteRange]) -> None:
        pass

    def finish(self) -> None:
        problem = self._hasher.mismatch()
        if problem:
            raise DownloadError(problem)

    def abort(self, done: list[ByteRange]) -> None:
        pass
