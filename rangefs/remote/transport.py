"""The HTTP transport: httpx's own, over connections that read the socket in large pieces.

httpcore reads sockets 64 KiB at a time, and each read costs a trip through h11 and the trio scheduler;
1 MiB reads halve the CPU per MiB (STACK.md: 3.8 -> 1.5 CPU-s/GiB), the first limit on cold reads. The
read size is a property of the streams a network backend hands out (httpcore's documented extension
point), so it applies to this client's connections only, not to every httpcore user in the process.
"""

from __future__ import annotations

import ssl
import time
import typing
import urllib.request
from pathlib import Path

import httpcore
import httpx

from rangefs.remote.tlsstream import TLSStream

# Bytes asked of the socket per read.
SOCKET_READ_SIZE = 1024 * 1024
# Seconds an idle connection's "did the server close it?" answer is reused. httpcore asks it of every pooled
# connection at the start and end of every request (a poll(2) each): with 32 idle connections that was 40 %
# of the daemon's CPU while probing 10,000 URLs. A server closing a connection within this window costs one
# failed attempt on it, which is retried like any other dropped connection.
_READABLE_RECHECK = 0.25


class LargeReadStream(httpcore.AsyncNetworkStream):
    """A connection whose reads ask for at least SOCKET_READ_SIZE bytes (TLS keeps its large reads too)."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        # Reads served, for the test that checks the tuning is in place.
        self.reads = 0
        self._closed_by_peer = False
        self._checked_at = -_READABLE_RECHECK

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.reads += 1
        return await self._stream.read(max(max_bytes, SOCKET_READ_SIZE), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        # Our TLS (tlsstream.py) over the plain connection: a read returns every record a socket read completed.
        return LargeReadStream(await TLSStream.connect(self._stream, ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        if info != "is_readable":
            return self._stream.get_extra_info(info)
        now = time.monotonic()
        if not self._closed_by_peer and now - self._checked_at >= _READABLE_RECHECK:
            # Once readable while idle, it stays so (the server's FIN, or bytes nobody asked for).
            self._closed_by_peer = bool(self._stream.get_extra_info("is_readable"))
            self._checked_at = now
        return self._closed_by_peer


class LargeReadBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend, handing out LargeReadStreams."""

    def __init__(self) -> None:
        self._backend = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return LargeReadStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[typing.Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return LargeReadStream(await self._backend.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """How servers are verified: against the system's CAs (httpx's default), or only a given bundle."""
    if ca_bundle is None:
        return httpx.create_ssl_context()
    return ssl.create_default_context(cafile=str(ca_bundle))


def build_transport(*, verify: ssl.SSLContext, http2: bool, limits: httpx.Limits) -> httpx.AsyncHTTPTransport | None:
    """httpx's transport with a pool over LargeReadBackend, or None (httpx builds its own) when the
    environment names a proxy: httpx honours proxy variables only for transports it builds itself."""
    if any(scheme in ("http", "https", "all") for scheme in urllib.request.getproxies()):
        return None
    transport = httpx.AsyncHTTPTransport(verify=verify, http2=http2, limits=limits)
    # httpx takes no network backend; its pool is rebuilt with the same settings and ours (the one private
    # name this module relies on; tests/test_remote_client.py checks the large reads happen).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=verify,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=http2,
        network_backend=LargeReadBackend(),
    )
    return transport
