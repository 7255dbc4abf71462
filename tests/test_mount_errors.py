"""Connection failures through a real mount: each says what failed and what to do, in the log and in the file's
``user.rangefs.error``, and a file nothing is known of fails stat and open with EIO instead of looking empty.

Every origin is on loopback or in a network namespace the test makes; the DNS test's resolver is a fake one
inside a namespace with nothing but loopback, so no query can leave the machine.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import netns, tls
from tests.conftest import MountFactory
from tests.mounting import mounted_in_namespace, stop_process
from tests.origin import Origin, pattern_bytes

REPOSITORY = Path(__file__).resolve().parent.parent


def assert_fails_with(path: Path, cause: str) -> None:
    """The file is listed, but stat and open fail with EIO, and its error attribute gives ``cause``."""
    assert path.name in os.listdir(path.parent)
    with pytest.raises(OSError) as raised:
        path.stat()
    assert raised.value.errno == errno.EIO, "stat must not show an empty file"
    assert cause in os.getxattr(path, "user.rangefs.error").decode()
    with pytest.raises(OSError) as raised:
        path.read_bytes()
    assert raised.value.errno == errno.EIO


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _tls_origin(certificate: tls.ServerCertificate) -> Iterator[Origin]:
    with Origin(tls=certificate.server_context()).running() as running:
        yield running


def test_untrusted_certificate_says_to_pass_a_ca_bundle_and_the_bundle_works(
    certificates: tls.Certificates, mount_factory: MountFactory
) -> None:
    data = pattern_bytes(3 * 1024 * 1024 + 17, seed=120)
    with _tls_origin(certificates.good) as origin:
        url = origin.add("/secure.bin", data)
        untrusted = mount_factory([url], name="untrusted")
        expected = (
            f"TLS certificate of 127.0.0.1:{origin.port} does not verify: self-signed certificate in certificate"
            " chain; pass --ca-bundle FILE with the CA that signed it"
        )
        assert_fails_with(untrusted.path / "secure.bin", expected)
        assert f"cannot probe {url}: {expected}" in untrusted.log_text()
        assert "ConnectError: \n" not in untrusted.log_text()
        trusted = mount_factory([url], "--ca-bundle", str(certificates.ca), name="trusted")
        assert _sha256((trusted.path / "secure.bin").read_bytes()) == _sha256(data)


def test_expired_and_wrong_host_certificates_say_what_is_wrong(
    certificates: tls.Certificates, mount_factory: MountFactory
) -> None:
    with _tls_origin(certificates.expired) as expired, _tls_origin(certificates.wrong_host) as wrong_host:
        lines = [f"expired.bin {expired.add('/a', b'a')}", f"wrong.bin {wrong_host.add('/b', b'b')}"]
        mounted = mount_factory(lines, "--ca-bundle", str(certificates.ca))
        assert_fails_with(
            mounted.path / "expired.bin",
            f"TLS certificate of 127.0.0.1:{expired.port} does not verify: certificate has expired;"
            " the server must renew it (or this machine's clock is wrong)",
        )
        assert_fails_with(
            mounted.path / "wrong.bin",
            f"TLS certificate of 127.0.0.1:{wrong_host.port} does not verify: IP address mismatch, certificate"
            " is not valid for '127.0.0.1'; use a URL with a host name the certificate names",
        )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_refused_connection_says_nothing_listens(mount_factory: MountFactory) -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}/refused.bin"
    mounted = mount_factory([url])
    expected = (
        f"connection refused by 127.0.0.1:{port}: nothing listens there; check the server runs and the URL's port"
    )
    assert_fails_with(mounted.path / "refused.bin", expected)
    assert f"cannot probe {url}: {expected}" in mounted.log_text()


def test_server_that_accepts_and_never_answers_is_a_read_timeout(mount_factory: MountFactory) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes into the backlog; nobody ever reads or answers
        port = silent.getsockname()[1]
        url = f"http://127.0.0.1:{port}/silent.bin"
        mounted = mount_factory([url], "--timeout", "2")
        started = time.monotonic()
        assert_fails_with(
            mounted.path / "silent.bin",
            f"127.0.0.1:{port} accepted the connection but sent no answer within 2 s:"
            " the server is stuck or overloaded",
        )
        assert time.monotonic() - started < 10
        mounted.unmount()


def test_host_that_drops_packets_is_a_connect_timeout(mount_factory: MountFactory) -> None:
    reason = netns.skip_reason()
    if reason:
        pytest.skip(reason)
    with netns.namespace("rfs-ctimeout", 0) as address:
        drop = ["iptables", "-I", "INPUT", "-p", "tcp", "-j", "DROP"]
        subprocess.run(netns.exec_argv("rfs-ctimeout", drop), check=True, timeout=30)
        mounted = mount_factory([f"dropped.bin http://{address}:8080/dropped.bin"], "--timeout", "2")
        assert_fails_with(
            mounted.path / "dropped.bin",
            f"no connection to {address}:8080 within 2 s: the host does not answer (it is down, or a firewall"
            " drops the packets); check the URL's host and port",
        )
        mounted.unmount()


@contextmanager
def _fake_dns(namespace: str) -> Iterator[list[str]]:
    """tests/fakedns.py on 127.0.0.1:53 inside ``namespace``, ready; ended by its PID. The list yielded holds the
    names it was asked for once the block has ended."""
    command = netns.exec_argv(namespace, [sys.executable, "-m", "tests.fakedns", "127.0.0.1", "--lifetime", "120"])
    server = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    queries: list[str] = []
    try:
        assert server.stdout.readline().strip() == "ready"
        yield queries
    finally:
        stop_process(server)
        with server.stdout:
            queries += [line.removeprefix("query ").strip() for line in server.stdout if line.startswith("query ")]


def test_name_that_does_not_resolve_says_so(tmp_path: Path) -> None:
    """The mount runs in a namespace with only loopback, whose resolv.conf names a fake DNS server there that
    answers every query NXDOMAIN: no query can reach a real resolver."""
    reason = netns.isolated_skip_reason()
    if reason:
        pytest.skip(reason)
    urls = tmp_path / "urls.txt"
    urls.write_text("nowhere.bin http://no-such-host.invalid/nowhere.bin\n")
    log_file = tmp_path / "rangefs.log"
    expected = "host name no-such-host.invalid does not resolve (Name or service not known); check the URL's host name"
    with (
        netns.isolated("rfs-dns", "nameserver 127.0.0.1\n") as namespace,
        _fake_dns(namespace) as dns,
        mounted_in_namespace(namespace, urls, tmp_path / "mnt", tmp_path / "cache", log_file) as view,
    ):
        assert_fails_with(view / "nowhere.bin", expected)
    assert "no-such-host.invalid" in dns, "the fake server was asked, nothing else could be"
    assert expected in log_file.read_text()
