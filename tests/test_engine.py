"""The engine without FUSE: the same reads, in-process, against the loopback origin."""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath

import trio

from rangefs.blocks import BlockStore
from rangefs.cache import BlockCache
from rangefs.config import Entry, MountSettings
from rangefs.engine import FileEngine
from rangefs.errors import RemoteChanged
from rangefs.readahead.prefetcher import Prefetcher
from rangefs.remote import RemoteClient
from rangefs.stack import running_engine
from tests import faults
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024


async def _read_through_engine(url: str, cache_dir: Path, reads: list[tuple[int, int]]) -> tuple[list[bytes], object]:
    async with RemoteClient() as client, trio.open_nursery() as nursery:
        store = BlockStore(BlockCache(cache_dir), block_size=MiB, max_request_size=8 * MiB, nursery=nursery)
        engine = FileEngine([Entry(PurePosixPath("f"), url, 1)], client, store)
        await engine.run_probes()
        handle = await engine.open(0)
        results = []
        async with trio.open_nursery() as readers:  # concurrent readers of overlapping ranges

            async def read(position: int, offset: int, size: int) -> None:
                results.append((position, await engine.read(handle, offset, size)))

            for position, (offset, size) in enumerate(reads):
                readers.start_soon(read, position, offset, size)
        engine.release(handle)
        nursery.cancel_scope.cancel()
        return [data for _, data in sorted(results)], store.statistics()


def test_engine_reads_without_fuse(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(3 * MiB + 7, seed=9)
    url = origin.add("/engine.bin", data)
    reads = [(0, 10), (5, MiB), (MiB - 3, 2 * MiB), (3 * MiB, 100), (3 * MiB + 7, 5)]
    results, stats = trio.run(_read_through_engine, url, tmp_path, reads)
    assert results == [data[offset : offset + size] for offset, size in reads]
    # Single flight: each of the four blocks fetched at most once although several readers wanted it at the
    # same time; small reads that look random fetch only their 64 KiB chunk (the one at 0 is fetched again
    # as part of block 0 by the concurrent 1 MiB read).
    assert stats.blocks_joined > 0  # type: ignore[attr-defined]
    assert origin.bytes_sent_for("/engine.bin") <= len(data) + 2 * 64 * 1024


async def _add_at_run_time(origin: Origin, cache_dir: Path) -> None:
    data = pattern_bytes(4 * MiB, seed=3)
    url = origin.add("/later.bin", data)
    async with RemoteClient() as client, trio.open_nursery() as nursery:
        store = BlockStore(BlockCache(cache_dir), block_size=MiB, max_request_size=8 * MiB, nursery=nursery)
        prefetcher = Prefetcher(store, max_inflight_bytes=64 * MiB, part_size=2 * MiB, nursery=nursery)
        engine = FileEngine([], client, store, prefetcher=prefetcher)
        await engine.run_probes()  # nothing to probe: the engine starts empty
        index = await engine.add(Entry(PurePosixPath("later.bin"), url, 0))
        assert (await engine.metadata(index)).metadata.size == len(data)  # type: ignore[union-attr]
        missing = await engine.add(Entry(PurePosixPath("missing.bin"), origin.url("/missing.bin"), 0))
        assert (await engine.metadata(missing)).failure is not None
        handle = await engine.open(index)
        engine.prefetch(handle, MiB, 2 * MiB)  # in the background: returns at once
        with trio.fail_after(10):
            while store.statistics().blocks_fetched < 2:
                await trio.sleep(0.01)
        origin.clear_log()
        assert await engine.read(handle, MiB, 2 * MiB) == data[MiB : 3 * MiB]
        assert origin.requests_for("/later.bin") == []  # served from what the prefetch brought
        engine.release(handle)
        nursery.cancel_scope.cancel()


def test_engine_adds_files_at_run_time_and_prefetches_on_request(origin: Origin, tmp_path: Path) -> None:
    trio.run(_add_at_run_time, origin, tmp_path)


async def _read_across_a_version_change(origin: Origin, cache_dir: Path) -> None:
    old, new = pattern_bytes(2 * MiB, seed=21), pattern_bytes(2 * MiB, seed=22)
    url = origin.add("/pinned.bin", old)
    gate = threading.Event()
    settings = MountSettings(revalidate_after=0.0, timeout=10.0, max_readahead=0, format_prefetch=False)
    cache = BlockCache(cache_dir)
    assert cache.open() is None
    try:
        async with running_engine([Entry(PurePosixPath("pinned.bin"), url, 1)], settings, cache) as engine:
            await engine.run_probes()
            pinned = await engine.open(0)
            # The old version's first block is on its way (1000 bytes in, the rest held back) when the file
            # changes and another open finds the new version.
            origin.faults["/pinned.bin"] = faults.only(("GET",), faults.stall_after(1000, gate))
            outcome: list[bytes | BaseException] = []

            async def read_old() -> None:
                try:
                    outcome.append(await engine.read(pinned, 0, 4096))
                except RemoteChanged as error:
                    outcome.append(error)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_old)
                with trio.fail_after(10):
                    while not origin.requests_for("/pinned.bin"):
                        await trio.sleep(0.005)
                origin.add("/pinned.bin", new)
                del origin.faults["/pinned.bin"]
                fresh = await engine.open(0)  # revalidates: a new version, the old one dropped
                gate.set()  # the old bytes arrive, correct for the version the first handle pinned
            assert isinstance(outcome[0], RemoteChanged), "not the old version's bytes once it was replaced"
            assert await engine.read(fresh, 0, 4096) == new[:4096]
            engine.release(pinned)
            engine.release(fresh)
    finally:
        gate.set()
        cache.close()


def test_a_read_whose_version_was_replaced_while_it_waited_fails(origin: Origin, tmp_path: Path) -> None:
    """4: bytes of a replaced version that arrive for a handle pinned to it must not reach the reader, or the
    kernel's page cache, where a handle of the new version would find them: the read fails (EIO)."""
    trio.run(_read_across_a_version_change, origin, tmp_path)
