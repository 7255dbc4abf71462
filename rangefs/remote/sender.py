"""Sender: one logical request, with redirects followed and every hop passed through the host's breaker.

Redirects are followed here rather than by httpx so that headers configured for an entry (credentials) are
only ever sent to the origin the user wrote down; the final location is remembered while it works and
resolved again from the configured URL when it stops working (an expired signed URL answers 403 or 410).

Each hop asks the HostBreaker of the host it goes to first, and tells it what connecting taught: a connect
failure marks the host down; an answer, or httpcore's trace of a request being written on a connection
(``http11.*``/``http2.*`` events: a fresh connection was made, or a pooled one reused), marks it up. The
``Attempt`` records what the owner of a deadline needs to know afterwards (still connecting? host down?).
Errors are left to the caller's one translation point.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import cast

import httpx
import trio

from rangefs.errors import InvalidResponse, RemoteUnreachable
from rangefs.remote.breaker import Admission, HostBreaker
from rangefs.remote.diagnosis import explain
from rangefs.remote.headers import parse_digits
from rangefs.remote.headpath import HeadConnections, authorized

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]

MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# A remembered redirect target answering one of these has expired: start again from the configured URL.
_EXPIRED_TARGET = frozenset({401, 403, 404, 410})
# No connection could be made: what trips the HostBreaker (ConnectError covers refused and DNS failures).
_CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout)
# An unread body at most this long is read to its end rather than discarding its connection (an error page,
# a redirect's body): cheaper than a new connection on any path with a round trip of more than ~1 ms.
_DRAIN_LIMIT = 64 * 1024
# httpcore trace events (named after its loggers) that are only sent over an established connection.
_CONNECTED_EVENTS = ("http11.", "http2.")
# Why a request of an offline Sender fails.
OFFLINE_CAUSE = "not in the cache, and --offline sends no request"


@dataclass
class Attempt:
    """What one attempt of an operation learnt about the hosts it talked to."""

    # Origin a request is connecting to: set before sending, cleared once connected or failed. Still set
    # after a cancellation while connecting, so the owner of a deadline can tell the breaker.
    connecting: str | None = None
    # trio.current_time() when that connecting began.
    connecting_since: float = 0.0
    # The attempt failed because a host is known down (refused by, or just tripped, its breaker).
    host_down: bool = False
    # Origin of the last request sent, and whether its answer's headers arrived (for a deadline's message).
    host: str | None = None
    answered: bool = False


class Sender:
    """Sends requests over ``client`` (which must not follow redirects itself) through ``breaker``; an
    ``offline`` Sender sends nothing and fails every request at once."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        breaker: HostBreaker,
        *,
        offline: bool = False,
        heads: HeadConnections | None = None,
    ) -> None:
        self._client = client
        self.breaker = breaker
        self.offline = offline
        # Where lighter HEADs go instead of ``client`` (see headpath.py), if anywhere.
        self.heads = heads
        # Configured URL -> where it last redirected to, while that keeps answering.
        self._redirected: dict[str, httpx.URL] = {}

    def __repr__(self) -> str:
        return f"<Sender {len(self._redirected)} redirects remembered {self.breaker!r} {self.heads!r}>"

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        configured: Headers,
        attempt: Attempt,
        extra: dict[str, str] | None = None,
        *,
        lighter: bool = False,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request, following redirects; configured headers go to the configured origin only. A
        ``lighter`` HEAD goes through ``heads`` where there are some."""
        origin = httpx.URL(url)
        remembered = self._redirected.get(url)
        target = remembered or origin
        for _ in range(MAX_REDIRECTS + 1):
            headers = httpx.Headers(extra or {})
            if _same_origin(target, origin):
                for name, value in configured:
                    headers[name] = value
            request = self._client.build_request(method, target, headers=headers)
            response = await self._send(url, request, attempt, lighter=lighter)
            location = response.headers.get("location")
            if remembered is not None and response.status_code in _EXPIRED_TARGET:
                await finish(response)
                log.info("redirect target of %s answered %d; resolving %s again", url, response.status_code, url)
                # Concurrent requests can all find the same expired target: whichever comes first forgets it.
                self._redirected.pop(url, None)
                remembered, target = None, origin
                continue
            if response.status_code not in _REDIRECTS or location is None:
                if target != origin and response.status_code < 300:
                    self._redirected[url] = target
                try:
                    yield response
                finally:
                    await finish(response)
                return
            await finish(response)
            target = target.join(location)
            if method == "GET" and response.status_code == 303:
                raise InvalidResponse(url, "redirected with 303 See Other, which does not point to the file itself")
        raise InvalidResponse(url, f"more than {MAX_REDIRECTS} redirects")

    async def _send(self, url: str, request: httpx.Request, attempt: Attempt, *, lighter: bool) -> httpx.Response:
        """Send one request (no redirects) through the breaker of the host it goes to."""
        if self.offline:
            attempt.host_down = True  # nothing to retry: no attempt will ever be sent
            raise RemoteUnreachable(url, OFFLINE_CAUSE)
        host = origin_of(request.url)
        admission = self.breaker.admit(host)
        if admission is Admission.REFUSED:
            attempt.host_down = True
            raise RemoteUnreachable(url, self.breaker.refusal(host))
        attempt.connecting, attempt.connecting_since = host, trio.current_time()
        attempt.host, attempt.answered = host, False

        async def trace(event: str, info: Mapping[str, object]) -> None:
            if attempt.connecting == host and event.startswith(_CONNECTED_EVENTS):
                self._connected(attempt)

        request.extensions["trace"] = trace
        try:
            if lighter and self.heads is not None and request.method == "HEAD":
                response = await self._send_head(self.heads, request, attempt)
            else:
                response = await self._client.send(request, stream=True)
        except _CONNECT_FAILURES as error:
            attempt.connecting, attempt.host_down = None, True
            self.breaker.failed(host, self.describe(error, host))
            raise
        except Exception:
            self._connected(attempt)  # failed after connecting (read timeout, reset, ...): the host is up
            raise
        except BaseException:
            # Cancelled. If still connecting, ``attempt.connecting`` stays set for the owner of the deadline.
            self.breaker.abandoned(host, admission)
            raise
        self._connected(attempt)
        attempt.answered = True
        return response

    async def _send_head(self, heads: HeadConnections, request: httpx.Request, attempt: Attempt) -> httpx.Response:
        """What httpx's client does around sending (auth, storing cookies), with the lighter path in between."""
        response = await heads.send(authorized(self._client.auth, request), lambda: self._connected(attempt))
        if "set-cookie" in response.headers:
            self._client.cookies.extract_cookies(response)
        return response

    def describe(self, error: Exception, host: str) -> str:
        """What ``error``, raised talking to origin ``host``, means and what to do about it."""
        return explain(error, host, self._client.timeout)

    def _connected(self, attempt: Attempt) -> None:
        if attempt.connecting is not None:
            self.breaker.reached(attempt.connecting)
            attempt.connecting = None


async def finish(response: httpx.Response) -> None:
    """Close a response, first reading a small unread body to its end so its connection goes back to the pool.

    A HEAD answer has no body, but httpcore keeps its connection only once h11 has seen the message end: 0.1
    closed the probe's connection this way, and every first read after a probe paid a new handshake (one
    round trip, two over TLS) and a cold congestion window."""
    try:
        length = parse_digits(response.headers.get("content-length"))
        small = response.request.method == "HEAD" or (length is not None and length <= _DRAIN_LIMIT)
        if small and not response.is_stream_consumed:
            async with aclosing(_generator(response)) as body:
                async for _ in body:
                    pass
    except httpx.HTTPError:
        pass  # the connection is lost anyway
    finally:
        await response.aclose()


def origin_of(url: httpx.URL) -> str:
    # The port made explicit, so http://h/ and http://h:80/ are one host for limits and the breaker.
    port = url.port or {"http": 80, "https": 443}.get(url.scheme, 0)
    return f"{url.scheme}://{url.host}:{port}"


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _generator(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """httpx types the raw body as an AsyncIterator; it is an async generator, which aclosing needs."""
    return cast("AsyncGenerator[bytes, None]", response.aiter_raw())
