"""Credentials that expire, through a real mount: header-command, url-command and netrc against an origin
that checks them (a fault hook that answers 401/403 itself when the credentials are wrong)."""

from __future__ import annotations

import base64
import errno
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from rangefs.remote.expiry import expiry_of
from tests import faults
from tests.conftest import MountFactory
from tests.mounting import read_direct
from tests.origin import Fault, Origin, OriginHandler, ServedFile, pattern_bytes

MiB = 1024 * 1024
SIZE = 8 * MiB


@dataclass
class ExpiringToken:
    """Accepts ``Bearer token-N`` for the current N only; ``expire`` moves on to N+1 (the old one is refused)."""

    current: int = 1
    accepted: int = 0
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # the origin's threads share it

    def expire(self) -> None:
        with self.lock:
            self.current += 1

    def __call__(self, handler: OriginHandler, served: ServedFile | None) -> bool:
        with self.lock:
            ok = handler.headers.get("Authorization") == f"Bearer token-{self.current}"
            self.accepted += ok
            self.refused += not ok
        if not ok:
            handler.send_simple(401, b"token expired\n", {"WWW-Authenticate": "Bearer"})
        return not ok


def _counting_command(tmp_path: Path, name: str, body: str) -> tuple[str, Path]:
    """A shell command that counts its runs in a file and prints ``body`` with $n set to the run number."""
    counter = tmp_path / f"{name}.count"
    counter.write_text("0\n")
    script = tmp_path / f"{name}.sh"
    script.write_text(f'n=$(($(cat {counter}) + 1)); echo "$n" > {counter}; {body}\n')
    return f"sh {script}", counter


def _runs(counter: Path) -> int:
    return int(counter.read_text())


def test_header_command_runs_again_once_when_the_token_expires_and_cached_blocks_stay(
    origin: Origin, mount_factory: MountFactory, tmp_path: Path
) -> None:
    data = pattern_bytes(SIZE, seed=21)
    url = origin.add("/private.bin", data)
    token = ExpiringToken()
    origin.faults["/private.bin"] = token
    # Slow, as a real credential helper is: readers refused meanwhile must join this run, not start their own.
    command, counter = _counting_command(tmp_path, "header", 'sleep 0.5; echo "Authorization: Bearer token-$n"')
    mounted = mount_factory(
        ["private.bin " + url, f"    header-command = {command}"], "--no-format-prefetch", "--max-readahead", "0"
    )
    path = mounted.path / "private.bin"

    first_half = read_direct(path, 0, SIZE // 2)
    assert first_half == data[: SIZE // 2]
    assert _runs(counter) == 1
    gets_before = len(origin.requests_for("/private.bin"))

    token.expire()  # the origin now refuses token-1: every reader of the second half meets a 401 at once
    blocks = range(SIZE // 2, SIZE, MiB)
    with ThreadPoolExecutor(len(blocks)) as pool:
        pieces = list(pool.map(lambda offset: read_direct(path, offset, MiB), blocks))
    assert b"".join(pieces) == data[SIZE // 2 :]
    assert _runs(counter) == 2, "concurrent readers refused at once must share one refresh"
    assert token.refused >= 1

    # The refresh changed the headers, not the file's identity: the first half comes from the cache.
    gets_after_second_half = len(origin.requests_for("/private.bin"))
    assert gets_after_second_half > gets_before
    assert hashlib.sha256(read_direct(path, 0, SIZE // 2)).digest() == hashlib.sha256(first_half).digest()
    assert len(origin.requests_for("/private.bin")) == gets_after_second_half
    assert "obtained credentials for" in mounted.log_text()


def test_fresh_credentials_refused_again_fail_with_eio_naming_url_and_command(
    origin: Origin, mount_factory: MountFactory, tmp_path: Path
) -> None:
    url = origin.add("/locked.bin", pattern_bytes(MiB, seed=22))
    origin.faults["/locked.bin"] = ExpiringToken(current=0)  # never the token the command prints
    command, counter = _counting_command(tmp_path, "wrong", 'echo "Authorization: Bearer token-$n"')
    mounted = mount_factory([url, f"  header-command = {command}"])
    with pytest.raises(OSError) as raised:
        (mounted.path / "locked.bin").read_bytes()
    assert raised.value.errno == errno.EIO
    assert 2 <= _runs(counter) <= 4  # each operation renews once, never in a loop
    assert f"{url}: HTTP status 401 to fresh credentials from header-command '{command}'" in mounted.log_text()


def test_failing_command_is_an_error_naming_file_and_line(origin: Origin, mount_factory: MountFactory) -> None:
    url = origin.add("/data.bin", pattern_bytes(MiB, seed=23))
    mounted = mount_factory([url, "  header-command = echo 'no vault here' >&2; exit 3"])
    with pytest.raises(OSError) as raised:
        (mounted.path / "data.bin").read_bytes()
    assert raised.value.errno == errno.EIO
    urls_file = mounted.path.parent / "urls-0.txt"
    assert f"{urls_file}:2: header-command" in mounted.log_text()
    assert "failed with exit status 3: no vault here" in mounted.log_text()
    assert origin.requests_for("/data.bin", "HEAD") == []  # nothing sent without its credentials


@dataclass
class SignedUrls:
    """Serves ``/signed/NAME?Expires=EPOCH&n=N`` as origin file ``/NAME`` until EPOCH, then 403."""

    origin: Origin
    expired: int = 0

    def __call__(self, handler: OriginHandler, served: ServedFile | None) -> bool:
        parts = urlsplit(handler.path)
        if not parts.path.startswith("/signed/"):
            return False
        expires = int(parse_qs(parts.query).get("Expires", ["0"])[0])
        file = self.origin.files.get(parts.path.removeprefix("/signed"))
        if time.time() >= expires or file is None:
            self.expired += file is not None
            handler.send_simple(403, b"request has expired\n")
        else:
            handler.send_file(file, send_body=handler.command == "GET")
        return True


def test_url_command_signs_again_before_the_url_expires(
    origin: Origin, mount_factory: MountFactory, tmp_path: Path
) -> None:
    data = pattern_bytes(4 * MiB, seed=24)
    url = origin.add("/video.bin", data)
    signed = SignedUrls(origin)
    origin.faults["*"] = signed
    lifetime = 8  # re-signed a quarter of it (about 2 s) before the expiry
    command, counter = _counting_command(
        tmp_path, "presign", f'echo "{origin.url("/signed/video.bin")}?Expires=$(($(date +%s) + {lifetime}))&n=$n"'
    )
    mounted = mount_factory([url, f"  url-command = {command}"], "--no-format-prefetch", "--max-readahead", "0")
    path = mounted.path / "video.bin"
    assert read_direct(path, 0, MiB) == data[:MiB]
    assert _runs(counter) == 1

    time.sleep(lifetime - 1.5)  # now within the margin, not yet expired
    assert read_direct(path, 2 * MiB, MiB) == data[2 * MiB : 3 * MiB]
    assert _runs(counter) == 2
    assert signed.expired == 0, "an expiring URL must be replaced before the server refuses it"
    assert origin.requests_for("/video.bin") == []  # the entry's own URL only names the file

    def signed_gets() -> int:
        with origin.lock:
            return sum(record.method == "GET" and record.path.startswith("/signed/") for record in origin.requests)

    before = signed_gets()
    assert read_direct(path, 0, MiB) == data[:MiB]  # cached under the entry's URL, not the signed one
    assert signed_gets() == before


def test_netrc_credentials_for_listed_hosts_and_a_configured_header_wins(
    origin: Origin, mount_factory: MountFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = pattern_bytes(MiB, seed=25)
    basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()

    def requires(expected: str) -> Fault:
        def check(handler: OriginHandler, served: ServedFile | None) -> bool:
            if handler.headers.get("Authorization") == expected:
                return False
            handler.send_simple(401, b"who are you\n")
            return True

        return check

    netrc_url = origin.add("/netrc.bin", data)
    own_url = origin.add("/own.bin", data)
    origin.faults["/netrc.bin"] = requires(basic)
    origin.faults["/own.bin"] = requires("Bearer mine")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cret\n")
    monkeypatch.setenv("NETRC", str(netrc))  # the daemon inherits it
    mounted = mount_factory([netrc_url, own_url, "  header = Authorization: Bearer mine"])
    assert (mounted.path / "netrc.bin").read_bytes() == data
    assert (mounted.path / "own.bin").read_bytes() == data


@pytest.mark.parametrize(
    ("url", "expires"),
    [
        ("https://b.s3.amazonaws.com/k?X-Amz-Date=20250101T120000Z&X-Amz-Expires=3600&X-Amz-Signature=ab", 1735736400),
        ("https://storage.googleapis.com/b/k?x-goog-date=20250101T120000Z&x-goog-expires=60", 1735732860),
        ("https://cdn.example.org/k?Expires=1735732800&Signature=x", 1735732800),
        ("https://h/k?X-Amz-Date=yesterday&X-Amz-Expires=60", None),
        ("https://h/k?X-Amz-Date=20250101T120000Z&X-Amz-Expires=%C2%B2", None),  # '²' is not a digit here
        ("https://h/k?Expires=soon", None),
        ("https://h/k", None),
    ],
)
def test_expiry_of_signed_urls(url: str, expires: float | None) -> None:
    assert expiry_of(url) == expires


def test_a_server_that_ignores_range_gets_renewed_credentials_for_its_whole_file_stream(
    origin: Origin, mount_factory: MountFactory, tmp_path: Path
) -> None:
    data = pattern_bytes(3 * MiB + 5, seed=24)
    url = origin.add("/whole.bin", data)
    token = ExpiringToken()

    def checked_then_whole(handler: OriginHandler, served: ServedFile | None) -> bool:
        return token(handler, served) or faults.whole_file(handler, served)

    origin.faults["/whole.bin"] = checked_then_whole
    command, counter = _counting_command(tmp_path, "header", 'echo "Authorization: Bearer token-$n"')
    # A cache and a memory tier of one block: a second read streams the file again.
    limits = ("--no-format-prefetch", "--max-readahead", "0", "--cache-size", "1M")
    mounted = mount_factory(["whole.bin " + url, f"    header-command = {command}"], *limits)
    path = mounted.path / "whole.bin"
    assert read_direct(path, 0, len(data)) == data  # learns that the server ignores Range, with token-1
    token.expire()  # the next stream's first request is refused
    assert hashlib.sha256(read_direct(path, 0, len(data))).digest() == hashlib.sha256(data).digest()
    assert _runs(counter) == 2
    assert token.refused == 1
