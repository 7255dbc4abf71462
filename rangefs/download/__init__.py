"""``rangefs get``: downloads through the engine (transfer.py): into files in segments over parallel connections
(segmented.py, segments.py), written under a partial name until verified, or to stdout in order through the
readahead's parts and the disk cache (output.py), with progress (progress.py).

Files are downloaded ``jobs`` at a time in one AsyncSession, so they share the connections per host (and
their AIMD limits) and the byte budget; stdout takes the URLs one after another, in the order given.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import trio

from rangefs.config import MountSettings
from rangefs.download.output import FileSink, StreamSink
from rangefs.download.progress import Reporter
from rangefs.download.transfer import TransferPlan, transfer
from rangefs.errors import DownloadError
from rangefs.library import AsyncSession
from rangefs.library.options import Headers

__all__ = ["FileSink", "GetJob", "StreamSink", "get_all", "settings_for_get"]

log = logging.getLogger(__name__)


@dataclass
class GetJob:
    """One URL and where it goes; ``error`` is what went wrong, once run (None: it succeeded)."""

    url: str
    sink: FileSink | StreamSink
    headers: Headers = ()
    error: str | None = None


def settings_for_get(settings: MountSettings) -> MountSettings:
    """The mount's settings, with the memory tier (twice ``max_readahead``, stack.py) sized to the transfer's
    window plus the parts waiting to be written: parts arrive ahead of the reader and wait there, and a part
    evicted before it was read and while its cache write is still queued would be fetched again (measured:
    8 % of a 512 MiB download with a 32 MiB tier). Blocks already written are not kept for long after."""
    window = TransferPlan.for_connections(settings.connections, settings.prefetch_part_size).window
    return dataclasses.replace(settings, max_readahead=(window + 2 * settings.prefetch_part_size) // 2)


async def get_all(jobs: Sequence[GetJob], settings: MountSettings, *, parallel: int, reporter: Reporter) -> None:
    """Run every job (``parallel`` files at a time, stdout ones in order); each records its own error."""
    plan = TransferPlan.for_connections(settings.connections, settings.prefetch_part_size)
    async with AsyncSession(settings) as session:
        limiter = trio.CapacityLimiter(parallel)
        streaming = _Streaming()
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(
                    partial(_run, session, job, plan, limiter=limiter, streaming=streaming, reporter=reporter)
                )
                await trio.lowlevel.checkpoint()  # let it take the lock before the next one starts


class _Streaming:
    """Stdout jobs one at a time, in the order given (trio's Lock is fair, and they ask in that order); after
    one fails the rest are skipped, so the stream never goes on with a file missing from its middle."""

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.failed = False


async def _run(
    session: AsyncSession,
    job: GetJob,
    plan: TransferPlan,
    *,
    limiter: trio.CapacityLimiter,
    streaming: _Streaming,
    reporter: Reporter,
) -> None:
    task = reporter.add(job.sink.name if isinstance(job.sink, FileSink) else job.url)
    try:
        job.sink.check()
        if isinstance(job.sink, StreamSink):
            async with streaming.lock:
                if streaming.failed:
                    job.error = f"{job.url}: skipped, an earlier URL of the stream failed"
                    return
                streaming.failed = True  # until it succeeds
                await _transfer(session, job, plan, task, reporter)
                streaming.failed = False
        else:
            async with limiter:
                await _transfer(session, job, plan, task, reporter)
    except DownloadError as error:
        job.error = str(error)
    except BrokenPipeError:
        job.error = "standard output was closed"
    except OSError as error:
        where = error.filename or job.url
        job.error = f"{where}: {error.strerror or error}"
        if error.errno == errno.ENOSPC:
            job.error += " (disk full)"
    finally:
        reporter.finished(task)


async def _transfer(session: AsyncSession, job: GetJob, plan: TransferPlan, task: int, reporter: Reporter) -> None:
    await transfer(
        session,
        job.url,
        job.sink,
        plan,
        headers=job.headers,
        started=lambda size, done: reporter.started(task, size, done),
        progress=lambda count: reporter.advance(task, count),
    )
