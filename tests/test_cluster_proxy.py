"""Many machines behind one caching proxy: contrib/cluster/rangefs-cache.conf (real nginx) in front of the
loopback origin, two mounts with their own cache dirs reading through it at once.

What must hold: every byte right; the origin serves each 1 MiB slice once however many mounts read it; and a
change at the origin reaches every mount once the proxy's slices expire, with EIO (never a mix of versions)
while the proxy still holds slices of the old version next to fresh ones of the new.
"""

from __future__ import annotations

import errno
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import nginx
from tests.conftest import MountFactory
from tests.mounting import Mount
from tests.origin import Origin, RequestRecord, pattern_bytes

MiB = 1024 * 1024
SLICE = MiB  # `slice 1m;` in the shipped config, equal to rangefs's default --block-size
CACHE_VALID = 4  # seconds a stored slice is fresh in quick_proxy (the shipped config says 10s)
# nginx keeps expiry times in whole seconds: a slice stored at t is stale after t + CACHE_VALID, by
# t + CACHE_VALID + 1 at the latest.
EXPIRED_AFTER = CACHE_VALID + 1.5
# Mount options that make every open revalidate (one HEAD, answered by the proxy).
REVALIDATE_EVERY_OPEN = ("--metadata-ttl", "0", "--revalidate-after", "0")

pytestmark = pytest.mark.skipif(
    not (nginx.available() and nginx.has_slice_module()),
    reason="nginx with the slice module is not installed (Debian package nginx)",
)


class CacheProxy:
    def __init__(self, base: str, prefix: Path) -> None:
        self.base = base
        self.prefix = prefix

    def url(self, path: str) -> str:
        return self.base + path

    def drop_slice(self, path: str, start: int) -> None:
        """Remove one stored slice from nginx's cache directory, as if it alone had expired or been evicted
        (nginx treats a key whose file is gone as a miss). Each cache file's header names its key."""
        wanted = f"{path}bytes={start}-{start + SLICE - 1}\n".encode()
        stored = [item for item in (self.prefix / "cache").rglob("*") if item.is_file()]
        matches = [item for item in stored if wanted in item.read_bytes()[:4096]]
        assert len(matches) == 1, f"expected one stored slice {wanted!r}, found {len(matches)}"
        matches[0].unlink()

    def error_log(self) -> str:
        return (self.prefix / "error.log").read_text()

    def requests(self) -> list[str]:
        """Request lines the proxy answered (the mounts' requests; nginx does not log slice subrequests)."""
        return [line.split('"')[1] for line in nginx.access_log(self.prefix)]


@pytest.fixture
def proxy(origin: Origin, tmp_path: Path) -> Iterator[CacheProxy]:
    """The shipped configuration as it is (slices fresh for 10 s)."""
    prefix = tmp_path / "proxy"
    with nginx.running_cache_proxy(origin.url(""), prefix) as base:
        yield CacheProxy(base, prefix)


@pytest.fixture
def quick_proxy(origin: Origin, tmp_path: Path) -> Iterator[CacheProxy]:
    """The shipped configuration with slices fresh for CACHE_VALID seconds, so a test can see them expire."""
    prefix = tmp_path / "proxy"
    with nginx.running_cache_proxy(origin.url(""), prefix, cache_valid=f"{CACHE_VALID}s") as base:
        yield CacheProxy(base, prefix)


def slices(size: int) -> list[str]:
    """The Range headers the proxy sends the origin for a file of ``size`` bytes (the last one overhangs)."""
    return [f"bytes={start}-{start + SLICE - 1}" for start in range(0, size, SLICE)]


def origin_gets(origin: Origin, path: str) -> list[RequestRecord]:
    """The origin's requests for ``path``; the proxy turns HEADs into GETs of slice 0, so every one is a GET."""
    assert origin.requests_for(path, "HEAD") == []
    return origin.requests_for(path)


def read_or_eio(path: Path) -> bytes | None:
    """The whole file through a new open (so it revalidates), or None when the read failed with EIO."""
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        assert error.errno == errno.EIO, f"{path}: {error}"
        return None


def read_everywhere(mounts: list[Mount], name: str) -> list[bytes | None]:
    """Read ``name`` in every mount at the same time."""
    with ThreadPoolExecutor(len(mounts)) as pool:
        return list(pool.map(lambda mounted: read_or_eio(mounted.path / name), mounts))


def two_mounts(mount_factory: MountFactory, tmp_path: Path, lines: list[str], *options: str) -> list[Mount]:
    """Two machines: a mount each, each with its own block cache."""
    return [mount_factory(lines, *options, cache_dir=tmp_path / f"cache-{name}", name=name) for name in ("one", "two")]


def test_two_mounts_reading_at_once_cost_the_origin_each_slice_once(
    origin: Origin, proxy: CacheProxy, mount_factory: MountFactory, tmp_path: Path
) -> None:
    files = {"/big.bin": pattern_bytes(6 * MiB + 12345, seed=130), "/small.bin": pattern_bytes(2 * MiB + 1, seed=131)}
    for path, data in files.items():
        origin.add(path, data)
    mounts = two_mounts(mount_factory, tmp_path, [proxy.url(path) for path in files])
    readers = [(mounted, path) for mounted in mounts for path in files]
    with ThreadPoolExecutor(len(readers)) as pool:
        results = list(pool.map(lambda reader: read_or_eio(reader[0].path / reader[1].lstrip("/")), readers))
    assert results == [files[path] for _, path in readers]
    for path, data in files.items():
        served = origin_gets(origin, path)
        assert sorted(record.range or "" for record in served) == sorted(slices(len(data))), "each slice once"
        assert {record.status for record in served} == {206}
        assert sum(record.bytes_sent for record in served) == len(data)
    mount_requests = Counter(line.split()[0] for line in proxy.requests())
    assert mount_requests["GET"] >= 2 * len(files), "each mount read each file from the proxy"


def test_an_origin_without_etags_is_passed_through_not_cached(
    origin: Origin, proxy: CacheProxy, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """nginx joins slices checking their ETags only: without one, stored slices of two versions could make
    one answer, so the shipped config does not store them."""
    data = pattern_bytes(2 * MiB + 7, seed=132)
    origin.add("/dated.bin", data, etag=False)
    mounts = two_mounts(mount_factory, tmp_path, [proxy.url("/dated.bin")])
    assert [read_or_eio(mounted.path / "dated.bin") for mounted in mounts] == [data, data]
    per_slice = Counter(record.range for record in origin_gets(origin, "/dated.bin"))
    assert set(per_slice) == set(slices(len(data)))
    assert min(per_slice.values()) >= 2, f"each mount's reads reached the origin: {per_slice}"


def test_a_change_reaches_both_mounts_with_waits_or_errors_but_never_mixed_versions(
    origin: Origin, quick_proxy: CacheProxy, mount_factory: MountFactory, tmp_path: Path
) -> None:
    first, second = pattern_bytes(4 * MiB + 100, seed=133), pattern_bytes(4 * MiB + 100, seed=134)
    third = pattern_bytes(5 * MiB + 777, seed=135)  # a new size: one more slice
    unchanged = pattern_bytes(2 * MiB + 3, seed=136)
    origin.add("/data.bin", first)
    origin.add("/same.bin", unchanged)
    lines = [quick_proxy.url("/data.bin"), quick_proxy.url("/same.bin")]
    # One machine gives up on a read after 1 s, the other waits as long as the default 60 s.
    impatient = mount_factory(lines, *REVALIDATE_EVERY_OPEN, "--timeout", "1", cache_dir=tmp_path / "c1", name="one")
    patient = mount_factory(lines, *REVALIDATE_EVERY_OPEN, cache_dir=tmp_path / "c2", name="two")
    mounts = [impatient, patient]
    assert read_everywhere(mounts, "same.bin") == [unchanged, unchanged]
    cached_since = time.monotonic()  # the slices of data.bin are stored after this: fresh until + CACHE_VALID
    assert read_everywhere(mounts, "data.bin") == [first, first]

    # The proxy now holds every slice of the first version. The origin changes (same size) and slice 0
    # alone is dropped, as when it expires first (the mounts' probes stored it before the reads stored the
    # rest): an open's HEAD sees the second version, while slices 1-4 stay fresh ones of the first. nginx
    # cuts each answer that would join the two (its ETag check), so a read waits until the proxy refreshes
    # them, or fails with EIO at --timeout; it never returns a mix.
    origin.add("/data.bin", second)
    quick_proxy.drop_slice("/data.bin", 0)
    assert read_or_eio(impatient.path / "data.bin") is None
    assert time.monotonic() - cached_since < CACHE_VALID, "too slow: the stale slices expired during the read"
    assert read_or_eio(patient.path / "data.bin") == second
    assert time.monotonic() - cached_since > CACHE_VALID, "the patient read waited for the stale slices to expire"
    assert "etag mismatch in slice response" in quick_proxy.error_log()
    assert read_or_eio(impatient.path / "data.bin") == second

    # A new size, seen by both once the proxy's slices of the second version expire; the proxy asks the origin
    # with If-None-Match. The unchanged file is read from the mounts' own caches: its opens' HEADs cost the
    # origin a 304 for slice 0 and no body.
    origin.add("/data.bin", third)
    origin.clear_log()
    time.sleep(EXPIRED_AFTER)
    assert read_everywhere(mounts, "data.bin") == [third, third]
    assert read_everywhere(mounts, "same.bin") == [unchanged, unchanged]
    refreshed = origin_gets(origin, "/data.bin")
    assert set(slices(len(third))) <= {record.range for record in refreshed}
    assert all(record.status == 206 for record in refreshed)
    revalidated = origin_gets(origin, "/same.bin")
    assert {record.range for record in revalidated} == {slices(len(unchanged))[0]}
    assert {record.status for record in revalidated} == {304}
    stored_before = set(slices(len(second)))  # the new size adds a slice the proxy had never stored
    assert all("if-none-match" in record.headers for record in revalidated)
    assert all("if-none-match" in record.headers for record in refreshed if record.range in stored_before)
