"""RemoteFile: a remote file as a seekable binary file object (``io.BufferedReader`` over ``RawRemoteFile``).

Every raw read is a call into the session's loop thread (session.py), so reads go through a buffer. Its size,
32 KiB, is the engine's limit for a sparse read: a small read at a random offset (a zip header, a SQLite page)
fills the buffer with one 32 KiB raw read, which fetches only the 64 KiB chunk(s) it touches, while a read of
more than the buffer passes straight to the raw file in one call. Sequential readers are recognised by the
engine's access pattern and read ahead as through a mount.

Thread safety: ``io.BufferedReader`` serialises reads and seeks on one object with its own lock (the position
is shared, as for any file object); ``pread`` reads at an offset without touching the position, so threads
sharing one object can read independent ranges at once.
"""

from __future__ import annotations

import contextlib
import io
import threading
from typing import TYPE_CHECKING

from rangefs.library.asession import AsyncRemoteFile, seek_position

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from rangefs.library.session import Session

DEFAULT_BUFFER_SIZE = 32 * 1024


class RawRemoteFile(io.RawIOBase):
    """Unbuffered reads of a remote file opened in a Session; each read is one call into its loop."""

    def __init__(self, session: Session, opened: AsyncRemoteFile) -> None:
        super().__init__()
        self._session = session
        self._opened = opened
        self._position = 0
        self._lock = threading.Lock()  # the position, for callers that use the raw file directly

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"at {self._position}"
        return f"<RawRemoteFile {self.name} {self.size} bytes, {state}>"

    @property
    def name(self) -> str:
        return self._opened.url

    @property
    def mode(self) -> str:
        return "rb"

    @property
    def size(self) -> int:
        return self._opened.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        with self._lock:
            data = self.pread(len(view), self._position)
            view[: len(data)] = data
            self._position += len(data)
        return len(data)

    def readall(self) -> bytes:
        with self._lock:
            data = self.pread(max(0, self.size - self._position), self._position)
            self._position += len(data)
        return data

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at end of file); the position does not move."""
        if self.closed:
            raise ValueError("read of closed file")
        return self._session.call(self._opened.read_at, offset, size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("seek of closed file")
        with self._lock:
            self._position = seek_position(self._position, self.size, offset, whence)
            return self._position

    def tell(self) -> int:
        if self.closed:
            raise ValueError("tell of closed file")
        return self._position

    def prefetch(self, offset: int, length: int) -> None:
        """Fetch ``length`` bytes at ``offset`` into the cache in the background; returns at once."""
        if self.closed:
            raise ValueError("prefetch of closed file")
        self._session.call_nowait(self._opened.prefetch, offset, length)

    def close(self) -> None:
        if not self.closed:
            # A closed session (or a loop gone at exit) has released the handle itself.
            with contextlib.suppress(ValueError, RuntimeError):
                self._session.call_nowait(self._opened.close_nowait)
        super().close()


class RemoteFile(io.BufferedReader):
    """What ``rangefs.open`` returns: a buffered, seekable, read-only binary file of one remote version.

    Besides the ``io.BufferedReader`` methods: ``size``, ``url``, ``pread(size, offset)`` and
    ``prefetch(offset, length)``."""

    raw: RawRemoteFile

    def __init__(self, raw: RawRemoteFile, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
        super().__init__(raw, buffer_size)

    def __repr__(self) -> str:
        return f"<RemoteFile {self.raw!r}>"

    @property
    def url(self) -> str:
        return self.raw.name

    @property
    def size(self) -> int:
        """Size in bytes of the version opened."""
        return self.raw.size

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset``, without moving (or using) the position: safe from any thread."""
        return self.raw.pread(size, offset)

    def prefetch(self, offset: int, length: int) -> None:
        """Fetch ``length`` bytes at ``offset`` into the cache in the background (as
        async_http_range_reader's ``prefetch``), within the session's readahead budget; returns at once.
        Closing the file cancels what is still in flight."""
        self.raw.prefetch(offset, length)
