"""Readahead through a real mount, judged by what the origin sees: requests and bytes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from rangefs.cache import blockfile
from tests.conftest import MountFactory
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024


def stats(mountpoint: Path) -> dict[str, dict[str, int]]:
    return json.loads(os.getxattr(mountpoint, "user.rangefs.stats"))  # type: ignore[no-any-return]


def test_cat_of_a_large_file_costs_few_requests_and_each_byte_once(origin: Origin, mount_factory: MountFactory) -> None:
    size = 256 * MiB
    data = pattern_bytes(size, seed=21)
    url = origin.add("/large.bin", data)
    mounted = mount_factory([url])
    digest = hashlib.sha256()
    with open(mounted.path / "large.bin", "rb") as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    gets = origin.requests_for("/large.bin")
    assert len(gets) <= 40, [record.range for record in gets]
    assert origin.bytes_sent_for("/large.bin") == size, "each byte is fetched once"
    assert stats(mounted.path)["prefetch"]["parts_started"] > 20, "most of the file came from readahead"


def test_random_small_reads_fetch_only_their_blocks(origin: Origin, mount_factory: MountFactory) -> None:
    size = 256 * MiB
    data = pattern_bytes(size, seed=22)
    url = origin.add("/random.bin", data)
    mounted = mount_factory([url])
    rng = random.Random(5)
    blocks = rng.sample(range(size // MiB), 40)  # distinct blocks: each read is a cold miss
    fd = os.open(mounted.path / "random.bin", os.O_RDONLY)
    try:
        for block in blocks:
            offset = block * MiB + rng.randrange(0, MiB - 4096)
            assert os.pread(fd, 4096, offset) == data[offset : offset + 4096]
    finally:
        os.close(fd)
    assert len(origin.requests_for("/random.bin")) == len(blocks), "one request per random read"
    assert origin.bytes_sent_for("/random.bin") <= len(blocks) * MiB, "at most its block per read"


def _zip_with_members(count: int) -> bytes:
    buffer = io.BytesIO()
    rng = random.Random(7)
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(count):
            archive.writestr(f"members/file-{number:05d}.dat", rng.randbytes(8192), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed (Debian package unzip)")
def test_unzip_listing_and_one_member_cost_a_few_requests(origin: Origin, mount_factory: MountFactory) -> None:
    archive = _zip_with_members(2000)
    url = origin.add("/members.zip", archive)
    mounted = mount_factory([url])
    path = mounted.path / "members.zip"
    listing = subprocess.run(["unzip", "-l", str(path)], capture_output=True, text=True, check=True).stdout
    assert "2000 files" in listing
    listing_requests = len(origin.requests_for("/members.zip"))
    assert listing_requests <= 3
    member = "members/file-01234.dat"
    extracted = subprocess.run(["unzip", "-p", str(path), member], capture_output=True, check=True).stdout
    with zipfile.ZipFile(io.BytesIO(archive)) as reference:
        assert extracted == reference.read(member)
    assert len(origin.requests_for("/members.zip")) - listing_requests <= 2
    assert origin.bytes_sent_for("/members.zip") < len(archive) // 3


def test_closing_a_file_stops_its_prefetch(origin: Origin, mount_factory: MountFactory) -> None:
    size = 200 * MiB
    data = pattern_bytes(size, seed=23)
    url = origin.add("/stream.bin", data)
    origin.connection_rate = 8 * MiB  # slow enough that prefetch is still running when the file is closed
    mounted = mount_factory([url])
    path = mounted.path / "stream.bin"
    with open(path, "rb") as stream:
        for position in range(0, 24 * MiB, MiB):
            assert stream.read(MiB) == data[position : position + MiB]
        during = stats(mounted.path)
        assert during["blocks"]["bytes_in_flight"] > 0, "readahead must be running before the close"
    deadline = time.monotonic() + 10
    # Each part holds its budget until its blocks are on disk, so the budget is free a little after the
    # fetches end (on a loaded machine, the cache writes lag).
    while time.monotonic() < deadline:
        after = stats(mounted.path)
        if not after["blocks"]["bytes_in_flight"] and not after["prefetch"]["budget_in_use"]:
            break
        time.sleep(0.05)
    assert after["blocks"]["bytes_in_flight"] == 0
    assert after["prefetch"]["budget_in_use"] == 0
    assert after["prefetch"]["parts_cancelled"] > 0
    while origin.in_flight and time.monotonic() < deadline:  # the origin notices the closed connections
        time.sleep(0.05)
    sent = origin.bytes_sent_for("/stream.bin")
    time.sleep(0.5)
    assert origin.bytes_sent_for("/stream.bin") == sent, "the origin stops sending"
    assert sent < size // 2
    _assert_cache_holds_only_whole_blocks(mounted.cache_dir)


def _assert_cache_holds_only_whole_blocks(cache_dir: Path) -> None:
    files = [path for path in (cache_dir / "pieces").rglob("*") if path.is_file()]
    assert not [path for path in files if path.name.endswith(".tmp")], "no half-written block is left"
    blocks = [path for path in files if "+" in path.name and not path.name.startswith(".")]
    assert blocks
    for path in blocks:
        raw = path.read_bytes()
        length = struct.unpack_from("<Q", raw, 12)[0]
        crcs = blockfile.parse_header(raw, length)
        data = raw[blockfile.header_size(length) :]
        assert len(data) == length
        assert [zlib.crc32(data[i : i + blockfile.CHUNK_SIZE]) for i in range(0, length, blockfile.CHUNK_SIZE)] == list(
            crcs
        )
