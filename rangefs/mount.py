"""Mount lifecycle: the service nursery, pyfuse3, signals (the checks before mounting: ``mountpoint.py``).

The mount is live (``task_status.started()``) only once the kernel has accepted it; it is always unmounted
on the way out, whether main() ended by ``fusermount3 -u``, SIGINT/SIGTERM or an error. SIGHUP rereads the
urls file (``reload.py``).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pyfuse3
import trio

from rangefs import kernel, stack
from rangefs.cache import BlockCache
from rangefs.config import Entry, MountSettings
from rangefs.engine import ProbeProgress
from rangefs.errors import MountError
from rangefs.fuse_ops import RangefsOperations
from rangefs.namespace import Namespace
from rangefs.reload import Reloader

log = logging.getLogger(__name__)

# Seconds the freshly mounted filesystem may take to answer its first request.
_SERVING_TIMEOUT = 30.0
# No default_permissions: with it the kernel fetches attributes before every open and getxattr, so a file whose
# stat fails (nothing is known of it, see RangefsOperations.getattr) could be neither opened (probed again) nor
# asked for its user.rangefs.error. Every file is 0444 and every directory 0555 for everyone, so the kernel's
# mode check would refuse nothing but exec, which RangefsOperations.access and the kernel itself refuse.
_BASE_OPTIONS = frozenset({"subtype=rangefs", "ro"})


class _VanishedRequestFilter(logging.Filter):
    """pyfuse3 logs at ERROR when a reply finds its request gone (ENOENT: the kernel stopped waiting, e.g. for
    an interrupted read or a release racing an unmount). Nothing failed: it becomes a debug line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "fuse_reply_* failed with No such file" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger("pyfuse3").isEnabledFor(logging.DEBUG)
        return True


async def serve(
    entries: Sequence[Entry],
    mountpoint: Path,
    settings: MountSettings,
    *,
    urls_file: Path | None = None,
    task_status: trio.TaskStatus[ProbeProgress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount, serve until unmounted or signalled, unmount. With ``urls_file`` (where ``entries`` came
    from), SIGHUP reloads it, and the mount table shows it as the mounted thing (as a disk shows its device):
    mount(8) compares that with fstab's source to know a line is mounted already. Started: how far the
    probes, running since just before the mount, have got (they go on)."""
    vanished = _VanishedRequestFilter()
    logging.getLogger("pyfuse3").addFilter(vanished)
    # Signals are ours from here to the very end: one arriving during the clean-up after an unmount must not
    # kill the process half-way (the default action) and leave the pid file and the cache index behind.
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            cache = BlockCache(settings.cache_dir, size_limit=settings.cache_size)
            problem = cache.open()
            if problem:
                log.warning("%s", problem)
            try:
                await _serve_with_cache(
                    entries,
                    mountpoint,
                    settings,
                    cache=cache,
                    signals=signals,
                    urls_file=urls_file,
                    task_status=task_status,
                )
            finally:
                cache.close()
    finally:
        logging.getLogger("pyfuse3").removeFilter(vanished)


async def _serve_with_cache(
    entries: Sequence[Entry],
    mountpoint: Path,
    settings: MountSettings,
    *,
    cache: BlockCache,
    signals: AsyncIterator[int],
    urls_file: Path | None,
    task_status: trio.TaskStatus[ProbeProgress],
) -> None:
    async with stack.running_engine(entries, settings, cache) as engine, trio.open_nursery() as nursery:
        operations = RangefsOperations(
            Namespace(entries), engine, attr_timeout=settings.attr_timeout, block_size=settings.block_size
        )
        engine.on_metadata_changed = operations.invalidate_file
        reloader = Reloader(urls_file, operations) if urls_file is not None else None
        if settings.metrics_listen is not None:
            from rangefs import metrics  # lazy: prometheus-client is an optional extra

            await nursery.start(metrics.serve, engine, settings.metrics_listen)
        nursery.start_soon(engine.run_probes)
        try:
            pyfuse3.init(operations, str(mountpoint), _fuse_options(settings, urls_file))
        except RuntimeError as error:
            raise MountError(f"cannot mount on {mountpoint}: {error} (see the log for libfuse's reason)") from None
        try:
            async with trio.open_nursery() as fuse_nursery:
                fuse_nursery.start_soon(_serve_requests, fuse_nursery.cancel_scope)
                if reloader is not None:
                    await fuse_nursery.start(reloader.serve)
                fuse_nursery.start_soon(_handle_signals, signals, reloader)
                await _wait_until_serving(mountpoint)
                # Only now: the kernel's INIT exchange clamps read_ahead_kb to what libfuse negotiated.
                applied = kernel.tune(mountpoint, readahead_bytes=settings.kernel_readahead, max_background=64)
                log.info("mounted %d files on %s (kernel: %s)", len(entries), mountpoint, applied or "defaults")
                task_status.started(engine.probe_progress)
        finally:
            pyfuse3.close(unmount=True)
            nursery.cancel_scope.cancel()  # and leaving running_engine cancels every fetch
            log.info("unmounted %s", mountpoint)


def _fuse_options(settings: MountSettings, urls_file: Path | None) -> set[str]:
    """Ours and the user's; a user's ``fsname=`` wins. libfuse splits options at commas unless escaped."""
    options = set(_BASE_OPTIONS | settings.fuse_options)
    if not any(option.startswith("fsname=") for option in options):
        source = str(urls_file.resolve()) if urls_file is not None else "rangefs"
        if not source.isascii():
            source = "rangefs"  # pyfuse3 passes options as ASCII only
        options.add("fsname=" + source.replace("\\", "\\\\").replace(",", "\\,"))
    return options


async def _serve_requests(done: trio.CancelScope) -> None:
    await pyfuse3.main()
    done.cancel()  # unmounted or terminated: stop waiting for signals


async def _wait_until_serving(mountpoint: Path) -> None:
    """Return once the kernel has finished FUSE's INIT and our loop answers requests."""
    try:
        with trio.fail_after(_SERVING_TIMEOUT):
            await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    except trio.TooSlowError:
        raise MountError(f"{mountpoint} was mounted but did not answer within {_SERVING_TIMEOUT:.0f} s") from None


async def _handle_signals(signals: AsyncIterator[int], reloader: Reloader | None) -> None:
    """SIGHUP reloads the urls file; SIGINT and SIGTERM unmount."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            if reloader is None:
                log.warning("received SIGHUP, but this mount has no urls file to reload")
            else:
                log.info("received SIGHUP, reloading %s", reloader.urls_file)
                reloader.request()
            continue
        log.info("received %s, unmounting", signal.Signals(signum).name)
        pyfuse3.terminate()
        return
