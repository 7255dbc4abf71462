"""Running under systemd: the unit file, the notify protocol and journald's log format.

systemd itself cannot run here (no init), so each piece the unit relies on is tested: ``systemd-analyze
verify`` for the unit, a datagram socket the test binds standing in for systemd's NOTIFY_SOCKET, stderr in a
file named by JOURNAL_STREAM standing in for the journal, and a restart on a mount left dead by kill -9.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rangefs.systemd import journal
from tests.daemons import DaemonTracker, kill_hard
from tests.mounting import is_mounted, rangefs_command, stop_process
from tests.origin import Origin, pattern_bytes

_UNIT = Path(__file__).parents[1] / "contrib" / "rangefs@.service"
_INSTALLED_RANGEFS = "/usr/local/bin/rangefs"
_DATA = pattern_bytes(1024 * 1024 + 5, seed=3)
_TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    text = _UNIT.read_text()
    # verify checks that ExecStart's program exists: point it at the venv's rangefs.
    assert f"ExecStart={_INSTALLED_RANGEFS} mount --foreground " in text
    unit = tmp_path / _UNIT.name
    unit.write_text(text.replace(_INSTALLED_RANGEFS, str(Path(sys.executable).parent / "rangefs")))
    instance = tmp_path / "rangefs@mnt-remote.service"  # a template is verified through an instance
    instance.symlink_to(unit.name)

    result = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True, timeout=60, check=False)

    # verify exits 0 on unknown keys and bad values, only warning about them: none may be printed.
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")
    service = _section(text, "Service")
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["on-failure"]


def _section(unit_text: str, name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    current = None
    for line in unit_text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == name and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's, and the NOTIFY_SOCKET value naming it."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "abstract":
        name = f"rangefs-test-{os.getpid()}-{id(receiver)}"
        receiver.bind(b"\0" + name.encode())
        value = "@" + name
    else:
        value = str(tmp_path / "notify.sock")
        receiver.bind(value)
    receiver.settimeout(20.0)
    with receiver:
        yield receiver, value


def _receive(receiver: socket.socket) -> dict[str, str]:
    message = receiver.recv(4096).decode()
    return dict(line.split("=", 1) for line in message.splitlines())


def _foreground(urls: Path, mountpoint: Path, tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = rangefs_command(
        "mount", str(urls), str(mountpoint), "--foreground", "--cache-dir", str(tmp_path / "cache"),
        "--log-file", str(tmp_path / "rangefs.log"), "--pid-file", str(tmp_path / "rangefs.pid"),
    )  # fmt: skip
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, env={**os.environ, **env})


@pytest.fixture
def urls(origin: Origin, tmp_path: Path) -> Path:
    urls = tmp_path / "urls.txt"
    urls.write_text(origin.add("/data.bin", _DATA) + "\n")
    return urls


def _assert_serving(mountpoint: Path) -> None:
    assert is_mounted(mountpoint)
    assert hashlib.sha256((mountpoint / "data.bin").read_bytes()).hexdigest() == hashlib.sha256(_DATA).hexdigest()


def test_foreground_mount_notifies_ready_once_live_then_stopping(
    urls: Path, tmp_path: Path, daemons: DaemonTracker, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, address = notify_socket
    mountpoint = daemons.watch(tmp_path / "mnt")
    mountpoint.mkdir()
    daemon = _foreground(urls, mountpoint, tmp_path, {"NOTIFY_SOCKET": address})
    daemons.pids.add(daemon.pid)
    try:
        ready = _receive(receiver)
        # Checked before anything else can happen: when READY=1 arrives the files are there.
        _assert_serving(mountpoint)
        assert ready == {
            "READY": "1",
            "STATUS": f"serving 1 files on {mountpoint}",
            "MAINPID": str(daemon.pid),
        }
        daemon.send_signal(signal.SIGTERM)  # systemctl stop
        assert _receive(receiver) == {"STOPPING": "1", "STATUS": f"unmounted {mountpoint}"}
        assert daemon.wait(timeout=15) == 0
    finally:
        if daemon.poll() is None:
            stop_process(daemon)


def test_background_mount_notifies_with_the_daemons_pid(
    urls: Path, tmp_path: Path, daemons: DaemonTracker, notify_socket: tuple[socket.socket, str]
) -> None:
    """For a unit that runs `rangefs mount` without --foreground (NotifyAccess=all): MAINPID is the daemon."""
    receiver, address = notify_socket
    mountpoint = daemons.watch(tmp_path / "mnt")
    mountpoint.mkdir()
    result = subprocess.run(
        rangefs_command(
            "mount", str(urls), str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
            "--log-file", str(tmp_path / "rangefs.log"), "--pid-file", str(tmp_path / "rangefs.pid"),
        ),
        env={**os.environ, "NOTIFY_SOCKET": address}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pid = daemons.pid_from(tmp_path / "rangefs.pid")
    assert _receive(receiver)["MAINPID"] == str(pid)
    assert subprocess.run(rangefs_command("umount", str(mountpoint)), check=False).returncode == 0
    assert _receive(receiver)["STOPPING"] == "1"


def test_restart_after_kill_9_clears_the_dead_mount_and_notifies_ready(
    urls: Path, tmp_path: Path, daemons: DaemonTracker, notify_socket: tuple[socket.socket, str]
) -> None:
    """What Restart=on-failure does after the OOM killer: the same ExecStart, on the dead mount."""
    receiver, address = notify_socket
    mountpoint = daemons.watch(tmp_path / "mnt")
    mountpoint.mkdir()
    first = _foreground(urls, mountpoint, tmp_path, {"NOTIFY_SOCKET": address})
    daemons.pids.add(first.pid)
    assert _receive(receiver)["READY"] == "1"
    kill_hard(first.pid)
    first.wait(timeout=10)
    with pytest.raises(OSError, match="Transport endpoint is not connected"):
        os.statvfs(mountpoint)
    # ExecStartPre=-/bin/mkdir -p %f must not stand in the way on the dead mount.
    assert subprocess.run(["mkdir", "-p", str(mountpoint)], check=False).returncode == 0

    second = _foreground(urls, mountpoint, tmp_path, {"NOTIFY_SOCKET": address})
    daemons.pids.add(second.pid)
    try:
        ready = _receive(receiver)
        _assert_serving(mountpoint)
        assert ready["MAINPID"] == str(second.pid)
        assert "was a dead rangefs mount (its daemon died): unmounted it" in (tmp_path / "rangefs.log").read_text()
    finally:
        stop_process(second)


@pytest.mark.parametrize("journal_stream", ["matching", "inherited", "unset"])
def test_log_format_for_journald(urls: Path, tmp_path: Path, daemons: DaemonTracker, journal_stream: str) -> None:
    """`<N>logger: message` when stderr is the journal's stream; timestamped lines otherwise. A child whose
    stderr went elsewhere inherits JOURNAL_STREAM: it must not count then."""
    mountpoint = daemons.watch(tmp_path / "mnt")
    mountpoint.mkdir()
    stderr_path, other = tmp_path / "stderr.txt", tmp_path / "other.txt"
    stderr_path.touch()
    other.touch()
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    if journal_stream != "unset":
        named = os.stat(stderr_path if journal_stream == "matching" else other)
        env["JOURNAL_STREAM"] = f"{named.st_dev}:{named.st_ino}"
    command = rangefs_command(
        "mount", str(urls), str(mountpoint), "--foreground", "--cache-dir", str(tmp_path / "cache"), "-v"
    )
    with open(stderr_path, "ab") as stderr:
        daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=stderr, env=env)
    daemons.pids.add(daemon.pid)
    try:
        _wait_mounted(mountpoint, daemon)
        # The kernel lists the mount before the daemon has answered FUSE's INIT; an unmount in between is
        # refused as busy (the daemon's own first stat is in flight). Live means it said so.
        deadline = time.monotonic() + 20
        while "mounted 1 files on" not in stderr_path.read_text():
            assert time.monotonic() < deadline, "the daemon never said it was mounted"
            time.sleep(0.02)
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True)
        assert daemon.wait(timeout=15) == 0
    finally:
        if daemon.poll() is None:
            stop_process(daemon)
    lines = stderr_path.read_text().splitlines()
    mounted = [line for line in lines if "mounted 1 files on" in line]
    assert len(mounted) == 1, lines
    if journal_stream == "matching":
        assert mounted[0].startswith(f"<6>rangefs.mount: mounted 1 files on {mountpoint} "), lines
        assert all(re.match(r"<[2-7]>\S+: ", line) for line in lines), lines
    else:
        assert _TIMESTAMPED.match(mounted[0]), lines
        assert not any(line.startswith("<") for line in lines), lines


def _wait_mounted(mountpoint: Path, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while not is_mounted(mountpoint):
        assert daemon.poll() is None, f"rangefs exited with {daemon.returncode}"
        assert time.monotonic() < deadline, "not mounted within 20 s"
        time.sleep(0.02)


@pytest.mark.parametrize(("level", "priority"), [(50, 2), (40, 3), (30, 4), (20, 6), (10, 7), (25, 6), (5, 7)])
def test_syslog_priorities(level: int, priority: int) -> None:
    assert journal.syslog_priority(level) == priority
