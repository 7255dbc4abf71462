"""``rangefs cache warm``: bring files of a live mount into its block cache before anyone needs them.

The warming reads go through the mount itself, so they use the mount's URLs, headers, connections,
readahead and cache, and a file being warmed is served to its other readers meanwhile. Whole files are read
sequentially (the mount's readahead turns that into parallel range requests); ``--index`` reads only what
format-aware prefetch would: the planner of the file's format (readahead/formats.py) is run against the
mounted file. Nothing is kept in the page cache on the way (the point is the disk cache).

Before reading, the files' sizes are checked against the cache's limit: a set that cannot fit is refused
with a message, since warming it would evict its own first blocks to make room for its last ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from rangefs.download.progress import Reporter
from rangefs.errors import UsageError
from rangefs.ranges import ByteRange
from rangefs.readahead.formats import planner_for

CACHED_XATTR = "user.rangefs.cached_bytes"
_READ_SIZE = 1024 * 1024
# Page-cache pages are dropped after this many bytes of a file have been read.
_DROP_EVERY = 64 * 1024 * 1024


@dataclass
class WarmTarget:
    path: Path
    size: int
    # Bytes to read: the whole file, or the index ranges found (set once planned).
    ranges: list[ByteRange]
    error: str | None = None

    @property
    def length(self) -> int:
        return sum(wanted.length for wanted in self.ranges)


def find_targets(mountpoint: Path, paths: Sequence[Path]) -> list[WarmTarget]:
    """The files under ``paths`` (every file of the mount when empty), each once, in a stable order."""
    root = mountpoint.absolute()
    found: dict[Path, WarmTarget] = {}
    for given in paths or [root]:
        path = given.absolute()
        if path != root and root not in path.parents:
            raise UsageError(f"{given} is not inside the mount {mountpoint}")
        if not path.exists():
            raise UsageError(f"{given} does not exist in the mount")
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            size = file.stat().st_size
            found.setdefault(file, WarmTarget(file, size, [ByteRange(0, size)] if size else []))
    return list(found.values())


def plan_index(target: WarmTarget) -> None:
    """Replace the whole-file range by the ranges format-aware prefetch would fetch (none: no known format)."""
    planner = planner_for(target.path.name, target.size)
    target.ranges = []
    if planner is None:
        return
    with open(target.path, "rb", buffering=0) as file:
        while (need := planner.next_range()) is not None:
            planner.feed(need.start, os.pread(file.fileno(), need.length, need.start))
    target.ranges = [wanted for wanted in planner.wanted() if wanted.length]


def check_fits(targets: Iterable[WarmTarget], statistics: dict[str, object]) -> str | None:
    """None if the targets fit in the cache limit, else what to tell the user."""
    cache = statistics.get("cache")
    limit = cache.get("limit_bytes", 0) if isinstance(cache, dict) else 0
    need = sum(target.length - _cached_bytes(target.path) for target in targets)
    if limit and need > limit:
        return (
            f"the files need {_mib(need)} in the cache but its limit is {_mib(limit)}: warm fewer files,"
            " or remount with a larger --cache-size"
        )
    return None


def _cached_bytes(path: Path) -> int:
    """What the mount says it holds of this file already (0 where it cannot say)."""
    try:
        return int(os.getxattr(path, CACHED_XATTR))
    except (OSError, ValueError):
        return 0


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):,.1f} MiB"


async def warm_all(targets: Sequence[WarmTarget], *, jobs: int, reporter: Reporter) -> None:
    """Read every target's ranges through the mount, ``jobs`` files at a time; each records its own error."""
    limiter = trio.CapacityLimiter(jobs)
    async with trio.open_nursery() as nursery:
        for target in targets:
            nursery.start_soon(_warm_one, target, limiter, reporter)


async def _warm_one(target: WarmTarget, limiter: trio.CapacityLimiter, reporter: Reporter) -> None:
    task = reporter.add(target.path.name)
    async with limiter:
        reporter.started(task, target.length, 0)
        try:
            fd = os.open(target.path, os.O_RDONLY)
        except OSError as error:
            target.error = f"{target.path}: {error.strerror}"
            return
        try:
            for wanted in target.ranges:
                await _read_range(fd, wanted, task, reporter)
        except OSError as error:
            target.error = f"{target.path}: {error.strerror} (the mount's log says why)"
        finally:
            os.close(fd)
            reporter.finished(task)


async def _read_range(fd: int, wanted: ByteRange, task: int, reporter: Reporter) -> None:
    buffer = bytearray(_READ_SIZE)
    position, since_drop = wanted.start, 0
    while position < wanted.stop:
        view = memoryview(buffer)[: min(_READ_SIZE, wanted.stop - position)]
        count = await trio.to_thread.run_sync(os.preadv, fd, [view], position)
        if count == 0:
            return  # the file is shorter than it said: warmed what there is
        position += count
        since_drop += count
        reporter.advance(task, count)
        if since_drop >= _DROP_EVERY or position >= wanted.stop:
            os.posix_fadvise(fd, wanted.start, position - wanted.start, os.POSIX_FADV_DONTNEED)
            since_drop = 0
