"""The model through a real mount: random opens, reads and closes of a rangefs mount while the origin changes.

A smaller sibling of tests/test_model.py (which drives the engine in-process with many more behaviours and
faults): here the kernel, pyfuse3, the page cache and the daemon are all real. The model is the same rule:
every read returns the bytes of ONE version the origin held since shortly before the handle was opened (the
mount revalidates an open after ``REVALIDATE`` seconds; the test waits that long after each change, so every
open after a wait must see the newest version), the same version for every read of the handle, short only at
that version's end; or it fails with EIO because the file changed under the handle.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, precondition, rule

from tests.conftest import _fuse_skip_reason
from tests.mounting import Mount, start_mount
from tests.origin import Origin, pattern_bytes

KiB = 1024
REVALIDATE = 0.2  # --revalidate-after of the mount
NAMES = ("a.bin", "b.bin")


class MountMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self._work = tempfile.TemporaryDirectory(prefix="rangefs-model-mount-")
        work = Path(self._work.name)
        self._origin_context = Origin().running()
        self.origin = self._origin_context.__enter__()
        self.versions: dict[str, list[bytes]] = {}
        self.seed = 0
        for name in NAMES:
            self._publish(name, 300 * KiB + 17, etag=True)
        urls = work / "urls.txt"
        urls.write_text("".join(self.origin.url(f"/{name}") + "\n" for name in NAMES))
        self.mount: Mount = start_mount(
            urls, work / "mnt", work / "cache", work / "rangefs.log",
            "--block-size", "64K", "--revalidate-after", str(REVALIDATE), "--cache-size", "512K",
        )  # fmt: skip
        self.mount.allowed_log_patterns.append("changed|WARNING")
        # fd -> (name, versions it may have pinned, how many versions the file had when it was opened, O_DIRECT)
        self.open_fds: dict[int, tuple[str, list[bytes], int, bool]] = {}
        time.sleep(REVALIDATE)

    def _publish(self, name: str, size: int, *, etag: bool) -> None:
        self.seed += 1
        data = pattern_bytes(size, seed=self.seed)
        self.origin.add(f"/{name}", data, etag=etag, last_modified=True)
        self.versions.setdefault(name, []).append(data)

    @rule(target=handles, name=st.sampled_from(NAMES), direct=st.booleans())
    def open(self, name: str, direct: bool) -> int:
        fd = os.open(self.mount.path / name, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        # Every change was followed by a wait longer than REVALIDATE: the open must see the newest version.
        self.open_fds[fd] = (name, [self.versions[name][-1]], len(self.versions[name]), direct)
        return fd

    @precondition(lambda self: self.open_fds)
    @rule(fd=handles, offset=st.integers(0, 400 * KiB), size=st.sampled_from([1, 4 * KiB, 100_000, 256 * KiB]))
    def read(self, fd: int, offset: int, size: int) -> None:
        if fd not in self.open_fds:
            return
        name, candidates, known, direct = self.open_fds[fd]
        changed = len(self.versions[name]) > known
        offset -= offset % 4096  # O_DIRECT needs aligned offsets; harmless for buffered handles
        size = max(4096, size - size % 4096)
        buffer = bytearray(size)
        try:
            got = os.preadv(fd, [memoryview(buffer)], offset)
        except OSError as error:
            assert error.errno == 5, error
            assert changed, "EIO although the file has not changed since this handle was opened"
            return
        data = bytes(buffer[:got])
        # Short only at the version's end; or, once the file changed, where a later page failed (POSIX returns
        # what it had) - the bytes it returns must still be one version's.
        matching = [v for v in candidates if v[offset:][:got] == data and (got == len(v[offset:][:size]) or changed)]
        assert matching, f"{name}@{offset}+{size}: {got} bytes match no version this handle may have pinned"
        self.open_fds[fd] = (name, matching, known, direct)

    @precondition(lambda self: self.open_fds)
    @rule(fd=handles)
    def close(self, fd: int) -> None:
        if self.open_fds.pop(fd, None) is not None:
            os.close(fd)

    @rule(name=st.sampled_from(NAMES), resize=st.integers(-70 * KiB, 70 * KiB), etag=st.booleans())
    def change(self, name: str, resize: int, etag: bool) -> None:
        self._publish(name, max(1, len(self.versions[name][-1]) + resize), etag=etag)
        for fd, (opened, candidates, known, direct) in self.open_fds.items():
            if opened == name and not direct:
                # The page cache is the inode's, not the handle's: pages a newer handle brought in can be read
                # through an older buffered handle (as on NFS). O_DIRECT handles keep their version or fail.
                self.open_fds[fd] = (opened, [*candidates, self.versions[name][-1]], known, direct)
        time.sleep(REVALIDATE + 0.05)

    def teardown(self) -> None:
        try:
            for fd in self.open_fds:
                os.close(fd)
            self.mount.unmount()
            problems = self.mount.unexpected_log_lines()
            assert problems == [], problems
        finally:
            self._origin_context.__exit__(None, None, None)
            self._work.cleanup()


MountMachine.TestCase.settings = settings(
    max_examples=8, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)
)
TestModelThroughAMount = pytest.mark.skipif(_fuse_skip_reason() is not None, reason=str(_fuse_skip_reason()))(
    pytest.mark.mount(MountMachine.TestCase)
)
