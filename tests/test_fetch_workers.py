"""Fetch worker processes (rangefs/remote/workers.py) and the TLS stream (tlsstream.py), against real servers.

Every test here starts real worker processes and talks to a real HTTP(S) origin on loopback; bytes are
compared with the origin's. The mount-level tests (test_mount_reads.py and the rest) run with the mount's
default of workers too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpcore
import pytest
import trio

from rangefs.config import MountSettings
from rangefs.errors import RangesUnsupported, RemoteChanged, RemoteError, RemoteStatusError, RemoteUnreachable
from rangefs.ranges import ByteRange
from rangefs.remote import FetchStopped, RemoteClient, frames
from rangefs.remote.frames import FrameReader, FrameWriter, Kind
from rangefs.remote.transport import LargeReadBackend
from rangefs.remote.workers import WORKER_PROGRAM, FetchWorkers
from tests import faults, tls
from tests.conftest import MountFactory
from tests.origin import Origin, pattern_bytes
from tests.waiting import eventually

MiB = 1024 * 1024


@asynccontextmanager
async def client_with_workers(
    settings: MountSettings, count: int = 1, program: Sequence[str] = WORKER_PROGRAM
) -> AsyncIterator[RemoteClient]:
    pool = FetchWorkers.running(settings, count, schemes=("http", "https"), program=program)
    async with RemoteClient(settings) as client, pool as workers:
        client.workers = workers
        workers.start()
        await wait_until(lambda: workers.ready, timeout=30)
        yield client


async def wait_until(check: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)


def workers_of(client: RemoteClient) -> FetchWorkers:
    assert client.workers is not None
    return client.workers


def test_a_prefetch_runs_in_a_worker_and_brings_exactly_its_bytes(origin: Origin) -> None:
    data = pattern_bytes(8 * MiB, seed=3)
    url = origin.add("/big.bin", data)

    async def main() -> None:
        async with client_with_workers(MountSettings()) as client:
            metadata = await client.probe(url)
            wanted = ByteRange(1000, 8 * MiB - 5)
            assert await client.fetch(metadata, wanted, demand=False) == data[1000 : 8 * MiB - 5]
            assert workers_of(client).completed == 1
            # A demand read stays in the daemon, on its warm connections.
            assert await client.fetch(metadata, ByteRange(0, 4096), demand=True) == data[:4096]
            assert workers_of(client).completed == 1
            assert workers_of(client).jobs == 0

    trio.run(main)
    assert len(origin.requests_for("/big.bin")) == 2


def test_a_worker_fetches_over_https_verifying_the_server(certificates: tls.Certificates) -> None:
    data = pattern_bytes(6 * MiB, seed=4)
    with Origin(tls=certificates.good.server_context()).running() as origin:
        url = origin.add("/tls.bin", data)

        async def main() -> None:
            async with client_with_workers(MountSettings(ca_bundle=certificates.ca)) as client:
                metadata = await client.probe(url)
                assert await client.fetch(metadata, ByteRange(0, len(data)), demand=False) == data
                assert workers_of(client).completed == 1

        trio.run(main)


def test_errors_from_a_worker_keep_their_class_and_fields(origin: Origin) -> None:
    data = pattern_bytes(1 * MiB, seed=5)
    url = origin.add("/e.bin", data)

    async def main() -> None:
        async with client_with_workers(MountSettings(timeout=5.0)) as client:
            metadata = await client.probe(url)
            origin.faults["/e.bin"] = faults.status(404)
            with pytest.raises(RemoteStatusError) as raised:
                await client.fetch(metadata, ByteRange(0, 100), demand=False)
            assert raised.value.status == 404
            assert raised.value.url == url
            origin.faults["/e.bin"] = faults.whole_file
            with pytest.raises(RangesUnsupported):
                await client.fetch(metadata, ByteRange(0, 100), demand=False)
            del origin.faults["/e.bin"]
            origin.add("/e.bin", pattern_bytes(1 * MiB, seed=6))  # a new version: If-Range refuses the range
            with pytest.raises(RemoteChanged):
                await client.fetch(metadata, ByteRange(0, 100), demand=False)
            assert workers_of(client).jobs == 0

    trio.run(main)


def test_a_body_cut_short_in_a_worker_is_resumed_for_the_rest(origin: Origin) -> None:
    data = pattern_bytes(4 * MiB, seed=7)
    url = origin.add("/cut.bin", data)

    async def main() -> None:
        async with client_with_workers(MountSettings()) as client:
            metadata = await client.probe(url)
            origin.faults["/cut.bin"] = faults.transient(faults.reset_mid_body, 1)
            assert await client.fetch(metadata, ByteRange(0, len(data)), demand=False) == data
            assert client.statistics().retries == 1

    trio.run(main)
    ranges = [record.range for record in origin.requests_for("/cut.bin")]
    assert len(ranges) == 2
    assert ranges[1] != ranges[0]  # the second asked only for what the first did not bring


def test_a_worker_killed_mid_fetch_costs_a_retry_not_a_wrong_byte(origin: Origin) -> None:
    data = pattern_bytes(8 * MiB, seed=8)
    url = origin.add("/kill.bin", data)
    origin.connection_rate = 8 * MiB  # a second per request: time to kill the worker in the middle

    async def main() -> None:
        async with client_with_workers(MountSettings()) as client:
            workers = workers_of(client)
            metadata = await client.probe(url)
            received = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(client.fetch_into, metadata, ByteRange(0, len(data)), received.extend, demand=False)
                )
                await wait_until(lambda: len(received) > MiB, timeout=20)
                os.kill(workers.pids[0], signal.SIGKILL)
            assert bytes(received) == data
            assert client.statistics().retries >= 1
            await wait_until(lambda: workers.ready, timeout=30)  # started again
            assert workers.restarts == 1
            assert await client.fetch(metadata, ByteRange(0, 100), demand=False) == data[:100]

    trio.run(main)


def test_a_cancelled_fetch_stops_its_request_in_the_worker(origin: Origin) -> None:
    data = pattern_bytes(8 * MiB, seed=9)
    url = origin.add("/slow.bin", data)
    origin.connection_rate = 2 * MiB

    async def main() -> None:
        async with client_with_workers(MountSettings()) as client:
            metadata = await client.probe(url)
            with trio.move_on_after(0.5):
                await client.fetch(metadata, ByteRange(0, len(data)), demand=False)
            assert workers_of(client).jobs == 0
            await wait_until(lambda: origin.in_flight == 0, timeout=20)  # the worker closed its connection
            assert await client.fetch(metadata, ByteRange(10, 20), demand=False) == data[10:20]

    trio.run(main)
    assert origin.bytes_sent_for("/slow.bin") < len(data) // 2


def test_a_sink_that_stops_the_fetch_stops_the_worker_too(origin: Origin) -> None:
    data = pattern_bytes(8 * MiB, seed=10)
    url = origin.add("/stop.bin", data)
    origin.connection_rate = 4 * MiB

    async def main() -> None:
        async with client_with_workers(MountSettings()) as client:
            metadata = await client.probe(url)
            received = bytearray()

            def sink(chunk: bytes) -> None:
                received.extend(chunk)
                if len(received) >= MiB:
                    raise FetchStopped

            with pytest.raises(FetchStopped):
                await client.fetch_into(metadata, ByteRange(0, len(data)), sink, demand=False)
            assert bytes(received) == data[: len(received)]
            assert workers_of(client).jobs == 0
            await wait_until(lambda: origin.in_flight == 0, timeout=20)

    trio.run(main)


def test_a_mount_s_workers_take_https_prefetches_only() -> None:
    async def main() -> None:
        async with FetchWorkers.running(MountSettings(), 1) as workers:
            assert not workers.takes("http://example.org/a")
            await trio.sleep(0.5)
            assert not workers.pids  # no process for plain HTTP
            assert not workers.takes("https://example.org/a")  # none ready yet: the daemon fetches
            await wait_until(lambda: workers.ready, timeout=30)
            assert workers.takes("https://example.org/a") and workers.takes("HTTPS://example.org/a")
            assert not workers.takes("http://example.org/a")

    trio.run(main)


def test_workers_end_with_their_pool() -> None:
    async def main() -> list[int]:
        settings = MountSettings()
        async with FetchWorkers.running(settings, 2) as workers:
            workers.start()
            await wait_until(lambda: len(workers.pids) == 2 and workers.ready, timeout=30)
            return workers.pids

    for pid in trio.run(main):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_job_cancelled_while_its_bytes_queue_leaves_the_next_job_s_bytes_intact(origin: Origin) -> None:
    """The daemon reads slowly (a busy loop), so the worker is always mid-frame when a CANCEL arrives: the
    job still running in the same worker must get exactly its own bytes."""
    kept_data, dropped_data = pattern_bytes(24 * MiB, seed=15), pattern_bytes(24 * MiB, seed=16)
    kept_url, dropped_url = origin.add("/kept.bin", kept_data), origin.add("/dropped.bin", dropped_data)

    def slow(received: bytearray, chunk: bytes) -> None:
        received += chunk
        time.sleep(0.02)  # the daemon's one thread busy: the worker's socket fills

    async def main() -> None:
        async with client_with_workers(MountSettings(), count=1) as client:
            kept, dropped = await client.probe(kept_url), await client.probe(dropped_url)
            for attempt in range(3):
                received, other = bytearray(), bytearray()
                async with trio.open_nursery() as nursery:
                    whole = ByteRange(0, len(kept_data))
                    nursery.start_soon(partial(client.fetch_into, kept, whole, partial(slow, received), demand=False))
                    with trio.move_on_after(0.5 + 0.1 * attempt):
                        await client.fetch_into(
                            dropped, ByteRange(0, len(dropped_data)), partial(slow, other), demand=False
                        )
                assert hashlib.sha256(received).hexdigest() == hashlib.sha256(kept_data).hexdigest()
                assert bytes(other) == dropped_data[: len(other)]
            assert workers_of(client).restarts == 0

    trio.run(main)


@pytest.mark.parametrize("fault", [faults.short_body, faults.reset_mid_body], ids=["short", "reset"])
@pytest.mark.parametrize("in_worker", [True, False], ids=["worker", "daemon"])
def test_a_truncated_https_body_never_passes_as_complete(
    certificates: tls.Certificates, fault: faults.Fault, in_worker: bool
) -> None:
    """Over our TLS stream the end of a body (close_notify or not, or a reset) is checked against its length:
    once, the rest is fetched again; every time, the fetch fails with the prefix it got correct."""
    data = pattern_bytes(4 * MiB, seed=17)
    with Origin(tls=certificates.good.server_context()).running() as origin:
        url = origin.add("/t.bin", data)

        async def main() -> None:
            settings = MountSettings(ca_bundle=certificates.ca, timeout=5.0)
            async with client_with_workers(settings) as client:
                if not in_worker:
                    client.workers = None
                metadata = await client.probe(url)
                origin.faults["/t.bin"] = faults.transient(fault, 1)
                assert await client.fetch(metadata, ByteRange(0, len(data)), demand=False) == data
                assert client.statistics().retries == 1
                origin.faults["/t.bin"] = fault
                received = bytearray()
                with pytest.raises(RemoteError):
                    await client.fetch_into(metadata, ByteRange(0, len(data)), received.extend, demand=False)
                assert 0 < len(received) < len(data)
                assert bytes(received) == data[: len(received)]

        trio.run(main)


def test_a_worker_runs_the_daemon_s_own_code_not_a_package_in_its_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m`` puts the working directory first on sys.path: a daemon started in a directory others can
    write (/tmp) must not run a ``rangefs`` package planted there, with the credentials its jobs carry."""
    planted = tmp_path / "rangefs" / "remote"
    planted.mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    (tmp_path / "rangefs" / "__init__.py").write_text("")
    (planted / "__init__.py").write_text("")
    (planted / "fetchworker.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)

    async def main() -> None:
        async with FetchWorkers.running(MountSettings(), 1) as workers:
            workers.start()
            await wait_until(lambda: workers.ready or workers.restarts > 0, timeout=30)
            assert workers.ready

    trio.run(main)
    assert not marker.exists()


@pytest.mark.parametrize("in_worker", [True, False], ids=["worker", "daemon"])
def test_a_deadline_in_a_worker_names_how_far_the_attempt_got(origin: Origin, in_worker: bool) -> None:
    """The deadline is the daemon's, the attempt the worker's: what it learnt (connected, no answer yet)
    must reach the daemon before the deadline ends it, for the cause the log and the reader's EIO show."""
    data = pattern_bytes(1 * MiB, seed=18)
    url = origin.add("/stuck.bin", data)

    async def main() -> None:
        async with client_with_workers(MountSettings(timeout=1.0)) as client:
            if not in_worker:
                client.workers = None
            metadata = await client.probe(url)
            origin.faults["/stuck.bin"] = faults.slow_first_byte(3.0)
            with pytest.raises(RemoteUnreachable, match="accepted the connection but sent no answer within 1 s"):
                await client.fetch(metadata, ByteRange(0, len(data)), demand=False)

    trio.run(main)


# The TLS stream.


def test_a_tls_read_returns_every_record_the_socket_brought(certificates: tls.Certificates) -> None:
    """trio's SSLStream returns one 16 KiB record per read, each a trip through h11 and the scheduler."""
    payload = pattern_bytes(4 * MiB, seed=11)

    async def send_all(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.send_all(payload)
        await stream.aclose()

    async def main() -> None:
        server = certificates.good.server_context()
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, send_all, 0, server, host="127.0.0.1"))
            port = listeners[0].transport_listener.socket.getsockname()[1]
            plain = await LargeReadBackend().connect_tcp("127.0.0.1", port)
            context = ssl.create_default_context(cafile=str(certificates.ca))
            stream = await plain.start_tls(context, "127.0.0.1")
            received = bytearray()
            reads = 0
            with trio.fail_after(20):
                while piece := await stream.read(64 * 1024):
                    reads += 1
                    received += piece
                    await trio.sleep(0.005)  # let records queue up
            assert bytes(received) == payload
            assert reads < len(payload) // (16 * 1024) // 2, reads
            await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_tls_handshake_refuses_a_certificate_for_another_host(certificates: tls.Certificates) -> None:
    async def idle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.do_handshake()  # the client refuses the certificate

    async def main() -> None:
        server = certificates.wrong_host.server_context()
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, idle, 0, server, host="127.0.0.1"))
            port = listeners[0].transport_listener.socket.getsockname()[1]
            plain = await LargeReadBackend().connect_tcp("127.0.0.1", port)
            context = ssl.create_default_context(cafile=str(certificates.ca))
            with pytest.raises(httpcore.ConnectError) as raised:
                await plain.start_tls(context, "127.0.0.1", timeout=10)
            assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_reset_during_the_tls_handshake_is_a_connect_error(certificates: tls.Certificates) -> None:
    """As with trio's SSLStream: the connection never came up, which the host breaker must count (sender.py
    takes ConnectError for that), not a read error on a connection that did."""

    async def reset(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)  # the ClientHello
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, reset, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            plain = await LargeReadBackend().connect_tcp("127.0.0.1", port)
            context = ssl.create_default_context(cafile=str(certificates.ca))
            with pytest.raises(httpcore.ConnectError):
                await plain.start_tls(context, "127.0.0.1", timeout=10)
            nursery.cancel_scope.cancel()

    trio.run(main)


# Through a mount: the daemon's workers.


def _workers_of_daemon(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [child for child in children if b"rangefs.remote.fetchworker" in Path(f"/proc/{child}/cmdline").read_bytes()]


def test_a_mount_reads_https_through_its_worker_and_ends_it(
    certificates: tls.Certificates, mount_factory: MountFactory
) -> None:
    data = pattern_bytes(48 * MiB + 4321, seed=12)
    with Origin(tls=certificates.good.server_context()).running() as origin:
        url = origin.add("/stream.bin", data)
        mounted = mount_factory([url], "--ca-bundle", str(certificates.ca))
        with (mounted.path / "stream.bin").open("rb") as file:
            digest = hashlib.sha256()
            while piece := file.read(MiB):
                digest.update(piece)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
        workers = _workers_of_daemon(mounted.process.pid)
        assert len(workers) == 1  # started by the first HTTPS prefetch
        assert origin.bytes_sent_for("/stream.bin") <= len(data) + 2 * MiB
        mounted.unmount()
        for pid in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_a_worker_ends_when_its_daemon_is_killed(certificates: tls.Certificates, mount_factory: MountFactory) -> None:
    data = pattern_bytes(24 * MiB, seed=13)
    with Origin(tls=certificates.good.server_context()).running() as origin:
        url = origin.add("/k.bin", data)
        mounted = mount_factory([url], "--ca-bundle", str(certificates.ca))
        assert (mounted.path / "k.bin").read_bytes() == data
        workers = _workers_of_daemon(mounted.process.pid)
        assert workers
        mounted.process.kill()
        mounted.process.wait(timeout=10)
        eventually(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), "the workers ended", 10)
        subprocess.run(["fusermount3", "-u", "-z", str(mounted.path)], check=False, capture_output=True)


# The wire between the daemon and a worker.


def test_a_frame_send_cancelled_midway_still_sends_the_whole_frame() -> None:
    """A worker cancels a job (the daemon's CANCEL) while its DATA frame is half in the socket; the frames
    after it must still parse, or the next job's bytes are read as garbage (or as a third job's)."""
    first, second = b"a" * (4 * MiB), pattern_bytes(64 * 1024, seed=14)

    async def main() -> None:
        ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:
            writer, reader = FrameWriter(ours), FrameReader(theirs)
            frames: list[tuple[Kind, int, bytes]] = []

            async def read_two_later() -> None:
                await trio.sleep(0.5)  # until then the first frame cannot all go
                while len(frames) < 2 and (frame := await reader.next()) is not None:
                    frames.append((frame[0], frame[1], bytes(frame[2])))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_two_later)
                with trio.move_on_after(0.2):
                    await writer.send(Kind.DATA, 1, first)
                with trio.fail_after(10):
                    await writer.send(Kind.DATA, 2, second)
                    while len(frames) < 2:
                        await trio.sleep(0.01)
            assert [(kind, job) for kind, job, _ in frames] == [(Kind.DATA, 1), (Kind.DATA, 2)]
            assert hashlib.sha256(frames[0][2]).digest() == hashlib.sha256(first).digest()
            assert hashlib.sha256(frames[1][2]).digest() == hashlib.sha256(second).digest()

    trio.run(main)


def test_a_cancelled_send_to_a_peer_that_reads_nothing_ends_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rest of a begun frame is bounded: a peer that takes nothing gets the end, never half a frame."""
    monkeypatch.setattr(frames, "FINISH_TIMEOUT", 0.3)

    async def main() -> None:
        ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:
            writer = FrameWriter(ours)
            with trio.fail_after(10), trio.move_on_after(0.1):
                await writer.send(Kind.DATA, 1, b"b" * (4 * MiB))
            with pytest.raises(OSError):
                await writer.send(Kind.DATA, 2, b"after")
            with trio.fail_after(10):
                assert await FrameReader(theirs).next() is None  # the first frame's payload never completes

    trio.run(main)


_NONSENSE_WORKER = """
import os, struct, sys, time
fd = int(sys.argv[1])
os.write(fd, struct.pack("<BII", 1, 0, 0))  # READY
time.sleep(0.3)
os.write(fd, struct.pack("<BII", 4, 1, 2**31))  # a DATA frame of 2 GiB: past any bound
time.sleep(30)
"""


def test_a_worker_that_talks_nonsense_fails_its_job_not_the_pool(origin: Origin) -> None:
    data = pattern_bytes(MiB, seed=14)
    url = origin.add("/n.bin", data)
    program = (sys.executable, "-c", _NONSENSE_WORKER)

    async def main() -> None:
        async with client_with_workers(MountSettings(timeout=10.0), program=program) as client:
            metadata = await client.probe(url)
            # The job fails with the worker; its retries run in the daemon or a restarted worker: right bytes.
            assert await client.fetch(metadata, ByteRange(0, len(data)), demand=False) == data
            await wait_until(lambda: workers_of(client).restarts >= 1, timeout=30)

    trio.run(main)
