"""Offline start through real mounts: a list whose probe results are stored mounts with its origin down (or with
``--offline``, which sends nothing at all); files show their real sizes, cached bytes read, the rest fails with
EIO and one log line per file, not one per read."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.conftest import MountFactory
from tests.mounting import Mount, read_direct
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024
DATA = pattern_bytes(4 * MiB + 5, seed=130)
OTHER = pattern_bytes(MiB + 3, seed=131)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_once_online(origin: Origin, mount_factory: MountFactory, cache_dir: Path) -> tuple[str, str]:
    """Mount both files, read the first MiB of one (cached), only list the other (its size stored); unmount."""
    data_url, other_url = origin.add("/data.bin", DATA), origin.add("/other.bin", OTHER)
    online = mount_factory([data_url, other_url], cache_dir=cache_dir, name="online")
    assert _digest(read_direct(online.path / "data.bin", 0, MiB)) == _digest(DATA[:MiB])
    assert (online.path / "other.bin").stat().st_size == len(OTHER)
    online.unmount()
    return data_url, other_url


def _assert_serves_the_cache(mounted: Mount, data_url: str) -> None:
    assert (mounted.path / "data.bin").stat().st_size == len(DATA), "the real size, from the stored probe"
    assert (mounted.path / "other.bin").stat().st_size == len(OTHER)
    assert _digest(read_direct(mounted.path / "data.bin", 0, MiB)) == _digest(DATA[:MiB])
    assert _digest(read_direct(mounted.path / "data.bin", 4096, 8192)) == _digest(DATA[4096 : 4096 + 8192])
    for offset in (2 * MiB, 2 * MiB, 3 * MiB):  # never cached: EIO every time
        time.sleep(0.15)  # a host known down says for how long in each message: the messages differ
        with pytest.raises(OSError) as raised:
            read_direct(mounted.path / "data.bin", offset, 4096)
        assert raised.value.errno == errno.EIO
    with pytest.raises(OSError) as raised:
        read_direct(mounted.path / "other.bin", 0, 4096)
    assert raised.value.errno == errno.EIO
    mounted.unmount()
    failures = [line for line in mounted.log_text().splitlines() if f"read of {data_url} failed" in line]
    assert len(failures) == 1, "one log line for the file, not one per read"


def test_mount_with_the_origin_down_serves_what_is_cached(mount_factory: MountFactory, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with Origin().running() as origin:
        data_url, other_url = _read_once_online(origin, mount_factory, cache_dir)
    # The origin is gone: nothing listens on its port any more. A metadata TTL of 0 probes at once, and every
    # open revalidates: each fails, and is logged once.
    offline = mount_factory([data_url, other_url], "--metadata-ttl", "0", cache_dir=cache_dir, name="down")
    _assert_serves_the_cache(offline, data_url)
    log = offline.log_text()
    assert log.count(f"cannot revalidate {data_url} (connection refused by") == 1, "once, not once per open"
    assert f"read of {data_url} failed: " in log


def test_offline_flag_sends_no_request(origin: Origin, mount_factory: MountFactory, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    data_url, other_url = _read_once_online(origin, mount_factory, cache_dir)
    origin.clear_log()
    never_seen = origin.add("/never.bin", OTHER)
    # A metadata TTL of 0 would send every open to the origin; offline, stored results serve whatever their age.
    lines = [data_url, other_url, never_seen]
    offline = mount_factory(lines, "--offline", "--metadata-ttl", "0", cache_dir=cache_dir, name="offline")
    with pytest.raises(OSError) as raised:
        (offline.path / "never.bin").stat()
    assert raised.value.errno == errno.EIO, "nothing stored of it: no size to show"
    assert "--offline, and nothing is stored" in os.getxattr(offline.path / "never.bin", "user.rangefs.error").decode()
    _assert_serves_the_cache(offline, data_url)
    assert f"read of {data_url} failed: not in the cache, and --offline sends no request" in offline.log_text()
    assert origin.requests == [], "offline: not one request"
