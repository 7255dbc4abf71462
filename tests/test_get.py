"""``rangefs get``: to files and to stdout in order, parallel parts, verification, resume and clear errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

from tests import faults
from tests.mounting import rangefs_command
from tests.origin import Origin, OriginHandler, ServedFile, pattern_bytes
from tests.test_mount_cache_limits import tiny_tmpfs

MiB = 1024 * 1024


def get(*args: str, cache: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    command = rangefs_command("get", *args, "--cache-dir", str(cache))
    return subprocess.run(command, capture_output=True, timeout=120, check=False, cwd=cwd)


def test_get_to_a_file_in_parallel_parts_and_verified(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(40 * MiB + 5, seed=30)
    url = origin.add("/big.bin", data)
    origin.connection_rate = 40 * MiB  # per connection: parallel parts are what makes it fast
    digest = hashlib.sha256(data).hexdigest()
    result = get(url, "-o", str(tmp_path), "--sha256", digest, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""  # not a terminal: no bar, nothing to say
    assert (tmp_path / "big.bin").read_bytes() == data
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.bin", "cache"]  # no partial left
    requests = origin.requests_for("/big.bin")
    assert sum(record.bytes_sent for record in requests) == len(data)  # each byte once
    assert origin.max_in_flight >= 4  # several parts at once
    # Everything is in the cache now: another name for the same URL costs no GET.
    origin.clear_log()
    result = get(url, "-o", str(tmp_path / "copy.bin"), cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "copy.bin").read_bytes() == data
    assert origin.requests_for("/big.bin") == []


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


def test_interrupted_download_resumes_from_the_partial_file(origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(48 * MiB, seed=32)
    url = origin.add("/resume.bin", data)

    def refuse_the_second_half(handler: OriginHandler, served: ServedFile | None) -> bool:
        start = int((handler.headers.get("Range") or "bytes=0-").removeprefix("bytes=").split("-")[0] or 0)
        return start >= 24 * MiB and faults.status(410)(handler, served)

    origin.faults["/resume.bin"] = refuse_the_second_half
    target = tmp_path / "resume.bin"
    result = get(url, "-o", str(target), cache=tmp_path / "cache")
    assert result.returncode == 1 and b"410" in result.stderr
    assert not target.exists()
    record = json.loads((tmp_path / "resume.bin.rangefs-part.json").read_text())
    assert record["done"] == 24 * MiB
    del origin.faults["/resume.bin"]
    origin.clear_log()
    # A fresh cache: the first half can only come from the partial file.
    result = get(url, "-o", str(target), cache=tmp_path / "other-cache")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert origin.bytes_sent_for("/resume.bin") == len(data) - 24 * MiB
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
        assert not (small / "large.bin").exists()  # never passed off as complete
        assert (small / "large.bin.rangefs-part").exists()
