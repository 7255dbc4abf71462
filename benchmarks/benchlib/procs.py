"""Processes, mounts and the page cache: everything started is ended by its PID, every wait is bounded.

Nothing here touches a FUSE mount from this process: stat, reads and getxattr on a mount run in child
processes with a timeout, so a hung daemon can stall a step but never the benchmark.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


@dataclass
class Completed:
    """A finished (or timed-out) command."""

    argv: Sequence[str]
    returncode: int | None  # None: timed out and killed
    seconds: float
    stdout: str
    stderr: str
    cpu_seconds: float | None = None  # user + system time of the command (and any children it waited for)

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def problem(self) -> str:
        """A short reason for a failed command, for a table cell."""
        if self.timed_out:
            return f"timeout ({self.seconds:.0f} s)"
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        last = lines[-1][:80] if lines else ""
        return f"failed (exit {self.returncode}{': ' + last if last else ''})"


def run(argv: Sequence[str], timeout: float, *, env: dict[str, str] | None = None, cwd: str | None = None) -> Completed:
    """Run a command to completion or until ``timeout`` seconds; a timed-out child is killed by its PID."""
    started = time.monotonic()
    cpu_before = _children_cpu()
    with subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    ) as child:
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = _collect_after_kill(child)
            return Completed(argv, None, time.monotonic() - started, stdout, stderr)
    cpu = _children_cpu() - cpu_before
    return Completed(argv, child.returncode, time.monotonic() - started, stdout, stderr, cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _collect_after_kill(child: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return child.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        return "", "did not exit after SIGKILL within 10 s"


@contextlib.contextmanager
def started(
    argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running process with output to ``log_path``; it is ended by its PID on the way out."""
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield child
    finally:
        stop(child)


def wait_exit(child: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait (bounded) for a child to exit by itself; whether it did."""
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def stop(child: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: by the child's PID only."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(10)


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False when not allowed (not root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def mounts() -> list[tuple[str, str]]:
    """(mountpoint, filesystem type) from /proc/mounts (reads no FUSE filesystem)."""
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2:
            path = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            found.append((path, fields[2]))
    return found


def mounted_paths() -> set[str]:
    return {path for path, _kind in mounts()}


def is_mounted(path: Path) -> bool:
    return str(path) in mounted_paths()


def wait_mounted(path: Path, child: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Wait until ``path`` is a mountpoint; the reason it did not become one, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(path):
            return None
        if child.poll() is not None:
            return f"daemon exited with code {child.returncode} before mounting"
        time.sleep(0.05)
    return f"not mounted after {timeout:.0f} s"


def unmount(path: Path) -> str | None:
    """``fusermount3 -u``, then ``-uz`` if that fails; None once unmounted, else what went wrong."""
    if not is_mounted(path):
        return None
    result = run(["fusermount3", "-u", str(path)], timeout=30)
    if result.ok and not is_mounted(path):
        return None
    lazy = run(["fusermount3", "-uz", str(path)], timeout=30)
    if lazy.ok and not is_mounted(path):
        return f"needed a lazy unmount ({result.problem()})"
    return f"could not unmount: {lazy.problem()}"


def free_port() -> int:
    """A port on 127.0.0.1 that is free now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_port(port: int, child: subprocess.Popen[bytes], timeout: float, host: str = LOOPBACK) -> str | None:
    """Wait until host:port accepts connections; the reason it did not, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return f"exited with code {child.returncode}"
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return None
        time.sleep(0.05)
    return f"{host}:{port} not accepting after {timeout:.0f} s"


def wait_for_text(path: Path, text: str, child: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until ``text`` appears in the file at ``path`` (a log), while ``child`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if text in path.read_text(errors="replace"):
                return True
        if child.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def read_pid_file(path: Path, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip())
        time.sleep(0.05)
    return None


def _status_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a running process has used so far, with that of the children it has reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its living descendants (a daemon's worker processes), by the parent PIDs in /proc/*/stat
    (this kernel has no /proc/PID/task/TID/children)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending += children.get(current, [])
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and of its descendants: the living ones' own and the reaped ones' (through
    their parents), so workers that come and go are counted too."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(child) or 0.0 for child in process_tree(pid)[1:])


class RssMonitor:
    """Polls the summed VmRSS of a process and its descendants in a thread, every 0.1 s (a scan of /proc costs
    ~1.6 ms); ``peak_mib`` is the largest sum seen, or the root's VmHWM if larger (a peak between two polls).
    Also measures the CPU time the process tree used while monitored, and how many processes it had at most."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.cpu_seconds: float | None = None
        self.processes = 0
        self._cpu_start: float | None = None
        self.interval = interval
        self._peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> RssMonitor:
        self._cpu_start = tree_cpu_seconds(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        self._peak_kib = max(self._peak_kib, _status_kib(self.pid, "VmHWM") or 0)
        end = tree_cpu_seconds(self.pid)
        if self._cpu_start is not None and end is not None:
            self.cpu_seconds = end - self._cpu_start

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        tree = process_tree(self.pid)
        self.processes = max(self.processes, len(tree))
        self._peak_kib = max(self._peak_kib, sum(_status_kib(pid, "VmRSS") or 0 for pid in tree))

    @property
    def peak_mib(self) -> float | None:
        return self._peak_kib / 1024 if self._peak_kib else None
