"""Service tasks contain the cache's failures (issue 9, path 6): each a plain regression test of what the
model-based test found with its injected cache faults (tests/test_model.py), on a real cache, a real engine
stack and the loopback origin.

A background task (a probe, a fetch's cache write) that meets an exception it does not expect must fail at
most its own file or cache entry and log it; before these fixes each one escaped the service nursery, and the
whole engine (the mount) was gone.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath

import pytest
import trio

from rangefs.cache import BlockCache, PieceKey
from rangefs.config import Entry, MountSettings
from rangefs.engine import FileEngine
from rangefs.stack import running_engine
from tests import faults
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024
# Every open revalidates, so a change at the origin is seen by the next open.
SETTINGS = MountSettings(revalidate_after=0.0, timeout=5.0)


class BrokenCache(BlockCache):
    """A real cache whose method named ``broken`` raises what a bug, or a disk or index it does not expect
    to fail that way, would make it raise (the model test injects the same at the same seam)."""

    broken = ""

    def record(self, written: dict[PieceKey, int], describe: dict[str, object]) -> bool:
        if self.broken == "record":
            raise RuntimeError("record exploded")
        return super().record(written, describe)

    def drop_object(self, object_id: str) -> int:
        if self.broken == "drop_object":
            raise sqlite3.OperationalError("database or disk is full")
        return super().drop_object(object_id)

    def put_records(self, records: dict[str, str]) -> None:
        if self.broken == "put_records":
            raise sqlite3.OperationalError("database or disk is full")
        super().put_records(records)


def _cache(tmp_path: Path) -> BrokenCache:
    cache = BrokenCache(tmp_path / "cache")
    assert cache.open() is None
    return cache


@asynccontextmanager
async def _probed_engine(url: str, cache: BrokenCache) -> AsyncIterator[FileEngine]:
    """The mount's engine stack over one file, its probe done."""
    async with running_engine([Entry(PurePosixPath("f.bin"), url, 1)], SETTINGS, cache) as engine:
        await engine.run_probes()
        yield engine


def test_a_cache_write_that_fails_to_record_costs_the_entry_not_the_fetch(
    origin: Origin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the model test (e5cf04c): an error from recording written pieces escaped the cache writer, the
    fetch that awaited it, and the service nursery."""
    data = pattern_bytes(3 * MiB + 5, seed=101)
    url = origin.add("/record.bin", data)
    cache = _cache(tmp_path)

    async def main() -> None:
        async with _probed_engine(url, cache) as engine:
            cache.broken = "record"
            handle = await engine.open(0)
            assert await engine.read(handle, 0, len(data)) == data
            with trio.fail_after(10):
                await engine.store.wait_idle()  # every cache write (and its failure) is over
            cache.broken = ""
            assert await engine.read(handle, MiB, 4096) == data[MiB : MiB + 4096], "the engine is still up"
            engine.release(handle)

    with caplog.at_level(logging.WARNING, logger="rangefs"):
        trio.run(main)
    assert any("unexpected error recording" in r.getMessage() and url in r.getMessage() for r in caplog.records)


def test_a_failure_to_drop_the_old_version_does_not_fail_the_probe_that_found_the_new_one(
    origin: Origin, tmp_path: Path
) -> None:
    """Found by the model test (bf99290): an error dropping the replaced version's pieces escaped the probe, so
    the open that revalidated failed (and a listing probe would have ended the engine)."""
    old, new = pattern_bytes(2 * MiB, seed=102), pattern_bytes(2 * MiB, seed=103)
    url = origin.add("/drop.bin", old)
    cache = _cache(tmp_path)

    async def main() -> None:
        async with _probed_engine(url, cache) as engine:
            handle = await engine.open(0)
            assert await engine.read(handle, 0, len(old)) == old
            engine.release(handle)
            origin.add("/drop.bin", new)
            cache.broken = "drop_object"
            handle = await engine.open(0)  # revalidates: a new version
            cache.broken = ""
            assert await engine.read(handle, 0, len(new)) == new
            engine.release(handle)

    trio.run(main)


# A whole-file stream closes httpx's body generator when it has what it needs; the generators httpx chains
# under it are finalised by the garbage collector, which trio reports (as in tests/test_model.py).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_failure_to_store_what_a_fetch_learnt_does_not_fail_the_fetch(origin: Origin, tmp_path: Path) -> None:
    """Found by the model test's long run (5e9434d): a fetch that finds the server ignoring ranges stores that
    with the probe results; an error storing it escaped the fetch and the service nursery."""
    data = pattern_bytes(2 * MiB + 9, seed=104)
    url = origin.add("/whole.bin", data)
    cache = _cache(tmp_path)

    async def main() -> None:
        async with _probed_engine(url, cache) as engine:
            handle = await engine.open(0)
            origin.faults["/whole.bin"] = faults.whole_file  # from now on 200 with the whole file
            cache.broken = "put_records"
            assert await engine.read(handle, MiB, 4096) == data[MiB : MiB + 4096]
            assert await engine.read(handle, 0, len(data)) == data
            engine.release(handle)

    trio.run(main)
