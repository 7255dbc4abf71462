"""Byte-exact reads through a real mount of a loopback origin."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MountFactory
from tests.mounting import read_direct
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024
SIZE = 5 * MiB + 12_345  # not a multiple of the block size: the last block is short


@pytest.fixture
def data_file(origin: Origin, mount_factory: MountFactory) -> tuple[bytes, Path]:
    data = pattern_bytes(SIZE, seed=7)
    url = origin.add("/dir/data%20file.bin", data)
    mounted = mount_factory([url])
    return data, mounted.path / "data file.bin"


def test_listing_shows_size_mode_and_mtime(data_file: tuple[bytes, Path]) -> None:
    data, path = data_file
    info = path.stat()
    assert info.st_size == len(data)
    assert info.st_mode & 0o777 == 0o444
    assert info.st_mtime > 1_600_000_000  # from Last-Modified, not "now"
    assert os.listdir(path.parent) == ["data file.bin"]


def test_whole_file_hash_matches_origin(data_file: tuple[bytes, Path]) -> None:
    data, path = data_file
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, SIZE + MiB), length=st.integers(0, 3 * MiB))
def test_random_reads_are_byte_exact(data_file: tuple[bytes, Path], offset: int, length: int) -> None:
    data, path = data_file
    assert read_direct(path, offset, length) == data[offset : offset + length]


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (MiB - 1, 2),  # straddles a block boundary
        (MiB, MiB),  # exactly one block
        (0, 3 * MiB),  # several whole blocks
        (SIZE - 1, 10),  # last byte, short read at EOF
        (SIZE, 10),  # at EOF: empty
        (SIZE + 5000, 10),  # past EOF: empty
        (5 * MiB, 12_345),  # exactly the short last block
    ],
)
def test_block_edges_and_eof(data_file: tuple[bytes, Path], offset: int, length: int) -> None:
    data, path = data_file
    assert read_direct(path, offset, length) == data[offset : offset + length]


def test_concurrent_readers_get_the_same_right_bytes(data_file: tuple[bytes, Path], origin: Origin) -> None:
    data, path = data_file
    results: dict[int, str] = {}

    def read_all(number: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            starts = list(range(0, SIZE, 256 * 1024))
            first = number * 3 % len(starts)  # each reader starts elsewhere and wraps around
            chunks = [(start, os.pread(fd, 256 * 1024, start)) for start in starts[first:] + starts[:first]]
            results[number] = hashlib.sha256(b"".join(c for _, c in sorted(chunks))).hexdigest()
        finally:
            os.close(fd)

    threads = [threading.Thread(target=read_all, args=(number,)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    expected = hashlib.sha256(data).hexdigest()
    assert results == dict.fromkeys(range(6), expected)
    # One fetch per block: six readers of six blocks do not cost six times the bytes.
    assert origin.bytes_sent_for("/dir/data%20file.bin") <= SIZE + MiB


def test_fetched_requests_are_validated_ranges(data_file: tuple[bytes, Path], origin: Origin) -> None:
    _, path = data_file
    with open(path, "rb") as stream:
        stream.seek(2 * MiB + 10)
        stream.read(100)
    gets = origin.requests_for("/dir/data%20file.bin")
    assert gets, "the read must reach the origin"
    for record in gets:
        assert record.range is not None and record.range.startswith("bytes=")
        assert record.headers.get("accept-encoding") == "identity"
        assert record.headers.get("if-range"), "every range request carries the validator"
        assert record.status == 206


def test_many_urls_are_probed_concurrently(origin: Origin, mount_factory: MountFactory) -> None:
    def slow_head(handler, served) -> bool:  # type: ignore[no-untyped-def]
        time.sleep(0.02)  # a round trip: 1,000 of them in a row would take 20 s
        return False

    origin.faults["*"] = slow_head
    urls = [origin.add(f"/many/{number:04d}.bin", bytes([number % 256]) * (number + 1)) for number in range(1000)]
    mounted = mount_factory(urls)
    listing = {entry.name: entry.stat().st_size for entry in os.scandir(mounted.path)}
    assert listing == {f"{number:04d}.bin": number + 1 for number in range(1000)}
    assert len([r for r in origin.requests if r.method == "HEAD"]) == 1000
    assert origin.max_in_flight >= 8, "probes must overlap, not run one after another"
