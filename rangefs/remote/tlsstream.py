"""TLS over a connection, decrypting everything a socket read brought in one pass.

trio's SSLStream (httpcore's TLS) returns one TLS record, at most 16 KiB, per read, and each read is a trip
through its retry loop, httpcore's timeout scope and h11: for a 512 MiB body that is 32,768 trips, which cost
more CPU than the decryption itself. This stream reads the socket in large pieces and returns every record
they completed at once, so a read of a body costs one trip per socket read. The TLS itself is OpenSSL's, as
in trio: an ``SSLObject`` over memory BIOs, from the context that verifies the server (``wrap_bio`` with the
server's name; the handshake fails on a certificate that does not verify). The end of the stream is the end
of the socket or the server's close_notify, whichever comes first (HTTP bodies carry their own length, which
is checked anyway: trio's ``https_compatible``).
"""

from __future__ import annotations

import ssl
import typing

import httpcore
import trio

# Bytes asked of the socket per read.
_SOCKET_READ = 1024 * 1024


class TLSStream(httpcore.AsyncNetworkStream):
    """A client TLS connection over ``raw`` (a plain httpcore stream), after its handshake (``connect``)."""

    def __init__(
        self, raw: httpcore.AsyncNetworkStream, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self._raw = raw
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self._send_lock = trio.Lock()
        self._ended = False

    @classmethod
    async def connect(
        cls,
        raw: httpcore.AsyncNetworkStream,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float | None,
    ) -> TLSStream:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ssl_context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname)
        stream = cls(raw, tls, incoming, outgoing)
        try:
            with trio.fail_after(float("inf") if timeout is None else timeout):
                await stream._handshake()
        except trio.TooSlowError:
            await raw.aclose()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (httpcore.ReadError, httpcore.WriteError) as error:
            # The connection broke before it came up: a connect failure, as trio's SSLStream made it (the host
            # breaker counts those, sender.py), not a read error on a working connection.
            await raw.aclose()
            raise httpcore.ConnectError(str(error)) from error
        except BaseException:
            await raw.aclose()
            raise
        return stream

    async def _handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill(None):
                    raise httpcore.ConnectError("the server closed the connection during the TLS handshake") from None
            except ssl.SSLError as error:
                raise httpcore.ConnectError(str(error)) from error
            else:
                await self._flush()
                return

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        while True:
            pieces: list[bytes] = []
            size = 0
            while size < max_bytes and not self._ended:
                try:
                    piece = self._tls.read(max_bytes - size)
                except ssl.SSLWantReadError:
                    break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    self._ended = True  # close_notify, or the socket ended without one
                    break
                except ssl.SSLError as error:
                    raise httpcore.ReadError(str(error)) from error
                if not piece:
                    self._ended = True
                    break
                pieces.append(piece)
                size += len(piece)
            if self._outgoing.pending:  # a record read may need an answer (a key update)
                await self._flush(timeout)
            if pieces:
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if self._ended:
                return b""
            if not await self._fill(timeout):
                self._incoming.write_eof()

    async def _fill(self, timeout: float | None) -> bool:
        data = await self._raw.read(_SOCKET_READ, timeout)
        if data:
            self._incoming.write(data)
        return bool(data)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._tls.write(buffer)
        except ssl.SSLError as error:
            raise httpcore.WriteError(str(error)) from error
        await self._flush(timeout)

    async def _flush(self, timeout: float | None = None) -> None:
        async with self._send_lock:
            data = self._outgoing.read()
            if data:
                await self._raw.write(data, timeout)

    async def aclose(self) -> None:
        await self._raw.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("TLS within TLS (an HTTPS proxy) is not supported here")

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "ssl_object":
            return self._tls
        if info == "is_readable":
            return self._tls.pending() > 0 or self._incoming.pending > 0 or self._raw.get_extra_info(info)
        return self._raw.get_extra_info(info)
