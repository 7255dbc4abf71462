"""Fetch worker processes: HTTP and TLS off the daemon's one thread.

The daemon's thread answers FUSE, assembles blocks and checks them; parsing HTTP and decrypting TLS for a
sequential stream took as much again (4.2 CPU-s of 4.4 s for 512 MiB over HTTPS at 40 ms). A worker process
(fetchworker.py) has its own trio loop and httpx client and does one attempt at a range per job: it sends the
request the daemon describes and passes the body back over a Unix socket as it arrives, so the daemon only
copies bytes out of a socket. Everything else stays in the daemon: credentials and their renewal, retries,
the per-host connection limits and their AIMD (a job is sent only once its connection slot is held), byte
counts, and the check that a job brought exactly the bytes asked for.

Workers start in the background; until one is ready, and if one cannot be started, fetches run in the
daemon as before. A worker that ends fails its jobs with a transient error (they are retried, in the daemon
if no worker is left) and is started again, a few times at most.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import cast

import trio

from rangefs.config import MountSettings
from rangefs.errors import RemoteUnreachable
from rangefs.remote.frames import (
    Failure,
    FrameReader,
    FrameWriter,
    Job,
    Kind,
    Progress,
    decode_failure,
    pickled,
    unpickled,
)
from rangefs.remote.sender import Attempt

log = logging.getLogger(__name__)

# Socket buffers of each worker's socket pair: a worker can run this far ahead of the daemon's reads.
_SOCKET_BUFFER = 4 * 1024 * 1024
# A worker that ended unexpectedly is started again at most this many times in the life of a pool.
_RESTARTS = 3
# Job numbers go round within the wire's 32 bits (0 is no job's).
_JOB_NUMBERS = 2**32 - 1
# A worker's command line (its socket's descriptor is added). -P: not the working directory first on sys.path
# (``-m`` puts it there), where anyone who can write it could plant a ``rangefs`` package; the worker imports
# the daemon's own, from where the daemon did (PYTHONPATH, below).
WORKER_PROGRAM = (sys.executable, "-P", "-m", "rangefs.remote.fetchworker")
# Seconds a stopping worker gets to end on its own once its socket is closed, before it is killed.
_STOP_GRACE = 2.0
# The directory the daemon imported rangefs from.
_CODE_ROOT = str(Path(__file__).resolve().parents[2])


class _Job:
    """A job the daemon waits for: where its bytes go, and how it ended."""

    def __init__(self, url: str, arrived: Callable[[bytes], None], attempt: Attempt) -> None:
        self.url = url
        self.arrived = arrived
        self.attempt = attempt
        self.ended = trio.Event()
        self.error: BaseException | None = None
        # The worker still works on it: a job the daemon gives up on must be cancelled there.
        self.running = True

    def deliver(self, payload: bytearray) -> None:
        if self.ended.is_set():
            return
        try:
            # A bytearray read straight from the socket: every sink takes any bytes-like chunk.
            self.arrived(cast("bytes", payload))
        except Exception as error:  # the sink's failure is the waiting fetch's to raise
            self.end(error)

    def end(self, error: BaseException | None, *, running: bool = True) -> None:
        if not self.ended.is_set():
            self.error, self.running = error, running
            self.ended.set()


class _Worker:
    """One worker process and the daemon's end of its socket."""

    def __init__(self, number: int, program: Sequence[str] = WORKER_PROGRAM) -> None:
        self.number = number
        self.program = program  # the worker's command line, to which the socket's descriptor is added
        self.writer: FrameWriter | None = None  # set once the worker said it is ready
        self.jobs: dict[int, _Job] = {}
        self.pid: int | None = None

    @property
    def ready(self) -> bool:
        return self.writer is not None

    async def run(self, settings: MountSettings) -> None:
        """Start the process and serve its frames until it ends (or the pool is cancelled)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (ours, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        command = [*self.program, str(theirs.fileno())]
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (_CODE_ROOT, os.environ.get("PYTHONPATH")))),
        }
        try:
            process = await trio.lowlevel.open_process(
                command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=environment
            )
        finally:
            theirs.close()
        self.pid = process.pid
        sock = trio.socket.from_stdlib_socket(ours)
        try:
            writer = FrameWriter(sock)
            await writer.send(Kind.SETUP, 0, pickled(settings))
            await self._serve(FrameReader(sock), writer)
        finally:
            self.writer, self.pid = None, None
            for job in self.jobs.values():
                job.end(RemoteUnreachable(job.url, f"its fetch worker process {process.pid} ended"), running=False)
            sock.close()  # the worker reads the end of its socket and stops
            with trio.CancelScope(shield=True):
                with trio.move_on_after(_STOP_GRACE):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    async def _serve(self, reader: FrameReader, writer: FrameWriter) -> None:
        while (received := await reader.next()) is not None:
            kind, number, payload = received
            if kind == Kind.READY:
                self.writer = writer
                continue
            job = self.jobs.get(number)
            if job is None:  # a job given up on: what was already on its way is dropped
                continue
            if kind == Kind.DATA:
                job.deliver(payload)
            elif kind == Kind.PROGRESS:
                progress = unpickled(payload, Progress)
                job.attempt.connecting = progress.connecting
                job.attempt.connecting_since = trio.current_time() - progress.connecting_for
                job.attempt.host, job.attempt.answered = progress.host, progress.answered
            elif kind == Kind.DONE:
                job.end(None, running=False)
            elif kind == Kind.FAIL:
                failure = unpickled(payload, Failure)
                job.attempt.host_down = job.attempt.host_down or failure.host_down
                job.attempt.host, job.attempt.answered = failure.host, failure.answered
                job.attempt.connecting = None  # as the sender leaves it after any failure
                job.end(decode_failure(failure), running=False)


# Schemes whose prefetches the workers take by default. Over plain HTTP the daemon's cost of a body is small
# (1 MiB socket reads through h11) and passing it over a socket costs as much again: measured on this
# project's 2-core machine, a cold 512 MiB read at 40 ms took 2.85 s in the daemon and 2.99 s with a worker,
# against 4.57 s and 3.38 s over HTTPS, where decryption is the cost.
DEFAULT_SCHEMES = ("https",)


class FetchWorkers:
    """A pool of fetch worker processes; ``fetch`` runs one attempt at a range in the least busy of them.
    ``takes`` says which URLs the pool is for (by scheme)."""

    def __init__(
        self, count: int, schemes: tuple[str, ...] = DEFAULT_SCHEMES, program: Sequence[str] = WORKER_PROGRAM
    ) -> None:
        self._workers = [_Worker(number, program) for number in range(count)]
        self._prefixes = tuple(f"{scheme}://" for scheme in schemes)
        # Set by the first URL the pool is for: a mount of plain-HTTP files never starts a process.
        self._wanted = trio.Event()
        self._numbers = itertools.count(1)
        self.restarts = 0
        self.completed = 0  # jobs that brought their whole range

    def __repr__(self) -> str:
        ready = sum(worker.ready for worker in self._workers)
        return f"<FetchWorkers {ready}/{len(self._workers)} ready, {self.jobs} jobs, {self.restarts} restarts>"

    @property
    def ready(self) -> bool:
        return any(worker.ready for worker in self._workers)

    def takes(self, url: str) -> bool:
        """Whether a prefetch of ``url`` goes to a worker now; the first such URL starts the workers."""
        if not url.lower().startswith(self._prefixes):
            return False
        self._wanted.set()
        return self.ready

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self._workers if worker.pid is not None]

    @property
    def jobs(self) -> int:
        return sum(len(worker.jobs) for worker in self._workers)

    @classmethod
    @asynccontextmanager
    async def running(
        cls,
        settings: MountSettings,
        count: int,
        schemes: tuple[str, ...] = DEFAULT_SCHEMES,
        program: Sequence[str] = WORKER_PROGRAM,
    ) -> AsyncIterator[FetchWorkers]:
        """``count`` workers for URLs of ``schemes``, started in the background once ``takes`` is asked about
        such a URL (or ``start`` is called), and stopped at exit."""
        pool = cls(count, schemes, program)
        async with trio.open_nursery() as nursery:
            for worker in pool._workers:
                nursery.start_soon(pool._keep_running, worker, settings)
            try:
                yield pool
            finally:
                nursery.cancel_scope.cancel()

    def start(self) -> None:
        """Start the workers now, not at the first URL they are for."""
        self._wanted.set()

    async def _keep_running(self, worker: _Worker, settings: MountSettings) -> None:
        await self._wanted.wait()
        while True:
            try:
                await worker.run(settings)
                cause = "it ended"
            except Exception as error:  # a broken pipe, or a worker that talked nonsense: never the mount's end
                cause = f"{type(error).__name__}: {error}"
            if self.restarts >= _RESTARTS:
                log.warning("fetch worker %d stopped (%s); fetching in the daemon from now on", worker.number, cause)
                return
            self.restarts += 1
            log.warning("fetch worker %d stopped (%s); starting it again", worker.number, cause)
            await trio.sleep(0.1 * self.restarts)

    async def fetch(self, job: Job, arrived: Callable[[bytes], None], attempt: Attempt) -> None:
        """One attempt at ``job`` in a worker: its body to ``arrived`` as it arrives, or the RemoteError the
        worker's attempt ended with (or the error ``arrived`` raised). Needs ``ready``."""
        ready = [worker for worker in self._workers if worker.writer is not None]
        if not ready:
            raise RemoteUnreachable(job.metadata.url, "no fetch worker process is running")
        worker = min(ready, key=lambda candidate: len(candidate.jobs))
        writer = cast("FrameWriter", worker.writer)
        number = (next(self._numbers) - 1) % _JOB_NUMBERS + 1  # within the wire's 32 bits; older jobs are long gone
        waiting = worker.jobs[number] = _Job(job.metadata.url, arrived, attempt)
        try:
            await writer.send(Kind.START, number, pickled(job))
            await waiting.ended.wait()
        except (OSError, trio.ClosedResourceError):  # the socket broke, or closed under the send
            waiting.end(RemoteUnreachable(job.metadata.url, "its fetch worker process ended"), running=False)
        finally:
            del worker.jobs[number]
            if waiting.running:  # given up on here (cancelled, or the sink failed): the worker stops it too
                with trio.CancelScope(shield=True), suppress(OSError, trio.ClosedResourceError):
                    with trio.move_on_after(1.0):
                        await writer.send(Kind.CANCEL, number)
        if waiting.error is not None:
            raise waiting.error
        self.completed += 1
