"""Checks before mounting: FUSE is there, the mountpoint can be used, and a dead rangefs mount on it (its
daemon was killed) is cleared first.

Apart from ``mount.py`` so that the command that starts a background mount can run them without importing
the engine, pyfuse3 and the HTTP client (the daemon does that).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path

from rangefs import mountinfo
from rangefs.errors import MountError

log = logging.getLogger(__name__)

# How a rangefs mount shows in /proc/self/mountinfo (FUSE prefixes the subtype "rangefs").
FSTYPE = "fuse.rangefs"
# What FUSE answers once its daemon is gone: ENOTCONN, or ECONNABORTED for a request it was sent as it died.
_DEAD_CONNECTION = frozenset({errno.ENOTCONN, errno.ECONNABORTED})


def check_fuse_available() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is not available: /dev/fuse is missing (load the fuse module or install fuse3)")
    if shutil.which("fusermount3") is None:
        raise MountError("FUSE is not available: fusermount3 not found (install the fuse3 package)")


def check_mountpoint(mountpoint: Path) -> None:
    """Refuse a mountpoint that is missing, not a directory, in use or not empty, with what to do.

    A dead rangefs mount there (its daemon was killed) is unmounted first, so a restart recovers by itself.
    """
    clear_dead_mount(mountpoint)
    try:
        if not mountpoint.exists():
            raise MountError(f"mountpoint {mountpoint} does not exist; create it with: mkdir -p {mountpoint}")
        if not mountpoint.is_dir():
            raise MountError(f"mountpoint {mountpoint} is not a directory")
        if os.path.ismount(mountpoint):
            raise MountError(f"{mountpoint} is already a mountpoint; unmount it first (rangefs umount {mountpoint})")
        if any(mountpoint.iterdir()):
            raise MountError(f"mountpoint {mountpoint} is not empty; mount on an empty directory")
    except OSError as error:
        if error.errno == errno.ENOTCONN:
            raise MountError(f"{mountpoint} is inside a FUSE mount whose daemon died; unmount that first") from None
        raise MountError(f"cannot use mountpoint {mountpoint}: {error.strerror}") from None


def clear_dead_mount(mountpoint: Path) -> bool:
    """Unmount a rangefs mount at ``mountpoint`` whose daemon died; True if there was one.

    The kernel answers every request to a mount whose daemon is gone with ENOTCONN, but what it has
    cached: stat() of the mountpoint may still succeed (attributes are cached for minutes), statvfs() is never
    cached, so it is the probe. The type comes from /proc/self/mountinfo, and only rangefs's own dead mounts
    are touched. A plain unmount fails while processes still hold files of the dead mount open (EBUSY); then
    it is detached lazily, which frees the mountpoint at once (the old files keep failing).
    """
    target = Path(os.path.realpath(mountpoint))
    entry = mountinfo.find_mount(target)
    if entry is None:
        return False
    try:
        os.statvfs(target)
        return False  # alive: check_mountpoint refuses it as in use
    except OSError as error:
        if error.errno not in _DEAD_CONNECTION:
            return False
    if entry.fstype != FSTYPE:
        raise MountError(
            f"{mountpoint} is a dead {entry.fstype} mount (its daemon died), not rangefs's, so rangefs leaves it"
            f" alone; unmount it with: fusermount3 -u {mountpoint}"
        )
    for lazy in (False, True):
        command = ["fusermount3", "-u", *(["-z"] if lazy else []), str(target)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            how = " lazily, as files of it are still open" if lazy else ""
            log.warning("%s was a dead rangefs mount (its daemon died): unmounted it%s", mountpoint, how)
            return True
    reason = result.stderr.strip().removeprefix("fusermount3: ") or f"exit code {result.returncode}"
    raise MountError(f"{mountpoint} is a dead rangefs mount and cannot be unmounted: {reason}")
