"""Ways an origin can misbehave, as fault hooks for tests/origin.py (``origin.faults[path] = fault``).

A fault is called for each request of its path; it answers itself and returns True, or returns False to
let the origin answer normally. ``times`` limits a transient fault to the first N requests it sees.
"""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import time
from collections.abc import Callable

from tests.origin import OriginHandler, ServedFile, _parse_range

Fault = Callable[[OriginHandler, "ServedFile | None"], bool]


def transient(fault: Fault, times: int, methods: tuple[str, ...] = ("GET",)) -> Fault:
    """Apply ``fault`` to the first ``times`` requests with one of ``methods``, then behave."""
    remaining = [times]
    lock = threading.Lock()

    def maybe(handler: OriginHandler, served: ServedFile | None) -> bool:
        if handler.command not in methods:
            return False
        with lock:
            if remaining[0] <= 0:
                return False
            remaining[0] -= 1
        return fault(handler, served)

    return maybe


def only(methods: tuple[str, ...], fault: Fault) -> Fault:
    return lambda handler, served: handler.command in methods and fault(handler, served)


def _range_of(handler: OriginHandler, served: ServedFile) -> tuple[int, int]:
    parsed = _parse_range(handler.headers.get("Range", ""), len(served.data))
    return parsed if parsed else (0, len(served.data))


def _start_206(handler: OriginHandler, served: ServedFile, start: int, stop: int, extra: dict[str, str]) -> None:
    handler.record.status = 206
    handler.send_response(206)
    for name, value in {
        "Content-Range": f"bytes {start}-{stop - 1}/{len(served.data)}",
        "Content-Length": str(stop - start),
        "ETag": served.etag or "",
        **extra,
    }.items():
        handler.send_header(name, value)
    handler.end_headers()


def reset_mid_body(handler: OriginHandler, served: ServedFile | None) -> bool:
    """Send half the body, then a TCP reset."""
    assert served is not None
    start, stop = _range_of(handler, served)
    _start_206(handler, served, start, stop, {})
    handler.wfile.write(served.data[start : start + (stop - start) // 2])
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()
    handler.close_connection = True
    return True


def short_body(handler: OriginHandler, served: ServedFile | None) -> bool:
    """Promise the whole range, send a third of it, close cleanly."""
    assert served is not None
    start, stop = _range_of(handler, served)
    _start_206(handler, served, start, stop, {})
    handler.wfile.write(served.data[start : start + (stop - start) // 3])
    handler.close_connection = True
    return True


def wrong_content_range(handler: OriginHandler, served: ServedFile | None) -> bool:
    """Answer with the bytes one position later than asked, labelled as such."""
    assert served is not None
    start, stop = _range_of(handler, served)
    start, stop = start + 1, min(stop + 1, len(served.data))
    _start_206(handler, served, start, stop, {})
    handler.wfile.write(served.data[start:stop])
    return True


def whole_file(handler: OriginHandler, served: ServedFile | None) -> bool:
    """Ignore Range: 200 with the whole file, no Accept-Ranges."""
    assert served is not None
    handler.send_file(served, send_body=handler.command != "HEAD", honour_range=False)
    return True


def gzip_range(handler: OriginHandler, served: ServedFile | None) -> bool:
    """Compress the range although the client asked for identity."""
    assert served is not None
    start, stop = _range_of(handler, served)
    body = gzip.compress(served.data[start:stop])
    handler.record.status = 206
    handler.send_response(206)
    handler.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(served.data)}")
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
    return True


def status(code: int, headers: dict[str, str] | None = None) -> Fault:
    def answer(handler: OriginHandler, served: ServedFile | None) -> bool:
        handler.send_simple(code, b"", headers or {})
        return True

    return answer


def slow_first_byte(seconds: float) -> Fault:
    def answer(handler: OriginHandler, served: ServedFile | None) -> bool:
        time.sleep(seconds)
        return False

    return answer


def redirect(location: str, code: int = 302) -> Fault:
    return status(code, {"Location": location})


def head_without_length(handler: OriginHandler, served: ServedFile | None) -> bool:
    """HEAD answered 200 but without Content-Length (chunked-style)."""
    if handler.command != "HEAD":
        return False
    handler.record.status = 200
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    return True


def stall_after(count: int, gate: threading.Event, timeout: float = 30.0) -> Fault:
    """A correct 206 whose body stops after ``count`` bytes until ``gate`` is set (at most ``timeout`` s), then
    goes on: what a reader sees of a response still streaming in, without timing anything."""

    def answer(handler: OriginHandler, served: ServedFile | None) -> bool:
        assert served is not None
        start, stop = _range_of(handler, served)
        _start_206(handler, served, start, stop, {})
        for lo, hi in ((start, min(stop, start + count)), (min(stop, start + count), stop)):
            if lo == start + count:
                handler.wfile.flush()
                gate.wait(timeout)
            handler.wfile.write(served.data[lo:hi])
            handler.record.bytes_sent += hi - lo
        return True

    return answer
