"""A mount whose daemon was killed (kill -9, the OOM killer) is cleared by the next ``rangefs mount``.

The dead mount answers ENOTCONN ("Transport endpoint is not connected"); rangefs unmounts it when
/proc/self/mountinfo says it is rangefs's own (lazily if files of it are still open) and mounts afresh.
A dead mount of another FUSE filesystem is refused and left alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemons import DaemonTracker, kill_hard
from tests.mounting import is_mounted, rangefs_command
from tests.origin import Origin, pattern_bytes

_SIZE = 3 * 1024 * 1024 + 123  # several blocks and a partial one
_DATA = pattern_bytes(_SIZE, seed=41)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(rangefs_command(*args), capture_output=True, text=True, timeout=60, check=False)


def _mount_in_background(urls: Path, mountpoint: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return _run(
        "mount", str(urls), str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
        "--log-file", str(tmp_path / "rangefs.log"), "--pid-file", str(tmp_path / "rangefs.pid"),
    )  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_dead(mountpoint: Path) -> None:
    with pytest.raises(OSError) as raised:
        os.statvfs(mountpoint)
    assert raised.value.errno == errno.ENOTCONN
    assert is_mounted(mountpoint), "a dead mount stays in the mount table"


@pytest.fixture
def urls(origin: Origin, tmp_path: Path) -> Path:
    urls = tmp_path / "urls.txt"
    urls.write_text(origin.add("/data.bin", _DATA) + "\n")
    return urls


@pytest.mark.parametrize("file_held_open", [False, True], ids=["idle", "file-held-open"])
def test_mount_over_a_killed_mount_recovers(
    urls: Path, tmp_path: Path, daemons: DaemonTracker, file_held_open: bool
) -> None:
    mountpoint = daemons.watch(tmp_path / "mnt")
    mountpoint.mkdir()
    pid_file = tmp_path / "rangefs.pid"
    first = _mount_in_background(urls, mountpoint, tmp_path)
    assert first.returncode == 0, first.stderr
    killed = daemons.pid_from(pid_file)
    held = os.open(mountpoint / "data.bin", os.O_RDONLY) if file_held_open else None
    try:
        kill_hard(killed)
        _assert_dead(mountpoint)

        second = _mount_in_background(urls, mountpoint, tmp_path)

        assert second.returncode == 0, second.stderr
        assert "was a dead rangefs mount (its daemon died): unmounted it" in second.stderr
        assert ("lazily" in second.stderr) == file_held_open, second.stderr
        assert len(second.stderr.splitlines()) == 1, second.stderr
        assert daemons.pid_from(pid_file) != killed
        assert _sha256(mountpoint / "data.bin") == hashlib.sha256(_DATA).hexdigest()
        if held is not None:
            # The detached old mount never serves a byte again, right or wrong.
            with pytest.raises(OSError) as raised:
                os.pread(held, 4096, 0)
            assert raised.value.errno == errno.ENOTCONN
    finally:
        if held is not None:
            with contextlib.suppress(OSError):  # the flush to a dead daemon fails; the fd is closed anyway
                os.close(held)
    assert _run("umount", str(mountpoint)).returncode == 0
    assert not is_mounted(mountpoint)


def test_umount_clears_a_dead_mount(urls: Path, tmp_path: Path, daemons: DaemonTracker) -> None:
    mountpoint = daemons.watch(tmp_path / "mnt")
    mountpoint.mkdir()
    assert _mount_in_background(urls, mountpoint, tmp_path).returncode == 0
    kill_hard(daemons.pid_from(tmp_path / "rangefs.pid"))
    _assert_dead(mountpoint)

    result = _run("umount", str(mountpoint))

    assert result.returncode == 0, result.stderr
    assert not is_mounted(mountpoint)
    assert list(mountpoint.iterdir()) == []


# A FUSE filesystem that is not rangefs: mounted with another subtype, it serves nothing.
_OTHER_FS = """
import sys, pyfuse3, trio
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], {"fsname=other", "subtype=otherfs"})
trio.run(pyfuse3.main)
"""


def test_dead_mount_of_another_filesystem_is_refused(urls: Path, tmp_path: Path, daemons: DaemonTracker) -> None:
    mountpoint = daemons.watch(tmp_path / "mnt")
    mountpoint.mkdir()
    other = subprocess.Popen([sys.executable, "-c", _OTHER_FS, str(mountpoint)], stderr=subprocess.PIPE)
    daemons.pids.add(other.pid)
    deadline = time.monotonic() + 20
    while not is_mounted(mountpoint):
        assert other.poll() is None, other.stderr.read() if other.stderr else ""
        assert time.monotonic() < deadline, "the other filesystem did not mount"
        time.sleep(0.02)
    kill_hard(other.pid)
    other.wait(timeout=10)
    _assert_dead(mountpoint)

    result = _mount_in_background(urls, mountpoint, tmp_path)

    assert result.returncode == 1
    assert result.stderr == (
        f"rangefs: {mountpoint} is a dead fuse.otherfs mount (its daemon died), not rangefs's, so rangefs leaves"
        f" it alone; unmount it with: fusermount3 -u {mountpoint}\n"
    )
    _assert_dead(mountpoint)  # untouched
    if other.stderr:
        other.stderr.close()
