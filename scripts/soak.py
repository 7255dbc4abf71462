"""Soak: random readers through a real mount of a throttled, faulty, changing origin, for as long as wanted.

    .venv/bin/python scripts/soak.py --minutes 30            # the run README quotes
    .venv/bin/python scripts/soak.py --minutes 2 --seed 7    # a quick look

Readers (threads of this process, like separate programs) open files of the mount, read at random offsets and
sizes (buffered and O_DIRECT) or scan sequentially, and check every byte against the versions the origin held
while the handle was open. Meanwhile the origin throttles each connection, injects faults for a few seconds at
a time (resets and short bodies mid-body, 503 bursts, 200 instead of 206) and replaces files (same size and new
size, strong or weak ETags). The daemon's RSS is sampled every second. The run fails (exit 1) on a wrong byte,
on an error no fault or change explains, on an ERROR or traceback in the daemon's log, or on RSS above
``--rss-limit``. Talks only to 127.0.0.1; the mount and the daemon are always ended.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import faults
from tests.mounting import start_mount
from tests.origin import Origin, pattern_bytes

MiB = 1024 * 1024
_FAULTS = {
    "reset": faults.only(("GET",), faults.reset_mid_body),
    "short": faults.only(("GET",), faults.short_body),
    "503": faults.status(503, {"Retry-After": "0"}),
    "whole": faults.whole_file,
    "head-206": faults.only(("HEAD",), faults.reset_mid_body),  # a broken server answering HEAD with a 206
}


@dataclass
class History:
    """Every version a path has served, and when faults were active on it (monotonic times)."""

    versions: dict[str, list[tuple[float, bytes]]] = field(default_factory=dict)
    faulty: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_version(self, path: str, data: bytes) -> None:
        with self.lock:
            kept = self.versions.setdefault(path, [])
            kept.append((time.monotonic(), data))
            del kept[:-4]  # a handle older than four changes is too old to check: readers reopen sooner

    def candidates(self, path: str, opened: float) -> list[bytes]:
        """Versions alive at some time since ``opened`` (close-to-open allows the one current at the open)."""
        with self.lock:
            kept = self.versions[path]
            alive = [
                data
                for number, (since, data) in enumerate(kept)
                if number + 1 == len(kept) or kept[number + 1][0] >= opened - 1.5
            ]
            return alive

    def explained(self, path: str, since: float) -> bool:
        with self.lock:
            changed = any(when >= since - 1.5 for when, _ in self.versions[path][1:])
            return changed or any(
                stop >= since and start <= time.monotonic() for start, stop in self.faulty.get(path, [])
            )


@dataclass
class Readers:
    """What the reader threads share: where to read, what to check against, and what they found."""

    mountpoint: Path
    history: History
    names: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    tally: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            self._one_handle(rng)

    def _one_handle(self, rng: random.Random) -> None:
        name = rng.choice(self.names)
        path = "/" + name
        direct = rng.random() < 0.5
        opened = time.monotonic()
        try:
            fd = os.open(self.mountpoint / name, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        except OSError as error:
            self.tally["open errors"] += 1
            if not self.history.explained(path, opened):
                self.problems.append(f"open {name}: {error}")
            return
        try:
            for _ in range(rng.randint(1, 20)):
                size = os.fstat(fd).st_size
                offset = rng.randrange(max(1, size))
                offset -= offset % 4096 if direct else 0
                length = rng.choice([4096, 65536, 300_000, 2 * MiB])
                started = time.monotonic()
                try:
                    got = os.pread(fd, length, offset)
                except OSError as error:
                    self.tally["read errors"] += 1
                    if not self.history.explained(path, min(started, opened)):
                        self.problems.append(f"read {name}@{offset}+{length}: {error} (no fault or change explains it)")
                    return
                self.tally["reads"] += 1
                self.tally["bytes"] += len(got)
                versions = [data for data in self.history.candidates(path, opened) if data[offset:][: len(got)] == got]
                if not versions:
                    self.problems.append(f"WRONG BYTES: {name}@{offset}+{length} ({len(got)} bytes)")
                elif len(got) < length and all(offset + len(got) < len(data) for data in versions):
                    # Short of its version's end: a buffered read whose later pages failed returns what it had
                    # (POSIX); like an error, a fault or a change must explain it.
                    self.tally["short reads"] += 1
                    if not self.history.explained(path, min(started, opened)):
                        self.problems.append(f"SHORT READ: {name}@{offset}+{length} ({len(got)} bytes), unexplained")
        finally:
            os.close(fd)


def end_faults(origin: Origin, faulty: dict[str, float], now: float) -> None:
    for path, until in list(faulty.items()):
        if now >= until:
            with origin.lock:
                origin.faults.pop(path, None)
            del faulty[path]


def perturb(  # noqa: PLR0917
    rng: random.Random,
    origin: Origin,
    history: History,
    sizes: dict[str, int],
    faulty: dict[str, float],
    tally: Counter[str],
    publish: Callable[[str, int], None],
    timeout: float,
) -> None:
    """Change a file at the origin (same size or not), or make it misbehave for a few seconds."""
    path = rng.choice(list(sizes))
    if rng.random() < 0.4:
        if rng.random() < 0.5:
            sizes[path] = max(1, sizes[path] + rng.randint(-MiB, MiB))
        publish(path, sizes[path])
        tally["changes"] += 1
    elif path not in faulty:
        kind = rng.choice(list(_FAULTS))
        now, length = time.monotonic(), rng.uniform(1, 4)
        with history.lock:
            # Retries and a stream begun during the fault may fail up to a timeout later.
            history.faulty.setdefault(path, []).append((now, now + length + timeout + 2))
        with origin.lock:
            origin.faults[path] = _FAULTS[kind]
        faulty[path] = now + length
        tally[f"faults {kind}"] += 1


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20.0, help="MiB/s per connection at the origin")
    parser.add_argument("--rss-limit", type=float, default=300.0, help="MiB; the run fails above it")
    return parser.parse_args()


def main() -> int:
    args = parse_arguments()
    rng = random.Random(args.seed)
    history = History()
    sizes = {"/a.bin": 48 * MiB, "/b.bin": 16 * MiB + 123, "/c.zip": 5 * MiB, "/d.bin": 3 * MiB + 7, "/e.mp4": 9 * MiB}
    with tempfile.TemporaryDirectory(prefix="rangefs-soak-") as workdir, Origin().running() as origin:
        origin.connection_rate = int(args.rate * MiB)
        work = Path(workdir)
        versions = iter(range(1, 1_000_000))

        def publish(path: str, size: int) -> None:
            number = next(versions)
            data = pattern_bytes(size, seed=number)
            weak = rng.random() < 0.3  # an origin with only a weak ETag for this version
            origin.add(path, data, last_modified=not weak)
            if weak:
                origin.files[path].etag = f'W/"v{number}"'
            history.add_version(path, data)

        for path, size in sizes.items():
            publish(path, size)
        urls = work / "urls.txt"
        urls.write_text("".join(origin.url(path) + "\n" for path in sizes))
        timeout = 10.0
        mount = start_mount(
            urls, work / "mnt", work / "cache", work / "rangefs.log", "--cache-size", "64M", "--timeout", str(timeout)
        )
        mount.allowed_log_patterns.append("WARNING")
        readers = Readers(mount.path, history, [path.lstrip("/") for path in sizes])
        threads = [threading.Thread(target=readers.run, args=(args.seed * 100 + n,)) for n in range(args.readers)]
        faulty: dict[str, float] = {}  # path -> when its fault ends
        peak = 0.0
        started = time.monotonic()
        try:
            for thread in threads:
                thread.start()
            next_event = started + rng.uniform(2, 8)
            while time.monotonic() < started + args.minutes * 60 and not any("WRONG" in p for p in readers.problems):
                time.sleep(1.0)
                peak = max(peak, rss_mib(mount.process.pid))
                now = time.monotonic()
                end_faults(origin, faulty, now)
                if now >= next_event:
                    next_event = now + rng.uniform(2, 8)
                    perturb(rng, origin, history, sizes, faulty, readers.tally, publish, timeout)
        finally:
            readers.stop.set()
            for thread in threads:
                thread.join(timeout=60)
            try:
                mount.unmount()
            except AssertionError as error:
                readers.problems.append(str(error))
                print("soak: the daemon's log:\n" + "\n".join(mount.log_text().splitlines()[-40:]))
        status = report(args, readers, mount.unexpected_log_lines(), peak, (time.monotonic() - started) / 60)
        if status:
            print(
                "soak: the daemon's last output:\n"
                + "\n".join((mount.output_text() or mount.log_text()).splitlines()[-80:])
            )
        return status


def report(args: argparse.Namespace, readers: Readers, log_problems: list[str], peak: float, minutes: float) -> int:
    problems, tally = readers.problems + log_problems, readers.tally
    print(f"soak: {minutes:.1f} min, seed {args.seed}, {args.readers} readers, {args.rate:g} MiB/s per connection")
    print(f"soak: {dict(sorted(tally.items()))}")
    print(f"soak: daemon peak RSS {peak:.0f} MiB (limit {args.rss_limit:.0f})")
    if peak > args.rss_limit:
        problems.append(f"peak RSS {peak:.0f} MiB above {args.rss_limit:.0f}")
    for problem in problems[:50]:
        print(f"soak: PROBLEM {problem}")
    print("soak: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
