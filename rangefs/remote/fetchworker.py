"""A fetch worker process: ``python -m rangefs.remote.fetchworker FD``, started by workers.py.

It reads jobs from the socket ``FD`` and runs each as one attempt of RemoteClient.range_body, with a client
built from the daemon's MountSettings, sending the body back as it arrives. It ends when the daemon closes
the socket (or dies: the socket ends then too), cancelling what is under way.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from contextlib import aclosing

import trio

from rangefs.config import MountSettings
from rangefs.errors import InvalidResponse, RemoteError
from rangefs.remote.client import RemoteClient
from rangefs.remote.frames import (
    FrameReader,
    FrameWriter,
    Job,
    Kind,
    Progress,
    encode_failure,
    pickled,
    unpickled,
)
from rangefs.remote.netrc import netrc_auth
from rangefs.remote.sender import Attempt

log = logging.getLogger("rangefs.fetchworker")

# Chunks read from the server but not yet sent to the daemon, per job: the read side waits beyond this.
_QUEUED_CHUNKS = 64
# A frame takes what is queued up to about this many bytes.
_FRAME_TARGET = 1024 * 1024


class _ReportedAttempt(Attempt):
    """An Attempt whose changes wake the task that reports them to the daemon (``changed``)."""

    changed: trio.Event

    def __init__(self) -> None:
        object.__setattr__(self, "changed", trio.Event())
        super().__init__()

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        self.changed.set()

    async def report(self, writer: FrameWriter, number: int) -> None:
        """Send what the attempt learnt each time it changed, until cancelled."""
        while True:
            await self.changed.wait()
            object.__setattr__(self, "changed", trio.Event())
            connecting_for = trio.current_time() - self.connecting_since if self.connecting else 0.0
            await writer.send(
                Kind.PROGRESS, number, pickled(Progress(self.connecting, connecting_for, self.host, self.answered))
            )


async def serve(sock: trio.socket.SocketType) -> None:
    reader, writer = FrameReader(sock), FrameWriter(sock)
    first = await reader.next()
    if first is None or first[0] != Kind.SETUP:
        return
    settings = unpickled(first[2], MountSettings)
    scopes: dict[int, trio.CancelScope] = {}
    async with RemoteClient(settings, auth=netrc_auth(os.environ)) as client, trio.open_nursery() as nursery:
        await writer.send(Kind.READY, 0)
        while (received := await reader.next()) is not None:
            kind, number, payload = received
            if kind == Kind.START:
                scope = scopes[number] = trio.CancelScope()
                nursery.start_soon(_run, client, writer, number, unpickled(payload, Job), scope, scopes)
            elif kind == Kind.CANCEL and number in scopes:
                scopes[number].cancel()
        nursery.cancel_scope.cancel()


async def _run(  # noqa: PLR0917
    client: RemoteClient,
    writer: FrameWriter,
    number: int,
    job: Job,
    scope: trio.CancelScope,
    scopes: dict[int, trio.CancelScope],
) -> None:
    attempt = _ReportedAttempt()
    try:
        with scope:
            try:
                await _fetch(client, writer, number, job, attempt)
            except RemoteError as error:
                failure = encode_failure(
                    error, host_down=attempt.host_down, host=attempt.host, answered=attempt.answered
                )
                await writer.send(Kind.FAIL, number, pickled(failure))
            except Exception as error:  # one job's surprise must not end the others
                log.debug("job for %s failed unexpectedly", job.metadata.url, exc_info=True)
                unexpected = InvalidResponse(job.metadata.url, f"unexpected {type(error).__name__}: {error}")
                failure = encode_failure(unexpected, host_down=False, host=attempt.host, answered=attempt.answered)
                await writer.send(Kind.FAIL, number, pickled(failure))
            else:
                await writer.send(Kind.DONE, number)
    finally:
        del scopes[number]


async def _fetch(client: RemoteClient, writer: FrameWriter, number: int, job: Job, attempt: _ReportedAttempt) -> None:
    """The body to the daemon as it arrives. What arrives while a frame is being sent goes in the next one,
    so the daemon gets a few large frames when it is busy and small ones (the first bytes early) when not."""
    send, receive = trio.open_memory_channel[bytes](_QUEUED_CHUNKS)

    async def forward() -> None:
        async with receive:
            async for chunk in receive:
                pieces, length = [chunk], len(chunk)
                while length < _FRAME_TARGET:
                    try:
                        more = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    pieces.append(more)
                    length += len(more)
                await writer.send(Kind.DATA, number, *pieces)

    failed: RemoteError | None = None
    async with trio.open_nursery() as reporting:
        reporting.start_soon(attempt.report, writer, number)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            async with send:
                try:
                    async with aclosing(client.range_body(job.metadata, job.wanted, job, attempt)) as body:
                        async for chunk in body:
                            await send.send(chunk)
                except RemoteError as error:  # raised once what came before it is forwarded
                    failed = error
        reporting.cancel_scope.cancel()  # DONE or FAIL says the rest
    if failed is not None:
        raise failed


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="rangefs fetch worker: %(message)s")
    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=int(argv[1])))
    # ^C at a terminal reaches the whole process group: the daemon decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trio.run(serve, sock)
    except* (BrokenPipeError, ConnectionResetError):
        pass  # the daemon went away: nobody is left to tell


if __name__ == "__main__":
    main(sys.argv)
