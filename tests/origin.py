"""An HTTP origin on loopback for tests and the demo: ranges, validators, a request log and fault hooks.

Content is held in memory; each file's bytes are a known function of the offset (seeded pseudo-random), so
any (offset, length) can be checked. Tests swap a file's content to emulate a change on the server, and
install a ``fault`` callable per path to make the server misbehave in a chosen way. With ``tls`` (a server
ssl context, see tests/tls.py) it serves HTTPS.
"""

from __future__ import annotations

import hashlib
import random
import re
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_WRITE_SLICE = 1024 * 1024


def pattern_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic content: the same (size, seed) always gives the same bytes."""
    piece = 64 * 1024 * 1024  # randbytes() is limited to 2**31 bits per call
    return b"".join(
        random.Random(seed * 1_000_003 + number).randbytes(min(piece, size - start))
        for number, start in enumerate(range(0, size, piece))
    )


@dataclass
class ServedFile:
    data: bytes
    etag: str | None
    last_modified: str | None


@dataclass
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    range: str | None = None
    bytes_sent: int = 0
    time: float = field(default_factory=time.monotonic)


# A fault gets the handler and the file (None for unknown paths); it returns True when it answered itself.
Fault = Callable[["OriginHandler", "ServedFile | None"], bool]


@dataclass
class Origin:
    host: str = "127.0.0.1"
    files: dict[str, ServedFile] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    in_flight: int = 0
    max_in_flight: int = 0  # most requests being answered at the same moment
    connection_rate: int | None = None  # bytes per second per connection (a throttling origin)
    tls: ssl.SSLContext | None = None  # serve HTTPS with this server context

    def add(self, path: str, data: bytes, *, etag: bool = True, last_modified: bool = True) -> str:
        """Serve ``data`` at ``path`` (replacing what was there, with a new validator); returns the URL."""
        digest = hashlib.sha256(data).hexdigest()[:20]
        with self.lock:
            version = len(self.requests)
            self.files[path] = ServedFile(
                data,
                f'"{digest}-{version}"' if etag else None,
                formatdate(1_700_000_000 + version, usegmt=True) if last_modified else None,
            )
        return self.url(path)

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}{path}"

    def requests_for(self, path: str, method: str = "GET") -> list[RequestRecord]:
        with self.lock:
            return [record for record in self.requests if record.path == path and record.method == method]

    def bytes_sent_for(self, path: str) -> int:
        return sum(record.bytes_sent for record in self.requests_for(path))

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()

    @contextmanager
    def running(self) -> Iterator[Origin]:
        server = _Server((self.host, 0), OriginHandler)
        server.origin = self
        self.port = server.server_address[1]
        if self.tls is not None:
            # The handshake happens in the handler's thread, on its first read: a client that rejects the
            # certificate fails its own connection, not the accept loop.
            server.socket = self.tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    origin: Origin

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return  # a client that rejected our certificate, or went away: expected in tests, nothing to print
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request log is the record; stderr noise would only hide test output

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, *, send_body: bool) -> None:
        origin = self.server.origin
        record = RequestRecord(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        record.range = self.headers.get("Range")
        self.record = record
        with origin.lock:
            origin.requests.append(record)
            served = origin.files.get(self.path)
            fault = origin.faults.get(self.path) or origin.faults.get("*")
            origin.in_flight += 1
            origin.max_in_flight = max(origin.max_in_flight, origin.in_flight)
        try:
            if fault is not None and fault(self, served):
                return
            if served is None:
                self.send_simple(404, b"not found\n")
                return
            self.send_file(served, send_body=send_body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (a cancelled fetch): nothing to answer
        finally:
            with origin.lock:
                origin.in_flight -= 1

    def send_simple(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.record.status = status
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self.record.bytes_sent += len(body)

    def send_file(self, served: ServedFile, *, send_body: bool, honour_range: bool = True) -> None:
        data = served.data
        size = len(data)
        start, stop, status = 0, size, 200
        requested = self.headers.get("Range") if honour_range else None
        if_range = self.headers.get("If-Range")
        if served.etag is not None and self.headers.get("If-None-Match") == served.etag:
            # RFC 9110 13.2.2: evaluated before Range; a caching proxy revalidating a stored slice gets 304.
            self.record.status = 304
            self.send_response(304)
            self.send_header("ETag", served.etag)
            self.end_headers()
            return
        if requested and if_range is not None and if_range not in (served.etag, served.last_modified):
            requested = None  # RFC 9110 13.1.5: a failed If-Range means "send the whole current file"
        if requested:
            parsed = _parse_range(requested, size)
            if parsed is None:
                self.send_simple(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            start, stop, status = parsed[0], parsed[1], 206
        self.record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if honour_range:
            self.send_header("Accept-Ranges", "bytes")
        if served.etag:
            self.send_header("ETag", served.etag)
        if served.last_modified:
            self.send_header("Last-Modified", served.last_modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        if send_body:
            self.write_body(memoryview(data)[start:stop])

    def write_body(self, body: memoryview) -> None:
        rate = self.server.origin.connection_rate
        step = _WRITE_SLICE if rate is None else max(4096, rate // 50)  # throttled: 50 writes a second
        started = time.monotonic()
        for offset in range(0, len(body), step):
            piece = body[offset : offset + step]
            self.wfile.write(piece)
            self.record.bytes_sent += len(piece)
            if rate is not None:
                time.sleep(max(0.0, started + (offset + len(piece)) / rate - time.monotonic()))


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    match = _RANGE.match(value.strip())
    if not match or size == 0:
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        if last == "":
            return None
        return max(0, size - int(last)), size
    start = int(first)
    stop = size if last == "" else min(int(last) + 1, size)
    if start >= size or stop <= start:
        return None
    return start, stop
