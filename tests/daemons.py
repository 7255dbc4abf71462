"""Background rangefs daemons that tests know only by a pid file (``rangefs mount`` without --foreground,
mount(8)): ended by PID at teardown, their mounts lazily unmounted first."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.mounting import is_mounted

_EXIT_TIMEOUT = 15.0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            zombie = stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        # A zombie has exited, but only once its last thread is gone are its files (/dev/fuse) closed.
        return not zombie or len(os.listdir(f"/proc/{pid}/task")) > 1
    except FileNotFoundError:
        return False


def wait_for_exit(pid: int, timeout: float = _EXIT_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def kill_hard(pid: int) -> None:
    """kill -9, as the OOM killer would, and wait until the process is gone."""
    os.kill(pid, signal.SIGKILL)
    assert wait_for_exit(pid), f"process {pid} survived SIGKILL"


class DaemonTracker:
    """Every daemon a test starts is recorded here (by its pid file) and every mountpoint it used."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.mountpoints: list[Path] = []

    def watch(self, mountpoint: Path) -> Path:
        self.mountpoints.append(mountpoint)
        return mountpoint

    def pid_from(self, pid_file: Path) -> int:
        pid = int(pid_file.read_text())
        self.pids.add(pid)
        return pid

    def close(self) -> list[str]:
        """Unmount and end everything; returns what had to be forced (a test fails on it)."""
        forced = []
        for mountpoint in self.mountpoints:
            if is_mounted(mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True)
        for pid in self.pids:
            if pid_alive(pid) and not wait_for_exit(pid, timeout=5.0):
                forced.append(f"daemon {pid} did not exit after its unmount; killed it")
                os.kill(pid, signal.SIGKILL)
                wait_for_exit(pid)
        return forced
