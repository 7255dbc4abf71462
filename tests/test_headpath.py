"""The lighter HEAD path of bulk probes (rangefs/remote/headpath.py) against real loopback origins, case by case beside
httpx's path: the same metadata, the same error (kind, status, Retry-After, words where ours) and the same
requests at the origin, for redirects, refusals, 5xx, validators, missing lengths, ranges refused, untrusted
header bytes, connections dropped mid-answer or closed while idle, and TLS."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rangefs.config import MountSettings
from rangefs.errors import RemoteError, RemoteStatusError
from rangefs.remote import RemoteClient, RemoteMetadata
from rangefs.remote.retry import RetryPolicy
from tests import faults, tls
from tests.nginx import available as nginx_available
from tests.nginx import running_nginx
from tests.origin import Origin, OriginHandler, ServedFile

DATA = bytes(range(256)) * 40


@dataclass(frozen=True)
class Outcome:
    """What a probe ended with, in the terms both paths must agree on."""

    metadata: RemoteMetadata | None = None
    error: str | None = None  # the RemoteError's class
    status: int | None = None
    retry_after: float | None = None
    cause: str | None = None  # compared only where rangefs words it (not a library's exception text)


def probe(url: str, *, lighter: bool, settings: MountSettings | None = None, compare_cause: bool = True) -> Outcome:
    async def main() -> Outcome:
        async with RemoteClient(settings, retry=RetryPolicy(base_delay=0, max_delay=0)) as client:
            heads = client._sender.heads
            assert heads is not None
            try:
                metadata = await client.probe(url, bulk=lighter)
            except RemoteError as error:
                status = error.status if isinstance(error, RemoteStatusError) else None
                retry_after = error.retry_after if isinstance(error, RemoteStatusError) else None
                assert url in str(error), "the error names the URL"
                assert (heads.connections_made > 0) == lighter
                return Outcome(None, type(error).__name__, status, retry_after, error.cause if compare_cause else None)
            assert (heads.connections_made > 0) == lighter
            return Outcome(metadata)

    return trio.run(main)


def both_paths(origin: Origin, url: str, **options: object) -> Outcome:
    """The outcome and the origin's requests, which must be the same through both paths."""
    seen = []
    outcomes = []
    for lighter in (False, True):
        origin.clear_log()
        outcomes.append(probe(url, lighter=lighter, **options))  # type: ignore[arg-type]
        seen.append([(record.method, record.path, record.range) for record in origin.requests])
    assert outcomes[0] == outcomes[1]
    assert seen[0] == seen[1]
    return outcomes[1]


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin().running() as running:
        yield running


def raw_answer(head: bytes) -> faults.Fault:
    """Answer with these bytes (a head no well-behaved server library would send), then close the connection,
    saying so in the head's last header (a server that closes without saying so is another test's case)."""
    end = head.rfind(b"\r\n\r\n")
    if end >= 0:
        head = head[:end] + b"\r\nConnection: close" + head[end:]

    def answer(handler: OriginHandler, served: ServedFile | None) -> bool:
        handler.wfile.write(head)
        handler.wfile.flush()
        handler.close_connection = True
        return True

    return answer


@pytest.mark.parametrize(
    ("etag", "last_modified"), [(True, True), (False, True), (True, False), (False, False)], ids=str
)
def test_validators_and_size(origin: Origin, etag: bool, last_modified: bool) -> None:
    url = origin.add("/f.bin", DATA, etag=etag, last_modified=last_modified)
    outcome = both_paths(origin, url)
    assert outcome.metadata is not None and outcome.metadata.size == len(DATA)
    assert (outcome.metadata.etag is not None) == etag


@pytest.mark.parametrize(
    "head",
    [
        b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: W/"weak"\r\n\r\n',
        b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: "\xb2\xff"\r\nLast-Modified: \xe9t\xe9\r\n\r\n',
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nAccept-Ranges: none\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\nRetry-After: \xb2\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 429 Slow down\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 401 Who\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",  # dropped mid-head
        b"",  # dropped before a byte
    ],
    ids=lambda head: head[:40].decode("latin-1").replace("\r\n", "|"),
)
def test_untrusted_heads(origin: Origin, head: bytes) -> None:
    """Header values outside ASCII, bad numbers, repeated lengths, informational answers, HTTP/1.0, answers
    cut short: the same outcome both ways (GETs fall back to the origin's real file)."""
    url = origin.add("/f.bin", DATA)
    origin.faults["/f.bin"] = faults.only(("HEAD",), raw_answer(head))
    both_paths(origin, url, compare_cause=False)


def test_head_refused_or_without_length_falls_back_to_a_ranged_get(origin: Origin) -> None:
    url = origin.add("/f.bin", DATA)
    for fault in (faults.only(("HEAD",), faults.status(405)), faults.head_without_length):
        origin.faults["/f.bin"] = fault
        outcome = both_paths(origin, url)
        assert outcome.metadata is not None and outcome.metadata.size == len(DATA)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_followed(origin: Origin, code: int) -> None:
    target = origin.add("/real.bin", DATA)
    origin.faults["/moved.bin"] = faults.redirect(target, code)
    outcome = both_paths(origin, origin.url("/moved.bin"))
    assert outcome.metadata is not None and outcome.metadata.url == origin.url("/moved.bin")


def test_redirect_loop_and_dead_target(origin: Origin) -> None:
    origin.faults["/loop.bin"] = faults.redirect("/loop.bin")
    assert both_paths(origin, origin.url("/loop.bin")).error == "InvalidResponse"
    origin.faults["/gone.bin"] = faults.redirect("/nothing-here.bin")
    assert both_paths(origin, origin.url("/gone.bin")).status == 404


def test_credentials_stay_with_their_origin() -> None:
    """An Authorization header configured for the URL goes to its origin, never to the host it redirects to."""
    with Origin().running() as first, Origin(host="127.0.0.2").running() as second:
        target = second.add("/f.bin", DATA)
        first.faults["/f.bin"] = faults.redirect(target)

        async def main() -> None:
            async with RemoteClient(retry=RetryPolicy(base_delay=0, max_delay=0)) as client:
                metadata = await client.probe(first.url("/f.bin"), (("Authorization", "Bearer secret"),), bulk=True)
                assert metadata.size == len(DATA)

        trio.run(main)
        assert first.requests[0].headers["authorization"] == "Bearer secret"
        assert "authorization" not in second.requests[0].headers


def test_refused_connection_and_silent_server() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    refused = [probe(f"http://127.0.0.1:{port}/a", lighter=lighter) for lighter in (False, True)]
    assert refused[0] == refused[1] and refused[1].error == "RemoteUnreachable"
    assert refused[1].cause is not None and "connection refused" in refused[1].cause

    with silent_server() as url:
        quick = MountSettings(timeout=0.3)
        silent = [probe(url, lighter=lighter, settings=quick) for lighter in (False, True)]
    assert silent[0] == silent[1] and silent[1].cause is not None and "sent no answer" in silent[1].cause


@contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/a"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()


def test_a_connection_closed_while_idle_is_replaced_and_the_head_sent_again(origin: Origin) -> None:
    """The server closes a kept-alive connection between two probes (its keep-alive timeout): the second probe
    goes out again on a new connection, once, and succeeds; nothing is polled before reuse."""
    url = origin.add("/f.bin", DATA)
    closing: list[bool] = []

    def close_after_answer(handler: OriginHandler, served: ServedFile | None) -> bool:
        if closing:
            handler.close_connection = True  # answered with keep-alive, closed right after
        return False

    origin.faults["/f.bin"] = close_after_answer

    async def main() -> None:
        async with RemoteClient(retry=RetryPolicy(base_delay=0, max_delay=0)) as client:
            heads = client._sender.heads
            assert heads is not None
            await client.probe(url, bulk=True)
            closing.append(True)
            await client.probe(url, bulk=True)  # this answer's connection is closed by the server
            await trio.sleep(0.1)
            assert (await client.probe(url, bulk=True)).size == len(DATA)
            assert heads.resent == 1 and heads.connections_made == 2

    trio.run(main)
    assert len(origin.requests_for("/f.bin", "HEAD")) == 3  # the stale connection never reached the server


def test_probes_reuse_a_few_connections(origin: Origin) -> None:
    urls = [origin.add(f"/p{number}.bin", DATA) for number in range(40)]

    async def main() -> None:
        async with RemoteClient(MountSettings(connections=4)) as client:
            async with trio.open_nursery() as nursery:
                for url in urls:
                    nursery.start_soon(partial(client.probe, url, bulk=True))
            assert client._sender.heads is not None
            assert client._sender.heads.connections_made <= 4

    trio.run(main)


@pytest.mark.parametrize("which", ["good", "expired", "wrong_host"])
@pytest.mark.parametrize("with_bundle", [True, False], ids=["ca-bundle", "system-cas"])
def test_tls(certificates: tls.Certificates, which: str, with_bundle: bool) -> None:
    certificate: tls.ServerCertificate = getattr(certificates, which)
    with Origin(tls=certificate.server_context()).running() as origin:
        url = origin.add("/f.bin", DATA)
        options = MountSettings(ca_bundle=certificates.ca if with_bundle else None)
        outcome = both_paths(origin, url, settings=options)
    if which == "good" and with_bundle:
        assert outcome.metadata is not None and outcome.metadata.size == len(DATA)
    else:
        assert outcome.error == "RemoteUnreachable" and outcome.cause is not None
        assert "certificate" in outcome.cause


@pytest.mark.skipif(not nginx_available(), reason="nginx is not installed")
def test_nginx(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real server's keep-alive and headers: many probes over one connection, each answer the file's."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "f.bin").write_bytes(DATA)
    with running_nginx(root, tmp_path / "nginx") as base:
        outcomes = [probe(f"{base}/f.bin", lighter=lighter) for lighter in (False, True)]
        missing = [probe(f"{base}/nothing.bin", lighter=lighter) for lighter in (False, True)]
    assert outcomes[0] == outcomes[1] and outcomes[1].metadata is not None
    assert outcomes[1].metadata.size == len(DATA) and outcomes[1].metadata.etag
    assert missing[0] == missing[1] and missing[1].status == 404


_HEADER_VALUE = st.binary(max_size=40).filter(lambda value: b"\r" not in value and b"\n" not in value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    status=st.sampled_from([200, 206, 301, 400, 403, 404, 405, 410, 416, 429, 500, 503]),
    names=st.lists(
        # No Location: random bytes there could name a host off this machine.
        st.sampled_from(["Content-Length", "ETag", "Last-Modified", "Retry-After", "Accept-Ranges", "Content-Range"]),
        max_size=4,
    ),
    values=st.lists(_HEADER_VALUE, min_size=4, max_size=4),
)
def test_any_head_gives_the_same_outcome_both_ways(
    origin: Origin, status: int, names: list[str], values: list[bytes]
) -> None:
    """Whatever status and header bytes a HEAD answer carries, both paths end the same way."""
    url = origin.add("/h.bin", DATA)
    lines = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in zip(names, values, strict=False))
    origin.faults["/h.bin"] = faults.only(("HEAD",), raw_answer(b"HTTP/1.1 %d X\r\n" % status + lines + b"\r\n"))
    both_paths(origin, url, compare_cause=False)
