"""Long URL lists: probing order and what a listing waits for, through a real mount."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from tests import faults
from tests.conftest import MountFactory
from tests.daemons import kill_hard, wait_for_exit
from tests.mounting import is_mounted, rangefs_command
from tests.origin import Origin

_FILES = 400


def test_a_file_stat_before_its_turn_is_probed_at_once(origin: Origin, mount_factory: MountFactory) -> None:
    """Probes run from a queue of a few workers; a file someone asks for jumps it rather than waiting for
    every probe listed before it (0.1 made `stat` of the last of 10,000 files wait for all of them)."""
    urls = []
    for number in range(_FILES):
        path = f"/many/f{number:04}.bin"
        urls.append(origin.add(path, b"%d" % number))
        origin.faults[path] = faults.only(("HEAD",), faults.slow_first_byte(0.1))
    mounted = mount_factory(urls)
    assert os.stat(mounted.path / f"f{_FILES - 1:04}.bin").st_size == len(b"%d" % (_FILES - 1))
    heads = sum(1 for record in origin.requests if record.method == "HEAD")
    assert heads < 100, f"{heads} probes ran before the one asked for"  # 32 workers, then this one
    assert (mounted.path / "f0007.bin").read_bytes() == b"7"


_MANY = 1200  # above the count from which `rangefs mount` says the probes go on (cli._ANNOUNCED_PROBES)


def test_a_long_probe_run_is_announced_and_its_progress_shown(origin: Origin, tmp_path: Path) -> None:
    """The mount is live before its probes end: `rangefs mount` says so on stderr (how far, where to watch),
    `rangefs stats` shows the count while they run, and `ls -l` then lists every file with its size."""
    for number in range(_MANY):
        origin.add(f"/p/f{number:04}.bin", b"%d" % number)
    origin.faults["*"] = faults.only(("HEAD",), faults.slow_first_byte(0.02))
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(origin.url(f"/p/f{number:04}.bin") + "\n" for number in range(_MANY)))
    mountpoint, pid_file = tmp_path / "mnt", tmp_path / "rangefs.pid"
    mountpoint.mkdir()
    mount = rangefs_command(
        "mount", str(urls), str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
        "--log-file", str(tmp_path / "daemon.log"), "--pid-file", str(pid_file), "-v",
    )  # fmt: skip
    result = subprocess.run(mount, capture_output=True, text=True, timeout=60, check=False)
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        assert result.returncode == 0, result.stderr
        assert re.search(rf"rangefs: probing [\d,]+ of {_MANY:,} files\.\.\. .*rangefs stats", result.stderr)
        during = _probes(mountpoint)
        assert during["under_way"] and during["queued"] == _MANY and during["ended"] < _MANY
        listing = _output("ls", "-l", str(mountpoint))
        sizes = {line.split()[-1]: int(line.split()[4]) for line in listing.splitlines()[1:]}
        assert sizes == {f"f{number:04}.bin": len(b"%d" % number) for number in range(_MANY)}
        deadline = time.monotonic() + 30
        while _probes(mountpoint)["under_way"] and time.monotonic() < deadline:
            time.sleep(0.1)
        after = _probes(mountpoint)
        assert not after["under_way"] and after["ended"] == _MANY and after["failed"] == 0
        assert "probing" not in _output(*rangefs_command("stats", str(mountpoint)))
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False, timeout=30)
        if pid is not None and not wait_for_exit(pid):
            kill_hard(pid)
    assert "probed 1200 files" in (tmp_path / "daemon.log").read_text()


def _probes(mountpoint: Path) -> dict[str, Any]:
    probes: dict[str, Any] = json.loads(_output(*rangefs_command("stats", "--json", str(mountpoint))))["probes"]
    return probes


def _output(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
