"""The block cache: round trips, atomic files, corruption detected and dropped, unwritable directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangefs.cache import BlockCache
from rangefs.cache.blockfile import CHUNK_SIZE
from tests.origin import pattern_bytes

BLOCK = pattern_bytes(300_000, seed=5)  # not a multiple of the chunk size
OBJECT = "ab" * 32


def stored(tmp_path: Path) -> tuple[BlockCache, Path]:
    cache = BlockCache(tmp_path)
    assert cache.write(OBJECT, 3, memoryview(BLOCK), {"url": "http://h/f"})
    return cache, tmp_path / "blocks" / OBJECT[:2] / OBJECT / "3"


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, len(BLOCK) - 1), data=st.data())
def test_any_slice_round_trips(tmp_path: Path, offset: int, data: st.DataObject) -> None:
    cache, _ = stored(tmp_path)
    length = data.draw(st.integers(1, len(BLOCK) - offset))
    assert cache.read(OBJECT, 3, len(BLOCK), offset, length) == BLOCK[offset : offset + length]


def test_missing_block_is_a_miss(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path)
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


def test_truncated_block_and_wrong_length_are_misses(tmp_path: Path) -> None:
    cache, path = stored(tmp_path)
    assert cache.read(OBJECT, 3, len(BLOCK) + 1, 0, 10) is None  # describes another length
    cache, path = stored(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    assert cache.read(OBJECT, 3, len(BLOCK), len(BLOCK) - 10, 10) is None


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    _cache, path = stored(tmp_path)
    assert sorted(os.listdir(path.parent)) == ["3", "object.json"]


def test_unwritable_cache_is_reported_and_skipped(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    cache = BlockCache(blocker)
    assert "not writable" in (cache.check_writable() or "")
    assert cache.write(OBJECT, 0, memoryview(b"x"), {}) is False
    assert cache.write(OBJECT, 1, memoryview(b"x"), {}) is False
    assert cache.stats.write_failures == 1, "after a failure, writes pause instead of failing per block"
