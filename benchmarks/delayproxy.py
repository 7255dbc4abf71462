"""A TCP proxy on 127.0.0.1 that adds a round-trip time, for emulating a WAN link without sch_netem.

    python benchmarks/delayproxy.py --listen-port 8081 --upstream-port 8080 --rtt-ms 40

Each accepted connection waits one RTT before it is connected upstream (the TCP handshake of a real link),
then every chunk is forwarded RTT/2 after it arrived, in each direction. Each direction has a queue of
(due time, chunk): a reader task stamps chunks as they arrive, a writer task sends each at its due time. The
delays of successive chunks overlap instead of adding up, so the link keeps its bandwidth and only gains
latency. The queues are bounded, so a slow receiver pushes back on the sender as TCP would.

Only loopback: the proxy listens on and connects to 127.0.0.1, nothing else. It prints ``ready PORT`` once
listening and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

HOST = "127.0.0.1"
CHUNK = 256 * 1024
# Chunks waiting in one direction: at most QUEUE_CHUNKS * CHUNK bytes (64 MiB) per direction and connection.
QUEUE_CHUNKS = 256


class DelayProxy:
    def __init__(self, upstream_port: int, rtt: float) -> None:
        self.upstream_port = upstream_port
        self.rtt = rtt
        self.connections = 0
        self.stopping = False
        self._relays: set[asyncio.Task[None]] = set()

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        """One client connection (asyncio's callback): relayed until both sides are done, or shutdown."""
        self.connections += 1
        relay = asyncio.create_task(self._relay(client_reader, client_writer))
        self._relays.add(relay)
        try:
            await relay
        except asyncio.CancelledError:
            if not self.stopping:
                raise
        finally:
            self._relays.discard(relay)

    async def close(self) -> None:
        """End every open connection (at shutdown)."""
        self.stopping = True
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            await asyncio.sleep(self.rtt)  # the handshake of a real link costs one round trip
            upstream_reader, upstream_writer = await asyncio.open_connection(HOST, self.upstream_port, limit=CHUNK)
            async with asyncio.TaskGroup() as group:
                group.create_task(self.forward(client_reader, upstream_writer))
                group.create_task(self.forward(upstream_reader, client_writer))
        except* (ConnectionError, OSError):
            pass  # a reset or refused connection ends both directions
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.transport.abort()

    async def forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction, each chunk sent RTT/2 after it arrived."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive(reader, queue))
            group.create_task(self._send(writer, queue))

    async def _receive(self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(CHUNK)
            await queue.put((loop.time() + self.rtt / 2, data))
            if not data:
                return

    async def _send(self, writer: asyncio.StreamWriter, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


async def serve(listen_port: int, upstream_port: int, rtt: float) -> None:
    proxy = DelayProxy(upstream_port, rtt)
    server = await asyncio.start_server(proxy.handle, HOST, listen_port, limit=CHUNK, backlog=256)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    async with server:
        await stop.wait()
        server.close()
        await proxy.close()
    print(f"stopped after {proxy.connections} connections", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="Delaying TCP proxy on 127.0.0.1 (emulates a round-trip time).")
    parser.add_argument("--listen-port", type=int, required=True, help="port to listen on (0: any free port)")
    parser.add_argument("--upstream-port", type=int, required=True, help="port of the server on 127.0.0.1")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round-trip time to add, in milliseconds")
    args = parser.parse_args()
    if args.rtt_ms < 0:
        parser.error("--rtt-ms must not be negative")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen_port, args.upstream_port, args.rtt_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
