"""One download: to a file in segments over parallel connections (segmented.py), to a stream in order.

In order (a stream, or a file whose server ignores Range): the file is read front to back in parts of
``part_size`` (the readahead's request size, 8 MiB). Ahead of the part being read, ``window`` bytes are asked
for with the file's explicit prefetch, which the engine splits into parts fetched over the host's
connections (``--connections``) within its byte budget, adapting to 429/503 (AIMD) and retrying as every
fetch does. Parts already in the disk cache (an earlier ``get``, a mount, the API) are not fetched. Parts
complete in any order; the reader takes them in order and hands each to the writer (a worker thread: write,
hash) through a channel of ``_WRITE_QUEUE`` parts, so at most ``window`` + the queue are in memory whatever
the file's size. The window is the connections' worth of parts plus two, so a connection that finishes its
part finds the next one already asked for: more would only queue for a connection, holding memory.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from rangefs.download.output import Sink
from rangefs.download.segmented import SegmentedDownload
from rangefs.errors import DownloadError
from rangefs.library import AsyncRemoteFile, AsyncSession
from rangefs.library.options import HeadersArg
from rangefs.ranges import ByteRange

log = logging.getLogger(__name__)

# Parts waiting for the writer: enough that the reader rarely waits for the disk, few for memory.
_WRITE_QUEUE = 2
# Bytes per read of the in-order path: one block of the default size.
_READ = 1024 * 1024


@dataclass(frozen=True)
class TransferPlan:
    """How one file is read: in order, ``part_size`` bytes per part and ``window`` bytes asked for ahead of
    the reader; to a file, in segments over ``connections`` connections."""

    part_size: int
    connections: int
    # A file in segments, past the block store (False: in order through it, so its pieces go to the disk
    # cache and its fetches are shared with mounts and other readers of the cache, ``--fill-cache``).
    segmented: bool = True

    @property
    def window(self) -> int:
        return (self.connections + 2) * self.part_size


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
    output; on either the sink is aborted (a file stays resumable). A sink that can be written anywhere (a
    file) gets segments over parallel connections (segmented.py); a stream, or any sink of a server that
    ignores Range, gets the bytes in order."""
    file = await session.open(url, headers=headers)
    done: Callable[[], list[ByteRange]] = list
    try:
        already = await trio.to_thread.run_sync(sink.open, file.metadata)
        if started is not None:
            started(file.size, sum(piece.length for piece in already))
        counted = progress or (lambda _count: None)
        finished = False
        if plan.segmented and sink.random_access and not file.streams_whole:
            download = SegmentedDownload(
                file,
                sink,
                already,
                connections=plan.connections,
                first_request=plan.part_size,
                timeout=session.settings.timeout,
                progress=counted,
            )
            done = download.done
            finished = await download.run()
        if not finished:  # a stream, or a server that ignores Range (known before, or found out just now)
            ordered = _InOrder(file, sink, plan, counted)
            done = ordered.done
            await ordered.run()
        if file.size and done() != [ByteRange(0, file.size)]:  # the sink fills what is not written with zeros
            raise OSError(errno.EIO, f"{url}: the download ended with bytes missing: {done()}")
        await trio.to_thread.run_sync(sink.finish)
        return file.size
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(sink.abort, done())
        raise
    finally:
        file.close_nowait()


class _InOrder:
    """The file front to back through the engine's explicit prefetch, each part handed to the writer in
    order (see the module docstring)."""

    def __init__(self, file: AsyncRemoteFile, sink: Sink, plan: TransferPlan, progress: Progress) -> None:
        self._file = file
        self._sink = sink
        self._plan = plan
        self._progress = progress
        self._written = 0

    def done(self) -> list[ByteRange]:
        return [ByteRange(0, self._written)] if self._written else []

    async def run(self) -> None:
        file, position = self._file, 0
        send, receive = trio.open_memory_channel[bytes](_WRITE_QUEUE)
        failure: OSError | DownloadError | None = None
        async with trio.open_nursery() as nursery:

            async def write() -> None:
                nonlocal failure
                try:
                    await self._write(receive)
                except (OSError, DownloadError) as error:  # disk full, a closed pipe: one error, not a group
                    failure = error
                    nursery.cancel_scope.cancel()

            nursery.start_soon(write)
            async with send:
                asked = position
                try:
                    while position < file.size:
                        ahead = min(file.size, position + self._plan.window)
                        if ahead - asked >= self._plan.part_size or ahead == file.size > asked:
                            file.prefetch(asked, ahead - asked)  # whole parts: each asked for is a request
                            asked = ahead
                        # Read in small steps: only the window is in memory, not also parts waiting to be
                        # written. The explicit prefetch is the plan; the access pattern's would add to it.
                        data = await file.read_at(position, min(_READ, file.size - position), readahead=False)
                        if not data:
                            raise OSError(errno.EIO, f"{file.url}: no bytes at {position} of {file.size}")
                        try:
                            await send.send(data)
                        except trio.BrokenResourceError:
                            # The writer stopped (a closed pipe, a full disk) and closed its end before its
                            # handler cancelled us (its close checkpoints): its failure is raised below.
                            break
                        position += len(data)
                except OSError as error:
                    failure = failure or error  # the remote side failed: the parts read are still written
        if failure is not None:
            raise failure

    async def _write(self, parts: trio.MemoryReceiveChannel[bytes]) -> None:
        async with parts:
            async for data in parts:
                await trio.to_thread.run_sync(self._write_part, data)
                self._progress(len(data))

    def _write_part(self, data: bytes) -> None:
        self._sink.write_at(self._written, data)
        self._written += len(data)
        if self._sink.checkpoint_due:
            self._sink.checkpoint(self.done())
