"""The table of ``rangefs stats``: rows computed from two samples of a mount's statistics, then drawn by rich.

``rows`` is pure: a sample is the JSON of the ``user.rangefs.stats`` xattr (``FileEngine.statistics``) and
the monotonic time it was read at. Rates are the difference of two samples' counters over the time between
them; they are unknown (None) for the first sample, for a file absent from the previous one (it was not
among the busiest), and when a counter went down (the mount was restarted between the samples).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

TOTAL = "total"
_NUMBER_HEADINGS = ("served", "fetched", "hit %", "requests", "retries", "errors", "in flight", "served/s", "fetched/s")


@dataclass(frozen=True)
class Sample:
    stats: Mapping[str, Any]
    taken_at: float  # time.monotonic() when it was read


@dataclass(frozen=True)
class Row:
    name: str  # TOTAL, or a file's path in the mount
    bytes_served: int
    bytes_fetched: int
    hit_ratio: float | None  # of the bytes served, the share found in memory or on disk; None before any read
    requests: int
    retries: int
    errors: int  # reads that failed (the reader got EIO or EACCES)
    bytes_in_flight: int
    served_per_second: float | None
    fetched_per_second: float | None


def rows(previous: Sample | None, current: Sample) -> list[Row]:
    """The total first, then the busiest files in the order the mount ranks them."""
    elapsed = current.taken_at - previous.taken_at if previous is not None else 0.0
    before: dict[str, Mapping[str, Any]] = {}
    if previous is not None:
        before = {TOTAL: previous.stats.get("traffic", {})}
        before.update((file["path"], file) for file in previous.stats.get("busiest_files", []))
    named = [(TOTAL, current.stats.get("traffic", {}))]
    named += [(file["path"], file) for file in current.stats.get("busiest_files", [])]
    return [_row(name, counters, before.get(name), elapsed) for name, counters in named]


def _row(name: str, now: Mapping[str, Any], then: Mapping[str, Any] | None, elapsed: float) -> Row:
    served, hit = int(now.get("bytes_served", 0)), int(now.get("bytes_hit", 0))
    return Row(
        name=name,
        bytes_served=served,
        bytes_fetched=int(now.get("bytes_fetched", 0)),
        hit_ratio=hit / served if served else None,
        requests=int(now.get("requests", 0)),
        retries=int(now.get("retries", 0)),
        errors=int(now.get("read_errors", 0)),
        bytes_in_flight=int(now.get("bytes_in_flight", 0)),
        served_per_second=_rate(now, then, "bytes_served", elapsed),
        fetched_per_second=_rate(now, then, "bytes_fetched", elapsed),
    )


def _rate(now: Mapping[str, Any], then: Mapping[str, Any] | None, key: str, elapsed: float) -> float | None:
    if then is None or elapsed <= 0:
        return None
    grown = int(now.get(key, 0)) - int(then.get(key, 0))
    return grown / elapsed if grown >= 0 else None


def summary(stats: Mapping[str, Any]) -> str:
    """One line of what is not per file: files, handles, the disk cache and readahead."""
    cache, prefetch = stats.get("cache", {}), stats.get("prefetch", {})
    limit = cache.get("limit_bytes", 0)
    parts = [
        f"{stats.get('files', 0):,} files ({stats.get('files_failed', 0):,} failed), "
        f"{stats.get('open_handles', 0):,} open",
        f"disk cache {human_size(cache.get('usage_bytes', 0))} of {human_size(limit) if limit else 'no limit'}",
    ]
    if prefetch:
        parts.append(f"readahead {human_size(prefetch.get('budget_in_use', 0))} in flight")
    probes = stats.get("probes", {})
    if probes.get("under_way"):
        parts.append(f"probing {probes.get('ended', 0):,} of {probes.get('queued', 0):,} files")
    return " | ".join(parts)


def table(computed: Sequence[Row], caption: str = "") -> Table:
    """The rows as a rich table."""
    drawn = Table(caption=caption or None, caption_justify="left", expand=False)
    drawn.add_column("file", overflow="fold")
    for heading in _NUMBER_HEADINGS:
        drawn.add_column(heading, justify="right", no_wrap=True)
    for row in computed:
        drawn.add_row(
            row.name,
            human_size(row.bytes_served),
            human_size(row.bytes_fetched),
            "-" if row.hit_ratio is None else f"{100 * row.hit_ratio:.1f}",
            f"{row.requests:,}",
            f"{row.retries:,}",
            f"{row.errors:,}",
            human_size(row.bytes_in_flight),
            _human_rate(row.served_per_second),
            _human_rate(row.fetched_per_second),
            style="bold" if row.name == TOTAL else None,
            end_section=row.name == TOTAL,
        )
    return drawn


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _human_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{human_size(round(rate))}/s"
