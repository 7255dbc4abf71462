"""Bad input gets one clear line and a non-zero exit; nothing is mounted."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import MountFactory
from tests.mounting import is_mounted, rangefs_command
from tests.origin import Origin, pattern_bytes


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(rangefs_command(*args), capture_output=True, text=True, timeout=60, env=env, check=False)


def test_a_long_list_of_problems_reaches_the_command_from_the_daemon(tmp_path: Path) -> None:
    """A background mount's daemon parses the file (once) and sends its problems back through the ready pipe:
    more than a pipe's buffer of them arrive, shortened to the first thousand."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"ftp://example.invalid/{number:05}-{'x' * 80}\n" for number in range(1500)))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = _run("mount", str(urls), str(mountpoint))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1001, lines[-3:]
    assert lines[0].startswith(f"rangefs: {urls}:1: invalid URL")
    assert lines[999].startswith(f"{urls}:1000: invalid URL")
    assert lines[1000] == f"{urls}: ... and 500 more problems"
    assert not is_mounted(mountpoint)


def test_malformed_urls_file_reports_every_bad_line(tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(
        "# a comment\n"
        "https://example.invalid/good.bin\n"
        "ftp://example.invalid/x\n"
        "../escape https://example.invalid/y\n"
        "good.bin https://example.invalid/other\n"
        "https://example.invalid/z\n"
        "    colour = blue\n"
    )
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = _run("mount", str(urls), str(mountpoint))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"rangefs: {urls}:3: invalid URL")
    assert any(line.startswith(f"{urls}:4: path '../escape' is unsafe") for line in lines)
    assert any(line.startswith(f"{urls}:5: duplicate path 'good.bin'") for line in lines)
    assert any(line.startswith(f"{urls}:7: unknown option 'colour'") for line in lines)
    assert "Traceback" not in result.stderr
    assert not is_mounted(mountpoint)


def test_unset_environment_variable_is_reported(tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("https://example.invalid/a.bin\n  header = Authorization: Bearer ${RANGEFS_TEST_UNSET}\n")
    (tmp_path / "mnt").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RANGEFS_TEST_UNSET"}
    result = _run("mount", str(urls), str(tmp_path / "mnt"), env=env)
    assert result.returncode == 2
    assert f"{urls}:2: environment variable RANGEFS_TEST_UNSET is not set" in result.stderr


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x"), "is not a directory"),
        (lambda p: (p.mkdir(), (p / "f").write_text("x")), "is not empty"),
    ],
)
def test_bad_mountpoints(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    urls = tmp_path / "urls.txt"
    urls.write_text("https://example.invalid/a.bin\n")
    mountpoint = tmp_path / "mnt"
    make(mountpoint)
    result = _run("mount", str(urls), str(mountpoint))
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_busy_mountpoint_is_refused(origin: Origin, mount_factory: MountFactory, tmp_path: Path) -> None:
    url = origin.add("/a.bin", b"abc")
    mounted = mount_factory([url])
    urls = tmp_path / "again.txt"
    urls.write_text(url + "\n")
    result = _run("mount", str(urls), str(mounted.path))
    assert result.returncode == 1
    assert "already a mountpoint" in result.stderr


def test_writes_fail_with_erofs(origin: Origin, mount_factory: MountFactory) -> None:
    url = origin.add("/ro.bin", b"read only")
    mounted = mount_factory([url, f"sub/x.bin {url}"])
    target = mounted.path / "ro.bin"
    attempts = [
        lambda: os.open(target, os.O_RDWR),
        lambda: os.open(mounted.path / "new.bin", os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(mounted.path / "d"),
        lambda: os.unlink(target),
        lambda: os.rename(target, mounted.path / "renamed"),
        lambda: os.truncate(target, 0),
        lambda: os.chmod(target, 0o666),
        lambda: os.setxattr(target, "user.x", b"1"),
        lambda: os.rmdir(mounted.path / "sub"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as raised:
            attempt()
        assert raised.value.errno == errno.EROFS
    assert target.read_bytes() == b"read only"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dead_and_missing_urls_mount_but_reads_fail_with_eio(origin: Origin, mount_factory: MountFactory) -> None:
    good = origin.add("/good.bin", pattern_bytes(1000))
    dead = f"http://127.0.0.1:{_closed_port()}/dead.bin"
    mounted = mount_factory([good, dead, f"gone.bin {origin.url('/gone.bin')}"])
    mounted.allowed_log_patterns.append("WARNING")
    started = time.monotonic()
    names = sorted(os.listdir(mounted.path))
    assert names == ["dead.bin", "gone.bin", "good.bin"]
    assert (mounted.path / "good.bin").stat().st_size == 1000
    for path in (mounted.path / "dead.bin", mounted.path / "gone.bin"):
        for attempt in (path.stat, path.read_bytes):
            with pytest.raises(OSError) as raised:  # nothing is known of them: not shown as empty files
                attempt()
            assert raised.value.errno == errno.EIO
    assert time.monotonic() - started < 10, "listing must not hang on a dead host"
    assert (mounted.path / "good.bin").read_bytes() == pattern_bytes(1000)
    log = mounted.log_text()
    assert f"{dead} failed: connection refused by 127.0.0.1:" in log
    assert f"{origin.url('/gone.bin')} failed: HTTP status 404" in log


def test_file_that_comes_back_is_readable_without_remount(origin: Origin, mount_factory: MountFactory) -> None:
    mounted = mount_factory([f"later.bin {origin.url('/later.bin')}"])
    mounted.allowed_log_patterns.append("WARNING")
    with pytest.raises(OSError):
        (mounted.path / "later.bin").read_bytes()
    origin.add("/later.bin", b"now it exists")
    time.sleep(1.2)  # README: a failed file is probed again at most once per --revalidate-after (1 s)
    assert (mounted.path / "later.bin").read_bytes() == b"now it exists"
    assert (mounted.path / "later.bin").stat().st_size == len(b"now it exists")


def test_background_mount_returns_once_live_and_umount_ends_it(origin: Origin, tmp_path: Path) -> None:
    url = origin.add("/bg.bin", pattern_bytes(5000))
    urls = tmp_path / "urls.txt"
    urls.write_text(url + "\n")
    mountpoint, pid_file = tmp_path / "mnt", tmp_path / "rangefs.pid"
    mountpoint.mkdir()
    result = _run(
        "mount", str(urls), str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
        "--log-file", str(tmp_path / "bg.log"), "--pid-file", str(pid_file),
    )  # fmt: skip
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        assert result.returncode == 0, result.stderr
        assert "probing" not in result.stderr, "one file: nothing to announce"
        assert is_mounted(mountpoint), "mount must be live when the command returns"
        assert (mountpoint / "bg.bin").read_bytes() == pattern_bytes(5000)
        assert _run("umount", str(mountpoint)).returncode == 0
        assert not is_mounted(mountpoint)
        deadline = time.monotonic() + 15
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid is not None and not _alive(pid), "the daemon must exit after umount"
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        if pid is not None and _alive(pid):
            os.kill(pid, 9)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_umount_of_something_not_mounted_says_so(tmp_path: Path) -> None:
    result = _run("umount", str(tmp_path))
    assert result.returncode == 1
    assert "cannot unmount" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly_and_removes_the_pid_file(origin: Origin, tmp_path: Path, signum: int) -> None:
    url = origin.add("/sig.bin", b"signals")
    urls, mountpoint, pid_file = tmp_path / "urls.txt", tmp_path / "mnt", tmp_path / "pid"
    urls.write_text(url + "\n")
    mountpoint.mkdir()
    command = rangefs_command(
        "mount", str(urls), str(mountpoint), "--foreground", "--cache-dir", str(tmp_path / "cache"),
        "--pid-file", str(pid_file), "--log-file", str(tmp_path / "log"),
    )  # fmt: skip
    daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not is_mounted(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (mountpoint / "sig.bin").read_bytes() == b"signals"
        daemon.send_signal(signum)
        assert daemon.wait(timeout=15) == 0
        assert not is_mounted(mountpoint)
        assert not pid_file.exists()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
