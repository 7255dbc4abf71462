"""What the kernel has mounted where, read from /proc/self/mountinfo (proc(5)).

A line is ``ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS``; the
optional fields vary in number, so the filesystem type is found after the ``-`` separator. Reading this file
never touches the mount itself: it works on a dead FUSE mount (where stat() fails with ENOTCONN) and in a
daemon that has not started serving its own mount yet (where stat() would wait for itself).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_MOUNTINFO = Path("/proc/self/mountinfo")
# The kernel escapes space, tab, newline and backslash in paths as a backslash and three octal digits.
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    device: tuple[int, int]  # (major, minor)
    fstype: str  # e.g. "fuse.rangefs": FUSE mounts show "fuse." and their subtype


def find_mount(mountpoint: Path, mountinfo: Path = _MOUNTINFO) -> MountEntry | None:
    """The filesystem mounted at ``mountpoint`` (an absolute path without symlinks), the top one if stacked."""
    found = None
    for line in mountinfo.read_text().splitlines():
        entry = parse_line(line)
        if entry is not None and entry.mountpoint == str(mountpoint):
            found = entry
    return found


def parse_line(line: str) -> MountEntry | None:
    fields = line.split()
    try:
        separator = fields.index("-", 6)
        major, minor = fields[2].split(":")
        return MountEntry(_unescape(fields[4]), (int(major), int(minor)), _unescape(fields[separator + 1]))
    except (ValueError, IndexError):
        return None


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)
