"""The block cache: round trips, corruption, the size limit with LRU eviction, crash leftovers, sharing."""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangefs.cache import BlockCache, PieceKey
from rangefs.cache import store as store_module
from rangefs.cache.blockfile import CHUNK_SIZE, header_size
from rangefs.cache.store import disk_size
from tests.origin import pattern_bytes

BLOCK = pattern_bytes(300_000, seed=5)  # not a multiple of the chunk size
OBJECT = "ab" * 32
SMALL = b"x" * 10_000
SMALL_DISK = disk_size(header_size(len(SMALL)) + len(SMALL))  # 12 KiB on disk


def block(index: int, data: bytes = SMALL, object_id: str = OBJECT) -> PieceKey:
    """The key of block ``index`` of an object cut into blocks as long as ``data``."""
    return PieceKey(object_id, index * len(data), len(data))


def opened(root: Path, limit: int | None = None, clock=None) -> BlockCache:  # type: ignore[no-untyped-def]
    cache = BlockCache(root, size_limit=limit, clock=clock or itertools.count().__next__)
    assert cache.open() is None
    return cache


def stored(tmp_path: Path) -> tuple[BlockCache, Path]:
    cache = opened(tmp_path)
    assert cache.write(block(3, BLOCK), memoryview(BLOCK), {"url": "http://h/f"})
    return cache, tmp_path / "pieces" / OBJECT[:2] / OBJECT / block(3, BLOCK).file_name


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, len(BLOCK) - 1), data=st.data())
def test_any_slice_round_trips(tmp_path: Path, offset: int, data: st.DataObject) -> None:
    cache, _ = stored(tmp_path)
    length = data.draw(st.integers(1, len(BLOCK) - offset))
    assert cache.read(block(3, BLOCK), offset, length) == BLOCK[offset : offset + length]
    cache.close()


def test_missing_block_is_a_miss(tmp_path: Path) -> None:
    cache = opened(tmp_path)
    assert cache.read(block(0), 0, 10) is None
    assert cache.stats.misses == 1


@pytest.mark.parametrize("where", [0, 25, 30 + 5, 30 + CHUNK_SIZE + 7, -1])
def test_flipped_byte_is_detected_and_dropped(tmp_path: Path, where: int) -> None:
    cache, path = stored(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[where] ^= 0x40
    path.write_bytes(bytes(raw))
    assert cache.read(block(3, BLOCK), 0, len(BLOCK)) is None
    assert not path.exists(), "a corrupt block is deleted so it is fetched again"
    assert cache.stats.corrupt_blocks == 1
    assert cache.usage() == 0, "and no longer counted"


def test_truncated_block_and_wrong_length_are_misses(tmp_path: Path) -> None:
    cache, path = stored(tmp_path)
    longer = PieceKey(OBJECT, 3 * len(BLOCK), len(BLOCK) + 1)
    assert cache.read(longer, 0, 10) is None, "another piece: no file of that name"
    path.rename(path.with_name(longer.file_name))  # a file whose header describes another length
    assert cache.read(longer, 0, 10) is None
    assert cache.stats.corrupt_blocks == 1
    cache, path = stored(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    assert cache.read(block(3, BLOCK), len(BLOCK) - 10, 10) is None


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    _, path = stored(tmp_path)
    assert os.listdir(path.parent) == [path.name]


def test_unusable_cache_directory_is_reported_and_skipped(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    cache = BlockCache(blocker)
    assert "cannot be used" in (cache.open() or "")
    assert cache.write(PieceKey(OBJECT, 0, 1), memoryview(b"x"), {}) is False
    assert cache.read(PieceKey(OBJECT, 0, 1), 0, 1) is None


def test_limit_evicts_least_recently_used_blocks(tmp_path: Path) -> None:
    cache = opened(tmp_path, limit=3 * SMALL_DISK)
    for index in range(3):
        assert cache.write(block(index), memoryview(SMALL), {})
    assert cache.read(block(0), 0, 10) == SMALL[:10]  # block 0 becomes the most recent
    cache._index.flush_touches()  # type: ignore[union-attr]
    assert cache.write(block(3), memoryview(SMALL), {})
    kept = {index for index in range(4) if cache.contains(block(index))}
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
            assert cache.write(block(index), memoryview(SMALL), {})
            model = [i for i in model if i != index] + [index]
            model = model[-capacity:]
        else:
            hit = cache.read(block(index), 0, 100)
            assert (hit is not None) == (index in model)
            if hit is not None:
                model = [i for i in model if i != index] + [index]
        assert {i for i in range(13) if cache.contains(block(i))} == set(model)
        assert cache.usage() == len(model) * SMALL_DISK
    cache.close()


def test_reopen_reconciles_index_with_disk(tmp_path: Path) -> None:
    cache = opened(tmp_path)
    for index in range(3):
        cache.write(block(index), memoryview(SMALL), {})
    cache.close()
    directory = tmp_path / "pieces" / OBJECT[:2] / OBJECT
    (directory / block(1).file_name).unlink()  # lost (e.g. power cut after the index committed)
    # written but never indexed (crash)
    (directory / block(7).file_name).write_bytes((directory / block(0).file_name).read_bytes())
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
        (first if index % 2 else second).write(block(index), memoryview(SMALL), {})
        assert first.usage() == second.usage() <= 4 * SMALL_DISK
    assert sum(first.contains(block(i)) for i in range(10)) == 4


def test_drop_object_and_prune(tmp_path: Path) -> None:
    cache = opened(tmp_path)
    other = "cd" * 32
    for index in range(4):
        cache.write(block(index), memoryview(SMALL), {"url": "http://h/a"})
        cache.write(block(index, object_id=other), memoryview(SMALL), {"url": "http://h/b"})
    assert sorted((u.description["url"], u.blocks) for u in cache.objects()) == [("http://h/a", 4), ("http://h/b", 4)]
    assert cache.drop_object(OBJECT) == 4
    assert cache.usage() == 4 * SMALL_DISK
    assert cache.prune(SMALL_DISK) == 3
    assert cache.usage() == SMALL_DISK


def test_pieces_of_another_block_size_are_never_confused(tmp_path: Path) -> None:
    """0.1 keyed blocks by index: block 2 of a 1 MiB mount was served as block 2 of a 4 MiB mount."""
    small, large = PieceKey(OBJECT, 2 * 1024, 1024), PieceKey(OBJECT, 2 * 4096, 4096)
    cache = opened(tmp_path)
    assert cache.write(small, memoryview(SMALL[:1024]), {})
    assert cache.read(large, 0, 100) is None
    assert not cache.contains(large)
    assert cache.read(small, 0, 100) == SMALL[:100]


def test_reconcile_keeps_pieces_another_process_added_after_the_scan(tmp_path: Path) -> None:
    running, starting = opened(tmp_path), opened(tmp_path)
    scanned = starting._scan_and_clean()
    assert running.write(block(0), memoryview(SMALL), {}), "written between the scan and the reconcile"
    index = starting._index
    assert index is not None
    index.reconcile(scanned, None, starting._exists)
    assert starting.read(block(0), 0, 10) == SMALL[:10]
    assert starting.usage() == SMALL_DISK, "still counted against the limit"


def test_reconcile_does_not_adopt_pieces_evicted_after_the_scan(tmp_path: Path) -> None:
    running, starting = opened(tmp_path), opened(tmp_path)
    assert running.write(block(0), memoryview(SMALL), {})
    scanned = starting._scan_and_clean()
    assert running.drop_object(OBJECT) == 1
    index = starting._index
    assert index is not None
    index.reconcile(scanned, None, starting._exists)
    assert starting.usage() == 0


@pytest.mark.parametrize("vanished", ["piece", "object directory"])
def test_pieces_another_mount_evicts_during_the_scan_leave_the_cache_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vanished: str
) -> None:
    """12: a piece evicted by another mount between the scan's scandir and its stat (FileNotFoundError) made
    the starting mount run with no cache at all; so did a directory removed between two levels of the scan."""
    running = opened(tmp_path)
    other = "cd" * 32
    for index in range(2):
        assert running.write(block(index), memoryview(SMALL), {})
    assert running.write(block(0, object_id=other), memoryview(SMALL), {})
    listed = store_module._entries

    def listing_then_evicting(path: str | Path) -> list[os.DirEntry[str]]:
        entries = listed(path)
        if Path(path).name == OBJECT[:2] and vanished == "object directory":
            assert running.drop_object(OBJECT) == 2  # the other mount, right after this listing
        elif Path(path).name == OBJECT and vanished == "piece":
            assert running.prune(2 * SMALL_DISK) == 1  # its LRU piece: block 0 of OBJECT
        return entries

    monkeypatch.setattr(store_module, "_entries", listing_then_evicting)
    starting = BlockCache(tmp_path)
    assert starting.open() is None, "the cache stays usable"
    kept = {key for key in (block(0), block(1), block(0, object_id=other)) if starting.contains(key)}
    assert kept == ({block(1), block(0, object_id=other)} if vanished == "piece" else {block(0, object_id=other)})
    assert starting.usage() == len(kept) * SMALL_DISK
    assert starting.read(block(0, object_id=other), 0, 10) == SMALL[:10]


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Make directories immutable (chattr +i: even root cannot unlink inside), undone at the end."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if subprocess.run(["chattr", "+i", str(path)], check=False, capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported here")
        made.append(path)

    try:
        yield make
    finally:
        for path in made:
            subprocess.run(["chattr", "-i", str(path)], check=False)


def test_undeletable_pieces_do_not_raise(tmp_path: Path, immutable: Callable[[Path], None]) -> None:
    """0.1 let PermissionError/EROFS from unlink escape into the reader (and the daemon)."""
    cache, path = stored(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    immutable(path.parent)
    assert cache.read(block(3, BLOCK), 0, len(BLOCK)) is None, "corrupt and undeletable: still just a miss"
    assert cache.drop_object(OBJECT) == 0, "already forgotten by the index"
    assert cache.usage() == 0
    cache.close()
    assert opened(tmp_path).read(block(3, BLOCK), 0, len(BLOCK)) is None, "adopted again, and again a miss"


def test_index_failures_do_not_raise(tmp_path: Path) -> None:
    """SQLite refusing a write (here read-only; SQLITE_FULL alike) must not escape drop_object or record."""
    cache = opened(tmp_path)
    assert cache.write(block(0), memoryview(SMALL), {})
    index = cache._index
    assert index is not None
    index._db.execute("PRAGMA query_only = 1")
    assert cache.write(block(1), memoryview(SMALL), {}) is False
    assert not (tmp_path / "pieces" / OBJECT[:2] / OBJECT / block(1).file_name).exists(), "unaccounted: removed"
    assert cache.drop_object(OBJECT) == 1
    assert cache.read(block(0), 0, 10) is None, "dropped from disk even though the index could not say so"


def test_old_layout_is_removed(tmp_path: Path) -> None:
    old = tmp_path / "blocks" / OBJECT[:2] / OBJECT
    old.mkdir(parents=True)
    (old / "3").write_bytes(b"a block of version 0.1")
    opened(tmp_path)
    assert not (tmp_path / "blocks").exists()


def test_two_caches_of_one_process_write_the_same_piece_at_once(tmp_path: Path) -> None:
    """Found by the model-based test: two engines of one process on one directory named their temporary files
    by pid and a per-cache counter, so concurrent writes of one piece collided (EEXIST, writes paused)."""
    first, second = opened(tmp_path), opened(tmp_path)
    failures: list[BaseException] = []

    def write_many(cache: BlockCache) -> None:
        try:
            for _ in range(300):
                cache.store_files([(block(0), memoryview(SMALL))])
        except OSError as error:
            failures.append(error)

    threads = [threading.Thread(target=write_many, args=(cache,)) for cache in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
