"""One fetch per piece across mounts: several rangefs daemons on one cache dir reading the same file at once.

Each mount is a process of its own (the real CLI), the origin counts the bytes it sends, and every byte read
through every mount is checked by hash. Before claims (rangefs/cache/claims.py) two mounts fetched about
1.5x the file between them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

import rangefs
from tests.conftest import MountFactory
from tests.daemons import kill_hard
from tests.mounting import Mount, rangefs_command
from tests.origin import Origin, pattern_bytes
from tests.test_mount_cache_limits import sha256_of
from tests.waiting import eventually

MiB = 1024 * 1024


def store_stats(mounted: Mount) -> dict[str, int]:
    stats = json.loads(os.getxattr(mounted.path, "user.rangefs.stats"))
    return stats["blocks"]  # type: ignore[no-any-return]


def claim_owners(cache_dir: Path) -> list[int]:
    """The pids that hold claims in the cache dir's index (read as another process would)."""
    with sqlite3.connect(cache_dir / "index.sqlite3", timeout=10) as db:
        return [pid for (pid,) in db.execute("SELECT pid FROM claims")]


def read_at_once(mounts: list[Mount], name: str) -> list[str | BaseException]:
    """Read the whole file through every mount at the same moment; each mount's sha256 (or its error)."""
    results: list[str | BaseException] = [RuntimeError("no result")] * len(mounts)
    start = threading.Barrier(len(mounts))

    def read(number: int) -> None:
        start.wait()
        try:
            results[number] = sha256_of(mounts[number].path / name)
        except BaseException as error:  # reported by the test, not lost in the thread
            results[number] = error

    threads = [threading.Thread(target=read, args=(number,)) for number in range(len(mounts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    return results


@pytest.mark.parametrize("count", [2, 4])
def test_concurrent_mounts_fetch_each_byte_once(
    count: int, origin: Origin, mount_factory: MountFactory, tmp_path: Path
) -> None:
    data = pattern_bytes(48 * MiB, seed=130 + count)
    url = origin.add("/together.bin", data)
    cache_dir = tmp_path / "cache"
    mounts = [mount_factory([url], cache_dir=cache_dir, name=f"m{n}") for n in range(count)]
    origin.clear_log()  # the probes' HEADs

    results = read_at_once(mounts, "together.bin")

    assert results == [hashlib.sha256(data).hexdigest()] * count
    sent = origin.bytes_sent_for("/together.bin")
    assert sent <= 1.05 * len(data), f"{count} mounts fetched {sent / len(data):.2f}x the file"
    waited = sum(store_stats(mounted)["blocks_from_others"] for mounted in mounts)
    assert waited > 0, "the mounts read at the same time, so some waited for another's fetch"
    assert claim_owners(cache_dir) == [], "every claim is dropped once its piece is on disk"


def test_reader_takes_over_when_the_owner_is_killed(
    origin: Origin, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """A fetching daemon killed -9 mid-file: the other mount's reader, waiting for its claims, gets every byte
    right, fetching the rest itself, without waiting for the lease (the owner's pid is gone)."""
    data = pattern_bytes(24 * MiB, seed=140)
    origin.connection_rate = MiB  # per connection: the owner's fetches (8 at most) still run when it dies
    url = origin.add("/owner.bin", data)
    cache_dir = tmp_path / "cache"
    owner, waiter = (mount_factory([url], cache_dir=cache_dir, name=name) for name in ("owner", "waiter"))
    owner.allowed_log_patterns.append(".")  # killed: whatever it logged last is not the test's concern
    owner_read = threading.Thread(target=lambda: _read_quietly(owner.path / "owner.bin"), daemon=True)
    owner_read.start()
    eventually(lambda: owner.process.pid in claim_owners(cache_dir), "claimed by the owner", timeout=20)

    result: list[str | BaseException] = []
    waiter_read = threading.Thread(target=lambda: result.append(_hash_or_error(waiter.path / "owner.bin")))
    waiter_read.start()
    eventually(lambda: store_stats(waiter)["blocks_from_others"] > 0, "waiting for the owner's pieces", timeout=30)
    kill_hard(owner.process.pid)
    killed_at = time.monotonic()
    # Bounded: the rest of the file fetched by the waiter alone, at the origin's rate, and a lease.
    waiter_read.join(timeout=len(data) / origin.connection_rate + 30)
    took = time.monotonic() - killed_at

    assert not waiter_read.is_alive(), f"the waiter still reads {took:.1f} s after the owner was killed"
    assert result == [hashlib.sha256(data).hexdigest()]
    taken_over = json.loads(os.getxattr(waiter.path, "user.rangefs.stats"))["cache"]["claims_taken_over"]
    assert taken_over > 0, "the dead owner's claims were taken over (while waiting for them, or when claiming)"


def test_claims_of_a_killed_daemon_are_cleared_on_the_next_mount(
    origin: Origin, mount_factory: MountFactory, tmp_path: Path
) -> None:
    data = pattern_bytes(8 * MiB, seed=150)
    origin.connection_rate = 1 * MiB
    url = origin.add("/stale.bin", data)
    cache_dir = tmp_path / "cache"
    killed = mount_factory([url], cache_dir=cache_dir, name="killed")
    killed.allowed_log_patterns.append(".")
    threading.Thread(target=lambda: _read_quietly(killed.path / "stale.bin"), daemon=True).start()
    eventually(lambda: killed.process.pid in claim_owners(cache_dir), "claimed", timeout=20)
    kill_hard(killed.process.pid)
    assert killed.process.pid in claim_owners(cache_dir), "a killed process cannot drop its claims itself"

    origin.connection_rate = None
    mount_factory([url], cache_dir=cache_dir, name="next")

    assert claim_owners(cache_dir) == []


def _read_quietly(path: Path) -> None:
    """Read a file whose daemon the test is about to kill (the read then fails: ENOTCONN)."""
    with contextlib.suppress(OSError):
        sha256_of(path)


def _hash_or_error(path: Path) -> str | BaseException:
    try:
        return sha256_of(path)
    except OSError as error:
        return error


def test_a_mount_and_the_python_api_fetch_each_byte_once(
    origin: Origin, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """The API in this process and a mount daemon, one cache dir, the same file at the same time."""
    data = pattern_bytes(32 * MiB, seed=160)
    url = origin.add("/api.bin", data)
    cache_dir = tmp_path / "cache"
    mounted = mount_factory([url], cache_dir=cache_dir)
    with rangefs.Session(cache_dir=cache_dir) as session, session.open(url) as remote:
        origin.clear_log()  # the probes' HEADs
        start = threading.Barrier(2)
        through_api: list[str] = []

        def read_api() -> None:
            start.wait()
            digest = hashlib.sha256()
            while chunk := remote.read(MiB):
                digest.update(chunk)
            through_api.append(digest.hexdigest())

        api = threading.Thread(target=read_api)
        api.start()
        start.wait()
        through_mount = sha256_of(mounted.path / "api.bin")
        api.join(timeout=120)

    assert [through_mount, *through_api] == [hashlib.sha256(data).hexdigest()] * 2
    sent = origin.bytes_sent_for("/api.bin")
    assert sent <= 1.05 * len(data), f"the mount and the API fetched {sent / len(data):.2f}x the file"


def test_a_mount_and_rangefs_get_fill_cache_fetch_each_byte_once(
    origin: Origin, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """``rangefs get --fill-cache -o`` goes through the block store, so it shares fetches with a mount."""
    data = pattern_bytes(32 * MiB, seed=161)
    url = origin.add("/get.bin", data)
    origin.connection_rate = 16 * MiB  # per connection: both are still reading when the other starts
    cache_dir = tmp_path / "cache"
    mounted = mount_factory([url], cache_dir=cache_dir)
    assert (mounted.path / "get.bin").stat().st_size == len(data)
    origin.clear_log()
    target = str(tmp_path / "got.bin")
    command = rangefs_command("get", url, "-o", target, "--fill-cache", "--cache-dir", str(cache_dir))
    download = subprocess.Popen(command, stderr=subprocess.PIPE)
    try:
        through_mount = sha256_of(mounted.path / "get.bin")
        _, stderr = download.communicate(timeout=120)
    finally:
        if download.poll() is None:
            download.kill()
            download.wait()
    assert download.returncode == 0, stderr
    assert through_mount == sha256_of(tmp_path / "got.bin") == hashlib.sha256(data).hexdigest()
    sent = origin.bytes_sent_for("/get.bin")
    assert sent <= 1.05 * len(data), f"the mount and rangefs get fetched {sent / len(data):.2f}x the file"
