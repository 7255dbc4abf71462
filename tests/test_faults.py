"""Misbehaving origins through a real mount: right bytes, or EIO within the deadline; never a wrong byte."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from tests import faults
from tests.conftest import MountFactory
from tests.mounting import Mount
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024
SIZE = 3 * MiB + 777
DATA = pattern_bytes(SIZE, seed=70)
# Short deadlines keep permanent-failure tests quick; transient faults still get several attempts.
FAST = ("--timeout", "4")


def read_all(path: Path) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def expect_error(path: Path, code: int, within: float) -> None:
    started = time.monotonic()
    with pytest.raises(OSError) as raised:
        read_all(path)
    assert raised.value.errno == code
    assert time.monotonic() - started < within, "a failing read must not hang"


def mounted_file(origin: Origin, mount_factory: MountFactory, fault: faults.Fault, *args: str) -> Path:
    return mounted(origin, mount_factory, fault, *args).path / "f.bin"


def mounted(origin: Origin, mount_factory: MountFactory, fault: faults.Fault, *args: str) -> Mount:
    url = origin.add("/f.bin", DATA)
    origin.faults["/f.bin"] = fault
    return mount_factory([url], *FAST, *args)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(faults.transient(faults.reset_mid_body, 2), id="reset-mid-body"),
        pytest.param(faults.transient(faults.short_body, 2), id="short-body"),
        pytest.param(faults.transient(faults.status(500), 1), id="500-then-ok"),
        pytest.param(faults.transient(faults.status(503), 4), id="503-burst"),
        pytest.param(faults.transient(faults.status(429, {"Retry-After": "1"}), 1), id="429-retry-after"),
        pytest.param(faults.transient(faults.slow_first_byte(1.5), 1), id="slow-once"),
    ],
)
def test_transient_faults_are_retried_to_the_right_bytes(
    origin: Origin, mount_factory: MountFactory, fault: faults.Fault
) -> None:
    path = mounted_file(origin, mount_factory, fault, "--timeout", "20")
    assert hashlib.sha256(read_all(path)).digest() == hashlib.sha256(DATA).digest()


def test_body_cut_short_is_resumed_for_the_missing_bytes_only(origin: Origin, mount_factory: MountFactory) -> None:
    path = mounted_file(origin, mount_factory, faults.transient(faults.short_body, 1))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 512 * 1024, 0) == DATA[: 512 * 1024]  # large enough to fetch the whole block
    finally:
        os.close(fd)
    first, second = origin.requests_for("/f.bin")[:2]
    assert first.range == f"bytes=0-{MiB - 1}"
    assert second.range == f"bytes={MiB // 3}-{MiB - 1}", "only what was missing is asked for again"


def test_retry_after_is_honoured(origin: Origin, mount_factory: MountFactory) -> None:
    path = mounted_file(origin, mount_factory, faults.transient(faults.status(429, {"Retry-After": "2"}), 1))
    assert read_all(path) == DATA
    refused = origin.requests_for("/f.bin")[0]
    retried = [r for r in origin.requests_for("/f.bin") if r.range == refused.range and r is not refused]
    assert refused.status == 429 and retried[0].time - refused.time >= 1.9


def test_a_throttling_origin_sees_no_retry_storm(origin: Origin, mount_factory: MountFactory) -> None:
    big = pattern_bytes(48 * MiB, seed=71)
    url = origin.add("/t.bin", big)
    origin.faults["/t.bin"] = faults.transient(faults.status(503), 6)
    mounted = mount_factory([url], "--timeout", "30")
    assert read_all(mounted.path / "t.bin") == big
    assert len(origin.requests_for("/t.bin")) <= 6 + 48, "each 503 costs one retry, not a burst"


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        pytest.param(faults.wrong_content_range, "Content-Range", id="wrong-content-range"),
        pytest.param(faults.gzip_range, "gzip", id="gzip-range"),
        pytest.param(faults.status(500), "500", id="500-forever"),
        pytest.param(faults.slow_first_byte(10), "sent no answer|read timeout", id="first-byte-too-slow"),
        pytest.param(faults.status(404), "404", id="404-on-get"),
        pytest.param(faults.status(410), "410", id="410-on-get"),
    ],
)
def test_permanent_faults_give_eio_and_a_log_line(
    origin: Origin, mount_factory: MountFactory, fault: faults.Fault, words: str
) -> None:
    mount = mounted(origin, mount_factory, faults.only(("GET",), fault))
    mount.allowed_log_patterns.append(words)
    expect_error(mount.path / "f.bin", errno.EIO, within=15)
    assert re.search(rf"read of {origin.url('/f.bin')} failed: .*({words})", mount.log_text())


@pytest.mark.parametrize("code", [401, 403])
def test_refused_access_is_eacces(origin: Origin, mount_factory: MountFactory, code: int) -> None:
    path = mounted_file(origin, mount_factory, faults.only(("GET",), faults.status(code)))
    expect_error(path, errno.EACCES, within=10)


def test_server_ignoring_ranges_is_streamed_once(origin: Origin, mount_factory: MountFactory) -> None:
    mount = mounted(origin, mount_factory, faults.whole_file)
    path = mount.path / "f.bin"
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        for offset in (2 * MiB + 5, 10, SIZE - 100, MiB):  # out of order: all served by one stream
            assert os.pread(fd, 100, offset) == DATA[offset : offset + 100]
    finally:
        os.close(fd)
    assert read_all(path) == DATA
    full_answers = [r for r in origin.requests_for("/f.bin") if r.status == 200 and r.bytes_sent]
    assert len(full_answers) <= 2, "one wasted range request at most, then one stream"
    assert mount.log_text().count("ignores range requests") == 1


def test_head_refused_or_without_length_falls_back_to_a_ranged_get(origin: Origin, mount_factory: MountFactory) -> None:
    url = origin.add("/h405.bin", DATA)
    url2 = origin.add("/nolen.bin", DATA)
    origin.faults["/h405.bin"] = faults.only(("HEAD",), faults.status(405))
    origin.faults["/nolen.bin"] = faults.head_without_length
    mounted = mount_factory([url, url2])
    for name in ("h405.bin", "nolen.bin"):
        assert (mounted.path / name).stat().st_size == SIZE
        assert read_all(mounted.path / name) == DATA


def test_redirect_chain_is_followed_and_remembered(origin: Origin, mount_factory: MountFactory) -> None:
    origin.add("/final.bin", DATA)
    origin.faults["/start.bin"] = faults.redirect(origin.url("/middle.bin"), 302)
    origin.faults["/middle.bin"] = faults.redirect("/final.bin", 307)
    mounted = mount_factory([f"f.bin {origin.url('/start.bin')}"])
    assert read_all(mounted.path / "f.bin") == DATA
    hops = len(origin.requests_for("/start.bin", "GET"))
    assert hops <= 2, "after the first, requests go straight to the remembered target"


def test_expired_redirect_target_is_resolved_again(origin: Origin, mount_factory: MountFactory) -> None:
    origin.add("/signed-1.bin", DATA)
    origin.faults["/link.bin"] = faults.redirect(origin.url("/signed-1.bin"))
    mounted = mount_factory([f"f.bin {origin.url('/link.bin')}"])
    path = mounted.path / "f.bin"
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 100, 0) == DATA[:100]
        origin.faults["/signed-1.bin"] = faults.status(403)  # the signature expired
        origin.add("/signed-2.bin", DATA)
        origin.files["/signed-2.bin"] = origin.files["/signed-1.bin"]  # same version, new location
        origin.faults["/link.bin"] = faults.redirect(origin.url("/signed-2.bin"))
        assert os.pread(fd, 100, 2 * MiB) == DATA[2 * MiB : 2 * MiB + 100]
    finally:
        os.close(fd)
    assert origin.requests_for("/signed-2.bin"), "the new target was found through the configured URL"


def test_credentials_never_follow_a_redirect_to_another_origin(
    origin: Origin, mount_factory: MountFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Origin(host="127.0.0.2").running() as other:
        other.add("/cdn.bin", DATA)
        origin.faults["/private.bin"] = faults.redirect(other.url("/cdn.bin"))
        monkeypatch.setenv("RANGEFS_TEST_TOKEN", "s3cret")
        mounted = mount_factory(
            [
                f"p.bin {origin.url('/private.bin')}",
                "    header = Authorization: Bearer ${RANGEFS_TEST_TOKEN}",
                "    header = X-Api-Key: k3y",
            ]
        )
        assert read_all(mounted.path / "p.bin") == DATA
        first = origin.requests_for("/private.bin", "HEAD")[0]
        assert first.headers["authorization"] == "Bearer s3cret" and first.headers["x-api-key"] == "k3y"
        assert other.requests, "the redirect target was used"
        for record in other.requests:
            assert "authorization" not in record.headers and "x-api-key" not in record.headers


def test_file_changing_between_two_requests_of_one_read_fails_cleanly(
    origin: Origin, mount_factory: MountFactory
) -> None:
    old, new = pattern_bytes(20 * MiB, seed=72), pattern_bytes(20 * MiB, seed=73)
    url = origin.add("/c.bin", old)
    seen = []

    def swap_after_first_get(handler, served) -> bool:  # type: ignore[no-untyped-def]
        if handler.command == "GET":
            seen.append(1)
            if len(seen) == 2:
                origin.add("/c.bin", new)  # the second request of the read meets the new version
                handler.server.origin.files["/c.bin"] = origin.files["/c.bin"]
                handler.send_file(origin.files["/c.bin"], send_body=True)
                return True
        return False

    origin.faults["/c.bin"] = swap_after_first_get
    mounted = mount_factory([url], *FAST, "--max-readahead", "0")
    mounted.allowed_log_patterns.append("changed")
    fd = os.open(mounted.path / "c.bin", os.O_RDONLY | os.O_DIRECT)
    try:
        with pytest.raises(OSError) as raised:
            os.pread(fd, 16 * MiB, 0)  # one read, two 8 MiB requests
        assert raised.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert read_all(mounted.path / "c.bin") == new, "after revalidation, the new version whole"
