"""HEAD requests over h11 on kept-alive trio streams: the probe's path, about a third of httpx's CPU per request.

A listing of 10,000 URLs is 10,000 HEADs, and through httpx each cost ~0.9 ms of CPU (its client and
transport layers, httpcore's pool and connection state, then h11) on the daemon's one thread. A HEAD needs
none of that machinery: no body, no streaming, no pool policy beyond "an idle connection to this origin".
``HeadConnections`` writes the request httpx built (default headers, cookies and auth already applied) with
h11 and reads the answer's head with h11, so the bytes on the wire and the parser of every untrusted header
are those of the httpx path; the answer comes back as an ``httpx.Response`` with an empty body, and failures
as the httpx exceptions the one translation point (``client._translated``) and the diagnosis know.

Connections: at most ``max_idle`` idle ones per origin are kept, for ``keepalive_expiry`` seconds. Instead of
polling each idle connection for a server close before reuse (what made httpcore's pool expensive), a HEAD on
a reused connection that the server closed before answering a byte is sent again, once, on a new connection:
HEAD is idempotent, and that is how the close shows. Only plain HTTP/1.1 and TLS with HTTP/1.1 (no proxy, no
HTTP/2: the client uses httpx's path for those).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import httpx
import trio

# Bytes asked of the socket per read: an answer's head is usually well under 1 KiB.
_READ_SIZE = 64 * 1024
# h11's bound on an answer's head; a server sending more is answered with a protocol error, not memory.
_MAX_HEAD_SIZE = 64 * 1024
_Origin = tuple[str, str, int]
# httpcore's words for it, which the logs already show.
_DISCONNECTED = "Server disconnected without sending a response."


def authorized(auth: httpx.Auth | None, request: httpx.Request) -> httpx.Request:
    """``request`` as ``auth`` sends it, for an auth whose flow is one step (netrc, Basic): what httpx's
    client would do before sending it."""
    if auth is None:
        return request
    flow = auth.sync_auth_flow(request)
    try:
        return next(flow)
    finally:
        flow.close()


class _Stale(Exception):
    """A reused connection ended before any byte of the answer: the server closed it while it was idle."""


@dataclass(eq=False)
class _Connection:
    stream: trio.abc.Stream
    protocol: h11.Connection = field(
        default_factory=lambda: h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_SIZE)
    )
    idle_since: float = 0.0


class HeadConnections:
    """Sends HEAD requests, keeping their connections alive per origin (``scheme``, ``host``, ``port``).

    Invariants: a connection is either in ``_idle`` (its h11 state ready for a new request) or owned by exactly
    one request in ``send``, which closes it on any failure or cancellation; ``_idle`` lists per origin are
    oldest first, at most ``max_idle`` long."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        timeout: httpx.Timeout,
        max_idle: int,
        keepalive_expiry: float,
    ) -> None:
        self._ssl_context = ssl_context
        self._timeout = timeout
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[_Origin, list[_Connection]] = {}
        # Connections made, and HEADs sent again on a new one after a reused one turned out closed.
        self.connections_made = 0
        self.resent = 0

    def __repr__(self) -> str:
        idle = sum(len(connections) for connections in self._idle.values())
        return f"<HeadConnections {idle} idle, {self.connections_made} made, {self.resent} resent>"

    async def aclose(self) -> None:
        idle = [connection for connections in self._idle.values() for connection in connections]
        self._idle.clear()
        for connection in idle:
            await trio.aclose_forcefully(connection.stream)

    async def send(self, request: httpx.Request, connected: Callable[[], None]) -> httpx.Response:
        """The answer to ``request`` (a HEAD), its head only; ``connected`` is called once a connection to the
        origin is established (new or reused) and the request is about to be written."""
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        connection = self._take_idle(origin)
        if connection is not None:
            connected()
            try:
                return await self._exchange(origin, connection, request, reused=True)
            except _Stale:
                self.resent += 1
        connection = await self._connect(origin)
        connected()
        try:
            return await self._exchange(origin, connection, request, reused=False)
        except _Stale:
            raise httpx.RemoteProtocolError(_DISCONNECTED, request=request) from None

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        connections = self._idle.get(origin)
        now = trio.current_time()
        while connections:
            connection = connections.pop()  # the most recently used: the least likely to be closed by now
            if now - connection.idle_since < self._keepalive_expiry:
                return connection
            # Expired, and so is every older one: drop them all (closing a socket needs no await).
            for expired in (connection, *connections):
                _close_now(expired.stream)
            connections.clear()
        return None

    def _keep(self, origin: _Origin, connection: _Connection) -> None:
        connection.idle_since = trio.current_time()
        connections = self._idle.setdefault(origin, [])
        connections.append(connection)
        if len(connections) > self._max_idle:
            _close_now(connections.pop(0).stream)

    async def _connect(self, origin: _Origin) -> _Connection:
        scheme, host, port = origin
        self.connections_made += 1
        try:
            with trio.fail_after(_seconds(self._timeout.connect)):
                stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
                if scheme == "https":
                    tls = trio.SSLStream(stream, self._ssl_context, server_hostname=host, https_compatible=True)
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(stream)
                        raise
                    stream = tls
        except trio.TooSlowError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within the connect timeout") from None
        except (OSError, trio.BrokenResourceError) as error:
            raise httpx.ConnectError(str(error) or type(error).__name__) from error
        return _Connection(stream)

    async def _exchange(
        self, origin: _Origin, connection: _Connection, request: httpx.Request, *, reused: bool
    ) -> httpx.Response:
        """Write the request and read its answer's head; the connection is kept or closed, never leaked. On a
        ``reused`` connection, an end before any byte of the answer raises _Stale."""
        try:
            response = await self._request(connection, request, reused=reused)
        except BaseException:
            await trio.aclose_forcefully(connection.stream)
            raise
        protocol = connection.protocol
        if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()
            self._keep(origin, connection)
        else:  # Connection: close, HTTP/1.0: the server ends it
            await trio.aclose_forcefully(connection.stream)
        return response

    async def _request(self, connection: _Connection, request: httpx.Request, *, reused: bool) -> httpx.Response:
        protocol, stream = connection.protocol, connection.stream
        try:
            head = h11.Request(method=b"HEAD", target=request.url.raw_path, headers=request.headers.raw)
            data = protocol.send(head) + (protocol.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as error:  # a header value h11 refuses: our request cannot be sent
            raise httpx.LocalProtocolError(str(error), request=request) from None
        try:
            with trio.fail_after(_seconds(self._timeout.write)):
                await stream.send_all(data)
        except trio.TooSlowError:
            raise httpx.WriteTimeout("the request was not written within the write timeout", request=request) from None
        except (OSError, trio.BrokenResourceError) as error:
            if reused:
                raise _Stale from error
            raise httpx.WriteError(str(error) or type(error).__name__, request=request) from error
        answer: h11.Response | None = None
        received = False
        while True:
            try:
                event = protocol.next_event()
            except h11.RemoteProtocolError as error:
                raise httpx.RemoteProtocolError(str(error), request=request) from None
            if event is h11.NEED_DATA:
                chunk = await self._receive(stream, request, stale_possible=reused and not received)
                if not chunk and reused and not received:
                    raise _Stale
                received = received or bool(chunk)
                protocol.receive_data(chunk)
            elif isinstance(event, h11.Response):
                answer = event
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError(_DISCONNECTED, request=request)
            # InformationalResponse (1xx) and Data (none for a HEAD) are skipped.
        assert answer is not None  # h11 ends a message only after its head
        return httpx.Response(
            answer.status_code,
            headers=answer.headers.raw_items(),
            content=b"",
            request=request,
            extensions={"http_version": b"HTTP/" + answer.http_version, "reason_phrase": answer.reason},
        )

    async def _receive(self, stream: trio.abc.Stream, request: httpx.Request, *, stale_possible: bool) -> bytes:
        try:
            with trio.fail_after(_seconds(self._timeout.read)):
                return bytes(await stream.receive_some(_READ_SIZE))
        except trio.TooSlowError:
            raise httpx.ReadTimeout("the server sent nothing within the read timeout", request=request) from None
        except (OSError, trio.BrokenResourceError) as error:
            if stale_possible:
                raise _Stale from error
            raise httpx.ReadError(str(error) or type(error).__name__, request=request) from error


def _seconds(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout


def _close_now(stream: trio.abc.Stream) -> None:
    """Close a stream without waiting: an idle connection has nothing to flush (TLS's close_notify is optional
    under https_compatible)."""
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(transport, trio.SocketStream):
        transport.socket.close()
