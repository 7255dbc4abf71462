"""Many mounts, one cache dir: origin bytes and wall time when N rangefs mounts read one file at once, and how
long a mount waits when the mount fetching for it is killed (-9) or stopped (SIGSTOP) mid-file.

    .venv/bin/python benchmarks/shared_cache.py                                # 256 MiB, loopback and wan, 1/2/4 mounts
    .venv/bin/python benchmarks/shared_cache.py --rangefs-path CHECKOUT_OF_MAIN --no-takeover   # before

As root (network namespaces, drop_caches). nginx serves a file of random bytes (on 127.0.0.1 for loopback,
inside a network namespace whose packets the kernel delays for wan: ../shared/netem/netns.sh; for the
takeover rows nginx limits each connection to ``--takeover-rate``, so the owner is mid-file). Each row: N
fresh ``rangefs mount --foreground`` processes on one fresh cache dir, drop_caches, then one ``dd bs=1M`` per
mount, all started at once; wall time until the last one ends, and the bytes nginx's access log says it sent
for the file. Afterwards every mount's copy is compared with the file (``cmp``). The takeover rows: mount A
reads the file alone; once it has claims, mount B reads it too; once B waits for A's pieces, A is killed -9
(or stopped); the delay is until B's statistics first count a piece taken over, and B's time to the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent))  # the repository root: the tests' shared helpers (tests/netns.py)

from benchlib import origin, procs, tools  # noqa: E402
from benchlib.results import MiB  # noqa: E402

FILE = "shared.bin"
_READ_TIMEOUT = 600.0


@dataclass
class Mounted:
    path: Path
    daemon: subprocess.Popen[bytes]

    @property
    def file(self) -> Path:
        return self.path / FILE

    def store_stats(self) -> dict[str, int]:
        return json.loads(os.getxattr(self.path, "user.rangefs.stats"))["blocks"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def mounts(count: int, base_url: str, work: Path, label: str, args: argparse.Namespace) -> Iterator[list[Mounted]]:
    """``count`` rangefs mounts of the file on one fresh cache dir; unmounted and ended by PID on the way out."""
    cache_dir, logs = work / f"cache-{label}", work / "logs"
    logs.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        mounted: list[Mounted] = []
        for number in range(count):
            spec = tools.mount_spec(
                "rangefs", base_url=base_url, file_name=FILE, mountpoint=work / f"mnt-{label}-{number}",
                cache_dir=cache_dir, logs=logs, label=f"{label}-{number}", extra_args=args.extra,
                rangefs_source=args.rangefs_path,
            )  # fmt: skip
            spec.mountpoint.mkdir()
            daemon = stack.enter_context(procs.started(spec.argv, spec.output, env=spec.env))
            stack.callback(procs.unmount, spec.mountpoint)
            problem = procs.wait_mounted(spec.mountpoint, daemon, timeout=30)
            if problem:
                raise RuntimeError(f"mount {number}: {problem}; see {spec.output}")
            mounted.append(Mounted(spec.mountpoint, daemon))
        yield mounted


def read_all(files: list[Path]) -> float:
    """``dd`` every file at once; seconds until the last one ends."""
    started = time.perf_counter()
    readers = [
        subprocess.Popen(["dd", f"if={file}", "of=/dev/null", "bs=1M"], stderr=subprocess.DEVNULL) for file in files
    ]
    for reader in readers:
        if reader.wait(timeout=_READ_TIMEOUT) != 0:
            raise RuntimeError(f"dd of {reader.args[1]} failed")
    return time.perf_counter() - started


def together(count: int, served: origin.Origin, local: Path, work: Path, args: argparse.Namespace) -> str:
    label = f"{served.profile.name}-{count}"
    with mounts(count, served.base_url, work, label, args) as mounted:
        procs.drop_caches()
        mark = served.access.mark()
        seconds = read_all([mount.file for mount in mounted])
        traffic = served.access.traffic_since(mark, f"/{FILE}")
        right = all(procs.run(["cmp", str(local), str(m.file)], timeout=_READ_TIMEOUT).ok for m in mounted)
    size = local.stat().st_size
    return (
        f"| {served.profile.name} | {count} | {traffic.body_bytes / size:.3f} | {seconds:.2f} |"
        f" {traffic.requests} | {'yes' if right else 'NO'} |"
    )


def _wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Poll every 5 ms; the seconds it took to hold."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout:
            raise RuntimeError("timed out")
        time.sleep(0.005)
    return time.perf_counter() - started


def alone(served: origin.Origin, work: Path, args: argparse.Namespace) -> str:
    """The reference of the takeover rows: one mount reading the file by itself (what B's own fetch takes)."""
    label = f"{served.profile.name.split(',')[0]}-alone"
    with mounts(1, served.base_url, work, label, args) as (mount,):
        procs.drop_caches()
        seconds = read_all([mount.file])
    return f"| {served.profile.name} | none: one mount alone | | | {seconds:.2f} | |"


def takeover(how: str, served: origin.Origin, local: Path, work: Path, args: argparse.Namespace) -> str:
    """A reads alone, B joins and waits for A's pieces, A is killed or stopped: B's delay and time to the end."""
    label = f"{served.profile.name.split(',')[0]}-{how.replace(' ', '')}"
    with mounts(2, served.base_url, work, label, args) as (owner, waiter):
        procs.drop_caches()
        index = work / f"cache-{label}" / "index.sqlite3"

        def owner_claims() -> bool:
            with contextlib.closing(sqlite3.connect(index, timeout=10)) as db:
                return db.execute("SELECT count(*) FROM claims WHERE pid=?", (owner.daemon.pid,)).fetchone()[0] > 0

        owner_read = subprocess.Popen(["dd", f"if={owner.file}", "of=/dev/null", "bs=1M"], stderr=subprocess.DEVNULL)
        try:
            _wait_for(owner_claims, 30)
            started = time.perf_counter()
            waiter_read = subprocess.Popen(["dd", f"if={waiter.file}", "of=/dev/null", "bs=1M"])
            _wait_for(lambda: waiter.store_stats()["blocks_from_others"] > 0, 30)
            os.kill(owner.daemon.pid, signal.SIGKILL if how == "kill -9" else signal.SIGSTOP)
            stopped = time.perf_counter()
            delay = _wait_for(lambda: waiter.store_stats()["pieces_taken_over"] > 0, 60)
            if waiter_read.wait(timeout=_READ_TIMEOUT) != 0:
                raise RuntimeError("the waiter's dd failed")
            rest = time.perf_counter() - stopped
            whole = time.perf_counter() - started
            right = procs.run(["cmp", str(local), str(waiter.file)], timeout=_READ_TIMEOUT).ok
        finally:
            if how != "kill -9":
                os.kill(owner.daemon.pid, signal.SIGCONT)
            procs.stop(owner_read)
    return (
        f"| {served.profile.name} | {how} | {delay * 1000:.0f} ms | {rest:.2f} | {whole:.2f} |"
        f" {'yes' if right else 'NO'} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB of the file (default 256)")
    parser.add_argument("--profiles", default="loopback,wan", help="loopback, wan (default both)")
    parser.add_argument("--mounts", default="1,2,4", help="mount counts of the together rows")
    parser.add_argument("--rtt-ms", type=int, default=40)
    parser.add_argument("--rangefs-path", type=Path, help="run rangefs from this checkout (e.g. main, for before)")
    parser.add_argument("--no-takeover", action="store_true", help="skip the kill/stop rows (main has no claims)")
    parser.add_argument("--takeover-rate", default="8m", help="nginx limit_rate per connection of the kill rows")
    parser.add_argument("--rangefs-args", default="", help="extra `rangefs mount` arguments, e.g. -vv")
    parser.add_argument("--keep-logs", type=Path, help="copy the daemons' logs here at the end")
    parser.add_argument("--work-dir", type=Path, help="where the file, caches and mounts go (not a tmpfs)")
    args = parser.parse_args()
    args.extra = shlex.split(args.rangefs_args)
    available = origin.profiles(args.rtt_ms, "20m")
    with tempfile.TemporaryDirectory(prefix="rangefs-shared-", dir=args.work_dir) as temporary:
        work = Path(temporary)
        files = work / "files"
        files.mkdir()
        local = files / FILE
        with open(local, "wb") as out:
            for _ in range(args.size):
                out.write(os.urandom(MiB))
        together_rows, takeover_rows = [], []
        for name in args.profiles.split(","):
            profile = available[name]
            namespace = f"flt{os.getpid()}{name[0]}"
            with origin.running_origin(work / f"nginx-{name}", files, profile, namespace) as served:
                for count in map(int, args.mounts.split(",")):
                    together_rows.append(together(count, served, local, work, args))
                    print(together_rows[-1], flush=True)
            if args.no_takeover:
                continue
            # Throttled per connection, so that the owner is still fetching when it dies.
            slow = origin.Profile(f"{name}, {args.takeover_rate}/connection", profile.rtt_ms, args.takeover_rate,
                                  namespaced=profile.namespaced)  # fmt: skip
            with origin.running_origin(work / f"nginx-{name}-slow", files, slow, f"{namespace}s") as served:
                takeover_rows.append(alone(served, work, args))
                for how in ("kill -9", "SIGSTOP"):
                    takeover_rows.append(takeover(how, served, local, work, args))
                    print(takeover_rows[-1], flush=True)
        if args.keep_logs:
            shutil.copytree(work / "logs", args.keep_logs, dirs_exist_ok=True)
    print(f"\n{args.size} MiB file; rangefs from {args.rangefs_path or 'this checkout'}\n")
    print("| profile | mounts | origin bytes / file size | wall s (all readers) | requests | bytes right |")
    print("|---|---|---|---|---|---|")
    print("\n".join(together_rows))
    if takeover_rows:
        print("\n| profile | owner | takeover delay | waiter s after it | waiter s in all | bytes right |")
        print("|---|---|---|---|---|---|")
        print("\n".join(takeover_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
