"""Kernel-side tuning of a FUSE mount that pyfuse3 cannot pass through libfuse: readahead and background reads.

The mount's backing device (bdi) takes ``read_ahead_kb``; with it above 1 MiB the kernel sends 1 MiB reads
(the most libfuse 3.14 negotiates) instead of 128 KiB ones, and keeps several in flight. ``max_background``
(FUSE's limit on concurrent readahead requests, default 12) can only be raised through fusectl, when it is
mounted at /sys/fs/fuse/connections. Both need root; without it the defaults stay and nothing fails.

The device number comes from /proc/self/mountinfo, never from stat() of the mountpoint: the daemon calling
stat() on its own mount before it serves requests would wait for itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rangefs.mountinfo import find_mount

log = logging.getLogger(__name__)

_BDI = Path("/sys/class/bdi")
_FUSECTL = Path("/sys/fs/fuse/connections")


def mount_device(mountpoint: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> tuple[int, int] | None:
    """(major, minor) of the filesystem mounted at ``mountpoint``, the most recent one if stacked."""
    entry = find_mount(mountpoint, mountinfo)
    return entry.device if entry else None


def tune(mountpoint: Path, *, readahead_bytes: int | None, max_background: int | None) -> dict[str, int]:
    """Apply what can be applied; returns what was set (for the log and statistics)."""
    applied: dict[str, int] = {}
    device = mount_device(mountpoint)
    if device is None:
        log.debug("kernel tuning: %s not found in mountinfo", mountpoint)
        return applied
    major, minor = device
    if readahead_bytes is not None:
        value = max(readahead_bytes // 1024, 4)
        if _write(_BDI / f"{major}:{minor}" / "read_ahead_kb", value):
            applied["read_ahead_kb"] = value
    if max_background is not None:
        connection = _FUSECTL / str(minor)
        if connection.is_dir() and _write(connection / "max_background", max_background):
            applied["max_background"] = max_background
            # Congestion starts at 3/4 of max_background by default; keep that proportion.
            _write(connection / "congestion_threshold", max_background * 3 // 4)
    return applied


def _write(path: Path, value: int) -> bool:
    try:
        path.write_text(f"{value}\n")
    except OSError as error:
        log.info("kernel tuning: cannot write %s to %s: %s", value, path, error.strerror)
        return False
    return True
