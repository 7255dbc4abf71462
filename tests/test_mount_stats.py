"""Statistics of a real mount: per-file xattrs, ``rangefs stats`` (once, JSON, --watch) and the metrics endpoint,
each checked against what the origin's request log says it sent."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import MountFactory
from tests.mounting import Mount, rangefs_command, read_direct, stop_process
from tests.origin import Origin, pattern_bytes
from tests.waiting import eventually

KiB = 1024
MiB = 1024 * KiB
SIZE = 3 * MiB + 12_345
_SETTLE_TIMEOUT = 10.0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(rangefs_command(*args), capture_output=True, text=True, timeout=30, check=False)


def _xattr_int(path: Path, name: str) -> int:
    return int(os.getxattr(path, f"user.rangefs.{name}"))


def _mount_one(origin: Origin, mount_factory: MountFactory, *extra: str) -> tuple[bytes, Mount, Path]:
    data = pattern_bytes(SIZE, seed=11)
    url = origin.add("/data.bin", data)
    mounted = mount_factory([url], *extra)
    return data, mounted, mounted.path / "data.bin"


def _mount_stats(mounted: Mount) -> dict[str, object]:
    return json.loads(os.getxattr(mounted.path, "user.rangefs.stats"))  # type: ignore[no-any-return]


def _file_stats(mounted: Mount, path: str) -> dict[str, int]:
    busiest = _mount_stats(mounted)["busiest_files"]
    assert isinstance(busiest, list)
    return next(entry for entry in busiest if entry["path"] == path)  # type: ignore[no-any-return]


def test_xattrs_count_cached_and_fetched_bytes_exactly(origin: Origin, mount_factory: MountFactory) -> None:
    data, mounted, path = _mount_one(origin, mount_factory)
    assert _xattr_int(path, "cached_bytes") == 0
    assert _xattr_int(path, "fetched_bytes") == 0
    # 100 KiB inside block 1 after a seek: a read larger than 32 KiB fetches from its own 64 KiB piece to
    # the end of its block (512 KiB here).
    assert read_direct(path, MiB + MiB // 2, 100 * KiB) == data[MiB + MiB // 2 : MiB + MiB // 2 + 100 * KiB]
    gets = origin.requests_for("/data.bin")
    assert [record.range for record in gets] == [f"bytes={MiB + MiB // 2}-{2 * MiB - 1}"]
    fetched = MiB // 2
    assert origin.bytes_sent_for("/data.bin") == fetched
    assert _xattr_int(path, "fetched_bytes") == fetched
    eventually(lambda: _xattr_int(path, "cached_bytes") == fetched, "the rest of block 1 in the disk cache")
    # A 4 KiB read elsewhere fetches its 4 KiB page only; a page inside what was fetched costs nothing.
    page = MiB + MiB // 2 + 200 * KiB
    assert read_direct(path, 8 * KiB, 4 * KiB) == data[8 * KiB : 12 * KiB]
    assert read_direct(path, page, 4 * KiB) == data[page : page + 4 * KiB]
    assert origin.bytes_sent_for("/data.bin") == fetched + 4 * KiB
    assert _xattr_int(path, "fetched_bytes") == fetched + 4 * KiB
    eventually(lambda: _xattr_int(path, "cached_bytes") == fetched + 4 * KiB, "the page in the disk cache")
    counted = _file_stats(mounted, "data.bin")
    assert counted["requests"] == len(origin.requests_for("/data.bin")) == 2
    assert counted["bytes_fetched"] == origin.bytes_sent_for("/data.bin")
    assert counted["bytes_served"] == 108 * KiB
    assert counted["bytes_hit"] == 4 * KiB  # the page inside the fetched part of block 1 came from memory
    assert (counted["reads"], counted["read_errors"], counted["retries"], counted["errors"]) == (3, 0, 0, 0)
    assert counted["bytes_in_flight"] == 0
    assert "user.rangefs.cached_bytes" in os.listxattr(path)


def test_stats_prints_a_table_and_json(origin: Origin, mount_factory: MountFactory) -> None:
    data, mounted, path = _mount_one(origin, mount_factory)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    shown = _run("stats", str(mounted.path))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    total = next(line for line in lines if "total" in line)
    assert "3.0 MiB" in total  # served and fetched: the whole file, once
    assert any("data.bin" in line for line in lines)
    assert "1 files (0 failed)" in shown.stdout
    raw = _run("stats", "--json", str(mounted.path))
    stats = json.loads(raw.stdout)
    assert stats["traffic"]["bytes_fetched"] == origin.bytes_sent_for("/data.bin") == SIZE
    assert stats["traffic"]["requests"] == len(origin.requests_for("/data.bin"))
    assert stats["busiest_files"][0]["path"] == "data.bin"


def test_stats_watch_ends_on_ctrl_c_and_when_the_mount_goes_away(origin: Origin, mount_factory: MountFactory) -> None:
    _, mounted, path = _mount_one(origin, mount_factory)
    read_direct(path, 0, MiB)
    command = rangefs_command("stats", "--watch", "--interval", "0.1", str(mounted.path))
    # A suite started in the background (`cmd &` in a script) ignores SIGINT, and its children inherit that:
    # give the interrupted one the default back, as a terminal's ^C would find it.
    interrupted = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    watching = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for process in (interrupted, watching):
            _wait_for_line(process, "data.bin")  # watching: to a pipe, one table after the other
        interrupted.send_signal(signal.SIGINT)
        _, err = interrupted.communicate(timeout=15)
        assert interrupted.returncode == 0, err
        assert "Traceback" not in err
        mounted.unmount()
        _, err = watching.communicate(timeout=15)
        assert watching.returncode == 1
        assert re.search(rf"stopped watching: {re.escape(str(mounted.path))} is not a running rangefs mount", err)
        assert "Traceback" not in err
    finally:
        for process in (interrupted, watching):
            if process.poll() is None:
                stop_process(process)


def _wait_for_line(process: subprocess.Popen[str], needle: str) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + _SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 0.1)
        if readable and needle in process.stdout.readline():
            return
        assert process.poll() is None, process.communicate()
    raise AssertionError(f"no line with {needle!r} within {_SETTLE_TIMEOUT} s")


def _metrics_port(mounted: Mount) -> int:
    found = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", mounted.log_text())
    assert found, mounted.log_text()
    return int(found.group(1))


def _scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _samples(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_endpoint_counts_what_the_origin_sent(origin: Origin, mount_factory: MountFactory) -> None:
    pytest.importorskip("prometheus_client")
    data, mounted, path = _mount_one(origin, mount_factory, "--metrics-listen", "0")
    port = _metrics_port(mounted)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert read_direct(path, 5, 10) == data[5:15]  # O_DIRECT: reaches the daemon, served from memory

    def settled() -> bool:
        samples = _samples(_scrape(port)[1])
        return samples["rangefs_bytes_in_flight"] == 0 and samples["rangefs_bytes_fetched_total"] == SIZE

    eventually(settled, "every fetch done")
    status, text = _scrape(port)
    assert status == 200
    samples = _samples(text)
    assert samples["rangefs_bytes_fetched_total"] == origin.bytes_sent_for("/data.bin") == SIZE
    assert samples["rangefs_requests_total"] == len(origin.requests_for("/data.bin"))
    assert samples["rangefs_bytes_served_total"] >= SIZE + 10
    assert samples["rangefs_cache_hit_bytes_total"] >= 10
    assert samples["rangefs_reads_total"] >= 2
    assert samples["rangefs_read_errors_total"] == samples["rangefs_retries_total"] == 0
    assert samples["rangefs_files"] == 1
    assert _scrape(port, "/other")[0] == 404


def test_metrics_listen_refuses_what_is_not_an_address(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/x\n")
    for value, message in [
        ("localhost:9464", "'localhost' is not an IP address"),
        ("::1:9464", "write an IPv6 address in brackets"),
        ("127.0.0.1:99999", "invalid listen address"),
    ]:
        result = _run("mount", str(urls), str(mountpoint), "--metrics-listen", value)
        assert result.returncode == 1
        assert message in result.stderr
        assert not os.path.ismount(mountpoint)


def test_statistics_of_files_with_long_paths_fit_the_xattr_limit(origin: Origin, mount_factory: MountFactory) -> None:
    deep = "/".join(f"{level:02d}" + "d" * 198 for level in range(18))  # 3,617 characters
    data = pattern_bytes(8 * KiB, seed=3)
    lines = [f"{deep}/file{number:02d}.bin {origin.add(f'/f{number}', data)}" for number in range(25)]
    mounted = mount_factory(lines)
    for number in range(25):
        assert read_direct(mounted.path / deep / f"file{number:02d}.bin", 0, 4 * KiB) == data[: 4 * KiB]
    raw = os.getxattr(mounted.path, "user.rangefs.stats")
    assert len(raw) <= 64 * KiB
    listed = json.loads(raw)["busiest_files"]
    assert 10 <= len(listed) < 20  # as many of the 20 busiest as fit
    assert json.loads(raw)["traffic"]["reads"] == 25


def test_a_metrics_port_in_use_fails_the_mount_with_the_reason(origin: Origin, tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    urls = tmp_path / "urls.txt"
    urls.write_text(origin.add("/x", b"x") + "\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(
            "mount", str(urls), str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
            "--log-file", str(tmp_path / "log"), "--metrics-listen", str(port),
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen for metrics on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert not os.path.ismount(mountpoint)
