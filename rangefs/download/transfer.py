"""One download: the engine's readahead parts fetched in parallel, written in order, with bounded memory.

The file is read front to back in parts of ``part_size`` (the readahead's request size, 8 MiB). Ahead of
the part being read, ``window`` bytes are asked for with the file's explicit prefetch, which the engine
splits into parts fetched over the host's connections (``--connections``) within its byte budget, adapting
to 429/503 (AIMD) and retrying as every fetch does. Parts already in the disk cache (an earlier ``get``, a
mount, the API) are not fetched: that is the resume from the cache. Parts complete in any order; the reader
takes them in order and hands each to the writer (a worker thread: write, hash) through a channel of
``_WRITE_QUEUE`` parts, so at most ``window`` + the queue are in memory whatever the file's size.

The window is the connections' worth of parts plus two, so a connection that finishes its part finds the
next one already asked for: more would only queue for a connection, holding memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from rangefs.download.output import Sink
from rangefs.library import AsyncSession
from rangefs.library.options import HeadersArg

log = logging.getLogger(__name__)

# Parts waiting for the writer: enough that the reader rarely waits for the disk, few for memory.
_WRITE_QUEUE = 2


@dataclass(frozen=True)
class TransferPlan:
    """How one file is read: ``part_size`` bytes per read, ``window`` bytes asked for ahead of it."""

    part_size: int
    window: int

    @classmethod
    def for_connections(cls, connections: int, part_size: int) -> TransferPlan:
        return cls(part_size, (connections + 2) * part_size)


Progress = Callable[[int], None]  # bytes newly written
Started = Callable[[int, int], None]  # (size, bytes already there)


async def transfer(
    session: AsyncSession,
    url: str,
    sink: Sink,
    plan: TransferPlan,
    *,
    headers: HeadersArg = None,
    started: Started | None = None,
    progress: Progress | None = None,
) -> int:
    """Download ``url`` into ``sink``; returns its size. OSError for the remote side, DownloadError for the
    output; on either the sink is aborted (a file stays resumable)."""
    file = await session.open(url, headers=headers)
    try:
        position = await trio.to_thread.run_sync(sink.open, file.metadata)
        if started is not None:
            started(file.size, position)
        send, receive = trio.open_memory_channel[bytes](_WRITE_QUEUE)
        failure: OSError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write, sink, receive, progress)
            async with send:
                asked = position
                try:
                    while position < file.size:
                        ahead = min(file.size, position + plan.window)
                        if ahead > asked:
                            file.prefetch(asked, ahead - asked)
                            asked = ahead
                        data = await file.read_at(position, min(plan.part_size, file.size - position))
                        await send.send(data)
                        position += len(data)
                except OSError as error:
                    failure = error  # the remote side failed: the parts read before it are still written
        if failure is not None:
            raise failure
        await trio.to_thread.run_sync(sink.finish)
        return file.size
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(sink.abort)
        raise
    finally:
        file.close_nowait()


async def _write(sink: Sink, parts: trio.MemoryReceiveChannel[bytes], progress: Progress | None) -> None:
    async with parts:
        async for data in parts:
            await trio.to_thread.run_sync(sink.write, data)
            if progress is not None:
                progress(len(data))
