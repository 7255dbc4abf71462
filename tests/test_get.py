"""``rangefs get``: to files and to stdout in order, parallel parts, verification, resume and clear errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from rangefs.ranges import ByteRange, covered_bytes
from tests import faults
from tests.conftest import MountFactory
from tests.mounting import rangefs_command, read_direct
from tests.origin import Origin, OriginHandler, ServedFile, pattern_bytes
from tests.test_mount_cache_limits import tiny_tmpfs
from tests.waiting import eventually

MiB = 1024 * 1024


def get(*args: str, cache: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    command = rangefs_command("get", *args, "--cache-dir", str(cache))
    return subprocess.run(command, capture_output=True, timeout=120, check=False, cwd=cwd)


def test_get_to_a_file_in_parallel_segments_and_verified(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(40 * MiB + 5, seed=30)
    url = origin.add("/big.bin", data)
    origin.connection_rate = 40 * MiB  # per connection: parallel segments are what makes it fast
    digest = hashlib.sha256(data).hexdigest()
    result = get(url, "-o", str(tmp_path), "--sha256", digest, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""  # not a terminal: no bar, nothing to say
    assert (tmp_path / "big.bin").read_bytes() == data
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.bin", "cache"]  # no partial left
    requests = origin.requests_for("/big.bin")
    assert sum(record.bytes_sent for record in requests) == len(data)  # each byte once
    # One segment per connection (8), each a single request: not one request per 8 MiB readahead part.
    assert len(requests) == 8
    assert origin.max_in_flight >= 4  # at once (under load, a segment may end before the last one starts)


def test_get_to_a_file_takes_from_the_cache_and_leaves_it_as_it_was(
    origin: Origin, tmp_path: Path, mount_factory: MountFactory
) -> None:
    data = pattern_bytes(24 * MiB + 77, seed=34)
    url = origin.add("/cached.bin", data)
    cache = tmp_path / "cache"
    mounted = mount_factory([url], cache_dir=cache)
    path = mounted.path / "cached.bin"
    for offset in (0, 5 * MiB + 3, 17 * MiB):  # three 1 MiB blocks and whatever the readahead adds
        assert read_direct(path, offset, 100 * 1024) == data[offset : offset + 100 * 1024]

    def xattr(name: str) -> int:
        return int(os.getxattr(path, f"user.rangefs.{name}"))

    eventually(lambda: 0 < xattr("fetched_bytes") == xattr("cached_bytes"), "every fetched byte in the cache")
    cached = xattr("cached_bytes")
    assert cached < len(data)
    mounted.unmount()
    pieces = _piece_files(cache)
    origin.clear_log()
    result = get(url, "-o", str(tmp_path / "copy.bin"), cache=cache)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256((tmp_path / "copy.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert origin.bytes_sent_for("/cached.bin") == len(data) - cached  # only what the cache lacks
    # The download is its own copy: the cache holds what it held, not a second copy of the file.
    assert _piece_files(cache) == pieces


def _piece_files(cache: Path) -> dict[str, int]:
    return {str(piece.relative_to(cache)): piece.stat().st_size for piece in cache.rglob("*+*") if piece.is_file()}


def test_a_connection_that_finishes_takes_half_of_a_slow_one(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(32 * MiB, seed=35)
    url = origin.add("/uneven.bin", data)
    served = origin.files["/uneven.bin"]

    def slow_from_the_start(handler: OriginHandler, _served: ServedFile | None) -> bool:
        if not (handler.headers.get("Range") or "").startswith("bytes=0-"):
            return False
        start, stop = 0, int(handler.headers["Range"].split("-")[1]) + 1
        faults._start_206(handler, served, start, stop, {})
        for offset in range(start, stop, 64 * 1024):  # 1 MiB/s: the other segments end long before
            handler.wfile.write(data[offset : min(stop, offset + 64 * 1024)])
            handler.record.bytes_sent += min(stop, offset + 64 * 1024) - offset
            time.sleep(1 / 16)
        return True

    origin.faults["/uneven.bin"] = slow_from_the_start
    result = get(url, "-o", str(tmp_path / "uneven.bin"), "--connections", "4", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "uneven.bin").read_bytes() == data
    requests = origin.requests_for("/uneven.bin")
    spans = [_span(record.range) for record in requests]
    first, (_, first_stop) = next((record, span) for record, span in zip(requests, spans, strict=True) if span[0] == 0)
    assert first.bytes_sent < first_stop  # cut short where another connection took over
    assert any(0 < start < first_stop for start, _ in spans), spans  # by a request inside its range
    # The slow request stops soon after the half it kept; a little of the taken half may have been sent.
    assert origin.bytes_sent_for("/uneven.bin") <= len(data) + MiB


def test_get_streams_to_a_pipe_in_order(origin: Origin, tmp_path: Path) -> None:
    lines = b"".join(b"line %d\n" % number for number in range(400_000))
    gz_url = origin.add("/lines.gz", gzip.compress(lines, compresslevel=1))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for number in range(5):
            content = pattern_bytes(3 * MiB, seed=number)
            info = tarfile.TarInfo(f"part{number}.bin")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    tar_url = origin.add("/files.tar", buffer.getvalue())
    command = " ".join(rangefs_command("get", gz_url, "-", "--cache-dir", str(tmp_path / "cache")))
    counted = subprocess.run(f"{command} | zcat | wc -l", shell=True, capture_output=True, timeout=60, check=True)
    assert counted.stdout.strip() == b"400000"
    (tmp_path / "out").mkdir()
    command = " ".join(rangefs_command("get", tar_url, "-o", "-", "--cache-dir", str(tmp_path / "cache")))
    subprocess.run(f"{command} | tar -x -C {tmp_path / 'out'}", shell=True, timeout=60, check=True)
    assert (tmp_path / "out" / "part3.bin").read_bytes() == pattern_bytes(3 * MiB, seed=3)


def test_digest_mismatch_leaves_no_file(origin: Origin, tmp_path: Path) -> None:
    url = origin.add("/f.bin", pattern_bytes(3 * MiB, seed=31))
    result = get(url, "-o", str(tmp_path / "f.bin"), "--md5", "0" * 32, cache=tmp_path / "cache")
    assert result.returncode == 1
    assert b"md5 mismatch" in result.stderr and result.stderr.count(b"\n") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache"]


def _span(header: str | None) -> tuple[int, int]:
    """Start and stop of a request's ``Range: bytes=A-B``."""
    assert header is not None and header.startswith("bytes=")
    first, last = header.removeprefix("bytes=").split("-")
    return int(first), int(last) + 1


def test_interrupted_download_resumes_from_the_partial_file(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(48 * MiB, seed=32)
    url = origin.add("/resume.bin", data)

    def refuse_the_second_half(handler: OriginHandler, served: ServedFile | None) -> bool:
        start = int((handler.headers.get("Range") or "bytes=0-").removeprefix("bytes=").split("-")[0] or 0)
        if start < 24 * MiB:
            return False
        time.sleep(0.5)  # the first half has arrived, or some of it, when the refusal comes
        return faults.status(410)(handler, served)

    origin.faults["/resume.bin"] = refuse_the_second_half
    origin.connection_rate = 32 * MiB
    target = tmp_path / "resume.bin"
    result = get(url, "-o", str(target), cache=tmp_path / "cache")
    assert result.returncode == 1 and b"410" in result.stderr
    assert not target.exists()
    record = json.loads((tmp_path / "resume.bin.rangefs-part.json").read_text())
    done = [ByteRange(start, stop) for start, stop in record["done"]]
    assert done and done[-1].stop <= 24 * MiB  # what each connection had written when the refusal came
    assert (tmp_path / "resume.bin.rangefs-part").read_bytes()[: done[0].stop] == data[: done[0].stop]
    del origin.faults["/resume.bin"]
    origin.clear_log()
    # A fresh cache: what is done can only come from the partial file.
    result = get(url, "-o", str(target), cache=tmp_path / "other-cache")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert origin.bytes_sent_for("/resume.bin") == len(data) - covered_bytes(done)
    assert not (tmp_path / "resume.bin.rangefs-part").exists()


def test_clear_errors(origin: Origin, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    missing = get(origin.url("/missing.bin"), "-o", str(tmp_path), cache=cache)
    assert missing.returncode == 1
    assert missing.stderr.decode() == f"rangefs get: {origin.url('/missing.bin')}: HTTP status 404\n"
    dead = get("http://127.0.0.1:9/file.bin", "-o", str(tmp_path), "--timeout", "3", cache=cache)
    assert dead.returncode == 1 and dead.stderr.count(b"\n") == 1 and b"127.0.0.1:9" in dead.stderr
    url = origin.add("/exists.bin", b"new bytes")
    (tmp_path / "exists.bin").write_bytes(b"old")
    refused = get(url, "-o", str(tmp_path), cache=cache)
    assert refused.returncode == 1 and b"exists; use --force" in refused.stderr
    assert (tmp_path / "exists.bin").read_bytes() == b"old"
    assert origin.requests_for("/exists.bin", "HEAD") == []  # refused before any request
    forced = get(url, "-o", str(tmp_path), "--force", cache=cache)
    assert forced.returncode == 0 and (tmp_path / "exists.bin").read_bytes() == b"new bytes"
    usage = get("ftp://example.org/x", cache=cache)
    assert usage.returncode == 1 and b"only http" in usage.stderr


def test_disk_full_is_one_line_and_resumable(origin: Origin, tmp_path: Path) -> None:
    url = origin.add("/large.bin", pattern_bytes(6 * MiB, seed=33))
    with tiny_tmpfs(tmp_path / "small", "2m") as small:
        result = get(url, "-o", str(small / "large.bin"), cache=tmp_path / "cache")
        assert result.returncode == 1
        assert result.stderr.count(b"\n") == 1 and b"No space left on device" in result.stderr
        assert b"unexpected" not in result.stderr and b"cannot write" in result.stderr  # the disk's failure
        assert not (small / "large.bin").exists()  # never passed off as complete
        assert (small / "large.bin.rangefs-part").exists()


def test_get_an_empty_file_and_one_smaller_than_a_segment(origin: Origin, tmp_path: Path) -> None:
    empty = origin.add("/empty.bin", b"")
    tiny = origin.add("/tiny.bin", b"seven b")
    result = get(empty, tiny, "-o", str(tmp_path), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "empty.bin").read_bytes() == b""
    assert (tmp_path / "tiny.bin").read_bytes() == b"seven b"
    assert [record.range for record in origin.requests_for("/tiny.bin")] == ["bytes=0-6"]


def test_get_to_a_file_from_a_server_that_ignores_range(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(20 * MiB + 3, seed=36)
    url = origin.add("/norange.bin", data)
    origin.faults["/norange.bin"] = faults.whole_file
    result = get(url, "-o", str(tmp_path / "norange.bin"), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256((tmp_path / "norange.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert origin.bytes_sent_for("/norange.bin") <= 2 * len(data)  # the probe's GET may be cut short, then one stream


def _start_get(*args: str, cache: Path) -> subprocess.Popen[bytes]:
    command = rangefs_command("get", *args, "--cache-dir", str(cache))
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


def test_sigterm_keeps_what_was_written_and_the_next_run_fetches_the_rest(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(48 * MiB, seed=37)
    url = origin.add("/stopped.bin", data)
    origin.connection_rate = 4 * MiB  # 8 connections: about 1.5 s for the file
    target = tmp_path / "stopped.bin"
    process = _start_get(url, "-o", str(target), cache=tmp_path / "cache")
    eventually(lambda: origin.bytes_sent_for("/stopped.bin") >= 12 * MiB, "a quarter of the file sent")
    process.send_signal(signal.SIGTERM)
    code, stderr = _finish(process)
    assert code == 128 + signal.SIGTERM, stderr
    assert b"stopped by SIGTERM; run again to resume" in stderr and b"Traceback" not in stderr
    assert not target.exists()
    record = json.loads((tmp_path / "stopped.bin.rangefs-part.json").read_text())
    kept = covered_bytes(ByteRange(start, stop) for start, stop in record["done"])
    assert kept >= 8 * MiB  # what the connections had written when the signal came, not a 64 MiB mark
    origin.connection_rate = None
    origin.clear_log()
    # One connection: no half taken from another, whose cut request would send a little more than asked.
    result = get(url, "-o", str(target), "--connections", "1", cache=tmp_path / "fresh-cache")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert origin.bytes_sent_for("/stopped.bin") == len(data) - kept


def test_a_second_run_on_the_same_partial_file_is_refused(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(16 * MiB, seed=38)
    url = origin.add("/busy.bin", data)
    origin.connection_rate = 2 * MiB
    target = tmp_path / "busy.bin"
    first = _start_get(url, "-o", str(target), cache=tmp_path / "cache")
    eventually(lambda: origin.bytes_sent_for("/busy.bin") > 0, "the first run under way")
    second = get(url, "-o", str(target), cache=tmp_path / "cache")
    assert second.returncode == 1
    assert b"is being written by another rangefs get" in second.stderr
    code, stderr = _finish(first)
    assert code == 0, stderr
    assert target.read_bytes() == data


def test_a_request_that_outlasts_the_timeout_after_a_drop_in_rate_keeps_its_bytes(
    origin: Origin, tmp_path: Path
) -> None:
    data = pattern_bytes(20 * MiB, seed=39)
    url = origin.add("/slowing.bin", data)
    origin.connection_rate = 16 * MiB
    target = tmp_path / "slowing.bin"
    # One connection, --timeout 3: after the first 8 MiB at 16 MiB/s the next request asks for 8 MiB more
    # (half a second at that rate), which at 2 MiB/s takes 4 s.
    process = _start_get(url, "-o", str(target), "--connections", "1", "--timeout", "3", cache=tmp_path / "cache")
    eventually(lambda: len(origin.requests_for("/slowing.bin")) >= 1, "the first request")
    origin.connection_rate = 2 * MiB  # from the next request on
    code, stderr = _finish(process)
    assert code == 0, stderr
    assert target.read_bytes() == data
    assert origin.bytes_sent_for("/slowing.bin") <= len(data) + MiB  # bytes kept, not fetched again


def test_a_reader_that_stops_early_ends_the_stream_with_one_line(origin: Origin, tmp_path: Path) -> None:
    url = origin.add("/long.bin", pattern_bytes(32 * MiB, seed=40))
    command = " ".join(rangefs_command("get", url, "-", "--cache-dir", str(tmp_path / "cache")))
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | head -c 100 > /dev/null"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert b"Traceback" not in result.stderr
    assert result.stderr.decode() == "rangefs get: standard output was closed\n"
