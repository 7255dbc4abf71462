"""`rangefs cache warm` through a real mount: whole files, --index, and a set that cannot fit."""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

from tests.conftest import MountFactory
from tests.mounting import rangefs_command
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024


def _warm(*args: str) -> subprocess.CompletedProcess[str]:
    command = rangefs_command("cache", "warm", *args)
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def _gets(origin: Origin, path: str) -> int:
    return len(origin.requests_for(path, "GET"))


def test_warmed_files_are_then_read_without_a_request(origin: Origin, mount_factory: MountFactory) -> None:
    big, small = pattern_bytes(24 * MiB + 5, seed=31), pattern_bytes(300_000, seed=32)
    urls = [origin.add("/a/big.bin", big), origin.add("/b/small.bin", small)]
    first = mount_factory(urls)
    result = _warm(str(first.path))
    assert result.returncode == 0, result.stderr
    assert "warmed 2 files" in result.stderr
    assert origin.bytes_sent_for("/a/big.bin") <= len(big) + 2 * MiB, "each block fetched about once"
    first.unmount()
    origin.clear_log()
    second = mount_factory(urls, cache_dir=first.cache_dir)
    assert hashlib.sha256((second.path / "big.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
    assert (second.path / "small.bin").read_bytes() == small
    assert _gets(origin, "/a/big.bin") == _gets(origin, "/b/small.bin") == 0


def _archive(members: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for number in range(members):
            archive.writestr(f"dir/member-{number:04}.bin", pattern_bytes(8 * 1024, seed=number))
    return buffer.getvalue()


def test_index_warms_only_the_zip_directory(origin: Origin, mount_factory: MountFactory) -> None:
    data = _archive(2000)  # 16 MiB of members, ~150 KiB of central directory
    url = origin.add("/data.zip", data)
    first = mount_factory([url], "--no-format-prefetch")
    result = _warm(str(first.path), str(first.path / "data.zip"), "--index")
    assert result.returncode == 0, result.stderr
    assert origin.bytes_sent_for("/data.zip") < 3 * MiB, "the directory and its blocks, not the members"
    first.unmount()
    origin.clear_log()
    second = mount_factory([url], "--no-format-prefetch", cache_dir=first.cache_dir)
    with zipfile.ZipFile(second.path / "data.zip") as archive:
        assert len(archive.namelist()) == 2000
    assert _gets(origin, "/data.zip") == 0, "the listing read only warmed bytes"


def test_a_set_larger_than_the_cache_is_refused_before_any_fetch(origin: Origin, mount_factory: MountFactory) -> None:
    url = origin.add("/large.bin", pattern_bytes(12 * MiB, seed=33))
    mounted = mount_factory([url], "--cache-size", "8M")
    result = _warm(str(mounted.path))
    assert result.returncode == 1
    assert "limit is 8.0 MiB" in result.stderr and "--cache-size" in result.stderr
    assert _gets(origin, "/large.bin") == 0


def test_warm_needs_a_rangefs_mount_and_paths_inside_it(
    tmp_path: Path, mount_factory: MountFactory, origin: Origin
) -> None:
    result = _warm(str(tmp_path))
    assert result.returncode != 0 and "not a running rangefs mount" in result.stderr
    mounted = mount_factory([origin.add("/x.bin", b"x" * 10)])
    result = _warm(str(mounted.path), str(tmp_path))
    assert result.returncode != 0 and "is not inside the mount" in result.stderr
