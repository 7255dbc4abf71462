"""Long URL lists: how long `rangefs mount` takes to return and the first `ls -l` to answer, and what the
daemon holds, for lists of 10,000 and 100,000 URLs on a loopback nginx.

Every URL is another path that nginx answers with the same 1,000-byte file, so each listed file costs one
probe (a HEAD) and nothing else; each list gets a fresh cache dir, so nothing is known before its mount.

    .venv/bin/python benchmarks/many_urls.py                  # 10,000 and 100,000 URLs
    .venv/bin/python benchmarks/many_urls.py --counts 10000 --repeat 3
    git archive main | tar -x -C /tmp/main-src
    .venv/bin/python benchmarks/many_urls.py --source /tmp/main-src   # another checkout's rangefs, same run

Per list: `rangefs mount` return (background start, the command's wall time), the first `ls -l` (wall and
the daemon's CPU during it), the daemon's RSS once mounted and after the listing. nginx, the mount and the
daemon are ended by their PIDs (and unmounted) however the run ends.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.benchlib import procs
from tests.daemons import kill_hard, wait_for_exit
from tests.mounting import rangefs_command
from tests.nginx import running_config

_FILE_SIZE = 1000
_MOUNT_TIMEOUT = 120.0
_LIST_TIMEOUT = 900.0

_SITE = """
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /f/ {{ rewrite ^ /one.bin break; }}
    }}
"""


@dataclass
class Measured:
    urls: int
    mount_seconds: float
    listing_seconds: float
    listing_cpu: float | None
    rss_mounted: float | None
    rss_listed: float | None
    listed: int


def _rss_mib(pid: int) -> float | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def measure(base: str, count: int, work: Path, extra: list[str], source: Path | None) -> Measured:
    run_dir = Path(tempfile.mkdtemp(prefix=f"many{count}-", dir=work))
    urls = run_dir / "urls.txt"
    urls.write_text("".join(f"{base}/f/file-{number:06}.bin\n" for number in range(count)))
    mountpoint, pid_file = run_dir / "mnt", run_dir / "daemon.pid"
    mountpoint.mkdir()
    command = rangefs_command(
        "mount", str(urls), str(mountpoint), "--cache-dir", str(run_dir / "cache"),
        "--log-file", str(run_dir / "daemon.log"), "--pid-file", str(pid_file), *extra,
    )  # fmt: skip
    pid: int | None = None
    try:
        # The command and the daemon it starts (in /) both find the package on PYTHONPATH first.
        env = {**os.environ, "PYTHONPATH": str(source)} if source else None
        mounted = procs.run(command, timeout=_MOUNT_TIMEOUT, env=env)
        if not mounted.ok:
            raise RuntimeError(f"rangefs mount: {mounted.problem()}")
        pid = procs.read_pid_file(pid_file, timeout=10)
        if pid is None:
            raise RuntimeError("no daemon pid file")
        rss_mounted = _rss_mib(pid)
        cpu_before = procs.cpu_seconds(pid)
        started = time.monotonic()
        listing = procs.run(["ls", "-l", str(mountpoint)], timeout=_LIST_TIMEOUT)
        listing_seconds = time.monotonic() - started
        cpu_after = procs.cpu_seconds(pid)
        if not listing.ok:
            raise RuntimeError(f"ls -l: {listing.problem()}")
        listed = sum(1 for line in listing.stdout.splitlines() if line.startswith("-r") and f" {_FILE_SIZE} " in line)
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        return Measured(count, mounted.seconds, listing_seconds, cpu, rss_mounted, _rss_mib(pid), listed)
    finally:
        problem = procs.unmount(mountpoint)
        if problem:
            print(f"warning: {mountpoint}: {problem}", file=sys.stderr)
        if pid is None:  # the mount failed: a daemon may still have started
            pid = procs.read_pid_file(pid_file, timeout=0.5)
        # The daemon exits once unmounted; one that does not is ended by its PID.
        if pid is not None and not wait_for_exit(pid):
            kill_hard(pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=1, help="runs per count (the median is shown)")
    parser.add_argument("--work-dir", type=Path, help="where lists, cache dirs and nginx's files go")
    parser.add_argument("--source", type=Path, help="mount with the rangefs of this source tree (default: this one)")
    parser.add_argument("extra", nargs="*", help="more `rangefs mount` arguments (after --)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="many-urls-", dir=args.work_dir))
    root = work / "www"
    root.mkdir()
    (root / "one.bin").write_bytes(bytes(range(256)) * 3 + bytes(_FILE_SIZE - 768))
    port = procs.free_port()
    print(f"work dir {work}; rangefs from {args.source or 'this checkout'}; rangefs mount ... {' '.join(args.extra)}")
    print("| URLs | `rangefs mount` returns | first `ls -l` | daemon CPU in `ls -l` | RSS mounted | RSS listed |")
    print("|---|---|---|---|---|---|")
    with running_config(_SITE.format(port=port, root=root), work / "nginx", port):
        for count in args.counts:
            base = f"http://127.0.0.1:{port}"
            runs = [measure(base, count, work, args.extra, args.source) for _ in range(args.repeat)]
            for run in runs:
                if run.listed != count:
                    print(f"warning: ls -l listed {run.listed} of {count} files", file=sys.stderr)
            print(_row(runs), flush=True)
    return 0


def _row(runs: list[Measured]) -> str:
    def median(values: list[float | None], unit: str, digits: int = 1) -> str:
        known = [value for value in values if value is not None]
        if not known:
            return "?"
        shown = f"{statistics.median(known):.{digits}f} {unit}"
        if len(known) > 1:
            shown += f" ({min(known):.{digits}f}-{max(known):.{digits}f})"
        return shown

    return (
        f"| {runs[0].urls:,} | {median([r.mount_seconds for r in runs], 's', 2)} "
        f"| {median([r.listing_seconds for r in runs], 's')} | {median([r.listing_cpu for r in runs], 'CPU-s')} "
        f"| {median([r.rss_mounted for r in runs], 'MiB', 0)} | {median([r.rss_listed for r in runs], 'MiB', 0)} |"
    )


if __name__ == "__main__":
    sys.exit(main())
