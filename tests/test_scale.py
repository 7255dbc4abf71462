"""Long URL lists: probing order and what a listing waits for, through a real mount."""

from __future__ import annotations

import os

from tests import faults
from tests.conftest import MountFactory
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
