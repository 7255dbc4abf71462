"""AsyncSession and AsyncRemoteFile: remote files for trio code, on the engine a mount uses.

An AsyncSession is one engine stack (``stack.running_engine``: connection pool, block store, prefetcher,
readahead) over one opened BlockCache, running in the caller's trio loop until the session is closed. URLs are
added to the engine as they are first opened (``FileEngine.add``), once per (URL, headers), so a URL opened
twice shares its probe result, its cache identity and the engine's single flight per block. Every open pins
one version, as through a mount: a file that changed at the origin fails its reads (ESTALE) rather than mix
bytes of two versions.

This is the library's boundary: what the engine raises leaves as the OSError a file's user expects
(oserrors.py). The synchronous Session (session.py) drives one of these in a loop thread of its own.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any

import trio

from rangefs import stack
from rangefs.cache import BlockCache
from rangefs.config import Entry, MountSettings, name_from_url
from rangefs.engine import FileEngine
from rangefs.errors import RangesUnsupported
from rangefs.library.options import Headers, HeadersArg, check_url, headers_from, settings_from
from rangefs.library.oserrors import translated
from rangefs.ranges import ByteRange
from rangefs.remote import RemoteMetadata

log = logging.getLogger(__name__)


class AsyncSession:
    """One engine, connection pool and disk cache for every file opened through it (``async with``).

    Keyword options are those of ``rangefs.open`` (``cache_dir``, ``cache_size``, ``block_size``, ...);
    ``settings`` gives them all at once instead. Closing the session ends its fetches and closes its files.

    Attributes: ``engine`` is set between ``__aenter__`` and ``aclose``; ``_indices`` maps (URL, headers) to
    the engine's file index, one entry per file ever added (an engine never forgets a file).
    """

    def __init__(self, settings: MountSettings | None = None, **options: Any) -> None:
        self.settings = settings or settings_from(**options)
        self._engine: FileEngine | None = None
        self._exit = AsyncExitStack()
        self._indices: dict[tuple[str, Headers], int] = {}
        self._adding: dict[tuple[str, Headers], trio.Event] = {}
        self._files: set[AsyncRemoteFile] = set()

    def __repr__(self) -> str:
        state = "closed" if self._engine is None else f"{len(self._files)} open, {self._engine!r}"
        return f"<AsyncSession {self.settings.cache_dir} {state}>"

    @property
    def engine(self) -> FileEngine:
        if self._engine is None:
            raise ValueError("the session is not open (use 'async with', or it was closed)")
        return self._engine

    async def __aenter__(self) -> AsyncSession:
        cache = BlockCache(self.settings.cache_dir, size_limit=self.settings.cache_size)
        problem = cache.open()
        if problem:
            log.warning("%s", problem)  # the mount's rule: read from the network, without caching
        self._exit.callback(cache.close)
        try:
            self._engine = await self._exit.enter_async_context(stack.running_engine([], self.settings, cache))
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every file and stop the engine (its fetches are cancelled) and the cache."""
        for file in list(self._files):
            file.close_nowait()
        self._engine = None
        await self._exit.aclose()  # the engine stack lets fetched bytes reach the disk first (stack.py)

    async def file_index(self, url: str, headers: HeadersArg = None) -> int:
        """The engine's index of the file at ``url``, adding (and probing) it on first use."""
        index, _ = await self._file_index(url, headers)
        return index

    async def _file_index(self, url: str, headers: HeadersArg) -> tuple[int, bool]:
        """The index, and whether this call added the file (and so has just probed it)."""
        key = (check_url(url), headers_from(headers))
        added = False
        while key not in self._indices:
            adding = self._adding.get(key)
            if adding is not None:
                await adding.wait()  # another task is adding it; it may have been cancelled: look again
                continue
            self._adding[key] = done = trio.Event()
            try:
                name, _ = name_from_url(url)  # the name decides the format-aware prefetch
                entry = Entry(name or PurePosixPath("file"), url, 0, key[1])
                self._indices[key] = await self.engine.add(entry)
                added = True
            finally:
                del self._adding[key]
                done.set()
        return self._indices[key], added

    async def metadata(self, url: str, headers: HeadersArg = None) -> RemoteMetadata:
        """Size and version of ``url`` as an open would find them (revalidated when what is known is older
        than ``revalidate_after``, 1 s by default: one HEAD at most); OSError if that fails."""
        file = await self.open(url, headers=headers)
        file.close_nowait()
        return file.metadata

    async def open(self, url: str, *, headers: HeadersArg = None) -> AsyncRemoteFile:
        """Open ``url`` for reading (revalidated as a mount's open is); close it with ``aclose``."""
        index, added = await self._file_index(url, headers)
        with translated():
            failure = self.engine.files[index].failure
            if added and failure is not None:
                raise failure  # probed this very moment: the open would only probe again
            handle = await self.engine.open(index)
        metadata = self.engine.files[index].metadata
        assert metadata is not None
        file = AsyncRemoteFile(self, handle, metadata)
        self._files.add(file)
        return file

    async def read_range(self, url: str, start: int, stop: int, *, headers: HeadersArg = None) -> bytes:
        """Bytes ``start`` to ``stop`` of the current version of ``url`` (fewer past its end)."""
        file = await self.open(url, headers=headers)
        try:
            return await file.read_at(start, max(0, stop - start))
        finally:
            file.close_nowait()

    def _forget(self, file: AsyncRemoteFile) -> None:
        self._files.discard(file)
        if self._engine is not None:
            self._engine.release(file.handle)


class AsyncRemoteFile:
    """A remote file opened in an AsyncSession: ``await read(n)``, ``await seek(o)``, ``read_at``, ``prefetch``.

    The version is pinned at open: ``size`` is its size, and every read returns its bytes or raises OSError
    (ESTALE once the origin changed it). ``position`` is this object's own; ``read_at`` does not move it.
    """

    def __init__(self, session: AsyncSession, handle: int, metadata: RemoteMetadata) -> None:
        self._session = session
        self.handle = handle
        self.metadata = metadata
        self.position = 0
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"at {self.position}"
        return f"<AsyncRemoteFile {self.url} {self.size} bytes, {state}>"

    @property
    def url(self) -> str:
        return self.metadata.url

    @property
    def size(self) -> int:
        return self.metadata.size

    def _check_open(self) -> FileEngine:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return self._session.engine

    async def read_at(self, offset: int, size: int, *, readahead: bool = True) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at end of file); the position does not move.
        ``readahead=False``: the read starts no prefetch, whatever the reads before it were."""
        engine = self._check_open()
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        with translated():
            return await engine.read(self.handle, offset, size, readahead=readahead)

    @property
    def streams_whole(self) -> bool:
        """Whether the server ignores Range, so that the file can only be read front to back."""
        return self._check_open().streams_whole(self.handle)

    def cached_ranges(self) -> list[ByteRange]:
        """The bytes of this version the disk cache holds now (sorted, disjoint)."""
        return self._check_open().cached_ranges(self.handle)

    async def fetch_direct(self, wanted: ByteRange, sink: Callable[[bytes], None]) -> bool:
        """Pass the ``wanted`` bytes of this version to ``sink`` as they arrive from the origin, without
        keeping them in memory or in the cache (for a caller that stores them itself: ``rangefs get -o``).
        Retried and resumed as every fetch; ``sink`` may raise ``rangefs.remote.FetchStopped`` to end it
        early. False, with nothing passed to ``sink``, when the server turns out to ignore Range (from then
        on ``streams_whole``); OSError as for reads."""
        engine = self._check_open()
        with translated():
            try:
                await engine.fetch_direct(self.handle, wanted, sink)
            except RangesUnsupported:
                return False
        return True

    async def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from the position (all the rest when negative), and move past them."""
        if size < 0:
            size = max(0, self.size - self.position)
        data = await self.read_at(self.position, size)
        self.position += len(data)
        return data

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position as ``io.IOBase.seek`` does; returns it."""
        self._check_open()
        self.position = seek_position(self.position, self.size, offset, whence)
        await trio.lowlevel.checkpoint()
        return self.position

    def tell(self) -> int:
        return self.position

    def prefetch(self, offset: int, length: int) -> None:
        """Start fetching ``length`` bytes at ``offset`` into the cache in the background; never waits.

        Within the session's readahead budget and connections; cancelled when the file is closed."""
        self._check_open().prefetch(self.handle, offset, length)

    def close_nowait(self) -> None:
        """Close now (cancels this file's prefetches); closing twice does nothing."""
        if not self.closed:
            self.closed = True
            self._session._forget(self)

    async def aclose(self) -> None:
        self.close_nowait()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> AsyncRemoteFile:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def seek_position(position: int, size: int, offset: int, whence: int) -> int:
    """The position ``seek(offset, whence)`` moves to; a position before the start is a ValueError."""
    if whence == io.SEEK_SET:
        target = offset
    elif whence == io.SEEK_CUR:
        target = position + offset
    elif whence == io.SEEK_END:
        target = size + offset
    else:
        raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
    if target < 0:
        raise ValueError(f"negative seek position {target}")
    return target


@asynccontextmanager
async def aopen(
    url: str, *, headers: HeadersArg = None, session: AsyncSession | None = None, **options: Any
) -> AsyncIterator[AsyncRemoteFile]:
    """``async with rangefs.aopen(url) as f``: a remote file for trio code.

    Without ``session``, a session of its own is opened for the file (the disk cache and its limit are the
    same as every other session's and mount's of the same ``cache_dir``) and closed with it; pass one to
    share a connection pool and probe results across files."""
    if session is not None:
        file = await session.open(url, headers=headers)
        try:
            yield file
        finally:
            await file.aclose()
        return
    async with AsyncSession(**options) as own:
        file = await own.open(url, headers=headers)
        try:
            yield file
        finally:
            await file.aclose()
