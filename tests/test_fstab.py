"""fstab lines of type fuse.rangefs: mount(8) runs contrib/mount.fuse.rangefs, which hands the option list
to ``rangefs mount -o``; rangefs sorts it into its own options, mount(8)'s (dropped) and FUSE's.

The mount(8) tests use an fstab of their own (``mount -T FILE``), never /etc/fstab. mount(8) only looks for
helpers in /sbin, so the helper is installed there for the test and removed after (unless it was already
installed, identical); it runs the venv's rangefs through $RANGEFS (mount(8) clears PATH).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rangefs import mountopts
from rangefs.cli import parse_args
from rangefs.errors import UsageError
from tests.daemons import DaemonTracker, wait_for_exit
from tests.mounting import is_mounted, rangefs_command
from tests.origin import Origin, pattern_bytes

_HELPER_SOURCE = Path(__file__).parents[1] / "contrib" / "mount.fuse.rangefs"
_HELPER = Path("/sbin/mount.fuse.rangefs")
_DATA = pattern_bytes(2 * 1024 * 1024 + 7, seed=7)


def test_fstab_options_become_rangefs_options_and_fuse_options() -> None:
    args = parse_args([
        "mount", "urls.txt", "/mnt/x", "-o",
        "ro,_netdev,nofail,cache_dir=/srv/cache,allow_other,block_size=64K,no_format_prefetch,metadata_ttl=5",
        "-o", "x-systemd.automount,comment=x,noatime,log_level=debug,defaults,user",
    ])  # fmt: skip
    assert args.cache_dir == Path("/srv/cache")
    assert args.block_size == 64 * 1024
    assert args.format_prefetch is False
    assert args.metadata_ttl == 5.0
    assert args.log_level == "debug"
    assert args.fuse_options == ["allow_other,noatime"]


def test_plain_fuse_options_are_unchanged() -> None:
    assert parse_args(["mount", "u", "/m", "-o", "allow_other", "-o", "ro"]).fuse_options == ["allow_other"]
    assert parse_args(["mount", "u", "/m"]).fuse_options == []


def test_options_come_from_the_parser_so_a_new_one_needs_no_edit() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--brand-new-size")
    parser.add_argument("--brand-new-switch", action="store_true")
    parser.add_argument("--internal", help=argparse.SUPPRESS)
    options = mountopts.rangefs_options(parser)
    assert set(options) == {"brand_new_size", "brand_new_switch"}
    assert mountopts.split_options(["brand_new_size=3,brand_new_switch,internal=1"], options) == (
        ["--brand-new-size=3", "--brand-new-switch"],
        ["internal=1"],
    )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("cache_dir", "mount option cache_dir needs a value: cache_dir=..."),
        ("http2=yes", "mount option http2 takes no value: write just http2"),
    ],
)
def test_misused_options_are_usage_errors(item: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_args(["mount", "u", "/m", "-o", item])


def test_misused_option_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        rangefs_command("mount", str(tmp_path / "u"), str(tmp_path), "-o", "ro,block_size"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (1, "rangefs: mount option block_size needs a value: block_size=...\n")


@pytest.fixture
def helper() -> Iterator[Path]:
    """contrib/mount.fuse.rangefs installed where mount(8) looks for it, for this test only."""
    if os.geteuid() != 0:
        pytest.skip("mount(8) with an fstab line needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount(8) is not installed (Debian package mount)")
    if _HELPER.exists():
        if _HELPER.read_bytes() != _HELPER_SOURCE.read_bytes():
            pytest.skip(f"{_HELPER} is installed and differs from {_HELPER_SOURCE}; not replacing it")
        yield _HELPER  # installed by the user: leave it
        return
    shutil.copyfile(_HELPER_SOURCE, _HELPER)
    _HELPER.chmod(0o755)
    try:
        yield _HELPER
    finally:
        _HELPER.unlink(missing_ok=True)


def _mount_command(*args: str) -> subprocess.CompletedProcess[str]:
    rangefs = Path(sys.executable).parent / "rangefs"
    assert rangefs.is_file(), f"{rangefs} missing: is rangefs installed in the venv?"
    env = {**os.environ, "RANGEFS": str(rangefs)}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)


def _mount_table_line(mountpoint: Path) -> list[str]:
    with open("/proc/mounts") as mounts:
        lines = [line.split() for line in mounts if line.split()[1] == str(mountpoint)]
    assert len(lines) == 1, lines
    return lines[0]


def test_fstab_line_works_with_mount_mount_a_and_umount(
    helper: Path, origin: Origin, tmp_path: Path, daemons: DaemonTracker
) -> None:
    urls = tmp_path / "data.urls"
    urls.write_text(origin.add("/fstab.bin", _DATA) + "\n")
    mountpoint = daemons.watch(tmp_path / "mnt")
    mountpoint.mkdir()
    cache_dir, pid_file = tmp_path / "cache", tmp_path / "rangefs.pid"
    options = [
        "ro", "_netdev", "nofail", f"cache_dir={cache_dir}", "allow_other", f"pid_file={pid_file}",
        f"log_file={tmp_path / 'rangefs.log'}", "block_size=256K",
    ]  # fmt: skip
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# rangefs test\n{urls} {mountpoint} fuse.rangefs {','.join(options)} 0 0\n")
    expected = hashlib.sha256(_DATA).hexdigest()

    mounted = _mount_command("mount", "-T", str(fstab), str(mountpoint))
    assert mounted.returncode == 0, mounted.stderr
    first = daemons.pid_from(pid_file)
    source, _, fstype, mount_options, *_ = _mount_table_line(mountpoint)
    assert (source, fstype) == (str(urls), "fuse.rangefs")
    assert "allow_other" in mount_options.split(",")
    assert hashlib.sha256((mountpoint / "fstab.bin").read_bytes()).hexdigest() == expected
    assert (cache_dir / "index.sqlite3").exists(), "cache_dir= must reach rangefs"
    daemon_argv = Path(f"/proc/{first}/cmdline").read_bytes().split(b"\0")
    assert daemon_argv[daemon_argv.index(b"--block-size") + 1] == b"256K", daemon_argv

    again = _mount_command("mount", "-a", "-T", str(fstab))
    assert again.returncode == 0, again.stderr
    assert daemons.pid_from(pid_file) == first, "mount -a must see the entry is mounted (same source)"

    unmounted = _mount_command("umount", str(mountpoint))
    assert unmounted.returncode == 0, unmounted.stderr
    assert not is_mounted(mountpoint)
    assert wait_for_exit(first), "the daemon must exit after umount"

    remounted = _mount_command("mount", "-a", "-T", str(fstab))
    assert remounted.returncode == 0, remounted.stderr
    assert daemons.pid_from(pid_file) != first
    assert hashlib.sha256((mountpoint / "fstab.bin").read_bytes()).hexdigest() == expected
    assert _mount_command("umount", str(mountpoint)).returncode == 0
    assert not is_mounted(mountpoint)
