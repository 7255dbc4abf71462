"""Fixtures: a loopback HTTP origin and real FUSE mounts of it through the rangefs CLI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import tls
from tests.daemons import DaemonTracker
from tests.mounting import Mount, start_mount
from tests.origin import Origin

MountFactory = Callable[..., Mount]


def _fuse_skip_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    return None


@pytest.fixture(scope="session")
def parquet() -> tuple[bytes, int]:
    """A 16 MiB Parquet file of four 4 MiB columns, and the size of column c's chunk (needs pyarrow)."""
    pytest.importorskip("pyarrow")
    from tests import media

    return media.make_parquet()


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin().running() as running:
        yield running


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[MountFactory]:
    """Mount urls files; every mount is unmounted and its daemon ended, and its log checked for errors."""
    reason = _fuse_skip_reason()
    if reason:
        pytest.skip(reason)
    mounts: list[Mount] = []

    def mount(lines: list[str], *extra_args: str, cache_dir: Path | None = None, name: str = "mnt") -> Mount:
        index = len(mounts)
        urls_file = tmp_path / f"urls-{index}.txt"
        urls_file.write_text("\n".join(lines) + "\n")
        mounted = start_mount(
            urls_file,
            tmp_path / f"{name}-{index}",
            cache_dir or tmp_path / "cache",
            tmp_path / f"rangefs-{index}.log",
            *extra_args,
        )
        mounts.append(mounted)
        return mounted

    try:
        yield mount
    finally:
        failures = []
        for mounted in mounts:
            try:
                mounted.unmount()
            except AssertionError as error:
                failures.append(str(error))
            failures.extend(mounted.unexpected_log_lines())
        if failures:
            pytest.fail("\n".join(failures))


@pytest.fixture
def daemons() -> Iterator[DaemonTracker]:
    """Background daemons and their mountpoints, all unmounted and ended by PID at teardown."""
    reason = _fuse_skip_reason()
    if reason:
        pytest.skip(reason)
    tracker = DaemonTracker()
    try:
        yield tracker
    finally:
        forced = tracker.close()
    if forced:
        pytest.fail("\n".join(forced))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tls.Certificates:
    """A CA and a certificate for 127.0.0.1 made by openssl (skipped without it)."""
    reason = tls.skip_reason()
    if reason:
        pytest.skip(reason)
    return tls.make_certificates(tmp_path_factory.mktemp("certificates"))
