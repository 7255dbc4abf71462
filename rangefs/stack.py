"""The engine stack: HTTP client, block store, prefetcher and file engine, wired from MountSettings.

One place builds what a mount serves, so every face of rangefs (the FUSE mount, and code that reads remote
files without FUSE) gets the same cache keys, limits, readahead and consistency. The caller owns the
BlockCache (it decides what to do when the directory cannot be used) and runs the service nursery's life
through this context manager: leaving it cancels every fetch and closes the connections.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from rangefs.blocks import BlockStore
from rangefs.cache import BlockCache
from rangefs.config import Entry, MountSettings
from rangefs.engine import FileEngine
from rangefs.readahead import ReadaheadConfig
from rangefs.readahead.prefetcher import Prefetcher
from rangefs.remote import RemoteClient
from rangefs.remote.netrc import netrc_auth
from rangefs.remote.workers import FetchWorkers

# Seconds a closing engine waits for fetches under way and their cache writes (a demand read, a stream).
_SETTLE_TIMEOUT = 3.0


def memory_tier_bytes(settings: MountSettings) -> int:
    """The memory tier's limit: readahead brings a block up to a window ahead of its reader, and up to two parts
    (no larger than the window) complete beyond it; the pieces readers have passed leave first (memory.py), so
    that is enough. Without readahead, one block."""
    parts = 2 * min(settings.prefetch_part_size, settings.max_readahead)
    return max(settings.max_readahead + parts, settings.block_size)


@asynccontextmanager
async def running_engine(
    entries: Sequence[Entry], settings: MountSettings, cache: BlockCache, *, client: RemoteClient | None = None
) -> AsyncIterator[FileEngine]:
    """A FileEngine over ``entries`` whose service tasks (fetches, prefetches, cache writes) run until exit.

    Probes are not started: the caller starts ``engine.run_probes`` when it wants them."""
    # netrc is read here, once per engine: every face of rangefs (mount, library, get) gets it.
    remote_client = client or RemoteClient(settings, auth=netrc_auth(os.environ))
    # Fetch workers build clients of their own, so only for a client built here (a given one may reach a network
    # of its own, as tests' do).
    workers = settings.fetch_workers if client is None and not settings.offline else 0
    async with remote_client as remote, _fetch_workers(remote, settings, workers), trio.open_nursery() as nursery:
        store = BlockStore(
            cache,
            block_size=settings.block_size,
            max_request_size=settings.max_request_size,
            nursery=nursery,
            hot_bytes=memory_tier_bytes(settings),
        )
        prefetcher = Prefetcher(
            store, max_inflight_bytes=settings.max_inflight, part_size=settings.prefetch_part_size, nursery=nursery
        )
        readahead = ReadaheadConfig(
            block_size=settings.block_size,
            max_window=settings.max_readahead,
            request_size=settings.prefetch_part_size - settings.prefetch_part_size % settings.block_size,
        )
        engine = FileEngine(
            entries,
            remote,
            store,
            prefetcher=prefetcher,
            readahead=readahead,
            probe_concurrency=settings.probe_concurrency,
            metadata_ttl=settings.metadata_ttl,
            revalidate_after=settings.revalidate_after,
            format_prefetch=settings.format_prefetch,
            offline=settings.offline,
        )
        try:
            yield engine
        finally:
            # What was fetched but is still on its way to the disk is what the next mount, session or
            # `rangefs get` on this cache would fetch again: readahead stops, the rest gets a moment.
            prefetcher.cancel_all()
            engine.store_records()
            with trio.move_on_after(_SETTLE_TIMEOUT):
                await store.wait_idle()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _fetch_workers(client: RemoteClient, settings: MountSettings, count: int) -> AsyncIterator[None]:
    """``count`` fetch worker processes serving ``client``'s prefetches while inside."""
    if not count:
        yield
        return
    async with FetchWorkers.running(settings, count) as workers:
        client.workers = workers
        try:
            yield
        finally:
            client.workers = None
