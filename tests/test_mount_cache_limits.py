"""A cache users can trust: size limit, crashes, corruption, sharing, full disks, fast remounts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MountFactory
from tests.mounting import Mount, read_direct
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024


def block_files(cache_dir: Path) -> list[Path]:
    return [path for path in (cache_dir / "pieces").rglob("*") if path.is_file() and "+" in path.name]


def disk_usage(directory: Path) -> int:
    """Bytes the directory really occupies, as du counts them."""
    return sum(os.lstat(p).st_blocks * 512 for p in directory.rglob("*") if p.is_file())


def drop_page_cache() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("1\n")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_size_limit_holds_while_reading_a_larger_file(origin: Origin, mount_factory: MountFactory) -> None:
    data = pattern_bytes(64 * MiB, seed=31)
    url = origin.add("/big.bin", data)
    mounted = mount_factory([url], "--cache-size", "16M", "--max-inflight", "8M", "--max-readahead", "8M")
    for _ in range(2):  # twice: the second pass evicts what the first one cached
        assert sha256_of(mounted.path / "big.bin") == hashlib.sha256(data).hexdigest()
        assert disk_usage(mounted.cache_dir / "pieces") <= 16 * MiB
        drop_page_cache()  # the second pass must reach the daemon, not the kernel's copy
    kept = block_files(mounted.cache_dir)
    assert 8 <= len(kept) <= 16
    assert {int(path.name.split("+")[0]) // MiB for path in kept} >= {63}, "the most recently read blocks are kept"
    assert origin.bytes_sent_for("/big.bin") >= 2 * 64 * MiB - 16 * MiB


def test_corrupted_blocks_are_refetched_not_served(origin: Origin, mount_factory: MountFactory, tmp_path: Path) -> None:
    data = pattern_bytes(6 * MiB, seed=32)
    url = origin.add("/c.bin", data)
    cache_dir = tmp_path / "cache"
    first = mount_factory([url], cache_dir=cache_dir)
    assert sha256_of(first.path / "c.bin") == hashlib.sha256(data).hexdigest()
    first.unmount()
    corrupted = sorted(block_files(cache_dir), key=lambda p: int(p.name.split("+")[0]))[1:4]
    for path in corrupted:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    origin.clear_log()
    second = mount_factory([url], cache_dir=cache_dir)
    second.allowed_log_patterns.append("dropping corrupt piece")
    assert sha256_of(second.path / "c.bin") == hashlib.sha256(data).hexdigest()
    refetched = {record.range for record in origin.requests_for("/c.bin")}
    assert refetched, "the corrupted blocks must come from the origin again"
    fetched_bytes = origin.bytes_sent_for("/c.bin")
    assert fetched_bytes == len(corrupted) * MiB, "only the corrupted blocks"
    assert second.log_text().count("dropping corrupt piece") == len(corrupted)


def test_kill_minus_nine_never_leaves_a_wrong_byte(origin: Origin, mount_factory: MountFactory, tmp_path: Path) -> None:
    files = {f"/crash-{n}.bin": pattern_bytes((12 + 5 * n) * MiB + 321 * n, seed=40 + n) for n in range(3)}
    urls = [origin.add(path, data) for path, data in files.items()]
    cache_dir = tmp_path / "cache"
    rng = random.Random(8)
    for round_number in range(10):
        mounted = mount_factory(urls, cache_dir=cache_dir, name=f"crash{round_number}")
        stop, killed = threading.Event(), threading.Event()
        failures: list[str] = []

        def hammer(
            seed: int,
            mounted: Mount = mounted,
            stop: threading.Event = stop,
            killed: threading.Event = killed,
            failures: list[str] = failures,
        ) -> None:
            local = random.Random(seed)
            paths = sorted(files)
            while not stop.is_set():
                name = local.choice(paths)
                data = files[name]
                offset = local.randrange(len(data))
                wanted = data[offset : offset + local.choice([4096, 300_000, 2 * MiB])]
                try:
                    got = read_direct(mounted.path / name.lstrip("/"), offset, len(wanted))
                except OSError as error:
                    if not killed.is_set():  # an error while the daemon is alive is a failure, not its death
                        failures.append(f"{name}@{offset}: {error} before the kill")
                    return
                if got != data[offset : offset + len(got)]:
                    failures.append(f"{name}@{offset}: a wrong byte was served")
                elif len(got) < len(wanted) and not killed.is_set():  # a read cut short by the kill may be
                    failures.append(f"{name}@{offset}: {len(got)} of {len(wanted)} bytes before the kill")

        readers = [threading.Thread(target=hammer, args=(round_number * 10 + n,)) for n in range(4)]
        for reader in readers:
            reader.start()
        time.sleep(rng.uniform(0.05, 0.6))
        killed.set()
        os.kill(mounted.process.pid, signal.SIGKILL)
        stop.set()
        for reader in readers:
            reader.join(timeout=30)
        assert failures == []
        mounted.unmount()
    final = mount_factory(urls, cache_dir=cache_dir, name="final")
    for name, data in files.items():
        assert sha256_of(final.path / name.lstrip("/")) == hashlib.sha256(data).hexdigest()
    leftovers = [p for p in (cache_dir / "pieces").rglob("*.tmp")]
    assert leftovers == [], "temporary files of killed daemons are cleaned up on the next mount"


def test_two_mounts_share_one_cache_directory(origin: Origin, mount_factory: MountFactory, tmp_path: Path) -> None:
    files = {f"/shared-{n}.bin": pattern_bytes(20 * MiB, seed=50 + n) for n in range(3)}
    urls = [origin.add(path, data) for path, data in files.items()]
    cache_dir = tmp_path / "cache"
    limit = ["--cache-size", "24M", "--max-inflight", "8M"]
    mounts = [mount_factory(urls, *limit, cache_dir=cache_dir, name=f"m{n}") for n in range(2)]
    errors: list[str] = []

    def read_all(mounted: Mount, order: list[str]) -> None:
        for name in order:
            if sha256_of(mounted.path / name.lstrip("/")) != hashlib.sha256(files[name]).hexdigest():
                errors.append(f"{name} wrong through {mounted.path}")

    names = sorted(files)
    threads = [
        threading.Thread(target=read_all, args=(mounts[0], names)),
        threading.Thread(target=read_all, args=(mounts[1], names[::-1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert disk_usage(cache_dir / "pieces") <= 24 * MiB


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_cache_disk_keeps_serving_right_bytes(origin: Origin, mount_factory: MountFactory, tmp_path: Path) -> None:
    data = pattern_bytes(24 * MiB, seed=60)
    url = origin.add("/full.bin", data)
    with tiny_tmpfs(tmp_path / "small", "3m") as small:
        mounted = mount_factory([url], "--cache-size", "0", cache_dir=small / "cache")
        mounted.allowed_log_patterns.append("disk full|cannot write")
        for _ in range(2):
            assert sha256_of(mounted.path / "full.bin") == hashlib.sha256(data).hexdigest()
            drop_page_cache()  # make the second pass reach the daemon
        assert "disk full" in mounted.log_text()
        assert mounted.log_text().count("disk full") <= 2, "logged once per pause, not per block"
        mounted.unmount()


def test_remount_of_many_fresh_urls_sends_no_request(
    origin: Origin, mount_factory: MountFactory, tmp_path: Path
) -> None:
    urls = [origin.add(f"/n/{number:05d}", bytes([number % 256]) * (number % 100 + 1)) for number in range(10_000)]
    cache_dir = tmp_path / "cache"
    first = mount_factory(urls, cache_dir=cache_dir)
    assert len([entry.stat() for entry in os.scandir(first.path)]) == 10_000  # ls -l: waits for every probe
    first.unmount()
    origin.clear_log()
    started = time.monotonic()
    second = mount_factory(urls, cache_dir=cache_dir)
    sizes = {entry.name: entry.stat().st_size for entry in os.scandir(second.path)}
    elapsed = time.monotonic() - started
    assert len(sizes) == 10_000 and sizes["00123"] == 24
    assert origin.requests == [], "fresh probe results are reused"
    print(f"remount and ls -l of 10,000 URLs took {elapsed:.2f} s")
