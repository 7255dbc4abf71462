"""The disk block cache survives unmount and remount; a changed remote file is never served from it."""

from __future__ import annotations

import os

from tests.conftest import MountFactory
from tests.mounting import read_direct
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024


def test_remount_serves_read_bytes_from_disk_cache(origin: Origin, mount_factory: MountFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = pattern_bytes(4 * MiB + 100, seed=11)
    url = origin.add("/cached.bin", data)
    cache_dir = tmp_path / "shared-cache"
    first = mount_factory([url], cache_dir=cache_dir)
    pieces = [(0, 4096), (MiB + 5, 300_000), (4 * MiB, 100)]
    for offset, length in pieces:
        assert read_direct(first.path / "cached.bin", offset, length) == data[offset : offset + length]
    first.unmount()
    assert origin.requests_for("/cached.bin"), "the first mount must have fetched"
    origin.clear_log()

    second = mount_factory([url], cache_dir=cache_dir)
    for offset, length in pieces:
        assert read_direct(second.path / "cached.bin", offset, length) == data[offset : offset + length]
    assert origin.requests_for("/cached.bin", "GET") == [], "cached bytes must not be fetched again"


def test_changed_remote_file_is_not_served_from_old_blocks(
    origin: Origin,
    mount_factory: MountFactory,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    old, new = pattern_bytes(2 * MiB, seed=1), pattern_bytes(2 * MiB, seed=2)
    url = origin.add("/changing.bin", old)
    cache_dir = tmp_path / "shared-cache"
    first = mount_factory([url], cache_dir=cache_dir)
    assert read_direct(first.path / "changing.bin", 0, 2 * MiB) == old
    first.unmount()

    origin.add("/changing.bin", new)  # same size, new ETag and Last-Modified
    # A zero metadata TTL makes the open revalidate (by default a fresh probe result is trusted for 300 s).
    second = mount_factory([url], "--metadata-ttl", "0", cache_dir=cache_dir)
    assert read_direct(second.path / "changing.bin", 0, 2 * MiB) == new


def test_file_changing_under_an_open_handle_gives_eio_not_mixed_bytes(
    origin: Origin, mount_factory: MountFactory
) -> None:
    old, new = pattern_bytes(3 * MiB, seed=1), pattern_bytes(3 * MiB, seed=2)
    url = origin.add("/swap.bin", old)
    mounted = mount_factory([url])
    mounted.allowed_log_patterns.append("file changed")
    fd = os.open(mounted.path / "swap.bin", os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 4096, 0) == old[:4096]
        origin.add("/swap.bin", new)
        try:
            later = os.pread(fd, 4096, 2 * MiB)
        except OSError as error:
            assert error.errno == 5  # EIO: the version this handle opened is gone
        else:
            raise AssertionError(f"read of a changed file returned {len(later)} bytes instead of failing")
    finally:
        os.close(fd)
    # A new open revalidates and sees the new version.
    assert read_direct(mounted.path / "swap.bin", 2 * MiB, 4096) == new[2 * MiB : 2 * MiB + 4096]
