"""Mount settings with their defaults, and the parsing of sizes such as ``64M``.

Every knob documents its unit and why its default is what it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from rangefs.errors import UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str) -> int:
    """Parse ``4096``, ``512K``, ``1M``, ``64MiB``, ``10G`` (binary units) into bytes."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"invalid size {text!r}: use a number with an optional K, M, G or T suffix, e.g. 64M")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def default_cache_dir() -> Path:
    """The per-user cache directory (``~/.cache/rangefs`` on Linux)."""
    return Path(platformdirs.user_cache_dir("rangefs", appauthor=False))


def default_log_file() -> Path:
    """Where a background mount logs when no ``--log-file`` is given."""
    return Path(platformdirs.user_log_dir("rangefs", appauthor=False)) / "rangefs.log"


@dataclass
class MountSettings:
    """Everything a mount needs besides the entries themselves."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    # 1 MiB: large enough that a sequential read costs few requests (httpx spends ~1.3 ms of CPU per request),
    # small enough that a 4 KiB random read wastes at most 1 MiB of transfer.
    block_size: int = MiB
    # Longest single range request built from adjacent missing blocks of one demand read.
    max_request_size: int = 8 * MiB
    # Connections per host for prefetch, and as many again for demand reads so they never queue behind it.
    # 8 saturates an origin that throttles each connection (a download accelerator's usual count).
    connections: int = 8
    # Readahead window limit per sequential stream (see readahead/pattern.py).
    max_readahead: int = 64 * MiB
    # Prefetched bytes in flight across the whole mount: bounds memory however many files are open.
    max_inflight: int = 256 * MiB
    # Size of one prefetch request: large enough that httpx's ~1.3 ms per request is noise (<2 % at
    # 600 MiB/s), small enough that a window is spread over several connections.
    prefetch_part_size: int = 8 * MiB
    # On the first open of a zip, MP4/MOV or Parquet file, prefetch the index its readers start with.
    format_prefetch: bool = True
    # The kernel's readahead for the mount (bdi read_ahead_kb; root only): the kernel's own readahead window
    # grows to this, in reads of up to 1 MiB. Measured: 1 MiB gives ~10 % more sequential throughput than
    # 256 KiB, but its ramp reads up to 2 blocks past what a seeking video player needs (ffmpeg -ss: 4 MiB
    # instead of 1-2); our readahead does the sequential work anyway. None leaves the kernel's 128 KiB.
    kernel_readahead: int | None = 256 * KiB
    # Concurrent probes at mount time: enough to hide round trips for long URL lists, few enough not to look
    # like an attack to one origin.
    probe_concurrency: int = 32
    # Seconds one fetch or probe may take in all, retries included: then the reader gets EIO. A minute rides
    # out a server restart or a burst of 503s; a reader that cannot wait can be interrupted at any time.
    timeout: float = 60.0
    # Seconds to wait for a connection, and for any single network read, before that attempt is retried.
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    # TLS: verify servers against the system's CAs, or against this bundle (a private CA).
    ca_bundle: Path | None = None
    # HTTP/2 multiplexes requests to one host over one connection (needs the h2 package).
    http2: bool = False
    # Seconds the kernel may cache attributes and directory entries (nothing changes them but a revalidation,
    # which invalidates explicitly).
    attr_timeout: float = 300.0
    # Hard limit on the block cache directory (shared by every mount using it). 10 GiB holds the working set
    # of a few large archives or videos and suits a laptop disk; a block past it evicts the least recently used.
    cache_size: int | None = 10 * GiB
    # Seconds a probe result (size, ETag, Last-Modified) serves listings (getattr), also across remounts, without
    # a request; 5 minutes is what rclone uses for its directory cache.
    metadata_ttl: float = 300.0
    # Close-to-open consistency: an open revalidates a file whose metadata is older than this many seconds, so
    # it sees any change made at the origin longer ago than that. 1 s lets a tool that opens a file several
    # times in a row (or right after `ls -l` probed it) pay one round trip, not one per open.
    revalidate_after: float = 1.0
    fuse_options: frozenset[str] = frozenset()
    user_agent: str = "rangefs"

    def __post_init__(self) -> None:
        if self.block_size < 4 * KiB or self.block_size > 64 * MiB or self.block_size % (4 * KiB):
            raise UsageError("--block-size must be a multiple of 4K between 4K and 64M")
        self.max_request_size = max(self.max_request_size, self.block_size)
        self.prefetch_part_size = max(self.prefetch_part_size, self.block_size)
        if self.timeout <= 0:
            raise UsageError("--timeout must be positive")
        self.connect_timeout = min(self.connect_timeout, self.timeout)
        self.read_timeout = min(self.read_timeout, self.timeout)
        if self.connections < 1:
            raise UsageError("--connections must be at least 1")
        if self.max_inflight < self.block_size:
            raise UsageError("--max-inflight must be at least one block")
