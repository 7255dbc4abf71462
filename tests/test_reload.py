"""Reloading the urls file of a live mount: `rangefs reload` and SIGHUP, through a real mount."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import MountFactory
from tests.mounting import Mount, is_mounted, rangefs_command
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024


def _urls_file(mounted: Mount) -> Path:
    return mounted.path.parent / f"urls-{mounted.path.name.rpartition('-')[2]}.txt"


def _reload(mounted: Mount) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        rangefs_command("reload", str(mounted.path)), capture_output=True, text=True, timeout=60, check=False
    )


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_reload_adds_removes_and_changes_entries_and_open_handles_of_removed_ones_read_on(
    origin: Origin, mount_factory: MountFactory
) -> None:
    kept, removed, old, new, added = (pattern_bytes(2 * MiB + 17, seed=seed) for seed in range(31, 36))
    urls = {name: origin.add(f"/{name}", data) for name, data in [("kept.bin", kept), ("removed.bin", removed),
            ("old.bin", old), ("new.bin", new), ("added.bin", added)]}  # fmt: skip
    mounted = mount_factory([urls["kept.bin"], urls["removed.bin"], f"changed.bin {urls['old.bin']}"])
    root = mounted.path
    assert (root / "changed.bin").read_bytes() == old  # its pages are now in the kernel's cache
    assert (root / "kept.bin").read_bytes() == kept
    kept_inode = (root / "kept.bin").stat().st_ino
    kept_gets = len(origin.requests_for("/kept.bin"))
    handle = open(root / "removed.bin", "rb")  # noqa: SIM115 - held open across the reload
    try:
        first_half = handle.read(MiB)
        _urls_file(mounted).write_text(
            "# lines above every entry moved: an unchanged entry stays the same file\n\n"
            f"{urls['kept.bin']}\nchanged.bin {urls['new.bin']}\nsub/dir/added.bin {urls['added.bin']}\n"
        )
        result = _reload(mounted)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "reloaded: 1 added, 1 removed, 1 changed"

        # At once, without waiting for any cache timeout: the kernel was told.
        assert sorted(os.listdir(root)) == ["changed.bin", "kept.bin", "sub"]
        assert not (root / "removed.bin").exists()
        assert _digest((root / "changed.bin").read_bytes()) == _digest(new)  # not the old version's pages
        assert _digest((root / "sub" / "dir" / "added.bin").read_bytes()) == _digest(added)
        assert (root / "kept.bin").stat().st_ino == kept_inode
        assert (root / "kept.bin").read_bytes() == kept
        assert len(origin.requests_for("/kept.bin")) == kept_gets  # still its pages and blocks

        assert _digest(first_half + handle.read()) == _digest(removed)
    finally:
        handle.close()
    assert not (root / "removed.bin").exists()
    stats = subprocess.run(rangefs_command("stats", "--json", str(root)), capture_output=True, text=True, check=True)
    assert '"files": 3' in stats.stdout and '"open_handles": 0' in stats.stdout


def test_sighup_reloads_and_does_not_unmount(origin: Origin, mount_factory: MountFactory, tmp_path: Path) -> None:
    first, second = pattern_bytes(MiB, seed=37), pattern_bytes(MiB, seed=38)
    first_url, second_url = origin.add("/first.bin", first), origin.add("/second.bin", second)
    pid_file = tmp_path / "rangefs.pid"
    mounted = mount_factory([first_url], "--pid-file", str(pid_file))
    _urls_file(mounted).write_text(f"{first_url}\n{second_url}\n")
    os.kill(int(pid_file.read_text()), signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not (mounted.path / "second.bin").exists():
        assert time.monotonic() < deadline, "SIGHUP did not reload the urls file within 10 s"
        time.sleep(0.05)
    assert (mounted.path / "second.bin").read_bytes() == second
    assert (mounted.path / "first.bin").read_bytes() == first
    assert is_mounted(mounted.path) and mounted.process.poll() is None
    assert "received SIGHUP, reloading" in mounted.log_text()


def test_a_broken_urls_file_keeps_the_old_tree_and_reload_names_each_problem(
    origin: Origin, mount_factory: MountFactory
) -> None:
    data = pattern_bytes(MiB, seed=39)
    url = origin.add("/data.bin", data)
    mounted = mount_factory([url])
    urls_file = _urls_file(mounted)
    urls_file.write_text(f"{url}\nftp://example.invalid/x\nother.bin {url}\n  colour = red\n")
    result = _reload(mounted)
    assert result.returncode == 2
    assert f"{urls_file}:2: invalid URL 'ftp://example.invalid/x'" in result.stderr
    assert f"{urls_file}:4: unknown option 'colour'" in result.stderr
    assert os.listdir(mounted.path) == ["data.bin"]
    assert (mounted.path / "data.bin").read_bytes() == data
    assert f"reload: {urls_file}:2: invalid URL" in mounted.log_text()

    urls_file.write_text(f"{url}\nother.bin {url}\n")  # fixed: the next reload applies it
    assert _reload(mounted).returncode == 0
    assert sorted(os.listdir(mounted.path)) == ["data.bin", "other.bin"]


def test_reload_of_a_directory_that_is_not_a_mount(tmp_path: Path) -> None:
    result = subprocess.run(rangefs_command("reload", str(tmp_path)), capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert f"{tmp_path} is not a running rangefs mount" in result.stderr
