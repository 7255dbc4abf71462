"""HTTP client for probes and validated range fetches.

Redirects are followed here rather than by httpx so that headers configured for an entry (credentials) are
only ever sent to the origin the user wrote down. Every transport failure is translated to a RemoteError in
exactly one place, ``_translated``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import httpcore
import httpx

from rangefs.errors import InvalidResponse, RemoteError, RemoteStatusError, RemoteUnreachable
from rangefs.ranges import ByteRange
from rangefs.remote.limits import HostLimits
from rangefs.remote.metadata import RemoteMetadata
from rangefs.remote.validate import check_range_response, parse_content_range, parse_unsatisfied_range

log = logging.getLogger(__name__)

MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# httpcore reads sockets 64 KiB at a time; each read costs a trip through h11 and the trio scheduler.
# 1 MiB reads halve the CPU per MiB (STACK.md: 3.8 -> 1.5 CPU-s/GiB), the first limit on cold reads.
_SOCKET_READ_SIZE = 1024 * 1024


@dataclass
class ClientStatistics:
    requests: int = 0
    bytes_fetched: int = 0
    errors: int = 0


class RemoteClient:
    """Probes remote files and fetches validated byte ranges of them."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        connections_per_host: int = 8,
        user_agent: str = "rangefs",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = _SOCKET_READ_SIZE
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=None),
            # The HostLimits below bound connections; httpx's pool only keeps them alive.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=4 * connections_per_host),
            follow_redirects=False,
            headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
            transport=transport,
            trust_env=True,
        )
        self.limits = HostLimits(connections_per_host)
        self.stats = ClientStatistics()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> RemoteClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def statistics(self) -> ClientStatistics:
        return self.stats

    async def probe(self, url: str, headers: tuple[tuple[str, str], ...] = ()) -> RemoteMetadata:
        """Size and validator of ``url``: HEAD first, a one-byte ranged GET when HEAD says too little."""
        with self._translated(url):
            async with self._request("HEAD", url, headers) as response:
                if response.status_code == 200 and _content_length(response) is not None:
                    return _metadata_from(url, response, _content_length(response) or 0)
                if response.status_code not in (200, 400, 403, 405, 501):
                    raise RemoteStatusError(url, response.status_code)
            return await self._probe_with_get(url, headers)

    async def _probe_with_get(self, url: str, headers: tuple[tuple[str, str], ...]) -> RemoteMetadata:
        async with self._request("GET", url, headers, {"Range": "bytes=0-0"}) as response:
            status = response.status_code
            if status == 206:
                try:
                    _, total = parse_content_range(response.headers.get("content-range", ""))
                except ValueError as error:
                    raise InvalidResponse(url, f"probe: {error}") from None
                if total is None:
                    raise InvalidResponse(url, "probe: server does not say the file size (Content-Range */*)")
                return _metadata_from(url, response, total)
            if status == 416:
                total = parse_unsatisfied_range(response.headers.get("content-range", ""))
                if total == 0:
                    return _metadata_from(url, response, 0)
            if status == 200 and _content_length(response) is not None:
                metadata = _metadata_from(url, response, _content_length(response) or 0)
                return RemoteMetadata(metadata.url, metadata.size, metadata.etag, metadata.last_modified, False)
            if status == 200:
                raise InvalidResponse(url, "probe: server sends neither Content-Length nor range support")
            raise RemoteStatusError(url, status)

    async def fetch(
        self,
        metadata: RemoteMetadata,
        wanted: ByteRange,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        demand: bool = True,
    ) -> bytearray:
        """Exactly the ``wanted`` bytes of the version ``metadata`` describes, or a RemoteError.

        Demand fetches (a reader waits) and prefetches use separate connection limits per host."""
        origin = httpx.URL(metadata.url)
        async with self.limits.limiter(f"{origin.scheme}://{origin.netloc.decode()}", demand=demand):
            return await self._fetch(metadata, wanted, headers)

    async def _fetch(
        self, metadata: RemoteMetadata, wanted: ByteRange, headers: tuple[tuple[str, str], ...]
    ) -> bytearray:
        url = metadata.url
        extra = {"Range": wanted.header_value()}
        if metadata.if_range:
            extra["If-Range"] = metadata.if_range
        self.stats.requests += 1
        with self._translated(url):
            async with self._request("GET", url, headers, extra) as response:
                check_range_response(
                    url,
                    response.status_code,
                    response.headers,
                    wanted=wanted,
                    file_size=metadata.size,
                    sent_if_range="If-Range" in extra,
                )
                body = bytearray(wanted.length)
                view = memoryview(body)
                received = 0
                async for chunk in response.aiter_raw():
                    end = received + len(chunk)
                    if end > wanted.length:
                        raise InvalidResponse(url, f"body longer than the {wanted.length} bytes asked for")
                    view[received:end] = chunk
                    received = end
                if received != wanted.length:
                    raise InvalidResponse(url, f"body cut short: {received} of {wanted.length} bytes")
        self.stats.bytes_fetched += received
        return body

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        url: str,
        configured: tuple[tuple[str, str], ...],
        extra: dict[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send a request, following redirects; configured headers go to the configured origin only."""
        origin = httpx.URL(url)
        target = origin
        for _ in range(MAX_REDIRECTS + 1):
            headers = httpx.Headers(extra or {})
            if _same_origin(target, origin):
                for name, value in configured:
                    headers[name] = value
            request = self._client.build_request(method, target, headers=headers)
            response = await self._client.send(request, stream=True)
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or location is None:
                try:
                    yield response
                finally:
                    await response.aclose()
                return
            await response.aclose()
            target = target.join(location)
            if method == "GET" and response.status_code == 303:
                raise InvalidResponse(url, "redirected with 303 See Other, which does not point to the file itself")
        raise InvalidResponse(url, f"more than {MAX_REDIRECTS} redirects")

    @contextmanager
    def _translated(self, url: str) -> Iterator[None]:
        try:
            yield
        except RemoteError:
            self.stats.errors += 1
            raise
        except httpx.TimeoutException as error:
            self.stats.errors += 1
            raise RemoteUnreachable(url, f"timed out ({type(error).__name__})") from None
        except httpx.RemoteProtocolError as error:
            self.stats.errors += 1
            raise InvalidResponse(url, f"protocol error: {error}") from None
        except httpx.HTTPError as error:
            self.stats.errors += 1
            raise RemoteUnreachable(url, f"{type(error).__name__}: {error or 'connection failed'}") from None


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _metadata_from(url: str, response: httpx.Response, size: int) -> RemoteMetadata:
    accept_ranges = response.headers.get("accept-ranges", "").lower()
    return RemoteMetadata(
        url=url,
        size=size,
        etag=response.headers.get("etag"),
        last_modified=response.headers.get("last-modified"),
        accepts_ranges=response.status_code == 206 or "bytes" in accept_ranges,
    )
