"""Mount settings: each knob declared once, with its default, its unit, why the default is what it is, and
how it is spelled on the command line.

``rangefs mount`` builds its options from these declarations (config/options.py), the background child gets
its argv back from the settings, and the HTTP client, the block store and the readahead are built from
them (stack.py): adding a knob is one field here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from rangefs.config.listen import ListenAddress, parse_listen_address
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


def format_size(size: int) -> str:
    """The shortest exact spelling parse_size reads back: ``1M`` for 1 MiB, ``1536K``, ``1000``."""
    for suffix, unit in (("T", 1024 * GiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def default_cache_dir() -> Path:
    """The per-user cache directory (``~/.cache/rangefs`` on Linux)."""
    return Path(platformdirs.user_cache_dir("rangefs", appauthor=False))


def default_log_file() -> Path:
    """Where a background mount logs when no ``--log-file`` is given."""
    return Path(platformdirs.user_log_dir("rangefs", appauthor=False)) / "rangefs.log"


def _check_ca_bundle(path: Path) -> None:
    """A bundle that cannot be used is a usage error now, not a failure of every request later."""
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise UsageError(f"--ca-bundle {path}: no such file") from None
    except (OSError, ssl.SSLError) as error:
        raise UsageError(f"--ca-bundle {path} cannot be used as a PEM CA bundle: {error}") from None


@dataclass(frozen=True)
class Option:
    """How one setting is spelled on the command line: ``--NAME`` (from the field) taking a value that
    ``parse`` reads and ``show`` writes back, or a flag (``flag=True``) that sets the opposite of the
    default. ``name`` overrides the spelling (``--no-format-prefetch``)."""

    help: str
    parse: Callable[[str], Any] = str
    show: Callable[[Any], str] = str
    metavar: str | None = None
    flag: bool = False
    name: str | None = None
    # Shown in --help as the default when it differs from show(default) (a per-user path, say).
    default_text: str | None = None


def _size(help: str) -> Option:
    return Option(help, parse=parse_size, show=format_size, metavar="SIZE")


def _size_or_none(help: str) -> Option:
    """A size where 0 means none (no limit, the kernel's default)."""
    return Option(help, parse=lambda text: parse_size(text) or None, show=lambda v: format_size(v or 0), metavar="SIZE")


def _format_seconds(value: float) -> str:
    """``60`` for 60.0, and every digit where they matter (a child process must get the same number)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _seconds(help: str) -> Option:
    return Option(help, parse=float, show=_format_seconds, metavar="SECONDS")


def _count(help: str) -> Option:
    return Option(help, parse=int, metavar="N")


def _path(help: str, default_text: str | None = None) -> Option:
    return Option(
        help,
        parse=lambda text: Path(text).expanduser().absolute(),
        metavar="PATH",
        default_text=default_text,
    )


def _default_fetch_workers() -> int:
    return min(2, max(0, (os.cpu_count() or 1) - 1))


def option(default: Any = None, spec: Option | None = None, *, factory: Callable[[], Any] | None = None) -> Any:
    """A settings field with its command-line spelling (None: not a command-line option)."""
    metadata = {"option": spec} if spec else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class MountSettings:
    """Everything a mount (or a library session, or ``rangefs get``) needs besides the entries themselves."""

    cache_dir: Path = option(
        factory=default_cache_dir,
        spec=_path("block cache directory, shared by mounts that name it", default_text=str(default_cache_dir())),
    )
    # 1 MiB: large enough that a sequential read costs few requests (httpx spends ~1.3 ms of CPU per request),
    # small enough that a 4 KiB random read wastes at most 1 MiB of transfer.
    block_size: int = option(MiB, _size("cache block and minimum request size, a multiple of 4K"))
    # Hard limit on the block cache directory (shared by every mount using it). 10 GiB holds the working set
    # of a few large archives or videos and suits a laptop disk; a block past it evicts the least recently used.
    cache_size: int | None = option(10 * GiB, _size_or_none("hard limit on the cache directory; 0 for no limit"))
    # Seconds one fetch or probe may take in all, retries included: then the reader gets EIO. A minute rides
    # out a server restart or a burst of 503s; a reader that cannot wait can be interrupted at any time.
    timeout: float = option(60.0, _seconds("seconds a read may take in all, retries included, before it fails (EIO)"))
    # Seconds to wait for a connection, and for any single network read, before that attempt is retried.
    connect_timeout: float = option(10.0, _seconds("seconds to wait for a connection before retrying"))
    read_timeout: float = option(20.0, _seconds("seconds to wait for any network read before retrying"))
    # TLS: verify servers against the system's CAs, or against this bundle (a private CA).
    ca_bundle: Path | None = option(None, _path("verify TLS servers against this CA bundle (PEM)"))
    # HTTP/2 multiplexes requests to one host over one connection (needs the h2 package).
    http2: bool = option(False, Option("use HTTP/2 where servers offer it (needs h2)", flag=True))
    # Send no request at all: stored probe results serve whatever their age, and only cached bytes can be read
    # (on a plane; and tests use it to prove what the cache alone holds).
    offline: bool = option(
        False, Option("send no request: serve stored sizes and cached bytes only; the rest fails (EIO)", flag=True)
    )
    # Connections per host for prefetch, and as many again for demand reads so they never queue behind it.
    # 8 saturates an origin that throttles each connection (a download accelerator's usual count).
    connections: int = option(8, _count("parallel connections per host for readahead"))
    # Worker processes that run HTTPS prefetch requests, so that TLS and HTTP of a stream run beside the thread
    # that answers FUSE (remote/workers.py); plain HTTP stays in the daemon, where it costs less than the hop.
    # One per core beyond the first, at most 2; 0 fetches in the daemon only.
    fetch_workers: int = option(
        factory=_default_fetch_workers,
        spec=Option(
            "processes that run HTTPS readahead beside the daemon's thread; 0: none",
            parse=int,
            metavar="N",
            default_text="cores - 1, at most 2",
        ),
    )
    # Readahead window limit per sequential stream (see readahead/pattern.py).
    max_readahead: int = option(64 * MiB, _size("largest readahead window of one sequential stream"))
    # Prefetched bytes in flight across the whole mount: bounds memory however many files are open.
    max_inflight: int = option(256 * MiB, _size("prefetched bytes in flight across the mount"))
    # On the first open of a zip, MP4/MOV or Parquet file, prefetch the index its readers start with.
    format_prefetch: bool = option(
        True,
        Option(
            "do not prefetch zip directories, MP4 moov boxes and Parquet footers on first open",
            flag=True,
            name="no-format-prefetch",
        ),
    )
    # Seconds a probe result (size, ETag, Last-Modified) serves listings (getattr), also across remounts, without
    # a request; 5 minutes is what rclone uses for its directory cache.
    metadata_ttl: float = option(
        300.0, _seconds("seconds a stored probe result (size, version) serves listings without a request")
    )
    # Close-to-open consistency: an open revalidates a file whose metadata is older than this many seconds, so
    # it sees any change made at the origin longer ago than that. 1 s lets a tool that opens a file several
    # times in a row (or right after `ls -l` probed it) pay one round trip, not one per open.
    revalidate_after: float = option(
        1.0,
        _seconds("an open revalidates a file whose metadata is older than this, so it sees changes made before then"),
    )
    # The kernel's readahead for the mount (bdi read_ahead_kb; root only): the kernel's own readahead window
    # grows to this, in reads of up to 1 MiB. Measured: 1 MiB gives ~10 % more sequential throughput than
    # 256 KiB, but its ramp reads up to 2 blocks past what a seeking video player needs (ffmpeg -ss: 4 MiB
    # instead of 1-2); our readahead does the sequential work anyway. None leaves the kernel's 128 KiB.
    kernel_readahead: int | None = option(
        256 * KiB, _size_or_none("the kernel's readahead for the mount, root only; 0 keeps the kernel's")
    )
    # Longest single range request built from adjacent missing blocks of one demand read.
    max_request_size: int = option(8 * MiB)
    # Size of one prefetch request: large enough that httpx's ~1.3 ms per request is noise (<2 % at
    # 600 MiB/s), small enough that a window is spread over several connections.
    prefetch_part_size: int = option(8 * MiB)
    # Concurrent probes at mount time: enough to hide round trips for long URL lists, few enough not to look
    # like an attack to one origin.
    probe_concurrency: int = option(32)
    # Seconds the kernel may cache attributes and directory entries (nothing changes them but a revalidation,
    # which invalidates explicitly).
    attr_timeout: float = option(300.0)
    # Serve the counters in the Prometheus text format here (metrics.py); None: no endpoint. A bare port is
    # loopback only: another address must be written out (config/listen.py), as nothing there authenticates.
    metrics_listen: ListenAddress | None = option(
        None,
        Option(
            "serve Prometheus metrics at http://ADDRESS:PORT/metrics; a bare PORT listens on 127.0.0.1 only",
            parse=parse_listen_address,
            metavar="[ADDRESS:]PORT",
        ),
    )
    # FUSE mount options (-o allow_other,...): the command line spells these with -o (config/options.py).
    fuse_options: frozenset[str] = option(frozenset())
    user_agent: str = option("rangefs")

    def __post_init__(self) -> None:
        if self.block_size < 4 * KiB or self.block_size > 64 * MiB or self.block_size % (4 * KiB):
            raise UsageError("--block-size must be a multiple of 4K between 4K and 64M")
        self.max_request_size = max(self.max_request_size, self.block_size)
        self.prefetch_part_size = max(self.prefetch_part_size, self.block_size)
        if self.timeout <= 0:
            raise UsageError("--timeout must be positive")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise UsageError("--connect-timeout and --read-timeout must be positive")
        self.connect_timeout = min(self.connect_timeout, self.timeout)
        self.read_timeout = min(self.read_timeout, self.timeout)
        if self.fetch_workers < 0:
            raise UsageError("--fetch-workers cannot be negative")
        if self.connections < 1:
            raise UsageError("--connections must be at least 1")
        if self.ca_bundle is not None:
            _check_ca_bundle(self.ca_bundle)
        if self.max_inflight < self.block_size:
            raise UsageError("--max-inflight must be at least one block")
        if self.metrics_listen is not None and importlib.util.find_spec("prometheus_client") is None:
            raise UsageError("--metrics-listen needs the prometheus-client package: pip install 'rangefs[metrics]'")
        for name in ("metadata_ttl", "revalidate_after"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} cannot be negative")
