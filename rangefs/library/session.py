"""Session: the synchronous face of an AsyncSession, for code that is not trio (zipfile, pyarrow, pandas).

The engine is trio code and needs a running trio loop. Synchronous callers have none, so a Session starts one
in a thread of its own (``trio.run`` in a daemon thread) and every call hops into it with
``trio.from_thread.run`` on the loop's ``TrioToken``: about 0.1-0.35 ms per call on these machines (STACK.md's
cross-CPU wake-ups), which is why files read through a buffer (file.py). This thread is the one exception to
the rule that rangefs's code starts no bare threads: a mount and ``rangefs get`` are trio programs and run the
engine in their own loop, but a library called from arbitrary threads cannot borrow theirs. One loop per
session, not per file: the connection pool, the block store's single flight and the prefetch budget are the
loop's, and shared by every file and thread using the session.

The thread is a daemon so an interpreter that exits with a session still open is not held up by it; an
``atexit`` hook closes such sessions first, so the cache index is closed cleanly.

``rangefs.open`` uses a shared session per distinct set of options (``shared_session``), created on first use.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import trio

from rangefs.config import MountSettings
from rangefs.library.asession import AsyncRemoteFile, AsyncSession
from rangefs.library.file import DEFAULT_BUFFER_SIZE, RawRemoteFile, RemoteFile
from rangefs.library.options import HeadersArg, Size, settings_from
from rangefs.remote import RemoteMetadata

T = TypeVar("T")

_live_sessions: weakref.WeakSet[Session] = weakref.WeakSet()


class Session:
    """One engine, connection pool and disk cache shared by the files opened through it, from any thread.

    ``with rangefs.Session(cache_dir=...) as session: f = session.open(url)``. Options are those of
    ``rangefs.open``. ``close()`` closes every file opened through it and stops its loop thread.
    """

    def __init__(self, settings: MountSettings | None = None, **options: Any) -> None:
        self.settings = settings or settings_from(**options)
        self._async = AsyncSession(self.settings)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._files: weakref.WeakSet[RawRemoteFile] = weakref.WeakSet()
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rangefs-session", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        _live_sessions.add(self)

    def __repr__(self) -> str:
        return f"<Session {self._async!r}>"

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:  # reported to the thread that created the session
            self._failure = error
        finally:
            self._started.set()

    async def _serve(self) -> None:
        async with self._async:
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._started.set()
            await self._stop.wait()

    @property
    def closed(self) -> bool:
        return self._token is None

    def call(self, function: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run ``await function(*args)`` in the session's loop and return (or raise) what it does."""
        token = self._token
        if token is None:
            raise ValueError("the session is closed")
        return trio.from_thread.run(function, *args, trio_token=token)

    def call_nowait(self, function: Callable[..., T], *args: object) -> T:
        """Run the synchronous ``function(*args)`` in the session's loop (it must not block)."""
        token = self._token
        if token is None:
            raise ValueError("the session is closed")
        return trio.from_thread.run_sync(function, *args, trio_token=token)

    def open(self, url: str, *, headers: HeadersArg = None, buffer_size: int = DEFAULT_BUFFER_SIZE) -> RemoteFile:
        """Open ``url`` for reading: a seekable, buffered binary file (see ``rangefs.open``)."""
        opened: AsyncRemoteFile = self.call(_open_in, self._async, url, headers)
        raw = RawRemoteFile(self, opened)
        self._files.add(raw)
        return RemoteFile(raw, buffer_size)

    def metadata(self, url: str, *, headers: HeadersArg = None) -> RemoteMetadata:
        """Size and version of ``url`` (FileNotFoundError for a 404, OSError for other failures)."""
        return self.call(_metadata_in, self._async, url, headers)

    def read_range(self, url: str, start: int, stop: int, *, headers: HeadersArg = None) -> bytes:
        """Bytes ``start`` to ``stop`` of ``url`` (fewer past its end), without a file object."""
        return self.call(_read_range_in, self._async, url, start, stop, headers)

    def close(self) -> None:
        """Close every file opened through the session, then its engine, cache and loop thread."""
        with self._close_lock:
            token, stop = self._token, self._stop
            if token is None or stop is None:
                return
            for raw in list(self._files):
                raw.close()
            self._token = None
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=token)
        if threading.current_thread() is not self._thread:
            self._thread.join()
        _live_sessions.discard(self)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


async def _open_in(session: AsyncSession, url: str, headers: HeadersArg) -> AsyncRemoteFile:
    return await session.open(url, headers=headers)


async def _metadata_in(session: AsyncSession, url: str, headers: HeadersArg) -> RemoteMetadata:
    return await session.metadata(url, headers=headers)


async def _read_range_in(session: AsyncSession, url: str, start: int, stop: int, headers: HeadersArg) -> bytes:
    return await session.read_range(url, start, stop, headers=headers)


_shared: dict[tuple[tuple[str, object], ...], Session] = {}
_shared_lock = threading.Lock()


def shared_session(**options: Any) -> Session:
    """The process's session for these options, started on first use and closed at exit."""
    key = tuple(sorted((name, str(value)) for name, value in options.items() if value is not None))
    with _shared_lock:
        session = _shared.get(key)
        if session is None or session.closed:
            session = _shared[key] = Session(**options)
        return session


def open(
    url: str,
    *,
    headers: HeadersArg = None,
    cache_dir: str | Path | None = None,
    cache_size: Size | None = None,
    block_size: Size | None = None,
    session: Session | None = None,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    **options: Any,
) -> RemoteFile:
    """Open a remote file for reading: a seekable, buffered binary file object (``io.BufferedReader``).

    It reads through the engine, readahead and disk cache a mount uses (same directory, keys and limits as
    ``rangefs mount``; ``cache_dir`` defaults to ``~/.cache/rangefs``), needs no FUSE, and may be used from
    several threads (``pread`` reads without the shared position). ``headers`` go with every request to the
    URL's own origin. Other options are those of the mount (``connections``, ``max_readahead``, ``timeout``,
    ``format_prefetch``, ...). Without ``session`` the process's shared session for these options is used.

    Raises FileNotFoundError for a 404, PermissionError for 401/403, OSError for other failures."""
    if session is None:
        session = shared_session(cache_dir=cache_dir, cache_size=cache_size, block_size=block_size, **options)
    elif cache_dir is not None or cache_size is not None or block_size is not None or options:
        raise ValueError("give either a session or session options, not both")
    return session.open(url, headers=headers, buffer_size=buffer_size)


@atexit.register
def _close_live_sessions() -> None:
    for session in list(_live_sessions):
        session.close()
