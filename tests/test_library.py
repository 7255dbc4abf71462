"""The Python API without FUSE: rangefs.open, Session and aopen, judged by bytes and the origin's request log."""

from __future__ import annotations

import errno
import io
import random
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
import trio

import rangefs
from tests import faults, media
from tests.conftest import MountFactory
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024


@pytest.fixture
def session(tmp_path: Path) -> rangefs.Session:
    with rangefs.Session(cache_dir=tmp_path / "cache") as opened:
        yield opened  # type: ignore[misc]


def test_import_rangefs_does_not_import_pyfuse3() -> None:
    code = (
        "import sys, rangefs, rangefs.library.filesystem;"
        "assert callable(rangefs.open) and rangefs.Session and rangefs.aopen;"
        "sys.exit('pyfuse3' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _zip64(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A ZIP64 archive (ZIP64 end records and per-member extra fields) of 400 members, made small by
    lowering the member count at which zipfile switches to ZIP64 end records."""
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 100)
    data = media.make_zip(400, zip64=True)
    assert b"PK\x06\x06" in data[-200:] and b"PK\x06\x07" in data[-200:]
    return data


def test_zipfile_lists_and_reads_a_zip64_archive(
    session: rangefs.Session, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _zip64(monkeypatch)
    url = origin.add("/archive.zip", data)
    local = zipfile.ZipFile(io.BytesIO(data))
    with session.open(url) as remote:
        archive = zipfile.ZipFile(remote)
        assert archive.namelist() == local.namelist()
        listing_requests = len(origin.requests_for("/archive.zip"))
        for name in local.namelist()[::97]:
            assert archive.read(name) == local.read(name)
    # The format-aware prefetch brings the end records and the central directory in one or two requests.
    assert listing_requests <= 2
    assert origin.bytes_sent_for("/archive.zip") <= len(data)


def test_tarfile_lists_and_extracts(session: rangefs.Session, origin: Origin, tmp_path: Path) -> None:
    data = media.make_tar(40, 100_000)
    url = origin.add("/files.tar", data)
    with session.open(url) as remote, tarfile.open(fileobj=remote) as archive:
        names = archive.getnames()
        archive.extractall(tmp_path / "out", filter="data")
    with tarfile.open(fileobj=io.BytesIO(data)) as local:
        assert names == local.getnames()
        for member in local.getmembers()[::7]:
            extracted = local.extractfile(member)
            assert extracted is not None
            assert (tmp_path / "out" / member.name).read_bytes() == extracted.read()


def test_pyarrow_reads_one_column_for_the_footer_and_its_chunk(
    session: rangefs.Session, origin: Origin, parquet: tuple[bytes, int]
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    data, chunk = parquet
    url = origin.add("/table.parquet", data)
    with session.open(url) as remote:
        table = pq.read_table(remote, columns=["c"])
    expected = pq.read_table(io.BytesIO(data), columns=["c"])
    assert table.equals(expected)
    sent, requests = origin.bytes_sent_for("/table.parquet"), len(origin.requests_for("/table.parquet"))
    # The footer's block and the column chunk's blocks; not the other three columns.
    assert sent <= chunk + 2 * MiB + 64 * 1024, (sent, chunk, len(data))
    assert requests <= 4


def test_threads_share_one_file_and_one_fetch_per_block(session: rangefs.Session, origin: Origin) -> None:
    data = pattern_bytes(6 * MiB + 123, seed=7)
    url = origin.add("/shared.bin", data)
    failures: list[str] = []
    with session.open(url) as remote, session.open(url) as other:

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(40):
                offset, size = rng.randrange(len(data)), rng.randrange(1, 300_000)
                target = remote if seed % 2 else other
                if target.pread(size, offset) != data[offset : offset + size]:
                    failures.append(f"{seed}: {offset}+{size}")

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        remote.seek(-100, io.SEEK_END)
        assert remote.read() == data[-100:]
    assert not failures
    # Random reads of up to 32 KiB fetch 64 KiB chunks, larger ones blocks: overlap is possible, repeats not.
    assert origin.bytes_sent_for("/shared.bin") <= 2 * len(data)


def test_sequential_read_is_read_ahead_and_cached(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(24 * MiB, seed=8)
    url = origin.add("/seq.bin", data)
    with rangefs.Session(cache_dir=tmp_path / "cache") as session, session.open(url) as remote:
        chunks = iter(lambda: remote.read(256 * 1024), b"")
        assert b"".join(chunks) == data
    first = origin.requests_for("/seq.bin")
    assert len(first) <= 12  # readahead: 8 MiB parts, not one request per read
    origin.clear_log()
    with rangefs.Session(cache_dir=tmp_path / "cache") as again, again.open(url) as remote:
        assert remote.read() == data
    assert origin.requests_for("/seq.bin") == []  # every block from the disk cache


def test_prefetch_warms_a_range_in_the_background(session: rangefs.Session, origin: Origin) -> None:
    data = pattern_bytes(8 * MiB, seed=10)
    url = origin.add("/warm.bin", data)
    with session.open(url) as remote:
        remote.prefetch(2 * MiB, 4 * MiB)
        deadline = time.monotonic() + 10
        while origin.bytes_sent_for("/warm.bin") < 4 * MiB and time.monotonic() < deadline:
            time.sleep(0.01)
        origin.clear_log()
        remote.seek(2 * MiB)
        assert remote.read(4 * MiB) == data[2 * MiB : 6 * MiB]
    assert origin.requests_for("/warm.bin") == []


def test_errors_are_oserrors(session: rangefs.Session, origin: Origin) -> None:
    with pytest.raises(FileNotFoundError):
        session.open(origin.url("/missing.bin"))
    with pytest.raises(ValueError, match="only http"):
        session.open("ftp://example.org/file")
    with pytest.raises(ValueError, match="Range"):
        session.open(origin.url("/x"), headers={"Range": "bytes=0-1"})
    with pytest.raises(ValueError, match="block_size"):
        rangefs.Session(block_size="3K")
    data = pattern_bytes(3 * MiB, seed=11)
    url = origin.add("/changing.bin", data)
    with session.open(url) as remote:
        assert remote.read(10) == data[:10]
        origin.add("/changing.bin", pattern_bytes(3 * MiB, seed=12))
        remote.seek(2 * MiB)
        with pytest.raises(OSError) as raised:
            remote.read(100)  # If-Range refuses the old version's range: never bytes of the new one
        assert raised.value.errno == errno.ESTALE


def test_unreachable_host_is_an_oserror(tmp_path: Path) -> None:
    with rangefs.Session(cache_dir=tmp_path / "cache", timeout=2) as session, pytest.raises(OSError) as raised:
        session.open("http://127.0.0.1:9/file.bin")  # the discard port: nothing listens
    assert raised.value.errno == errno.EIO
    assert "127.0.0.1:9" in str(raised.value)


def test_closing_the_session_closes_its_files(tmp_path: Path, origin: Origin) -> None:
    url = origin.add("/f.bin", pattern_bytes(1000))
    session = rangefs.Session(cache_dir=tmp_path / "cache")
    remote = session.open(url)
    session.close()
    assert remote.closed
    with pytest.raises(ValueError):
        session.open(url)
    session.close()  # twice is fine


def test_rangefs_open_uses_a_shared_session(tmp_path: Path, origin: Origin) -> None:
    data = pattern_bytes(100_000, seed=2)
    url = origin.add("/s.bin", data)
    with rangefs.open(url, cache_dir=tmp_path / "c") as first, rangefs.open(url, cache_dir=tmp_path / "c") as second:
        assert first.raw._session is second.raw._session
        assert first.read() == data == second.read()


def test_aopen_reads_and_seeks_in_trio(tmp_path: Path, origin: Origin) -> None:
    data = pattern_bytes(2 * MiB, seed=13)
    url = origin.add("/async.bin", data)

    async def main() -> None:
        async with rangefs.aopen(url, cache_dir=tmp_path / "cache") as remote:
            assert remote.size == len(data)
            await remote.seek(MiB - 5)
            assert await remote.read(10) == data[MiB - 5 : MiB + 5]
            assert remote.tell() == MiB + 5
            assert await remote.read() == data[MiB + 5 :]
            assert await remote.read(10) == b""
        async with rangefs.AsyncSession(cache_dir=tmp_path / "cache") as session:
            async with rangefs.aopen(url, session=session) as one, rangefs.aopen(url, session=session) as two:
                assert await one.read_at(0, 4) == await two.read_at(0, 4) == data[:4]
            with pytest.raises(FileNotFoundError):
                await session.open(origin.url("/nothing"))

    trio.run(main)


@pytest.mark.mount
def test_cache_is_shared_with_a_mount(mount_factory: MountFactory, origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(6 * MiB, seed=14)
    api_first, mount_first = origin.add("/api-first.bin", data), origin.add("/mount-first.bin", data)
    cache = tmp_path / "cache"
    with rangefs.Session(cache_dir=cache) as session, session.open(api_first) as remote:
        assert remote.read() == data
    mount = mount_factory([api_first, mount_first], cache_dir=cache)
    origin.clear_log()
    assert (mount.path / "api-first.bin").read_bytes() == data
    assert origin.requests_for("/api-first.bin") == []  # the API's blocks, not fetched again
    assert (mount.path / "mount-first.bin").read_bytes() == data
    mount.unmount()  # its last cache writes are done (or adopted by the next open of the cache)
    origin.clear_log()
    with rangefs.Session(cache_dir=cache) as session, session.open(mount_first) as remote:
        assert remote.read() == data
    assert origin.requests_for("/mount-first.bin") == []  # the mount's blocks (a HEAD revalidates at most)


def test_a_failed_probe_is_tried_again_once_per_revalidate_after(origin: Origin, tmp_path: Path) -> None:
    """Found by the model test: an open right after an outage meets the failure the outage caused, without a
    request of its own; an open once --revalidate-after (1 s) has passed probes again, and succeeds."""
    url = origin.add("/outage.bin", b"back again")
    origin.faults["/outage.bin"] = faults.transient(faults.status(503), 50, methods=("HEAD", "GET"))
    with rangefs.Session(cache_dir=tmp_path / "cache", timeout=2) as session:
        with pytest.raises(OSError, match="503"):
            session.open(url)
        del origin.faults["/outage.bin"]
        origin.clear_log()
        with pytest.raises(OSError, match="503"):
            session.open(url)  # within a second: the failure is remembered, the server spared
        assert origin.requests_for("/outage.bin", "HEAD") == origin.requests_for("/outage.bin") == []
        time.sleep(1.1)
        with session.open(url) as remote:
            assert remote.read() == b"back again"
