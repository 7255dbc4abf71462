"""RemoteClient through its seams: an httpx.MockTransport origin, a zero-delay RetryPolicy and trio's MockClock.

The MockClock jumps whenever every task sleeps, so Retry-After waits, probe deadlines and breaker cool-downs
take no real time while ``trio.current_time()`` still says how long they were.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import httpcore
import httpx
import pytest
import trio
import trio.testing

from rangefs.config import MountSettings
from rangefs.counters import RequestTally
from rangefs.errors import InvalidResponse, RemoteChanged, RemoteError, RemoteStatusError, RemoteUnreachable
from rangefs.ranges import ByteRange
from rangefs.remote import RemoteClient, RemoteMetadata
from rangefs.remote.retry import RetryPolicy
from rangefs.remote.transport import LargeReadBackend, build_transport, tls_context
from tests import faults
from tests.origin import Origin as LoopbackOrigin

DATA = bytes(range(256)) * 4  # 1024 bytes, a function of the offset
DATE = "Tue, 14 Nov 2023 22:13:20 GMT"
URL = "http://origin.example/file"
Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def make_client(handler: Handler, **options: object) -> RemoteClient:
    return RemoteClient(
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(base_delay=0, max_delay=0),
        **options,  # type: ignore[arg-type]
    )


class CutStream(httpx.AsyncByteStream):
    """A body that breaks after ``cut`` bytes, as a connection reset mid-transfer does."""

    def __init__(self, data: bytes, cut: int) -> None:
        self.data, self.cut = data, cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: self.cut]
        raise httpx.ReadError("connection reset by peer")


def body(status: int, data: bytes, headers: dict[str, str]) -> httpx.Response:
    # A stream, not content=: httpx reads content= at once, and then aiter_raw() raises StreamConsumed.
    return httpx.Response(status, headers={"Content-Length": str(len(data)), **headers}, stream=httpx.ByteStream(data))


@dataclass
class Origin:
    """One file with validators: answers HEAD, Range and If-Range (unless told to ignore it), logs requests."""

    data: bytes = DATA
    etag: str | None = '"v1"'
    last_modified: str | None = DATE
    honour_if_range: bool = True
    requests: list[httpx.Request] = field(default_factory=list)

    def validators(self) -> dict[str, str]:
        found = {"ETag": self.etag, "Last-Modified": self.last_modified}
        return {name: value for name, value in found.items() if value is not None}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        size = len(self.data)
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(size), **self.validators()})
        wanted = request.headers.get("range")
        if_range = request.headers.get("if-range")
        current = if_range is None or if_range in (self.etag, self.last_modified)
        if wanted is None or (self.honour_if_range and not current):
            return body(200, self.data, self.validators())
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", wanted)
        assert match, wanted
        first, last = int(match.group(1)), min(int(match.group(2)), size - 1)
        return body(
            206, self.data[first : last + 1], {"Content-Range": f"bytes {first}-{last}/{size}", **self.validators()}
        )

    def ranges(self) -> list[str | None]:
        return [request.headers.get("range") for request in self.requests if request.method == "GET"]


def test_cut_body_is_resumed_for_the_missing_bytes_only() -> None:
    origin = Origin()
    cuts = [100]

    def handler(request: httpx.Request) -> httpx.Response:
        response = origin(request)
        if cuts and request.method == "GET":
            cut = cuts.pop()
            data = b"".join(response.stream)  # type: ignore[arg-type]
            return httpx.Response(206, headers=response.headers, stream=CutStream(data, cut))
        return response

    async def main() -> None:
        async with make_client(handler) as client:
            metadata = await client.probe(URL)
            assert await client.fetch(metadata, ByteRange(0, 1000)) == DATA[:1000]
            assert client.statistics().retries == 1

    run(main)
    assert origin.ranges() == ["bytes=0-999", "bytes=100-999"]
    assert [request.headers.get("if-range") for request in origin.requests[1:]] == ['"v1"', '"v1"']


def test_redirect_is_followed_and_configured_headers_stay_with_their_origin() -> None:
    cdn = Origin()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "origin.example":
            cdn.requests.append(request)
            return httpx.Response(302, headers={"Location": "http://cdn.example/signed?sig=1"})
        return cdn(request)

    async def main() -> None:
        async with make_client(handler) as client:
            metadata = await client.probe(URL, (("Authorization", "Bearer secret"),))
            assert metadata.size == len(DATA)
            await client.fetch(metadata, ByteRange(0, 10), (("Authorization", "Bearer secret"),))

    run(main)
    hosts = [(request.method, request.url.host, request.headers.get("authorization")) for request in cdn.requests]
    assert hosts == [
        ("HEAD", "origin.example", "Bearer secret"),
        ("HEAD", "cdn.example", None),
        ("GET", "cdn.example", None),  # the redirect target is remembered while it works
    ]


def test_expired_redirect_target_is_resolved_again_by_concurrent_requests() -> None:
    """Two requests that find the same remembered target expired both forget it (a KeyError in 0.1)."""
    cdn = Origin()
    signature = [1]
    expired: list[httpx.Request] = []
    both_expired = trio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "origin.example":
            if expired:
                await trio.sleep(1)  # the first to resolve again is not done before the second meets the 403
            return httpx.Response(302, headers={"Location": f"http://cdn.example/f?sig={signature[0]}"})
        if request.url.params["sig"] != str(signature[0]):
            expired.append(request)
            if len(expired) == 2:
                both_expired.set()
            await both_expired.wait()  # both requests meet the expired target before either resolves it
            return httpx.Response(403)
        return cdn(request)

    async def main() -> None:
        async with make_client(handler) as client:
            metadata = await client.probe(URL)
            signature[0] = 2
            results: list[bytes] = []

            async def fetch(start: int) -> None:
                results.append(await client.fetch(metadata, ByteRange(start, start + 10)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch, 0)
                nursery.start_soon(fetch, 100)
            assert sorted(results) == sorted([DATA[0:10], DATA[100:110]])
            assert len(expired) == 2

    run(main)


def test_503_waits_for_retry_after() -> None:
    origin = Origin()
    answers = [httpx.Response(503, headers={"Retry-After": "3"})]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop() if answers and request.method == "GET" else origin(request)

    async def main() -> None:
        async with make_client(handler) as client:
            metadata = await client.probe(URL)
            started = trio.current_time()
            assert await client.fetch(metadata, ByteRange(0, 10)) == DATA[:10]
            assert trio.current_time() - started >= 3
            stats = client.statistics()
            assert (stats.retries, stats.throttled) == (1, 1)

    run(main)


@pytest.mark.parametrize("value", [b"\xb2", b"\xc2\xb2", b"\xd9\xa3", b"9" * 5000])
def test_429_with_an_unreadable_retry_after_is_retried_as_a_remote_error(value: bytes) -> None:
    """Latin-1 "²" passed isdigit() and then made float() raise ValueError: one 429 ended the mount."""
    origin = Origin()
    throttled = [1, 2]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and throttled:
            throttled.pop()
            return httpx.Response(429, headers=[(b"Retry-After", value)])
        return origin(request)

    async def main() -> None:
        async with make_client(handler) as client:
            metadata = await client.probe(URL)
            assert await client.fetch(metadata, ByteRange(0, 10)) == DATA[:10]
            throttled.extend(range(100))
            with pytest.raises(RemoteStatusError) as caught:
                await client.fetch(metadata, ByteRange(0, 10))
            assert caught.value.status == 429

    run(main)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"etag": '"v2"'}, "ETag changed"),
        ({"last_modified": "Wed, 15 Nov 2023 22:13:20 GMT", "etag": None}, "Last-Modified changed"),
        ({"data": DATA + b"more"}, "size changed"),
    ],
)
def test_206_of_a_newer_version_is_refused_when_if_range_is_ignored(change: dict[str, object], words: str) -> None:
    """S3-compatible stores and caching proxies that ignore If-Range answer 206 from the new version."""
    origin = Origin(honour_if_range=False)

    async def main() -> None:
        async with make_client(origin) as client:
            metadata = await client.probe(URL)
            for name, value in change.items():
                setattr(origin, name, value)
            with pytest.raises(RemoteChanged, match=words):
                await client.fetch(metadata, ByteRange(0, 10))

    run(main)


def test_version_known_only_by_a_weak_etag() -> None:
    origin = Origin(etag='W/"1"', last_modified=None)

    async def main() -> None:
        async with make_client(origin) as client:
            first = await client.probe(URL)
            assert await client.fetch(first, ByteRange(0, 10)) == DATA[:10]
            origin.etag, origin.data = 'W/"2"', bytes(reversed(DATA))
            with pytest.raises(RemoteChanged, match="ETag changed"):
                await client.fetch(first, ByteRange(0, 10))
            second = await client.probe(URL)
            assert second.object_id != first.object_id  # so the blocks of the old version are dropped
            assert await client.fetch(second, ByteRange(0, 10)) == origin.data[:10]

    run(main)
    assert all("if-range" not in request.headers for request in origin.requests)


def test_unreadable_content_length_of_a_probe_falls_back_to_a_ranged_get() -> None:
    origin = Origin()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(200, headers=[(b"Content-Length", b"\xb2"), (b"ETag", b'"v1"')])
        return origin(request)

    async def main() -> None:
        async with make_client(handler) as client:
            assert (await client.probe(URL)).size == len(DATA)

    run(main)


@pytest.mark.parametrize(
    "failure",
    [
        ValueError("invalid literal"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        httpx.InvalidURL("Invalid port"),
        KeyError("content-type"),
    ],
)
def test_unexpected_exception_while_talking_http_becomes_invalid_response(failure: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    async def main() -> None:
        async with make_client(handler) as client:
            with pytest.raises(InvalidResponse, match=type(failure).__name__) as caught:
                await client.probe(URL)
            assert caught.value.url == URL

    run(main)


def test_bad_location_header_becomes_invalid_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "http://[::1"})

    async def main() -> None:
        async with make_client(handler) as client:
            with pytest.raises(InvalidResponse, match=URL):
                await client.probe(URL)

    run(main)


def test_cancellation_is_not_translated_and_does_not_mark_the_host_down() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def main() -> None:
        async with make_client(handler) as client:
            with trio.move_on_after(1) as scope:
                await client.fetch(RemoteMetadata(URL, 100), ByteRange(0, 10))
            assert scope.cancelled_caught
            assert client.statistics().hosts_down == 0

    run(main)


# The per-host circuit breaker.


@dataclass
class Hosts:
    """Transport of several hosts: ``dead`` ones raise ``failure``; counts the calls per host."""

    failure: Callable[[httpx.Request], Awaitable[httpx.Response]] | None = None
    dead: set[str] = field(default_factory=set)
    calls: dict[str, int] = field(default_factory=dict)
    origin: Origin = field(default_factory=Origin)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls[host] = self.calls.get(host, 0) + 1
        if host in self.dead:
            if self.failure is not None:
                return await self.failure(request)
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return self.origin(request)


def test_connect_failure_marks_the_host_down_for_all_its_urls() -> None:
    hosts = Hosts(dead={"dead.example"})

    async def main() -> None:
        async with make_client(hosts) as client:
            with pytest.raises(RemoteUnreachable, match="ConnectError"):
                await client.probe("http://dead.example/a")
            assert hosts.calls == {"dead.example": 1}  # no retry once the host is known down
            started = trio.current_time()
            for name in "bcdefg":
                with pytest.raises(RemoteUnreachable, match=r"host http://dead.example:80 down for .*retrying it"):
                    await client.probe(f"http://dead.example/{name}")
            assert trio.current_time() == started  # refused at once
            assert hosts.calls == {"dead.example": 1}
            assert (await client.probe("http://live.example/a")).size == len(DATA)  # other hosts unaffected
            stats = client.statistics()
            assert (stats.hosts_down, stats.requests_refused) == (1, 6)

    run(main)


def test_half_open_trial_after_the_cool_down() -> None:
    hosts = Hosts(dead={"dead.example"})

    async def main() -> None:
        async with make_client(hosts) as client:
            with pytest.raises(RemoteUnreachable):
                await client.probe("http://dead.example/a")
            await trio.sleep(2.1)  # first cool-down: 2 s
            with pytest.raises(RemoteUnreachable, match="ConnectError"):
                await client.probe("http://dead.example/a")  # the trial, which fails: cool-down doubles
            assert hosts.calls["dead.example"] == 2
            await trio.sleep(2.1)
            with pytest.raises(RemoteUnreachable, match="down for"):
                await client.probe("http://dead.example/a")
            assert hosts.calls["dead.example"] == 2
            await trio.sleep(2)
            hosts.dead.clear()
            assert (await client.probe("http://dead.example/a")).size == len(DATA)  # the trial succeeds
            assert client.statistics().hosts_down == 0
            assert (await client.probe("http://dead.example/b")).size == len(DATA)

    run(main)


def test_requests_during_the_trial_are_refused() -> None:
    trial_started = trio.Event()
    release = trio.Event()

    async def slow_then_fine(request: httpx.Request) -> httpx.Response:
        trial_started.set()
        await release.wait()
        return Origin()(request)

    hosts = Hosts(dead={"dead.example"})

    async def main() -> None:
        async with make_client(hosts) as client:
            with pytest.raises(RemoteUnreachable):
                await client.probe("http://dead.example/a")
            await trio.sleep(2.1)
            hosts.failure = slow_then_fine
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.probe, "http://dead.example/a")
                await trial_started.wait()
                with pytest.raises(RemoteUnreachable, match="trial request is under way"):
                    await client.probe("http://dead.example/b")
                release.set()
            assert client.statistics().hosts_down == 0

    run(main)


def test_host_dropping_packets_costs_one_probe_deadline_not_one_per_url() -> None:
    """ls of 10,000 URLs of such a host took 26 minutes: every probe waited its 5 s deadline, 32 at a time."""

    async def drop(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()  # a SYN that is never answered: no connection, no error
        raise AssertionError("unreachable")

    hosts = Hosts(failure=drop, dead={"dead.example"})

    async def main() -> None:
        async with make_client(hosts) as client:
            limiter = trio.CapacityLimiter(32)
            failures: list[RemoteError] = []

            async def probe(index: int) -> None:
                async with limiter:
                    try:
                        await client.probe(f"http://dead.example/{index}")
                    except RemoteError as error:
                        failures.append(error)

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for index in range(1000):
                    nursery.start_soon(probe, index)
            assert len(failures) == 1000
            assert trio.current_time() - started < 6  # one 5 s probe deadline, then refused at once
            assert hosts.calls["dead.example"] == MountSettings().connections  # the probes one host gets at once

    run(main)


def test_read_timeout_on_a_connection_does_not_mark_the_host_down() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out waiting for the answer")

    hosts = Hosts(failure=slow, dead={"slow.example"})

    async def main() -> None:
        async with make_client(hosts) as client:
            with pytest.raises(RemoteUnreachable, match=r"slow\.example:80 sent nothing for 20 s \(read timeout\)"):
                await client.probe("http://slow.example/a")
            assert hosts.calls["slow.example"] == RetryPolicy().max_attempts  # retried, as transient
            assert client.statistics().hosts_down == 0

    run(main)


# The same distinction over real loopback sockets, where httpcore's trace events tell connected from not.


def test_real_refused_connection_marks_the_host_down() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens once it is closed

    async def main() -> None:
        async with RemoteClient(retry=RetryPolicy(base_delay=0, max_delay=0)) as client:
            with pytest.raises(RemoteUnreachable, match=r"connection refused by 127\.0\.0\.1:"):
                await client.probe(f"http://127.0.0.1:{port}/a")
            with pytest.raises(RemoteUnreachable, match="down for"):
                await client.probe(f"http://127.0.0.1:{port}/b")
            assert client.statistics().hosts_down == 1

    trio.run(main)


def test_real_connection_that_never_answers_does_not_mark_the_host_down() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        while await stream.receive_some():
            pass

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            async with RemoteClient(MountSettings(timeout=0.3), retry=RetryPolicy(base_delay=0, max_delay=0)) as client:
                with pytest.raises(
                    RemoteUnreachable, match=r"accepted the connection but sent no answer within 0\.3 s"
                ):
                    await client.probe(f"http://127.0.0.1:{port}/a")
                assert client.statistics().hosts_down == 0
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_validator_outside_ascii_is_compared_but_not_sent_back() -> None:
    """httpx sends header values as ASCII: an ETag of Latin-1 bytes in If-Range raised UnicodeEncodeError."""
    origin = Origin()

    def handler(request: httpx.Request) -> httpx.Response:
        response = origin(request)
        headers = [(name, value) for name, value in response.headers.raw if name.lower() != b"etag"]
        return httpx.Response(response.status_code, headers=[*headers, (b"ETag", b'"\xb2"')], stream=response.stream)

    async def main() -> None:
        async with make_client(handler) as client:
            metadata = await client.probe(URL)
            assert metadata.etag == '"\xb2"'
            assert await client.fetch(metadata, ByteRange(0, 10)) == DATA[:10]

    run(main)
    assert [request.headers.get("if-range") for request in origin.requests[1:]] == [DATE]


def test_deadline_ending_a_connect_just_begun_does_not_mark_the_host_down() -> None:
    """A fetch that spent its budget waiting for Retry-After says nothing about connecting to the host."""
    origin = Origin()
    busy = [httpx.Response(503, headers={"Retry-After": "9"})]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and busy:
            return busy.pop()
        if request.method == "GET":
            await trio.sleep_forever()
        return origin(request)

    async def main() -> None:
        async with make_client(handler, settings=MountSettings(timeout=10.0)) as client:
            metadata = await client.probe(URL)
            with pytest.raises(RemoteUnreachable, match="within 10 s"):
                await client.fetch(metadata, ByteRange(0, 10))
            assert client.statistics().hosts_down == 0

    run(main)


def test_connections_read_the_socket_in_large_pieces_without_patching_httpcore() -> None:
    """1 MiB socket reads halve the CPU per MiB; they are this client's, not a process-wide class patch."""
    payload = bytes(range(256)) * (4 * 4096)  # 4 MiB

    async def send_all(stream: trio.SocketStream) -> None:
        await stream.send_all(payload)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, send_all, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            stream = await LargeReadBackend().connect_tcp("127.0.0.1", port)
            received = b""
            with trio.fail_after(10):
                while len(received) < len(payload):
                    await trio.sleep(0.01)  # let the sender fill the socket buffer
                    received += await stream.read(64 * 1024)
            assert received == payload
            assert stream.reads < len(payload) // (64 * 1024), stream.reads  # reads larger than asked
            await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
    transport = build_transport(verify=tls_context(None), http2=False, limits=httpx.Limits())
    assert transport is not None
    assert isinstance(transport._pool._network_backend, LargeReadBackend)  # type: ignore[attr-defined]
    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == 64 * 1024


def test_probes_of_one_host_are_bounded_by_its_connections() -> None:
    """httpcore's CPU per request grows with its pool; 32 probes at once to one host doubled a listing's CPU."""
    with LoopbackOrigin().running() as origin:
        urls = []
        for number in range(40):
            urls.append(origin.add(f"/p{number}.bin", b"x" * number))
            origin.faults[f"/p{number}.bin"] = faults.only(("HEAD",), faults.slow_first_byte(0.05))

        async def main() -> None:
            async with RemoteClient(MountSettings(connections=4)) as client, trio.open_nursery() as nursery:
                for url in urls:
                    nursery.start_soon(client.probe, url)

        trio.run(main)
        assert len(origin.requests) == 40
        assert origin.max_in_flight == 4


def test_a_callers_tally_counts_its_requests_bytes_retries_and_errors_beside_the_totals() -> None:
    origin = Origin()
    cuts = [100]

    def handler(request: httpx.Request) -> httpx.Response:
        response = origin(request)
        if cuts and request.method == "GET":
            data = b"".join(response.stream)  # type: ignore[arg-type]
            return httpx.Response(206, headers=response.headers, stream=CutStream(data, cuts.pop()))
        return response

    async def main() -> None:
        async with make_client(handler) as client:
            metadata = await client.probe(URL)
            mine, other = RequestTally(), RequestTally()
            in_flight: list[int] = []
            sink = lambda chunk: in_flight.append(mine.bytes_in_flight)  # noqa: E731
            await client.fetch_into(metadata, ByteRange(0, 1000), sink, tallies=(mine,))
            assert await client.fetch(metadata, ByteRange(1000, 1024), tallies=(other,)) == DATA[1000:]
            # The cut body: two requests, one failed attempt retried; bytes counted as they arrived, once.
            assert (mine.requests, mine.retries, mine.errors, mine.bytes_fetched) == (2, 1, 1, 1000)
            assert in_flight == [900, 0] and mine.bytes_in_flight == 0
            assert (other.requests, other.retries, other.errors, other.bytes_fetched) == (1, 0, 0, 24)
            totals = client.statistics()
            assert (totals.requests, totals.retries, totals.errors, totals.bytes_fetched) == (3, 1, 1, 1024)
            assert totals.bytes_in_flight == 0
