"""Against a real nginx: no range support, rate limiting with 429, gzip for octet-stream."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests import nginx
from tests.conftest import MountFactory
from tests.origin import pattern_bytes

MiB = 1024 * 1024
DATA = pattern_bytes(12 * MiB + 5, seed=80)

pytestmark = pytest.mark.skipif(not nginx.available(), reason="nginx is not installed (Debian package nginx-light)")


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "www"
    for location in ("plain", "noranges", "limited", "gzip"):
        (root / location).mkdir(parents=True)
        (root / location / "data.bin").write_bytes(DATA)
    with nginx.running_nginx(root, tmp_path / "nginx") as base:
        yield base, tmp_path / "nginx"


def digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("location", ["plain", "noranges", "limited", "gzip"])
def test_reads_right_bytes_from_nginx(served, mount_factory: MountFactory, location: str) -> None:  # type: ignore[no-untyped-def]
    base, prefix = served
    mounted = mount_factory([f"{location}.bin {base}/{location}/data.bin"], "--timeout", "60")
    assert digest_of(mounted.path / f"{location}.bin") == hashlib.sha256(DATA).hexdigest()
    statuses = [line.split('"')[2].split()[0] for line in nginx.access_log(prefix) if '"GET ' in line]
    if location == "noranges":
        assert "200" in statuses and "206" not in statuses
    elif location == "limited":
        assert "429" in statuses, "the rate limit was reached, and survived"
    else:
        assert set(statuses) == {"206"}
