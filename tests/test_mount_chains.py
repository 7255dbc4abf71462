"""Request chains through a real mount: a reader waits for its own bytes, not for the rest of a fetch, and the
format-aware prefetch fetches what the format says, judged by the requests and bytes the origin sees."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import faults
from tests.conftest import MountFactory
from tests.media import make_zip
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024


def test_a_read_is_answered_once_its_bytes_are_in_not_when_its_block_is(
    origin: Origin, mount_factory: MountFactory
) -> None:
    data = pattern_bytes(4 * MiB, seed=41)
    url = origin.add("/stalled.bin", data)
    mounted = mount_factory([url])
    gate = threading.Event()
    # The origin sends the first 512 KiB of each response, then holds the rest until the test lets it go.
    origin.faults["/stalled.bin"] = faults.only(("GET",), faults.stall_after(512 * 1024, gate))
    fd = os.open(mounted.path / "stalled.bin", os.O_RDONLY)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(os.pread, fd, 64 * 1024, 0)
            try:
                # Answered while the rest of its block is held back; before, it waited for the whole block.
                head = first.result(timeout=15)
            finally:
                gate.set()
        rest = os.pread(fd, MiB, 64 * 1024)
    finally:
        os.close(fd)
    assert hashlib.sha256(head + rest).digest() == hashlib.sha256(data[: 64 * 1024 + MiB]).digest()
    ranges = [record.range for record in origin.requests_for("/stalled.bin")]
    assert ranges[0] == f"bytes=0-{MiB - 1}", "the read joined a fetch of its whole block"


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed (Debian package unzip)")
def test_unzip_reads_the_end_records_the_directory_and_then_one_member_each_in_one_request(
    origin: Origin, mount_factory: MountFactory
) -> None:
    archive = make_zip(3000)  # stored members of 2-60 KB among deflated ones, as in the benchmark
    url = origin.add("/archive.zip", archive)
    mounted = mount_factory([url])
    path = mounted.path / "archive.zip"
    with zipfile.ZipFile(io.BytesIO(archive)) as reference:
        infos = reference.infolist()
        member = infos[1207]
        expected = reference.read(member)
        directory_offset = reference.start_dir
    listing = subprocess.run(["unzip", "-l", str(path)], capture_output=True, text=True, check=True).stdout
    assert "3000 files" in listing
    ranges = [_range(record.range) for record in origin.requests_for("/archive.zip")]
    assert len(ranges) == 2, ranges
    tail, directory = ranges
    assert tail[1] == len(archive) and tail[1] - tail[0] <= 12 * 1024, "the end records: a few pages"
    assert directory[0] <= directory_offset < directory[0] + 64 * 1024, "the directory, from its own 64 KiB"
    listed = origin.bytes_sent_for("/archive.zip")
    assert listed <= len(archive) - directory_offset + 12 * 1024 + 64 * 1024
    extracted = subprocess.run(["unzip", "-p", str(path), member.filename], capture_output=True, check=True).stdout
    assert hashlib.sha256(extracted).digest() == hashlib.sha256(expected).digest()
    member_ranges = [_range(record.range) for record in origin.requests_for("/archive.zip")][2:]
    assert len(member_ranges) == 1, member_ranges
    start, stop = member_ranges[0]
    # From the 64 KiB piece holding unzip's first read of it to 128 KiB past it (the kernel's readahead).
    assert start <= member.header_offset < start + 64 * 1024 + 8 * 1024
    assert stop - start <= len(expected) + 128 * 1024 + 3 * 64 * 1024


def _range(header: str | None) -> tuple[int, int]:
    assert header is not None and header.startswith("bytes=")
    first, last = header.removeprefix("bytes=").split("-")
    return int(first), int(last) + 1


def test_a_large_read_after_a_seek_fetches_from_its_own_bytes_to_the_end_of_its_block(
    origin: Origin, mount_factory: MountFactory
) -> None:
    data = pattern_bytes(8 * MiB, seed=43)
    url = origin.add("/video.bin", data)
    mounted = mount_factory([url])
    offset = 5 * MiB + 800 * 1024 + 123  # three quarters into block 5, as ffmpeg's read of a keyframe was
    fd = os.open(mounted.path / "video.bin", os.O_RDONLY)
    try:
        first = os.pread(fd, 64 * 1024, offset)
        second = os.pread(fd, 64 * 1024, offset + 64 * 1024)  # the rest of the block: no request of its own
    finally:
        os.close(fd)
    assert hashlib.sha256(first + second).digest() == hashlib.sha256(data[offset : offset + 128 * 1024]).digest()
    ranges = [_range(record.range) for record in origin.requests_for("/video.bin")]
    assert ranges == [(5 * MiB + 768 * 1024, 6 * MiB)], ranges
