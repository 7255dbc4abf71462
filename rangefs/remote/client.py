"""HTTP client for probes and validated range fetches, with retries and adaptive limits per host.

Requests go through a Sender (redirects, credentials kept at their origin, the per-host breaker). Every
failure while talking HTTP (a transport error, or anything untrusted input makes httpx, h11 or our parsing
raise) is translated to a RemoteError in exactly one place, ``_translated``, whose message says what failed and
what to do (``diagnosis``: a certificate, a name, a refused or silent host). Transient failures are retried
within a deadline per operation (``total_timeout``), but not once the host is known down; a body cut short
is resumed for the missing bytes only.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TypeVar, cast

import httpx
import trio

from rangefs.config import MountSettings
from rangefs.counters import RequestTally
from rangefs.errors import (
    CredentialError,
    InvalidResponse,
    RemoteChanged,
    RemoteError,
    RemoteStatusError,
    RemoteUnreachable,
)
from rangefs.logthrottle import LogThrottle
from rangefs.ranges import ByteRange
from rangefs.remote.breaker import HostBreaker
from rangefs.remote.credentials import Credentials, Grant
from rangefs.remote.diagnosis import deadline_passed
from rangefs.remote.frames import Job
from rangefs.remote.headers import parse_digits
from rangefs.remote.headpath import HeadConnections
from rangefs.remote.limits import HostLimits
from rangefs.remote.metadata import RemoteMetadata
from rangefs.remote.netrc import NetrcAuth
from rangefs.remote.retry import THROTTLE_STATUSES, RetryPolicy, is_transient, parse_retry_after
from rangefs.remote.sender import Attempt, Headers, Sender, origin_of
from rangefs.remote.transport import build_transport, tls_context
from rangefs.remote.validate import (
    check_range_response,
    parse_content_range,
    parse_unsatisfied_range,
    whole_file_difference,
)
from rangefs.remote.workers import FetchWorkers

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a request of an entry carries: fixed headers, or Credentials that commands refresh.
Access = Headers | Credentials
# Answers that say the credentials are refused: refreshable ones are renewed once per operation.
_REFUSED = frozenset({401, 403})

# Seconds a probe may take, retries included: probes stand between `ls` and its answer, so a dead host must
# not hold a listing up for the whole read timeout.
_PROBE_TIMEOUT = 5.0
# Seconds a connection may stay unfinished before a deadline that ends it counts as a connect failure: by
# then two SYNs went unanswered (retransmitted after 1 and 3 s, RFC 6298). An operation whose deadline ends
# a connect just begun (its budget spent on earlier attempts) says nothing about the host.
_UNANSWERED_CONNECT = 3.0


@dataclass
class ClientStatistics(RequestTally):
    """The client's totals; callers may pass tallies of their own (per file) that are counted beside them."""

    throttled: int = 0
    # Hosts known down right now (HostBreaker open or half-open).
    hosts_down: int = 0
    # Requests failed at once, without being sent, because their host was known down.
    requests_refused: int = 0


class FetchStopped(Exception):
    """Raised by the sink of ``fetch_into`` to end the fetch before its range ends; it leaves ``fetch_into``
    as it is, neither retried nor counted as an error (the connection is closed, its body being unread)."""


class _SinkFailed(Exception):
    """What a fetch's sink raised, carried past the translation of HTTP failures and the retries: a full
    disk while writing what arrived is the sink's failure, not the server's."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class _Progress:
    """Where the attempts of one fetch send what they receive, how much that is so far, and the tallies
    that count it."""

    sink: Callable[[bytes], None]
    counts: Sequence[RequestTally]
    received: int = 0

    def arrived(self, chunk: bytes) -> None:
        self.received += len(chunk)
        for tally in self.counts:
            tally.bytes_fetched += len(chunk)
            tally.bytes_in_flight -= len(chunk)
        try:
            self.sink(chunk)
        except Exception as error:
            raise _SinkFailed(error) from error


@contextmanager
def _in_flight(counts: Sequence[RequestTally], length: int, progress: _Progress) -> Iterator[None]:
    """``length`` bytes are in flight until they arrive (``_Progress.arrived``) or the fetch ends."""
    for tally in counts:
        tally.bytes_in_flight += length
    try:
        yield
    finally:
        for tally in counts:
            tally.bytes_in_flight -= length - progress.received


class RemoteClient:
    """Probes remote files and fetches validated byte ranges of them."""

    def __init__(
        self,
        settings: MountSettings | None = None,
        *,
        retry: RetryPolicy | None = None,
        breaker: HostBreaker | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        auth: httpx.Auth | None = None,
    ) -> None:
        """A client with the timeouts, connection limits and TLS of ``settings`` (a mount's defaults if None);
        ``transport`` replaces the network (tests)."""
        settings = settings or MountSettings()
        timeout = settings.read_timeout
        # The HostLimits below bound connections; httpx's pool only keeps them alive.
        # Idle connections are kept for a minute (httpx's default is 5 s): a reader coming back after a pause
        # saves the handshake, and httpcore checks a pooled connection is still open before reusing it.
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=4 * settings.connections, keepalive_expiry=60.0
        )
        verify = tls_context(settings.ca_bundle)
        timeouts = httpx.Timeout(connect=settings.connect_timeout, read=timeout, write=timeout, pool=None)
        own_transport = None if transport else build_transport(verify=verify, http2=settings.http2, limits=limits)
        self._client = httpx.AsyncClient(
            timeout=timeouts,
            limits=limits,
            follow_redirects=False,
            headers={"User-Agent": settings.user_agent, "Accept-Encoding": "identity"},
            verify=verify,
            http2=settings.http2,
            transport=transport or own_transport,
            trust_env=True,
            auth=auth,
        )
        self.total_timeout = settings.timeout
        self.retry = retry or RetryPolicy()
        self.limits = HostLimits(settings.connections)
        self.breaker = breaker or HostBreaker()
        # Offline: every request fails at once, before any connection (see Sender).
        # Bulk probes' HEADs take the lighter path (headpath.py) where httpx's own pool would serve them the
        # plainest way: our transport (no proxy), HTTP/1.1, an auth of one step. Elsewhere httpx's path serves
        # them too.
        heads = None
        one_step_auth = auth is None or isinstance(auth, NetrcAuth)
        if own_transport is not None and not settings.http2 and one_step_auth:
            heads = HeadConnections(
                ssl_context=verify, timeout=timeouts, max_idle=4 * settings.connections, keepalive_expiry=60.0
            )
        self._sender = Sender(self._client, self.breaker, offline=settings.offline, heads=heads)
        self.stats = ClientStatistics()
        self._log_throttle = LogThrottle()
        # Worker processes that run prefetches' attempts, when the owner of this client started some.
        self.workers: FetchWorkers | None = None

    async def aclose(self) -> None:
        try:
            if self._sender.heads is not None:
                await self._sender.heads.aclose()
        finally:
            await self._client.aclose()

    async def __aenter__(self) -> RemoteClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<RemoteClient {self.statistics()} {self._sender!r} {self.limits!r}>"

    def statistics(self) -> ClientStatistics:
        breaker = self.breaker.statistics()
        self.stats.hosts_down, self.stats.requests_refused = breaker.hosts_down, breaker.refused
        return self.stats

    async def probe(self, url: str, access: Access = (), *, bulk: bool = False) -> RemoteMetadata:
        """Size and validator of ``url``: HEAD first, a one-byte ranged GET when HEAD says too little.

        A ``bulk`` probe (one of a listing's many) sends its HEAD the lighter way (headpath.py), on connections
        kept for HEADs; any other goes through httpx's pool, whose connection the read that usually follows
        (an open, ``rangefs get``) then reuses instead of paying a handshake."""
        timeout = min(self.total_timeout, _PROBE_TIMEOUT)
        credentials = _credentials(url, access)
        # The deadline starts once a connection is ours: probes queued behind a slow host must not expire.
        async with self.limits.probe_limiter(self._origin(url)):
            return await self._with_retries(
                url, lambda attempt, grant: self._probe_once(url, grant, attempt, bulk), timeout, credentials
            )

    async def fetch(
        self,
        metadata: RemoteMetadata,
        wanted: ByteRange,
        access: Access = (),
        *,
        demand: bool = True,
        tallies: Sequence[RequestTally] = (),
    ) -> bytes:
        """Exactly the ``wanted`` bytes of the version ``metadata`` describes, or a RemoteError."""
        chunks: list[bytes] = []
        await self.fetch_into(metadata, wanted, chunks.append, access, demand=demand, tallies=tallies)
        # One copy from the socket reads into the result (a preallocated buffer would cost two passes).
        return b"".join(chunks)

    async def fetch_into(
        self,
        metadata: RemoteMetadata,
        wanted: ByteRange,
        sink: Callable[[bytes], None],
        access: Access = (),
        *,
        demand: bool = True,
        tallies: Sequence[RequestTally] = (),
    ) -> None:
        """Pass exactly the ``wanted`` bytes of the version ``metadata`` describes to ``sink``, in order, as they
        arrive (each chunk once the answer's headers proved it is that version), or raise a RemoteError; after
        an error, what ``sink`` got is a correct prefix.

        Demand fetches (a reader waits) and prefetches use separate connection limits per host. A body cut
        short is resumed from where it stopped. Requests, bytes, retries and errors are counted in the
        client's statistics and in each of ``tallies``."""
        origin = self._origin(metadata.url)
        counts = (self.stats, *tallies)
        progress = _Progress(sink, counts)

        async def fetch_once(attempt: Attempt, grant: Grant) -> None:
            async with self.limits.limiter(origin, demand=demand):
                # Prefetches (a stream's bulk) go to a fetch worker where there is one for the URL; demand
                # reads are few and small, and stay on the daemon's warm connections.
                workers = self.workers
                if not demand and workers is not None and workers.takes(metadata.url):
                    await self._fetch_by_worker(workers, metadata, wanted, progress, grant, attempt)
                else:
                    await self._fetch_into(metadata, wanted, progress, grant, attempt)

        credentials = _credentials(metadata.url, access)
        with _in_flight(counts, wanted.length, progress):
            try:
                await self._with_retries(metadata.url, fetch_once, self.total_timeout, credentials, counts)
            except _SinkFailed as failed:
                raise failed.error from None

    @asynccontextmanager
    async def stream_whole(
        self, metadata: RemoteMetadata, access: Access = (), *, tallies: Sequence[RequestTally] = ()
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The whole file, in order, for servers that ignore Range; checked to be the version expected.
        Not retried (a stream cannot resume), but credentials that the server refuses (401/403) are renewed
        once, as for every other request."""
        url = metadata.url
        credentials = _credentials(url, access)
        grant = await credentials.grant()
        counts = (self.stats, *tallies)
        progress = _Progress(lambda _chunk: None, counts)
        async with AsyncExitStack() as stack:
            stack.enter_context(_in_flight(counts, metadata.size, progress))
            for renewal in range(2):
                for tally in counts:
                    tally.requests += 1
                async with AsyncExitStack() as attempt:
                    # Translation covers the request and each chunk, not the caller's body (its errors are its own).
                    with self._translated(url, counts):
                        request = self._sender.request("GET", grant.url, grant.headers, Attempt())
                        response = await attempt.enter_async_context(request)
                        refused = response.status_code in _REFUSED and credentials.refreshable and not renewal
                        if not refused:
                            self._check_whole(url, metadata, response)
                            stack.push_async_exit(attempt.pop_all())  # the response stays open for the body
                            break
                log.info("%s answered %d; renewing its credentials", url, response.status_code)
                grant = await credentials.renew(grant)
            yield self._counted(url, response, progress)

    @staticmethod
    def _check_whole(url: str, metadata: RemoteMetadata, response: httpx.Response) -> None:
        """A whole-file answer must be a 200 of the version expected, not encoded."""
        if response.status_code != 200:
            raise _status_error(url, response)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise InvalidResponse(url, f"whole file sent with Content-Encoding {encoding!r}")
        difference = whole_file_difference(metadata, response.headers)
        if difference is not None:
            raise RemoteChanged(url, f"the file changed: {difference}")

    async def _counted(self, url: str, response: httpx.Response, progress: _Progress) -> AsyncIterator[bytes]:
        # aclosing: a reader that stops early must not leave httpx's generator for the garbage collector.
        async with aclosing(_generator(response)) as chunks:
            while True:
                with self._translated(url, progress.counts):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    return
                progress.arrived(chunk)
                yield chunk

    async def _with_retries(
        self,
        url: str,
        operation: Callable[[Attempt, Grant], Awaitable[T]],
        time_budget: float,
        credentials: Credentials,
        counts: Sequence[RequestTally] = (),
    ) -> T:
        """Run ``operation`` until it succeeds, retrying what is transient within ``time_budget`` seconds.

        Credentials refused by the server (401/403) are renewed once and the operation tried again at once;
        running the commands does not count against the budget (they have their own timeout)."""
        origin = self._origin(url)
        grant = await credentials.grant()
        renewed = False
        deadline = trio.current_time() + time_budget
        for number in itertools.count(1):
            attempt = Attempt()
            try:
                with trio.fail_after(max(0.0, deadline - trio.current_time())):
                    result = await operation(attempt, grant)
            except trio.TooSlowError:
                self._note_unfinished_connect(attempt, time_budget)
                cause = deadline_passed(
                    time_budget, attempt.host, connecting=attempt.connecting is not None, answered=attempt.answered
                )
                raise RemoteUnreachable(url, cause) from None
            except RemoteError as error:
                if isinstance(error, RemoteStatusError) and error.status in _REFUSED and credentials.refreshable:
                    if renewed:
                        raise CredentialError(
                            url, f"HTTP status {error.status} to fresh credentials from {credentials.describe()}"
                        ) from None
                    log.info("%s answered %d; renewing its credentials", url, error.status)
                    grant, renewed = await credentials.renew(grant), True
                    deadline = trio.current_time() + time_budget
                    continue
                if isinstance(error, RemoteStatusError) and error.status in THROTTLE_STATUSES:
                    self.limits.throttled(origin)
                    self.stats.throttled += 1
                if attempt.host_down or not is_transient(error) or number >= self.retry.max_attempts:
                    raise
                delay = self.retry.delay(number, getattr(error, "retry_after", None))
                if trio.current_time() + delay >= deadline:
                    raise
                for tally in counts or (self.stats,):
                    tally.retries += 1
                self._log_retry(number, error, delay)
                await trio.sleep(delay)
            else:
                self.limits.succeeded(origin)
                return result
        raise AssertionError("unreachable")

    def _note_unfinished_connect(self, attempt: Attempt, time_budget: float) -> None:
        # Probes have a deadline shorter than the connect timeout, so a host that drops packets shows up as
        # a deadline that ended a connect, not as a ConnectTimeout.
        if attempt.connecting is None:
            return
        connecting_for = trio.current_time() - attempt.connecting_since
        if connecting_for >= min(_UNANSWERED_CONNECT, time_budget / 2):
            cause = deadline_passed(round(connecting_for, 1), attempt.connecting, connecting=True, answered=False)
            self.breaker.failed(attempt.connecting, cause)

    def _log_retry(self, attempt: int, error: RemoteError, delay: float) -> None:
        level = logging.DEBUG if attempt == 1 else logging.INFO if attempt < 4 else logging.WARNING
        if level >= logging.WARNING:
            admitted, _ = self._log_throttle.admit(f"{error.url}\0{type(error).__name__}")
            if not admitted:
                return
        log.log(level, "%s (attempt %d); retrying in %.2f s", error, attempt, delay)

    async def _probe_once(self, url: str, grant: Grant, attempt: Attempt, bulk: bool) -> RemoteMetadata:
        """One attempt; requests go where ``grant`` says, what they learn is of ``url``."""
        with self._translated(url):
            async with self._sender.request("HEAD", grant.url, grant.headers, attempt, lighter=bulk) as response:
                length = _content_length(response)
                if response.status_code == 200 and length is not None:
                    return _metadata_from(url, response, length)
                if response.status_code not in (200, 400, 403, 405, 501):
                    raise _status_error(url, response)
            return await self._probe_with_get(url, grant, attempt)

    async def _probe_with_get(self, url: str, grant: Grant, attempt: Attempt) -> RemoteMetadata:
        request = self._sender.request("GET", grant.url, grant.headers, attempt, {"Range": "bytes=0-0"})
        async with request as response:
            status = response.status_code
            if status == 206:
                try:
                    _, total = parse_content_range(response.headers.get("content-range", ""))
                except ValueError as error:
                    raise InvalidResponse(url, f"probe: {error}") from None
                if total is None:
                    raise InvalidResponse(url, "probe: server does not say the file size (Content-Range */*)")
                return _metadata_from(url, response, total)
            if status == 416 and parse_unsatisfied_range(response.headers.get("content-range", "")) == 0:
                return _metadata_from(url, response, 0)
            length = _content_length(response)
            if status == 200 and length is not None:
                metadata = _metadata_from(url, response, length)
                return RemoteMetadata(metadata.url, metadata.size, metadata.etag, metadata.last_modified, False)
            if status == 200:
                raise InvalidResponse(url, "probe: server says neither the file size nor supports ranges")
            raise _status_error(url, response)

    async def _fetch_into(
        self, metadata: RemoteMetadata, wanted: ByteRange, progress: _Progress, grant: Grant, attempt: Attempt
    ) -> None:
        """One attempt: fetch what ``progress`` says is still missing of ``wanted`` into ``progress``."""
        missing = ByteRange(wanted.start + progress.received, wanted.stop)
        for tally in progress.counts:
            tally.requests += 1
        async with aclosing(self.range_body(metadata, missing, grant, attempt, progress.counts)) as body:
            async for chunk in body:
                progress.arrived(chunk)

    @staticmethod
    async def _fetch_by_worker(  # noqa: PLR0917
        workers: FetchWorkers,
        metadata: RemoteMetadata,
        wanted: ByteRange,
        progress: _Progress,
        grant: Grant,
        attempt: Attempt,
    ) -> None:
        """``_fetch_into``'s attempt, run by a fetch worker; the same counts and the same final check."""
        missing = ByteRange(wanted.start + progress.received, wanted.stop)
        for tally in progress.counts:
            tally.requests += 1
        try:
            await workers.fetch(Job(metadata, missing, grant.url, grant.headers), progress.arrived, attempt)
        except RemoteError:
            for tally in progress.counts:
                tally.errors += 1
            raise
        if progress.received != wanted.length:
            raise InvalidResponse(
                metadata.url,
                f"fetch worker ended the body at {progress.received} of {wanted.length} bytes",
                transient=True,
            )

    async def range_body(
        self,
        metadata: RemoteMetadata,
        wanted: ByteRange,
        grant: Grant | Job,
        attempt: Attempt,
        counts: Sequence[RequestTally] = (),
    ) -> AsyncGenerator[bytes, None]:
        """One request for ``wanted`` of the version ``metadata`` describes, sent where ``grant`` says: the
        chunks of its body, each once the answer's headers proved it is that version; or a RemoteError (after
        which the chunks given are a correct prefix). Failures are counted in ``counts``. What the consumer
        raises is its own: it is not translated. Fetch workers run this for the daemon (fetchworker.py)."""
        url = metadata.url
        extra = {"Range": wanted.header_value()}
        if metadata.if_range:
            extra["If-Range"] = metadata.if_range
        with self._translated(url, counts):
            async with self._sender.request("GET", grant.url, grant.headers, attempt, extra) as response:
                if response.status_code >= 400:
                    raise _status_error(url, response)
                check_range_response(url, response.status_code, response.headers, wanted=wanted, metadata=metadata)
                received = 0
                async with aclosing(_generator(response)) as body:  # closed also when we stop early
                    async for chunk in body:
                        received += len(chunk)
                        if received > wanted.length:
                            raise InvalidResponse(url, f"body longer than the {wanted.length} bytes asked for")
                        yield chunk
                if received != wanted.length:
                    raise InvalidResponse(url, f"body cut short: {received} of {wanted.length} bytes", transient=True)

    def _origin(self, url: str) -> str:
        with self._translated(url):
            return origin_of(httpx.URL(url))

    @contextmanager
    def _translated(self, url: str, counts: Sequence[RequestTally] = ()) -> Iterator[None]:
        """The one place where failing to talk HTTP becomes a RemoteError; cancellation passes untouched.
        Each failure counts as an error in ``counts`` (the client's statistics when none are given)."""
        try:
            try:
                yield
            except _SinkFailed:
                raise
            except Exception:
                for tally in counts or (self.stats,):
                    tally.errors += 1
                raise
        except (RemoteError, _SinkFailed):
            raise
        except httpx.TimeoutException as error:
            raise RemoteUnreachable(url, self._explained(url, error)) from None
        except httpx.RemoteProtocolError as error:
            raise InvalidResponse(url, f"protocol error: {error}", transient=True) from None
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as error:
            # Our own request cannot be sent (a header value h11 refuses, a scheme httpx lacks): final.
            raise InvalidResponse(url, f"cannot send the request: {type(error).__name__}: {error}") from None
        except httpx.HTTPError as error:
            raise RemoteUnreachable(url, self._explained(url, error)) from None
        except Exception as error:
            # Untrusted input (a URL, a Location or header value, a codec) made httpx, h11 or our parsing raise
            # something else: one bad answer fails its request, never the mount.
            log.debug("unexpected error talking to %s", url, exc_info=True)
            raise InvalidResponse(url, f"unexpected {type(error).__name__}: {error}") from None

    def _explained(self, url: str, error: httpx.HTTPError) -> str:
        # The host the failed request went to: after a redirect, not the configured URL's.
        try:
            target = error.request.url
        except RuntimeError:  # raised without its request (a transport of our own, in tests)
            target = httpx.URL(url)
        return self._sender.describe(error, origin_of(target))


def _credentials(url: str, access: Access) -> Credentials:
    return access if isinstance(access, Credentials) else Credentials(url, access)


def _status_error(url: str, response: httpx.Response) -> RemoteStatusError:
    return RemoteStatusError(
        url, response.status_code, retry_after=parse_retry_after(response.headers.get("retry-after"))
    )


def _content_length(response: httpx.Response) -> int | None:
    return parse_digits(response.headers.get("content-length"))


def _metadata_from(url: str, response: httpx.Response, size: int) -> RemoteMetadata:
    # Only an explicit "none" says no: many servers that do ranges never advertise them. A server that
    # ignores a range request anyway is found out by the first fetch (RangesUnsupported).
    accept_ranges = response.headers.get("accept-ranges", "").strip().lower()
    return RemoteMetadata(
        url=url,
        size=size,
        etag=response.headers.get("etag") or None,
        last_modified=response.headers.get("last-modified") or None,
        accepts_ranges=response.status_code == 206 or accept_ranges != "none",
    )


def _generator(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """httpx types the raw body as an AsyncIterator; it is an async generator, which aclosing needs."""
    return cast("AsyncGenerator[bytes, None]", response.aiter_raw())
