"""Engines for the model test, and the trio loop they live in between hypothesis' rules.

``build_engine`` is the ONE place that calls rangefs' constructors (RemoteClient, BlockCache, BlockStore,
Prefetcher, ReadaheadConfig, FileEngine), wired as mount.py wires them, so a change of those APIs is adapted
here only. An engine runs in a task of its own (``EngineBundle``): a clean ``aclose`` cancels its service
nursery and closes the cache as an unmount does; ``crash`` cancels it without closing or flushing anything,
as ``kill -9`` would leave it (the cache object is kept open until the test case ends, as a dead process'
file descriptors stay with the kernel). Whatever escapes the service nursery is kept in ``failures``.

``TrioLoop`` runs one trio loop per test case in a thread of its own, so background work (prefetch, cache
writes, probes) keeps running between rules. ``call`` runs a coroutine there and waits for it, with a
watchdog: a loop that does not answer at all (a task spinning without a checkpoint freezes trio) is
reported with the stack of the loop thread, and stopped by raising ``LoopFrozen`` in that thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import sqlite3
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio
import trio.testing

from rangefs.blocks import BlockStore
from rangefs.cache import BlockCache
from rangefs.config import Entry, MountSettings
from rangefs.engine import FileEngine
from rangefs.readahead import ReadaheadConfig
from rangefs.readahead.prefetcher import Prefetcher
from rangefs.remote import RemoteClient
from rangefs.remote.retry import RetryPolicy
from rangefs.stack import memory_tier_bytes

T = TypeVar("T")
MiB = 1024 * 1024

# Seconds one fetch or probe may take, retries included: far below the model's hang deadline, far above
# what the in-process origin needs (milliseconds), so a timeout means something is stuck.
_TOTAL_TIMEOUT = 3.0
_CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class EngineSettings:
    """The knobs the model draws for one engine (sizes in bytes, times in seconds)."""

    block_size: int
    cache_size: int | None  # None: unbounded
    readahead: bool  # with a Prefetcher (readahead and format-aware first open) or without
    format_prefetch: bool
    metadata_ttl: float
    max_readahead: int  # also sizes the in-memory LRU, as in mount.py: max(2 * max_readahead, block)
    max_request_size: int
    prefetch_part_size: int
    max_inflight: int
    connections: int = 4


class InjectedFault(Exception):
    """Marker mixed into every exception a FaultyCache raises, so the model knows its own faults."""


class InjectedOSError(OSError, InjectedFault):
    pass


class InjectedSqliteError(sqlite3.OperationalError, InjectedFault):
    pass


class FaultyCache:
    """The engine's BlockCache, failing its I/O methods while ``remaining`` calls last.

    A proxy by attribute, so it does not depend on the cache's signatures. Methods that touch files raise
    OSError (EIO), methods that touch the index raise sqlite3.OperationalError, as a failing disk or a
    broken index would; names that no longer exist are simply never failed."""

    FILE_METHODS = frozenset({"read", "contains", "store_files", "write"})
    INDEX_METHODS = frozenset({"record", "drop_object", "get_records", "put_record", "put_records"})
    # Methods that write blocks, possibly from a worker thread: ``writes_pending`` counts them from the
    # moment they are looked up (before the thread starts) until they return.
    WRITE_METHODS = frozenset({"store_files", "write"})

    def __init__(self, cache: BlockCache) -> None:
        self._cache = cache
        self.remaining = 0
        self.raised = 0
        self.writes_pending = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._cache, name)
        if name not in self.FILE_METHODS | self.INDEX_METHODS or not callable(attribute):
            return attribute
        writes = name in self.WRITE_METHODS
        if writes:
            with self._lock:
                self.writes_pending += 1

        def failing(*args: Any, **kwargs: Any) -> Any:
            try:
                if self.remaining > 0:
                    self.remaining -= 1
                    self.raised += 1
                    if name in self.FILE_METHODS:
                        raise InjectedOSError(5, f"Input/output error (injected into {name})")
                    raise InjectedSqliteError(f"disk I/O error (injected into {name})")
                return attribute(*args, **kwargs)
            finally:
                if writes:
                    with self._lock:
                        self.writes_pending -= 1

        return failing


def is_injected(error: BaseException) -> bool:
    """Whether ``error`` is, wraps or groups an exception a FaultyCache raised."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, InjectedFault):
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


@dataclass
class EngineBundle:
    """One running engine and what it is made of."""

    engine: FileEngine
    cache: FaultyCache
    block_cache: BlockCache
    client: RemoteClient
    settings: EngineSettings
    failures: list[BaseException] = field(default_factory=list)
    crashed: bool = False
    _stop: trio.Event = field(default_factory=trio.Event)
    _stopped: trio.Event = field(default_factory=trio.Event)

    async def aclose(self) -> None:
        """Stop as an unmount does: cancel the service nursery, close the cache."""
        self._stop.set()
        await self._stopped.wait()

    async def crash(self) -> None:
        """Stop as ``kill -9`` does: cancel everything, close and flush nothing."""
        self.crashed = True
        self._stop.set()
        await self._stopped.wait()


async def build_engine(
    nursery: trio.Nursery,
    *,
    entries: Sequence[Entry],
    cache_dir: Path,
    transport: httpx.AsyncBaseTransport,
    settings: EngineSettings,
) -> EngineBundle:
    """Start an engine in ``nursery`` wired as mount.py wires one; returns once its probes are started."""
    bundle: EngineBundle = await nursery.start(_run_engine, entries, cache_dir, transport, settings)
    return bundle


async def _run_engine(
    entries: Sequence[Entry],
    cache_dir: Path,
    transport: httpx.AsyncBaseTransport,
    settings: EngineSettings,
    *,
    task_status: trio.TaskStatus[EngineBundle],
) -> None:
    block_cache = BlockCache(cache_dir, size_limit=settings.cache_size)
    problem = block_cache.open()
    if problem:
        raise AssertionError(problem)
    cache = FaultyCache(block_cache)
    bundle: EngineBundle | None = None
    try:
        async with (
            RemoteClient(
                MountSettings(
                    connect_timeout=_CONNECT_TIMEOUT,
                    read_timeout=_TOTAL_TIMEOUT,
                    timeout=_TOTAL_TIMEOUT,
                    connections=settings.connections,
                ),
                retry=RetryPolicy(base_delay=0.0, max_delay=0.0),
                transport=transport,
            ) as client,
            trio.open_nursery() as service,
        ):
            block_size = settings.block_size
            store = BlockStore(
                cache,  # type: ignore[arg-type]
                block_size=block_size,
                max_request_size=max(settings.max_request_size, block_size),
                nursery=service,
                hot_bytes=memory_tier_bytes(settings),
            )
            part_size = max(settings.prefetch_part_size, block_size)
            prefetcher = (
                Prefetcher(store, max_inflight_bytes=settings.max_inflight, part_size=part_size, nursery=service)
                if settings.readahead
                else None
            )
            readahead = ReadaheadConfig(
                block_size=block_size,
                max_window=settings.max_readahead,
                request_size=part_size - part_size % block_size,
            )
            engine = FileEngine(
                entries,
                client,
                store,
                prefetcher=prefetcher,
                readahead=readahead,
                metadata_ttl=settings.metadata_ttl,
                format_prefetch=settings.format_prefetch,
            )
            service.start_soon(engine.run_probes)
            bundle = EngineBundle(engine, cache, block_cache, client, settings)
            task_status.started(bundle)
            await bundle._stop.wait()
            service.cancel_scope.cancel()
    except Exception as error:  # the engine died of it; the model reports it
        if bundle is None:
            raise
        bundle.failures.append(error)
    finally:
        if bundle is not None:
            bundle._stopped.set()
        if bundle is None or not bundle.crashed:
            block_cache.close()


async def settle(bundles: Sequence[EngineBundle], timeout: float) -> bool:
    """Wait until every task is blocked and no cache write is under way (False if that takes too long)."""
    with trio.move_on_after(timeout):
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if not any(bundle.cache.writes_pending for bundle in bundles):
                return True
            await trio.sleep(0.002)
    return False


class LoopFrozen(BaseException):
    """Raised inside a trio loop that stopped answering, to end its thread."""


class TrioLoop:
    """One trio loop in a thread; ``call`` runs coroutines in it from hypothesis' thread."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self.frozen = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="model-trio-loop", daemon=True)
        self._thread.start()
        self._ready.wait()

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:  # reported by close()
            self.error = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, function: Callable[[], Awaitable[T]], *, watchdog: float) -> T:
        """Run ``function()`` in the loop and return its result; AssertionError if the loop froze."""
        if self.frozen or self._token is None:
            raise AssertionError("the trio loop is frozen or gone (an earlier step hung)")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def run() -> None:
            try:
                future.set_result(await function())
            except BaseException as error:
                future.set_exception(error)
                if not isinstance(error, Exception):
                    raise

        self._token.run_sync_soon(lambda: self.nursery.start_soon(run))
        try:
            return future.result(timeout=watchdog)
        except concurrent.futures.TimeoutError:
            stack = self.stack()
            self.frozen = True
            self._interrupt()
            raise AssertionError(
                f"HANG: the trio loop did not answer within {watchdog:.0f} s; a task runs without ever reaching"
                f" a checkpoint, or blocks the thread. Stack of the loop thread:\n{stack}"
            ) from None

    def stack(self) -> str:
        frame = sys._current_frames().get(self._thread.ident or -1)
        return "".join(traceback.format_stack(frame)) if frame is not None else "(thread gone)"

    def _interrupt(self) -> None:
        """Raise LoopFrozen in the loop thread (it runs Python code, or it would have answered)."""
        ident = self._thread.ident
        if ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(LoopFrozen))
        self._thread.join(timeout=10)

    def close(self) -> None:
        if not self.frozen and self._token is not None and self._stop is not None:
            stop = self._stop
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(stop.set)
        self._thread.join(timeout=30)
