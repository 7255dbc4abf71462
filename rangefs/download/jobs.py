"""Jobs of ``rangefs get`` and their runner (see the package docstring)."""

from __future__ import annotations

import dataclasses
import errno
import logging
import signal
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import trio

from rangefs.config import MountSettings
from rangefs.download.output import FileSink, StreamSink
from rangefs.download.progress import Reporter
from rangefs.download.transfer import TransferPlan, transfer
from rangefs.errors import DownloadError
from rangefs.library import AsyncSession
from rangefs.library.options import Headers

log = logging.getLogger(__name__)


@dataclass
class GetJob:
    """One URL and where it goes; ``error`` is what went wrong, once run (None: it succeeded)."""

    url: str
    sink: FileSink | StreamSink
    headers: Headers = ()
    error: str | None = None
    finished: bool = False  # downloaded completely


def settings_for_get(settings: MountSettings) -> MountSettings:
    """The mount's settings, with the memory tier (twice ``max_readahead``, stack.py) sized to the transfer's
    window plus the parts waiting to be written: parts arrive ahead of the reader and wait there, and a part
    evicted before it was read and while its cache write is still queued would be fetched again (measured:
    8 % of a 512 MiB download with a 32 MiB tier). Blocks already written are not kept for long after."""
    window = TransferPlan(settings.prefetch_part_size, settings.connections).window
    return dataclasses.replace(settings, max_readahead=(window + 2 * settings.prefetch_part_size) // 2)


async def get_all(
    jobs: Sequence[GetJob], settings: MountSettings, *, parallel: int, reporter: Reporter, fill_cache: bool = False
) -> signal.Signals | None:
    """Run every job (``parallel`` files at a time, stdout ones in order); each records its own error.
    SIGINT or SIGTERM stops them all (each file records what it has, resumable); returns that signal."""
    hosts = Counter(urlsplit(job.url).netloc for job in jobs)
    stopped_by: signal.Signals | None = None
    async with AsyncSession(settings) as session:
        limiter = trio.CapacityLimiter(parallel)
        streaming = _Streaming()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    nonlocal stopped_by
                    async for number in signals:
                        stopped_by = signal.Signals(number)
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                async with trio.open_nursery() as downloads:
                    for job in jobs:
                        # Files at once on one host share its connections: each gets its part of them, so
                        # none waits for a free one past --timeout.
                        sharing = min(parallel, hosts[urlsplit(job.url).netloc])
                        connections = max(1, settings.connections // sharing)
                        plan = TransferPlan(settings.prefetch_part_size, connections, segmented=not fill_cache)
                        downloads.start_soon(
                            partial(_run, session, job, plan, limiter=limiter, streaming=streaming, reporter=reporter)
                        )
                        await trio.lowlevel.checkpoint()  # let it take the lock before the next one starts
                nursery.cancel_scope.cancel()  # every download ended: stop listening for signals
    for job in jobs:
        if stopped_by is not None and not job.finished and job.error is None:
            job.error = f"{job.url}: stopped by {stopped_by.name}" + (
                "; run again to resume" if isinstance(job.sink, FileSink) else ""
            )
    return stopped_by


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
    job.finished = False
    await transfer(
        session,
        job.url,
        job.sink,
        plan,
        headers=job.headers,
        started=lambda size, done: reporter.started(task, size, done),
        progress=lambda count: reporter.advance(task, count),
    )
    job.finished = True
