"""The wire between the daemon and its fetch worker processes: frames over one Unix stream socket per worker.

A frame is a kind, a job number and a payload. The daemon sends a job (``START``: what to fetch) or takes one
back (``CANCEL``); a worker answers each job with its body bytes as they arrive (``DATA``), then ``DONE`` or
``FAIL`` (the RemoteError, encoded as plain fields). Control payloads are pickled: both ends are this program,
and the socket pair is private to the two processes. Body bytes go as they are, one frame per chunk read from
the server, so the daemon only copies them out of its socket: the HTTP parsing and TLS stay in the worker.
"""

from __future__ import annotations

import enum
import pickle
import socket
import struct
from dataclasses import dataclass
from typing import TypeVar

import trio

from rangefs.config import MountSettings
from rangefs.errors import (
    CredentialError,
    InvalidResponse,
    RangesUnsupported,
    RemoteChanged,
    RemoteError,
    RemoteStatusError,
    RemoteUnreachable,
)
from rangefs.ranges import ByteRange
from rangefs.remote.metadata import RemoteMetadata

T = TypeVar("T")

_HEADER = struct.Struct("<BII")  # kind, job, payload length
# Bound on one frame's payload: a worker never sends more than a socket read's worth, a job's spec is small.
MAX_PAYLOAD = 16 * 1024 * 1024
# Seconds a cancelled send may take to finish a frame it began (the peer reads all the time; see FrameWriter).
FINISH_TIMEOUT = 10.0


class Kind(enum.IntEnum):
    SETUP = 0  # daemon -> worker, job 0, first: payload the pickled MountSettings
    READY = 1  # worker -> daemon, job 0: the worker's client is built
    START = 2  # daemon -> worker: payload a pickled Job
    CANCEL = 3  # daemon -> worker: stop the job, say nothing more of it
    DATA = 4  # worker -> daemon: the next bytes of the job's body
    DONE = 5  # worker -> daemon: the whole range arrived
    FAIL = 6  # worker -> daemon: payload a pickled encoded error and what the attempt learnt
    PROGRESS = 7  # worker -> daemon: payload a pickled Progress, what the job's attempt learnt so far


@dataclass(frozen=True)
class Job:
    """One attempt at a range: the request goes to ``url`` with ``headers`` (the daemon holds the credentials
    and their renewal), and its answer is checked against ``metadata``, the version the reader pinned."""

    metadata: RemoteMetadata
    wanted: ByteRange
    url: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Progress:
    """What a running job's attempt learnt so far (sender.Attempt's fields): the daemon's deadline may end it
    any time, and its message and the host breaker go by how far the attempt got."""

    connecting: str | None
    connecting_for: float  # seconds, as of sending: the two processes' trio clocks differ
    host: str | None
    answered: bool


@dataclass(frozen=True)
class Failure:
    """Why a job failed, as fields every RemoteError can be rebuilt from, and what its attempt learnt."""

    kind: str
    url: str
    cause: str
    status: int = 0
    retry_after: float | None = None
    transient: bool = False
    host_down: bool = False
    host: str | None = None
    answered: bool = False


_ERRORS: dict[str, type[RemoteError]] = {
    cls.__name__: cls
    for cls in (
        RemoteError,
        RemoteUnreachable,
        RemoteStatusError,
        InvalidResponse,
        RangesUnsupported,
        RemoteChanged,
        CredentialError,
    )
}


def encode_failure(error: RemoteError, *, host_down: bool, host: str | None, answered: bool) -> Failure:
    kind = type(error).__name__ if type(error).__name__ in _ERRORS else "RemoteError"
    return Failure(
        kind=kind,
        url=error.url,
        cause=error.cause,
        status=getattr(error, "status", 0),
        retry_after=getattr(error, "retry_after", None),
        transient=getattr(error, "transient", False),
        host_down=host_down,
        host=host,
        answered=answered,
    )


def decode_failure(failure: Failure) -> RemoteError:
    """The RemoteError a worker's job failed with, of the same class and fields."""
    cls = _ERRORS.get(failure.kind, RemoteError)
    if issubclass(cls, RemoteStatusError):
        return cls(failure.url, failure.status, failure.cause, failure.retry_after)
    if issubclass(cls, InvalidResponse):
        return cls(failure.url, failure.cause, transient=failure.transient)
    return cls(failure.url, failure.cause)


def pickled(value: Job | Failure | Progress | MountSettings) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def unpickled(payload: bytes | bytearray, expected: type[T]) -> T:
    """A control payload of the ``expected`` type (pickled by our own process, on its private socket pair);
    anything else is the peer talking nonsense (TypeError), which ends that worker, never the daemon."""
    value = pickle.loads(payload)
    if not isinstance(value, expected):
        raise TypeError(f"a {type(value).__name__} where a {expected.__name__} was due")
    return value


class FrameReader:
    """Reads whole frames from a trio socket; a payload is read straight into its own buffer."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock

    async def next(self) -> tuple[Kind, int, bytearray] | None:
        """The next frame, or None at the end of the stream (the other process closed it or ended)."""
        header = await self._exactly(_HEADER.size)
        if header is None:
            return None
        kind, job, length = _HEADER.unpack(header)
        if length > MAX_PAYLOAD:
            raise ValueError(f"frame of {length} bytes")
        payload = await self._exactly(length) if length else bytearray()
        if payload is None:
            return None
        return Kind(kind), job, payload

    async def _exactly(self, length: int) -> bytearray | None:
        buffer = bytearray(length)
        view = memoryview(buffer)
        filled = 0
        while filled < length:
            count = await self._sock.recv_into(view[filled:])
            if count == 0:
                return None
            filled += count
        return buffer


class FrameWriter:
    """Writes frames to a trio socket from any number of tasks, one whole frame at a time; a frame's payload
    may be given in pieces, which are sent as they are (no joining copy).

    A send cancelled once part of its frame is in the socket still sends the rest (the peer would otherwise
    read the next frame's bytes as this one's payload), for at most FINISH_TIMEOUT seconds; a peer that takes
    no bytes for that long gets the end of the stream instead (``shutdown``), never a torn frame."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._lock = trio.Lock()

    async def send(self, kind: Kind, job: int, *pieces: bytes | memoryview) -> None:
        length = sum(len(piece) for piece in pieces)
        buffers = [memoryview(_HEADER.pack(kind, job, length)), *(memoryview(piece) for piece in pieces if piece)]
        async with self._lock:
            # Cancelled here, nothing of the frame went out (trio's sendmsg sends or raises Cancelled).
            await self._send_some(buffers)
            try:
                while buffers:
                    await self._send_some(buffers)
            except trio.Cancelled:
                with trio.CancelScope(shield=True), trio.move_on_after(FINISH_TIMEOUT):
                    while buffers:
                        await self._send_some(buffers)
                if buffers:
                    self._sock.shutdown(socket.SHUT_RDWR)
                raise

    async def _send_some(self, buffers: list[memoryview]) -> None:
        sent = await self._sock.sendmsg(buffers)
        while buffers and sent >= len(buffers[0]):
            sent -= len(buffers[0])
            buffers.pop(0)
        if sent:
            buffers[0] = buffers[0][sent:]
