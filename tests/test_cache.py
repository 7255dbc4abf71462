"""The block cache: round trips, corruption, the size limit with LRU eviction, crash leftovers, sharing."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangefs.cache import BlockCache
from rangefs.cache.blockfile import CHUNK_SIZE, header_size
from rangefs.cache.store import disk_size
from tests.origin import pattern_bytes

BLOCK = pattern_bytes(300_000, seed=5)  # not a multiple of the chunk size
OBJECT = "ab" * 32
SMALL = b"x" * 10_000
SMALL_DISK = disk_size(header_size(len(SMALL)) + len(SMALL))  # 12 KiB on disk


def opened(root: Path, limit: int | None = None, clock=None) -> BlockCache:  # type: ignore[no-untyped-def]
    cache = BlockCache(root, size_limit=limit, clock=clock or itertools.count().__next__)
    assert cache.open() is None
    return cache


def stored(tmp_path: Path) -> tuple[BlockCache, Path]:
    cache = opened(tmp_path)
    assert cache.write(OBJECT, 3, memoryview(BLOCK), {"url": "http://h/f"})
    return cache, tmp_path / "blocks" / OBJECT[:2] / OBJECT / "3"


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, len(BLOCK) - 1), data=st.data())
def test_any_slice_round_trips(tmp_path: Path, offset: int, data: st.DataObject) -> None:
    cache, _ = stored(tmp_path)
    length = data.draw(st.integers(1, len(BLOCK) - offset))
    assert cache.read(OBJECT, 3, len(BLOCK), offset, length) == BLOCK[offset : offset + length]
    cache.close()


def test_missing_block_is_a_miss(tmp_path: Path) -> None:
    cache = opened(tmp_path)
    assert cache.read(OBJECT, 0, 10, 0, 10) is None
    assert cache.stats.misses == 1


@pytest.mark.parametrize("where", [0, 25, 30 + 5, 30 + CHUNK_SIZE + 7, -1])
def test_flipped_byte_is_detected_and_dropped(tmp_path: Path, where: int) -> None:
    cache, path = stored(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[where] ^= 0x40
    path.write_bytes(bytes(raw))
    assert cache.read(OBJECT, 3, len(BLOCK), 0, len(BLOCK)) is None
    assert not path.exists(), "a corrupt block is deleted so it is fetched again"
    assert cache.stats.corrupt_blocks == 1
    assert cache.usage() == 0, "and no longer counted"


def test_truncated_block_and_wrong_length_are_misses(tmp_path: Path) -> None:
    cache, path = stored(tmp_path)
    assert cache.read(OBJECT, 3, len(BLOCK) + 1, 0, 10) is None  # describes another length
    cache, path = stored(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    assert cache.read(OBJECT, 3, len(BLOCK), len(BLOCK) - 10, 10) is None


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    _, path = stored(tmp_path)
    assert os.listdir(path.parent) == ["3"]


def test_unusable_cache_directory_is_reported_and_skipped(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    cache = BlockCache(blocker)
    assert "cannot be used" in (cache.open() or "")
    assert cache.write(OBJECT, 0, memoryview(b"x"), {}) is False
    assert cache.read(OBJECT, 0, 1, 0, 1) is None


def test_limit_evicts_least_recently_used_blocks(tmp_path: Path) -> None:
    cache = opened(tmp_path, limit=3 * SMALL_DISK)
    for index in range(3):
        assert cache.write(OBJECT, index, memoryview(SMALL), {})
    assert cache.read(OBJECT, 0, len(SMALL), 0, 10) == SMALL[:10]  # block 0 becomes the most recent
    cache._index.flush_touches()  # type: ignore[union-attr]
    assert cache.write(OBJECT, 3, memoryview(SMALL), {})
    kept = {index for index in range(4) if cache.contains(OBJECT, index)}
    assert kept == {0, 2, 3}, "block 1 was the least recently used"
    assert cache.usage() == 3 * SMALL_DISK
    assert cache.stats.blocks_evicted == 1


# A model of the cache: an LRU of block keys with a capacity in blocks.
operations = st.lists(st.tuples(st.sampled_from(["write", "read"]), st.integers(0, 12)), max_size=80)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(ops=operations, capacity=st.integers(1, 6))
def test_cache_matches_an_lru_model(tmp_path_factory: pytest.TempPathFactory, ops, capacity: int) -> None:  # type: ignore[no-untyped-def]
    cache = opened(tmp_path_factory.mktemp("lru"), limit=capacity * SMALL_DISK)
    model: list[int] = []  # least recently used first
    for op, index in ops:
        if op == "write":
            assert cache.write(OBJECT, index, memoryview(SMALL), {})
            model = [i for i in model if i != index] + [index]
            model = model[-capacity:]
        else:
            hit = cache.read(OBJECT, index, len(SMALL), 0, 100)
            assert (hit is not None) == (index in model)
            if hit is not None:
                model = [i for i in model if i != index] + [index]
        assert {i for i in range(13) if cache.contains(OBJECT, i)} == set(model)
        assert cache.usage() == len(model) * SMALL_DISK
    cache.close()


def test_reopen_reconciles_index_with_disk(tmp_path: Path) -> None:
    cache = opened(tmp_path)
    for index in range(3):
        cache.write(OBJECT, index, memoryview(SMALL), {})
    cache.close()
    directory = tmp_path / "blocks" / OBJECT[:2] / OBJECT
    (directory / "1").unlink()  # lost (e.g. power cut after the index committed)
    (directory / "7").write_bytes((directory / "0").read_bytes())  # written but never indexed (crash)
    (directory / ".5.999999999.abcd.tmp").write_bytes(b"half a block")  # a dead writer's leftover
    (directory / f".6.{os.getpid()}.abcd.tmp").write_bytes(b"a live writer's")
    cache = opened(tmp_path)
    assert cache.usage() == 3 * SMALL_DISK  # blocks 0, 2 and the adopted 7
    assert not (directory / ".5.999999999.abcd.tmp").exists()
    assert (directory / f".6.{os.getpid()}.abcd.tmp").exists(), "a running process's file is not touched"


def test_two_processes_share_one_limit(tmp_path: Path) -> None:
    clock = itertools.count().__next__
    first, second = opened(tmp_path, 4 * SMALL_DISK, clock), opened(tmp_path, 4 * SMALL_DISK, clock)
    for index in range(10):
        (first if index % 2 else second).write(OBJECT, index, memoryview(SMALL), {})
        assert first.usage() == second.usage() <= 4 * SMALL_DISK
    assert sum(first.contains(OBJECT, i) for i in range(10)) == 4


def test_drop_object_and_prune(tmp_path: Path) -> None:
    cache = opened(tmp_path)
    other = "cd" * 32
    for index in range(4):
        cache.write(OBJECT, index, memoryview(SMALL), {"url": "http://h/a"})
        cache.write(other, index, memoryview(SMALL), {"url": "http://h/b"})
    assert sorted((u.description["url"], u.blocks) for u in cache.objects()) == [("http://h/a", 4), ("http://h/b", 4)]
    assert cache.drop_object(OBJECT) == 4
    assert cache.usage() == 4 * SMALL_DISK
    assert cache.prune(SMALL_DISK) == 3
    assert cache.usage() == SMALL_DISK
