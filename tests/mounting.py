"""Run the real ``rangefs mount`` CLI for tests and always clean up: unmount, then end the daemon by PID."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_MOUNT_TIMEOUT = 20.0
_EXIT_TIMEOUT = 15.0
_BAD_LOG_LINE = re.compile(r" (ERROR|CRITICAL) |Traceback")


def rangefs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rangefs", *args]


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 10.0) -> None:
    """End a process we started, by its PID: SIGTERM, then SIGKILL if it does not exit within ``grace``."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


def read_direct(path: Path, offset: int, length: int) -> bytes:
    """One pread with O_DIRECT: it reaches the daemon as asked, instead of being rounded by the page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


@dataclass
class Mount:
    """A foreground rangefs daemon serving ``path``; the test owns its PID."""

    path: Path
    cache_dir: Path
    log_file: Path
    process: subprocess.Popen[bytes]
    extra_args: tuple[str, ...] = ()
    allowed_log_patterns: list[str] = field(default_factory=list)

    def log_text(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def output_text(self) -> str:
        output = self.log_file.with_suffix(".out")
        return output.read_text() if output.exists() else ""

    def unmount(self) -> None:
        """Unmount and wait for the daemon to exit; kill it by PID only if it will not."""
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False, capture_output=True)
        try:
            self.process.wait(timeout=_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=_EXIT_TIMEOUT)
            raise AssertionError(f"rangefs daemon {self.process.pid} did not exit after unmount") from None

    def unexpected_log_lines(self) -> list[str]:
        text = self.log_text() + self.output_text()
        lines = [line for line in text.splitlines() if _BAD_LOG_LINE.search(line)]
        return [line for line in lines if not any(re.search(p, line) for p in self.allowed_log_patterns)]


def _foreground_command(urls_file: Path, mountpoint: Path, cache_dir: Path, log_file: Path, *extra: str) -> list[str]:
    return rangefs_command(
        "mount", str(urls_file), str(mountpoint), "--foreground", "--cache-dir", str(cache_dir),
        "--log-file", str(log_file), "-v", *extra,
    )  # fmt: skip


def start_mount(urls_file: Path, mountpoint: Path, cache_dir: Path, log_file: Path, *extra_args: str) -> Mount:
    """Start ``rangefs mount --foreground`` and wait until the kernel shows the mount."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    command = _foreground_command(urls_file, mountpoint, cache_dir, log_file, *extra_args)
    # The daemon's own stdout/stderr (tracebacks that escape logging) land beside its log.
    with open(log_file.with_suffix(".out"), "ab") as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    mount = Mount(mountpoint, cache_dir, log_file, process, extra_args)
    deadline = time.monotonic() + _MOUNT_TIMEOUT
    while not is_mounted(mountpoint):
        if process.poll() is not None:
            raise AssertionError(f"rangefs exited with {process.returncode} before mounting: {mount.output_text()}")
        if time.monotonic() > deadline:
            mount.unmount()
            raise AssertionError(f"{mountpoint} not mounted after {_MOUNT_TIMEOUT} s")
        time.sleep(0.02)
    return mount


@contextmanager
def mounted_in_namespace(
    namespace: str, urls_file: Path, mountpoint: Path, cache_dir: Path, log_file: Path, *extra_args: str
) -> Iterator[Path]:
    """Run ``rangefs mount --foreground`` inside network namespace ``namespace`` (``ip netns exec``, which gives
    it a mount namespace of its own, so the mount is not visible here); yields the mount as the daemon sees it,
    through /proc/PID/root. The daemon is ended by its PID (SIGTERM unmounts) however the block exits, and the
    block fails if it logged an error."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    command = _foreground_command(urls_file, mountpoint, cache_dir, log_file, *extra_args)
    with open(log_file.with_suffix(".out"), "ab") as output:
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *command], stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    try:
        deadline = time.monotonic() + _MOUNT_TIMEOUT
        while not _mounted_for(process.pid, mountpoint):
            if process.poll() is not None:
                raise AssertionError(f"rangefs exited with {process.returncode} before mounting")
            if time.monotonic() > deadline:
                raise AssertionError(f"{mountpoint} not mounted in {namespace} after {_MOUNT_TIMEOUT} s")
            time.sleep(0.02)
        yield Path(f"/proc/{process.pid}/root") / mountpoint.relative_to("/")
    finally:
        stop_process(process, grace=_EXIT_TIMEOUT)
    text = "".join(path.read_text() for path in (log_file, log_file.with_suffix(".out")) if path.exists())
    bad = [line for line in text.splitlines() if _BAD_LOG_LINE.search(line)]
    assert not bad, "\n".join(bad)


def _mounted_for(pid: int, mountpoint: Path) -> bool:
    """Whether process ``pid`` sees a mount on ``mountpoint`` (in its own mount namespace)."""
    try:
        with open(f"/proc/{pid}/mounts") as mounts:
            return any(line.split()[1] == str(mountpoint) for line in mounts)
    except OSError:
        return False
